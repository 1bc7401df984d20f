"""Where webhooks may go: the server-side allowlist, and the checks made at configuration.

A `notify_url` comes from whoever may submit a task, so without a limit the
server would POST wherever a request says, from inside the host's network
(SSRF: cloud metadata, admin ports, other services on loopback). Every URL
we send to, from a subscription or a task, must match an allowlist entry on
scheme, host and port exactly (a `*.` host matches its subdomains only), and
delivery never follows a redirect (`sender.py`), so an allowed receiver
cannot bounce the request elsewhere. The URL is parsed by yarl, the same
parser aiohttp connects with, so what is checked is what is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from yarl import URL

from cbox.errors import ConfigError

SCHEMES = ("http", "https")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str  # lower case, IDNA-encoded; may start with "*."
    port: int

    def allows(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme or port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])  # ".example.com": a subdomain, not itself
        return host == self.host

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _parts(text: str) -> tuple[URL, str, str, int]:
    """scheme, host, port of an absolute http(s) URL, or ValueError saying why not."""
    try:
        url = URL(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if not url.absolute or url.scheme not in SCHEMES:
        raise ValueError("must be an absolute http:// or https:// URL")
    if url.user is not None or url.password is not None:
        raise ValueError("must not carry a user name or password")
    host = (url.raw_host or "").lower().rstrip(".")
    if not host:
        raise ValueError("has no host")
    try:
        port = url.port
    except ValueError as exc:
        raise ValueError(f"has a bad port ({exc})") from None
    if port is None or not 0 < port < 65536:
        raise ValueError("has a bad port")
    return url, url.scheme, host, port


def parse_allowlist(entries: list[str]) -> tuple[Origin, ...]:
    """CBOX_WEBHOOK_ALLOWED_URLS as origins; a bad entry stops start-up in one line."""
    origins = []
    for entry in entries:
        wildcard = "://*." in entry
        try:
            url, scheme, host, port = _parts(entry.replace("://*.", "://", 1))
        except ValueError as exc:
            raise ConfigError(f"CBOX_WEBHOOK_ALLOWED_URLS: {entry!r} {exc}") from None
        if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
            raise ConfigError(
                f"CBOX_WEBHOOK_ALLOWED_URLS: {entry!r} must be scheme://host[:port] only"
            )
        if wildcard:
            host = "*." + host
        origins.append(Origin(scheme, host, port))
    return tuple(origins)


def check_url(text: str, allowed: tuple[Origin, ...]) -> str:
    """The URL if it may receive webhooks, else ValueError saying why."""
    _, scheme, host, port = _parts(text)
    if not any(origin.allows(scheme, host, port) for origin in allowed):
        if not allowed:
            raise ValueError("is not allowed: CBOX_WEBHOOK_ALLOWED_URLS is empty")
        raise ValueError(
            f"is not allowed: {scheme}://{host}:{port} matches no entry of "
            "CBOX_WEBHOOK_ALLOWED_URLS"
        )
    return text


async def check_reachable(text: str, timeout_s: float) -> None:
    """ValueError unless something accepts a TCP connection at the URL's host and port."""
    _, _, host, port = _parts(text)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        raise ValueError(
            f"is unreachable: {host}:{port} did not answer in {timeout_s:g}s"
        ) from None
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ValueError(f"is unreachable: {host}:{port}: {reason}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
