"""The warm pool: task containers created and started before their task exists.

Most of a short task's wall time is Docker's, not the agent's: a network, a
container, and above all `start` (runc, mounts, joining the bridge) take about
half a second before the first line of the agent can run. The pool does that
work ahead of time, so a submitted task only has to hand its command to a
container that is already up.

Freshness is kept, not traded away: a warm container is made for exactly one
future task, with its own network, gateway token and listener, and its task
id chosen up front (so its name, labels and bridge are the task's own). Until
a task takes it, it runs nothing but `cbox-await`, blocked on stdin, with no
task, command or prompt in it. A task takes it once; afterwards it is removed
like every task container. Nothing is ever reused.

Containers are kept per *shape*: everything about a container that does not
come with the task (image, workspace and its owner, policy and limits, passed
through environment; see `container.pool_key`). A shape is wanted while it is
used: the first task of a shape runs cold and makes the pool keep
`warm_pool` containers of that shape ready, until it is unused for
`warm_pool_idle_s`. At most `warm_pool_max` warm containers exist in all.
Tasks with a session or an isolated copy always run cold: their mounts are
per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from cbox.errors import CboxError
from cbox.models import Task, TaskSpec, new_task_id
from cbox.orchestrator.container import Workspace, container_config
from cbox.orchestrator.docker import DockerBackend, wait_quietly
from cbox.orchestrator.networks import TaskNetworks
from cbox.policies import EffectiveLimits
from cbox.settings import Settings

log = logging.getLogger(__name__)

#: Image label that says `cbox-await` is in the image (version 2 and later).
MIN_IMAGE_VERSION = 2
#: After a task took a container, let it get going before making the next one:
#: on a small machine, making a container competes with the task for the engine.
SETTLE_S = 1.0
#: A shape whose container could not be made is left alone this long.
RETRY_S = 60.0


@dataclass
class Shape:
    """What a warm container of one key is made from."""

    limits: EffectiveLimits
    workspace: Workspace
    image: str
    passthrough_env: dict[str, str]
    used_at: float = field(default_factory=time.monotonic)
    failed_at: float | None = None


@dataclass
class Slot:
    """One warm container and what was made for it: a task-to-be without a task."""

    key: str
    holder: Task  # id, network, gateway token and URLs, container id
    made_at: float = field(default_factory=time.time)

    def hand_to(self, task: Task) -> None:
        """Give `task` this container's network and doors (its id is already the same)."""
        holder = self.holder
        task.container_id = holder.container_id
        task.network = holder.network
        task.gateway_token = holder.gateway_token
        task.gateway_url = holder.gateway_url
        task.proxy_url = holder.proxy_url


class WarmPool:
    def __init__(self, settings: Settings, docker: DockerBackend, networks: TaskNetworks) -> None:
        self.settings = settings
        self.docker = docker
        self.networks = networks
        self._shapes: dict[str, Shape] = {}
        self._slots: dict[str, list[Slot]] = {}
        self._image_ok: set[str] = set()
        self._image_old: set[str] = set()  # told the log once
        self._wanted = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._settle_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.settings.warm_pool > 0 and self.settings.warm_pool_max > 0

    def warm(self) -> int:
        return sum(len(slots) for slots in self._slots.values())

    def start(self) -> None:
        if self.enabled:
            self._filler = asyncio.create_task(self._fill_loop(), name="cbox-warm-pool")

    async def close(self) -> None:
        """Stop filling and remove every container no task has taken."""
        if self._filler is not None:
            self._filler.cancel()
            await wait_quietly(self._filler)
            self._filler = None
        for slots in list(self._slots.values()):
            for slot in slots:
                await self.discard(slot)
        self._slots.clear()

    # ------------------------------------------------------------------ tasks

    def claim(self, key: str, shape: Shape) -> Slot | None:
        """A warm container for a task of this shape, or None; notes the use either way."""
        if not self.enabled:
            return None
        known = self._shapes.get(key)
        if known is None:
            self._shapes[key] = shape
        else:
            known.used_at = time.monotonic()
        slots = self._slots.get(key)
        slot = slots.pop(0) if slots else None
        self._settle_until = time.monotonic() + SETTLE_S
        self._wanted.set()
        return slot

    def want(self, key: str, shape: Shape) -> None:
        """Keep this shape warm from now on (the default shape, at start)."""
        if self.enabled:
            self._shapes.setdefault(key, shape)
            self._wanted.set()

    def kick(self) -> None:
        """Something ended: a good moment to top the pool up."""
        if self.enabled:
            self._wanted.set()

    # ------------------------------------------------------------------ filling

    async def _fill_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_S):
                    await self._wanted.wait()
            self._wanted.clear()
            pause = self._settle_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                self._wanted.set()  # look again: a later claim may have moved the deadline
                continue
            await self._expire()
            try:
                await self._top_up()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the loop alive; the next round tries again
                log.exception("warm pool: filling failed")

    async def _expire(self) -> None:
        now = time.monotonic()
        for key, shape in list(self._shapes.items()):
            if now - shape.used_at > self.settings.warm_pool_idle_s:
                del self._shapes[key]
                for slot in self._slots.pop(key, []):
                    await self.discard(slot)

    async def _top_up(self) -> None:
        """Make containers for the shapes short of them, most recently used first."""
        now = time.monotonic()
        by_use = sorted(self._shapes.items(), key=lambda item: -item[1].used_at)
        for key, shape in by_use:
            if shape.failed_at is not None and now - shape.failed_at < RETRY_S:
                continue
            while (
                len(self._slots.get(key, [])) < self.settings.warm_pool
                and self.warm() < self.settings.warm_pool_max
                and key in self._shapes
            ):
                if not await self._image_supported(shape.image):
                    shape.failed_at = now
                    break
                try:
                    slot = await self._make(key, shape)
                except (CboxError, OSError) as exc:
                    shape.failed_at = now
                    log.warning("warm pool: could not make a container (%s); retrying in %ds",
                                exc, RETRY_S)
                    break
                shape.failed_at = None
                if key in self._shapes:
                    self._slots.setdefault(key, []).append(slot)
                else:  # the shape expired while we were making it
                    await self.discard(slot)

    async def _image_supported(self, image: str) -> bool:
        """Whether the image has `cbox-await`. Only a yes is remembered: an image
        rebuilt under the same tag is seen at the shape's next retry."""
        if image in self._image_ok:
            return True
        try:
            labels = await self.docker.image_labels(image)
        except CboxError as exc:
            log.warning("warm pool: %s", exc)
            return False
        try:
            ok = int(labels.get("dev.cbox.image.version", "0")) >= MIN_IMAGE_VERSION
        except ValueError:
            ok = False
        if ok:
            self._image_ok.add(image)
        elif image not in self._image_old:
            self._image_old.add(image)
            log.info("warm pool off for %s: the image predates warm containers "
                     "(rebuild it with `cbox image build`)", image)
        return ok

    async def _make(self, key: str, shape: Shape) -> Slot:
        limits = shape.limits
        holder = Task(
            id=new_task_id(),
            spec=TaskSpec(prompt="(warm container, no task yet)", policy=limits.policy.name),
            workspace=str(shape.workspace.path),
            mount_mode=limits.mount_mode,
        )
        try:
            await self.networks.open(holder, limits)
            assert holder.network is not None
            config = container_config(
                task=holder,
                limits=limits,
                workspace=shape.workspace,
                image=shape.image,
                network=holder.network,
                instance=self.settings.instance,
                gateway=self.networks.gateway_for(holder),
                passthrough_env=shape.passthrough_env,
                stop_grace_s=self.settings.stop_grace_s,
                warm=True,
                log_max_size_mb=self.settings.container_log_max_size_mb,
                log_max_files=self.settings.container_log_max_files,
            )
            holder.container_id = await self.docker.create(f"cbox-{holder.id}", config)
            await self.docker.start(holder.container_id)
        except BaseException:
            await self.discard(Slot(key=key, holder=holder))
            raise
        log.debug("warm pool: %s ready for %s", holder.id, limits.policy.name)
        return Slot(key=key, holder=holder)

    async def discard(self, slot: Slot) -> None:
        """Remove a warm container that no task ran in, and everything made for it."""
        holder = slot.holder
        try:
            if holder.container_id:
                await self.docker.remove(holder.container_id)
            await self.networks.close_for(holder)
            await self.networks.release(holder)
            await self.networks.remove(holder)
        except (CboxError, OSError) as exc:
            log.warning("warm pool: could not remove %s: %s", holder.id, exc)
