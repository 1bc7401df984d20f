"""A task row that is always written readable, and read back whatever it holds.

The store keeps each `Task` as JSON and reads it back through the same model.
Before this module, a value that serialized but did not validate (a string
`num_turns` from the agent) was written once and then refused on every read:
`/history` and `/tasks` answered 500 on that database for good, across
restarts. And a value that did not serialize at all (a lone surrogate) made
the write fail, so the task's end was never stored.

So the write side round-trips: a row is stored only if `Task` reads it back;
if not, the row is repaired first (below). The read side repairs what an
older version may have written: each field that fails validation is dropped
and named in `outcome.dropped`; a row that cannot be read at all (not JSON,
no valid spec) becomes a minimal `failed` task with that reason. A task whose
row had to be repaired is never run again: an active one is marked `failed`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from cbox.models import Outcome, Task, TaskSpec, TaskState
from cbox.orchestrator.untrusted import bound_json, clean_text, clip

log = logging.getLogger(__name__)

INVALID_ROW = "stored row was invalid"
#: A row is rebuilt at most this many times, one failing field at a time.
_MAX_REPAIRS = 50
#: Generous: a row holds the whole spec (prompt up to 100,000 characters).
_ROW_CHARS = 8_000_000


def dump_task(task: Task) -> str:
    """The task as JSON that `load_task` reads back as it is (repaired if need be)."""
    try:
        data = task.model_dump_json(warnings=False)
        Task.model_validate_json(data)
        return data
    except (ValidationError, ValueError) as exc:
        log.warning("task %s does not round-trip (%s); storing a repaired row", task.id, exc)
    try:
        raw: Any = bound_json(task.model_dump(mode="python", warnings=False), _ROW_CHARS)
    except Exception:  # nothing left to save but the id: the row says it failed
        raw = None
    repaired = repair(raw, task_id=task.id, state=task.state, created_at=task.created_at,
                      keep_state=True)
    return repaired.model_dump_json()


def load_task(data: str, *, task_id: str, state: str, created_at: float) -> Task:
    """A stored row as a `Task`; an invalid row is repaired (see the module docstring)."""
    try:
        return Task.model_validate_json(data)
    except ValidationError:
        pass
    try:
        raw: Any = json.loads(data)
    except ValueError:
        raw = None
    log.warning("task row %s is invalid; repairing it", task_id)
    return repair(bound_json(raw, _ROW_CHARS), task_id=task_id, state=_state(state),
                  created_at=created_at, keep_state=False)


def repair(
    raw: Any, *, task_id: str, state: TaskState, created_at: float, keep_state: bool
) -> Task:
    """A valid `Task` from what is left of `raw`, dropping fields that fail.

    `keep_state` is for the write side (the live task goes on); on the read
    side an active task is failed, as nobody can tell what its row meant.
    """
    data = raw if isinstance(raw, dict) else {}
    dropped: list[str] = [] if isinstance(raw, dict) else ["row: not a JSON object"]
    task: Task | None = None
    why = "too many invalid fields"
    for _ in range(_MAX_REPAIRS):
        try:
            task = Task.model_validate(data)
            break
        except ValidationError as exc:
            # One field a round: dropping a list item moves the others' places.
            error = exc.errors(include_url=False, include_input=False)[0]
            if not _drop(data, error["loc"]):
                why = f"{_path(error['loc'])}: {error['msg']}"
                break
            dropped.append(f"{_path(error['loc'])}: {clip(clean_text(error['msg']), 160)}")
    if task is None or task.id != task_id:
        # Without its own id and spec the row is only a record that it failed:
        # a placeholder must never be queued and run.
        task = _minimal(task_id, created_at, why if task is None else "id does not match")
        task.outcome.dropped = dropped[:50]
        return task
    task.outcome.dropped = [*task.outcome.dropped, *dropped][:50]
    if not keep_state and not task.state.terminal:
        task.state = TaskState.FAILED
        task.outcome.error = INVALID_ROW
    elif keep_state:
        task.state = state
    return task


def _minimal(task_id: str, created_at: float, why: str) -> Task:
    return Task(
        id=task_id,
        spec=TaskSpec(prompt=f"({INVALID_ROW})"),
        state=TaskState.FAILED,
        created_at=created_at,
        outcome=Outcome(error=f"{INVALID_ROW}: {clip(clean_text(why), 160)}"),
    )


def _drop(data: dict[str, Any], loc: tuple[int | str, ...]) -> bool:
    """Remove the value at `loc`; an item of a required top-level field cannot go."""
    if not loc or loc[0] == "id" or loc[:2] in (("spec",), ("spec", "prompt")):
        return False
    node: Any = data
    for key in loc[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return False
    last = loc[-1]
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        del node[last]
        return True
    return False


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _state(value: str) -> TaskState:
    try:
        return TaskState(value)
    except ValueError:
        return TaskState.FAILED
