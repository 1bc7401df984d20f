"""The live event log of one active task: append, fan out, hand over to the store.

While a task is queued or running the newest part of its log (at least
`TAIL_EVENTS` events) lives here, in order, so followers that keep up read it
without touching SQLite; older events are trimmed once the store has them and
are replayed from there. Keeping every event of a chatty task in memory cost
~150 MB at 200,000 lines, and CPython does not give that back.

New events wake followers through one shared `asyncio.Event`, made only when
someone waits and swapped on the next append (a cheap broadcast). Keep-alive
deadlines share one timer per log as well, instead of a timeout per wait per
follower, which with 100 followers cost more than the writes. Appended
events also wait in `pending` until the service's flusher writes them, with
the raw lines they came from, in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from typing import Any

from cbox.models import Event
from cbox.orchestrator.streamjson import ParsedEvent

#: Events kept in memory once the store has them; the log is trimmed back to
#: this when it reaches twice as many, so trimming costs little per event.
TAIL_EVENTS = 5000


class TaskLog:
    def __init__(self, task_id: str, history: Iterable[Event] = ()) -> None:
        """`history` is the stored tail of a task's log (all of it, or its newest part)."""
        self.task_id = task_id
        self.events: list[Event] = list(history)
        #: seq of `events[0]` minus one: how much of the log is only in the store.
        self.trimmed = self.events[0].seq - 1 if self.events else 0
        self.last_seq = self.trimmed + len(self.events)
        self.pending: list[Event] = []
        self.pending_raw: list[str] = []
        self.closed = False
        self._changed: asyncio.Event | None = None
        self._tick: asyncio.TimerHandle | None = None

    def append(self, type_: str, data: dict[str, Any]) -> Event:
        self.last_seq += 1
        event = Event.of(self.last_seq, self.task_id, type_, data)
        self.events.append(event)
        self.pending.append(event)
        self._wake()
        return event

    def extend(self, parsed: Iterable[ParsedEvent | str]) -> None:
        """Append a parser's events at once; a `str` is a plain `output` line.

        The plain line is the hot path (one per line a command agent prints):
        its JSON is put together from the one escaped string, with no dict.
        """
        task_id, seq, ts = self.task_id, self.last_seq, time.time()
        new = []
        for item in parsed:
            seq += 1
            if type(item) is str:
                data_json = '{"line":' + encode_basestring_ascii(item) + "}"
                new.append(Event(seq, task_id, "output", data_json, ts))
            else:
                assert isinstance(item, ParsedEvent)
                new.append(Event.of(seq, task_id, item.type, item.data, ts))
        if new:
            self.last_seq = seq
            self.events += new
            self.pending += new
            self._wake()

    def since(self, after: int, limit: int) -> list[Event]:
        """Up to `limit` events with seq > `after`; `after` must not be before the tail."""
        start = after - self.trimmed
        return self.events[start : start + limit]

    def trim(self, stored_seq: int) -> None:
        """Forget events the store has (seq ≤ `stored_seq`), keeping a tail of them."""
        if len(self.events) < 2 * TAIL_EVENTS:
            return
        drop = min(len(self.events) - TAIL_EVENTS, stored_seq - self.trimmed)
        if drop > 0:
            del self.events[:drop]
            self.trimmed += drop

    def close(self) -> None:
        """No more events will come (the `done` event is in)."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def take_pending(self) -> tuple[list[Event], list[str]]:
        events, raw = self.pending, self.pending_raw
        self.pending, self.pending_raw = [], []
        return events, raw

    async def wait(self, after: int, timeout_s: float) -> bool:
        """Wait until there is an event past `after` or the log closes; False on timeout.

        All waiters are woken together, by an append or by the shared timer,
        which fires at the earliest deadline any of them asked for: a waiter
        may be woken early with nothing new (False), never late.
        """
        if self.last_seq > after or self.closed:
            return True
        loop = asyncio.get_running_loop()
        when = loop.time() + timeout_s
        if self._tick is None or when < self._tick.when():
            if self._tick is not None:
                self._tick.cancel()
            self._tick = loop.call_at(when, self._wake)
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
        await changed.wait()
        return self.last_seq > after or self.closed
