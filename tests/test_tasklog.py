"""Tests of `TaskLog`, the in-memory event log of an active task.

Why: every follower and the store read events from here. The fast path for
plain output lines builds their JSON by hand, so it must match what the
general path encodes, and seq must stay gap-free however events arrive.
"""

from __future__ import annotations

import asyncio
import json

from cbox.models import Event
from cbox.orchestrator.streamjson import ParsedEvent
from cbox.orchestrator.tasklog import TAIL_EVENTS, TaskLog

LINES = ["plain", 'quote " and \\ backslash', "é ☃ \U0001f600", "\x00\x1b[31mred\t", ""]


def test_plain_output_lines_encode_like_any_event() -> None:
    tlog = TaskLog("task_x")
    tlog.append("start", {"task_id": "task_x", "prompt": "p"})
    tlog.extend([*LINES, ParsedEvent("log", {"line": "typed"})])
    events = tlog.events
    assert [e.seq for e in events] == list(range(1, len(LINES) + 3))
    for event, line in zip(events[1:], LINES, strict=False):
        general = Event.of(event.seq, "task_x", "output", {"line": line})
        assert (event.type, event.data_json) == ("output", general.data_json)
        assert event.data == {"line": line}
        assert event.data_json.isascii()
    assert (events[-1].type, events[-1].data) == ("log", {"line": "typed"})
    assert json.loads(events[-1].data_json) == {"line": "typed"}
    pending, _ = tlog.take_pending()
    assert pending == events
    assert tlog.last_seq == len(events)


async def test_wait_wakes_every_follower_and_times_out() -> None:
    tlog = TaskLog("task_x")
    assert not await tlog.wait(0, 0.01)
    waiters = [asyncio.create_task(tlog.wait(0, 30)) for _ in range(3)]
    await asyncio.sleep(0)
    tlog.extend(["a"])
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert await tlog.wait(0, 30)  # already past: no waiting
    closing = asyncio.create_task(tlog.wait(1, 30))
    await asyncio.sleep(0)
    tlog.close()
    assert await closing


def test_trim_keeps_a_tail_and_never_drops_what_the_store_lacks() -> None:
    tlog = TaskLog("task_x")
    tlog.extend([str(i) for i in range(3 * TAIL_EVENTS)])
    tlog.trim(stored_seq=100)  # only 100 stored: the rest must stay
    assert tlog.trimmed == 100
    assert tlog.since(100, 1)[0].seq == 101
    tlog.trim(stored_seq=tlog.last_seq)
    assert (tlog.trimmed, len(tlog.events)) == (2 * TAIL_EVENTS, TAIL_EVENTS)
    assert [e.seq for e in tlog.since(tlog.last_seq - 2, 10)] == [
        tlog.last_seq - 1, tlog.last_seq
    ]
    tlog.extend(["more"])
    tlog.trim(stored_seq=tlog.last_seq)  # under twice the tail: nothing to do yet
    assert len(tlog.events) == TAIL_EVENTS + 1


def test_a_recovered_log_starts_at_its_stored_tail() -> None:
    history = [Event.of(seq, "task_x", "output", {"line": str(seq)}) for seq in range(41, 51)]
    tlog = TaskLog("task_x", history)
    assert (tlog.trimmed, tlog.last_seq) == (40, 50)
    assert tlog.append("log", {"line": "re-adopted"}).seq == 51
    assert [e.seq for e in tlog.since(45, 3)] == [46, 47, 48]


async def test_keepalive_deadlines_share_one_timer_at_the_earliest() -> None:
    """A waiter is never woken later than it asked; it may be woken earlier, with nothing new."""
    tlog = TaskLog("task_x")
    patient = asyncio.create_task(tlog.wait(0, 3600))
    await asyncio.sleep(0)
    assert await tlog.wait(0, 0.01) is False
    assert await patient is False  # woken with the other one: no news, so a keep-alive
    again = asyncio.create_task(tlog.wait(0, 3600))
    await asyncio.sleep(0)
    tlog.append("log", {"line": "news"})
    assert await again is True
