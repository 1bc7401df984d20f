"""The store writes only rows it can read back, and reads back any row an old version wrote.

A real SQLite file, poisoned by hand with the rows the old code wrote (a
string `num_turns`, a lone surrogate escape, JSON cut short), read through
the real `SqliteStore`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from cbox.models import Task, TaskSpec, TaskState
from cbox.orchestrator.store import SqliteStore

INSERT = (
    "INSERT INTO tasks (id, state, priority, created_at, idempotency_key, data)"
    " VALUES (?, ?, 0, ?, NULL, ?)"
)


async def test_poisoned_rows_are_repaired_on_read(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cbox.db")
    await store.open()
    await store.close()
    good = Task(id="task_good", spec=TaskSpec(prompt="p"), state=TaskState.COMPLETED)
    turns = json.loads(good.model_dump_json())
    turns.update(id="task_turns")
    turns["outcome"].update(num_turns="5 turns", cost_usd=-1, claude_session_id="--x")
    surrogate = good.model_dump_json().replace('"task_good"', '"task_sur"').replace(
        '"result":null', '"result":"a \\udfff b"'
    )
    with sqlite3.connect(tmp_path / "cbox.db") as db:
        db.execute(INSERT, ("task_good", "completed", 1.0, good.model_dump_json()))
        db.execute(INSERT, ("task_turns", "completed", 2.0, json.dumps(turns)))
        db.execute(INSERT, ("task_sur", "completed", 3.0, surrogate))
        db.execute(INSERT, ("task_cut", "queued", 4.0, '{"id": "task_cut", "spec": {"pr'))
        db.execute(INSERT, ("task_nul", "running", 5.0, "\x00\x01"))
    await store.open()
    try:
        tasks = {t.id: t for t in await store.list_tasks(states=None, limit=10, offset=0)}
        assert set(tasks) == {"task_good", "task_turns", "task_sur", "task_cut", "task_nul"}
        assert tasks["task_good"] == good
        repaired = tasks["task_turns"]
        assert repaired.state is TaskState.COMPLETED
        assert (repaired.outcome.num_turns, repaired.outcome.cost_usd) == (None, None)
        assert repaired.outcome.claude_session_id is None
        assert len(repaired.outcome.dropped) == 3
        assert tasks["task_sur"].outcome.result == "a \ufffd b"
        for task_id in ("task_cut", "task_nul"):  # unreadable, and never to be run
            assert tasks[task_id].state is TaskState.FAILED
            assert "stored row was invalid" in str(tasks[task_id].outcome.error)
        assert (await store.get_task("task_cut")) == tasks["task_cut"]
        assert await store.session_tasks("nobody", limit=10) == []
        # Written back through the store, a repaired row reads as it is.
        await store.update_task(repaired)
        assert await store.get_task("task_turns") == repaired
    finally:
        await store.close()


async def test_a_value_that_would_not_read_back_is_never_written(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cbox.db")
    await store.open()
    try:
        task = Task(id="task_live", spec=TaskSpec(prompt="p"), state=TaskState.RUNNING)
        await store.insert_task(task)
        # What the old outcome code assigned straight from the agent's result line.
        task.outcome.num_turns = "7"  # type: ignore[assignment]
        task.outcome.usage = "lots"  # type: ignore[assignment]
        task.outcome.result = "bad \ud800"
        nested: list[object] = []
        for _ in range(400):
            nested = [nested]
        task.outcome.gateway_usage = {"deep": nested}
        await store.append(task, [], [])
        stored = await store.get_task("task_live")
        assert stored is not None
        assert stored.state is TaskState.RUNNING  # the live task goes on
        assert stored.outcome.result == "bad \ufffd"
        assert stored.outcome.usage is None and stored.outcome.dropped
    finally:
        await store.close()
