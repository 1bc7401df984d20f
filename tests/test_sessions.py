"""Issue: sessions. Real `cbox serve`, real engine, real Claude Code, the fake API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.anthropic import FakeAnthropic, Text
from tests.orch import Orchestrator

pytestmark = [pytest.mark.docker]

POLICIES = {
    # Read-only, so the one-writer-per-workspace lock never holds anything back.
    "nap": 'agent = "command"\nworkspace = "ro"\n'
    'command = ["sh", "-c", "sleep 2; echo rested"]\n',
    "long": 'agent = "command"\nworkspace = "ro"\ncommand = ["sh", "-c", '
    '"for i in $(seq 1 600); do echo tick $i; sleep 0.1; done"]\n',
}


def volumes(orch: Orchestrator) -> list[str]:
    return subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", orch.label_filter],
        capture_output=True, text=True, check=True,
    ).stdout.split()


@pytest.fixture
async def server(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, workspace: Path
) -> AsyncIterator[Orchestrator]:
    orch = orchestrator_factory(
        workspace=workspace, max_concurrent=3, policies=POLICIES
    )
    await orch.start()
    yield orch
    await orch.destroy()
    if names := volumes(orch):
        subprocess.run(["docker", "volume", "rm", "-f", *names], capture_output=True, check=False)


async def cbox(server: Orchestrator, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", *args,
        env=server.client_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_second_task_continues_the_conversation(
    server: Orchestrator, fake_api: FakeAnthropic, marker: str
) -> None:
    first, second = f"{marker}-one", f"{marker}-two"
    fake_api.script(first, [Text("Noted: PAPAYA.")])
    # Task 2's requests already hold task 1's assistant turn, so its reply is turn 1.
    fake_api.script(second, [Text("(unused)"), Text("The word was PAPAYA.")])
    code, out, err = await cbox(
        server, "run", "--session", "fruit", f"{first} remember the word PAPAYA"
    )
    assert code == 0, (out, err)
    assert "new conversation" in out
    code, out, err = await cbox(server, "run", "--session", "fruit", f"{second} which word?")
    assert code == 0, (out, err)
    assert "resuming conversation" in out
    assert "The word was PAPAYA." in out

    sent = fake_api.requests_with(second)
    assert sent
    for request in sent:
        text = str(request.body["messages"])
        assert "remember the word PAPAYA" in text
        assert "Noted: PAPAYA." in text
    _, body = await server.request("GET", "/sessions/fruit")
    t1, t2 = body["tasks"]
    assert t1["prompt"].startswith(first)
    assert t2["prompt"].startswith(second)
    assert t1["claude_session_id"]
    assert t2["claude_session_id"] == t1["claude_session_id"]
    assert body["claude_session_id"] == t1["claude_session_id"]
    assert body["last_task_id"] == t2["id"]

    # Sessions live in SQLite: a restarted orchestrator still knows this one.
    await server.stop()
    await server.start()
    code, out, _ = await cbox(server, "sessions")
    assert code == 0
    assert "fruit" in out
    assert t2["id"] in out


async def test_two_tasks_of_one_session_are_serialised(server: Orchestrator) -> None:
    a = await server.submit("a", policy="nap", session="serial")
    b = await server.submit("b", policy="nap", session="serial")
    other = await server.submit("c", policy="nap", session="elsewhere")
    await server.wait_state(a["id"], {"running"})
    await server.wait_state(other["id"], {"running", "completed"})
    assert (await server.task(b["id"]))["state"] == "queued"
    for task in (a, b, other):
        done = await server.wait_done(task["id"])
        assert done["state"] == "completed", done
    ta, tb, tc = [await server.task(t["id"]) for t in (a, b, other)]
    assert tb["started_at"] >= ta["finished_at"]
    # The cap (3) is not what held b back: another session ran alongside a.
    assert tc["started_at"] < ta["finished_at"]


async def test_delete_session_removes_its_volume(server: Orchestrator) -> None:
    task = await server.submit("x", policy="nap", session="doomed")
    assert (await server.wait_done(task["id"]))["state"] == "completed"
    [volume] = volumes(server)
    assert volume.endswith("-doomed")
    slow = await server.submit("y", policy="long", session="doomed")
    await server.wait_state(slow["id"], {"running"})
    got, answer = await server.request("DELETE", "/sessions/doomed")
    assert got == 409
    assert slow["id"] in answer["error"]["message"]
    await server.request("POST", f"/tasks/{slow['id']}/stop")
    await server.wait_done(slow["id"], timeout_s=60)

    code, out, err = await cbox(server, "sessions", "delete", "doomed")
    assert code == 0, err
    assert volume in out
    assert volumes(server) == []
    got, _ = await server.request("GET", "/sessions/doomed")
    assert got == 404
    code, _, err = await cbox(server, "sessions", "delete", "doomed")
    assert code == 3
    assert "no session named 'doomed'" in err


async def test_lost_or_corrupt_session_fails_clearly(
    server: Orchestrator, fake_api: FakeAnthropic, marker: str, image: str
) -> None:
    fake_api.script(marker, [Text("hello")])
    for name in ("lost", "broken"):
        task = await server.submit(f"{marker} {name} start", session=name)
        assert (await server.wait_done(task["id"]))["state"] == "completed"
    _, lost = await server.request("GET", "/sessions/lost")
    subprocess.run(["docker", "volume", "rm", lost["volume"]], check=True, capture_output=True)
    _, broken = await server.request("GET", "/sessions/broken")
    subprocess.run(
        ["docker", "run", "--rm", "-u", "0:0", "--entrypoint", "sh", "-v", f"{broken['volume']}:/s",
         "--label", "dev.cbox.test=1", image, "-c", "rm -rf /s/projects"],
        check=True, capture_output=True,
    )

    task = await server.submit(f"{marker} lost again", session="lost")
    done = await server.wait_done(task["id"])
    assert done["state"] == "failed"
    assert "volume" in done["error"]
    assert "is gone" in done["error"]
    task = await server.submit(f"{marker} broken again", session="broken")
    done = await server.wait_done(task["id"])
    assert done["state"] == "failed"
    assert "corrupt" in done["error"]
    assert "transcript" in done["error"]
    # Neither was silently started afresh.
    assert not fake_api.requests_with(f"{marker} lost again")
    assert not fake_api.requests_with(f"{marker} broken again")


async def test_bad_session_name_refused(server: Orchestrator) -> None:
    got, answer = await server.request(
        "POST", "/tasks", json={"prompt": "x", "session": "../etc"}
    )
    assert got == 400
    assert "session" in answer["error"]["message"]
