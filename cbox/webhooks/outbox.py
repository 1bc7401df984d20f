"""The durable outbox: subscriptions, deliveries and attempts in the task store's SQLite file.

Rows a task's state change causes are written by the task store itself, in
the same transaction (`SqliteStore.append`). Everything after that is here,
on a connection of its own, so a slow delivery bookkeeping write never sits
inside a task write. A delivery is `pending` until an attempt gets a 2xx
(`delivered`), the schedule runs out (`failed`), or its subscription goes
(`cancelled`); a crash leaves it `pending` with its `next_at`, so the next
start sends it again with the same id. Ended deliveries are kept for 30 days.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from cbox.errors import ConfigError
from cbox.orchestrator.migrations import OutboxRow, insert_outbox, migrate
from cbox.webhooks.models import Attempt, Delivery, Subscription

#: How long the delivery log keeps deliveries that ended (pruned at start-up).
KEEP_S = 30 * 86400
_DELIVERY = (
    "id, subscription, url, event, task_id, status, attempts, next_at, created_at,"
    " finished_at, last_status, last_error, last_latency_ms"
)


@dataclass(frozen=True, slots=True)
class Due:
    """What the sender needs to make the next attempt of a delivery."""

    id: str
    subscription: str
    url: str
    event: str
    body: str
    attempts: int


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("outbox is not open")
        return self._db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.path, timeout=30)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await migrate(self._db)
            await self._prune(time.time() - KEEP_S)
        except (OSError, aiosqlite.Error) as exc:
            raise ConfigError(f"cannot open the database {self.path}: {exc}") from exc

    async def _prune(self, before: float) -> None:
        """Forget deliveries that ended before `before`, and their attempts."""
        await self.db.execute(
            "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM"
            " webhook_deliveries WHERE status != 'pending' AND created_at < ?)",
            (before,),
        )
        await self.db.execute(
            "DELETE FROM webhook_deliveries WHERE status != 'pending' AND created_at < ?",
            (before,),
        )
        await self.db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    # ------------------------------------------------------------------ subscriptions

    async def subscriptions(self) -> list[Subscription]:
        async with self.db.execute(
            "SELECT data FROM webhook_subscriptions ORDER BY name"
        ) as cur:
            rows = await cur.fetchall()
        return [Subscription.model_validate(json.loads(r[0])) for r in rows]

    async def put(self, sub: Subscription) -> None:
        await self.db.execute(
            "INSERT INTO webhook_subscriptions (name, source, created_at, data)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " source = excluded.source, data = excluded.data",
            (sub.name, sub.source, sub.created_at, sub.stored()),
        )
        await self.db.commit()

    async def delete(self, name: str) -> None:
        await self.db.execute("DELETE FROM webhook_subscriptions WHERE name = ?", (name,))
        await self.cancel_pending(name, "subscription deleted", commit=False)
        await self.db.commit()

    async def forget_file_subscriptions(self, keep: Sequence[str]) -> None:
        """Drop subscriptions once read from the TOML file that it no longer has."""
        async with self.db.execute(
            "SELECT name FROM webhook_subscriptions WHERE source = 'file'"
        ) as cur:
            names = [r[0] for r in await cur.fetchall()]
        for name in names:
            if name not in keep:
                await self.delete(name)

    # ------------------------------------------------------------------ deliveries

    async def enqueue(self, rows: Sequence[OutboxRow], status: str = "pending") -> None:
        """Queue deliveries (`status` other than pending: only log them)."""
        await insert_outbox(self.db, rows, status)
        await self.db.commit()

    async def due(self, now: float, *, per_receiver: int, limit: int) -> list[Due]:
        """The oldest due deliveries, at most `per_receiver` of each (subscription, URL).

        The cap per receiver is what keeps one that hangs from filling the batch: its
        in-flight deliveries are still `pending` and due, so they take its places,
        and the rest of the batch goes to everyone else.
        """
        async with self.db.execute(
            "SELECT id, subscription, url, event, body, attempts FROM ("
            " SELECT *, ROW_NUMBER() OVER (PARTITION BY subscription, url ORDER BY next_at)"
            " AS place FROM webhook_deliveries WHERE status = 'pending' AND next_at <= ?"
            ") WHERE place <= ? ORDER BY next_at LIMIT ?",
            (now, per_receiver, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [Due(*r) for r in rows]

    async def next_due(self) -> float | None:
        async with self.db.execute(
            "SELECT MIN(next_at) FROM webhook_deliveries WHERE status = 'pending'"
        ) as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def record(
        self, delivery_id: str, attempt: Attempt, *, status: str, next_at: float | None,
        url: str,
    ) -> None:
        """One attempt's outcome, and what happens next (`status` pending: retry at `next_at`)."""
        await self.db.execute(
            "INSERT OR REPLACE INTO webhook_attempts (delivery_id, n, at, status, latency_ms,"
            " error) VALUES (?, ?, ?, ?, ?, ?)",
            (delivery_id, attempt.n, attempt.at, attempt.status, attempt.latency_ms,
             attempt.error),
        )
        finished = None if status == "pending" else attempt.at + attempt.latency_ms / 1000
        await self.db.execute(
            "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_at = ?,"
            " finished_at = ?, last_status = ?, last_error = ?, last_latency_ms = ?, url = ?"
            " WHERE id = ?",
            (status, attempt.n, next_at if next_at is not None else 0.0, finished,
             attempt.status, attempt.error, attempt.latency_ms, url, delivery_id),
        )
        await self.db.commit()

    async def cancel(self, delivery_id: str, reason: str) -> None:
        await self.db.execute(
            "UPDATE webhook_deliveries SET status = 'cancelled', last_error = ?"
            " WHERE id = ? AND status = 'pending'",
            (reason, delivery_id),
        )
        await self.db.commit()

    async def cancel_pending(self, subscription: str, reason: str, *, commit: bool = True) -> None:
        await self.db.execute(
            "UPDATE webhook_deliveries SET status = 'cancelled', last_error = ?"
            " WHERE subscription = ? AND status = 'pending'",
            (reason, subscription),
        )
        if commit:
            await self.db.commit()

    async def deliveries(self, subscription: str, *, limit: int) -> list[Delivery]:
        """The newest deliveries of a subscription, newest first, each with its attempts."""
        async with self.db.execute(
            f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE subscription = ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (subscription, limit),
        ) as cur:
            rows = await cur.fetchall()
        found = []
        for r in rows:
            async with self.db.execute(
                "SELECT n, at, status, latency_ms, error FROM webhook_attempts"
                " WHERE delivery_id = ? ORDER BY n",
                (r[0],),
            ) as cur:
                log = [
                    Attempt(n=a[0], at=a[1], status=a[2], latency_ms=a[3], error=a[4])
                    for a in await cur.fetchall()
                ]
            found.append(Delivery(
                id=r[0], subscription=r[1], url=r[2], event=r[3], task_id=r[4], status=r[5],
                attempts=r[6], next_at=r[7] if r[5] == "pending" else None, created_at=r[8],
                finished_at=r[9], last_status=r[10], last_error=r[11], last_latency_ms=r[12],
                log=log,
            ))
        return found
