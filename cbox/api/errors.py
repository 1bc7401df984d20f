"""One table from the exception tree to HTTP statuses, looked up along the MRO."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from cbox.errors import (
    CboxError,
    ConfigError,
    Conflict,
    DockerError,
    FirewallUnavailable,
    ImageNotFound,
    InvalidRequest,
    PolicyViolation,
    SessionNotFound,
    TaskNotFound,
    WebhookNotFound,
)

log = logging.getLogger(__name__)

STATUS: dict[type[CboxError], int] = {
    PolicyViolation: 403,
    InvalidRequest: 400,
    TaskNotFound: 404,
    SessionNotFound: 404,
    WebhookNotFound: 404,
    Conflict: 409,
    ImageNotFound: 503,
    FirewallUnavailable: 503,
    DockerError: 503,
    ConfigError: 500,
    CboxError: 500,
}


def status_of(exc: CboxError) -> int:
    for klass in type(exc).__mro__:
        if klass in STATUS:
            return STATUS[klass]
    return 500


def error_response(
    status: int, kind: str, message: str, field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {"error": {"type": kind, "message": message}}
    if field:
        body["error"]["field"] = field  # type: ignore[index]
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


#: Headers an aiohttp HTTP error carries that its JSON replacement must keep:
#: RFC 9110 requires `Allow` on a 405, and clients rely on the others.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON with a message; never a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except CboxError as exc:
        return error_response(status_of(exc), type(exc).__name__, exc.message, exc.field)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, "PayloadTooLarge", f"request body too large: {exc.text}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {h: exc.headers[h] for h in _KEPT_HEADERS if h in exc.headers}
        return error_response(exc.status, type(exc).__name__, exc.reason, headers=kept)
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "InternalError", "internal error; see the server log")
