"""Which `Host` the API answers to, and whether an `Origin` is the API's own.

DNS rebinding: a page on `http://evil.example:8080` makes its own name resolve
to 127.0.0.1 a moment after loading. Its scripts then talk to the API *as
same-origin*, so the browser lets them read every answer, and the only trace
of the trick is the `Host` header, which still says `evil.example:8080`. A
server that answers only to names it knows is immune: IP literals (a page
whose origin is an IP is not rebinding, and `Origin` tells us whether it is
ours), `localhost`, this machine's own names, and what the operator lists in
`CBOX_ALLOWED_HOSTS`.

Stdlib only: `cbox.settings` validates `CBOX_ALLOWED_HOSTS` with
`allowed_host_name`, and the CLI's start-up path must not pay for aiohttp.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True, slots=True)
class Authority:
    """`host[:port]`, normalised: lower-case, no trailing dot, IPv6 without brackets."""

    host: str
    port: int | None

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def same_as(self, other: Authority, scheme: str) -> bool:
        """The same host and port, an absent port being `scheme`'s default one."""
        default = DEFAULT_PORTS.get(scheme)
        return self.host == other.host and (self.port or default) == (other.port or default)


def _is_hostname(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def parse_authority(value: str) -> Authority | None:
    """A `Host` header's `host[:port]` (IPv6 bracketed, RFC 9110), or None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        try:
            if ipaddress.ip_address(host).version != 6:
                return None
        except ValueError:
            return None
    else:
        host, colon, port_text = value.partition(":")
        if ":" in port_text:  # an unbracketed IPv6 address, or worse
            return None
        rest = colon + port_text
        host = host.removesuffix(".")
        if not _is_hostname(host):
            return None
    if not rest:
        return Authority(host, None)
    if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
        return None
    port = int(rest[1:])
    return Authority(host, port) if 0 < port < 65536 else None


def parse_origin(value: str) -> tuple[str, Authority] | None:
    """An `Origin` header's scheme and authority; None for `null` and anything malformed."""
    scheme, sep, rest = value.strip().lower().partition("://")
    if not sep or not scheme or "/" in rest or "@" in rest:
        return None
    authority = parse_authority(rest)
    return None if authority is None else (scheme, authority)


def allowed_host_name(value: str) -> str:
    """One `CBOX_ALLOWED_HOSTS` entry, normalised; ValueError for what is not a bare name.

    Wildcards are refused on purpose: `*` would switch the rebinding check off
    without saying so, and no setting may do that.
    """
    name = value.strip().lower().removesuffix(".")
    if not _is_hostname(name):
        raise ValueError(
            f"CBOX_ALLOWED_HOSTS entry {value.strip()!r} is not a host name "
            "(give bare names like cbox.example.com: no scheme, port, path or wildcard)"
        )
    return name


def machine_names() -> set[str]:
    """This machine's host name and fully qualified name, as a user may type them."""
    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        name = name.strip().lower().removesuffix(".")
        if _is_hostname(name):
            names.add(name)
    return names


class AllowedHosts:
    """The names the server answers to; any IP literal is allowed besides."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.names = frozenset({"localhost", *machine_names(), *extra})

    def admits(self, authority: Authority) -> bool:
        return authority.is_ip or authority.host in self.names
