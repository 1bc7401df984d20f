"""`cbox serve`: run the orchestrator until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal

from aiohttp import web
from pydantic import SecretStr

from cbox.api.app import make_app
from cbox.auth import ensure_token, is_loopback
from cbox.orchestrator.service import running_service
from cbox.settings import Settings

log = logging.getLogger("cbox.serve")


def require_token(settings: Settings) -> Settings:
    """A token always, whatever the listen address: the configured one, or the file's.

    Loopback is no shelter: every web page in the user's browser can reach it.
    The token itself is logged only when it was just made for a server that
    listens beyond loopback, where it has to be copied to another machine.
    """
    if settings.api_token is not None:
        return settings
    token, created = ensure_token(settings.api_token_file)
    if created and not is_loopback(settings.host):
        log.warning(
            "generated an API token and saved it to %s (the cbox CLI on this machine "
            "reads it from there); clients elsewhere need it. Token: %s",
            settings.api_token_file, token,
        )
    elif created:
        log.warning(
            "generated an API token and saved it to %s; the cbox CLI on this machine "
            "reads it from there", settings.api_token_file,
        )
    else:
        log.info("API token from %s", settings.api_token_file)
    return settings.model_copy(update={"api_token": SecretStr(token)})


def raise_fd_limit() -> None:
    """Open files up to the hard limit: each task holds a log stream, a gateway
    listener and its connections, and systemd's default soft limit is 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    settings = require_token(settings)
    raise_fd_limit()
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
