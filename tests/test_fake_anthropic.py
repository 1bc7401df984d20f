"""Tests of the fake Anthropic API, over real HTTP.

Why: every agent-level test trusts this fake to speak Anthropic's wire format; if it
drifts, those tests would exercise a CLI talking to something the real API never says.
So these tests parse the raw SSE bytes the way a client would, with no mocks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.fakes.anthropic import FakeAnthropic, HttpError, Redirect, Slow, Text, ToolUse

MODEL = "claude-test-model"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _body(*messages: dict[str, Any], stream: bool = True) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1024, "stream": stream, "messages": list(messages)}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """Split an SSE body into (event, data) pairs; every event must have both lines."""
    events = []
    for frame in raw.split("\n\n"):
        if not frame.strip():
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(fields) == {"event", "data"}, frame
        data = json.loads(fields["data"])
        assert data["type"] == fields["event"]
        events.append((fields["event"], data))
    return events


async def _stream(
    http: aiohttp.ClientSession, fake: FakeAnthropic, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    async with http.post(fake.url() + "/v1/messages?beta=true", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["request-id"].startswith("req_")
        return _parse_sse(await resp.text())


def _reassemble(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rebuild content blocks from deltas, as a client library would."""
    blocks: list[dict[str, Any]] = []
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] == len(blocks)
            blocks.append({**data["content_block"], "_json": ""})
        elif name == "content_block_delta":
            block = blocks[data["index"]]
            delta = data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                block["_json"] += delta["partial_json"]
    for block in blocks:
        raw = block.pop("_json")
        if block["type"] == "tool_use":
            block["input"] = json.loads(raw)
    return blocks


def _check_order(events: list[tuple[str, dict[str, Any]]], n_blocks: int) -> None:
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    body = [n for n in names[1:-2] if n != "ping"]
    expected: list[str] = []
    i = 0
    for _ in range(n_blocks):
        assert body[i] == "content_block_start"
        j = i + 1
        while body[j] == "content_block_delta":
            j += 1
        assert j > i + 1, "each block needs at least one delta"
        assert body[j] == "content_block_stop"
        expected += body[i : j + 1]
        i = j + 1
    assert body == expected


async def test_text_stream_format(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    text = "Hello from the fake model, streamed in a few pieces."
    fake.script("MARK-text", [Text(text)])
    events = await _stream(http, fake, _body(_user("do it MARK-text")))

    _check_order(events, n_blocks=1)
    assert "ping" in [n for n, _ in events]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert start["type"] == "message"
    assert start["role"] == "assistant"
    assert start["model"] == MODEL
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0
    assert "output_tokens" in start["usage"]

    deltas = [d for n, d in events if n == "content_block_delta"]
    assert len(deltas) > 1, "text should arrive in several chunks"
    assert _reassemble(events) == [{"type": "text", "text": text}]
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    assert message_delta["usage"]["output_tokens"] > 0


async def test_tool_use_stream_reconstructs_input(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    tool_input = {"file_path": "/workspace/a.txt", "content": "hello\nworld ✓"}
    fake.script("MARK-tool", [ToolUse("Write", tool_input, text="I'll write it.")])
    events = await _stream(http, fake, _body(_user("MARK-tool")))

    _check_order(events, n_blocks=2)
    blocks = _reassemble(events)
    assert blocks[0] == {"type": "text", "text": "I'll write it."}
    assert blocks[1]["type"] == "tool_use"
    assert blocks[1]["id"].startswith("toolu_")
    assert blocks[1]["name"] == "Write"
    assert blocks[1]["input"] == tool_input
    json_deltas = [d for n, d in events if d.get("delta", {}).get("type") == "input_json_delta"]
    assert len(json_deltas) > 1, "tool input should arrive in several partial_json chunks"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_tool_use_without_text_is_block_zero(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script("MARK-bare", [ToolUse("Bash", {"command": "ls"})])
    events = await _stream(http, fake, _body(_user("MARK-bare")))
    _check_order(events, n_blocks=1)
    [block] = _reassemble(events)
    assert block["type"] == "tool_use"
    assert block["input"] == {"command": "ls"}


async def test_turn_index_counts_assistant_messages(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script("MARK-turns", [ToolUse("Bash", {"command": "ls"}), Text("second")])
    turn0 = _reassemble(await _stream(http, fake, _body(_user("MARK-turns"))))
    assert turn0[0]["type"] == "tool_use"

    history = (_user("MARK-turns"), _assistant("called a tool"), _user("tool output"))
    turn1 = _reassemble(await _stream(http, fake, _body(*history)))
    assert turn1 == [{"type": "text", "text": "second"}]

    more = (*history, _assistant("second"), _user("again"))
    past_end = _reassemble(await _stream(http, fake, _body(*more)))
    assert past_end == [{"type": "text", "text": "done"}]


async def test_unscripted_and_newest_script_wins(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    assert _reassemble(await _stream(http, fake, _body(_user("nobody")))) == [
        {"type": "text", "text": "ok"}
    ]
    fake.script("MARK", [Text("old")])
    fake.script("MARK", [Text("new")])
    assert _reassemble(await _stream(http, fake, _body(_user("MARK"))))[0]["text"] == "new"


async def test_http_error_status_body_and_repeat(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script("MARK-err", [HttpError(529, "Overloaded", "overloaded_error")])
    for history in ((_user("MARK-err"),), (_user("MARK-err"), _assistant("x"), _user("y"))):
        async with http.post(fake.url() + "/v1/messages", json=_body(*history)) as resp:
            assert resp.status == 529
            assert resp.headers["request-id"].startswith("req_")
            assert "x-should-retry" not in resp.headers
            body = await resp.json()
        assert body["type"] == "error"
        assert body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
        assert body["request_id"] == resp.headers["request-id"]


async def test_client_error_says_do_not_retry(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script("MARK-400", [HttpError(400, "bad", "invalid_request_error")])
    fake.script("MARK-429", [HttpError(429, "slow down", "rate_limit_error")])
    async with http.post(fake.url() + "/v1/messages", json=_body(_user("MARK-400"))) as resp:
        assert resp.status == 400
        assert resp.headers["x-should-retry"] == "false"
    async with http.post(fake.url() + "/v1/messages", json=_body(_user("MARK-429"))) as resp:
        assert resp.status == 429
        assert "x-should-retry" not in resp.headers
        assert (await resp.json())["error"]["type"] == "rate_limit_error"


async def test_slow_is_slow_on_the_wire(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    delay = 0.05
    fake.script("MARK-slow", [Slow(Text("slowly but surely"), delay)])
    arrivals: list[float] = []
    raw = ""
    started = time.monotonic()
    async with http.post(fake.url() + "/v1/messages", json=_body(_user("MARK-slow"))) as resp:
        assert resp.status == 200
        async for line in resp.content:
            raw += line.decode()
            if line.startswith(b"event: "):
                arrivals.append(time.monotonic())
    total = time.monotonic() - started
    events = _parse_sse(raw)
    n_gaps = len(events) - 1
    assert len(arrivals) == len(events)
    assert total >= n_gaps * delay
    # Events reached the client one by one, not all at once at the end.
    assert arrivals[-1] - arrivals[0] >= (n_gaps - 1) * delay
    assert _reassemble(events) == [{"type": "text", "text": "slowly but surely"}]


async def test_records_requests_in_order(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    await _stream(http, fake, _body(_user("first MARK-a")))
    await _stream(http, fake, _body(_user("second MARK-b")))
    await _stream(http, fake, _body(_user("MARK-a again"), _assistant("x"), _user("y")))

    assert [r.path for r in fake.requests] == ["/v1/messages?beta=true"] * 3
    assert fake.requests[0].body["messages"][0]["content"][0]["text"] == "first MARK-a"
    assert fake.requests[0].headers["content-type"] == "application/json"
    assert [len(r.body["messages"]) for r in fake.requests_with("MARK-a")] == [1, 3]
    assert len(fake.requests_with("MARK-b")) == 1

    fake.script("MARK-a", [Text("x")])
    fake.clear()
    assert fake.requests == []
    assert _reassemble(await _stream(http, fake, _body(_user("MARK-a"))))[0]["text"] == "ok"


async def test_concurrent_conversations(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.script("MARK-one", [Slow(Text("one"), 0.02)])
    fake.script("MARK-two", [Slow(Text("two"), 0.02)])
    one, two = await asyncio.gather(
        _stream(http, fake, _body(_user("MARK-one"))),
        _stream(http, fake, _body(_user("MARK-two"))),
    )
    assert _reassemble(one)[0]["text"] == "one"
    assert _reassemble(two)[0]["text"] == "two"


async def test_non_streaming_returns_full_message(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script("MARK-ns", [ToolUse("Bash", {"command": "echo hi"}, text="Running.")])
    body = _body(_user("MARK-ns"), stream=False)
    async with http.post(fake.url() + "/v1/messages", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["request-id"].startswith("req_")
        message = await resp.json()
    assert message["id"].startswith("msg_")
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["model"] == MODEL
    assert message["stop_reason"] == "tool_use"
    assert message["content"][0] == {"type": "text", "text": "Running."}
    tool = message["content"][1]
    assert tool["type"] == "tool_use"
    assert tool["id"].startswith("toolu_")
    assert tool["input"] == {"command": "echo hi"}
    assert message["usage"]["input_tokens"] > 0
    assert message["usage"]["output_tokens"] > 0


async def test_api_key_check(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.expected_api_key = "sk-test-right"
    url = fake.url() + "/v1/messages"
    body = _body(_user("MARK-key"))
    async with http.post(url, json=body, headers={"x-api-key": "sk-wrong"}) as resp:
        assert resp.status == 401
        assert resp.headers["x-should-retry"] == "false"
        assert (await resp.json())["error"]["type"] == "authentication_error"
    async with http.post(url, json=body) as resp:
        assert resp.status == 401
    async with http.post(url, json=body, headers={"x-api-key": "sk-test-right"}) as resp:
        assert resp.status == 200
        await resp.read()
    bearer = {"Authorization": "Bearer sk-test-right"}
    async with http.post(url, json=body, headers=bearer) as resp:
        assert resp.status == 200
        await resp.read()
    # Rejected requests are recorded too: a test can see what the CLI sent.
    assert len(fake.requests_with("MARK-key")) == 4
    assert fake.requests[0].headers["x-api-key"] == "sk-wrong"


async def test_count_tokens(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "messages": [_user("count these words please")]}
    async with http.post(fake.url() + "/v1/messages/count_tokens", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["request-id"].startswith("req_")
        result = await resp.json()
    assert isinstance(result["input_tokens"], int)
    assert result["input_tokens"] > 0
    assert fake.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/complete"), ("GET", "/v1/messages"), ("GET", "/"), ("POST", "/v2/x")],
)
async def test_unknown_path_is_404(
    fake: FakeAnthropic, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with http.request(method, fake.url() + path) as resp:
        assert resp.status == 404
        assert resp.headers["request-id"].startswith("req_")
        body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"


async def test_malformed_json_is_400(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    for data in (b"{not json", b"[1, 2]", b'{"messages": "nope"}'):
        async with http.post(
            fake.url() + "/v1/messages",
            data=data,
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["error"]["type"] == "invalid_request_error"
    # The fake keeps serving after bad input.
    await _stream(http, fake, _body(_user("still alive")))


async def test_client_disconnect_mid_stream(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script("MARK-drop", [Slow(Text("a long answer " * 10), 0.05)])
    async with http.post(fake.url() + "/v1/messages", json=_body(_user("MARK-drop"))) as resp:
        assert resp.status == 200
        await resp.content.readline()
    # Dropped the connection; the next call is served normally.
    assert _reassemble(await _stream(http, fake, _body(_user("other"))))[0]["text"] == "ok"


async def test_several_hosts_share_one_port() -> None:
    # All of 127.0.0.0/8 is loopback on Linux, so a second address needs no setup.
    server = FakeAnthropic(hosts=("127.0.0.1", "127.0.0.2"))
    await server.start()
    try:
        assert server.port > 0
        assert server.url() == f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            for host in ("127.0.0.1", "127.0.0.2"):
                body = _body(_user("hi"))
                async with session.post(server.url(host) + "/v1/messages", json=body) as resp:
                    assert resp.status == 200
                    await resp.read()
    finally:
        await server.close()


async def test_prefix_seen_and_redirect() -> None:
    """Served under a prefix, every request kept as it arrived, a scripted redirect."""
    server = FakeAnthropic(prefix="/anthropic")
    await server.start()
    try:
        assert server.url().endswith(f":{server.port}/anthropic")
        server.script("MARK-r", [Redirect("http://127.0.0.1:1/elsewhere")])
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url() + "/v1/messages", json=_body(_user("x"))) as ok:
                assert ok.status == 200
                await ok.read()
            root = server.url().removesuffix("/anthropic")
            async with session.post(root + "/v1/messages", json=_body(_user("x"))) as outside:
                assert outside.status == 404
            async with session.post(
                server.url() + "/v1/messages", json=_body(_user("MARK-r")), allow_redirects=False
            ) as moved:
                assert moved.status == 302
                assert moved.headers["Location"] == "http://127.0.0.1:1/elsewhere"
            odd_url = URL(server.url() + "/v1/%2e%2e/x?y=1", encoded=True)
            async with session.get(odd_url) as odd:
                assert odd.status == 404
    finally:
        await server.close()
    assert [(s.method, s.raw_path) for s in server.seen] == [
        ("POST", "/anthropic/v1/messages"), ("POST", "/v1/messages"),
        ("POST", "/anthropic/v1/messages"), ("GET", "/anthropic/v1/%2e%2e/x?y=1"),
    ]
    assert server.seen[0].headers["content-type"] == "application/json"
    assert server.seen[3].path == "/anthropic/v1/%2e%2e/x"
