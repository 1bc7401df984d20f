"""The API trusts no browser: one middleware that refuses before any handler runs.

Any web page open in the user's browser is hostile, and the API listens where
that browser can reach it. What such a page can do, and the check that stops it:

1. **DNS rebinding** (read everything): its own name re-resolved to 127.0.0.1,
   so its scripts are "same-origin" and read the answers. The `Host` header
   still carries its name: refused with 421 unless the server answers to that
   name (`cbox.api.authority`; `CBOX_ALLOWED_HOSTS` adds names).
2. **Cross-origin requests** (write blind): a form post or `fetch(...,
   {mode: "no-cors"})` needs no CORS preflight when its body is `text/plain`,
   form-encoded or multipart. The browser says where it comes from: an `Origin`
   other than the API's own (`null` included: sandboxed frames, `file://`), or
   `Sec-Fetch-Site` other than `same-origin` / `none`, gets 403. No CORS
   headers are ever sent, so a preflight fails too.
3. **No credential**: 401 without a valid one. Any page can try, but none can
   read the token file. Credentials are a list of `Credential`s, so a second
   kind (the dashboard's session cookie, later) is one more class here; a
   cookie is ambient, which is why 2 and 4 apply whatever the credential.
4. **Bodies a browser can send without asking**: a mutating request with a
   body must say `Content-Type: application/json` (415 otherwise), a type no
   page can send cross-origin without a preflight that the server refuses.
   Bodiless `POST /stop` (the seed's `curl -X POST`) needs none.

The order is that one: a rebinding page learns nothing, not even whether its
token guess was right; every refusal is answered from the headers, before the
body is read and before any handler (so nothing is created).

The checks apply to every path, `/healthz` and `/openapi.json` included, which
only skip the credential (probes and tooling have none). A rebinding page
reading those two would learn little (a warm-container count, the public API
description), but one rule for every path leaves no list of exceptions to
audit and keeps the server's answers to foreign names uniformly "no".
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from cbox.api.authority import AllowedHosts, parse_authority, parse_origin
from cbox.api.errors import error_response

#: Paths any caller may read without a credential (the browser checks still apply).
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
MUTATING = frozenset({hdrs.METH_POST, hdrs.METH_PUT, hdrs.METH_PATCH, hdrs.METH_DELETE})
#: `Sec-Fetch-Site` values of requests the API's own pages or the user made.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})


class Credential(Protocol):
    """One way a request can prove it may use the API."""

    def admits(self, request: web.BaseRequest) -> bool: ...


@dataclass(frozen=True, slots=True)
class BearerToken:
    """`Authorization: Bearer <token>`, compared in constant time."""

    secret: bytes

    def admits(self, request: web.BaseRequest) -> bool:
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        # aiohttp decodes header bytes with surrogateescape: encode them back the
        # same way, so a non-UTF-8 header is a wrong token, not an exception.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), self.secret
        )


class Guard:
    """The four checks, in order; `refusal` is the first one that fails, or None."""

    def __init__(self, hosts: AllowedHosts, credentials: Iterable[Credential]) -> None:
        self.hosts = hosts
        self.credentials = tuple(credentials)
        if not self.credentials:
            raise ValueError("the API guard needs at least one credential kind")

    def refusal(self, request: web.BaseRequest) -> web.Response | None:
        host_header = request.headers.get(hdrs.HOST, "")
        host = parse_authority(host_header)
        if host is None or not self.hosts.admits(host):
            return error_response(
                421, "MisdirectedRequest",
                f"this server does not answer to the host {host_header[:100]!r}; if that is a "
                "name of this server, add it to CBOX_ALLOWED_HOSTS",
            )
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None:
            parsed = parse_origin(origin)
            if parsed is None or not parsed[1].same_as(host, parsed[0]):
                return error_response(
                    403, "ForeignOrigin",
                    f"requests from the web origin {origin[:100]!r} are not accepted",
                )
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in OWN_FETCH_SITES:
            return error_response(
                403, "ForeignOrigin", f"requests from another site (Sec-Fetch-Site: {site[:20]}) "
                "are not accepted",
            )
        if request.path not in OPEN_PATHS and not any(
            credential.admits(request) for credential in self.credentials
        ):
            response = error_response(401, "Unauthorized", "missing or wrong API token")
            response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
            return response
        if request.method in MUTATING and request.body_exists and (
            request.content_type != "application/json"
        ):
            given = request.headers.get(hdrs.CONTENT_TYPE, "none")[:100]
            return error_response(
                415, "UnsupportedMediaType",
                f"request bodies must be Content-Type: application/json (got {given!r})",
            )
        return None

    def middleware(self) -> Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            refused = self.refusal(request)
            if refused is not None:
                return refused
            response: web.StreamResponse = await handler(request)
            return response

        return guard
