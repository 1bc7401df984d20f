"""Every event type a task's stream carries, with a pydantic model of its `data:`.

One registry serves three readers, so they cannot drift apart:
- the OpenAPI description (`sse_event_schema`): each SSE event is an object
  `{event, id, data}` whose `data` is JSON text with a `contentSchema`;
- the README's event table (`readme_table`), which a test compares;
- people reading this file.

The models describe what the server emits today. Fields the orchestrator
writes itself have exact types. Fields copied from the agent's own output
(Claude Code's stream-json, or a custom agent's `{"event": ..., "data": ...}`
line, see `orchestrator/streamjson.py`) are typed only as far as the parser
makes sure of them; the rest are `Any`, because a hostile agent can put any
JSON value there, and the description must not promise more than the code
keeps. Every model allows extra fields: a custom agent's event keeps the
fields it sent, and a client must skip fields (and event types) it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from cbox.models import Isolation, MountMode, TaskState
from cbox.orchestrator.streamjson import MAX_OUTPUT_LINE_CHARS, MAX_TOOL_RESULT_CHARS

Scalar = str | int | float | bool | None


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class StartData(_Data):
    task_id: str = Field(description="The task's id.")
    prompt: str = Field(description="The prompt as submitted.")


class QueuedData(_Data):
    position: int = Field(ge=1, description="1-based place in the queue.")


class RunningData(_Data):
    container_id: str = Field(
        pattern="^[0-9a-f]{12}$", description="The container's short id (12 characters)."
    )
    mount_mode: MountMode = Field(description="How the workspace is mounted.")
    warm: bool = Field(description="A warm container, started ahead, took the task.")
    branch: str | None = Field(None, description="Isolated tasks: the branch the work goes to.")
    session: str | None = Field(None, description="The session the task continues.")


class OutputData(_Data):
    line: str = Field(
        max_length=MAX_OUTPUT_LINE_CHARS, description="One line a person can read."
    )


class SystemData(_Data):
    """Claude Code's `system` lines; `init` carries the fields below, others their scalars."""

    subtype: Scalar = Field(None, description="`init`, `task_started`, ...")
    session_id: Any = Field(None, description="init: Claude Code's session id.")
    model: Any = Field(None, description="init: the model in use.")
    cwd: Any = Field(None, description="init: the agent's working directory.")
    claude_code_version: Any = Field(None, description="init: Claude Code's version.")
    tools: Any = Field(None, description="init: the tool names (a list of strings).")


class AssistantData(_Data):
    text: str = Field(min_length=1, description="A text block from the model.")
    message_id: Any = Field(None, description="The model's message id.")
    parent_tool_use_id: Any = Field(None, description="Inside a sub-agent: its tool call.")


class ToolUseData(_Data):
    id: Any = Field(None, description="The tool call's id.")
    name: str = Field(min_length=1, description="The tool.")
    input: Any = Field(None, description="The tool's arguments, as the agent sent them.")
    summary: str = Field(description="One line for people, e.g. `Bash: ls`.")


class ToolResultData(_Data):
    """Claude Code's tool results; a custom agent's data is passed on as it sent it."""

    tool_use_id: Any = Field(None, description="The tool call this answers.")
    is_error: Any = Field(None, description="True when the tool failed.")
    content: Any = Field(
        None, description=f"The answer, cut at {MAX_TOOL_RESULT_CHARS:,} characters."
    )
    truncated: Any = Field(None, description="True when `content` was cut.")


class ApiRetryData(_Data):
    attempt: Any = Field(None, description="Which retry this is.")
    max_retries: Any = Field(None, description="How many Claude Code will make.")
    retry_delay_ms: Any = Field(None, description="The wait before this retry.")
    error_status: Any = Field(None, description="The HTTP status that failed.")
    error: Any = Field(None, description="The error's kind.")


class ResultData(_Data):
    """Claude Code's final `result` line, or a custom agent's result (`source: file`)."""

    subtype: Any = Field(None, description="Not the outcome: see `is_error`.")
    is_error: Any = Field(None, description="Claude Code: whether the run failed.")
    result: Any = Field(None, description="The agent's final answer.")
    total_cost_usd: Any = Field(None, description="What Claude Code says the run cost.")
    usage: Any = Field(None, description="Token counts.")
    num_turns: Any = Field(None, description="Agent turns.")
    duration_ms: Any = Field(None, description="Run time.")
    session_id: Any = Field(None, description="Claude Code's session id.")
    source: Any = Field(None, description="`file`: the result came from /cbox/result.json.")


class StderrData(_Data):
    line: str = Field(description="A non-empty line the agent wrote to stderr.")


class LogData(_Data):
    """The orchestrator's notes carry `line`; a custom agent's `log` data is passed as sent."""

    line: Any = Field(None, description="The note (a string when the orchestrator writes it).")


class EgressDeniedData(_Data):
    target: str = Field(description="The `host:port` the agent tried to reach.")
    reason: str = Field(description="Why the proxy refused.")


_TERMINAL = Literal["completed", "failed", "stopped", "timed_out"]
assert set(get_args(_TERMINAL)) == {s.value for s in TaskState if s.terminal}


class DoneData(_Data):
    task_id: str = Field(description="The task's id.")
    exit_code: int | None = Field(description="The container's exit code; null if it never ran.")
    state: _TERMINAL = Field(description="The task's final state.")
    is_error: bool | None = Field(description="Whether the agent reported an error.")
    error: str | None = Field(description="Why the task did not complete, in one line.")
    duration_ms: Any = Field(description="From the agent's result.")
    num_turns: Any = Field(description="From the agent's result.")
    cost_usd: Any = Field(description="From the agent's result.")
    oom_killed: bool = Field(description="The container ran out of memory.")
    result: Any = Field(description="The agent's result.")
    gateway_usage: dict[str, Any] | None = Field(
        None, description="Tokens and cost the gateway counted."
    )
    claude_session_id: str | None = Field(None, description="What a next task resumes.")
    session: str | None = Field(None, description="The session the task belonged to.")
    branch: str | None = Field(None, description="Isolated tasks: the branch with the work.")
    commit: str | None = Field(None, description="Isolated tasks: the branch's tip.")
    diffstat: str | None = Field(None, description="Isolated tasks: `git diff --stat`.")
    isolation: Isolation | None = Field(None, description="Isolated tasks: the details.")


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event type: when it is sent, the model of its data, notes for the README."""

    name: str
    when: str
    data: type[BaseModel]
    #: Extra words after a field's name in the README table, e.g. "12 chars".
    notes: dict[str, str] = field(default_factory=dict)

    def readme_data(self) -> str:
        for name in self.notes:
            assert name in self.data.model_fields, f"{self.name}: no field {name}"
        parts = []
        for name in self.data.model_fields:
            note = self.notes.get(name)
            parts.append(f"`{name}`" + (f" ({note})" if note else ""))
        return ", ".join(parts)


EVENTS: tuple[EventSpec, ...] = (
    EventSpec("start", "Submitted (always event 1)", StartData),
    EventSpec("queued", "The task's place in the queue changed", QueuedData),
    EventSpec(
        "running",
        "Its container was created (or, `warm: true`, a warm one took the task)",
        RunningData,
        notes={"container_id": "12 chars", "branch": "isolated tasks",
               "session": "session tasks"},
    ),
    EventSpec("output", "A line a person can read", OutputData,
              notes={"line": f"cut at {MAX_OUTPUT_LINE_CHARS:,} characters"}),
    EventSpec("system", "Claude Code `system` lines", SystemData,
              notes={"session_id": "`init`", "model": "`init`", "cwd": "`init`",
                     "claude_code_version": "`init`", "tools": "`init`"}),
    EventSpec("assistant", "A text block from the model", AssistantData,
              notes={"parent_tool_use_id": "inside sub-agents"}),
    EventSpec("tool_use", "A tool call", ToolUseData, notes={"summary": "one line"}),
    EventSpec("tool_result", "A tool's answer", ToolResultData,
              notes={"content": f"first {MAX_TOOL_RESULT_CHARS:,} characters"}),
    EventSpec("api_retry", "Claude Code retries a failed API call", ApiRetryData),
    EventSpec(
        "result", "Claude Code's final line, or a custom agent's result", ResultData,
        notes={"source": "`file` for /cbox/result.json"},
    ),
    EventSpec("stderr", "A non-empty line on the agent's stderr", StderrData),
    EventSpec("log", "A note from the orchestrator", LogData),
    EventSpec("egress_denied", "The `allowlist` proxy refused a connection", EgressDeniedData),
    EventSpec(
        "done", "The end (always the last event)", DoneData,
        notes={"branch": "isolated tasks", "commit": "isolated tasks",
               "diffstat": "isolated tasks", "isolation": "isolated tasks"},
    ),
)

BY_NAME = {spec.name: spec for spec in EVENTS}

README_BEGIN = "<!-- event-types: generated from cbox/api/event_types.py -->"
README_END = "<!-- /event-types -->"


def readme_table() -> str:
    """The README's event table, as `tests/test_openapi_contract.py` expects to find it."""
    rows = ["| Type | When | Data |", "|---|---|---|"]
    rows += [f"| `{e.name}` | {e.when} | {e.readme_data()} |" for e in EVENTS]
    return "\n".join(rows)


def data_models() -> list[type[BaseModel]]:
    return [spec.data for spec in EVENTS]


def sse_event_schema(ref: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """The schema of one SSE event of a task stream, as schemathesis and OpenAPI 3.2 read it.

    An event is `{event, id, data}`: `id` is the gap-free seq, `event` the type,
    `data` one line of JSON, described by `contentMediaType`/`contentSchema`.
    """
    variants = []
    for spec in EVENTS:
        variants.append({
            "type": "object",
            "title": spec.name,
            "required": ["event", "id", "data"],
            "properties": {
                "event": {"const": spec.name},
                "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": ref.format(model=spec.data.__name__)},
                },
            },
        })
    return {"oneOf": variants}
