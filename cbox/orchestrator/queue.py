"""The waiting line: priority order, and the locks that hold some tasks back.

Higher priority first, first come first served within a priority. A task
that cannot start yet is skipped, not waited for, so the tasks behind it
still go:
- a read-write task waits while another writer holds the same tree, or a
  tree inside or around it (isolated tasks work on their own copies and take
  no such lock, but do wait for a shared writer, whose tree they snapshot);
- a task of a session waits while another task of that session runs, since
  a conversation is linear.
"""

from __future__ import annotations

from pathlib import Path

from cbox.models import MountMode, Task


class TaskQueue:
    def __init__(self) -> None:
        self._waiting: list[Task] = []  # in arrival order
        self._writers: set[str] = set()
        self._sessions: set[str] = set()

    def __contains__(self, task_id: object) -> bool:
        return any(t.id == task_id for t in self._waiting)

    def add(self, task: Task) -> None:
        self._waiting.append(task)

    def remove(self, task_id: str) -> bool:
        for n, task in enumerate(self._waiting):
            if task.id == task_id:
                del self._waiting[n]
                return True
        return False

    def restore_order(self) -> None:
        """After recovery: back to the original arrival order."""
        self._waiting.sort(key=lambda t: (t.created_at, t.id))

    def ordered(self) -> list[Task]:
        order = {t.id: n for n, t in enumerate(self._waiting)}
        return sorted(self._waiting, key=lambda t: (-t.spec.priority, order[t.id]))

    def position(self, task_id: str) -> int | None:
        for n, task in enumerate(self.ordered(), 1):
            if task.id == task_id:
                return n
        return None

    def take_ready(self, slots: int) -> list[Task]:
        """Up to `slots` tasks that may start now, taken off the line and locked."""
        taken: list[Task] = []
        for task in self.ordered():
            if len(taken) >= slots:
                break
            if self._blocked(task):
                continue
            self.remove(task.id)
            self.lock(task)
            taken.append(task)
        return taken

    def _blocked(self, task: Task) -> bool:
        if task.mount_mode is MountMode.RW and task.workspace:
            path = Path(task.workspace)
            for held in map(Path, self._writers):
                if path == held or held in path.parents or path in held.parents:
                    return True
        return bool(task.spec.session and task.spec.session in self._sessions)

    @staticmethod
    def _writes_shared_tree(task: Task) -> bool:
        return task.mount_mode is MountMode.RW and bool(task.workspace) and not task.isolated

    def lock(self, task: Task) -> None:
        if self._writes_shared_tree(task) and task.workspace:
            self._writers.add(task.workspace)
        if task.spec.session:
            self._sessions.add(task.spec.session)

    def unlock(self, task: Task) -> None:
        if self._writes_shared_tree(task) and task.workspace:
            self._writers.discard(task.workspace)
        if task.spec.session:
            self._sessions.discard(task.spec.session)
