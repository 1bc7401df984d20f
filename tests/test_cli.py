"""Issue: policies and CLI. `cbox` as a subprocess against a live orchestrator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import WORKSPACE_GID, WORKSPACE_UID
from tests.fakes.anthropic import FakeAnthropic, Text, ToolUse
from tests.orch import Orchestrator

pytestmark = [pytest.mark.docker]

POLICIES = {
    "ok": 'agent = "command"\ncommand = ["sh", "-c", "echo working; echo all good"]\n'
    "timeout_s = 120\n",
    "bad": 'agent = "command"\ncommand = ["sh", "-c", "echo trying; exit 3"]\n',
    "slow": 'agent = "command"\ncommand = ["sh", "-c", '
    '"for i in $(seq 1 600); do echo tick $i; sleep 0.1; done"]\n',
    "custom": 'agent = "command"\ncommand = ["python3", "/workspace/agent.py"]\n',
}

CUSTOM_AGENT = r'''
import json
task = json.load(open("/cbox/task.json"))
print("got prompt: " + task["prompt"], flush=True)
print(json.dumps({"event": "tool_use", "data": {"name": "Bash", "input": {"command": "ls"}}}))
print(json.dumps({"event": "assistant", "data": {"text": "thinking out loud"}}))
print("{not an event, just text")
json.dump({"answer": 42, "task_id": task["task_id"]}, open("/cbox/result.json", "w"))
'''


@pytest.fixture
async def server(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, workspace: Path
) -> Orchestrator:
    agent = workspace / "agent.py"
    agent.write_text(CUSTOM_AGENT)
    os.chown(agent, WORKSPACE_UID, WORKSPACE_GID)
    orch = orchestrator_factory(workspace=workspace, policies=POLICIES)
    await orch.start()
    return orch


async def cbox(
    server: Orchestrator | str, *args: str, timeout_s: float = 180
) -> tuple[int, str, str]:
    url = server if isinstance(server, str) else server.url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", *args,
        env={**os.environ, "CBOX_SERVER": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_run_ro_cannot_write(
    server: Orchestrator, fake_api: FakeAnthropic, workspace: Path, marker: str
) -> None:
    fake_api.script(
        marker,
        [ToolUse("Write", {"file_path": "/workspace/evil.txt", "content": "x"}), Text("I tried.")],
    )
    before = {p.name: p.read_bytes() for p in workspace.iterdir()}
    code, out, err = await cbox(server, "run", "--ro", f"{marker} write evil.txt")
    assert code == 0, (out, err)
    assert "→ Write" in out
    assert "EROFS" in out or "read-only" in out.lower()
    assert "I tried." in out
    assert "completed" in out.splitlines()[-1]
    assert {p.name: p.read_bytes() for p in workspace.iterdir()} == before


async def test_exit_codes_match_outcomes(server: Orchestrator) -> None:
    code, out, _ = await cbox(server, "run", "--policy", "ok", "fine")
    assert code == 0
    assert "all good" in out
    code, out, _ = await cbox(server, "run", "--policy", "bad", "fails")
    assert code == 1
    assert "exited with code 3" in out
    code, out, _ = await cbox(server, "run", "--policy", "slow", "--timeout", "2", "too slow")
    assert code == 5
    assert "timed_out" in out
    code, _, err = await cbox("http://127.0.0.1:9", "run", "nobody home")
    assert code == 3
    assert len(err.strip().splitlines()) == 1
    assert "no claude-box server" in err
    code, _, err = await cbox(server, "logs", "task_nope")
    assert code == 3
    assert err.strip() == "cbox: HTTP 404: no task with id 'task_nope'"
    code, _, err = await cbox(server, "run", "--priority", "high", "x")
    assert code == 2
    assert "Traceback" not in err


async def test_bare_prompt_json_and_no_ansi(server: Orchestrator) -> None:
    code, out, _ = await cbox(server, "--json", "--policy", "ok", "bare prompt")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["type"] == "start"
    assert events[0]["data"]["prompt"] == "bare prompt"
    assert events[-1]["type"] == "done"
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    code, out, err = await cbox(server, "run", "--policy", "ok", "plain")
    assert code == 0
    assert "\x1b[" not in out + err


async def test_detach_then_logs_follow(server: Orchestrator) -> None:
    code, out, _ = await cbox(server, "run", "--detach", "--policy", "slow", "--timeout", "3", "x")
    assert code == 0
    task_id = out.strip()
    assert task_id.startswith("task_")
    code, out, _ = await cbox(server, "logs", "-f", task_id)
    assert code == 5  # the task timed out, and logs -f reports it like run does
    ticks = [line for line in out.splitlines() if line.startswith("tick ")]
    assert ticks == [f"tick {n}" for n in range(1, len(ticks) + 1)]
    assert ticks
    code, again, _ = await cbox(server, "logs", task_id)
    assert code == 5  # a finished task's logs exit with its outcome's code
    assert again == out
    code, out, _ = await cbox(server, "history", "--limit", "1")
    assert task_id in out
    assert "timed_out" in out


async def test_ceiling_refused(server: Orchestrator) -> None:
    code, _, err = await cbox(server, "run", "--policy", "readonly", "--timeout", "99999", "x")
    assert code == 3
    assert "timeout_s=99999 exceeds the ceiling" in err
    _, body = await server.request("GET", "/policies")
    names = {p["name"]: p for p in body["policies"]}
    assert names["readonly"]["workspace"] == "ro"
    assert "analysis" in names["readonly"]["aliases"]
    assert names["custom"]["agent"] == "command"


async def test_custom_agent_protocol(server: Orchestrator) -> None:
    code, out, err = await cbox(server, "run", "--json", "--policy", "custom", "hello agent")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    lines = [e["data"]["line"] for e in events if e["type"] == "output"]
    assert "got prompt: hello agent" in lines
    assert "{not an event, just text" in lines
    assert any(e["type"] == "tool_use" and e["data"]["name"] == "Bash" for e in events)
    assert any(e["type"] == "assistant" for e in events)
    done = events[-1]["data"]
    assert done["result"]["answer"] == 42
    task = await server.task(done["task_id"])
    assert task["result"] == {"answer": 42, "task_id": done["task_id"]}


async def test_ctrl_c_stops_remote_task(server: Orchestrator) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "run", "--policy", "slow", "long",
        env={**os.environ, "CBOX_SERVER": server.url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.startswith(b"tick"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert "stopped task" in err.decode()
    _, history = await server.request("GET", "/history?limit=1")
    done = await server.wait_done(history[0]["id"], timeout_s=30)
    assert done["state"] == "stopped"


async def test_doctor_reports_each_check(server: Orchestrator) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "doctor", "--server", server.url,
        env={**server.env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    for name in ("engine", "image", "credential", "workspace", "server"):
        assert f"✓ {name}" in text
    env = {**server.env, "CBOX_IMAGE": "cbox-sandbox:does-not-exist"}
    env.pop("ANTHROPIC_API_KEY")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "doctor", "--server", "http://127.0.0.1:9",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 1
    assert "✗ image" in text and "cbox image build" in text
    assert "✗ credential" in text
    assert "✗ server" in text
