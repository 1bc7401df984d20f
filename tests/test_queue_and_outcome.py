"""The queue's order and locks, and the rules for how a task ended (pure logic)."""

from __future__ import annotations

import pytest

from cbox.models import MountMode, Outcome, Task, TaskSpec, TaskState
from cbox.orchestrator.docker import ExitInfo
from cbox.orchestrator.outcome import Ending, apply_result, decide
from cbox.orchestrator.queue import TaskQueue
from cbox.orchestrator.streamjson import StreamJsonParser


def task(n: int, *, priority: int = 0, workspace: str = "/ws", mode: MountMode = MountMode.RW,
         session: str | None = None, isolated: bool = False) -> Task:
    spec = TaskSpec(prompt=f"t{n}", priority=priority, session=session)
    return Task(id=f"task_{n}", spec=spec, workspace=workspace, mount_mode=mode,
                created_at=float(n), isolated=isolated)


def test_priority_then_arrival() -> None:
    queue = TaskQueue()
    for t in (task(1), task(2, priority=5, workspace="/a"), task(3, workspace="/b")):
        queue.add(t)
    assert [t.id for t in queue.ordered()] == ["task_2", "task_1", "task_3"]
    assert queue.position("task_3") == 3
    assert queue.position("nope") is None


def test_writers_exclude_nested_trees_but_readers_and_isolated_go() -> None:
    queue = TaskQueue()
    queue.add(task(1, workspace="/ws"))
    queue.add(task(2, workspace="/ws/sub"))
    queue.add(task(3, workspace="/ws", mode=MountMode.RO))
    queue.add(task(4, workspace="/other"))
    assert [t.id for t in queue.take_ready(10)] == ["task_1", "task_3", "task_4"]
    assert [t.id for t in queue.ordered()] == ["task_2"]
    queue.unlock(task(1, workspace="/ws"))
    assert [t.id for t in queue.take_ready(10)] == ["task_2"]


def test_isolated_tasks_take_no_writer_lock() -> None:
    queue = TaskQueue()
    for n in (1, 2, 3):
        queue.add(task(n, isolated=True))
    assert len(queue.take_ready(10)) == 3


def test_one_task_per_session_and_slots() -> None:
    queue = TaskQueue()
    queue.add(task(1, session="s", mode=MountMode.RO))
    queue.add(task(2, session="s", mode=MountMode.RO))
    queue.add(task(3, mode=MountMode.RO))
    queue.add(task(4, mode=MountMode.RO))
    assert [t.id for t in queue.take_ready(2)] == ["task_1", "task_3"]
    assert [t.id for t in queue.take_ready(2)] == ["task_4"]


def ending(**kw: object) -> Ending:
    base: dict[str, object] = {"over_budget": None, "stop_requested": False,
                               "timed_out": False, "timeout_s": 60.0, "memory_mb": 512}
    base.update(kw)
    return Ending(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("end", "info", "is_error", "state", "error"),
    [
        (ending(), ExitInfo(0, False, False), False, TaskState.COMPLETED, None),
        (ending(), ExitInfo(0, False, False), True, TaskState.FAILED, "exited with code 0"),
        (ending(), ExitInfo(3, False, False), None, TaskState.FAILED, "exited with code 3"),
        (ending(), ExitInfo(137, True, False), None, TaskState.FAILED, "out of memory"),
        (ending(timed_out=True), ExitInfo(143, False, False), None, TaskState.TIMED_OUT,
         "timed out after 60s"),
        (ending(stop_requested=True, timed_out=True), ExitInfo(143, False, False), None,
         TaskState.STOPPED, "stopped by request"),
        (ending(over_budget="budget exceeded: $2"), ExitInfo(143, False, False), None,
         TaskState.STOPPED, "budget exceeded"),
        (ending(), None, None, TaskState.FAILED, None),
    ],
)
def test_decide(
    end: Ending, info: ExitInfo | None, is_error: bool | None, state: TaskState,
    error: str | None,
) -> None:
    outcome = Outcome(is_error=is_error)
    assert decide(end, info, outcome) is state
    if error is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None
        assert error in outcome.error


def test_max_turns_errors_become_the_reason() -> None:
    parser = StreamJsonParser()
    parser.feed('{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":2,'
                '"errors":["Reached maximum number of turns (1)"],"session_id":"s"}')
    outcome = Outcome()
    apply_result(parser, outcome)
    assert decide(ending(), ExitInfo(1, False, False), outcome) is TaskState.FAILED
    assert outcome.error == "Reached maximum number of turns (1)"
    assert outcome.num_turns == 2
