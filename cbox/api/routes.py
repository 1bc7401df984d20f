"""HTTP handlers. Each parses its input, makes one service call and serializes.

Two families share the service: the seed's single-task API (`/task`,
`/status`, `/stop`, `/history`), kept exactly as the seed's clients expect,
and the REST API for many tasks (`/tasks...`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from cbox.api import params, sse
from cbox.errors import InvalidRequest, WebhookNotFound
from cbox.models import TaskSpec
from cbox.orchestrator.service import TaskService
from cbox.webhooks import Webhooks

SERVICE: web.AppKey[TaskService] = web.AppKey("service", TaskService)

routes = web.RouteTableDef()


def _service(request: web.Request) -> TaskService:
    return request.app[SERVICE]


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise InvalidRequest("request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


async def _spec(request: web.Request) -> TaskSpec:
    body = await _json_body(request)
    try:
        return TaskSpec.model_validate(body)
    except ValidationError as exc:
        # An unknown field explains a "missing" one (a typo), so it goes first.
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "field required"
        raise InvalidRequest(f"{where}: {message}", field=where) from None


def _summary(task: Any) -> dict[str, Any]:
    return {"task_id": task.id, "prompt": task.prompt, "state": task.state.value}


# ---------------------------------------------------------------------- seed API


@routes.post("/task")
async def post_task(request: web.Request) -> web.StreamResponse:
    """Submit a task and stream its events (start / output / done, and richer ones)."""
    service = _service(request)
    submitted = await service.submit(await _spec(request))
    response = await sse.open_stream(request)
    events = service.subscribe(
        submitted.task.id, keepalive_s=service.settings.keepalive_s
    )
    await sse.pump(response, events)
    return response


@routes.get("/status")
async def get_status(request: web.Request) -> web.Response:
    """The seed's status; with several tasks, `running` lists them all."""
    service = _service(request)
    running = service.running()
    queued = service.queued()
    body: dict[str, Any] = {"state": "running" if running else "idle"}
    if running:
        body["task_id"] = running[0].id
        body["prompt"] = running[0].prompt
    body["running"] = [_summary(t) for t in running]
    body["queued"] = [
        {**_summary(t), "queue_position": t.queue_position} for t in queued
    ]
    body["max_concurrent"] = service.settings.max_concurrent
    return web.json_response(body)


@routes.post("/stop")
async def post_stop(request: web.Request) -> web.Response:
    """Stop the running task(s), or the one named by `?task_id=`; say what was done."""
    service = _service(request)
    task_id = params.STOP_TASK_ID.parse(request)
    stopped = [await service.stop(task_id)] if task_id else await service.stop_running()
    if not stopped:
        message = "nothing is running; nothing was stopped"
    elif len(stopped) == 1:
        message = f"stopping task {stopped[0].id}"
    else:
        message = f"stopping {len(stopped)} running tasks"
    return web.json_response(
        {"stopped": [t.id for t in stopped], "message": message}
    )


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    limit = params.HISTORY_LIMIT.parse(request)
    tasks, _ = await _service(request).list_tasks(limit=limit)
    return web.json_response([t.public() for t in tasks])


# ---------------------------------------------------------------------- REST API


@routes.post("/tasks")
async def post_tasks(request: web.Request) -> web.Response:
    submitted = await _service(request).submit(await _spec(request))
    status = 202 if submitted.created else 200
    return web.json_response(
        submitted.task.public(),
        status=status,
        headers={"Location": f"/tasks/{submitted.task.id}"},
    )


@routes.get("/tasks")
async def get_tasks(request: web.Request) -> web.Response:
    states = params.TASK_STATES.parse(request)
    limit = params.TASKS_LIMIT.parse(request)
    offset = params.TASKS_OFFSET.parse(request)
    tasks, total = await _service(request).list_tasks(states=states, limit=limit, offset=offset)
    return web.json_response(
        {"tasks": [t.public() for t in tasks], "total": total, "limit": limit, "offset": offset}
    )


@routes.get("/tasks/{task_id}")
async def get_task(request: web.Request) -> web.Response:
    task = await _service(request).get(request.match_info["task_id"])
    return web.json_response(task.public())


@routes.post("/tasks/{task_id}/stop")
async def post_task_stop(request: web.Request) -> web.Response:
    task = await _service(request).stop(request.match_info["task_id"])
    return web.json_response(task.public())


@routes.get("/tasks/{task_id}/events")
async def get_task_events(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    task_id = request.match_info["task_id"]
    after = params.events_after(request)
    await service.get(task_id)  # 404 before the stream starts
    response = await sse.open_stream(request)
    events = service.subscribe(task_id, after=after, keepalive_s=service.settings.keepalive_s)
    await sse.pump(response, events)
    return response


@routes.get("/tasks/{task_id}/raw")
async def get_task_raw(request: web.Request) -> web.Response:
    """The agent's stdout lines exactly as printed (stream-json for Claude Code)."""
    after = params.RAW_AFTER.parse(request)
    limit = params.RAW_LIMIT.parse(request)
    lines = await _service(request).raw_lines(
        request.match_info["task_id"], after=after, limit=limit
    )
    return web.Response(
        text="".join(line + "\n" for line in lines), content_type="application/x-ndjson"
    )


@routes.get("/tasks/{task_id}/bundle")
async def get_task_bundle(request: web.Request) -> web.StreamResponse:
    """An isolated task's branch `cbox/<task>` as a git bundle (404 for other tasks)."""
    path = await _service(request).bundle(request.match_info["task_id"])
    try:
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-git-bundle",
                     "Content-Length": str(path.lstat().st_size)}
        )
        await response.prepare(request)
        # O_NOFOLLOW: the helper wrote that directory; never follow a link out of it.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
            while chunk := await asyncio.to_thread(file.read, 1 << 20):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(shutil.rmtree, path.parent, True)


@routes.get("/sessions")
async def get_sessions(request: web.Request) -> web.Response:
    sessions = await _service(request).list_sessions()
    return web.json_response({"sessions": [s.model_dump(mode="json") for s in sessions]})


@routes.get("/sessions/{session_id}")
async def get_session(request: web.Request) -> web.Response:
    """One session and its tasks, oldest first."""
    session, tasks = await _service(request).get_session(request.match_info["session_id"])
    return web.json_response(
        {**session.model_dump(mode="json"), "tasks": [t.public() for t in tasks]}
    )


@routes.delete("/sessions/{session_id}")
async def delete_session(request: web.Request) -> web.Response:
    """Forget a session and remove its volume (409 while one of its tasks is active)."""
    session = await _service(request).delete_session(request.match_info["session_id"])
    return web.json_response({"deleted": session.id, "volume": session.volume})


def _hooks(request: web.Request) -> Webhooks:
    listener = _service(request).listener
    if not isinstance(listener, Webhooks):
        raise WebhookNotFound("webhooks are not enabled on this server")
    return listener


@routes.get("/webhooks")
async def get_webhooks(request: web.Request) -> web.Response:
    """Subscriptions (secrets are never served, only their fingerprints)."""
    return web.json_response({"webhooks": [s.public() for s in _hooks(request).subscriptions()]})


@routes.post("/webhooks")
async def post_webhooks(request: web.Request) -> web.Response:
    """Create (201) or replace (200) a subscription; replacing re-enables a disabled one."""
    sub, created = await _hooks(request).put(await _json_body(request))
    return web.json_response(
        sub.public(), status=201 if created else 200,
        headers={"Location": f"/webhooks/{sub.name}"},
    )


@routes.get("/webhooks/{name}")
async def get_webhook(request: web.Request) -> web.Response:
    return web.json_response(_hooks(request).get(request.match_info["name"]).public())


@routes.delete("/webhooks/{name}")
async def delete_webhook(request: web.Request) -> web.Response:
    """Delete a subscription; its pending deliveries are cancelled."""
    sub = await _hooks(request).delete(request.match_info["name"])
    return web.json_response({"deleted": sub.name})


@routes.get("/webhooks/{name}/deliveries")
async def get_webhook_deliveries(request: web.Request) -> web.Response:
    """The delivery log, newest first: status, attempts, latency, last error."""
    limit = params.DELIVERIES_LIMIT.parse(request)
    found = await _hooks(request).deliveries(request.match_info["name"], limit=limit)
    return web.json_response({"deliveries": [d.model_dump(mode="json") for d in found]})


@routes.post("/webhooks/{name}/test")
async def post_webhook_test(request: web.Request) -> web.Response:
    """Send a signed `webhook.ping` now and say how it went."""
    delivery = await _hooks(request).ping(request.match_info["name"])
    return web.json_response(delivery.model_dump(mode="json"))


@routes.get("/policies")
async def get_policies(request: web.Request) -> web.Response:
    policies = _service(request).policies.all()
    return web.json_response({"policies": [p.model_dump(mode="json") for p in policies]})


@routes.get("/healthz")
async def get_healthz(request: web.Request) -> web.Response:
    """Liveness, and how many warm containers wait for tasks (see `orchestrator/pool.py`)."""
    return web.json_response({"ok": True, "warm": request.app[SERVICE].pool.warm()})
