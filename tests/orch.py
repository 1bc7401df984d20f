"""A real `cbox serve` subprocess on loopback, for tests.

Each one has its own SQLite file, port, task network, gateway and instance
label, so tests never see each other's tasks or containers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from cbox.cli.client import SseEvent, parse_sse
from cbox.orchestrator.firewall import chain_name

FAKE_KEY = "sk-ant-test-real-credential"


async def wait_until_serving(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float, poll_s: float = 0.05
) -> None:
    """Poll a `cbox serve` subprocess's /healthz until it answers, or fail with its log."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"cbox serve exited: {log.read_text()[-2000:]}")
            try:
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(poll_s)
    raise RuntimeError(f"cbox serve did not answer: {log.read_text()[-2000:]}")


def drop_firewall_chain(instance: str) -> None:
    """The instance's host firewall chain, which a server keeps for adoption."""
    chain = chain_name(instance)
    for args in (["-D", "INPUT", "-j", chain], ["-F", chain], ["-X", chain]):
        subprocess.run(["iptables", "-w", *args], capture_output=True, check=False)


def remove_containers(label: str) -> None:
    """Remove every container carrying `label` (`key=value`), running or not."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orchestrator:
    def __init__(
        self,
        *,
        image: str,
        fake_url: str,
        tmp: Path,
        workspace: Path,
        max_concurrent: int = 2,
        env: dict[str, str] | None = None,
        policies: dict[str, str] | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:8]
        extra = dict(env or {})
        if policies:
            directory = tmp / f"policies-{self.id}"
            directory.mkdir()
            for name, text in policies.items():
                (directory / f"{name}.toml").write_text(text)
            extra["CBOX_POLICIES_DIR"] = str(directory)
        self.instance = f"test-{self.id}"
        self.network = f"cbox-t-{self.id}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workspace = workspace
        self.db = tmp / f"cbox-{self.id}.db"
        self.log = tmp / f"serve-{self.id}.log"
        # The API always needs a token: a random one per instance, unless the test
        # gives its own, or empties CBOX_API_TOKEN to have the server generate one
        # into CBOX_API_TOKEN_FILE (never the user's own file).
        self.token_file = tmp / f"api-token-{self.id}"
        self.env = {
            **os.environ,
            "AGENT_HOST": "127.0.0.1",
            "AGENT_PORT": str(self.port),
            "WORKSPACE_DIR": str(workspace),
            "ANTHROPIC_API_KEY": FAKE_KEY,
            "ANTHROPIC_BASE_URL": fake_url,
            "CBOX_IMAGE": image,
            "CBOX_DB_PATH": str(self.db),
            "CBOX_NETWORK": self.network,
            "CBOX_INSTANCE": self.instance,
            "CBOX_MAX_CONCURRENT": str(max_concurrent),
            "CBOX_STOP_GRACE_S": "2",
            "CBOX_KEEPALIVE_S": "1",
            # Off unless a test is about it: warm containers outlive tasks, and
            # most tests count what is left behind. tests/test_warm_pool.py turns it on.
            "CBOX_WARM_POOL": "0",
            "CBOX_API_TOKEN": uuid.uuid4().hex,
            "CBOX_API_TOKEN_FILE": str(self.token_file),
            **extra,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 60) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cbox", "serve"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        await wait_until_serving(self.url, self.proc, self.log, timeout_s)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def destroy(self) -> None:
        await self.stop()
        remove_containers(f"dev.cbox.instance={self.instance}")
        nets = subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", self.label_filter],
            capture_output=True, text=True, check=False,
        ).stdout.split()
        if nets:
            subprocess.run(["docker", "network", "rm", *nets], capture_output=True, check=False)
        drop_firewall_chain(self.instance)

    @property
    def label_filter(self) -> str:
        return f"label=dev.cbox.instance={self.instance}"

    def networks(self) -> list[str]:
        return subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", self.label_filter],
            capture_output=True, text=True, check=False,
        ).stdout.split()

    def warm_containers(self, policy: str | None = None) -> list[str]:
        """Warm containers of this instance (of one policy) no task has finished in yet."""
        only = ["--filter", f"label=dev.cbox.policy={policy}"] if policy else []
        return subprocess.run(
            ["docker", "ps", "-aq", "--no-trunc", "--filter", self.label_filter,
             "--filter", "label=dev.cbox.warm=true", *only],
            capture_output=True, text=True, check=False,
        ).stdout.split()

    def containers(self) -> list[str]:
        return subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=dev.cbox.instance={self.instance}"],
            capture_output=True, text=True, check=False,
        ).stdout.split()

    async def no_containers_left(self, timeout_s: float = 30) -> bool:
        """Containers are removed just after `done` is recorded; wait for that."""
        deadline = time.monotonic() + timeout_s
        while self.containers() or self.networks():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    # ---------------------------------------------------------------- HTTP helpers

    @property
    def token(self) -> str:
        """The server's API token: the one it was given, or the one it generated."""
        given = self.env.get("CBOX_API_TOKEN")
        if given:
            return given
        return Path(self.env["CBOX_API_TOKEN_FILE"]).read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def client_env(self) -> dict[str, str]:
        """The environment of a `cbox` CLI or worker subprocess that talks to this server."""
        return {**os.environ, "CBOX_SERVER": self.url, "CBOX_API_TOKEN": self.token}

    async def request(
        self, method: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> tuple[int, Any]:
        """One request; with the token unless `auth=False` (`headers=` win over it)."""
        headers = {**(self.headers if auth else {}), **(kwargs.pop("headers", None) or {})}
        async with aiohttp.ClientSession() as session, session.request(
            method, self.url + path, headers=headers, **kwargs
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def submit(self, prompt: str, **spec: Any) -> dict[str, Any]:
        status, body = await self.request("POST", "/tasks", json={"prompt": prompt, **spec})
        assert status in (200, 202), body
        return dict(body)

    async def events(
        self, task_id: str, after: int = 0, headers: dict[str, str] | None = None
    ) -> AsyncIterator[SseEvent]:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            f"{self.url}/tasks/{task_id}/events", params={"after": str(after)},
            headers={**self.headers, **(headers or {})},
        ) as resp:
            assert resp.status == 200, await resp.text()
            async for event in parse_sse(resp.content):
                yield event

    async def wait_done(self, task_id: str, timeout_s: float = 300) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            async for event in self.events(task_id):
                if event.type == "done":
                    return event.data
            raise AssertionError("event stream ended without done")

        return await asyncio.wait_for(go(), timeout_s)

    async def task(self, task_id: str) -> dict[str, Any]:
        status, body = await self.request("GET", f"/tasks/{task_id}")
        assert status == 200, body
        return dict(body)

    async def wait_state(
        self, task_id: str, states: set[str], timeout_s: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            task = await self.task(task_id)
            if task["state"] in states:
                return task
            await asyncio.sleep(0.1)
        raise AssertionError(f"task {task_id} never reached {states}")
