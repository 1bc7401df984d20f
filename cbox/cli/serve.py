"""`cbox serve`: run the orchestrator until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from cbox.api.app import make_app
from cbox.orchestrator.service import running_service
from cbox.settings import Settings

log = logging.getLogger("cbox.serve")


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
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
