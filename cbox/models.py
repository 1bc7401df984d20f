"""The data claude-box passes around: task specs, tasks, states and events.

Everything that crosses a boundary (HTTP, SQLite, the CLI) is one of these
pydantic models, so validation and serialization live in one place.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

#: Claude Code takes the prompt as one argv string, and Linux caps one argv
#: string at 128 KiB (MAX_ARG_STRLEN); we stay clearly below it.
MAX_PROMPT_CHARS = 100_000

#: Session names end up in Docker volume names and URLs: keep them to the
#: characters both accept, starting with a letter or digit. One pattern for the
#: check and the OpenAPI description; checked with `fullmatch`, since Python's
#: `$` would also let a trailing newline through.
SESSION_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SESSION_NAME = re.compile(SESSION_PATTERN[1:-1])

#: A prompt must hold one character that is not white space, i.e. one outside
#: exactly the set `str.isspace()` knows. Spelt out so that this regex means the
#: same in Python and in ECMA-262 (what JSON Schema validators and fuzzers read).
NOT_BLANK = (
    r"[^\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680"
    r"\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)
_NOT_BLANK = re.compile(NOT_BLANK)

#: An absolute path without NUL (which no system call takes); empty means the default.
WORKSPACE_PATTERN = r"^(/[^\u0000]*)?$"
_WORKSPACE = re.compile(WORKSPACE_PATTERN[1:-1])


def _string_branch(**keywords: Any) -> Callable[[dict[str, Any]], None]:
    """Put string keywords on the string branch of an optional field's `anyOf`."""

    def extra(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", [schema]):
            if branch.get("type") == "string":
                branch.update(keywords)

    return extra


def new_task_id() -> str:
    """A sortable-enough, unguessable id: `task_` + 12 hex chars of time + 8 random."""
    return f"task_{int(time.time() * 1000):012x}{secrets.token_hex(4)}"


def now_s() -> float:
    return time.time()


class TaskState(enum.StrEnum):
    """Lifecycle: queued → running → completed | failed | stopped | timed_out."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.STOPPED, TaskState.TIMED_OUT}
)


class MountMode(enum.StrEnum):
    RO = "ro"
    RW = "rw"


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema has it: an int, or a number with no fraction (`25.0`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


#: Request numbers: JSON numbers only (no strings, no booleans). Integers are
#: checked by `TaskSpec._integers` (a field validator keeps `minimum` and friends
#: in the description, where an annotated type would not).
JsonFloat = Annotated[float, Field(strict=True)]


class TaskSpec(BaseModel):
    """What a client asks for. Unknown fields are refused, so typos fail loudly.

    Numbers and booleans are taken as JSON types, not coerced: `"read_only": 0.0`
    or `"cpus": "2"` is refused, while `25.0` is an integer as JSON Schema says. So
    the server accepts exactly what the OpenAPI description states (schemathesis
    checks both ways).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    @field_validator("priority", "max_turns", "memory_mb", "pids", "max_tokens", mode="before")
    @classmethod
    def _integers(cls, value: Any) -> Any:
        return value if value is None else _json_integer(value)

    prompt: str = Field(
        description="What the agent should do; not blank.",
        # Checked by `_prompt_not_empty` (for its message); stated here for the description.
        json_schema_extra={"minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": NOT_BLANK},
    )
    policy: str = Field("default", description="Name of the policy the task runs under.")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first; FIFO within one.")
    timeout_s: JsonFloat | None = Field(
        None, gt=0, description="Wall-clock limit; may only tighten the policy's."
    )
    model: str | None = Field(None, description="Model name passed to Claude Code.")
    max_turns: int | None = Field(None, gt=0, description="Agent turn limit; tightens the policy.")
    read_only: StrictBool = Field(False, description="Force a read-only workspace mount.")
    workspace: str | None = Field(
        None,
        description="Absolute host path of the workspace, a directory under WORKSPACE_DIR "
        "or CBOX_ALLOWED_WORKSPACE_ROOTS; defaults to WORKSPACE_DIR.",
        json_schema_extra=_string_branch(pattern=WORKSPACE_PATTERN),
    )
    memory_mb: int | None = Field(None, gt=0, description="Memory limit; tightens the policy.")
    cpus: JsonFloat | None = Field(None, gt=0, description="CPU limit; tightens the policy.")
    pids: int | None = Field(None, gt=0, description="Process limit; tightens the policy.")
    max_cost_usd: JsonFloat | None = Field(
        None, gt=0, description="Budget in USD, counted by the gateway; tightens the policy."
    )
    max_tokens: int | None = Field(
        None, gt=0, description="Budget in tokens, counted by the gateway; tightens the policy."
    )
    server_tools: StrictBool | None = Field(
        None, description="false turns off the policy's server-side tools; true needs a "
        "policy that allows them."
    )
    gateway_betas: list[str] | None = Field(
        None, max_length=64,
        description="Narrow the `anthropic-beta` values the gateway lets through.",
    )
    idempotency_key: str | None = Field(
        None,
        max_length=200,
        description="While a task with this key is active, submitting again returns it.",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Free-form labels kept with the task."
    )
    session: str | None = Field(
        None,
        description="Session name: tasks of one session continue one Claude Code "
        "conversation, one at a time. The first task creates it. Letters, digits, `_.-`; "
        "at most 64 characters.",
        json_schema_extra=_string_branch(pattern=SESSION_PATTERN),
    )

    notify_url: str | None = Field(
        None,
        max_length=2000,
        description="Also send this task's webhook events here (signed with the server's "
        "CBOX_WEBHOOK_SECRET); must match CBOX_WEBHOOK_ALLOWED_URLS.",
    )

    @field_validator("session")
    @classmethod
    def _session_name(cls, value: str | None) -> str | None:
        if value is not None and not SESSION_NAME.fullmatch(value):
            raise ValueError(
                "session must be 1-64 characters of letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace_path(cls, value: str | None) -> str | None:
        if value is not None and not _WORKSPACE.fullmatch(value):
            raise ValueError("workspace must be an absolute path, without NUL characters")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str) -> str:
        if not _NOT_BLANK.search(value):
            raise ValueError("prompt must not be empty")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
        return value


class Outcome(BaseModel):
    """What we learnt when the container ended (all optional: a kill leaves gaps).

    Most fields come from the agent, so they carry the same bounds as the
    parser's check (`cbox.orchestrator.report`): a stored row that breaks them
    is repaired on read (the field dropped and named in `dropped`).
    """

    exit_code: int | None = None
    is_error: bool | None = None
    oom_killed: bool = False
    cost_usd: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False)
    usage: dict[str, Any] | None = None
    duration_ms: int | None = Field(None, ge=0, le=10**12)
    num_turns: int | None = Field(None, ge=0, le=10**9)
    claude_session_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
    )
    result: Any = None
    error: str | None = None
    gateway_usage: dict[str, Any] | None = Field(
        None, description="Tokens and estimated cost counted by the gateway from the traffic."
    )
    dropped: list[str] = Field(
        default_factory=list,
        description="Values the agent reported (or a stored row held) that failed "
        "validation and were dropped, each as `field: reason`.",
    )


class Isolation(BaseModel):
    """An isolated task's private copy of a git workspace, and what came back from it."""

    branch: str = Field(description="`cbox/<task id>` in the user's repository.")
    base_commit: str = Field(description="The user's HEAD when the task started.")
    snapshot_commit: str | None = Field(
        None,
        description="A commit on top of HEAD holding the user's uncommitted changes "
        "(tracked and untracked, not ignored) at task start; None when there were none.",
    )
    copy_path: str | None = Field(None, description="Server-side copy; gone once collected.")
    uid: int = 0
    gid: int = 0
    commit: str | None = Field(
        None, description="Tip of the branch; None when the task changed nothing."
    )
    diffstat: str | None = Field(None, description="`git diff --stat` of the task's change.")
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    empty: bool | None = Field(
        None, description="True when the task changed nothing (then no branch is created)."
    )
    error: str | None = Field(None, description="Why the work could not be brought back.")


_PRIVATE_FIELDS = {"lines_consumed", "stderr_consumed", "gateway_token", "proxy_url"}


class Task(BaseModel):
    """A task as stored and served."""

    id: str
    spec: TaskSpec
    state: TaskState = TaskState.QUEUED
    created_at: float = Field(default_factory=now_s)
    started_at: float | None = None
    finished_at: float | None = None
    queue_position: int | None = Field(
        None, description="1-based place in the queue while queued."
    )
    container_id: str | None = None
    workspace: str | None = Field(None, description="Host path that was mounted.")
    mount_mode: MountMode | None = None
    outcome: Outcome = Field(default_factory=Outcome)
    lines_consumed: int = Field(
        0, description="stdout lines already turned into events (for re-adoption)."
    )
    stderr_consumed: int = Field(0, description="stderr lines already turned into events.")
    last_seq: int = Field(0, description="Sequence number of the newest event.")
    gateway_token: str | None = Field(None, description="Per-task API token; never served.")
    network: str | None = Field(None, description="The task's own Docker network.")
    gateway_url: str | None = Field(None, description="Where the box reaches the gateway.")
    proxy_url: str | None = Field(None, description="The allowlist proxy, if any.")
    isolated: bool = Field(False, description="Runs on its own copy of a git workspace.")
    isolation: Isolation | None = None

    @property
    def prompt(self) -> str:
        return self.spec.prompt

    def public(self) -> dict[str, Any]:
        """The JSON shape served over HTTP: the spec's fields flattened in."""
        data = self.model_dump(mode="json", exclude=_PRIVATE_FIELDS)
        spec = data.pop("spec")
        data["prompt"] = spec.pop("prompt")
        data.update({k: v for k, v in spec.items() if k not in data})
        data.update(data.pop("outcome"))
        return data


EventType = Literal[
    "start",
    "queued",
    "running",
    "output",
    "system",
    "assistant",
    "tool_use",
    "tool_result",
    "api_retry",
    "result",
    "stderr",
    "log",
    "error",
    "done",
]


class Session(BaseModel):
    """A named conversation: its Claude Code session id and the volume holding it."""

    id: str
    created_at: float = Field(default_factory=now_s)
    updated_at: float = Field(default_factory=now_s)
    volume: str = Field(description="Docker volume holding the CLI's config dir.")
    claude_session_id: str | None = Field(
        None, description="What the next task passes to `--resume`."
    )
    last_task_id: str | None = None
    uid: int | None = Field(None, description="Owner of the volume's files.")
    gid: int | None = None


class Event:
    """One entry of a task's event log. `seq` is gap-free from 1 per task.

    Not a pydantic model: a chatty task makes one per stdout line, and at
    200,000 lines validation was a tenth of the orchestrator's CPU. The data
    is kept as its JSON text (`data_json`, compact, ASCII), encoded once when
    the event is made: that one string is the SQLite row's column and the
    SSE frame's `data:` line. `data` is decoded only if someone asks.
    """

    __slots__ = ("_data", "data_json", "seq", "sse_frame", "task_id", "ts", "type")

    def __init__(
        self, seq: int, task_id: str, type: str, data_json: str, ts: float,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.seq = seq
        self.task_id = task_id
        self.type = type
        self.ts = ts
        self.data_json = data_json
        self._data = data
        #: Its SSE frame, cached by the API layer: one encoding for every follower.
        self.sse_frame: bytes | None = None

    @classmethod
    def of(
        cls, seq: int, task_id: str, type: str, data: dict[str, Any], ts: float | None = None
    ) -> Event:
        """An event from its data (encoded now, so later changes to `data` do not leak in)."""
        return cls(seq, task_id, type, encode_data(data), now_s() if ts is None else ts)

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = json.loads(self.data_json)
        return self._data

    def __repr__(self) -> str:
        return f"Event({self.seq}, {self.task_id!r}, {self.type!r}, {self.data_json})"


def encode_data(data: dict[str, Any]) -> str:
    """An event's data as one line of compact JSON (the form stored and streamed)."""
    return json.dumps(data, separators=(",", ":"))
