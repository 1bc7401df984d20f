"""What the tracker workers share: following a task to its end over the API.

The Linear and GitHub workers both submit a task, then read its events until
it ends, riding out orchestrator restarts (a refused connection or a 5xx is
retried with back-off until `wait_s` passes with no answer), and report the
last lines of output. One loop, so the two cannot drift apart on what counts as
"the orchestrator is gone" and what as "the task is gone".
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from cbox.cli.client import Client, SseEvent
from cbox.errors import CboxError, ClientError, ServerUnreachable
from cbox.models import TERMINAL_STATES

TERMINAL = {s.value for s in TERMINAL_STATES}
#: Exit codes both workers use beside 0 (done) and 1 (a task failed).
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
TAIL_LINES = 40

T = TypeVar("T")
EventHook = Callable[[SseEvent], Awaitable[None]]


def lost_task(task_id: str) -> dict[str, Any]:
    """What a worker reports for a task the orchestrator no longer knows (its DB was reset)."""
    return {"id": task_id, "state": "failed", "error": "the orchestrator no longer knows this task"}


async def follow_task(
    client: Client, task_id: str, *, wait_s: float, on_event: EventHook | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The task once it has ended, and its last output lines.

    Events are read from the start, so the tail is complete even after a
    reconnect; `on_event` sees every event (the GitHub worker marks its
    tracking comment "running" from it).
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    last = 0
    deadline = time.monotonic() + wait_s
    delay_s = 0.5
    while True:
        try:
            async for event in client.events(task_id, after=last):
                last = event.id if event.id is not None else last
                if event.type == "output":
                    tail.append(str(event.data.get("line", "")))
                if on_event is not None:
                    await on_event(event)
            task = await client.get(task_id)
            if task["state"] in TERMINAL:
                return task, list(tail)
        except ServerUnreachable:
            if time.monotonic() > deadline:
                raise
        except ClientError as exc:
            if exc.status == 404:
                return lost_task(task_id), list(tail)
            if (exc.status is not None and exc.status < 500) or time.monotonic() > deadline:
                raise
        else:
            deadline = time.monotonic() + wait_s
        await asyncio.sleep(delay_s)
        delay_s = min(10.0, delay_s * 2)


def label_policy(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """`--label-policy LABEL=POLICY` (repeatable); `claude-readonly` maps to `readonly`."""
    mapping = {"claude-readonly": "readonly"}
    for value in values:
        label, sep, policy = value.partition("=")
        if not sep or not label or not policy:
            raise click.BadParameter(f"expected LABEL=POLICY, got {value!r}")
        mapping[label] = policy
    return mapping


async def shutdown(running: dict[str, asyncio.Task[Any]], starting: set[str]) -> None:
    """A daemon's stop: claims still submitting (keys in `starting`) may finish, so no
    issue is left claimed with nothing to show; the followers are dropped, their tasks
    keep running, and the next start's recovery pass reports them."""
    claims = [job for key, job in running.items() if key in starting]
    if claims:
        await asyncio.wait(claims, timeout=30)
    for job in running.values():
        job.cancel()
    await asyncio.gather(*running.values(), return_exceptions=True)


async def logged(work: Awaitable[T], default: T, logger: logging.Logger) -> T:
    """A daemon step that may fail (the tracker or the orchestrator away): log, go on."""
    try:
        return await work
    except CboxError as exc:
        logger.error("%s", " ".join(str(exc).split()) or exc.__class__.__name__)
        return default


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, for `run_daemon`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
