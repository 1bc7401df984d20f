"""The warm pool: containers made ahead of their task, each for one task only.

What must hold: a task that takes a warm container runs exactly as a cold one
would (its own command, task file, uid, workspace, gateway token and budget);
a warm container holds no task until it is taken, serves one task and is then
removed; nothing warm outlives the orchestrator, and a restart clears what a
killed one left.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import WORKSPACE_UID
from tests.fakes.anthropic import FakeAnthropic, Text
from tests.orch import Orchestrator
from tests.test_orchestrator import loop_script

PROBE = (
    'cat /cbox/task.json; echo "uid=$(id -u)"; echo "stdin=$(cat)"; '
    'echo "$CBOX_TASK_ID" > "/workspace/ran-$CBOX_TASK_ID"'
)
POLICIES = {
    "probe": f'workspace = "rw"\nagent = "command"\ncommand = ["sh", "-c", {json.dumps(PROBE)}]\n',
    "sleeper": 'workspace = "ro"\nagent = "command"\ncommand = ["sleep", "600"]\n',
}
POOL_ON = {"CBOX_WARM_POOL": "1"}


def inspect(container_id: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True,
                         check=True).stdout
    return dict(json.loads(out)[0])


async def wait_warm(orch: Orchestrator, policy: str = "default", ready: int = 1,
                    timeout_s: float = 60) -> list[str]:
    """The warm containers of a policy, once the server counts `ready` in all (/healthz);
    the default shape (default policy, WORKSPACE_DIR) has one of its own."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = orch.warm_containers(policy)
        _, health = await orch.request("GET", "/healthz")
        if found and health["warm"] >= ready:
            return found
        assert time.monotonic() < deadline, f"no warm container: {orch.log.read_text()[-2000:]}"
        await asyncio.sleep(0.1)


async def events_of(orch: Orchestrator, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) async for e in orch.events(task_id)]


async def test_tasks_take_warm_containers_made_for_them_alone(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    orch = orchestrator_factory(workspace=workspace, policies=POLICIES, env=POOL_ON)
    await orch.start()

    # The first task of a shape runs cold, and makes the pool keep one warm.
    first = await orch.submit("first", policy="probe")
    done = await orch.wait_done(first["id"])
    assert done["state"] == "completed"
    events = await events_of(orch, first["id"])
    assert next(d for t, d in events if t == "running")["warm"] is False

    used: set[str] = set()
    for n in range(2):
        (warm,) = await wait_warm(orch, "probe", ready=2)
        made = inspect(warm)
        # Nothing of any task is in it yet: it only waits for one.
        assert made["Config"]["Cmd"] == ["/usr/local/bin/cbox-await"]
        assert not any(e.startswith("CBOX_TASK_JSON=") for e in made["Config"]["Env"])
        assert made["State"]["Running"] is True
        assert warm not in used

        prompt = f"warm task {n}"
        submitted = time.time()
        task = await orch.submit(prompt, policy="probe")
        assert task["container_id"] == warm, "the task took the warm container"
        done = await orch.wait_done(task["id"])
        assert done["state"] == "completed", done
        assert done["exit_code"] == 0
        events = await events_of(orch, task["id"])
        running = next(d for t, d in events if t == "running")
        assert running == {"container_id": warm[:12], "mount_mode": "rw", "warm": True}
        lines = [d["line"] for t, d in events if t == "output"]
        task_file = json.loads(lines[0])
        assert task_file["task_id"] == task["id"]
        assert task_file["prompt"] == prompt
        assert task_file["policy"] == "probe"
        assert lines[1:] == [f"uid={WORKSPACE_UID}", "stdin="]
        written = workspace / f"ran-{task['id']}"
        assert written.read_text().strip() == task["id"]
        assert written.stat().st_uid == WORKSPACE_UID
        created = made["Created"]
        assert time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) <= submitted + 1
        used.add(warm)
        # Served once, then gone like any task container.
        deadline = time.monotonic() + 30
        while warm in orch.warm_containers("probe"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert len(used) == 2


async def test_warm_claude_task_uses_its_own_token_and_budget(
    orchestrator_factory: type[Orchestrator], workspace: Path, fake_api: FakeAnthropic,
    marker: str,
) -> None:
    # The default shape (default policy, WORKSPACE_DIR) is kept warm from the start.
    orch = orchestrator_factory(workspace=workspace, env=POOL_ON)
    await orch.start()
    (warm,) = await wait_warm(orch)
    fake_api.script(marker, [Text("answered from a warm box")])
    task = await orch.submit(f"{marker} answer")
    assert task["container_id"] == warm
    done = await orch.wait_done(task["id"])
    assert done["state"] == "completed", done
    assert done["result"] == "answered from a warm box"
    assert done["gateway_usage"]["requests"] >= 1

    # The budget comes with the task, not with the container made before it.
    (warm,) = await wait_warm(orch)
    fake_api.script(marker + "-b", loop_script(marker + "-b"))
    task = await orch.submit(f"{marker}-b loop", max_tokens=50)
    assert task["container_id"] == warm
    done = await orch.wait_done(task["id"], timeout_s=120)
    assert done["state"] == "stopped"
    assert done["error"].startswith("budget exceeded:")


async def test_stopping_a_queued_task_removes_the_warm_container_it_took(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    orch = orchestrator_factory(workspace=workspace, policies=POLICIES, env=POOL_ON,
                                max_concurrent=1)
    await orch.start()
    first = await orch.submit("warm up the probe shape", policy="probe")
    await orch.wait_done(first["id"])
    (warm,) = await wait_warm(orch, "probe", ready=2)
    blocker = await orch.submit("hold the only slot", policy="sleeper")
    queued = await orch.submit("wait behind it", policy="probe")
    assert queued["state"] == "queued"
    assert queued["container_id"] == warm
    status, stopped = await orch.request("POST", f"/tasks/{queued['id']}/stop")
    assert status == 200, stopped
    done = await orch.wait_done(queued["id"])
    assert done["state"] == "stopped"
    deadline = time.monotonic() + 30
    while subprocess.run(["docker", "ps", "-aq", "--filter", f"id={warm}"],
                         capture_output=True, text=True, check=False).stdout.strip():
        assert time.monotonic() < deadline, "the taken warm container was not removed"
        await asyncio.sleep(0.1)
    assert not (workspace / f"ran-{queued['id']}").exists()
    await orch.request("POST", f"/tasks/{blocker['id']}/stop")
    await orch.wait_done(blocker["id"])


async def test_no_warm_container_outlives_the_orchestrator(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    orch = orchestrator_factory(workspace=workspace, env=POOL_ON)
    await orch.start()
    (warm,) = await wait_warm(orch)
    networks = orch.networks()
    assert networks
    # A clean stop removes them.
    await orch.stop()
    assert orch.warm_containers() == []
    assert orch.networks() == []

    # A killed orchestrator leaves one behind; the next start removes it before anything.
    await orch.start()
    (warm,) = await wait_warm(orch)
    orch.kill9()
    assert orch.warm_containers() == [warm]
    orch.env["CBOX_WARM_POOL"] = "0"
    await orch.start()
    assert orch.warm_containers() == []
    assert orch.networks() == []
