"""Conformance: the agent's own output must never break the store or the API.

Each test runs a hostile agent in a real box through a real `cbox serve`: a
custom command agent, or a fake `claude` (found first on the box's PATH,
which the policy passes in) that prints hostile stream-json, so Claude
Code's parser is the one under attack. After each attack the task must end
with a `done` event, every answer of the API must be strict JSON of valid
Unicode with the agent's numbers in bounds, and a server restarted on the
same database must answer the same. The list is counted in the README.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cbox.models import Task, TaskSpec
from tests.conftest import WORKSPACE_GID, WORKSPACE_UID
from tests.orch import Orchestrator
from tests.strict_json import strict_loads

pytestmark = [pytest.mark.docker]

FAKEBIN = "/workspace/fakebin"
POLICIES = {
    "hostile-cmd": 'agent = "command"\ncommand = ["python3", "/workspace/attack.py"]\n'
    "timeout_s = 90\n",
    "hostile-idle": 'agent = "command"\ncommand = ["sh", "-c", "sleep 60"]\n',
    # The default agent (stream-json parser), with our fake `claude` first on PATH.
    "hostile-claude": 'env_passthrough = ["PATH"]\ntimeout_s = 90\n',
}
#: What the parser may let through (cbox/orchestrator/report.py), checked independently.
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_EVENT_JSON = 4 * 65_536 + 1024
MAX_LINE_BYTES = 1_048_576
DONE_TIMEOUT_S = 120
FINAL = {"completed", "failed", "stopped", "timed_out"}

STREAM_PRELUDE = r'''#!/usr/bin/python3
import json, sys
def emit(text):
    sys.stdout.write(text + "\n"); sys.stdout.flush()
def line(obj):
    emit(json.dumps(obj))
line({"type": "system", "subtype": "init", "session_id": "3f1c1d2e-0000-4000-8000-000000000001",
      "model": "fake", "cwd": "/workspace", "tools": ["Bash"]})
def result(**fields):
    obj = {"type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
           "duration_ms": 5, "total_cost_usd": 0.01, "result": "ok",
           "session_id": "3f1c1d2e-0000-4000-8000-000000000001"}
    obj.update(fields)
    line(obj)
'''

STREAM_ATTACKS = {
    "result_num_turns_string": 'result(num_turns="5 turns")',
    "result_negative_cost": "result(total_cost_usd=-3.5)",
    # NaN is not JSON: that line must pass as text; 1e999 parses as infinity.
    "result_nan_and_infinite_cost": r'''
emit('{"type":"result","total_cost_usd":NaN}')
emit('{"type":"result","is_error":false,"result":"ok","total_cost_usd":1e999,"num_turns":1}')
''',
    "result_cost_1e308": "result(total_cost_usd=1e308)",
    "result_huge_ints": "result(num_turns=10**30, duration_ms=10**25, total_cost_usd=10**40)",
    "result_usage_wrong_type": 'result(usage="lots of tokens")',
    "result_session_id_not_a_session_id": r'''
line({"type": "system", "subtype": "init", "session_id": {"a": [1]}})
result(session_id="--resume=../../etc/passwd")
''',
    "result_lone_surrogate": r'''
emit('{"type":"result","is_error":false,"num_turns":1,"result":"done \\ud800 here"}')
''',
    "tool_input_lone_surrogates": r'''
emit('{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"hi \\udfff"},'
     '{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"echo \\ud800",'
     '"x":["\\udc00"]}}]}}')
result()
''',
    "result_deeply_nested": r'''
emit('{"type":"result","is_error":false,"result":' + "[" * 400 + "1" + "]" * 400 + "}")
''',
}

CMD_PRELUDE = r'''import json, os, sys
out = sys.stdout.buffer
def emit(obj):
    out.write(json.dumps(obj).encode() + b"\n"); out.flush()
'''

CMD_ATTACKS = {
    "output_events_lone_surrogates": r'''
out.write(b'{"event":"output","data":{"line":"a\\ud800b"}}\n')
out.write(b'{"event":"log","data":{"line":"\\udfff","extra":{"k\\ud801":1}}}\n')
out.write(b'{"event":"tool_use","data":{"name":"Bash","input":{"command":"\\ud800"}}}\n')
out.flush()
''',
    "custom_result_lone_surrogate": r'''
out.write(b'{"event":"result","data":{"result":"\\ud800"}}\n'); out.flush()
''',
    "invalid_utf8_and_nul_bytes": r'''
out.write(b"bad \xff\xfe bytes \x00 nul \xed\xa0\x80 cesu\n"); out.flush()
sys.stderr.buffer.write(b"err \xc3\x28 \x00\n"); sys.stderr.flush()
''',
    "result_file_huge": r'''
open("/cbox/result.json", "w").write(json.dumps("x" * (15 * 1024 * 1024)))
''',
    "result_file_not_json": r'''
open("/cbox/result.json", "wb").write(b"not json \x00\xff\xfe {")
''',
    "result_file_array_with_surrogate": r'''
open("/cbox/result.json", "w").write('[1, "\\ud800"]')
''',
    "result_file_deeply_nested": r'''
open("/cbox/result.json", "w").write("[" * 500 + "]" * 500)
''',
}


async def get(orch: Orchestrator, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(headers=orch.headers) as session, session.get(
        orch.url + path
    ) as resp:
        return resp.status, await resp.text()


async def sse_events(orch: Orchestrator, task_id: str) -> list[tuple[str, Any]]:
    """Every event of a task, read as raw SSE to its end (the `done` event), strictly parsed."""
    timeout = aiohttp.ClientTimeout(total=DONE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers=orch.headers) as session, session.get(
        f"{orch.url}/tasks/{task_id}/events"
    ) as resp:
        assert resp.status == 200
        body = (await resp.read()).decode("utf-8")
    events: list[tuple[str, Any]] = []
    kind = "message"
    for line in body.split("\n"):
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            events.append((kind, strict_loads(line[5:].strip())))
            kind = "message"
    return events


def check_outcome(task: dict[str, Any]) -> None:
    """The agent's numbers and names, as served, are in the bounds a client can rely on."""
    cost = task.get("cost_usd")
    assert cost is None or (isinstance(cost, float | int) and 0 <= cost <= 1e6), cost
    for key, top in (("num_turns", 10**9), ("duration_ms", 10**12)):
        value = task.get(key)
        assert value is None or (type(value) is int and 0 <= value <= top), (key, value)
    session_id = task.get("claude_session_id")
    assert session_id is None or SESSION_ID.match(session_id), session_id
    assert task.get("usage") is None or isinstance(task["usage"], dict)
    assert len(json.dumps(task.get("result"))) <= MAX_EVENT_JSON


async def check_api(orch: Orchestrator, task_id: str) -> dict[str, Any]:
    for path in ("/tasks", "/history?limit=50", "/status", f"/tasks/{task_id}"):
        status, text = await get(orch, path)
        assert status == 200, (path, status, text[:300])
        strict_loads(text)
    task = strict_loads((await get(orch, f"/tasks/{task_id}"))[1])
    assert task["state"] in FINAL, task["state"]
    check_outcome(task)
    listed = strict_loads((await get(orch, "/tasks"))[1])
    assert task_id in [t["id"] for t in listed["tasks"]]
    return dict(task)


async def run_hostile(
    orch: Orchestrator, workspace: Path, policy: str, script: str,
    before_restart: Callable[[], None] | None = None,
) -> tuple[str, list[tuple[str, Any]], dict[str, Any]]:
    """Run one attack; check the events, the API, and the API of a restarted server."""
    if policy == "hostile-claude":
        fakebin = workspace / "fakebin"
        fakebin.mkdir(exist_ok=True)
        path = fakebin / "claude"
        path.write_text(STREAM_PRELUDE + script + "\n")
    else:
        path = workspace / "attack.py"
        path.write_text(CMD_PRELUDE + script + "\n")
    path.chmod(0o755)
    os.chown(path, WORKSPACE_UID, WORKSPACE_GID)
    status, _text = await get(orch, "/healthz")
    assert status == 200
    submitted = await orch.submit("hostile output", policy=policy)
    task_id = submitted["id"]
    events = await asyncio.wait_for(sse_events(orch, task_id), DONE_TIMEOUT_S)
    assert events and events[-1][0] == "done", [e[0] for e in events[-3:]]
    for kind, data in events:
        assert len(json.dumps(data)) <= MAX_EVENT_JSON + 4096, (kind, len(json.dumps(data)))
    task = await check_api(orch, task_id)
    assert await orch.no_containers_left(timeout_s=30)
    if before_restart is not None:
        before_restart()
    await orch.stop()
    await orch.start()
    await check_api(orch, task_id)
    assert [e[0] for e in await sse_events(orch, task_id)][-1] == "done"
    return task_id, events, task


@pytest.fixture
async def box(orchestrator_factory: type[Orchestrator], workspace: Path) -> Orchestrator:
    env = {"PATH": f"{FAKEBIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    orch = orchestrator_factory(workspace=workspace, policies=POLICIES, env=env)
    await orch.start()
    return orch


@pytest.mark.parametrize("name", sorted(STREAM_ATTACKS))
async def test_hostile_stream_json(box: Orchestrator, workspace: Path, name: str) -> None:
    _, events, task = await run_hostile(box, workspace, "hostile-claude", STREAM_ATTACKS[name])
    if name.startswith("result_") and name != "result_deeply_nested":
        assert [k for k, _ in events].count("result") >= 1
    if name in ("result_num_turns_string", "result_usage_wrong_type", "result_huge_ints"):
        # What was thrown away is said, not silently lost.
        assert task.get("dropped"), task


@pytest.mark.parametrize("name", sorted(CMD_ATTACKS))
async def test_hostile_command_agent(box: Orchestrator, workspace: Path, name: str) -> None:
    _, events, _task = await run_hostile(box, workspace, "hostile-cmd", CMD_ATTACKS[name])
    lines = " ".join(str(d.get("line", "")) for k, d in events if k in ("output", "stderr"))
    if name == "result_file_huge":  # cut at the line cap, so lost: and the log says so
        assert any("result file could not be read" in str(d.get("line")) for _, d in events)
    if name == "invalid_utf8_and_nul_bytes":
        assert "bad \ufffd\ufffd bytes \ufffd nul" in lines
        assert "err \ufffd( \ufffd" in lines


async def test_result_file_symlink_to_a_host_path(
    box: Orchestrator, workspace: Path, tmp_path: Path
) -> None:
    """The result file is read inside the box: a symlink to a host path names nothing there."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text('"HOST-SECRET-CONTENT"')
    script = f'os.symlink({str(secret)!r}, "/cbox/result.json")'
    _, events, task = await run_hostile(box, workspace, "hostile-cmd", script)
    assert "HOST-SECRET-CONTENT" not in json.dumps([d for _, d in events])
    assert "HOST-SECRET-CONTENT" not in json.dumps(task)


def _status_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0])
    return fields


async def test_50_mb_line_without_newline(box: Orchestrator, workspace: Path) -> None:
    """Cut at the line cap, assembled in linear time, with the server's memory bounded."""
    assert box.proc is not None
    pid = box.proc.pid
    before_kb = _status_kb(pid)["VmRSS"]
    peak_kb: list[int] = []
    script = (
        'chunk = b"y" * 65536\n'
        "for _ in range(800):\n    out.write(chunk)\nout.flush()\n"
        'sys.stderr.buffer.write(b"e" * (8 * 1024 * 1024)); sys.stderr.flush()'
    )
    task_id, events, _task = await run_hostile(
        box, workspace, "hostile-cmd", script,
        before_restart=lambda: peak_kb.append(_status_kb(pid)["VmHWM"]),
    )
    assert peak_kb[0] - before_kb < 64 * 1024, (before_kb, peak_kb)
    status, raw = await get(box, f"/tasks/{task_id}/raw")
    assert status == 200
    [line] = raw.splitlines()
    assert len(line.encode()) <= MAX_LINE_BYTES + 100
    assert line.endswith("more bytes]"), line[-80:]
    stderr = [d["line"] for k, d in events if k == "stderr"]
    assert stderr and all(len(s) <= 8000 for s in stderr)


@pytest.mark.parametrize("line", ['b"o" * 99 + b"\\n"', 'b"\\n"'], ids=["text", "empty"])
async def test_output_past_the_task_budget(
    orchestrator_factory: type[Orchestrator], workspace: Path, line: str
) -> None:
    """Past `CBOX_MAX_TASK_OUTPUT_BYTES` nothing more is stored and the task ends `failed`;
    empty lines count too (each is a row), so a flood of them cannot fill the disk."""
    budget = 2 * 1024 * 1024
    orch = orchestrator_factory(
        workspace=workspace, policies=POLICIES,
        env={"CBOX_MAX_TASK_OUTPUT_BYTES": str(budget)},
    )
    await orch.start()
    script = (
        f"line = {line}\n"
        "for _ in range(4000):\n    out.write(line * 100)\nout.flush()\n"
        'emit({"event": "result", "data": {"result": "finished"}})'
    )
    task_id, events, task = await run_hostile(orch, workspace, "hostile-cmd", script)
    assert task["state"] == "failed", task["state"]
    assert "output budget" in str(task["error"])
    notes = [d["line"] for k, d in events if k == "log"]
    assert sum("output budget" in n for n in notes) == 1, notes
    with sqlite3.connect(orch.db) as db:
        (events_bytes,) = db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM events WHERE task_id = ?", (task_id,)
        ).fetchone()
        (raw_bytes, rows) = db.execute(
            "SELECT COALESCE(SUM(LENGTH(line)), 0), COUNT(*) FROM raw_lines WHERE task_id = ?",
            (task_id,),
        ).fetchone()
    # One read's worth of lines may land past the budget before it is noticed.
    stored = events_bytes + raw_bytes + 32 * rows
    assert stored <= budget + 2 * 1024 * 1024, (events_bytes, raw_bytes, rows)


def _columns(task: Task) -> tuple[str, str, int, float, None]:
    return (task.id, task.state.value, 0, task.created_at, None)


async def test_a_database_poisoned_by_the_old_code_loads_again(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    """Rows as the old code wrote them (or worse) are repaired on read, never a 500."""
    orch = orchestrator_factory(workspace=workspace, policies=POLICIES)
    await orch.start()
    await orch.stop()
    now = time.time()
    done = Task(id="task_poison_turns", spec=TaskSpec(prompt="p"), state="completed",
                created_at=now - 4)
    poisoned_turns = json.loads(done.model_dump_json())
    poisoned_turns["outcome"]["num_turns"] = "5 turns"  # what model_dump_json wrote as it came
    poisoned_turns["outcome"]["usage"] = "lots"
    surrogate = Task(id="task_poison_surrogate", spec=TaskSpec(prompt="p"), state="failed",
                     created_at=now - 3)
    surrogate_json = surrogate.model_dump_json().replace(
        '"result":null', '"result":"bad \\ud800 text"'
    )
    assert "\\ud800" in surrogate_json
    queued = Task(id="task_poison_queued", spec=TaskSpec(prompt="p", policy="hostile-cmd"),
                  created_at=now - 2)
    running = Task(id="task_poison_running", spec=TaskSpec(prompt="p"), state="running",
                   created_at=now - 1)
    with sqlite3.connect(orch.db) as db:
        sql = ("INSERT INTO tasks (id, state, priority, created_at, idempotency_key, data)"
               " VALUES (?, ?, ?, ?, ?, ?)")
        db.execute(sql, (*_columns(done), json.dumps(poisoned_turns)))
        db.execute(sql, (*_columns(surrogate), surrogate_json))
        db.execute(sql, (*_columns(queued), '{"id": "task_poison_queued", "spec": {"pro'))
        db.execute(sql, (*_columns(running), "[1, 2, 3]"))
        db.execute(
            "INSERT INTO events (task_id, seq, type, ts, data) VALUES (?, 1, 'done', ?, ?)",
            ("task_poison_turns", now, '{"num_turns":"5 turns","line":"\\ud800"}'),
        )
    await orch.start()
    for path in ("/tasks", "/history?limit=50", "/status"):
        status, text = await get(orch, path)
        assert status == 200, (path, status, text[:300])
        json.loads(text)
    listed = json.loads((await get(orch, "/tasks?limit=50"))[1])["tasks"]
    by_id = {t["id"]: t for t in listed}
    assert set(by_id) >= {done.id, surrogate.id, queued.id, running.id}
    assert by_id[done.id]["state"] == "completed"
    assert by_id[done.id]["num_turns"] is None and by_id[done.id]["dropped"]
    assert "\ufffd" in by_id[surrogate.id]["result"]
    # A task whose row could not be read is never run: it is failed, with the reason.
    for task_id in (queued.id, running.id):
        status, text = await get(orch, f"/tasks/{task_id}")
        assert status == 200, text
        task = json.loads(text)
        assert task["state"] == "failed" and "stored row was invalid" in task["error"]
    assert orch.containers() == []
    history = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "cbox", "history"],
        env=orch.client_env, capture_output=True, text=True, timeout=60,
    )
    assert history.returncode == 0, history.stderr[-500:]
    await orch.stop()
    await orch.start()
    for path in ("/tasks", "/history", f"/tasks/{done.id}", f"/tasks/{surrogate.id}"):
        status, _ = await get(orch, path)
        assert status == 200, path


async def test_task_containers_cap_their_engine_log(box: Orchestrator) -> None:
    """Docker keeps what a box prints on the host's disk: in bounded, rotated files."""
    submitted = await box.submit("idle", policy="hostile-idle")
    task = await box.wait_state(submitted["id"], {"running"})
    [container] = box.containers()
    inspected = subprocess.run(
        ["docker", "inspect", "--format", "{{json .HostConfig.LogConfig}}", container],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(inspected) == {
        "Type": "json-file", "Config": {"max-size": "64m", "max-file": "4"}
    }
    status, _ = await box.request("POST", f"/tasks/{task['id']}/stop")
    assert status == 200
    await box.wait_done(task["id"], timeout_s=60)
