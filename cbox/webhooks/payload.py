"""The body of a delivery: Standard Webhooks' `{type, timestamp, data}` envelope.

`data` is the task exactly as `GET /tasks/{id}` serves it, plus `links`. A
result can be megabytes (whatever the agent printed last), and receivers such
as chat hooks cap bodies far below that, so `result`, `prompt` and `error`
are cut to `CBOX_WEBHOOK_MAX_FIELD_CHARS` characters; `truncated` names the
fields cut, and `links.task` serves them whole. A result that is not a string
is cut as its JSON text. The body is made once, when the event happens, so
every attempt of a delivery sends the same bytes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cbox.models import Task

CUT_FIELDS = ("result", "prompt", "error")
ELLIPSIS = "…"


def cut(value: Any, max_chars: int) -> tuple[Any, bool]:
    """`value`, or its first `max_chars` characters (ending in an ellipsis) and True."""
    if value is None:
        return None, False
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= max_chars:
        return value, False
    return text[: max_chars - len(ELLIPSIS)] + ELLIPSIS, True


def links(public_url: str, task_id: str) -> dict[str, str | None]:
    base = public_url.rstrip("/")
    return {
        "task": f"{base}/tasks/{task_id}",
        "events": f"{base}/tasks/{task_id}/events",
        "raw": f"{base}/tasks/{task_id}/raw",
        "dashboard": None,  # no dashboard yet
    }


def envelope(event: str, data: dict[str, Any], at: float) -> str:
    timestamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    body = {"type": event, "timestamp": timestamp, "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def task_body(
    event: str, task: Task, *, public_url: str, max_field_chars: int, at: float
) -> str:
    data = task.public()
    truncated = []
    for name in CUT_FIELDS:
        data[name], was_cut = cut(data.get(name), max_field_chars)
        if was_cut:
            truncated.append(name)
    data["truncated"] = truncated
    data["links"] = links(public_url, task.id)
    return envelope(event, data, at)
