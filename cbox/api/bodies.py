"""Schemas of the small JSON answers that have no model of their own (status, pages, ...).

The handlers in `cbox.api.routes` build these dicts; the contract test's
fuzzer checks every answer against these schemas, so a drift fails CI.
"""

from __future__ import annotations

from typing import Any

_SUMMARY = {
    "type": "object",
    "required": ["task_id", "prompt", "state"],
    "properties": {
        "task_id": {"type": "string"},
        "prompt": {"type": "string"},
        "state": {"type": "string"},
        "queue_position": {"type": ["integer", "null"], "minimum": 1},
    },
}

BODY_SCHEMAS: dict[str, Any] = {
    "Status": {
        "type": "object",
        "required": ["state", "running", "queued", "max_concurrent"],
        "properties": {
            "state": {"enum": ["running", "idle"]},
            "task_id": {"type": "string", "description": "The first running task."},
            "prompt": {"type": "string"},
            "running": {"type": "array", "items": _SUMMARY},
            "queued": {"type": "array", "items": _SUMMARY},
            "max_concurrent": {"type": "integer", "minimum": 1},
        },
    },
    "Stopped": {
        "type": "object",
        "required": ["stopped", "message"],
        "properties": {
            "stopped": {"type": "array", "items": {"type": "string"}},
            "message": {"type": "string"},
        },
    },
    "TaskPage": {
        "type": "object",
        "required": ["tasks", "total", "limit", "offset"],
        "properties": {
            "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
            "total": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 1},
            "offset": {"type": "integer", "minimum": 0},
        },
    },
    "SessionDeleted": {
        "type": "object",
        "required": ["deleted", "volume"],
        "properties": {"deleted": {"type": "string"}, "volume": {"type": "string"}},
    },
    "Health": {
        "type": "object",
        "required": ["ok", "warm"],
        "properties": {"ok": {"const": True}, "warm": {"type": "integer", "minimum": 0}},
    },
}
