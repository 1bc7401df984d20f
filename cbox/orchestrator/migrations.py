"""Schema migrations of the SQLite store, numbered by SQLite's `user_version`.

`_SCHEMA` in `store.py` is version 0 (every database made before migrations
existed); each migration here runs once, in order, on databases made by older
versions, so an existing database keeps its tasks and gains the new tables.

Version 1 is the webhook outbox (`cbox.webhooks`): subscriptions, deliveries
and the log of their attempts. A delivery row is written in the same
transaction as the task state it reports (`SqliteStore.append`), so after a
crash either both are there or neither is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

#: Migrations by the `user_version` they bring a database to; never edit a shipped one.
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    subscription TEXT NOT NULL,
    url TEXT NOT NULL,
    event TEXT NOT NULL,
    task_id TEXT,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    last_status INTEGER,
    last_error TEXT,
    last_latency_ms INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries (status, next_at);
CREATE INDEX IF NOT EXISTS webhook_by_sub ON webhook_deliveries (subscription, created_at DESC);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    at REAL NOT NULL,
    status INTEGER,
    latency_ms INTEGER NOT NULL,
    error TEXT,
    PRIMARY KEY (delivery_id, n)
) WITHOUT ROWID;
"""),
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A webhook delivery, written in the transaction that stores the task state it reports."""

    id: str
    subscription: str
    url: str
    event: str
    task_id: str | None
    body: str
    created_at: float


async def migrate(db: aiosqlite.Connection) -> None:
    """Bring a database of any earlier version to the current schema."""
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    for target, script in _MIGRATIONS:
        if version < target:
            await db.executescript(script)
            await db.execute(f"PRAGMA user_version = {target}")
            await db.commit()
            version = target


async def insert_outbox(
    db: aiosqlite.Connection, rows: Sequence[OutboxRow], status: str = "pending"
) -> None:
    """Queue deliveries, due now; the caller commits."""
    await db.executemany(
        "INSERT INTO webhook_deliveries (id, subscription, url, event, task_id, body, status,"
        " next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.id, r.subscription, r.url, r.event, r.task_id, r.body, status, r.created_at,
          r.created_at) for r in rows],
    )
