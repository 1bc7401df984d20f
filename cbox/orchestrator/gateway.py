"""The API gateway: the credential never enters a container.

A task container gets `ANTHROPIC_BASE_URL` pointing here and a per-task token
as its "API key". The gateway checks the token, replaces it with the real
credential and relays the upstream response as it streams (chunk by chunk, no
buffering, so Claude Code's SSE arrives live). A token is revoked when its
task ends, so a leaked token is worth nothing afterwards.

It listens on the task network's gateway IP: on an internal Docker network
that address is the only one a container can reach.
"""

from __future__ import annotations

import logging
import secrets

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger(__name__)

# Headers that describe one hop, or that carry credentials we replace.
_DROP_REQUEST = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "x-api-key",
     "authorization", "proxy-authorization", "te", "upgrade"}
)
_DROP_RESPONSE = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}
)


def new_token() -> str:
    return "cbox-" + secrets.token_urlsafe(32)


class ApiGateway:
    """Relays the model API for tasks holding a live token."""

    def __init__(
        self, *, upstream: str, api_key: str | None, oauth_token: str | None
    ) -> None:
        self.upstream = URL(upstream.rstrip("/"))
        self._api_key = api_key
        self._oauth_token = oauth_token if not api_key else None
        self._tokens: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0
        self._hosts: set[str] = set()

    @property
    def uses_oauth(self) -> bool:
        return self._oauth_token is not None

    def register(self, token: str, task_id: str) -> None:
        self._tokens[token] = task_id

    def revoke(self, token: str | None) -> None:
        if token:
            self._tokens.pop(token, None)

    async def start(self, host: str, port: int) -> None:
        """Listen on `host`; later calls to `listen` add more addresses on the same port."""
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # No read timeout: an agent's model call may legitimately stream for minutes.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            auto_decompress=False,
        )
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        self._hosts.add(host)

    async def listen(self, host: str) -> None:
        if self._runner is None:
            raise RuntimeError("gateway not started")
        if host in self._hosts:
            return
        await web.TCPSite(self._runner, host, self.port).start()
        self._hosts.add(host)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _token_of(self, request: web.Request) -> str | None:
        key = request.headers.get("x-api-key")
        if key:
            return key
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        token = self._token_of(request)
        task_id = self._tokens.get(token or "")
        if task_id is None:
            return web.json_response(
                {
                    "type": "error",
                    "error": {
                        "type": "authentication_error",
                        "message": "claude-box gateway: unknown or expired task token",
                    },
                },
                status=401,
            )
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
            log.warning("gateway: upstream %s unreachable for %s: %s", target, task_id, exc)
            return web.json_response(
                {
                    "type": "error",
                    "error": {"type": "api_error", "message": f"upstream unreachable: {exc}"},
                },
                status=502,
            )
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _DROP_RESPONSE:
                    response.headers.add(key, value)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionResetError) as exc:
                log.info("gateway: stream for %s ended early: %s", task_id, exc)
            await response.write_eof()
            return response
