"""The one seam between the task lifecycle and whoever wants to hear about it.

`TaskService` tells its listener when a task starts or ends and asks it to
check a spec before accepting it; that is all it knows of webhooks
(`cbox.webhooks.Webhooks` is the real listener). The calls are synchronous and
do no I/O, so a task's start or finish never waits for a receiver: what the
listener wants written goes into the store in the same transaction as the
task state (`staged`), and it is told when that transaction is committed.
"""

from __future__ import annotations

from typing import Protocol

from cbox.models import Task, TaskSpec
from cbox.orchestrator.migrations import OutboxRow

#: What happened to a task: "started", or how it ended: a final `TaskState` value, or
#: "over_budget" for a task the gateway stopped for its budget (state `stopped`).
TaskEvent = str


class TaskListener(Protocol):
    def check(self, spec: TaskSpec) -> None:
        """Raise `InvalidRequest` for a spec the listener cannot serve (a bad `notify_url`)."""

    def task_event(self, task: Task, event: TaskEvent) -> None:
        """`task` just reached `event`; its state is set, nothing is stored yet."""

    def staged(self, task_id: str) -> list[OutboxRow]:
        """Rows to write with this task's next store write; kept until `committed`,
        so a write that fails hands them out again with the next one."""

    def committed(self, task_id: str, rows: list[OutboxRow]) -> None:
        """These rows of `staged` are durable now."""


class NullListener:
    """Nobody listens."""

    def check(self, spec: TaskSpec) -> None:
        return None

    def task_event(self, task: Task, event: TaskEvent) -> None:
        return None

    def staged(self, task_id: str) -> list[OutboxRow]:
        return []

    def committed(self, task_id: str, rows: list[OutboxRow]) -> None:
        return None
