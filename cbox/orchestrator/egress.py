"""The `allowlist` network policy: an HTTP CONNECT proxy that lets through named hosts.

A task under `allowlist` sits on an internal network like `gateway`, plus this
proxy listening on the same gateway IP; `HTTPS_PROXY` / `HTTP_PROXY` point at
it. Only `CONNECT host:port` to a listed host is tunnelled (a tunnel carries
TLS end to end, so the proxy never sees the content); everything else —
plain-HTTP proxying, other hosts, malformed requests — gets a 403 and a
denial event on the task's log.

Hosts match exactly, or by suffix when written `*.example.org` (matching
subdomains, not the apex). Names are compared case-insensitively.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DenialHandler = Callable[[str, str, str], None]  # task id, target, reason
MAX_HEADER_BYTES = 16 * 1024
CONNECT_TIMEOUT_S = 15.0


def host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def split_target(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]")
    return (host, int(port)) if host and 0 < int(port) < 65536 else None


@dataclass
class _Proxy:
    server: asyncio.Server
    port: int


class EgressProxy:
    def __init__(self, on_denied: DenialHandler) -> None:
        self._on_denied = on_denied
        self._proxies: dict[str, _Proxy] = {}

    async def open_for(self, task_id: str, host: str, allowed: list[str], port: int = 0) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(task_id, allowed, reader, writer)

        server = await asyncio.start_server(handle, host, port)
        bound = int(server.sockets[0].getsockname()[1])
        self._proxies[task_id] = _Proxy(server, bound)
        return bound

    async def close_for(self, task_id: str) -> None:
        proxy = self._proxies.pop(task_id, None)
        if proxy is not None:
            proxy.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proxy.server.wait_closed(), 2)

    async def close(self) -> None:
        for task_id in list(self._proxies):
            await self.close_for(task_id)

    async def _handle(
        self,
        task_id: str,
        allowed: list[str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        if len(head) > MAX_HEADER_BYTES:
            await self._refuse(writer, task_id, "?", "request head too large")
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or parts[0].upper() != "CONNECT":
            target = parts[1] if len(parts) > 1 else request_line[:100]
            await self._refuse(writer, task_id, target, "only CONNECT (HTTPS) is proxied")
            return
        target = parts[1]
        parsed = split_target(target)
        if parsed is None:
            await self._refuse(writer, task_id, target, "malformed CONNECT target")
            return
        host, port = parsed
        if not host_allowed(host, allowed):
            await self._refuse(writer, task_id, target, "host not on the allowlist")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            log.info("egress %s: %s unreachable: %s", task_id, target, exc)
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

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
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()
