"""The HTTP API's contract: bad input, OpenAPI, queue order, workspace locks, idempotency.

These run custom-command agents (no model calls) so they are quick, but still
through a real `cbox serve`, real containers and real SSE.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from cbox.api import openapi
from cbox.api.routes import routes
from tests.orch import Orchestrator

pytestmark = [pytest.mark.docker]

POLICIES = {
    "sleep": 'agent = "command"\ncommand = ["sh", "-c", "sleep 2; echo slept"]\n',
    "sleeper-ro": 'agent = "command"\nworkspace = "ro"\n'
    'command = ["sh", "-c", "sleep 2; echo slept"]\n',
    "echo": 'agent = "command"\ncommand = ["sh", "-c", "echo hello; echo oops >&2; exit 3"]\n'
    "memory_mb = 512\ntimeout_s = 60\n",
}


@pytest.fixture
async def api(orchestrator_factory: type[Orchestrator], tmp_path: Path) -> Orchestrator:
    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in POLICIES.items():
        (policies / f"{name}.toml").write_text(text)
    ws = tmp_path / "ws"
    ws.mkdir()
    orch = orchestrator_factory(
        workspace=ws, max_concurrent=1, env={"CBOX_POLICIES_DIR": str(policies)}
    )
    await orch.start()
    return orch


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b"{}", 400, "prompt: field required"),
        (b'{"prompt": "   "}', 400, "must not be empty"),
        (b'{"prompt": "x", "colour": "red"}', 400, "colour: unknown field"),
        (b'{"prompt": "x", "priority": "high"}', 400, "priority"),
        (b'{"prompt": "x", "policy": "nope"}', 400, "unknown policy"),
        (b'{"prompt": "x", "policy": "echo", "memory_mb": 4096}', 403, "memory_mb=4096 exceeds"),
        (b'{"prompt": "x", "policy": "echo", "timeout_s": 61}', 403, "timeout_s=61 exceeds"),
        (b'{"prompt": "x", "workspace": "/etc"}', 400, "outside the allowed roots"),
        (b'{"prompt": "x", "workspace": "relative/path"}', 400, "absolute path"),
    ],
)
async def test_bad_submissions_get_json_4xx(
    api: Orchestrator, body: bytes, status: int, needle: str
) -> None:
    for path in ("/tasks", "/task"):
        got, answer = await api.request(
            "POST", path, data=body, headers={"Content-Type": "application/json"}
        )
        assert got == status, answer
        assert needle in answer["error"]["message"], answer
    _, listing = await api.request("GET", "/tasks")
    assert listing["total"] == 0  # nothing was created


async def test_other_bad_requests(api: Orchestrator) -> None:
    got, answer = await api.request(
        "POST", "/tasks", data=io.BytesIO(b"x" * 2_000_000),
        headers={"Content-Type": "application/json"},
    )
    assert got == 413
    assert "too large" in answer["error"]["message"]
    for method, path in [
        ("GET", "/tasks/task_unknown"),
        ("POST", "/tasks/task_unknown/stop"),
        ("GET", "/tasks/task_unknown/events"),
    ]:
        got, answer = await api.request(method, path)
        assert got == 404, (path, answer)
        assert "task_unknown" in answer["error"]["message"]
    got, answer = await api.request("GET", "/tasks?state=bogus")
    assert got == 400
    got, answer = await api.request("GET", "/history?limit=abc")
    assert got == 400
    assert "limit" in answer["error"]["message"]
    got, answer = await api.request("GET", "/tasks/x/events", headers={"Last-Event-ID": "z"})
    assert got == 400


async def test_openapi_matches_router(api: Orchestrator) -> None:
    got, served = await api.request("GET", "/openapi.json")
    assert got == 200
    document = openapi.spec()
    assert served == document
    routed = {
        (route.method.lower(), route.path)  # type: ignore[attr-defined]
        for route in routes
    } | {("get", "/openapi.json")}
    described = {
        (method, path) for path, ops in document["paths"].items() for method in ops
    }
    assert routed == described
    # Every documented request field is accepted (none is refused as unknown).
    fields = document["components"]["schemas"]["TaskSpec"]["properties"]
    assert {"prompt", "policy", "priority", "read_only", "idempotency_key"} <= set(fields)


async def test_priority_then_fifo(api: Orchestrator) -> None:
    blocker = await api.submit("block", policy="sleep")
    await api.wait_state(blocker["id"], {"running"})
    low1 = await api.submit("low 1", policy="sleep", priority=0)
    high = await api.submit("high", policy="sleep", priority=5)
    low2 = await api.submit("low 2", policy="sleep", priority=0)
    order = (high["id"], low1["id"], low2["id"])
    positions = {t: (await api.task(t))["queue_position"] for t in order}
    assert positions == {high["id"]: 1, low1["id"]: 2, low2["id"]: 3}
    _, status = await api.request("GET", "/status")
    assert status["state"] == "running"
    assert status["task_id"] == blocker["id"]
    assert [q["task_id"] for q in status["queued"]] == [high["id"], low1["id"], low2["id"]]
    finals = []
    for task in (blocker, high, low1, low2):
        await api.wait_done(task["id"])
        finals.append(await api.task(task["id"]))
    starts = [f["started_at"] for f in finals]
    assert starts == sorted(starts)


async def test_one_writer_per_workspace_readers_share(
    orchestrator_factory: type[Orchestrator], tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "sleep.toml").write_text(POLICIES["sleep"])
    ws = tmp_path / "ws"
    ws.mkdir()
    orch = orchestrator_factory(
        workspace=ws, max_concurrent=3, env={"CBOX_POLICIES_DIR": str(policies)}
    )
    await orch.start()
    writer1 = await orch.submit("w1", policy="sleep")
    writer2 = await orch.submit("w2", policy="sleep")
    reader = await orch.submit("r", policy="sleep", read_only=True)
    await orch.wait_state(writer1["id"], {"running"})
    await orch.wait_state(reader["id"], {"running", "completed"})
    assert (await orch.task(writer2["id"]))["state"] == "queued"
    await orch.wait_done(writer1["id"])
    await orch.wait_done(writer2["id"])
    first, second = await orch.task(writer1["id"]), await orch.task(writer2["id"])
    assert second["started_at"] >= first["finished_at"]


async def test_outcome_stderr_and_exit_code(api: Orchestrator) -> None:
    task = await api.submit("echo", policy="echo")
    events = [e async for e in api.events(task["id"])]
    types = [e.type for e in events]
    assert types[0] == "start"
    assert types[-1] == "done"
    assert {"line": "hello"} in [e.data for e in events if e.type == "output"]
    assert {"line": "oops"} in [e.data for e in events if e.type == "stderr"]
    final = await api.task(task["id"])
    assert final["state"] == "failed"
    assert final["exit_code"] == 3
    assert "exited with code 3" in final["error"]
    assert final["mount_mode"] == "rw"


async def test_idempotency_key_returns_active_task(api: Orchestrator) -> None:
    got1, first = await api.request(
        "POST", "/tasks", json={"prompt": "a", "policy": "sleep", "idempotency_key": "ISSUE-1"}
    )
    got2, second = await api.request(
        "POST", "/tasks", json={"prompt": "b", "policy": "sleep", "idempotency_key": "ISSUE-1"}
    )
    assert (got1, got2) == (202, 200)
    assert first["id"] == second["id"]
    await api.wait_done(first["id"])
    got3, third = await api.request(
        "POST", "/tasks", json={"prompt": "c", "policy": "sleep", "idempotency_key": "ISSUE-1"}
    )
    assert got3 == 202
    assert third["id"] != first["id"]
    await api.wait_done(third["id"])


async def test_stop_queued_and_seed_stop(api: Orchestrator) -> None:
    running = await api.submit("block", policy="sleep")
    queued = await api.submit("waiting", policy="sleep")
    await api.wait_state(running["id"], {"running"})
    got, stopped = await api.request("POST", f"/tasks/{queued['id']}/stop")
    assert got == 200
    assert stopped["state"] == "stopped"
    got, answer = await api.request("POST", "/stop")
    assert answer["stopped"] == [running["id"]]
    assert running["id"] in answer["message"]
    done = await api.wait_done(running["id"], timeout_s=30)
    assert done["state"] == "stopped"
    got, answer = await api.request("POST", f"/tasks/{running['id']}/stop")
    assert got == 409
    got, answer = await api.request("POST", "/stop")
    assert answer == {"stopped": [], "message": "nothing is running; nothing was stopped"}
    got, history = await api.request("GET", "/history?limit=5")
    assert [t["id"] for t in history] == [queued["id"], running["id"]]
    got, page = await api.request("GET", "/tasks?state=stopped&limit=1")
    assert page["total"] == 2
    assert len(page["tasks"]) == 1
    await asyncio.sleep(0)
