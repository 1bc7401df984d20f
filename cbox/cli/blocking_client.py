"""The CLI's HTTP/SSE client: blocking, stdlib only, one connection per request.

`cbox run` used to spend ~190 ms importing aiohttp (which builds SSL contexts at
import) and ~30 ms in asyncio before its first request, and ~150 ms closing the
session and tearing the loop down after `done`. A command line makes one request
at a time, so a plain socket and a few lines of HTTP/1.1 do: status line,
headers, then a `Content-Length` or chunked body. `https://` servers go through
the stdlib `ssl` module, imported only then. Ctrl-C interrupts a blocking read
with `KeyboardInterrupt`, which the caller turns into stopping the task.

Socket errors translate into `ServerUnreachable` / `ClientError` here and only
here, with the messages the aiohttp client gave (`cbox.cli.client`): scripts
and users see the same text whichever client ran.
"""

from __future__ import annotations

import json
import socket
import time

from cbox.cli.sse import MAX_STREAM_FAILURES, SseDecoder, SseEvent, error_message
from cbox.errors import ClientError, ServerUnreachable

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: see cbox.cli.sse
if TYPE_CHECKING:
    from collections.abc import Iterator
    from io import BufferedReader
    from typing import Any

CONNECT_TIMEOUT_S = 10.0
MAX_LINE_BYTES = 65536
#: Path characters sent as they are; anything else is percent-encoded like yarl does.
_PATH_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@!$&'()*+,;=%"
)


class _Disconnected(Exception):
    """The server closed or broke the connection in the middle of an answer."""


class _Response:
    """Status, lower-cased headers, and the body stream of one HTTP/1.1 answer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file: BufferedReader = sock.makefile("rb")
        status_line = self._line()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ClientError(f"not an HTTP answer: {status_line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        while line := self._line().rstrip(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def _line(self) -> bytes:
        line = self._file.readline(MAX_LINE_BYTES)
        if not line.endswith(b"\n"):
            raise _Disconnected("the server closed the connection")
        return line

    def pieces(self) -> Iterator[bytes]:
        """The body as it arrives; ends cleanly only when the whole body came."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";", 1)[0].strip() or b"x", 16)
                if size == 0:
                    return
                chunk = self._file.read(size)
                if len(chunk) < size:
                    raise _Disconnected("the server closed the connection mid-chunk")
                self._line()  # the CRLF after the chunk
                yield chunk
        elif "content-length" in self.headers:
            length = int(self.headers["content-length"])
            body = self._file.read(length) if length else b""
            if len(body) < length:
                raise _Disconnected("the server closed the connection mid-body")
            yield body
        else:
            while piece := self._file.read1(65536):
                yield piece

    def body(self) -> bytes:
        return b"".join(self.pieces())

    def close(self) -> None:
        self._file.close()
        self._sock.close()


class BlockingClient:
    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        self._token = token
        scheme, sep, rest = self.server.partition("://")
        self._tls = scheme.lower() == "https"
        self._valid = bool(sep) and scheme.lower() in ("http", "https")
        netloc, slash, prefix = rest.partition("/")
        self._prefix = (slash + prefix).rstrip("/")
        self._netloc = netloc.rpartition("@")[2]
        host, port = self._netloc, "443" if self._tls else "80"
        if host.startswith("["):  # [::1]:8080
            bracketed, _, after = host[1:].partition("]")
            host, port = bracketed, after[1:] or port
        elif ":" in host:
            host, _, port = host.rpartition(":")
        self._host = host
        self._port = int(port) if port.isdigit() else -1
        self._valid = self._valid and bool(host) and self._port >= 0

    def request(self, method: str, path: str, *, json_body: Any = None) -> Any:
        _, body = self.request_with_status(method, path, json_body=json_body)
        return body

    def request_with_status(
        self, method: str, path: str, *, json_body: Any = None
    ) -> tuple[int, Any]:
        """Like `request`, also returning the status (202 vs 200 tells new from existing)."""
        payload = None if json_body is None else json.dumps(json_body).encode()
        url = self.server + path
        try:
            response = self._send(method, path, payload, {})
        except _Disconnected:
            raise self._unreachable("ServerDisconnectedError") from None
        except OSError as exc:
            raise self._unreachable("ClientOSError") from exc
        try:
            raw = response.body()
        except (_Disconnected, ValueError) as exc:
            raise ClientError(f"request to {url} failed: {exc}") from exc
        except OSError as exc:
            raise self._unreachable("ClientOSError") from exc
        finally:
            response.close()
        text = raw.decode("utf-8", errors="replace")
        if response.status >= 400:
            raise ClientError(error_message(response.status, text), status=response.status)
        return response.status, json.loads(text) if text else None

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/tasks", json_body=spec)
        return result

    def get(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/tasks/{task_id}")
        return result

    def stop(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/tasks/{task_id}/stop")
        return result

    def events(self, task_id: str, after: int = 0) -> Iterator[SseEvent]:
        """Follow a task's events until `done`, reconnecting with Last-Event-ID."""
        last = after
        failures = 0
        while True:
            try:
                for event in self._events_once(task_id, last):
                    failures = 0
                    if event.id is not None:
                        last = event.id
                    yield event
                    if event.type == "done":
                        return
                return
            except ServerUnreachable:
                failures += 1
                if failures > MAX_STREAM_FAILURES:
                    raise
                time.sleep(min(2.0, 0.1 * failures))

    def _events_once(self, task_id: str, after: int) -> Iterator[SseEvent]:
        headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
        try:
            response = self._send("GET", f"/tasks/{task_id}/events", None, headers)
        except (_Disconnected, OSError) as exc:
            raise self._lost(exc) from exc
        try:
            if response.status >= 400:
                text = response.body().decode("utf-8", errors="replace")
                raise ClientError(error_message(response.status, text), status=response.status)
            decoder = SseDecoder()
            rest = b""
            for piece in response.pieces():
                *lines, rest = (rest + piece).split(b"\n")
                for line in lines:
                    event = decoder.line(line)
                    if event is not None:
                        yield event
        except (_Disconnected, OSError, ValueError) as exc:
            raise self._lost(exc) from exc
        finally:
            response.close()

    def _send(
        self, method: str, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> _Response:
        """Connect, send one request, and read the answer's head."""
        if not self._valid:
            url = self.server + path
            raise ClientError(f"request to {url} failed: {url}")
        sock = self._connect()
        try:
            target, query, params = (self._prefix + path).partition("?")
            if not _PATH_SAFE.issuperset(target):
                from urllib.parse import quote

                target = quote(target, safe="".join(_PATH_SAFE))
            target += query + params  # ours, made of safe characters
            head = [f"{method} {target} HTTP/1.1", f"Host: {self._netloc}", "Accept: */*"]
            head += [f"{name}: {value}" for name, value in headers.items()]
            if self._token:
                head.append(f"Authorization: Bearer {self._token}")
            if payload is not None:
                head.append("Content-Type: application/json")
            if payload is not None or method in ("POST", "PUT", "PATCH"):
                head.append(f"Content-Length: {len(payload or b'')}")
            head.append("Connection: close")
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (payload or b""))
            return _Response(sock)
        except BaseException:
            sock.close()
            raise

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=CONNECT_TIMEOUT_S)
        except socket.gaierror as exc:
            raise self._unreachable("ClientConnectorDNSError") from exc
        except TimeoutError as exc:
            raise self._unreachable("ConnectionTimeoutError") from exc
        except OSError as exc:
            raise self._unreachable("ClientConnectorError") from exc
        if self._tls:
            import ssl

            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise self._unreachable("ClientConnectorCertificateError") from exc
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise self._unreachable("ClientConnectorSSLError") from exc
        sock.settimeout(None)  # like aiohttp's total=None: a task may stream for hours
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _unreachable(self, reason: str) -> ServerUnreachable:
        # The reason is the aiohttp exception name the previous client printed.
        return ServerUnreachable(
            f"no claude-box server at {self.server} ({reason}); "
            "start one with `cbox serve` or pass --server"
        )

    def _lost(self, exc: BaseException) -> ServerUnreachable:
        if isinstance(exc, ServerUnreachable):
            return exc
        return ServerUnreachable(f"lost the connection to {self.server}: {exc}")
