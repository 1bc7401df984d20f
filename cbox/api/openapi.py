"""The OpenAPI description served at /openapi.json.

It is the contract client generators, gateways and the fuzzer in
`tests/test_openapi_contract.py` read, so nothing in it is written twice:
request bodies come from the pydantic models the handlers validate with,
query and header parameters from the `cbox.api.params` declarations the
handlers parse with, and event streams from the `cbox.api.event_types`
registry. The path list is checked against the router by a test.

What it states on purpose, beyond the schemas:
- security: a bearer token on every operation but /healthz and /openapi.json;
- the refusals any request can meet before its handler (401, 403 for a
  foreign Origin, 413 and 415 for bodies, 421 for a Host the server does not
  answer to), declared on every operation alike;
- `links`, so a stateful client (or fuzzer) can chain a submitted task's id
  into reading, following and stopping it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cbox import __version__
from cbox.api import event_types, params
from cbox.api.bodies import BODY_SCHEMAS
from cbox.models import Isolation, Session, TaskSpec, TaskState
from cbox.policies import Policy
from cbox.webhooks.models import Delivery, SubscriptionIn

_REF = "#/components/schemas/{model}"
_ERROR = {"$ref": "#/components/schemas/Error"}
_TASK = {"$ref": "#/components/schemas/Task"}
_SESSION = {"$ref": "#/components/schemas/Session"}

_ERROR_TEXT = {
    400: "Bad request: a malformed body, a field or parameter out of its bounds",
    401: "Missing or wrong API token",
    403: "Forbidden: a foreign Origin, or a request past a policy ceiling",
    404: "Unknown task, session or webhook",
    409: "The task's or session's state does not allow this",
    413: "Body larger than CBOX_MAX_BODY_BYTES",
    415: "A request body that is not application/json",
    421: "A Host header this server does not answer to",
    503: "Docker engine or image unavailable",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _sse(description: str) -> dict[str, Any]:
    events = {e.name: {"$ref": _REF.format(model=e.data.__name__)} for e in event_types.EVENTS}
    return {
        "description": description + " Each event is `id:` (its gap-free seq), `event:` (its "
        "type) and `data:` (one line of JSON, described per type). A `: keep-alive` comment "
        "comes while nothing happens. Clients must skip event types they do not know.",
        "content": {"text/event-stream": {
            "schema": {"$ref": "#/components/schemas/TaskEvent"},
            "x-sse-events": events,
        }},
    }


def _operation(
    op_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    errors: tuple[int, ...] = (),
    open_: bool = False,
) -> dict[str, Any]:
    """One operation, with the refusals every request of its kind can meet."""
    codes = set(errors) | {403, 421}
    if not open_:
        codes.add(401)
    if body:
        codes |= {400, 413, 415}
    if parameters:
        codes.add(400)
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": {
            **responses, **{str(c): _json(_ERROR, _ERROR_TEXT[c]) for c in sorted(codes)}
        },
    }
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if open_:
        op["security"] = []
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


_TASK_ID = _path_param("task_id", "The task's id (`task_` + 20 hex characters).")
_SESSION_ID = _path_param("session_id", "The session's name.")

_BY_ID = {"task_id": "$response.body#/id"}
_TASK_LINKS = {
    "GetTask": {"operationId": "getTask", "parameters": _BY_ID},
    "FollowEvents": {"operationId": "getTaskEvents", "parameters": _BY_ID},
    "GetRaw": {"operationId": "getTaskRaw", "parameters": _BY_ID},
    "StopTask": {"operationId": "stopTask", "parameters": _BY_ID},
    "StopBySeedApi": {"operationId": "postStop",
                      "parameters": {"query.task_id": "$response.body#/id"}},
}


def _with_links(response: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**response, "links": {n: _TASK_LINKS[n] for n in names}}


def _task_schema(task_spec: type[TaskSpec]) -> dict[str, Any]:
    """`Task.public()`: the task, with its spec and outcome flattened in."""
    props: dict[str, Any] = {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in TaskState]},
        "queue_position": {"type": ["integer", "null"], "minimum": 1},
        "created_at": {"type": "number"},
        "started_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
        "container_id": {"type": ["string", "null"]},
        "workspace": {"type": ["string", "null"]},
        "mount_mode": {"enum": ["ro", "rw", None]},
        "exit_code": {"type": ["integer", "null"]},
        "is_error": {"type": ["boolean", "null"]},
        "oom_killed": {"type": "boolean"},
        # From the agent's result line, not checked yet: see cbox/api/event_types.py.
        "cost_usd": {},
        "usage": {},
        "duration_ms": {},
        "num_turns": {},
        "claude_session_id": {"type": ["string", "null"]},
        "result": {},
        "error": {"type": ["string", "null"]},
        "gateway_usage": {"type": ["object", "null"]},
        "network": {"type": ["string", "null"]},
        "gateway_url": {"type": ["string", "null"]},
        "last_seq": {"type": "integer", "minimum": 0},
        "isolated": {"type": "boolean"},
        "isolation": {"anyOf": [{"$ref": _REF.format(model="Isolation")}, {"type": "null"}]},
    }
    for name, schema in task_spec.model_json_schema()["properties"].items():
        props.setdefault(name, schema)
    return {"type": "object", "properties": props, "required": ["id", "state", "prompt"]}


def _components(task_spec: type[TaskSpec]) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [
        (Session, "serialization"), (Isolation, "serialization"), (Policy, "serialization"),
        *((m, "serialization") for m in event_types.data_models()),
    ]
    _, top = models_json_schema(models, ref_template=_REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["TaskSpec"] = task_spec.model_json_schema(ref_template=_REF)
    schemas["Task"] = _task_schema(task_spec)
    schemas["TaskEvent"] = event_types.sse_event_schema(_REF)
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }},
    }
    schemas.update(BODY_SCHEMAS)
    schemas.update(_webhook_schemas())
    return schemas


def _webhook_schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(SubscriptionIn, "validation"), (Delivery, "serialization")], ref_template=_REF
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["WebhookIn"] = schemas.pop("SubscriptionIn")
    schemas["WebhookDelivery"] = schemas.pop("Delivery")
    schemas["Webhook"] = _webhook_schema(
        SubscriptionIn.model_json_schema(ref_template=_REF)
    )
    return schemas


def _webhook_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A subscription as served: the input's fields without secrets, and its state."""
    schema.pop("$defs", None)
    props = schema["properties"]
    props.pop("secret")
    props.pop("previous_secret")
    props["source"] = {"type": "string", "enum": ["api", "file"]}
    props["created_at"] = {"type": "number"}
    props["disabled"] = {"type": ["string", "null"],
                         "description": "Why deliveries stopped (410 Gone); null while active."}
    props["secret_fingerprint"] = {"type": "string"}
    props["previous_secret_fingerprint"] = {"type": ["string", "null"]}
    schema["required"] = ["name", "url", "events", "source"]
    schema["title"] = "Webhook"
    schema["description"] = "A webhook subscription as served."
    schema.pop("additionalProperties", None)
    return schema


_WEBHOOK_NAME = _path_param("name", "The subscription's name.")


def _webhook_paths() -> dict[str, Any]:
    hook = _ref("Webhook")
    delivery = _ref("WebhookDelivery")
    return {
        "/webhooks": {
            "get": _operation(
                "getWebhooks", "Webhook subscriptions (secrets are never served)",
                {"200": _json({"type": "object", "required": ["webhooks"], "properties": {
                    "webhooks": {"type": "array", "items": hook}}}, "Subscriptions")},
                errors=(404,),
            ),
            "post": _operation(
                "postWebhooks", "Create or replace a webhook subscription (replacing "
                "re-enables a disabled one); the URL must be allowed and reachable",
                {"201": _json(hook, "Created"), "200": _json(hook, "Replaced")},
                body="WebhookIn", errors=(404, 409),
            ),
        },
        "/webhooks/{name}": {
            "get": _operation(
                "getWebhook", "One webhook subscription", {"200": _json(hook, "The subscription")},
                parameters=[_WEBHOOK_NAME], errors=(404,),
            ),
            "delete": _operation(
                "deleteWebhook", "Delete a subscription and cancel its pending deliveries",
                {"200": _json({"type": "object", "required": ["deleted"], "properties": {
                    "deleted": {"type": "string"}}}, "Deleted")},
                parameters=[_WEBHOOK_NAME], errors=(404, 409),
            ),
        },
        "/webhooks/{name}/deliveries": {"get": _operation(
            "getWebhookDeliveries",
            "The delivery log, newest first (`notify_url` for tasks' own URLs)",
            {"200": _json({"type": "object", "required": ["deliveries"], "properties": {
                "deliveries": {"type": "array", "items": delivery}}}, "Deliveries")},
            parameters=[_WEBHOOK_NAME, params.DELIVERIES_LIMIT.openapi()], errors=(404,),
        )},
        "/webhooks/{name}/test": {"post": _operation(
            "postWebhookTest", "Send a signed webhook.ping now; the delivery says how it went",
            {"200": _json(delivery, "The ping's delivery")},
            parameters=[_WEBHOOK_NAME], errors=(404,),
        )},
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


def spec(task_spec: type[TaskSpec] = TaskSpec) -> dict[str, Any]:
    """The description; `task_spec` is the request model (a test passes a stricter one)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "claude-box", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _components(task_spec),
        },
        # Always required (cbox.api.guard); the two open paths say `security: []`.
        "security": [{"bearer": []}],
        "paths": {
            "/task": {"post": _operation(
                "postTask", "Seed API: submit a task and stream its events to `done`",
                {"200": _sse("The task's events from `start` to `done`.")},
                body="TaskSpec", errors=(403,),
            )},
            "/status": {"get": _operation(
                "getStatus", "Seed API: what is running and queued",
                {"200": _json(_ref("Status"), "Status")},
            )},
            "/stop": {"post": _operation(
                "postStop", "Seed API: stop the running task(s), or the one named",
                {"200": _json(_ref("Stopped"), "What was stopped")},
                parameters=[params.STOP_TASK_ID.openapi()], errors=(404, 409),
            )},
            "/history": {"get": _operation(
                "getHistory", "Seed API: recent tasks, newest first",
                {"200": _json({"type": "array", "items": _TASK}, "Tasks, newest first")},
                parameters=[params.HISTORY_LIMIT.openapi()],
            )},
            "/tasks": {
                "post": _operation(
                    "postTasks", "Submit a task",
                    {"202": _with_links(_json(_TASK, "Accepted"), *_TASK_LINKS),
                     "200": _with_links(
                         _json(_TASK, "An active task with this idempotency key already exists"),
                         *_TASK_LINKS)},
                    body="TaskSpec", errors=(403,),
                ),
                "get": _operation(
                    "getTasks", "List tasks, newest first",
                    {"200": _json(_ref("TaskPage"), "A page of tasks")},
                    parameters=[params.TASK_STATES.openapi(), params.TASKS_LIMIT.openapi(),
                                params.TASKS_OFFSET.openapi()],
                ),
            },
            "/tasks/{task_id}": {"get": _operation(
                "getTask", "One task",
                {"200": _with_links(_json(_TASK, "The task"), "FollowEvents", "StopTask")},
                parameters=[_TASK_ID], errors=(404,),
            )},
            "/tasks/{task_id}/stop": {"post": _operation(
                "stopTask", "Stop one task (queued or running)",
                {"200": _with_links(_json(_TASK, "The task"), "GetTask", "FollowEvents")},
                parameters=[_TASK_ID], errors=(404, 409),
            )},
            "/tasks/{task_id}/events": {"get": _operation(
                "getTaskEvents", "Replay and follow a task's events to `done`",
                {"200": _sse("The task's events after the one named, to `done`.")},
                parameters=[_TASK_ID, params.EVENTS_AFTER.openapi(),
                            params.LAST_EVENT_ID.openapi()],
                errors=(404,),
            )},
            "/tasks/{task_id}/raw": {"get": _operation(
                "getTaskRaw", "The agent's stdout lines as printed (stream-json for Claude Code)",
                {"200": {"description": "One stdout line per line",
                         "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
                parameters=[_TASK_ID, params.RAW_AFTER.openapi(), params.RAW_LIMIT.openapi()],
                errors=(404,),
            )},
            "/tasks/{task_id}/bundle": {"get": _operation(
                "getTaskBundle", "An isolated task's branch `cbox/<task id>` as a git bundle",
                {"200": {"description": "The bundle file (`git bundle create`)",
                         "content": {"application/x-git-bundle": {
                             "schema": {"type": "string", "format": "binary"}}}}},
                parameters=[_TASK_ID], errors=(404, 409),
            )},
            "/sessions": {"get": _operation(
                "getSessions", "Sessions, newest first",
                {"200": _json({"type": "object", "required": ["sessions"], "properties": {
                    "sessions": {"type": "array", "items": _SESSION}}}, "Sessions")},
            )},
            "/sessions/{session_id}": {
                "get": _operation(
                    "getSession", "One session and its tasks, oldest first",
                    {"200": _json({"allOf": [_SESSION, {"type": "object", "required": ["tasks"],
                                                        "properties": {"tasks": {
                                                            "type": "array", "items": _TASK}}}]},
                                  "The session")},
                    parameters=[_SESSION_ID], errors=(404,),
                ),
                "delete": _operation(
                    "deleteSession", "Forget a session and remove its volume",
                    {"200": _json(_ref("SessionDeleted"), "Deleted")},
                    parameters=[_SESSION_ID], errors=(404, 409),
                ),
            },
            "/policies": {"get": _operation(
                "getPolicies", "The policies with their effective values",
                {"200": _json({"type": "object", "required": ["policies"], "properties": {
                    "policies": {"type": "array", "items": _ref("Policy")}}}, "Policies")},
            )},
            "/healthz": {"get": _operation(
                "getHealthz", "Liveness, and the number of warm containers ready",
                {"200": _json(_ref("Health"), "OK")}, open_=True,
            )},
            "/openapi.json": {"get": _operation(
                "getOpenapi", "This document",
                {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI")},
                open_=True,
            )},
            **_webhook_paths(),
        },
    }


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(spec())
