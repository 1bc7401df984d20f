"""The aiohttp application factory."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from cbox.api.errors import error_middleware, error_response
from cbox.api.openapi import openapi_handler
from cbox.api.routes import SERVICE, routes
from cbox.orchestrator.service import TaskService

OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})


async def _call(handler: Handler, request: web.Request) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    return response


def make_app(service: TaskService) -> web.Application:
    token = service.settings.api_token
    middlewares = [error_middleware]
    if token is not None:
        secret = token.get_secret_value().encode()

        @web.middleware
        async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in OPEN_PATHS:
                return await _call(handler, request)
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not hmac.compare_digest(
                given[7:].strip().encode(), secret
            ):
                return error_response(401, "Unauthorized", "missing or wrong API token")
            return await _call(handler, request)

        middlewares.append(auth)
    app = web.Application(middlewares=middlewares, client_max_size=service.settings.max_body_bytes)
    app[SERVICE] = service
    app.add_routes(routes)
    app.router.add_get("/openapi.json", openapi_handler)
    return app
