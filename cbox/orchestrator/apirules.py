"""What the gateway relays: the part of Anthropic's API that Claude Code uses, no more.

The credential the gateway swaps in can do far more than a task needs: Message
Batches (not metered as they stream, so no budget sees them), the Files,
Models and admin endpoints (other work of the same Anthropic workspace), and
server-side tools (web search / fetch, code execution, MCP connectors: the
API itself reaching out, an egress channel no network policy of ours covers).
So everything here is an allowlist, recorded from the real CLI rather than
guessed, and everything else is refused before a byte goes upstream.

Recorded from Claude Code 2.1.332 (the `claude-agent-sdk` 0.2.189 wheel), in
the real sandbox image, through the gateway, against `tests/fakes/anthropic.py`:
a text turn, a Write + Bash tool turn, a `--resume`, an `Agent` subagent, a
`--model` haiku and a sonnet `--max-turns` run, with an API key and with an
OAuth token. Every request was `POST /v1/messages?beta=true`.
`POST /v1/messages/count_tokens?beta=true` was not seen in those runs but is
in the CLI (`beta.messages.countTokens`, its token estimates); it generates
nothing and runs no tool. `tests/test_conformance_gateway.py::
test_the_cli_uses_only_what_the_gateway_allows` records again and fails if a
CLI upgrade sends anything outside these lists.

Paths are matched on the raw request target, exactly: no decoding, no
normalisation, so `%2e%2e`, `..`, `//`, backslashes and the like never reach
the point where they could climb out of a path-prefixed base URL; the
upstream URL is then built from our own copy of the path, not the box's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    #: Raw query strings accepted, compared exactly ("" is none). The CLI's
    #: SDK adds `beta=true` on the beta routes; nothing else is needed.
    queries: frozenset[str]
    #: Generates tokens, so a budget reserves for it before it is relayed.
    metered: bool


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/v1/messages", frozenset({"", "beta=true"}), metered=True),
    Endpoint("POST", "/v1/messages/count_tokens", frozenset({"", "beta=true"}), metered=False),
)

#: `anthropic-beta` values Claude Code 2.1.332 sends (recorded as above); the
#: last two only with an OAuth token. The default of a policy's `gateway_betas`.
DEFAULT_BETAS: tuple[str, ...] = (
    "claude-code-20250219",
    "interleaved-thinking-2025-05-14",
    "context-management-2025-06-27",
    "per-turn-control-2026-07-01",
    "mid-conversation-tool-changes-2026-07-01",
    "thinking-token-count-2026-05-13",
    "advanced-tool-use-2025-11-20",
    "effort-2025-11-24",
    "thinking-display-updates-2026-08-18",
    "oauth-2025-04-20",
    "extended-cache-ttl-2025-04-11",
)

#: Request headers passed upstream (recorded as above); the rest are dropped,
#: so a header cannot pick another workspace or smuggle an option past us.
#: Credentials are never among them: the gateway sets its own.
FORWARD_HEADERS = frozenset(
    {
        "accept", "content-type", "user-agent", "anthropic-version", "anthropic-beta",
        "anthropic-dangerous-direct-browser-access", "x-app", "x-claude-code-session-id",
        "x-claude-code-agent-id", "x-stainless-arch", "x-stainless-lang", "x-stainless-os",
        "x-stainless-package-version", "x-stainless-retry-count", "x-stainless-runtime",
        "x-stainless-runtime-version", "x-stainless-timeout",
    }
)

#: Top-level fields of a Messages / count_tokens body that run nothing on
#: Anthropic's side. Claude Code sends the first ten (recorded); the rest are
#: plain sampling options. `mcp_servers` and `container` are not here.
PLAIN_BODY_FIELDS = frozenset(
    {
        "model", "messages", "system", "max_tokens", "metadata", "stream", "tools",
        "thinking", "context_management", "output_config",
        "tool_choice", "stop_sequences", "temperature", "top_k", "top_p", "service_tier",
    }
)

#: Content `source` kinds carried in the request itself. `url` (Anthropic
#: fetches it) and `file` (the Files API of the workspace) are not.
INLINE_SOURCES = frozenset({"base64", "text", "content"})

#: Anthropic's own request size limit for the Messages API.
MAX_BODY_BYTES = 32 * 1024 * 1024
BODY_READ_TIMEOUT_S = 60.0

#: The request target Claude Code sends: plain segments, nothing to decode.
_CANONICAL_PATH = re.compile(r"(?:/[A-Za-z0-9_-]+)+")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer the gateway gives instead of relaying, in Anthropic's error shape."""

    status: int
    kind: str
    message: str


#: Far above any model's output limit today; a reservation past it is meaningless.
MAX_OUTPUT_TOKENS = 1_000_000


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicate key {key!r}")
        found[key] = value
    return found


@dataclass(frozen=True, slots=True)
class MessageCall:
    """What the gateway needs from a body it lets through: for the budget's estimate."""

    model: str
    max_tokens: int


def _denied(message: str) -> Refusal:
    return Refusal(403, "permission_error", message)


def show(text: str, limit: int = 160) -> str:
    """A box-supplied string made safe to show: printable ASCII, bounded."""
    shown = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def match_endpoint(method: str, target: str) -> Endpoint | Refusal:
    """The allowed endpoint `method target` names exactly, or why not.

    `target` is the raw request target (`request.raw_path`): undecoded, with
    its query string. Anything that is not plain segments is refused before
    it is compared, so no spelling of a path can match one it is not.
    """
    path, sep, query = target.partition("?")
    if "#" in target or not _CANONICAL_PATH.fullmatch(path):
        return Refusal(400, "invalid_request_error", f"path {show(path)} is not canonical")
    found = [e for e in ENDPOINTS if e.path == path]
    if not found:
        return _denied(f"{show(method)} {path} is not an endpoint Claude Code uses")
    endpoint = next((e for e in found if e.method == method), None)
    if endpoint is None:
        return _denied(f"{show(method)} {path} is not an endpoint Claude Code uses")
    if query not in endpoint.queries:
        return _denied(f"query string {show(sep + query)} is not allowed on {path}")
    return endpoint


def check_betas(headers: CIMultiDictProxy[str], allowed: Iterable[str]) -> Refusal | None:
    """Every `anthropic-beta` value, in every header line, must be in `allowed`."""
    permitted = set(allowed)
    for line in headers.getall("anthropic-beta", []):
        for beta in (b.strip() for b in line.split(",")):
            if beta and beta not in permitted:
                return _denied(f"anthropic-beta {show(beta)} is not allowed by the task's policy")
    return None


def forward_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() in FORWARD_HEADERS)


async def read_body(request: web.Request) -> bytes | Refusal:
    """The request body, bounded in size and in the time it may take to arrive."""
    too_big = Refusal(413, "request_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return too_big
    try:
        return await asyncio.wait_for(request.read(), BODY_READ_TIMEOUT_S)
    except web.HTTPRequestEntityTooLarge:
        return too_big
    except TimeoutError:
        return Refusal(408, "timeout_error", "request body took too long to arrive")


def check_body(raw: bytes, *, server_tools: bool) -> MessageCall | Refusal:
    """Parse a Messages body and refuse what would make Anthropic act beyond the model.

    With `server_tools` off (the default): only custom tools (no `type`, or
    `custom`), only the plain top-level fields, and no content that points
    at a URL or at the workspace's Files API.
    """
    try:
        # Duplicate keys are refused: we check the parsed body but relay the bytes,
        # and a parser upstream that keeps the first of two `tools` would see
        # what we never checked.
        body = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        return Refusal(400, "invalid_request_error", f"body is not valid JSON: {show(str(exc))}")
    if not isinstance(body, dict):
        return Refusal(400, "invalid_request_error", "body must be a JSON object")
    model, max_tokens = body.get("model"), body.get("max_tokens", 0)
    if (not isinstance(model, str) or not isinstance(max_tokens, int)
            or isinstance(max_tokens, bool) or not 0 <= max_tokens <= MAX_OUTPUT_TOKENS):
        # Bounded, so a budget's reservation stays a sane, finite number.
        return Refusal(400, "invalid_request_error",
                       f"model and max_tokens (0 to {MAX_OUTPUT_TOKENS}) are malformed")
    call = MessageCall(model=model, max_tokens=max_tokens)
    if server_tools:
        return call
    extra = sorted(set(body) - PLAIN_BODY_FIELDS)
    if extra:
        return _denied(f"field {show(extra[0])} is not allowed by the task's policy "
                       "(server_tools = false)")
    tools = body.get("tools", [])
    for tool in tools if isinstance(tools, list) else [tools]:
        kind = tool.get("type", "custom") if isinstance(tool, dict) else None
        if kind != "custom":
            return _denied(f"tool type {show(str(kind))} is a server tool; not allowed by the "
                           "task's policy (server_tools = false)")
    source = _outside_source(body.get("messages"), body.get("system"))
    if source is not None:
        return _denied(f"content source {show(source)} makes the API fetch it; not allowed by "
                       "the task's policy (server_tools = false)")
    return call


def _outside_source(*roots: Any) -> str | None:
    """The kind of the first content `source` not carried inline, anywhere in `roots`."""
    stack = list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            source = node.get("source")
            if isinstance(source, dict) and source.get("type") not in INLINE_SOURCES:
                return str(source.get("type"))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None
