"""A scripted fake of the Anthropic Messages API that speaks the real wire format.

Why: claude-box runs the real Claude Code CLI, and tests must never reach the real API
(no network, no credentials, no cost, no nondeterminism). The CLI only needs
``ANTHROPIC_BASE_URL`` to point somewhere that answers ``POST /v1/messages`` with
Anthropic's server-sent events, so this fake does exactly that, and nothing smarter: each
test scripts the model's replies per conversation, and the real CLI runs the real tools in
between. Keeping the byte format faithful (event names, block indexes, ``input_json_delta``
chunks, ids, usage, error JSON, ``request-id`` headers) is the whole point: a sloppy fake
would let tests pass against a CLI that would choke on it, or the reverse.

Every request is also kept as it arrived on the wire (``seen``: method, raw path with
query, headers), before any routing, so a test can check what a client really sent: which
endpoints, which ``anthropic-beta`` values, or that nothing arrived outside the fake's
path ``prefix`` (the fake can serve under one, as a proxy in front of the API would).

Conversations are told apart by a *marker*: a string the test puts in the prompt (for
example a task id). The turn within a conversation is the number of assistant messages
the CLI sends back, which is how the real API sees it too: the CLI resends the whole
history each turn.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = [
    "FakeAnthropic",
    "HttpError",
    "Recorded",
    "Redirect",
    "Reply",
    "Seen",
    "Slow",
    "Text",
    "ToolUse",
]


@dataclass
class Text:
    """An assistant text reply; ends the agent's turn (``stop_reason: end_turn``)."""

    text: str


@dataclass
class ToolUse:
    """An assistant tool call.

    The CLI really runs the tool and calls again with the ``tool_result``, so a script of
    ``[ToolUse(...), Text(...)]`` drives one full tool-using agent run. ``text`` is an
    optional text block sent before the ``tool_use`` block, as real models often do.
    """

    name: str
    input: dict[str, Any]
    text: str | None = None


@dataclass
class HttpError:
    """Answer with this HTTP status and Anthropic's error JSON body.

    ``error_type`` is Anthropic's error type: ``api_error`` (500), ``overloaded_error``
    (529), ``rate_limit_error`` (429), ``authentication_error`` (401), ...
    """

    status: int
    message: str = "fake upstream error"
    error_type: str = "api_error"


@dataclass
class Slow:
    """Stream ``reply`` with ``delay_s`` between SSE events.

    Why: tests of cancellation, timeouts and live streaming need a model call that is
    really in flight on the wire, not one that is merely late to start.
    """

    reply: Text | ToolUse
    delay_s: float


@dataclass
class Redirect:
    """Answer with a redirect to ``location``, as a misconfigured or hostile proxy might.

    Why: a client that follows it would carry the request's credential to ``location``.
    """

    location: str
    status: int = 302


Reply = Text | ToolUse | HttpError | Slow | Redirect


@dataclass
class Recorded:
    """One request as the fake received it, for assertions about what the CLI sent.

    ``path`` keeps the query string (Claude Code calls ``/v1/messages?beta=true``);
    ``headers`` keys are lower-cased so tests need not guess the client's casing.
    """

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Seen:
    """One request exactly as it arrived, whatever its method or path.

    ``raw_path`` is the request target before any decoding (``%2e%2e`` stays as sent),
    with its query string; ``headers`` keys are lower-cased.
    """

    method: str
    raw_path: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]


# How many pieces each text / tool-input JSON is streamed in. Real streams cut text into
# many small deltas; a few are enough to catch a client that keeps only the last one.
_CHUNKS = 4

_FALLBACK_NO_SCRIPT = Text("ok")
_FALLBACK_PAST_END = Text("done")


def _hex_id(prefix: str) -> str:
    """Ids shaped like the real ones (``msg_``, ``toolu_``, ``req_`` + opaque suffix)."""
    return prefix + secrets.token_hex(12)


def _chunks(s: str, n: int = _CHUNKS) -> list[str]:
    """Cut ``s`` into at most ``n`` non-empty pieces (one empty piece if ``s`` is empty)."""
    if not s:
        return [""]
    size = max(1, -(-len(s) // n))
    return [s[i : i + size] for i in range(0, len(s), size)]


def _estimate_tokens(s: str) -> int:
    """A plausible token count (about four characters a token); never zero."""
    return max(1, len(s) // 4)


def _error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    """Anthropic's documented error shape, including the top-level ``request_id``."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def _messages_text(body: dict[str, Any]) -> tuple[str, str]:
    """The request's messages serialized two ways, for marker matching.

    ``json.dumps`` escapes non-ASCII and quotes; matching the unescaped form too lets a
    marker with non-ASCII characters work as a test author would expect.
    """
    messages = body.get("messages", [])
    return json.dumps(messages), json.dumps(messages, ensure_ascii=False)


def _contains(body: dict[str, Any], marker: str) -> bool:
    return any(marker in s for s in _messages_text(body))


def _turn_index(body: dict[str, Any]) -> int:
    """Number of assistant messages already in the request: the turn being asked for."""
    messages = body.get("messages", [])
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


class FakeAnthropic:
    """An aiohttp server answering like ``api.anthropic.com``, from per-test scripts.

    Listens on every host in ``hosts`` on one port, so the same URL shape works from the
    test process (127.0.0.1) and from containers (a Docker bridge gateway address).
    Give IP addresses: a name resolving to several addresses would, with port 0, be
    bound on several ports. With a ``prefix`` (``"/anthropic"``) the API is served under
    it, and anything outside it gets a 404 (and stays in ``seen``).
    """

    expected_api_key: str | None = None

    def __init__(
        self, hosts: Sequence[str] = ("127.0.0.1",), port: int = 0, prefix: str = ""
    ) -> None:
        if not hosts:
            raise ValueError("FakeAnthropic needs at least one host to listen on")
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError("prefix must start with '/' and not end with one")
        self._hosts = tuple(hosts)
        self.port = port
        self.prefix = prefix
        self.expected_api_key = None
        self.requests: list[Recorded] = []
        self.seen: list[Seen] = []
        self._scripts: list[tuple[str, list[Reply]]] = []
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every host on one port; with port 0 the first bind picks a free port."""
        if self._runner is not None:
            raise RuntimeError("FakeAnthropic already started")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        # One catch-all route: dispatching by hand lets unknown paths and methods get
        # Anthropic's error JSON instead of aiohttp's plain-text 404/405.
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        try:
            for host in self._hosts:
                site = web.TCPSite(runner, host, self.port)
                await site.start()
                if self.port == 0:
                    self.port = int(runner.addresses[-1][1])
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening and drop open connections (including streams in flight)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def url(self, host: str = "127.0.0.1") -> str:
        """Base URL for ``ANTHROPIC_BASE_URL`` as seen from ``host``'s side."""
        return f"http://{host}:{self.port}{self.prefix}"

    # -- scripting and records ---------------------------------------------------------

    def script(self, marker: str, replies: Sequence[Reply]) -> None:
        """Script the conversation whose messages contain ``marker``.

        Turn k (k assistant messages already in the request) gets ``replies[k]``. Past
        the end, a trailing ``HttpError`` repeats (so retries keep failing) and anything
        else yields ``Text("done")``. Newer scripts win over older ones.
        """
        self._scripts.append((marker, list(replies)))

    def requests_with(self, marker: str) -> list[Recorded]:
        """Recorded ``/v1/messages`` requests whose messages contain ``marker``."""
        return [r for r in self.requests if _contains(r.body, marker)]

    def clear(self) -> None:
        """Forget all scripts and recorded requests."""
        self._scripts.clear()
        self.requests.clear()
        self.seen.clear()

    def _reply_for(self, body: dict[str, Any]) -> Reply:
        for marker, replies in reversed(self._scripts):
            if not _contains(body, marker):
                continue
            k = _turn_index(body)
            if k < len(replies):
                return replies[k]
            if replies and isinstance(replies[-1], HttpError):
                return replies[-1]
            return _FALLBACK_PAST_END
        return _FALLBACK_NO_SCRIPT

    # -- HTTP --------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        expected = self.expected_api_key
        if expected is None:
            return True
        if request.headers.get("x-api-key") == expected:
            return True
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and token.strip() == expected

    @staticmethod
    def _error(status: int, error_type: str, message: str) -> web.Response:
        request_id = _hex_id("req_")
        headers = {"request-id": request_id}
        # Tell clients not to retry what cannot succeed; 429 and 5xx stay retryable.
        if 400 <= status < 500 and status != 429:
            headers["x-should-retry"] = "false"
        return web.json_response(
            _error_body(error_type, message, request_id), status=status, headers=headers
        )

    async def _read_json(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._error(400, "invalid_request_error", f"malformed JSON body: {exc}")
        if not isinstance(body, dict):
            return self._error(400, "invalid_request_error", "request body must be an object")
        if "messages" in body and not isinstance(body["messages"], list):
            return self._error(400, "invalid_request_error", "messages: must be a list")
        return body

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                method=request.method,
                raw_path=request.raw_path,
                headers={k.lower(): v for k, v in request.headers.items()},
            )
        )
        # Route on the raw path: a real server behind a prefix sees only what is under it.
        raw = request.raw_path.split("?", 1)[0]
        path = raw[len(self.prefix) :] if raw.startswith(self.prefix + "/") else None
        if request.method == "POST" and path == "/v1/messages":
            return await self._messages(request)
        if request.method == "POST" and path == "/v1/messages/count_tokens":
            return await self._count_tokens(request)
        return self._error(404, "not_found_error", f"Not found: {request.method} {request.path}")

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        if not self._authorized(request):
            return self._error(401, "authentication_error", "invalid x-api-key")
        counted = {k: body.get(k) for k in ("system", "messages", "tools")}
        return web.json_response(
            {"input_tokens": _estimate_tokens(json.dumps(counted))},
            headers={"request-id": _hex_id("req_")},
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        # Record first, so a test sees the request even if answering it fails midway.
        self.requests.append(
            Recorded(
                path=request.path_qs,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        if not self._authorized(request):
            return self._error(401, "authentication_error", "invalid x-api-key")

        reply = self._reply_for(body)
        if isinstance(reply, HttpError):
            return self._error(reply.status, reply.error_type, reply.message)
        if isinstance(reply, Redirect):
            return web.Response(
                status=reply.status,
                headers={"Location": reply.location, "request-id": _hex_id("req_")},
            )
        delay = reply.delay_s if isinstance(reply, Slow) else 0.0
        content = reply.reply if isinstance(reply, Slow) else reply

        model = str(body.get("model") or "claude-fake")
        input_tokens = _estimate_tokens(json.dumps(body))
        events = _stream_events(content, model, input_tokens)
        if body.get("stream") is True:
            return await self._stream(request, events, delay)
        # Non-streaming: the same message the stream would have built, in one JSON.
        if delay:
            await asyncio.sleep(delay * max(0, len(events) - 1))
        return web.json_response(
            _final_message(content, events), headers={"request-id": _hex_id("req_")}
        )

    @staticmethod
    async def _stream(
        request: web.Request, events: list[tuple[str, dict[str, Any]]], delay: float
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": _hex_id("req_"),
            },
        )
        await response.prepare(request)
        try:
            async for chunk in _paced(events, delay):
                # write() hands each event to the transport at once: no buffering, so a
                # Slow reply is slow on the wire and a client sees events as they come.
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            # The client went away mid-stream (the CLI was stopped): nothing to answer.
            pass
        return response


async def _paced(events: list[tuple[str, dict[str, Any]]], delay: float) -> AsyncIterator[bytes]:
    for i, (name, data) in enumerate(events):
        if i and delay:
            await asyncio.sleep(delay)
        yield _sse(name, data)


def _sse(name: str, data: dict[str, Any]) -> bytes:
    """One SSE event as Anthropic frames it: ``event:`` line, one ``data:`` line, blank."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {payload}\n\n".encode()


def _stream_events(
    reply: Text | ToolUse, model: str, input_tokens: int
) -> list[tuple[str, dict[str, Any]]]:
    """The full event sequence of one streamed message, as (event name, data) pairs.

    Order follows the Messages streaming docs: ``message_start`` (empty content),
    ``ping``, then per block ``content_block_start`` / ``content_block_delta``... /
    ``content_block_stop``, then ``message_delta`` (stop_reason, usage) and
    ``message_stop``.
    """
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": _hex_id("msg_"),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    output_chars = 0

    def text_block(index: int, text: str) -> None:
        nonlocal output_chars
        output_chars += len(text)
        events.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for piece in _chunks(text):
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))

    if isinstance(reply, Text):
        text_block(0, reply.text)
        stop_reason = "end_turn"
    else:
        index = 0
        if reply.text is not None:
            text_block(0, reply.text)
            index = 1
        input_json = json.dumps(reply.input, ensure_ascii=False)
        output_chars += len(input_json) + len(reply.name)
        events.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": _hex_id("toolu_"),
                        "name": reply.name,
                        "input": {},
                    },
                },
            )
        )
        for piece in _chunks(input_json):
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        stop_reason = "tool_use"

    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": _estimate_tokens("x" * output_chars)},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _final_message(
    reply: Text | ToolUse, events: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """The complete Message a non-streaming call returns, built from the same events.

    Building it from the events keeps ids, usage and content identical to what the stream
    would have said, so the two paths cannot drift apart.
    """
    message: dict[str, Any] = dict(events[0][1]["message"])
    message["usage"] = dict(message["usage"])
    content: list[dict[str, Any]] = []
    for name, data in events[1:]:
        if name == "content_block_start":
            content.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            delta = data["delta"]
            block = content[data["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"]["output_tokens"] = data["usage"]["output_tokens"]
    if isinstance(reply, ToolUse):
        content[-1]["input"] = reply.input
    message["content"] = content
    return message
