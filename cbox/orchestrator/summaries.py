"""One human line for what the agent did: tool calls, retries, results.

Kept apart from the parsers (streamjson.py): these only format values the
parser already read, for the `output` lines a plain client prints.
"""

from __future__ import annotations

import json
from typing import Any

from cbox.orchestrator.untrusted import clip as _clip

#: Tool summaries and error lines are meant to fit one terminal line.
SUMMARY_CHARS = 120


def summarize_tool_use(name: str, tool_input: dict[str, Any]) -> str:
    """One human line for a tool call, e.g. `Bash: ls -la` or `Write a.txt (6 bytes)`.

    Known tools get a hand-picked field (the path, the command); anything else,
    including a known tool missing that field, shows its input as compact JSON.
    """
    args = tool_input if isinstance(tool_input, dict) else {}
    text = _known_tool_summary(name, args)
    if text is None:
        shown = json.dumps(args, ensure_ascii=False, separators=(",", ":"), default=str)
        text = f"{name} {shown}" if args else name
    return one_line(text, SUMMARY_CHARS)


def _known_tool_summary(name: str, args: dict[str, Any]) -> str | None:
    path = str_or_empty(args.get("file_path")) or str_or_empty(args.get("notebook_path"))
    if name == "Write" and path:
        content = args.get("content")
        if isinstance(content, str):
            return f"Write {path} ({len(content.encode('utf-8', 'replace'))} bytes)"
        return f"Write {path}"
    if name in ("Read", "Edit", "MultiEdit", "NotebookEdit") and path:
        return f"{name} {path}"
    if name == "Bash" and str_or_empty(args.get("command")):
        return f"Bash: {str_or_empty(args.get('command'))}"
    if name in ("Grep", "Glob") and str_or_empty(args.get("pattern")):
        where = str_or_empty(args.get("path"))
        return f"{name} '{str_or_empty(args.get('pattern'))}'" + (f" in {where}" if where else "")
    if name == "WebFetch" and str_or_empty(args.get("url")):
        return f"WebFetch {str_or_empty(args.get('url'))}"
    if name == "WebSearch" and str_or_empty(args.get("query")):
        return f"WebSearch '{str_or_empty(args.get('query'))}'"
    if name in ("Task", "Agent") and str_or_empty(args.get("description")):
        return f"{name}: {str_or_empty(args.get('description'))}"
    if name == "TodoWrite" and isinstance(args.get("todos"), list):
        return f"TodoWrite ({len(args['todos'])} items)"
    return None


def retry_line(retry: dict[str, Any]) -> str:
    status = retry.get("error_status") or retry.get("error") or "?"
    line = f"API error {status}, retry {retry.get('attempt', '?')}/{retry.get('max_retries', '?')}"
    delay_ms = number(retry.get("retry_delay_ms"))
    return line if delay_ms is None else f"{line} in {delay_ms / 1000:.1f}s"


def result_line(data: dict[str, Any]) -> str:
    if data["is_error"]:
        errors = data.get("errors")
        reason = str_or_empty(data.get("result")) or (
            "; ".join(e for e in errors if isinstance(e, str)) if isinstance(errors, list) else ""
        )
        subtype = str_or_empty(data.get("subtype"))
        label = subtype if subtype.startswith("error") else "error"
        return f"✗ {label}: {one_line(reason or 'no detail given', 200)}"
    parts = ["completed"]
    duration_ms = number(data.get("duration_ms"))
    if duration_ms is not None:
        parts[0] += f" in {duration_ms / 1000:.1f}s"
    turns = number(data.get("num_turns"))
    if turns is not None:
        parts.append(f"{turns:g} turn" + ("" if turns == 1 else "s"))
    cost = number(data.get("total_cost_usd"))
    if cost is not None:
        parts.append(f"${cost:.4f}")
    return "✓ " + ", ".join(parts)


def one_line(text: str, limit: int) -> str:
    return _clip(" ⏎ ".join(text.splitlines()), limit)


def str_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
