"""A `docker events` recorder: the engine's own timestamps for create/start/die.

One `docker events` process runs for the whole benchmark; every container and
network event is kept with its `timeNano`, which is the engine's wall clock,
the same clock as `time.time_ns()` here (one host).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DockerEvent:
    type: str  # container | network
    action: str  # create | start | die | destroy | connect | ...
    name: str
    time_ns: int
    instance: str  # the `dev.cbox.instance` label (containers only)


class DockerEvents:
    def __init__(self) -> None:
        self.events: list[DockerEvent] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            "docker", "events", "--format", "{{json .}}",
            "--filter", "type=container", "--filter", "type=network",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        self._reader = asyncio.create_task(self._read())
        await asyncio.sleep(0.3)  # the subscription is live once the CLI has connected

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            try:
                data: dict[str, Any] = json.loads(raw)
            except ValueError:
                continue
            actor = data.get("Actor") or {}
            attrs = actor.get("Attributes") or {}
            name = str(attrs.get("name") or "")
            action = str(data.get("Action") or data.get("status") or "")
            self.events.append(
                DockerEvent(str(data.get("Type")), action, name, int(data.get("timeNano", 0)),
                            str(attrs.get("dev.cbox.instance") or ""))
            )
            self._changed.set()
            self._changed = asyncio.Event()

    def first_with_prefix(self, type_: str, action: str, prefix: str, instance: str,
                          since_ns: int) -> tuple[str, int] | None:
        """(name, time) of the first such event of `instance`'s containers since a time."""
        for event in self.events:
            if (event.type == type_ and event.action == action and event.instance == instance
                    and event.name.startswith(prefix) and event.time_ns >= since_ns):
                return event.name, event.time_ns
        return None

    def find(self, type_: str, action: str, name: str, since_ns: int = 0) -> int | None:
        for event in self.events:
            if (
                event.type == type_
                and event.action == action
                and event.name == name
                and event.time_ns >= since_ns
            ):
                return event.time_ns
        return None

    async def wait_for(
        self, type_: str, action: str, name: str, since_ns: int = 0, timeout_s: float = 10
    ) -> int | None:
        """The event's time, waiting a little for the stream to catch up; None if never."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find(type_, action, name, since_ns)
            if found is not None or time.monotonic() > deadline:
                return found
            changed = self._changed
            # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancellation
            # that races with the inner wait finishing (it made Ctrl-C ineffective).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await changed.wait()
