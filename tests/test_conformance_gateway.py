"""Attacks on the model-API gateway, from inside real boxes, through a real orchestrator.

The box holds a task token and `ANTHROPIC_BASE_URL`; the gateway puts the real
key on whatever it relays. Each attack script uses that door with `curl` and
prints `held: ...` when the gateway refused, `BREACH: ...` when it relayed.
The host side checks the same thing where it matters: what the upstream (the
fake, served under a path prefix as a proxy in front of the API would be)
actually received. The first test records the real CLI, so the allowlist
stays what Claude Code needs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from cbox.orchestrator.apirules import DEFAULT_BETAS, ENDPOINTS, FORWARD_HEADERS
from cbox.orchestrator.gateway import MAX_DENIAL_EVENTS, MAX_IN_FLIGHT
from tests.conftest import WORKSPACE_GID, WORKSPACE_UID
from tests.fakes.anthropic import FakeAnthropic, HttpError, Redirect, Slow, Text, ToolUse
from tests.orch import FAKE_KEY, Orchestrator
from tests.test_conformance import held, write_attack
from tests.test_sandbox_image import claude_cmd, claude_env, run_box

pytestmark = [pytest.mark.docker]

PREFIX = "/anthropic"
ATTACK = 'agent = "command"\ncommand = ["bash", "/workspace/attack.sh"]\ntimeout_s = 90\n'
POLICIES = {
    "attack": ATTACK,
    "tools-on": ATTACK + "server_tools = true\n",
    "budget": ATTACK + "max_tokens = 100\n",
}
ALLOWED_PATHS = {e.path for e in ENDPOINTS}

# Shell helpers every attack script starts with. `req METHOD PATH [curl args]`
# prints the status; `check NAME STATUS` says whether the gateway refused it.
PRELUDE = r"""
B="$ANTHROPIC_BASE_URL"
req() { local m=$1 p=$2; shift 2
  curl -s -o /dev/null -m 10 -w '%{http_code}' --path-as-is -X "$m" "$B$p" \
    -H "x-api-key: $ANTHROPIC_API_KEY" -H 'content-type: application/json' "$@"; }
check() { case "$2" in 400|403) echo "held: $1";; *) echo "BREACH: $1 gave $2";; esac; }
"""


def message(marker: str, **extra: Any) -> str:
    """A small Messages body, as JSON for a shell single-quoted argument."""
    body = {"model": "claude-sonnet-x", "max_tokens": 16,
            "messages": [{"role": "user", "content": f"{marker} hello"}], **extra}
    return json.dumps(body).replace("'", "")


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    """The fake API behind a path prefix, where only the host's gateway reaches it."""
    fake = FakeAnthropic(prefix=PREFIX)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def box(
    orchestrator_factory: type[Orchestrator], workspace: Path, upstream: FakeAnthropic
) -> Orchestrator:
    orch = orchestrator_factory(
        workspace=workspace, max_concurrent=2, policies=POLICIES,
        env={"ANTHROPIC_BASE_URL": upstream.url() + "/"},
    )
    await orch.start()
    return orch


async def attack(
    box: Orchestrator, workspace: Path, script: str, policy: str = "attack"
) -> tuple[list[str], dict[str, Any], list[Any]]:
    write_attack(workspace, PRELUDE + script)
    task = await box.submit("attack", policy=policy)
    events = [e async for e in box.events(task["id"])]
    lines = [str(e.data.get("line", "")) for e in events if e.type in ("output", "stderr")]
    assert [line for line in lines if line.startswith("BREACH")] == [], lines
    return lines, events[-1].data, events


def stayed_inside(fake: FakeAnthropic) -> list[str]:
    """Raw paths the upstream saw outside the allowed endpoints under its prefix."""
    return [s.raw_path for s in fake.seen if s.path.removeprefix(PREFIX) not in ALLOWED_PATHS
            or not s.path.startswith(PREFIX + "/")]


def denials(events: list[Any]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == "egress_denied"]


# ------------------------------------------------------------------ the real CLI


async def test_the_cli_uses_only_what_the_gateway_allows(
    orchestrator_factory: type[Orchestrator],
    workspace: Path,
    fake_api: FakeAnthropic,
    marker: str,
    docker: aiodocker.Docker,
    image: str,
    testbed_network: tuple[str, str],
) -> None:
    """Record the real CLI: if an upgrade needs anything more, this fails and says what."""
    fake_api.seen.clear()
    fake_api.script(f"{marker}-tool", [
        ToolUse("Write", {"file_path": "/workspace/x.txt", "content": "x\n"}),
        ToolUse("Bash", {"command": "ls", "description": "list"}),
        ToolUse("Agent", {"description": "sub", "prompt": f"{marker}-sub look",
                          "subagent_type": "general-purpose"}),
        Text("done"),
    ])
    # Straight to the fake, so nothing the gateway would drop is hidden from us.
    code, _, lines, out = await run_box(
        docker, image, claude_cmd(f"{marker}-tool write"), network=testbed_network[0],
        env=claude_env(fake_api, testbed_network[1]),
        binds=[f"{workspace}:/workspace:rw"], user=f"{WORKSPACE_UID}:{WORKSPACE_GID}",
    )
    assert code == 0 and lines[-1]["is_error"] is False, out
    # Through the gateway: a text turn, the tool turn, a resumed session, another model.
    orch = orchestrator_factory(workspace=workspace)
    await orch.start()
    for prompt, spec in [(f"{marker}-text hi", {}), (f"{marker}-tool again", {"session": "s"}),
                         (f"{marker}-resume on", {"session": "s"}),
                         (f"{marker}-haiku hi", {"model": "claude-haiku-4-5"})]:
        task = await orch.submit(prompt, **spec)
        events = [e async for e in orch.events(task["id"])]
        assert events[-1].data["state"] == "completed", events[-1].data
        assert denials(events) == []
    seen = fake_api.seen
    assert len(seen) >= 10
    wire = {"host", "connection", "content-length", "accept-encoding", "x-api-key",
            "authorization"}
    for s in seen:
        endpoint = next(e for e in ENDPOINTS if e.path == s.path and e.method == s.method)
        assert s.raw_path.partition("?")[2] in endpoint.queries, s.raw_path
        assert set(s.headers) <= FORWARD_HEADERS | wire, set(s.headers) - FORWARD_HEADERS
        betas = {b.strip() for b in s.headers.get("anthropic-beta", "").split(",") if b}
        assert betas <= set(DEFAULT_BETAS), betas - set(DEFAULT_BETAS)
    bodies = fake_api.requests_with(marker)
    assert {t.get("type", "custom") for r in bodies for t in r.body["tools"]} == {"custom"}


# ------------------------------------------------------------------ endpoints and paths


async def test_only_claude_codes_endpoints_are_relayed(
    box: Orchestrator, workspace: Path, upstream: FakeAnthropic, marker: str
) -> None:
    body = message(marker)
    tries = [
        ("batches", "req POST /v1/messages/batches -d '{\"requests\": []}'"),
        ("list batches", "req GET /v1/messages/batches"),
        ("files", "req GET /v1/files"),
        ("delete file", "req DELETE /v1/files/file_x"),
        ("models", "req GET /v1/models"),
        ("admin keys", "req GET /v1/organizations/api_keys"),
        ("legacy complete", f"req POST /v1/complete -d '{body}'"),
        ("PUT messages", f"req PUT /v1/messages -d '{body}'"),
        ("PATCH messages", f"req PATCH /v1/messages -d '{body}'"),
        ("TRACE messages", "req TRACE /v1/messages"),
        ("GET messages", "req GET /v1/messages"),
        ("DELETE messages", "req DELETE /v1/messages"),
        ("odd query", f"req POST '/v1/messages?beta=true&x=1' -d '{body}'"),
        ("other query", f"req POST '/v1/messages?beta=false' -d '{body}'"),
    ]
    script = "".join(f'check "{name}" "$({cmd})"\n' for name, cmd in tries)
    script += f"""
code=$(curl -s -o /dev/null -m 10 -w '%{{http_code}}' -I "$B/v1/messages" \
  -H "x-api-key: $ANTHROPIC_API_KEY")
check "HEAD messages" "$code"
for i in $(seq 1 10); do req GET /v1/files >/dev/null; done
[ "$(req POST '/v1/messages?beta=true' -d '{body}')" = 200 ] && echo "allowed: messages"
"""
    lines, done, events = await attack(box, workspace, script)
    assert held(lines) == [name for name, _ in tries] + ["HEAD messages"]
    assert "allowed: messages" in lines
    assert stayed_inside(upstream) == []
    assert [s.method for s in upstream.seen] == ["POST"]
    # Each refusal is on the task's event log, up to a bound, then one note.
    reported = denials(events)
    assert len(reported) == MAX_DENIAL_EVENTS + 1
    assert reported[0]["target"] == "gateway POST /v1/messages/batches"
    assert "not an endpoint Claude Code uses" in reported[0]["reason"]
    assert "no more reported" in reported[-1]["reason"]
    assert done["state"] == "completed"


async def test_dot_segments_cannot_climb_out_of_the_base_path(
    box: Orchestrator, workspace: Path, upstream: FakeAnthropic, marker: str
) -> None:
    body = message(marker)
    paths = [
        "/v1/messages/../../v1/files",
        "/v1/../../v1/models",
        "/v1/%2e%2e/%2e%2e/v1/files",
        "/v1/%2E%2e/%2e%2E/v1/files",
        "/v1/messages/%252e%252e/%252e%252e/v1/files",
        "/v1/..%2f..%2fv1/files",
        "/v1/%2e%2e%2f%2e%2e%2fv1%2ffiles",
        "/v1/..\\..\\v1/files",
        "/v1/%5c..%5c..%5cv1/files",
        "//v1/messages",
        "/v1//messages",
        "/v1/messages/",
        "/v1/messages/.",
        "/v1/messages%00",
        "/v1/messages%2fcount_tokens",
        "/v1/messages\u00e9",
        "/./v1/messages",
    ]
    script = "".join(f"check '{p}' \"$(req POST '{p}' -d '{body}')\"\n" for p in paths)
    # Absolute-form request target, naming the upstream's root.
    script += f"""
code=$(curl -s -o /dev/null -m 10 -w '%{{http_code}}' -X POST "$B/v1/messages" \
  --request-target "http://127.0.0.1:{upstream.port}/v1/files" \
  -H "x-api-key: $ANTHROPIC_API_KEY" -d '{body}')
check "absolute form" "$code"
"""
    lines, done, _ = await attack(box, workspace, script)
    assert held(lines) == [*paths, "absolute form"]
    assert upstream.seen == [], [s.raw_path for s in upstream.seen]
    assert done["state"] == "completed"


# ------------------------------------------------------------------ what a call may ask for


async def test_server_tools_betas_and_smuggled_headers_are_refused(
    box: Orchestrator, workspace: Path, upstream: FakeAnthropic, marker: str
) -> None:
    url_doc = [{"role": "user", "content": [
        {"type": "text", "text": f"{marker} read"},
        {"type": "document", "source": {"type": "url", "url": "https://exfil.example/?d=1"}}]}]
    file_img = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
        "content": [{"type": "image", "source": {"type": "file", "file_id": "file_x"}}]}]}]
    bodies = {
        "web search": message(marker, tools=[{"type": "web_search_20250305", "name": "w"}]),
        "web fetch": message(marker, tools=[{"type": "web_fetch_20250910", "name": "f"}]),
        "code execution": message(
            marker, tools=[{"type": "code_execution_20250825", "name": "c"}]),
        "computer": message(marker, tools=[{"type": "computer_20250124", "name": "pc",
                                            "display_width_px": 1, "display_height_px": 1}]),
        "mcp connector": message(
            marker, mcp_servers=[{"type": "url", "url": "https://exfil.example/", "name": "m"}]),
        "container": message(marker, container="container_x"),
        "url document": message(marker, messages=url_doc),
        "file image": message(marker, messages=file_img),
    }
    script = "".join(
        f"check '{name}' \"$(req POST '/v1/messages?beta=true' -d '{body}')\"\n"
        for name, body in bodies.items()
    )
    plain = message(marker)
    script += f"""
check "files beta" "$(req POST /v1/messages -H 'anthropic-beta: files-api-2025-04-14' -d '{plain}')"
check "beta in a list" "$(req POST /v1/messages \
  -H 'anthropic-beta: claude-code-20250219, mcp-client-2025-04-04' -d '{plain}')"
check "second beta line" "$(req POST /v1/messages -H 'anthropic-beta: claude-code-20250219' \
  -H 'anthropic-beta: code-execution-2025-08-25' -d '{plain}')"
[ "$(req POST /v1/messages -H 'anthropic-beta: {",".join(DEFAULT_BETAS)}' \
  -H 'anthropic-workspace-id: wrkspc_other' -H 'x-forwarded-host: evil' -d '{plain}')" = 200 ] \
  && echo "allowed: plain call"
"""
    lines, _, events = await attack(box, workspace, script)
    assert held(lines) == [*bodies, "files beta", "beta in a list", "second beta line"]
    assert "allowed: plain call" in lines
    [relayed] = upstream.requests_with(marker)
    assert "tools" not in relayed.body
    assert "anthropic-workspace-id" not in relayed.headers
    assert "x-forwarded-host" not in relayed.headers
    reasons = [d["reason"] for d in denials(events)]
    assert any("web_search_20250305" in r for r in reasons)
    assert any("files-api-2025-04-14" in r for r in reasons)

    # A policy that allows server tools lets the same call through.
    upstream.clear()
    web = bodies["web search"]
    lines, _, _ = await attack(box, workspace, f"""
[ "$(req POST /v1/messages -d '{web}')" = 200 ] && echo "allowed: server tool"
""", policy="tools-on")
    assert "allowed: server tool" in lines
    assert len(upstream.requests_with(marker)) == 1


# ------------------------------------------------------------------ upstream behaviour


async def test_upstream_redirect_is_not_followed_with_the_key(
    box: Orchestrator, workspace: Path, upstream: FakeAnthropic, marker: str
) -> None:
    heard: list[bytes] = []

    async def listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heard.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        finally:
            writer.close()

    other = await asyncio.start_server(listener, "127.0.0.1", 0)
    port = other.sockets[0].getsockname()[1]
    upstream.script(marker, [Redirect(f"http://127.0.0.1:{port}/steal")])
    try:
        lines, _, events = await attack(box, workspace, f"""
code=$(req POST '/v1/messages?beta=true' -d '{message(marker)}')
[ "$code" = 502 ] && echo "held: redirect" || echo "BREACH: redirect gave $code"
""")
    finally:
        other.close()
    assert held(lines) == ["redirect"]
    assert heard == []
    assert not any(FAKE_KEY.encode() in h for h in heard)
    assert [d["reason"] for d in denials(events)] == ["redirects are not followed"]


async def test_refused_credential_ends_the_task_at_once(
    box: Orchestrator, workspace: Path, upstream: FakeAnthropic, marker: str
) -> None:
    upstream.script(marker, [HttpError(401, "invalid x-api-key", "authentication_error")])
    started = time.monotonic()
    lines, done, _ = await attack(box, workspace, f"""
for i in $(seq 1 200); do
  req POST '/v1/messages?beta=true' -d '{message(marker)}' >/dev/null; sleep 0.3
done
echo "retried for a minute"
""")
    assert time.monotonic() - started < 30
    assert "retried for a minute" not in lines
    assert done["state"] == "failed"
    assert done["error"] == (
        "the Anthropic API refused the credential (401): invalid x-api-key"
    )
    assert len(upstream.requests_with(marker)) == 1


@pytest.mark.slow
async def test_refused_credential_ends_a_claude_task(
    orchestrator_factory: type[Orchestrator], workspace: Path, upstream: FakeAnthropic,
    marker: str,
) -> None:
    orch = orchestrator_factory(workspace=workspace, env={"ANTHROPIC_BASE_URL": upstream.url()})
    await orch.start()
    upstream.script(marker, [HttpError(401, "invalid x-api-key", "authentication_error")])
    task = await orch.submit(f"{marker} hello")
    done = await orch.wait_done(task["id"], timeout_s=60)
    assert done["state"] == "failed"
    assert done["error"].startswith("the Anthropic API refused the credential (401)")


# ------------------------------------------------------------------ budgets and load


async def test_parallel_calls_cannot_overshoot_the_budget(
    box: Orchestrator, workspace: Path, upstream: FakeAnthropic, marker: str
) -> None:
    """20 calls at once against a budget of about two: one at a time gets through."""
    upstream.script(marker, [Slow(Text("a few words of answer"), 0.2)])
    lines, done, _ = await attack(box, workspace, f"""
for i in $(seq 1 20); do
  (echo "code $(req POST '/v1/messages?beta=true' -d '{message(marker)}')") &
done
wait
""", policy="budget")
    codes = [line.split()[1] for line in lines if line.startswith("code ")]
    assert len(codes) == 20
    reached = upstream.requests_with(marker)
    assert 1 <= len(reached) <= 2, len(reached)
    assert codes.count("200") == len(reached)
    assert set(codes) <= {"200", "429", "403"}
    # Overshoot is bounded by one call's estimate (body / 3 + max_tokens), not by 20 calls.
    usage = done["gateway_usage"]
    assert usage["total_tokens"] <= 100 + len(message(marker)) // 3 + 1 + 16


async def test_calls_in_flight_are_capped(
    box: Orchestrator, workspace: Path, upstream: FakeAnthropic, marker: str
) -> None:
    n = MAX_IN_FLIGHT + 4
    upstream.script(marker, [Slow(Text("slow " * 20), 0.5)])
    lines, _, _ = await attack(box, workspace, f"""
for i in $(seq 1 {n}); do
  (echo "code $(req POST '/v1/messages?beta=true' -d '{message(marker)}')") &
done
wait
""")
    codes = [line.split()[1] for line in lines if line.startswith("code ")]
    assert sorted(codes) == sorted(["200"] * MAX_IN_FLIGHT + ["429"] * 4)
    assert len(upstream.requests_with(marker)) == MAX_IN_FLIGHT
