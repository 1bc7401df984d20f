"""The one module that talks to the Docker engine (through aiodocker).

Every aiodocker error is translated here into `cbox.errors.DockerError`, so
nothing above this seam knows aiodocker exists. Containers are labelled with
the task id and the orchestrator instance, which is what crash recovery keys
on: after a restart an instance adopts or removes exactly its own containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp
from aiodocker.types import SENTINEL

from cbox.errors import DockerError, ImageNotFound, UnsafeMount
from cbox.orchestrator.logstream import MAX_LINE_BYTES, Frames, Lines

LABEL_MANAGED = "dev.cbox.managed"
LABEL_TASK = "dev.cbox.task-id"
LABEL_INSTANCE = "dev.cbox.instance"
LABEL_SESSION = "dev.cbox.session"
LABEL_WARM = "dev.cbox.warm"
LABEL_POLICY = "dev.cbox.policy"


@dataclass(frozen=True, slots=True)
class ExitInfo:
    exit_code: int | None
    oom_killed: bool
    running: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ManagedContainer:
    id: str
    task_id: str
    running: bool


def _translate(exc: BaseException, what: str) -> DockerError:
    if isinstance(exc, aiodocker.DockerError):
        message = exc.message if isinstance(exc.message, str) else str(exc.message)
        if exc.status == 404 and "image" in message.lower():
            return ImageNotFound(f"{what}: {message} (build it with `cbox image build`)")
        return DockerError(f"{what}: {message}")
    return DockerError(f"{what}: the Docker engine is unreachable ({exc})")


_ENGINE_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError)


class DockerBackend:
    """Create, follow, stop and remove task containers."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def ping(self) -> dict[str, Any]:
        try:
            info = dict(await self.docker.system.info())
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "docker info") from exc
        return info

    async def image_labels(self, image: str) -> dict[str, str]:
        try:
            data = await self.docker.images.inspect(image)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ImageNotFound(
                    f"sandbox image {image!r} is not present (build it with `cbox image build`)"
                ) from exc
            raise _translate(exc, f"inspect image {image}") from exc
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, f"inspect image {image}") from exc
        labels: dict[str, str] = (data.get("Config") or {}).get("Labels") or {}
        return labels

    async def create_network(
        self, name: str, *, bridge: str, internal: bool, labels: dict[str, str]
    ) -> str:
        """Create (or find) a task's own bridge network; return its gateway IP.

        With `internal` there is no route out. The host is still reachable at
        the network's gateway IP, which is where the API gateway (and, for
        `allowlist`, the CONNECT proxy) listen for this task alone: the one
        door out of the box. Inter-container traffic is off as well.
        """
        try:
            try:
                net = await self.docker.networks.get(name)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                net = await self.docker.networks.create(
                    {
                        "Name": name,
                        "Driver": "bridge",
                        "Internal": internal,
                        # The host firewall is IPv4 (iptables): a daemon that makes
                        # dual-stack networks by default must not give a box an IPv6
                        # way to the host's services.
                        "EnableIPv6": False,
                        "CheckDuplicate": True,
                        "Labels": {LABEL_MANAGED: "true", **labels},
                        "Options": {
                            "com.docker.network.bridge.enable_icc": "false",
                            # A known interface name, for the host firewall's rules.
                            "com.docker.network.bridge.name": bridge,
                        },
                    }
                )
            info = await net.show()
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, f"network {name}") from exc
        if info.get("EnableIPv6"):
            raise DockerError(f"network {name} has IPv6 enabled, which the firewall does not cover")
        for config in (info.get("IPAM") or {}).get("Config") or []:
            gateway = config.get("Gateway")
            if gateway and ":" not in str(gateway):
                return str(gateway)
        raise DockerError(f"network {name} has no IPv4 gateway address")

    async def remove_network(self, name: str) -> None:
        try:
            net = await self.docker.networks.get(name)
            await net.delete()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise _translate(exc, f"remove network {name}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _translate(exc, f"remove network {name}") from exc

    async def managed_networks(self, instance: str) -> dict[str, str]:
        """Names of this instance's task networks, mapped to their task ids."""
        try:
            found = await self.docker.networks.list(
                filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]}
            )
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "list networks") from exc
        return {n["Name"]: (n.get("Labels") or {}).get(LABEL_TASK, "") for n in found}

    async def create(self, name: str, config: dict[str, Any]) -> str:
        check_binds(config)
        try:
            container = await self.docker.containers.create(config=config, name=name)
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "create container") from exc
        return str(container.id)

    async def start(self, container_id: str) -> None:
        try:
            await self.docker.containers.container(container_id).start()
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "start container") from exc

    async def deliver(self, container_id: str, data: bytes) -> None:
        """Write `data` to a waiting container's stdin, then close it (warm pool)."""
        stream = self.docker.containers.container(container_id).attach(stdin=True)
        try:
            await stream.write_in(data)
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "deliver the task to its container") from exc
        finally:
            with contextlib.suppress(*_ENGINE_ERRORS):
                await stream.close()

    async def log_lines(
        self, container_id: str, *, follow: bool = True, max_line_bytes: int = MAX_LINE_BYTES
    ) -> AsyncIterator[tuple[list[str], list[str]]]:
        """Yield the container's (stdout, stderr) lines from the start, one pair per read.

        Both streams come through one engine log stream: the json-file
        driver decodes the whole log file for every follower, whatever
        stream it asked for, so a second follower for stderr doubled the
        engine's work during a flood of output (and it shares our 2 cores).
        A pair holds every complete line of one read, so a chatty container
        costs the caller one step per read, not one per line.

        Docker keeps the whole log, so reading from the start is also how a
        restarted orchestrator catches up on a container it re-adopts. A
        following stream can end before the container does (the engine drops
        it under load), so when following, a trailing piece without a newline
        is held back: it may be half a line. The caller checks whether the
        container ended and reads once more without following, which yields
        everything, the last unterminated lines too.

        The multiplexed stream (task containers have no TTY: 8-byte headers,
        then a payload; the json-file driver sends one frame per line) is
        parsed here from large reads rather than through aiodocker's
        `log()`, which awaits twice per frame: at 200,000 lines that was a
        sixth of the orchestrator's CPU.
        """
        params = {"stdout": "1", "stderr": "1", "follow": "1" if follow else "0"}
        out, err = Lines(max_line_bytes), Lines(max_line_bytes)
        try:
            async with self.docker._query(
                f"containers/{container_id}/logs",
                params=params,
                timeout=self.docker._resolve_long_running_timeout(SENTINEL),
            ) as response:
                frames = Frames()
                async for chunk in response.content.iter_any():
                    stdout, stderr = frames.feed(chunk)
                    lines = out.feed(stdout), err.feed(stderr)
                    if lines[0] or lines[1]:
                        yield lines
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            pass  # a dropped stream: the caller follows again or reads to the end
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "read logs") from exc
        if not follow and (out.tail or err.tail):
            yield out.rest(), err.rest()

    async def wait(self, container_id: str) -> ExitInfo:
        try:
            await self.docker.containers.container(container_id).wait()
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "wait for container") from exc
        return await self.inspect(container_id)

    async def inspect(self, container_id: str) -> ExitInfo:
        try:
            data = await self.docker.containers.container(container_id).show()
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "inspect container") from exc
        state = data.get("State") or {}
        running = bool(state.get("Running"))
        return ExitInfo(
            exit_code=None if running else state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            running=running,
            error=state.get("Error") or None,
        )

    async def stop(self, container_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after the grace period (Docker's own stop)."""
        try:
            await self.docker.containers.container(container_id).stop(t=max(0, int(grace_s)))
        except aiodocker.DockerError as exc:
            if exc.status in (304, 404):  # already stopped or gone
                return
            raise _translate(exc, "stop container") from exc
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "stop container") from exc

    async def remove(self, container_id: str) -> None:
        with contextlib.suppress(aiodocker.DockerError):
            try:
                await self.docker.containers.container(container_id).delete(force=True, v=True)
            except (aiohttp.ClientError, OSError) as exc:
                raise _translate(exc, "remove container") from exc

    async def managed(self, instance: str) -> list[ManagedContainer]:
        filters = f'{{"label": ["{LABEL_MANAGED}=true", "{LABEL_INSTANCE}={instance}"]}}'
        try:
            found = await self.docker.containers.list(all=True, filters=filters)
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "list containers") from exc
        result = []
        for container in found:
            labels = container["Labels"] or {}
            result.append(
                ManagedContainer(
                    id=container.id,
                    task_id=labels.get(LABEL_TASK, ""),
                    running=container["State"] == "running",
                )
            )
        return result

    # ------------------------------------------------------------------ volumes

    async def volume_exists(self, name: str) -> bool:
        try:
            await self.docker.volumes.get(name)  # type: ignore[no-untyped-call]
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise _translate(exc, f"inspect volume {name}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _translate(exc, f"inspect volume {name}") from exc
        return True

    async def create_volume(self, name: str, labels: dict[str, str]) -> None:
        try:
            await self.docker.volumes.create(  # type: ignore[no-untyped-call]
                {"Name": name, "Driver": "local", "Labels": {LABEL_MANAGED: "true", **labels}}
            )
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, f"create volume {name}") from exc

    async def remove_volume(self, name: str) -> None:
        """Remove a volume; a missing one is fine, one in use is a `DockerError`."""
        try:
            volume = await self.docker.volumes.get(name)  # type: ignore[no-untyped-call]
            await volume.delete()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise _translate(exc, f"remove volume {name}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _translate(exc, f"remove volume {name}") from exc

    async def run_helper(
        self, name: str, config: dict[str, Any], timeout_s: float = 120.0
    ) -> tuple[int, str]:
        """Run a short-lived container to its end; return its exit code and output.

        Used for the jobs the orchestrator must not do on the host: inside a
        volume it cannot reach (a remote engine, or files of another uid), and
        every git command on a repository an agent could have written
        (`cbox.orchestrator.gitbox`). The container is removed however it ends,
        a timeout included.
        """
        check_binds(config)
        try:
            container = await self.docker.containers.create(config=config, name=name)
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "create helper container") from exc
        try:
            await container.start()
            result = await asyncio.wait_for(container.wait(), timeout_s)
            output = await container.log(stdout=True, stderr=True)
        except TimeoutError:
            raise DockerError(f"helper container {name} did not finish in {timeout_s:g}s") from None
        except _ENGINE_ERRORS as exc:
            raise _translate(exc, "run helper container") from exc
        finally:
            with contextlib.suppress(*_ENGINE_ERRORS):
                await container.delete(force=True, v=True)
        return int(result.get("StatusCode", -1)), "".join(output)


def check_binds(config: dict[str, Any]) -> None:
    """Refuse to bind-mount a host path that no longer resolves to itself.

    Every bind source claude-box builds is canonical (resolved at submit, or
    under the resolved data dir), and the engine follows symlinks in a source
    when it mounts. A box with a `rw` workspace that contains another task's
    workspace could swap a directory on that path for a symlink to, say, the
    user's home, between the check at submit and the mount. So each source is
    resolved again right before the engine sees it: a source that now passes
    through a symlink is refused, and the task fails saying so.
    """
    for bind in config.get("HostConfig", {}).get("Binds") or []:
        source = str(bind).split(":", 1)[0]
        if not source.startswith("/"):
            continue  # a named volume
        real = os.path.realpath(source)
        if real != os.path.normpath(source):
            raise UnsafeMount(
                f"refusing to mount {source}: it now resolves to {real} (a directory on the "
                "path was replaced by a symlink after the task was submitted)"
            )


def bridge_name(task_id: str) -> str:
    """Linux interface names stop at 15 characters: `cb-` and the id's random tail."""
    return "cb-" + task_id.removeprefix("task_")[-12:]


async def wait_quietly(task: asyncio.Task[Any]) -> None:
    """Await a helper task we cancelled, without caring how it ended."""
    with contextlib.suppress(BaseException):
        await task
