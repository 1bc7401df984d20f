"""Query and header parameters: one declaration each, read by the handler and the description.

A handler's bounds and the OpenAPI description used to be written twice (an
`_int_query(..., 1, 1000)` call here, a bare `{"type": "integer"}` there), so a
client generator or a fuzzer was told `limit=0` is fine and then got a 400.
Each parameter is now one `IntParam`/`StatesParam` value: `parse()` is what
the handler calls, `openapi()` is what `cbox.api.openapi` lists.

Integers are read strictly (ASCII digits, an optional leading `-`): Python's
`int()` also takes `" 5"`, `"1_000"` and `"٣"`, which no schema calls an integer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from cbox.errors import InvalidRequest
from cbox.models import TaskState

_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True, slots=True)
class IntParam:
    """An integer in the query string or a header, with its default and inclusive bounds."""

    name: str
    default: int
    minimum: int
    maximum: int
    description: str
    location: Literal["query", "header"] = "query"

    def raw(self, request: web.Request) -> str | None:
        source = request.query if self.location == "query" else request.headers
        return source.get(self.name)

    def parse(self, request: web.Request) -> int:
        return self.value(self.raw(request))

    def value(self, raw: str | None) -> int:
        """The parameter's value from its raw text (None: absent, so the default)."""
        if raw is None:
            return self.default
        if not _INTEGER.fullmatch(raw):
            raise InvalidRequest(
                f"{self.name} must be an integer, got {raw[:40]!r}", field=self.name
            )
        value = int(raw)
        if not self.minimum <= value <= self.maximum:
            raise InvalidRequest(
                f"{self.name} must be between {self.minimum} and {self.maximum}", field=self.name
            )
        return value

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.location,
            "description": self.description,
            "schema": {
                "type": "integer",
                "minimum": self.minimum,
                "maximum": self.maximum,
                "default": self.default,
            },
        }


@dataclass(frozen=True, slots=True)
class StatesParam:
    """`?state=`: task states, repeated or comma-separated; absent means every state."""

    name: str = "state"

    def parse(self, request: web.Request) -> list[TaskState] | None:
        raw = request.query.getall(self.name, [])
        if not raw:
            return None
        names = [part for value in raw for part in value.split(",")]
        try:
            return [TaskState(s) for s in names]
        except ValueError:
            valid = ", ".join(s.value for s in TaskState)
            raise InvalidRequest(f"state must be one of {valid}", field=self.name) from None

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "query",
            "description": "Only tasks in these states; repeat the parameter, or separate "
            "states with commas.",
            "style": "form",
            "explode": True,
            "schema": {"type": "array", "items": {"enum": [s.value for s in TaskState]}},
        }


@dataclass(frozen=True, slots=True)
class StringParam:
    """A free string in the query (an id the service looks up)."""

    name: str
    description: str
    pattern: str | None = None

    def parse(self, request: web.Request) -> str | None:
        return request.query.get(self.name)

    def openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if self.pattern:
            schema["pattern"] = self.pattern
        return {"name": self.name, "in": "query", "description": self.description,
                "schema": schema}


#: The largest offset/`after` taken; far past any real log, small enough for SQLite.
MAX_OFFSET = 10**9

HISTORY_LIMIT = IntParam("limit", 10, 1, 1000, "How many tasks, newest first.")
TASKS_LIMIT = IntParam("limit", 20, 1, 500, "Page size.")
TASKS_OFFSET = IntParam("offset", 0, 0, MAX_OFFSET, "Tasks to skip, newest first.")
TASK_STATES = StatesParam()
STOP_TASK_ID = StringParam("task_id", "Stop only this task (queued or running).")
RAW_AFTER = IntParam("after", 0, 0, MAX_OFFSET, "Skip the first N lines.")
RAW_LIMIT = IntParam("limit", 10_000, 1, 100_000, "At most this many lines.")
DELIVERIES_LIMIT = IntParam("limit", 50, 1, 1000, "At most this many deliveries, newest first.")
EVENTS_AFTER = IntParam(
    "after", 0, 0, MAX_OFFSET, "Replay from event N+1 (`Last-Event-ID` wins when both are sent)."
)
LAST_EVENT_ID = IntParam(
    "Last-Event-ID", 0, 0, MAX_OFFSET,
    "The `id:` of the last event seen; the stream resumes right after it.", location="header",
)


def events_after(request: web.Request) -> int:
    """Where an event stream resumes: the `Last-Event-ID` header, else `?after=`.

    Both are checked when both are sent: a bad one is refused even when the
    other one wins, so no malformed parameter is ever silently ignored.
    """
    after = EVENTS_AFTER.parse(request)
    header = LAST_EVENT_ID.raw(request)
    return after if header is None else LAST_EVENT_ID.value(header)
