"""Issue: orchestrator core. A real `cbox serve`, the real engine, the real CLI, the fake API."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiohttp
import pytest

from cbox.cli.client import SseEvent
from cbox.orchestrator.tasklog import TAIL_EVENTS
from tests.fakes.anthropic import FakeAnthropic, Text, ToolUse
from tests.orch import FAKE_KEY, Orchestrator

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def loop_script(marker: str, seconds: int = 120) -> list[ToolUse | Text]:
    """A model that starts a long Bash loop (a standalone `sleep` is refused by the CLI)."""
    command = f"for i in $(seq 1 {seconds * 10}); do echo tick $i; sleep 0.1; done"
    return [ToolUse("Bash", {"command": command, "description": "wait", "timeout": 600000}),
            Text("finished")]


async def test_seed_post_task_streams_start_output_done(
    orchestrator: Orchestrator, fake_api: FakeAnthropic, marker: str
) -> None:
    fake_api.script(marker, [Text("Hello from the fake model.\nSecond line.")])
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-N", "-X", "POST", f"{orchestrator.url}/task",
        "-H", f"Authorization: Bearer {orchestrator.token}",
        "-H", "Content-Type: application/json", "-d", f'{{"prompt": "{marker} say hello"}}',
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode()
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names[0] == "start"
    assert "output" in names
    assert names[-1] == "done"
    assert "Hello from the fake model." in text
    assert '"state":"completed"' in text and '"exit_code":0' in text
    # The credential reached upstream; the container only ever held a task token.
    [request] = fake_api.requests_with(marker)
    assert request.headers.get("x-api-key") == FAKE_KEY
    assert await orchestrator.no_containers_left()


async def test_three_tasks_cap_two(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, fake_api: FakeAnthropic, marker: str
) -> None:
    workspaces = []
    for n in range(3):
        ws = tmp_path / f"ws{n}"
        ws.mkdir()
        workspaces.append(ws)
    orch = orchestrator_factory(workspace=tmp_path, max_concurrent=2)
    await orch.start()
    fake_api.script(marker, loop_script(marker, seconds=4))
    tasks = [
        await orch.submit(f"{marker} task {n}", workspace=str(ws))
        for n, ws in enumerate(workspaces)
    ]
    third = await orch.task(tasks[2]["id"])
    running = [await orch.wait_state(t["id"], {"running"}) for t in tasks[:2]]
    assert all(t["state"] == "running" for t in running)
    third = await orch.task(tasks[2]["id"])
    assert third["state"] == "queued" and third["queue_position"] == 1
    done = [await orch.wait_done(t["id"]) for t in tasks]
    assert [d["state"] for d in done] == ["completed"] * 3
    finals = [await orch.task(t["id"]) for t in tasks]
    assert finals[2]["started_at"] >= min(f["finished_at"] for f in finals[:2])
    assert await orch.no_containers_left()


async def test_stop_running_task(
    orchestrator: Orchestrator, fake_api: FakeAnthropic, marker: str
) -> None:
    fake_api.script(marker, loop_script(marker))
    task = await orchestrator.submit(f"{marker} loop")
    async for event in orchestrator.events(task["id"]):
        if event.type == "tool_use":
            break
    status, body = await orchestrator.request("POST", f"/tasks/{task['id']}/stop")
    assert status == 200, body
    done = await orchestrator.wait_done(task["id"], timeout_s=30)
    assert done["state"] == "stopped"
    assert await orchestrator.no_containers_left()


async def test_timeout(orchestrator: Orchestrator, fake_api: FakeAnthropic, marker: str) -> None:
    fake_api.script(marker, loop_script(marker))
    task = await orchestrator.submit(f"{marker} loop", timeout_s=8)
    done = await orchestrator.wait_done(task["id"], timeout_s=60)
    assert done["state"] == "timed_out"
    assert "timed out" in done["error"]
    assert await orchestrator.no_containers_left()


async def test_reconnect_with_last_event_id_has_no_gap_or_duplicate(
    orchestrator: Orchestrator, fake_api: FakeAnthropic, marker: str
) -> None:
    fake_api.script(marker, loop_script(marker, seconds=3))
    task = await orchestrator.submit(f"{marker} loop")
    first: list[int] = []
    async for event in orchestrator.events(task["id"]):
        assert event.id is not None
        first.append(event.id)
        if event.type == "tool_use":
            break  # disconnect mid-task
    rest: list[int] = []
    async for event in orchestrator.events(
        task["id"], headers={"Last-Event-ID": str(first[-1])}
    ):
        assert event.id is not None
        rest.append(event.id)
    seqs = first + rest
    assert seqs == list(range(1, len(seqs) + 1))
    _, stored = await orchestrator.request("GET", f"/tasks/{task['id']}")
    assert stored["last_seq"] == seqs[-1]


async def test_kill9_restart_finishes_running_and_queued(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, fake_api: FakeAnthropic, marker: str
) -> None:
    orch = orchestrator_factory(workspace=tmp_path, max_concurrent=1)
    await orch.start()
    fake_api.script(marker, loop_script(marker, seconds=6))
    running = await orch.submit(f"{marker} first")
    queued = await orch.submit(f"{marker} second", read_only=True)
    await orch.wait_state(running["id"], {"running"})
    async for event in orch.events(running["id"]):
        if event.type == "tool_use":
            break
    orch.kill9()
    assert len(orch.containers()) == 1  # the box outlives its orchestrator
    await orch.start()
    first = await orch.wait_done(running["id"])
    second = await orch.wait_done(queued["id"])
    assert first["state"] == "completed", first
    assert second["state"] == "completed", second
    events = [e async for e in orch.events(running["id"])]
    seqs = [e.id for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e.type for e in events].count("done") == 1
    assert any(e.type == "result" for e in events)
    assert await orch.no_containers_left()


async def test_fifty_thousand_lines_in_order(
    orchestrator_factory: type[Orchestrator], tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "lines.toml").write_text(
        'agent = "command"\ncommand = ["seq", "1", "50000"]\nworkspace = "ro"\n'
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    orch = orchestrator_factory(workspace=ws, env={"CBOX_POLICIES_DIR": str(policies)})
    await orch.start()
    task = await orch.submit("print lines", policy="lines")
    lines = [
        e.data["line"] async for e in orch.events(task["id"]) if e.type == "output"
    ]
    assert lines == [str(n) for n in range(1, 50_001)]
    final = await orch.task(task["id"])
    assert final["state"] == "completed"


async def test_late_followers_replay_past_the_in_memory_tail(
    orchestrator_factory: type[Orchestrator], tmp_path: Path
) -> None:
    """An active task keeps only its newest events in memory; the rest replays from SQLite.

    Followers joining late (from 0, from the middle), and a restarted
    orchestrator that re-adopts the task with only the stored tail loaded,
    must still see every event once, in order.
    """
    n = 3 * TAIL_EVENTS
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "chatty.toml").write_text(
        'agent = "command"\n'
        f'command = ["sh", "-c", "seq 1 {n}; sleep 120"]\n'
        'workspace = "ro"\n'
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    orch = orchestrator_factory(workspace=ws, env={"CBOX_POLICIES_DIR": str(policies)})
    await orch.start()
    task = await orch.submit("print lines, then wait", policy="chatty")

    async def until_last_line_stored() -> None:
        while True:  # /raw flushes first, so the line is in the store once it is served
            _, raw = await orch.request("GET", f"/tasks/{task['id']}/raw?after={n - 1}")
            if str(raw).strip() == str(n):  # `request` decodes the one line as JSON
                return
            await asyncio.sleep(0.1)

    async def follow(after: int) -> list[SseEvent]:
        seen = []
        async for event in orch.events(task["id"], after=after):
            seen.append(event)
            if event.type == "output" and event.data["line"] == str(n):
                return seen
        raise AssertionError("the stream ended before the last line")

    def check(events: list[SseEvent], after: int) -> None:
        assert [e.id for e in events] == list(range(after + 1, after + len(events) + 1))
        lines = [int(e.data["line"]) for e in events if e.type == "output"]
        assert lines == list(range(lines[0], n + 1))
        assert after > 0 or lines[0] == 1

    await asyncio.wait_for(until_last_line_stored(), 120)
    for after in (0, 3, n - 100):
        check(await follow(after), after)
    orch.kill9()
    await orch.start()
    for after in (0, n // 2):
        check(await follow(after), after)
    await orch.request("POST", f"/tasks/{task['id']}/stop")
    events = [e async for e in orch.events(task["id"])]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert [e.data["line"] for e in events if e.type == "output"] == [
        str(i) for i in range(1, n + 1)
    ]
    assert [e.type for e in events].count("done") == 1
    _, raw = await orch.request("GET", f"/tasks/{task['id']}/raw?limit=100000")
    assert raw == "".join(f"{i}\n" for i in range(1, n + 1))


async def test_quiet_task_gets_keepalives_between_events(
    orchestrator_factory: type[Orchestrator], tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "quiet.toml").write_text(
        'agent = "command"\ncommand = ["sh", "-c", "echo a; sleep 2; echo b"]\n'
        'workspace = "ro"\n'
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    orch = orchestrator_factory(
        workspace=ws, env={"CBOX_POLICIES_DIR": str(policies), "CBOX_KEEPALIVE_S": "0.2"}
    )
    await orch.start()
    task = await orch.submit("be quiet", policy="quiet")
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
        f"{orch.url}/tasks/{task['id']}/events", headers=orch.headers
    ) as resp:
        body = (await resp.read()).decode()
    between = body[body.index('"line":"a"') : body.index('"line":"b"')]
    assert ": keep-alive\n\n" in between
    assert body.rstrip().splitlines()[-2] == "event: done"


async def test_interleaved_stdout_and_stderr_each_arrive_whole_and_in_order(
    orchestrator_factory: type[Orchestrator], tmp_path: Path
) -> None:
    """Both streams come demultiplexed from one engine log stream, with their own partial lines."""
    script = (
        "for i in $(seq 1 3000); do echo out$i; echo err$i >&2; done; "
        "printf tail-out; printf tail-err >&2"
    )
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "both.toml").write_text(
        f'agent = "command"\ncommand = ["sh", "-c", "{script}"]\nworkspace = "ro"\n'
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    orch = orchestrator_factory(workspace=ws, env={"CBOX_POLICIES_DIR": str(policies)})
    await orch.start()
    task = await orch.submit("both streams", policy="both")
    events = [e async for e in orch.events(task["id"])]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    out = [e.data["line"] for e in events if e.type == "output"]
    err = [e.data["line"] for e in events if e.type == "stderr"]
    assert out == [f"out{i}" for i in range(1, 3001)] + ["tail-out"]
    assert err == [f"err{i}" for i in range(1, 3001)] + ["tail-err"]
    _, raw = await orch.request("GET", f"/tasks/{task['id']}/raw")
    assert raw == "".join(f"out{i}\n" for i in range(1, 3001)) + "tail-out\n"


async def test_unknown_containers_removed_on_start(
    orchestrator_factory: type[Orchestrator], workspace: Path, image: str
) -> None:
    orch = orchestrator_factory(workspace=workspace)
    subprocess.run(
        ["docker", "run", "-d", "--label", "dev.cbox.managed=true",
         "--label", f"dev.cbox.instance={orch.instance}", "--label", "dev.cbox.task-id=task_x",
         image, "sleep", "300"],
        check=True, capture_output=True,
    )
    assert len(orch.containers()) == 1
    await orch.start()
    assert orch.containers() == []


async def test_gateway_counts_usage_and_enforces_budget(
    orchestrator: Orchestrator, fake_api: FakeAnthropic, marker: str
) -> None:
    fake_api.script(marker, [Text("a short answer")])
    task = await orchestrator.submit(f"{marker} answer briefly")
    done = await orchestrator.wait_done(task["id"])
    assert done["state"] == "completed"
    usage = done["gateway_usage"]
    assert usage["requests"] >= 1
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0
    assert usage["cost_usd"] > 0
    assert (await orchestrator.task(task["id"]))["gateway_usage"] == usage

    # A budget smaller than one call: the task is stopped, and says why.
    fake_api.script(marker + "-b", loop_script(marker + "-b"))
    task = await orchestrator.submit(f"{marker}-b loop", max_tokens=50)
    done = await orchestrator.wait_done(task["id"], timeout_s=120)
    assert done["state"] == "stopped"
    assert done["error"].startswith("budget exceeded:")
    assert done["gateway_usage"]["total_tokens"] > 50
