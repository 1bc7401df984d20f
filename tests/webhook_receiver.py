"""A webhook receiver on loopback for tests: verifies every delivery with the
`standardwebhooks` library's own `Webhook(secret).verify`, answers as scripted,
and can hang until released. Also the API calls the webhook tests share."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.orch import Orchestrator, free_port


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    #: For each secret the receiver knows: did the library verify the delivery with it?
    verified: dict[str, bool]

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    secrets: list[str]
    #: Statuses to answer with, in order; the last one repeats. "hang": never answer.
    script: list[int | str] = field(default_factory=lambda: [200])
    redirect_to: str | None = None
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    hanging: int = 0

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self.release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = {}
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                verified[secret] = True
            except WebhookVerificationError:
                verified[secret] = False
        n = len(self.received)
        answer = self.script[min(n, len(self.script) - 1)]
        async with self._changed:
            self.received.append(Received(headers, body, time.monotonic(), verified))
            if answer == "hang":
                self.hanging += 1
            self._changed.notify_all()
        if answer == "hang":
            try:
                await self.release.wait()
            finally:
                self.hanging -= 1
            return web.Response(status=200)
        assert isinstance(answer, int)
        if 300 <= answer < 400 and self.redirect_to:
            return web.Response(status=answer, headers={"Location": self.redirect_to})
        return web.Response(status=answer, text="scripted answer")

    async def wait_for(self, n: int, timeout_s: float = 60) -> list[Received]:
        """The first `n` deliveries, once they came."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.received) >= n), timeout_s
            )
        return self.received[:n]


async def subscribe(orch: Orchestrator, name: str, url: str, secret: str, events: list[str],
                    **extra: Any) -> dict[str, Any]:
    status, body = await orch.request("POST", "/webhooks", json={
        "name": name, "url": url, "secret": secret, "events": events, **extra})
    assert status in (200, 201), body
    return dict(body)


async def deliveries(orch: Orchestrator, name: str) -> list[dict[str, Any]]:
    status, body = await orch.request("GET", f"/webhooks/{name}/deliveries")
    assert status == 200, body
    return list(body["deliveries"])


async def settled(orch: Orchestrator, name: str, n: int, timeout_s: float = 60) -> list[
        dict[str, Any]]:
    """The subscription's deliveries once `n` exist and none is pending any more."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await deliveries(orch, name)
        if len(found) >= n and all(d["status"] != "pending" for d in found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries of {name} did not settle: {found}")
