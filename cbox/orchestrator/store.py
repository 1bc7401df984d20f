"""Persistence of tasks and their event logs.

The service talks to a `Store` protocol; `SqliteStore` (one file, the embedded
default) is the real implementation and the one tests use. A task row keeps
the whole `Task` as JSON plus the columns we filter or sort on; events and raw
agent lines are separate tables keyed by (task, seq) so replay is an index
range scan.

Task rows go through `rows.dump_task` and `rows.load_task`: a row is written
only in a form that reads back, and a row an older version wrote badly is
repaired on read instead of failing every listing (see `rows.py`).

`append` writes events, raw lines and the task's `lines_consumed`/`last_seq`
in one transaction: after a crash the stored log and the count of consumed
container log lines always agree, which is what lets re-adoption resume the
log stream exactly where the store left off. The same transaction carries
the webhook outbox rows a state change causes (`OutboxRow`, see
`cbox.webhooks`), so a task that is stored as finished always has its
deliveries queued, and one that is not has none.

Schema changes since the first version are migrations (`migrations.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Protocol

import aiosqlite

from cbox.errors import ConfigError
from cbox.models import Event, Session, Task, TaskState
from cbox.orchestrator.migrations import OutboxRow, insert_outbox, migrate
from cbox.orchestrator.rows import dump_task, load_task

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_at REAL NOT NULL,
    idempotency_key TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, priority DESC, created_at);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at DESC);
CREATE INDEX IF NOT EXISTS tasks_idem ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raw_lines (
    task_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (task_id, n)
) WITHOUT ROWID;
"""

ACTIVE_STATES = (TaskState.QUEUED.value, TaskState.RUNNING.value)
#: What `_load` needs: the row's own columns let a row whose JSON is garbage be repaired.
_COLUMNS = "id, state, created_at, data"


def _load(row: Sequence[object]) -> Task:
    task_id, state, created_at, data = row
    return load_task(
        str(data), task_id=str(task_id), state=str(state),
        created_at=float(created_at) if isinstance(created_at, int | float) else 0.0,
    )


class Store(Protocol):
    """What the service needs from persistence."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def insert_task(self, task: Task) -> None: ...
    async def update_task(self, task: Task) -> None: ...
    async def get_task(self, task_id: str) -> Task | None: ...
    async def list_tasks(
        self, *, states: Sequence[TaskState] | None, limit: int, offset: int
    ) -> list[Task]: ...
    async def count_tasks(self, *, states: Sequence[TaskState] | None) -> int: ...
    async def active_with_key(self, key: str) -> Task | None: ...
    async def append(
        self, task: Task, events: Sequence[Event], raw: Sequence[str],
        outbox: Sequence[OutboxRow] = (), *, first_raw: int | None = None,
    ) -> None: ...
    async def events(self, task_id: str, *, after: int, limit: int) -> list[Event]: ...
    async def last_events(self, task_id: str, *, limit: int) -> list[Event]: ...
    async def raw_lines(self, task_id: str, *, after: int, limit: int) -> list[str]: ...
    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...
    async def put_session(self, session: Session) -> None: ...
    async def get_session(self, name: str) -> Session | None: ...
    async def list_sessions(self) -> list[Session]: ...
    async def delete_session(self, name: str) -> None: ...
    async def session_tasks(self, name: str, *, limit: int) -> list[Task]: ...


class SqliteStore:
    """SQLite in WAL mode through aiosqlite (its own thread, so the loop never blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.path)
            await self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only an OS
            # crash can lose the last transactions.
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.executescript(_SCHEMA)
            await self._db.commit()
            await migrate(self._db)
        except (OSError, aiosqlite.Error) as exc:
            raise ConfigError(f"cannot open the database {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @staticmethod
    def _row(task: Task) -> tuple[str, str, int, float, str | None, str]:
        return (
            task.id,
            task.state.value,
            task.spec.priority,
            task.created_at,
            task.spec.idempotency_key,
            dump_task(task),
        )

    async def insert_task(self, task: Task) -> None:
        await self.db.execute(
            "INSERT INTO tasks (id, state, priority, created_at, idempotency_key, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            self._row(task),
        )
        await self.db.commit()

    async def update_task(self, task: Task) -> None:
        await self._update(task)
        await self.db.commit()

    async def _update(self, task: Task) -> None:
        await self.db.execute(
            "UPDATE tasks SET state = ?, data = ? WHERE id = ?",
            (task.state.value, dump_task(task), task.id),
        )

    async def get_task(self, task_id: str) -> Task | None:
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else _load(row)

    @staticmethod
    def _where(states: Sequence[TaskState] | None) -> tuple[str, list[str]]:
        if not states:
            return "", []
        marks = ",".join("?" for _ in states)
        return f"WHERE state IN ({marks})", [s.value for s in states]

    async def list_tasks(
        self, *, states: Sequence[TaskState] | None, limit: int, offset: int
    ) -> list[Task]:
        where, args = self._where(states)
        sql = (f"SELECT {_COLUMNS} FROM tasks {where}"
               " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?")
        async with self.db.execute(sql, (*args, limit, offset)) as cur:
            rows = await cur.fetchall()
        return [_load(r) for r in rows]

    async def count_tasks(self, *, states: Sequence[TaskState] | None) -> int:
        where, args = self._where(states)
        async with self.db.execute(f"SELECT COUNT(*) FROM tasks {where}", args) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def active_with_key(self, key: str) -> Task | None:
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE idempotency_key = ? AND state IN (?, ?)"
            " ORDER BY created_at DESC LIMIT 1",
            (key, *ACTIVE_STATES),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else _load(row)

    async def append(
        self, task: Task, events: Sequence[Event], raw: Sequence[str],
        outbox: Sequence[OutboxRow] = (), *, first_raw: int | None = None,
    ) -> None:
        """Store a batch; `raw` are the stdout lines numbered from `first_raw` + 1
        (default: the batch ends at `task.lines_consumed`)."""
        # Snapshot everything before the first await: the caller keeps
        # mutating `task` while we write, and the row must match this batch.
        if first_raw is None:
            first_raw = task.lines_consumed - len(raw)
        state, data = task.state.value, dump_task(task)
        rows = [(e.task_id, e.seq, e.type, e.ts, e.data_json) for e in events]
        try:
            await self.db.executemany(
                "INSERT INTO events (task_id, seq, type, ts, data) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            if raw:
                await self.db.executemany(
                    "INSERT INTO raw_lines (task_id, n, line) VALUES (?, ?, ?)",
                    zip(repeat(task.id), range(first_raw + 1, first_raw + len(raw) + 1), raw),
                )
            await self.db.execute(
                "UPDATE tasks SET state = ?, data = ? WHERE id = ?", (state, data, task.id)
            )
            if outbox:
                await insert_outbox(self.db, outbox)
            await self.db.commit()
        except BaseException:
            # Half a batch must not stay in the open transaction for the next one.
            await self.db.rollback()
            raise

    async def events(self, task_id: str, *, after: int, limit: int) -> list[Event]:
        async with self.db.execute(
            "SELECT seq, type, ts, data FROM events WHERE task_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (task_id, after, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [Event(r[0], task_id, r[1], r[3], r[2]) for r in rows]

    async def last_events(self, task_id: str, *, limit: int) -> list[Event]:
        """The newest `limit` events, oldest first (the in-memory tail of a recovered task)."""
        async with self.db.execute(
            "SELECT seq, type, ts, data FROM events WHERE task_id = ?"
            " ORDER BY seq DESC LIMIT ?",
            (task_id, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [Event(r[0], task_id, r[1], r[3], r[2]) for r in list(rows)[::-1]]

    async def raw_lines(self, task_id: str, *, after: int, limit: int) -> list[str]:
        async with self.db.execute(
            "SELECT line FROM raw_lines WHERE task_id = ? AND n > ? ORDER BY n LIMIT ?",
            (task_id, after, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def get_meta(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        await self.db.commit()

    # ------------------------------------------------------------------ sessions

    async def put_session(self, session: Session) -> None:
        await self.db.execute(
            "INSERT INTO sessions (id, created_at, data) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            (session.id, session.created_at, session.model_dump_json()),
        )
        await self.db.commit()

    async def get_session(self, name: str) -> Session | None:
        async with self.db.execute("SELECT data FROM sessions WHERE id = ?", (name,)) as cur:
            row = await cur.fetchone()
        return None if row is None else Session.model_validate_json(row[0])

    async def list_sessions(self) -> list[Session]:
        async with self.db.execute("SELECT data FROM sessions ORDER BY created_at DESC") as cur:
            rows = await cur.fetchall()
        return [Session.model_validate_json(r[0]) for r in rows]

    async def delete_session(self, name: str) -> None:
        await self.db.execute("DELETE FROM sessions WHERE id = ?", (name,))
        await self.db.commit()

    async def session_tasks(self, name: str, *, limit: int) -> list[Task]:
        """A session's tasks, oldest first (the order of the conversation)."""
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE"
            " CASE WHEN json_valid(data) THEN json_extract(data, '$.spec.session') END = ?"
            " ORDER BY created_at, id LIMIT ?",
            (name, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [_load(r) for r in rows]

