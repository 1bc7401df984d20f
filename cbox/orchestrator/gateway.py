"""The API gateway: the credential never enters a container, and buys only model calls.

A task container gets `ANTHROPIC_BASE_URL` pointing here and a per-task token
as its "API key". The gateway checks the token, checks the request against
what Claude Code needs (`apirules.py`: endpoints, query, betas, server-side
tools), reserves its worst case against the task's budget (`budget.py`),
replaces the token with the real credential and relays the upstream response
as it streams (chunk by chunk, no buffering, so Claude Code's SSE arrives live).

Each task gets its own listener, on its own network's gateway IP — on an
internal Docker network the only address a container can reach. A token is
only accepted on its own task's listener, so one task cannot spend another's
budget, and both the token and the listener go away when the task ends.

What goes upstream is rebuilt, not passed along: the path is our own copy of
the allowed one appended to the configured base, headers are an allowlist,
redirects are never followed (the credential would go with them). A refused
request gets Anthropic's error shape and an `egress_denied` event on the
task. An upstream 401/403 means the credential is bad: the task is ended at
once instead of letting the CLI retry for minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from cbox.orchestrator.apirules import (
    DEFAULT_BETAS,
    MAX_BODY_BYTES,
    Endpoint,
    Refusal,
    check_betas,
    check_body,
    forward_headers,
    match_endpoint,
    read_body,
    show,
)
from cbox.orchestrator.budget import Budget, Ledger, Reservation, estimate
from cbox.orchestrator.egress import DenialHandler
from cbox.orchestrator.usage import Usage, UsageMeter

log = logging.getLogger(__name__)

# The body is relayed decoded (see `start`), so its encoding and length go too.
_DROP_RESPONSE = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive",
     "server", "date"}
)
#: Calls one task may have open at once; Claude Code's parallel subagents stay well under.
MAX_IN_FLIGHT = 16
#: Denials reported as events per task; a box in a loop must not flood the log.
MAX_DENIAL_EVENTS = 20
UPSTREAM_CONNECT_TIMEOUT_S = 30.0
#: The Anthropic SDK's own request timeout; a stream is never silent this long.
UPSTREAM_READ_TIMEOUT_S = 600.0
UPSTREAM_TOTAL_TIMEOUT_S = 3600.0
ERROR_BODY_BYTES = 4096

KEEPALIVE_S = 30.0
#: Set on a request whose successful answer ended before its usage was read.
_UNMETERED = "cbox.unmetered"

BudgetHandler = Callable[[str, str], None]  # task id, reason
RefusedHandler = Callable[[str, str], None]  # task id, reason


def new_token() -> str:
    return "cbox-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Access:
    """What a task's policy lets through beyond the fixed allowlist."""

    betas: frozenset[str] = frozenset(DEFAULT_BETAS)
    server_tools: bool = False


@dataclass
class _Lease:
    task_id: str
    token: str
    host: str
    site: web.TCPSite
    ledger: Ledger
    access: Access
    over_budget: str | None = None
    refused: str | None = None
    in_flight: int = 0
    denials: int = 0

    @property
    def usage(self) -> Usage:
        return self.ledger.usage


def _error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    extra = dict(headers or {})
    if 400 <= status < 500 and status != 429:
        extra.setdefault("x-should-retry", "false")
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": f"claude-box gateway: {message}"}},
        status=status,
        headers=extra,
    )


def _busy(message: str) -> web.Response:  # retryable: the CLI waits and asks again
    return _error(429, "rate_limit_error", message, {"retry-after": "2"})


class ApiGateway:
    """Relays the model API for tasks holding a live token, on their own listener."""

    def __init__(
        self,
        *,
        upstream: str,
        api_key: str | None,
        oauth_token: str | None,
        on_budget: BudgetHandler | None = None,
        on_refused: RefusedHandler | None = None,
        on_denied: DenialHandler | None = None,
    ) -> None:
        self.upstream = URL(upstream)
        self._api_key = api_key
        self._oauth_token = oauth_token if not api_key else None
        self._on_budget = on_budget
        self._on_refused = on_refused
        self._on_denied = on_denied
        self._leases: dict[str, _Lease] = {}  # by task id
        self._by_host: dict[str, _Lease] = {}
        self._runner: web.AppRunner | None = None
        self._parsing = asyncio.Semaphore(2)
        self._session: aiohttp.ClientSession | None = None

    @property
    def uses_oauth(self) -> bool:
        return self._oauth_token is not None

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        # Idle connections go after KEEPALIVE_S, not aiohttp's hour: no box hoards our fds.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=KEEPALIVE_S)
        await self._runner.setup()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=UPSTREAM_TOTAL_TIMEOUT_S,
                sock_connect=UPSTREAM_CONNECT_TIMEOUT_S,
                sock_read=UPSTREAM_READ_TIMEOUT_S,
            ),
            # We ask for identity bodies; should one come compressed anyway, it is
            # decoded here, so metering (and the budget) never goes blind.
            auto_decompress=True,
            # Upstream cookies must not carry over from one task's calls to another's.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        for task_id in list(self._leases):
            await self.close_for(task_id)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open_for(
        self,
        task_id: str,
        token: str,
        host: str,
        port: int = 0,
        budget: Budget | None = None,
        access: Access | None = None,
    ) -> int:
        """Listen on `host` for this task only; return the port."""
        if self._runner is None:
            raise RuntimeError("gateway not started")
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        lease = _Lease(task_id, token, host, site, Ledger(budget or Budget()), access or Access())
        self._leases[task_id] = lease
        self._by_host[host] = lease
        return bound

    def set_rules(self, task_id: str, budget: Budget, access: Access) -> None:
        """The task's own budget and access, for a door opened before the task was known."""
        lease = self._leases.get(task_id)
        if lease is not None:
            lease.ledger.budget = budget
            lease.access = access

    async def close_for(self, task_id: str) -> Usage | None:
        lease = self._leases.pop(task_id, None)
        if lease is None:
            return None
        self._by_host.pop(lease.host, None)
        await lease.site.stop()
        return lease.usage

    def usage(self, task_id: str) -> Usage | None:
        lease = self._leases.get(task_id)
        return lease.usage if lease else None

    def _lease_for(self, request: web.Request) -> _Lease | None:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        lease = self._by_host.get(sockname[0]) if sockname else None
        if lease is None:
            return None
        given = request.headers.get("x-api-key")
        if not given:
            auth = request.headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), lease.token.encode()):
            return None
        return lease

    # ---------------------------------------------------------------- checks

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        lease = self._lease_for(request)
        if lease is None:
            return _error(401, "authentication_error", "unknown or expired task token")
        if lease.refused:
            return _error(401, "authentication_error", lease.refused)
        if lease.over_budget:
            return _error(403, "permission_error", lease.over_budget)
        endpoint = match_endpoint(request.method, request.raw_path)
        if isinstance(endpoint, Refusal):
            return self._deny(lease, request, endpoint)
        refusal = check_betas(request.headers, lease.access.betas)
        if refusal is not None:
            return self._deny(lease, request, refusal)
        if lease.in_flight >= MAX_IN_FLIGHT:
            return _busy(f"more than {MAX_IN_FLIGHT} requests of this task in flight")
        lease.in_flight += 1
        try:
            return await self._admit(lease, endpoint, request)
        finally:
            lease.in_flight -= 1

    async def _admit(
        self, lease: _Lease, endpoint: Endpoint, request: web.Request
    ) -> web.StreamResponse:
        body = await read_body(request)
        if isinstance(body, Refusal):
            return _error(body.status, body.kind, body.message)
        if self._leases.get(lease.task_id) is not lease:  # the task ended meanwhile
            return _error(401, "authentication_error", "unknown or expired task token")
        async with self._parsing:  # off the loop: a 32 MiB body takes seconds to parse
            call = await asyncio.to_thread(check_body, body, server_tools=lease.access.server_tools)
        if isinstance(call, Refusal):
            return self._deny(lease, request, call)
        ledger = lease.ledger
        held: Reservation | None = None
        if endpoint.metered and ledger.budget.limited:
            held = estimate(call.model, call.max_tokens, len(body))
            if not ledger.reserve(held):
                if not ledger.holding:  # nothing in flight: the budget itself is spent
                    self._over_budget(lease, ledger.budget.reached(ledger.usage) or "budget spent")
                    return _error(403, "permission_error", lease.over_budget or "budget spent")
                return _busy("the task's budget is reserved by its requests in flight")
        try:
            return await self._forward(lease, endpoint, request, body)
        finally:
            if held is not None:
                ledger.release(held)
                if request.get(_UNMETERED):
                    ledger.charge(held)
            reason = ledger.budget.crossed(ledger.usage)
            if reason:
                self._over_budget(lease, reason)

    def _deny(self, lease: _Lease, request: web.Request, refusal: Refusal) -> web.Response:
        target = f"gateway {show(request.method, 16)} {show(request.raw_path)}"
        self._report(lease, target, refusal.message)
        return _error(refusal.status, refusal.kind, refusal.message)

    def _report(self, lease: _Lease, target: str, reason: str) -> None:
        """An event on the task (and a line in our log), for the first denials only."""
        lease.denials += 1
        if lease.denials > MAX_DENIAL_EVENTS + 1:
            return
        if lease.denials > MAX_DENIAL_EVENTS:
            target, reason = "gateway", f"more than {MAX_DENIAL_EVENTS} denials; no more reported"
        log.info("gateway: refused %s for %s: %s", target, lease.task_id, reason)
        if self._on_denied is not None:
            self._on_denied(lease.task_id, target, reason)

    def _over_budget(self, lease: _Lease, reason: str) -> None:
        if lease.over_budget:
            return
        lease.over_budget = reason
        if self._on_budget is not None:
            self._on_budget(lease.task_id, reason)

    # ---------------------------------------------------------------- upstream

    def _target(self, endpoint: Endpoint, raw_target: str) -> URL:
        """Our copy of the allowed path under the configured base, encoded as it stands."""
        query = raw_target.partition("?")[2]
        path = self.upstream.raw_path.rstrip("/") + endpoint.path
        url = str(self.upstream.with_path(path, encoded=True))
        return URL(f"{url}?{query}" if query else url, encoded=True)

    async def _forward(
        self, lease: _Lease, endpoint: Endpoint, request: web.Request, body: bytes
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = forward_headers(request.headers)
        headers["accept-encoding"] = "identity"
        if self._api_key:
            headers["x-api-key"] = self._api_key
        elif self._oauth_token:
            headers["authorization"] = f"Bearer {self._oauth_token}"
        try:
            upstream = await self._session.request(
                endpoint.method, self._target(endpoint, request.raw_path),
                headers=headers, data=body, allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("gateway: upstream unreachable for %s: %s", lease.task_id, exc)
            return _error(502, "api_error", f"upstream unreachable: {exc}")
        except ValueError as exc:  # a header value the client library will not send
            return _error(400, "invalid_request_error", f"request refused: {show(str(exc))}")
        lease.usage.requests += 1
        async with upstream:
            if 300 <= upstream.status < 400:
                where = show(upstream.headers.get("location", ""))
                self._report(lease, f"upstream redirect to {where}", "redirects are not followed")
                return _error(502, "api_error",
                              f"upstream answered {upstream.status} (a redirect); not followed")
            if upstream.status in (401, 403):
                return await self._credential_refused(lease, upstream)
            return await self._stream(lease, request, upstream)

    async def _credential_refused(
        self, lease: _Lease, upstream: aiohttp.ClientResponse
    ) -> web.Response:
        """End the task now: no retry can succeed with a credential the API refuses."""
        try:
            raw = await upstream.content.read(ERROR_BODY_BYTES)
            detail = json.loads(raw)["error"]["message"]
        except (aiohttp.ClientError, ValueError, KeyError, TypeError):
            detail = upstream.reason or ""
        reason = (f"the Anthropic API refused the credential ({upstream.status}): "
                  f"{show(str(detail), 300)}")
        if lease.refused is None:
            lease.refused = reason
            log.warning("gateway: %s (task %s)", reason, lease.task_id)
            if self._on_refused is not None:
                self._on_refused(lease.task_id, reason)
        kind = "authentication_error" if upstream.status == 401 else "permission_error"
        return _error(upstream.status, kind, reason)

    async def _stream(
        self, lease: _Lease, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in _DROP_RESPONSE:
                response.headers.add(key, value)
        await response.prepare(request)
        streaming = upstream.content_type == "text/event-stream"
        meter = UsageMeter(lease.usage, streaming=streaming)
        metered = upstream.status < 300
        try:
            async for chunk in upstream.content.iter_any():
                if metered:
                    meter.feed(chunk)
                await response.write(chunk)
        except (aiohttp.ClientError, ConnectionResetError, TimeoutError) as exc:
            log.info("gateway: stream for %s ended early: %s", lease.task_id, exc)
        if metered:
            meter.finish()
            request[_UNMETERED] = not meter.complete
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
            await response.write_eof()  # the box may have gone: that is its business
        return response
