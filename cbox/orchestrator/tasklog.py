"""The live event log of one active task: append, fan out, hand over to the store.

While a task is queued or running its whole log lives here, in order, so any
number of followers read it without touching SQLite; new events wake them
through one shared `asyncio.Event` that is swapped on every append (a cheap
broadcast). Appended events also wait in `pending` until the service's
flusher writes them, with the raw lines they came from, in one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from cbox.models import Event


class TaskLog:
    def __init__(self, task_id: str, history: Iterable[Event] = ()) -> None:
        self.task_id = task_id
        self.events: list[Event] = list(history)
        self.pending: list[Event] = []
        self.pending_raw: list[str] = []
        self.closed = False
        self._changed = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return len(self.events)

    def append(self, type_: str, data: dict[str, Any]) -> Event:
        event = Event.of(len(self.events) + 1, self.task_id, type_, data)
        self.events.append(event)
        self.pending.append(event)
        self._wake()
        return event

    def close(self) -> None:
        """No more events will come (the `done` event is in)."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def take_pending(self) -> tuple[list[Event], list[str]]:
        events, raw = self.pending, self.pending_raw
        self.pending, self.pending_raw = [], []
        return events, raw

    async def wait(self, after: int, timeout_s: float) -> bool:
        """Wait until there is an event past `after` or the log closes; False on timeout."""
        changed = self._changed
        if len(self.events) > after or self.closed:
            return True
        try:
            await asyncio.wait_for(changed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
