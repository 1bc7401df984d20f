"""The gateway's rules as pure functions: endpoints, paths, betas, bodies, the budget ledger.

The attacks themselves run from real boxes in `test_conformance_gateway.py`;
these pin the edges of each rule quickly and without Docker.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from cbox.errors import PolicyViolation
from cbox.models import TaskSpec
from cbox.orchestrator.apirules import (
    DEFAULT_BETAS,
    MAX_BODY_BYTES,
    Endpoint,
    MessageCall,
    Refusal,
    check_betas,
    check_body,
    match_endpoint,
)
from cbox.orchestrator.budget import Budget, Ledger, estimate
from cbox.orchestrator.gateway import ApiGateway
from cbox.orchestrator.usage import Usage
from cbox.policies import PolicySet
from tests.fakes.anthropic import FakeAnthropic


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("POST", "/v1/messages?beta=true", None),
        ("POST", "/v1/messages", None),
        ("POST", "/v1/messages/count_tokens?beta=true", None),
        ("POST", "/v1/messages/batches", 403),
        ("GET", "/v1/messages", 403),
        ("post", "/v1/messages", 403),
        ("POST", "/v1/messages?beta=true&x=1", 403),
        ("POST", "/v1/messages?beta=True", 403),
        ("POST", "/v1/messages/", 400),
        ("POST", "/v1//messages", 400),
        ("POST", "/v1/./messages", 400),
        ("POST", "/v1/x/../messages", 400),
        ("POST", "/v1/%6dessages", 400),
        ("POST", "/v1/messages#frag", 400),
        ("POST", "/v1/messages\\", 400),
        ("POST", "/v1/messages\x00", 400),
        ("POST", "/v1/messag\u00e9s", 400),
        ("POST", "http://upstream/v1/messages", 400),
        ("POST", "*", 400),
        ("POST", "", 400),
    ],
)
def test_match_endpoint(method: str, target: str, status: int | None) -> None:
    found = match_endpoint(method, target)
    if status is None:
        assert isinstance(found, Endpoint)
    else:
        assert isinstance(found, Refusal) and found.status == status, found


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_betas_every_value_of_every_line() -> None:
    allowed = DEFAULT_BETAS
    assert check_betas(_headers(("anthropic-beta", ",".join(allowed))), allowed) is None
    assert check_betas(_headers(), allowed) is None
    assert check_betas(_headers(("Anthropic-Beta", " claude-code-20250219 ,")), allowed) is None
    for pairs in [
        (("anthropic-beta", "claude-code-20250219,files-api-2025-04-14"),),
        (("anthropic-beta", "claude-code-20250219"), ("ANTHROPIC-BETA", "mcp-client-2025-04-04")),
    ]:
        refusal = check_betas(_headers(*pairs), allowed)
        assert refusal is not None and refusal.status == 403


def _body(**extra: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 10, "messages": [], **extra}).encode()


def test_duplicate_keys_and_unbounded_max_tokens_are_refused() -> None:
    """We check the parsed body but relay its bytes: a second `tools` key must not hide
    a server tool from us, and `max_tokens` must keep the budget's estimate finite."""
    smuggled = (b'{"model": "m", "max_tokens": 1, "messages": [], "tools": [{"type": '
                b'"web_search_20250305", "name": "web_search"}], "tools": []}')
    for body in (smuggled, _body(max_tokens=10**300), _body(max_tokens=True),
                 _body(max_tokens=-1)):
        refusal = check_body(body, server_tools=False)
        assert isinstance(refusal, Refusal) and refusal.status == 400, body[:60]


def test_a_call_cut_before_its_usage_is_charged_its_estimate() -> None:
    ledger = Ledger(Budget(max_cost_usd=10.0))
    held = estimate("claude-opus-4", 32_000, 10_000)
    assert ledger.reserve(held)
    ledger.release(held)
    ledger.charge(held)  # what the gateway does when the box cut the stream
    assert ledger.usage.cost_usd == pytest.approx(held.cost_usd) and held.cost_usd > 0


def test_body_custom_tools_pass_server_tools_do_not() -> None:
    custom = [{"name": "Bash", "input_schema": {}}, {"type": "custom", "name": "X"}]
    assert check_body(_body(tools=custom), server_tools=False) == MessageCall("m", 10)
    for extra in [
        {"tools": [{"type": "web_search_20250305", "name": "w"}]},
        {"tools": [{"type": "bash_20250124", "name": "bash"}]},
        {"tools": ["x"]},
        {"mcp_servers": []},
        {"container": None},
        {"betas": ["x"]},
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://x/"}}]}]}]},
        {"system": [{"type": "text", "text": "x"},
                    {"type": "document", "source": {"type": "file", "file_id": "f"}}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {
            "type": "content", "content": [
                {"type": "image", "source": {"type": "url", "url": "http://x"}}]}}]}]},
    ]:
        refusal = check_body(_body(**extra), server_tools=False)
        assert isinstance(refusal, Refusal) and refusal.status == 403, extra
        assert isinstance(check_body(_body(**extra), server_tools=True), MessageCall)


def test_body_inline_content_passes() -> None:
    messages = [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}},
        {"type": "search_result", "source": "https://example.org", "title": "t", "content": []},
    ]}]
    assert isinstance(check_body(_body(messages=messages), server_tools=False), MessageCall)


@pytest.mark.parametrize(
    "raw", [b"{", b"[]", b"\xff", b"[" * 100_000, b'{"model": 1}', b'{"model":"m","max_tokens":-1}']
)
def test_malformed_bodies_are_400(raw: bytes) -> None:
    refusal = check_body(raw, server_tools=False)
    assert isinstance(refusal, Refusal) and refusal.status == 400


def test_ledger_admits_while_spent_plus_reserved_is_under_the_budget() -> None:
    ledger = Ledger(Budget(max_tokens=100), Usage())
    call = estimate("claude-sonnet", 16, 120)  # 41 input + 16 output
    assert call.tokens == 57
    assert ledger.reserve(call) and ledger.reserve(call)
    assert not ledger.reserve(call)  # 114 reserved: no room
    ledger.release(call)
    ledger.usage.add({"input_tokens": 30, "output_tokens": 5}, "claude-sonnet")
    ledger.release(call)
    assert (ledger.reserved_tokens, ledger.holding) == (0, False)
    assert ledger.reserve(call)  # 35 spent: room again
    ledger.release(call)
    ledger.usage.add({"input_tokens": 65}, "claude-sonnet")
    assert not ledger.reserve(call)
    assert ledger.budget.reached(ledger.usage) == "budget spent: 100 of 100 tokens"


def test_ledger_cost_budget_prices_the_worst_case() -> None:
    ledger = Ledger(Budget(max_cost_usd=1.0), Usage())
    opus = estimate("claude-opus-5", 32_000, 30_000)  # 32k output at $75/Mtok alone is $2.40
    assert opus.cost_usd > 2.4
    assert ledger.reserve(opus)  # the first call always goes: the bound is one call
    assert not ledger.reserve(estimate("claude-haiku", 1, 3))


def test_policy_fields_tighten_only(tmp_path: Path) -> None:
    (tmp_path / "tools.toml").write_text(
        'server_tools = true\ngateway_betas = ["claude-code-20250219", "files-api-2025-04-14"]\n'
    )
    policies = PolicySet.load(tmp_path)
    default = policies.resolve(TaskSpec(prompt="x"))
    assert default.server_tools is False
    assert default.gateway_betas == DEFAULT_BETAS
    tools = policies.resolve(TaskSpec(prompt="x", policy="tools"))
    assert tools.server_tools is True
    assert tools.gateway_betas == ("claude-code-20250219", "files-api-2025-04-14")
    narrowed = policies.resolve(TaskSpec(
        prompt="x", policy="tools", server_tools=False, gateway_betas=["claude-code-20250219"]
    ))
    assert (narrowed.server_tools, narrowed.gateway_betas) == (False, ("claude-code-20250219",))
    for spec in [{"server_tools": True}, {"gateway_betas": ["files-api-2025-04-14"]}]:
        with pytest.raises(PolicyViolation) as caught:
            policies.resolve(TaskSpec.model_validate({"prompt": "x", **spec}))
        assert caught.value.field == next(iter(spec))


async def test_gateway_answers_in_anthropics_shape_and_bounds_bodies() -> None:
    """In process, over loopback: refusals are Anthropic error JSON; nothing goes upstream."""
    async with FakeAnthropic(prefix="/p") as fake:
        gateway = ApiGateway(upstream=fake.url(), api_key="sk-real", oauth_token=None)
        await gateway.start()
        try:
            port = await gateway.open_for("task_x", "tok", "127.0.0.1")
            base, key = f"http://127.0.0.1:{port}", {"x-api-key": "tok"}
            async with aiohttp.ClientSession() as http:
                huge = io.BytesIO(b"x" * (MAX_BODY_BYTES + 1))
                async with http.post(base + "/v1/messages", data=huge, headers=key) as big:
                    assert big.status == 413
                    assert (await big.json())["error"]["type"] == "request_too_large"
                async with http.get(base + "/v1/files", headers=key) as files:
                    assert files.status == 403
                    assert files.headers["x-should-retry"] == "false"
                    answer = await files.json()
                assert answer["type"] == "error"
                assert answer["error"]["type"] == "permission_error"
                async with http.post(base + "/v1/messages?beta=true", headers=key,
                                     json={"model": "m", "max_tokens": 5, "messages": []}) as ok:
                    assert ok.status == 200
        finally:
            await gateway.close()
    assert [s.raw_path for s in fake.seen] == ["/p/v1/messages?beta=true"]
    assert fake.seen[0].headers["x-api-key"] == "sk-real"
