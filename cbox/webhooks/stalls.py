"""`task.stalled`: a running task that printed nothing for CBOX_WEBHOOK_STALL_S seconds.

A stuck agent (a tool waiting for input, a hung network call, a model retry
loop that prints nothing) looks the same from outside as a busy one; only its
silence tells. The watcher samples the running tasks' output counters (stdout
and stderr lines consumed) and reports each silence once: output re-arms it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from cbox.models import Task, TaskState

log = logging.getLogger(__name__)


async def watch(
    running: Callable[[], list[Task]], stall_s: float, report: Callable[[Task], Awaitable[None]]
) -> None:
    seen: dict[str, tuple[int, float, bool]] = {}  # task id: (output, since, reported)
    while True:
        await asyncio.sleep(min(1.0, stall_s / 4))
        now = time.monotonic()
        current: dict[str, tuple[int, float, bool]] = {}
        for task in running():
            if task.state is not TaskState.RUNNING:
                continue
            output = task.lines_consumed + task.stderr_consumed
            before = seen.get(task.id)
            if before is None or before[0] != output:
                current[task.id] = (output, now, False)
                continue
            _, since, reported = before
            if not reported and now - since >= stall_s:
                reported = True
                try:
                    await report(task)
                except Exception:  # the next silence is reported again; keep watching
                    log.exception("reporting task.stalled for %s failed", task.id)
            current[task.id] = (output, since, reported)
        seen = current
