"""Optional webhook receiver hosted by the worker (`--listen HOST:PORT`).

GitHub posts `issues`, `issue_comment` and `label` events to `/webhook`; a
delivery wakes the daemon's intake at once instead of at the next poll. The
delivery is only a hint: the worker then reads the current state through the
API as on any poll, so a forged event could at most cause an early poll, and
even that needs the secret. Every delivery must carry `X-Hub-Signature-256`,
HMAC-SHA256 of the raw body with `GITHUB_WEBHOOK_SECRET`, checked by githubkit
in constant time; unsigned or badly signed deliveries get 401 and nothing
happens.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web
from githubkit.webhooks import verify

logger = logging.getLogger("cbox.worker.github")

EVENTS = frozenset({"issues", "issue_comment", "label"})
_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")
MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


def webhook_app(secret: str, poke: asyncio.Event) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get("X-Hub-Signature-256", "")
        # Only `sha256=` + 64 hex digits reaches `verify`: anything else (non-ASCII
        # included, on which hmac.compare_digest raises) is simply a bad signature.
        if not _SIGNATURE.fullmatch(signature) or not verify(secret, body, signature):
            logger.warning("webhook: refused a delivery with a missing or bad signature")
            return web.json_response({"error": "bad signature"}, status=401)
        event = request.headers.get("X-GitHub-Event", "")
        if event in EVENTS:
            logger.info("webhook: %s event; polling now", event)
            poke.set()
        return web.json_response({"ok": True, "event": event}, status=202)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/webhook", receive)
    return app


async def serve(listen: str, secret: str, poke: asyncio.Event) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(webhook_app(secret, poke), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    logger.info("webhook receiver on http://%s:%s/webhook", host or "127.0.0.1", port)
    return runner
