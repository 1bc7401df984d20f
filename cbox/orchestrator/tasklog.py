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

What the agent says is bounded here as well (the last guard after the
parser): one event's JSON is at most `max_event_json` (bigger ones are
replaced by a note of their size), the memory tail is bounded in bytes as
well as in events (`TAIL_BYTES`), and `agent_output` counts the bytes of
events and raw lines against the task's output budget: past it nothing more
from the agent is kept, one `log` event says so, and `over_budget` tells the
service to end the task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from cbox.models import Event, encode_data
from cbox.orchestrator.streamjson import MAX_EVENT_BYTES, ParsedEvent

#: Events kept in memory once the store has them; the log is trimmed back to
#: this when it reaches twice as many, so trimming costs little per event.
TAIL_EVENTS = 5000
#: ... and at most this many bytes of event JSON, once they are stored.
TAIL_BYTES = 16 * 1024 * 1024
#: What one stored raw line costs beyond its text (its row), charged to the
#: task's output budget so a flood of empty lines cannot fill the disk.
ROW_OVERHEAD_BYTES = 32


def json_cap(max_event_bytes: int) -> int:
    """The hard cap of one event's JSON: the parser's cap counts characters,
    and escaping can make a character up to 12 bytes of ASCII JSON."""
    return 4 * max_event_bytes + 1024


class TaskLog:
    def __init__(
        self, task_id: str, history: Iterable[Event] = (), *,
        budget_bytes: int | None = None, max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        """`history` is the stored tail of a task's log (all of it, or its newest part).

        `budget_bytes` caps what `agent_output` keeps for this task (None: no cap).
        """
        self.task_id = task_id
        self.events: list[Event] = list(history)
        #: seq of `events[0]` minus one: how much of the log is only in the store.
        self.trimmed = self.events[0].seq - 1 if self.events else 0
        self.last_seq = self.trimmed + len(self.events)
        self.pending: list[Event] = []
        self.pending_raw: list[str] = []
        #: Number of the stdout line before `pending_raw[0]` (None: take it from the task).
        self.pending_raw_first: int | None = None
        self.budget_bytes = budget_bytes
        self.max_event_json = json_cap(max_event_bytes)
        #: Bytes of agent output kept so far (event JSON and raw lines).
        self.output_bytes = 0
        self.over_budget = False
        self._memory_bytes = sum(len(e.data_json) for e in self.events)
        self.closed = False
        self._changed: asyncio.Event | None = None
        self._tick: asyncio.TimerHandle | None = None

    def append(self, type_: str, data: dict[str, Any]) -> Event:
        self.last_seq += 1
        event = Event.of(self.last_seq, self.task_id, type_, data)
        self.events.append(event)
        self.pending.append(event)
        self._memory_bytes += len(event.data_json)
        self._wake()
        return event

    def agent_output(
        self, parsed: Iterable[ParsedEvent | str], raw: Sequence[str] = (), first_raw: int = 0
    ) -> None:
        """Keep what the agent said (events, and the raw stdout lines numbered
        from `first_raw` + 1) while the task's output budget lasts."""
        if self.over_budget:
            return
        # Each raw line is a row: a flood of empty lines costs disk too.
        size = sum(map(len, raw)) + ROW_OVERHEAD_BYTES * len(raw)
        if raw:
            if not self.pending_raw:
                self.pending_raw_first = first_raw
            self.pending_raw += raw
        before = self._memory_bytes
        self.extend(parsed)
        self.output_bytes += size + self._memory_bytes - before
        budget = self.budget_bytes
        if budget is not None and self.output_bytes > budget:
            self.over_budget = True
            self.append("log", {"line": f"output budget of {budget} bytes used up: nothing "
                                "more the agent prints is kept, and the task is ended"})

    def extend(self, parsed: Iterable[ParsedEvent | str]) -> None:
        """Append a parser's events at once; a `str` is a plain `output` line.

        The plain line is the hot path (one per line a command agent prints):
        its JSON is put together from the one escaped string, with no dict.
        """
        task_id, seq, ts = self.task_id, self.last_seq, time.time()
        cap, size = self.max_event_json, 0
        new = []
        for item in parsed:
            seq += 1
            if type(item) is str:
                data_json = '{"line":' + encode_basestring_ascii(item) + "}"
                kind = "output"
            else:
                assert isinstance(item, ParsedEvent)
                data_json, kind = encode_data(item.data), item.type
            if len(data_json) > cap:
                data_json = encode_data({"line": f"[{kind} event of {len(data_json)} bytes cut]",
                                         "cut_bytes": len(data_json)})
            size += len(data_json)
            new.append(Event(seq, task_id, kind, data_json, ts))
        if new:
            self.last_seq = seq
            self.events += new
            self.pending += new
            self._memory_bytes += size
            self._wake()

    def since(self, after: int, limit: int) -> list[Event]:
        """Up to `limit` events with seq > `after`; `after` must not be before the tail."""
        start = after - self.trimmed
        return self.events[start : start + limit]

    def trim(self, stored_seq: int) -> None:
        """Forget events the store has (seq ≤ `stored_seq`), keeping a tail of them.

        The tail is `TAIL_EVENTS` events and at most `TAIL_BYTES` of JSON;
        trimming starts at twice either, so it costs little per event.
        """
        events = self.events
        if len(events) < 2 * TAIL_EVENTS and self._memory_bytes < 2 * TAIL_BYTES:
            return
        limit = min(stored_seq - self.trimmed, len(events))
        keep_n = len(events) - TAIL_EVENTS
        drop = freed = 0
        while drop < limit and (drop < keep_n or self._memory_bytes - freed > TAIL_BYTES):
            freed += len(events[drop].data_json)
            drop += 1
        if drop > 0:
            del events[:drop]
            self.trimmed += drop
            self._memory_bytes -= freed

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
        """Pending events and raw lines (read `pending_raw_first` before this)."""
        events, raw = self.pending, self.pending_raw
        self.pending, self.pending_raw, self.pending_raw_first = [], [], None
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
