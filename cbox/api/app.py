"""The aiohttp application factory."""

from __future__ import annotations

from aiohttp import web

from cbox.api.authority import AllowedHosts
from cbox.api.errors import error_middleware
from cbox.api.guard import BearerToken, Guard
from cbox.api.openapi import openapi_handler
from cbox.api.routes import SERVICE, routes
from cbox.errors import ConfigError
from cbox.orchestrator.service import TaskService


def make_guard(service: TaskService) -> Guard:
    """The browser checks and the credential; an app without a token is refused.

    `cbox serve` always provides one (`CBOX_API_TOKEN` or the token file), so
    reaching the error means a caller built the app by hand and forgot it.
    """
    settings = service.settings
    if settings.api_token is None or not settings.api_token.get_secret_value():
        raise ConfigError("the API needs a token: set CBOX_API_TOKEN or CBOX_API_TOKEN_FILE")
    token = BearerToken(settings.api_token.get_secret_value().encode())
    return Guard(AllowedHosts(settings.allowed_hosts), [token])


def make_app(service: TaskService) -> web.Application:
    # error_middleware is outermost, so anything the guard raises leaves as JSON too.
    middlewares = [error_middleware, make_guard(service).middleware()]
    app = web.Application(middlewares=middlewares, client_max_size=service.settings.max_body_bytes)
    app[SERVICE] = service
    app.add_routes(routes)
    app.router.add_get("/openapi.json", openapi_handler)
    return app
