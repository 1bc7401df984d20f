"""What the `allowlist` proxy may connect to: names, ports and addresses.

A policy lists `allow_hosts` (exact names, `*.suffix` wildcards, IP literals
and CIDRs) and `allow_ports` (numbers or `low-high` ranges; default 443
only). A name on the list is not enough: the proxy resolves it itself and
checks *every* address it resolves to, because a listed wildcard such as
`*.example.com` is a promise about names, not about where they point — an
attacker who controls one record under it (or a DNS-rebinding service) can
point it at 127.0.0.1, the cloud metadata service or the host's own
addresses. Such addresses are refused unless that very address (as written:
an IPv4-mapped IPv6 form is not the same literal) is listed, or lies in a
listed CIDR. The proxy then connects to the address it checked, never to
the name again, so no second lookup can swap the answer.

Wildcards match names only, never IP literals (`*.0.0.1` does not match
127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_RANGE = re.compile(r"^([0-9]{1,5})-([0-9]{1,5})$")

#: Ranges that ipaddress does not flag as non-global in every Python version.
_EXTRA_DENIED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT (RFC 6598)
    ipaddress.ip_network("fd00:ec2::/32"),  # AWS metadata over IPv6 (also unique-local)
    # IPv6 forms that can carry an IPv4 address to a host-local translator:
    # IPv4-compatible (::a.b.c.d, `sit` tunnels), SIIT (::ffff:0:a.b.c.d),
    # local-use NAT64 (RFC 8215); and the deprecated site-local range.
    ipaddress.ip_network("::/8"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("fec0::/10"),
)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_hostname(name: str) -> bool:
    """An LDH host name (underscores tolerated), lower case, without a trailing dot."""
    if not name or len(name) > 253 or name != name.lower():
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def parse_ip(text: str) -> IPAddress | None:
    """A strict IP literal: dotted-quad IPv4 or IPv6 (no zone, no decimal/octal forms)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def check_host_entry(entry: str) -> str:
    """Validate one `allow_hosts` entry; returns it normalised, raises ValueError."""
    value = entry.strip().lower().rstrip(".")
    if "/" in value:
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not a valid CIDR ({exc})") from None
    if parse_ip(value) is not None:
        return value
    name = value[2:] if value.startswith("*.") else value
    if not is_hostname(name):
        raise ValueError(
            f"{entry!r} is not a host name, *.suffix, IP address or CIDR "
            "(no scheme, port or path)"
        )
    return value


def check_port_entry(entry: int | str) -> tuple[int, int]:
    """One `allow_ports` entry as an inclusive (low, high) range; raises ValueError."""
    if isinstance(entry, int):
        low = high = entry
    elif match := _RANGE.match(entry.strip()):
        low, high = int(match[1]), int(match[2])
    elif _PORT.match(entry.strip()):
        low = high = int(entry)
    else:
        raise ValueError(f"{entry!r} is not a port or a low-high range")
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{entry!r} is outside 1-65535")
    return low, high


def dangerous(ip: IPAddress) -> str | None:
    """Why an address must not be reached unless listed, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address the packets may end up at.
        mapped = ip.ipv4_mapped
        if mapped is not None:
            why = dangerous(mapped)
            return f"an IPv4-mapped form of {why}" if why else None
        embedded = ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        )
        if embedded is not None and (why := dangerous(embedded)):
            return f"a 6to4/NAT64 form of {why}"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives here)"
    if ip.is_multicast:
        return "a multicast address"
    if any(ip in net for net in _EXTRA_DENIED if net.version == ip.version):
        return "a private, translated or site-local address (CGNAT, ULA, ::/8, NAT64)"
    if ip.is_private or not ip.is_global:
        return "a private or reserved address"
    if _is_own(ip):
        return "an address of this host"
    return None


def _is_own(ip: IPAddress) -> bool:
    """Whether the host has this address: binding to it succeeds only if it does."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((str(ip), 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Allowlist:
    """A policy's egress rules, parsed once per task."""

    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    addresses: frozenset[IPAddress]
    networks: tuple[IPNetwork, ...]
    ports: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, hosts: list[str], ports: list[int | str]) -> Allowlist:
        names: set[str] = set()
        suffixes: list[str] = []
        addresses: set[IPAddress] = set()
        networks: list[IPNetwork] = []
        for raw in hosts:
            entry = check_host_entry(raw)
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry))
            elif (ip := parse_ip(entry)) is not None:
                addresses.add(ip)
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry)
        return cls(
            names=frozenset(names),
            suffixes=tuple(suffixes),
            addresses=frozenset(addresses),
            networks=tuple(networks),
            ports=tuple(check_port_entry(p) for p in ports),
        )

    def port_allowed(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self.ports)

    def name_allowed(self, name: str) -> bool:
        return name in self.names or any(
            name.endswith(suffix) and len(name) > len(suffix) for suffix in self.suffixes
        )

    def listed(self, ip: IPAddress) -> bool:
        """The address itself is on the list (same family, as written)."""
        return ip in self.addresses or any(
            ip.version == net.version and ip in net for net in self.networks
        )

    def address_refusal(self, ip: IPAddress) -> str | None:
        """Why the proxy must not connect to `ip`, or None."""
        if self.listed(ip):
            return None
        why = dangerous(ip)
        return f"{ip} is {why}" if why else None


def split_target(target: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` of a CONNECT line, strictly; None if malformed."""
    if target.startswith("["):
        close = target.find("]")
        if close < 0 or target[close + 1 : close + 2] != ":":
            return None
        host, port = target[1:close], target[close + 2 :]
        if not isinstance(parse_ip(host), ipaddress.IPv6Address):
            return None
    else:
        host, sep, port = target.rpartition(":")
        if not sep or ":" in host:
            return None
        host = host.lower().rstrip(".")
        if parse_ip(host) is None and not is_hostname(host):
            return None
    if not _PORT.match(port) or not 0 < int(port) < 65536:
        return None
    return host, int(port)
