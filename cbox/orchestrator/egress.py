"""The `allowlist` network policy: an HTTP CONNECT proxy that lets through named hosts.

A task under `allowlist` sits on an internal network like `gateway`, plus this
proxy listening on the same gateway IP; `HTTPS_PROXY` / `HTTP_PROXY` point at
it. Only `CONNECT host:port HTTP/1.x` is tunnelled (a tunnel carries TLS end to
end, so the proxy never sees the content), and only when:

- the port is one of the policy's `allow_ports` (default 443);
- the host is listed (`cbox.egress_rules`: names, `*.suffix`, IPs, CIDRs);
- every address the proxy itself resolves the name to is acceptable — no
  loopback, private, link-local (metadata), multicast or host address unless
  listed as such. The proxy connects to the address it checked, never to the
  name again, so DNS rebinding between check and connect gets nowhere.

Everything else — plain-HTTP (absolute-form) requests, malformed lines,
other hosts and ports — gets a 403 and an `egress_denied` event naming the
reason. Tunnels belong to their task: `close_for` closes them with the
listener, and one idle for `idle_s` in both directions is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cbox.egress_rules import Allowlist, IPAddress, parse_ip, split_target

log = logging.getLogger(__name__)

DenialHandler = Callable[[str, str, str], None]  # task id, target, reason
#: Resolves a host name to addresses (the host's resolver, or CBOX_EGRESS_DNS).
Resolver = Callable[[str], Awaitable[list[IPAddress]]]
MAX_HEADER_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 15.0
RESOLVE_TIMEOUT_S = 10.0
MAX_TUNNELS = 64  # per task


class Refused(Exception):
    """A request the proxy will not carry; the message is the reason."""


async def system_resolver(host: str) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = parse_ip(str(sockaddr[0]).split("%", 1)[0])
        if ip is not None and ip not in found:
            found.append(ip)
    return found


@dataclass(eq=False)  # kept in sets: identity, not value
class _Tunnel:
    writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]
    touched: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        for writer in self.writers:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()


@dataclass
class _Proxy:
    server: asyncio.Server
    port: int
    tunnels: set[_Tunnel] = field(default_factory=set)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)


class EgressProxy:
    def __init__(
        self,
        on_denied: DenialHandler,
        *,
        resolver: Resolver = system_resolver,
        idle_s: float = 300.0,
    ) -> None:
        self._on_denied = on_denied
        self._resolve = resolver
        self._idle_s = idle_s
        self._proxies: dict[str, _Proxy] = {}

    async def open_for(
        self, task_id: str, host: str, hosts: list[str], ports: list[int | str], port: int = 0
    ) -> int:
        rules = Allowlist.parse(hosts, ports)
        holder: list[_Proxy] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            proxy = holder[0]
            current = asyncio.current_task()
            assert current is not None
            proxy.handlers.add(current)
            try:
                await self._handle(task_id, rules, proxy, reader, writer)
            finally:
                proxy.handlers.discard(current)
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()

        server = await asyncio.start_server(
            handle, host, port, limit=MAX_HEADER_BYTES, start_serving=False
        )
        bound = int(server.sockets[0].getsockname()[1])
        holder.append(_Proxy(server, bound))
        self._proxies[task_id] = holder[0]
        await server.start_serving()  # only now: `handle` needs its proxy
        return bound

    def tunnels(self, task_id: str) -> int:
        proxy = self._proxies.get(task_id)
        return len(proxy.tunnels) if proxy else 0

    async def close_for(self, task_id: str) -> None:
        """Stop listening and end every tunnel of the task: none outlives it."""
        proxy = self._proxies.pop(task_id, None)
        if proxy is None:
            return
        proxy.server.close()
        for tunnel in list(proxy.tunnels):
            tunnel.close()
        for handler in list(proxy.handlers):
            handler.cancel()
        if proxy.handlers:
            await asyncio.wait(list(proxy.handlers), timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proxy.server.wait_closed(), 2)

    async def close(self) -> None:
        for task_id in list(self._proxies):
            await self.close_for(task_id)

    async def _handle(
        self,
        task_id: str,
        rules: Allowlist,
        proxy: _Proxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except (asyncio.LimitOverrunError, ValueError):
            await self._refuse(writer, task_id, "?", "request head too large")
            return
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            return
        request_line = head.split(b"\r\n", 1)[0].decode("utf-8", errors="replace")
        shown = request_line[:200]
        try:
            target, ip, port = await self._check(rules, request_line)
        except Refused as exc:
            await self._refuse(writer, task_id, _target_of(shown), str(exc))
            return
        if len(proxy.tunnels) >= MAX_TUNNELS:
            await self._refuse(writer, task_id, target, f"more than {MAX_TUNNELS} tunnels")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(str(ip), port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            with contextlib.suppress(OSError):
                await writer.drain()
            log.info("egress %s: %s (%s) unreachable: %s", task_id, target, ip, exc)
            return
        tunnel = _Tunnel((writer, up_writer))
        proxy.tunnels.add(tunnel)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(
                self._pipe(tunnel, reader, up_writer), self._pipe(tunnel, up_reader, writer)
            )
        except OSError:
            pass
        finally:
            proxy.tunnels.discard(tunnel)
            tunnel.close()

    async def _check(self, rules: Allowlist, request_line: str) -> tuple[str, IPAddress, int]:
        """The target and the one address to connect to, or `Refused` saying why."""
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise Refused("malformed request line")
        method, target, _ = parts
        if method != "CONNECT":
            raise Refused("only CONNECT (HTTPS) is proxied")
        parsed = split_target(target)
        if parsed is None:
            raise Refused("malformed CONNECT target")
        host, port = parsed
        if not rules.port_allowed(port):
            raise Refused(f"port {port} is not in the policy's allow_ports")
        literal = parse_ip(host)
        if literal is not None:
            if rules.listed(literal):
                return target, literal, port
            refusal = rules.address_refusal(literal)
            raise Refused(refusal or "host not on the allowlist")
        if not rules.name_allowed(host):
            raise Refused("host not on the allowlist")
        try:
            addresses = await asyncio.wait_for(self._resolve(host), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise Refused(f"{host} does not resolve ({exc})") from None
        if not addresses:
            raise Refused(f"{host} does not resolve")
        for ip in addresses:  # every answer: one bad address refuses the name
            refusal = rules.address_refusal(ip)
            if refusal is not None:
                raise Refused(f"{host} resolves to {refusal}")
        return target, addresses[0], port

    async def _pipe(
        self, tunnel: _Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), self._idle_s)
                except TimeoutError:
                    if time.monotonic() - tunnel.touched >= self._idle_s:
                        break  # idle both ways
                    continue
                if not chunk:
                    break
                tunnel.touched = time.monotonic()
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            tunnel.close()

    async def _refuse(
        self, writer: asyncio.StreamWriter, task_id: str, target: str, reason: str
    ) -> None:
        self._on_denied(task_id, target, reason)
        body = f"claude-box: {reason}\n".encode()
        writer.write(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(OSError):
            await writer.drain()


def _target_of(request_line: str) -> str:
    parts = request_line.split()
    return parts[1] if len(parts) > 1 else request_line[:100]


def dns_resolver(server: str) -> Resolver:
    """A resolver asking one DNS server (CBOX_EGRESS_DNS) for A and AAAA records."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host or server]
    resolver.port = int(port) if port else 53
    resolver.lifetime = RESOLVE_TIMEOUT_S

    async def resolve(name: str) -> list[IPAddress]:
        found: list[IPAddress] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                raise OSError(str(exc)) from exc
            for record in answer:
                ip = parse_ip(record.to_text())
                if ip is not None and ip not in found:
                    found.append(ip)
        return found

    return resolve
