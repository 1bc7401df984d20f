"""`cbox serve`: run the orchestrator until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web
from pydantic import SecretStr

from cbox.api.app import make_app
from cbox.auth import ensure_token, is_loopback
from cbox.orchestrator.service import running_service
from cbox.settings import Settings

log = logging.getLogger("cbox.serve")


def require_token(settings: Settings) -> Settings:
    """Beyond loopback a token is mandatory: use the configured one or make one."""
    if settings.api_token is not None or is_loopback(settings.host):
        return settings
    token, created = ensure_token(settings.api_token_file)
    if created:
        log.warning(
            "listening on %s needs an API token; generated one and saved it to %s "
            "(the cbox CLI on this machine reads it from there). Token: %s",
            settings.host, settings.api_token_file, token,
        )
    else:
        log.info("API token from %s", settings.api_token_file)
    return settings.model_copy(update={"api_token": SecretStr(token)})


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    settings = require_token(settings)
    async with running_service(settings) as service:
        runner = web.AppRunner(make_app(service), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "claude-box listening on http://%s:%d (image %s, up to %d tasks at once)",
            settings.host, settings.port, settings.image, settings.max_concurrent,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            log.info("shutting down; running containers are left for the next start to adopt")
            await runner.cleanup()
