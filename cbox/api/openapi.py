"""The OpenAPI description served at /openapi.json.

Request and task schemas come from the pydantic models, so they cannot drift;
the path list is checked against the router by a test.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cbox import __version__
from cbox.models import Isolation, Session, TaskSpec, TaskState

_ERROR = {"$ref": "#/components/schemas/Error"}
_TASK = {"$ref": "#/components/schemas/Task"}
_SESSION = {"$ref": "#/components/schemas/Session"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request", 401: "Unauthorized", 403: "Past a policy ceiling",
            404: "Unknown task or session", 409: "Wrong state", 413: "Body too large",
            503: "Docker engine or image unavailable"}
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_SSE = {
    "description": "Server-Sent Events: `id:` is the event's gap-free seq, `event:` its type "
    "(start, queued, running, output, system, assistant, tool_use, tool_result, api_retry, "
    "result, stderr, log, done), `data:` a JSON object.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True,
               "schema": {"type": "string"}}
_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SPEC_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskSpec"}}},
}


def _task_schema() -> dict[str, Any]:
    props: dict[str, Any] = {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in TaskState]},
        "queue_position": {"type": ["integer", "null"]},
        "created_at": {"type": "number"},
        "started_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
        "container_id": {"type": ["string", "null"]},
        "workspace": {"type": ["string", "null"]},
        "mount_mode": {"type": ["string", "null"], "enum": ["ro", "rw", None]},
        "exit_code": {"type": ["integer", "null"]},
        "is_error": {"type": ["boolean", "null"]},
        "oom_killed": {"type": "boolean"},
        "cost_usd": {"type": ["number", "null"]},
        "usage": {"type": ["object", "null"]},
        "duration_ms": {"type": ["integer", "null"]},
        "num_turns": {"type": ["integer", "null"]},
        "claude_session_id": {"type": ["string", "null"]},
        "result": {},
        "error": {"type": ["string", "null"]},
        "last_seq": {"type": "integer"},
        "isolated": {"type": "boolean"},
        "isolation": {"anyOf": [{"$ref": "#/components/schemas/Isolation"}, {"type": "null"}]},
    }
    for name, schema in TaskSpec.model_json_schema()["properties"].items():
        props.setdefault(name, schema)
    return {"type": "object", "properties": props, "required": ["id", "state", "prompt"]}


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "claude-box", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "TaskSpec": TaskSpec.model_json_schema(),
                "Task": _task_schema(),
                "Session": Session.model_json_schema(),
                "Isolation": Isolation.model_json_schema(),
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "type": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": "string"},
                            },
                            "required": ["type", "message"],
                        }
                    },
                },
            },
        },
        # Always required (cbox.api.guard); the two open paths say `security: []`.
        "security": [{"bearer": []}],
        "paths": {
            "/task": {"post": {"summary": "Seed API: submit and stream a task",
                               "requestBody": _SPEC_BODY,
                               "responses": {"200": _SSE, **_errors(400, 403, 413)}}},
            "/status": {"get": {"summary": "Seed API: what is running",
                                "responses": {"200": _json({"type": "object"}, "Status")}}},
            "/stop": {"post": {"summary": "Seed API: stop running task(s)",
                               "parameters": [{"name": "task_id", "in": "query",
                                               "schema": {"type": "string"}}],
                               "responses": {"200": _json({"type": "object"}, "What stopped"),
                                             **_errors(404, 409)}}},
            "/history": {"get": {"summary": "Seed API: recent tasks",
                                 "parameters": [{"name": "limit", "in": "query",
                                                 "schema": {"type": "integer"}}],
                                 "responses": {"200": _json({"type": "array", "items": _TASK},
                                                            "Tasks, newest first"),
                                               **_errors(400)}}},
            "/tasks": {
                "post": {"summary": "Submit a task",
                         "requestBody": _SPEC_BODY,
                         "responses": {"202": _json(_TASK, "Accepted"),
                                       "200": _json(_TASK, "An active task with this "
                                                    "idempotency key already exists"),
                                       **_errors(400, 403, 413)}},
                "get": {"summary": "List tasks",
                        "parameters": [
                            {"name": "state", "in": "query", "schema": {"type": "string"}},
                            {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                            {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                        ],
                        "responses": {"200": _json({"type": "object"}, "A page of tasks"),
                                      **_errors(400)}},
            },
            "/tasks/{task_id}": {"get": {"summary": "One task", "parameters": [_TASK_ID],
                                         "responses": {"200": _json(_TASK, "The task"),
                                                       **_errors(404)}}},
            "/tasks/{task_id}/stop": {"post": {"summary": "Stop one task",
                                               "parameters": [_TASK_ID],
                                               "responses": {"200": _json(_TASK, "The task"),
                                                             **_errors(404, 409)}}},
            "/tasks/{task_id}/events": {"get": {
                "summary": "Follow a task's events (replay with Last-Event-ID or ?after=)",
                "parameters": [_TASK_ID,
                               {"name": "after", "in": "query", "schema": {"type": "integer"}},
                               {"name": "Last-Event-ID", "in": "header",
                                "schema": {"type": "integer"}}],
                "responses": {"200": _SSE, **_errors(400, 404)}}},
            "/tasks/{task_id}/raw": {"get": {
                "summary": "The agent's raw stdout lines (stream-json), as NDJSON",
                "parameters": [_TASK_ID],
                "responses": {"200": {"description": "Lines",
                                      "content": {"application/x-ndjson": {}}},
                              **_errors(404)}}},
            "/sessions": {"get": {"summary": "Sessions, newest first",
                                  "responses": {"200": _json(
                                      {"type": "object",
                                       "properties": {"sessions": {"type": "array",
                                                                   "items": _SESSION}}},
                                      "Sessions")}}},
            "/sessions/{session_id}": {
                "get": {"summary": "One session and its tasks (oldest first)",
                        "parameters": [_SESSION_ID],
                        "responses": {"200": _json(
                            {"allOf": [_SESSION, {"type": "object", "properties": {
                                "tasks": {"type": "array", "items": _TASK}}}]},
                            "The session"), **_errors(404)}},
                "delete": {"summary": "Delete a session and its volume",
                           "parameters": [_SESSION_ID],
                           "responses": {"200": _json({"type": "object"}, "Deleted"),
                                         **_errors(404, 409)}},
            },
            "/policies": {"get": {"summary": "Policies and their effective values",
                                  "responses": {"200": _json({"type": "object"}, "Policies")}}},
            "/healthz": {"get": {"summary": "Liveness, and the number of warm containers ready",
                                 "security": [],
                                 "responses": {"200": _json({"type": "object"}, "OK")}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI")}}},
        },
    }


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(spec())
