"""The API gateway: the credential never enters a container.

A task container gets `ANTHROPIC_BASE_URL` pointing here and a per-task token
as its "API key". The gateway checks the token, replaces it with the real
credential and relays the upstream response as it streams (chunk by chunk, no
buffering, so Claude Code's SSE arrives live).

Each task gets its own listener, on its own network's gateway IP — on an
internal Docker network the only address a container can reach. A token is
only accepted on its own task's listener, so one task cannot spend another's
budget, and both the token and the listener go away when the task ends.

Usage is metered from the relayed traffic; a task with a budget is refused
further calls, and reported, once it crosses it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from cbox.orchestrator.usage import Usage, UsageMeter

log = logging.getLogger(__name__)

# Headers that describe one hop, or that carry credentials we replace.
_DROP_REQUEST = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "x-api-key",
     "authorization", "proxy-authorization", "te", "upgrade",
     # Ask for identity bodies, so usage can be metered from what we relay.
     "accept-encoding"}
)
_DROP_RESPONSE = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}
)

BudgetHandler = Callable[[str, str], None]


def new_token() -> str:
    return "cbox-" + secrets.token_urlsafe(32)


@dataclass
class Budget:
    max_cost_usd: float | None = None
    max_tokens: int | None = None

    def crossed(self, usage: Usage) -> str | None:
        if self.max_cost_usd is not None and usage.cost_usd > self.max_cost_usd:
            return f"budget exceeded: ${usage.cost_usd:.4f} > ${self.max_cost_usd:g}"
        if self.max_tokens is not None and usage.total_tokens > self.max_tokens:
            return f"budget exceeded: {usage.total_tokens} tokens > {self.max_tokens}"
        return None


@dataclass
class _Lease:
    task_id: str
    token: str
    host: str
    site: web.TCPSite
    budget: Budget
    usage: Usage = field(default_factory=Usage)
    over_budget: str | None = None


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": f"claude-box gateway: {message}"}},
        status=status,
    )


class ApiGateway:
    """Relays the model API for tasks holding a live token, on their own listener."""

    def __init__(
        self,
        *,
        upstream: str,
        api_key: str | None,
        oauth_token: str | None,
        on_budget: BudgetHandler | None = None,
    ) -> None:
        self.upstream = URL(upstream.rstrip("/"))
        self._api_key = api_key
        self._oauth_token = oauth_token if not api_key else None
        self._on_budget = on_budget
        self._leases: dict[str, _Lease] = {}  # by task id
        self._by_host: dict[str, _Lease] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def uses_oauth(self) -> bool:
        return self._oauth_token is not None

    async def start(self) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # No read timeout: an agent's model call may legitimately stream for minutes.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            auto_decompress=False,
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
        self, task_id: str, token: str, host: str, port: int = 0, budget: Budget | None = None
    ) -> int:
        """Listen on `host` for this task only; return the port."""
        if self._runner is None:
            raise RuntimeError("gateway not started")
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        lease = _Lease(task_id, token, host, site, budget or Budget())
        self._leases[task_id] = lease
        self._by_host[host] = lease
        return bound

    def set_budget(self, task_id: str, budget: Budget) -> None:
        lease = self._leases.get(task_id)
        if lease is not None:
            lease.budget = budget

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

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        lease = self._lease_for(request)
        if lease is None:
            return _error(401, "authentication_error", "unknown or expired task token")
        if lease.over_budget:
            return _error(403, "permission_error", lease.over_budget)
        assert self._session is not None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST
        )
        if self._api_key:
            headers["x-api-key"] = self._api_key
        elif self._oauth_token:
            headers["authorization"] = f"Bearer {self._oauth_token}"
        body = await request.read()
        target = self.upstream.with_path(
            self.upstream.path.rstrip("/") + request.rel_url.path, encoded=False
        ).with_query(request.rel_url.query)
        try:
            upstream = await self._session.request(
                request.method, target, headers=headers, data=body or None
            )
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("gateway: upstream unreachable for %s: %s", lease.task_id, exc)
            return _error(502, "api_error", f"upstream unreachable: {exc}")
        lease.usage.requests += 1
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _DROP_RESPONSE:
                    response.headers.add(key, value)
            await response.prepare(request)
            streaming = upstream.content_type == "text/event-stream"
            meter = UsageMeter(lease.usage, streaming=streaming)
            metered = upstream.status < 300 and upstream.headers.get("content-encoding") is None
            try:
                async for chunk in upstream.content.iter_any():
                    if metered:
                        meter.feed(chunk)
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionResetError) as exc:
                log.info("gateway: stream for %s ended early: %s", lease.task_id, exc)
            if metered:
                meter.finish()
            await response.write_eof()
        reason = lease.budget.crossed(lease.usage)
        if reason and not lease.over_budget:
            lease.over_budget = reason
            if self._on_budget is not None:
                self._on_budget(lease.task_id, reason)
        return response
