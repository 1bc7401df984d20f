"""Turn an agent's stdout, one line at a time, into claude-box events.

Two dialects reach us: Claude Code's `--output-format stream-json --verbose`
(`StreamJsonParser`) and the small protocol for custom agents (`CommandParser`).
The lines come from a sandbox we do not trust to behave, so `feed` never
raises: a garbled line must not end a task's event log. Anything we cannot read
passes through as a plain `output` line or is dropped. Every event's data is
bounded here (`untrusted.bound_json`: clean text, finite numbers, at most
`max_event_bytes`), and the fields that reach `Outcome` are validated by
`report.ResultReport`; what fails is dropped with a `log` event saying why.

Every typed event is followed by the `output` lines derived from it, so a
client that only prints `output` still sees what the agent did. The shapes
below follow the recordings in `fixtures/claude-code` (Claude Code 2.1.332).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cbox.orchestrator.report import ResultReport, session_id_or_none, validate_report
from cbox.orchestrator.summaries import (
    one_line,
    result_line,
    retry_line,
    summarize_tool_use,
)
from cbox.orchestrator.summaries import str_or_empty as _str
from cbox.orchestrator.untrusted import bound_json, clean_text
from cbox.orchestrator.untrusted import clip as _clip

logger = logging.getLogger(__name__)

#: A `cat` of a big file must not bloat the event log; the agent saw it all anyway.
MAX_TOOL_RESULT_CHARS = 2000
#: One `output` line is one stored row and one SSE frame; a runaway line is cut here.
MAX_OUTPUT_LINE_CHARS = 8000
#: Default cap of one event's data (tool input, result, text), in characters of JSON.
MAX_EVENT_BYTES = 65_536
#: Printed by `cbox-entry` when the agent left /cbox/result.json behind.
RESULT_FILE_TYPE = "cbox.result_file"
#: Event names a custom agent may send as `{"event": ..., "data": {...}}`.
CUSTOM_EVENT_TYPES = frozenset({"output", "assistant", "tool_use", "tool_result", "log", "result"})

_INIT_KEYS = ("session_id", "model", "cwd", "claude_code_version")
_RESULT_KEYS = (
    "subtype",
    "is_error",
    "result",
    "total_cost_usd",
    "usage",
    "num_turns",
    "duration_ms",
    "session_id",
)
_NOT_JSON = object()


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One event read from an agent's stdout; `data` is always JSON-serializable."""

    type: str
    data: dict[str, Any]


class StreamJsonParser:
    """Stateful parser for Claude Code's stream-json; one per task.

    `session_id` comes from `system/init` (or `result`) and is what `--resume`
    needs later. `result` is the raw final `result` object; it stays None for a
    killed run, which prints no result line (see stop.jsonl), so the caller must
    record that outcome itself. `file_result` holds what the agent left in
    /cbox/result.json, if `cbox-entry` reported one.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.session_id: str | None = None
        self.result: ResultReport | None = None
        #: Fields of the `result` line that failed validation, and why.
        self.dropped: dict[str, str] = {}
        self.file_result: Any = None
        self.max_event_bytes = max_event_bytes

    def feed_many(self, lines: Iterable[str]) -> list[ParsedEvent | str]:
        """Events for several stdout lines, in order (the batch form `TaskLog.extend` takes)."""
        events: list[ParsedEvent | str] = []
        for line in lines:
            events += self.feed(line)
        return events

    def feed(self, line: str) -> list[ParsedEvent]:
        """Events for one stdout line, typed event first, then its `output` lines."""
        text = clean_text(line.rstrip("\r\n"))
        if not text.strip():
            return []
        obj = _loads(text)
        if not isinstance(obj, dict):
            return _unreadable(text)
        try:
            return _bounded(self._dispatch(obj), self.max_event_bytes)
        except Exception:
            # A parser bug must cost one line, never the task's event stream.
            logger.exception("could not parse a stream-json line; passing it through")
            return [_output(text)]

    def _dispatch(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        kind = obj.get("type")
        if kind == "system":
            events = self._system(obj)
        elif kind == "assistant":
            events = _assistant(obj)
        elif kind == "user":
            events = _tool_results(obj)
        elif kind == "result":
            events = self._result(obj)
        elif kind == RESULT_FILE_TYPE:
            self.file_result = bound_json(obj.get("result"), self.max_event_bytes)
            events = [ParsedEvent("result", {"result": self.file_result, "source": "file"})]
        else:
            return []  # stream_event, rate limits, future types: not ours to show
        # init and result are authoritative; any other line only fills a gap.
        authoritative = kind == "result" or obj.get("subtype") == "init"
        if authoritative or self.session_id is None:
            session_id = session_id_or_none(obj.get("session_id"))
            if session_id is not None:
                self.session_id = session_id
        return events

    def _system(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        subtype = _str(obj.get("subtype"))
        if subtype == "api_retry":
            keys = ("attempt", "max_retries", "retry_delay_ms", "error_status", "error")
            retry = {k: obj[k] for k in keys if k in obj}
            return [ParsedEvent("api_retry", retry), _output(retry_line(retry))]
        if subtype == "init":
            tools = obj.get("tools")
            names = [t for t in tools if isinstance(t, str)] if isinstance(tools, list) else []
            data = {"subtype": "init", **{k: obj.get(k) for k in _INIT_KEYS}, "tools": names}
            return [ParsedEvent("system", data)]
        # task_started, task_notification, compact_boundary, ...: keep the scalars.
        data = {"subtype": subtype or None}
        for key, value in obj.items():
            if key in ("type", "subtype", "uuid", "session_id"):
                continue
            if isinstance(value, str):
                data[key] = _clip(value, 500)
            elif value is None or isinstance(value, bool | int | float):
                data[key] = value
        return [ParsedEvent("system", data)]

    def _result(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        report, dropped = validate_report(obj, self.max_event_bytes)
        if report.is_error is None:
            # Success is `is_error`, not `subtype` (err500 says "success"), unless it is missing.
            report.is_error = _str(report.subtype).startswith("error")
        self.result, self.dropped = report, dropped
        data = report.model_dump(mode="json", include=set(_RESULT_KEYS))
        data.update(
            report.model_dump(mode="json", include={"api_error_status", "errors"},
                              exclude_none=True)
        )
        if dropped:
            data["dropped"] = dropped
        events = [ParsedEvent("result", data), _output(result_line(data))]
        if dropped:
            why = "; ".join(f"{k} ({v})" for k, v in dropped.items())
            events.append(ParsedEvent("log", {"line": f"dropped from the agent's result: {why}"}))
        return events


class CommandParser:
    """Parser for custom agents (any command: the "custom agent protocol").

    Every stdout line is an `output` line, except a JSON object
    `{"event": <name>, "data": {...}}` with a name from `CUSTOM_EVENT_TYPES`,
    which becomes that typed event. A wrong shape falls back to plain output,
    so an agent that merely prints JSON never loses a line. `result` is what
    the agent reported, by a `result` event or through /cbox/result.json.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.result: Any = None
        self.max_event_bytes = max_event_bytes

    def feed_many(self, lines: Iterable[str]) -> list[ParsedEvent | str]:
        """Events for several stdout lines; a plain `output` line comes as its text.

        This is the hot path of a chatty command agent (one event per line),
        so a line that cannot be an event object skips `feed` and costs no
        `ParsedEvent` and no dict; `TaskLog.extend` encodes the `str` as
        `{"line": ...}`, exactly what `feed` would have produced.
        """
        events: list[ParsedEvent | str] = []
        for line in lines:
            text = clean_text(line.rstrip("\r\n"))
            stripped = text.lstrip()
            if stripped.startswith("{"):
                events += self.feed(text)
            elif stripped:
                events.append(
                    text if len(text) <= MAX_OUTPUT_LINE_CHARS
                    else _clip(text, MAX_OUTPUT_LINE_CHARS)
                )
        return events

    def feed(self, line: str) -> list[ParsedEvent]:
        """Events for one stdout line; blank lines yield nothing."""
        text = clean_text(line.rstrip("\r\n"))
        if not text.strip():
            return []
        obj = _loads(text) if text.lstrip().startswith("{") else _NOT_JSON
        if isinstance(obj, dict):
            try:
                events = self._typed(obj)
                if events is not None:
                    events = _bounded(events, self.max_event_bytes)
            except Exception:
                logger.exception("could not parse a custom agent event; passing it through")
                events = None
            if events is not None:
                return events
        return _unreadable(text) if obj is _NOT_JSON else [_output(text)]

    def _typed(self, obj: dict[str, Any]) -> list[ParsedEvent] | None:
        if obj.get("type") == RESULT_FILE_TYPE:
            self.result = bound_json(obj.get("result"), self.max_event_bytes)
            return [ParsedEvent("result", {"result": self.result, "source": "file"})]
        name, data = obj.get("event"), obj.get("data")
        if name not in CUSTOM_EVENT_TYPES or not isinstance(data, dict):
            return None
        if name == "output":
            line = data.get("line")
            if not isinstance(line, str):
                return None
            return [ParsedEvent("output", {**data, "line": _clip(line, MAX_OUTPUT_LINE_CHARS)})]
        if name == "assistant":
            text = data.get("text")
            return [ParsedEvent("assistant", data), *_text_lines(text)] if _str(text) else None
        if name == "tool_use":
            tool = _str(data.get("name"))
            if not tool:
                return None
            summary = data.get("summary")
            if not isinstance(summary, str):
                args = data.get("input")
                summary = summarize_tool_use(tool, args if isinstance(args, dict) else {})
            data = {**data, "summary": summary}
            return [ParsedEvent("tool_use", data), _output(f"→ {summary}")]
        if name == "tool_result":
            events = [ParsedEvent("tool_result", data)]
            if data.get("is_error") is True:
                events.append(_error_line(_tool_result_text(data.get("content"))))
            return events
        if name == "result":
            self.result = bound_json(data.get("result"), self.max_event_bytes)
        return [ParsedEvent(name, data)]


def _unreadable(text: str) -> list[ParsedEvent]:
    """A line that is not JSON; if it was the result file's, say it was lost.

    `cbox-entry` prints the file as one line, so a file past the line cap
    (`max_line_bytes`) arrives cut, and so unreadable.
    """
    if text.startswith(_RESULT_FILE_PREFIX):
        note = f"the result file could not be read ({len(text)} characters, cut or not JSON)"
        return [ParsedEvent("log", {"line": note}), _output(text)]
    return [_output(text)]


_RESULT_FILE_PREFIX = '{"type": "' + RESULT_FILE_TYPE + '"'


def _bounded(events: list[ParsedEvent], max_chars: int) -> list[ParsedEvent]:
    """Each event's data made storable and capped (see `untrusted.bound_json`)."""
    return [ParsedEvent(e.type, bound_json(e.data, max_chars)) for e in events]


def _assistant(obj: dict[str, Any]) -> list[ParsedEvent]:
    """One `assistant` per text block, one `tool_use` per tool call; thinking is skipped."""
    message = obj.get("message")
    if not isinstance(message, dict):
        return []
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    extra = _parent(obj)
    if obj.get("is_api_error_message") is True:
        extra["api_error"] = True  # err500.jsonl: a synthetic "API Error: 500 ..." message
    message_id = message.get("id") if isinstance(message.get("id"), str) else None
    events: list[ParsedEvent] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and _str(block.get("text")).strip():
            data = {"text": block["text"], "message_id": message_id, **extra}
            events += [ParsedEvent("assistant", data), *_text_lines(block["text"])]
        elif block.get("type") == "tool_use":
            name = _str(block.get("name")) or "?"
            args: dict[str, Any] = block["input"] if isinstance(block.get("input"), dict) else {}
            summary = summarize_tool_use(name, args)
            tool_id = block.get("id") if isinstance(block.get("id"), str) else None
            data = {"id": tool_id, "name": name, "input": args, "summary": summary, **extra}
            events += [ParsedEvent("tool_use", data), _output(f"→ {summary}")]
    return events


def _tool_results(obj: dict[str, Any]) -> list[ParsedEvent]:
    """`tool_result` blocks of a `user` message; other user content is our own prompt."""
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    events: list[ParsedEvent] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict) or block.get("type") != "tool_result":
            continue
        text = _tool_result_text(block.get("content"))
        is_error = block.get("is_error") is True
        tool_use_id = block.get("tool_use_id")
        data = {
            "tool_use_id": tool_use_id if isinstance(tool_use_id, str) else None,
            "is_error": is_error,
            "content": text[:MAX_TOOL_RESULT_CHARS],
            "truncated": len(text) > MAX_TOOL_RESULT_CHARS,
            **_parent(obj),
        }
        events.append(ParsedEvent("tool_result", data))
        if is_error:
            events.append(_error_line(text))
    return events


def _tool_result_text(content: Any) -> str:
    """A tool result is a string or a list of blocks (text, image, ...)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        return json.dumps(content, ensure_ascii=False, default=str)
    blocks = [b if isinstance(b, dict) else {"text": b} for b in content]
    return "\n".join(
        b["text"] if isinstance(b.get("text"), str) else f"[{_str(b.get('type')) or 'block'}]"
        for b in blocks
    )


def _error_line(text: str) -> ParsedEvent:
    first = text.strip().splitlines()[0] if text.strip() else "tool error"
    return _output("✗ " + one_line(first, 200))


#: Output lines made from one text block. The text itself is bounded per event,
#: but a block of newlines would otherwise become one event (and row) per line.
MAX_TEXT_LINES = 400


def _text_lines(text: Any) -> list[ParsedEvent]:
    """Assistant text as output lines; blank lines inside a paragraph break are kept."""
    lines = _str(text)[: 4 * MAX_OUTPUT_LINE_CHARS * MAX_TEXT_LINES].strip("\n").splitlines()
    events = [_output(line.rstrip()) for line in lines[:MAX_TEXT_LINES]]
    if len(lines) > MAX_TEXT_LINES:
        events.append(_output(f"…[{len(lines) - MAX_TEXT_LINES} more lines of this text cut; "
                              "the whole text is in the assistant event]"))
    return events


def _output(line: str) -> ParsedEvent:
    return ParsedEvent("output", {"line": _clip(line, MAX_OUTPUT_LINE_CHARS)})


def _parent(obj: dict[str, Any]) -> dict[str, Any]:
    """Sub-agent (Task tool) messages carry the tool call they belong to."""
    parent = obj.get("parent_tool_use_id")
    return {"parent_tool_use_id": parent} if isinstance(parent, str) else {}


def _loads(text: str) -> Any:
    """JSON or `_NOT_JSON`. NaN/Infinity are refused: they would not survive JSON out."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." thousands deep
        return _NOT_JSON


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")
