"""`Webhooks`: the task service's listener, the delivery loop, and what the API asks of them.

The task service calls `task_event` at a start or an end, synchronously; the
rows made there go into the store with the task's state (`staged` /
`committed`), so finishing a task never waits on a receiver. The delivery
loop then reads due rows from the outbox and sends each on its own asyncio
task, at most CBOX_WEBHOOK_CONCURRENCY at once per receiver (a subscription,
or the origin of a `notify_url`): a receiver that hangs holds its own slots
for CBOX_WEBHOOK_TIMEOUT_S and nobody else's. `task.stalled` comes from a
watcher that samples the running tasks' output counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from cbox.errors import ConfigError, Conflict, InvalidRequest, WebhookNotFound
from cbox.models import Task, TaskSpec
from cbox.orchestrator.migrations import OutboxRow
from cbox.settings import Settings
from cbox.webhooks import config, payload, sender
from cbox.webhooks.models import (
    PING,
    Attempt,
    Delivery,
    EventType,
    Subscription,
    check_secret,
)
from cbox.webhooks.outbox import Due, Outbox
from cbox.webhooks.stalls import watch
from cbox.webhooks.urls import Origin, check_reachable, check_url, parse_allowlist

if TYPE_CHECKING:
    from cbox.orchestrator.service import TaskService

log = logging.getLogger(__name__)

#: The subscription name of deliveries to tasks' own `notify_url` (reserved).
NOTIFY = "notify_url"
DUE_BATCH = 200
IDLE_POLL_S = 1.0


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def public_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _notify_secrets(settings: Settings) -> list[str]:
    found = []
    for name, secret in (("CBOX_WEBHOOK_SECRET", settings.webhook_secret),
                         ("CBOX_WEBHOOK_PREVIOUS_SECRET", settings.webhook_previous_secret)):
        if secret is not None:
            try:
                found.append(check_secret(secret.get_secret_value()))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
    if settings.webhook_previous_secret is not None and settings.webhook_secret is None:
        raise ConfigError("CBOX_WEBHOOK_PREVIOUS_SECRET is set without CBOX_WEBHOOK_SECRET")
    return found


class Webhooks:
    def __init__(self, settings: Settings, outbox: Outbox, allowed: tuple[Origin, ...]) -> None:
        self.settings = settings
        self.outbox = outbox
        self.allowed = allowed
        self.public_url = public_url(settings)
        self.notify_secrets = _notify_secrets(settings)
        self._subs: dict[str, Subscription] = {}
        self._staged: dict[str, list[OutboxRow]] = defaultdict(list)
        self._wake = asyncio.Event()
        self._inflight: set[str] = set()
        self._busy: dict[str, int] = defaultdict(int)
        self._jobs: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._service: TaskService | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Webhooks:
        """Check the settings and the TOML file, open the outbox, load subscriptions."""
        allowed = parse_allowlist(settings.webhook_allowed_urls)
        from_file = []
        if settings.webhooks_file is not None:
            from_file = config.load_file(settings.webhooks_file, allowed)
        hooks = cls(settings, Outbox(settings.db_path), allowed)
        await hooks.outbox.open()
        stored = {s.name: s for s in await hooks.outbox.subscriptions()}
        for sub in from_file:
            old = stored.get(sub.name)
            if old is not None and old.source == "api":
                log.warning("webhook %r from %s replaces the one made over the API",
                            sub.name, settings.webhooks_file)
            keep = old is not None and old.source == "file" and old.url == sub.url
            await hooks.outbox.put(Subscription(
                **dict(sub), source="file", created_at=old.created_at if old else time.time(),
                disabled=old.disabled if keep and old else None,
            ))
        await hooks.outbox.forget_file_subscriptions([s.name for s in from_file])
        hooks._subs = {s.name: s for s in await hooks.outbox.subscriptions()}
        problems = await asyncio.gather(*(hooks._unreachable(s.url) for s in from_file))
        for n, problem in enumerate(problems):
            if problem:  # not fatal: the receiver may be restarting too; deliveries wait
                log.error("webhooks file %s: field webhook[%d].url: %s (deliveries will be "
                          "retried)", settings.webhooks_file, n, problem)
        return hooks

    async def _unreachable(self, url: str) -> str | None:
        try:
            await check_reachable(url, self.settings.webhook_timeout_s)
        except ValueError as exc:
            return f"{url!r} {exc}"
        return None

    def start(self, service: TaskService) -> None:
        self._service = service
        self._http = sender.session()
        self._loops = [asyncio.create_task(self._deliver_loop(), name="cbox-webhooks")]
        if self.settings.webhook_stall_s > 0:
            self._loops.append(asyncio.create_task(
                watch(service.running, self.settings.webhook_stall_s, self._stalled),
                name="cbox-stalls",
            ))

    async def close(self) -> None:
        for job in [*self._loops, *self._jobs]:
            job.cancel()
        await asyncio.gather(*self._loops, *self._jobs, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.outbox.close()

    # ------------------------------------------------------------------ the listener

    def check(self, spec: TaskSpec) -> None:
        if spec.notify_url is None:
            return
        if not self.notify_secrets:
            raise InvalidRequest(
                "notify_url: this server has no CBOX_WEBHOOK_SECRET to sign deliveries with",
                field="notify_url",
            )
        try:
            check_url(spec.notify_url, self.allowed)
        except ValueError as exc:
            raise InvalidRequest(f"notify_url: {exc}", field="notify_url") from None

    def task_event(self, task: Task, event: str) -> None:
        rows = self._rows(task, f"task.{event}")
        if rows:
            self._staged[task.id].extend(rows)

    def staged(self, task_id: str) -> list[OutboxRow]:
        return list(self._staged.get(task_id, ()))

    def committed(self, task_id: str, rows: list[OutboxRow]) -> None:
        done = {r.id for r in rows}
        left = [r for r in self._staged.pop(task_id, []) if r.id not in done]
        if left:
            self._staged[task_id] = left
        self._wake.set()

    def _rows(self, task: Task, event: str) -> list[OutboxRow]:
        now = time.time()
        spec = task.spec
        targets = [
            (sub.name, sub.url) for sub in self._subs.values()
            if sub.disabled is None and event in sub.events
            and sub.filter.matches(spec.policy, spec.session, spec.metadata)
        ]
        if spec.notify_url is not None and self.notify_secrets:
            targets.append((NOTIFY, spec.notify_url))
        if not targets:
            return []
        body = payload.task_body(
            event, task, public_url=self.public_url,
            max_field_chars=self.settings.webhook_max_field_chars, at=now,
        )
        return [OutboxRow(new_message_id(), name, url, event, task.id, body, now)
                for name, url in targets]

    # ------------------------------------------------------------------ delivery

    def _key(self, subscription: str, url: str) -> str:
        """Whose concurrency slots a delivery takes: its subscription's, or its origin's."""
        if subscription != NOTIFY:
            return subscription
        with contextlib.suppress(ValueError):
            parsed = URL(url)
            return f"{NOTIFY}:{parsed.scheme}://{parsed.host}:{parsed.port}"
        return NOTIFY

    async def _deliver_loop(self) -> None:
        limit = self.settings.webhook_concurrency
        while True:
            self._wake.clear()
            now = time.time()
            try:
                for due in await self.outbox.due(now, per_receiver=limit, limit=DUE_BATCH):
                    key = self._key(due.subscription, due.url)
                    if due.id in self._inflight or self._busy[key] >= limit:
                        continue
                    self._inflight.add(due.id)
                    self._busy[key] += 1
                    job = asyncio.create_task(self._send(due, key))
                    self._jobs.add(job)
                    job.add_done_callback(self._jobs.discard)
                upcoming = await self.outbox.next_due()
            except Exception:  # the store is busy or broken: try again soon
                log.exception("reading the webhook outbox failed")
                upcoming = None
            # Something due but waiting for a slot is woken by the job that frees it.
            wait_s = IDLE_POLL_S
            if upcoming is not None and upcoming > now:
                wait_s = min(IDLE_POLL_S, upcoming - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _send(self, due: Due, key: str) -> None:
        try:
            await self._attempt(due)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", due.id)
        finally:
            self._inflight.discard(due.id)
            self._busy[key] -= 1
            self._wake.set()

    def _target(self, due: Due) -> tuple[str, list[str]] | str:
        """Where to send and the signing secrets, or why this delivery cannot be made any more.

        A subscription's deliveries go to its URL as it is now: fixing a broken URL
        also fixes the retries already queued for it.
        """
        if due.subscription == NOTIFY:
            if not self.notify_secrets:
                return "CBOX_WEBHOOK_SECRET is no longer set"
            url, secrets = due.url, self.notify_secrets
        else:
            sub = self._subs.get(due.subscription)
            if sub is None:
                return "subscription deleted"
            if sub.disabled is not None:
                return f"subscription disabled: {sub.disabled}"
            url, secrets = sub.url, sub.secrets()
        try:
            check_url(url, self.allowed)  # the allowlist may have shrunk since
        except ValueError as exc:
            return f"url {exc}"
        return url, secrets

    async def _attempt(self, due: Due) -> None:
        assert self._http is not None
        target = self._target(due)
        if isinstance(target, str):
            await self.outbox.cancel(due.id, target)
            return
        url, secrets = target
        at = time.time()
        result = await sender.attempt(
            self._http, url, due.id, due.body, secrets, self.settings.webhook_timeout_s
        )
        n = due.attempts + 1
        record = Attempt(n=n, at=at, status=result.status, latency_ms=result.latency_ms,
                         error=result.error)
        status, next_at = "delivered", None
        if result.gone:
            status = "failed"
        elif not result.ok:
            delay_s = sender.retry_delay_s(n, self.settings.webhook_retry_scale)
            status = "failed" if delay_s is None else "pending"
            next_at = None if delay_s is None else time.time() + delay_s
        await self.outbox.record(due.id, record, status=status, next_at=next_at, url=url)
        if result.gone:
            await self._disable(due.subscription, "the receiver answered 410 Gone")
        log.info("webhook %s %s to %s: attempt %d %s", due.id, due.event, due.subscription, n,
                 "ok" if result.ok else result.error)

    async def _disable(self, name: str, reason: str) -> None:
        sub = self._subs.get(name)
        if sub is None:
            return
        sub = sub.model_copy(update={"disabled": reason})
        self._subs[name] = sub
        await self.outbox.put(sub)
        await self.outbox.cancel_pending(name, f"subscription disabled: {reason}")
        log.warning("webhook subscription %r disabled: %s", name, reason)

    async def _stalled(self, task: Task) -> None:
        rows = self._rows(task, EventType.STALLED.value)
        if rows:
            await self.outbox.enqueue(rows)
            self._wake.set()

    # ------------------------------------------------------------------ the API

    def subscriptions(self) -> list[Subscription]:
        return sorted(self._subs.values(), key=lambda s: s.name)

    def get(self, name: str) -> Subscription:
        sub = self._subs.get(name)
        if sub is None:
            raise WebhookNotFound(f"no webhook subscription named {name!r}")
        return sub

    async def put(self, data: dict[str, Any]) -> tuple[Subscription, bool]:
        """Create or replace a subscription (replacing re-enables a disabled one)."""
        given = config.parse(data, self.allowed)
        if given.name == NOTIFY:
            raise InvalidRequest(f"name: {NOTIFY!r} is reserved for tasks' notify_url",
                                 field="name")
        old = self._subs.get(given.name)
        if old is not None and old.source == "file":
            raise Conflict(f"webhook {given.name!r} is defined in {self.settings.webhooks_file}; "
                           "change it there")
        problem = await self._unreachable(given.url)
        if problem:
            raise InvalidRequest(f"url: {problem}", field="url")
        sub = Subscription(**dict(given), source="api",
                           created_at=old.created_at if old else time.time())
        await self.outbox.put(sub)
        self._subs[sub.name] = sub
        return sub, old is None

    async def delete(self, name: str) -> Subscription:
        sub = self.get(name)
        if sub.source == "file":
            raise Conflict(f"webhook {name!r} is defined in {self.settings.webhooks_file}; "
                           "remove it there")
        await self.outbox.delete(name)
        self._subs.pop(name, None)
        return sub

    async def deliveries(self, name: str, *, limit: int) -> list[Delivery]:
        if name != NOTIFY:
            self.get(name)
        return await self.outbox.deliveries(name, limit=limit)

    async def ping(self, name: str) -> Delivery:
        """Send one signed `webhook.ping` now, outside the retry schedule; log it."""
        sub = self.get(name)
        assert self._http is not None
        now = time.time()
        body = payload.envelope(PING, {"subscription": name, "links": {
            "webhooks": f"{self.public_url}/webhooks/{name}"}}, now)
        row = OutboxRow(new_message_id(), name, sub.url, PING, None, body, now)
        # Not `pending` for the loop to take: this attempt is made here, once.
        await self.outbox.enqueue([row], status="failed")
        result = await sender.attempt(self._http, sub.url, row.id, body, sub.secrets(),
                                      self.settings.webhook_timeout_s)
        record = Attempt(n=1, at=now, status=result.status, latency_ms=result.latency_ms,
                         error=result.error)
        await self.outbox.record(row.id, record, status="delivered" if result.ok else "failed",
                                 next_at=None, url=sub.url)
        [delivery] = [d for d in await self.outbox.deliveries(name, limit=20) if d.id == row.id]
        return delivery
