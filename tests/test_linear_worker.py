"""Issue: the Linear worker. `cbox worker linear` as a subprocess, a fake Linear
that validates every document against Linear's real schema, and (for the runs)
a real `cbox serve` with real containers.

Command-agent policies make the runs quick and model-free; one test runs the
real Claude Code CLI against the fake model to get a real answer and cost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from graphql import parse, validate

from cbox.integrations import linear_report
from cbox.integrations.linear_api import DOCUMENTS, LinearApi
from tests.fakes.anthropic import FakeAnthropic, Text
from tests.fakes.linear import API_KEY, FakeLinear, Issue, Label, Team, linear_schema
from tests.orch import Orchestrator

ANSWER = "All done: the flux capacitor is fixed."
POLICIES = {
    "ok": "agent = 'command'\ntimeout_s = 120\ncommand = ['sh', '-c', '''echo working; "
    f"echo '{{\"event\": \"result\", \"data\": {{\"result\": \"{ANSWER}\"}}}}' ''']\n",
    # Read-only, so the workspace lock lets several run at once.
    "slow": "agent = 'command'\nworkspace = 'ro'\ntimeout_s = 120\n"
    "command = ['sh', '-c', '''sleep 4; "
    f"echo '{{\"event\": \"result\", \"data\": {{\"result\": \"{ANSWER}\"}}}}' ''']\n",
    "broken": "agent = 'command'\ncommand = ['sh', '-c', 'echo trying; exit 1']\n",
}


@pytest.fixture
async def linear() -> AsyncIterator[FakeLinear]:
    fake = FakeLinear()
    await fake.start()
    yield fake
    assert fake.invalid == [], "the worker sent a document Linear's schema refuses"
    await fake.close()


@pytest.fixture
def team(linear: FakeLinear) -> Team:
    return linear.add_team("ENG", "Engineering")


@pytest.fixture
def label(linear: FakeLinear, team: Team) -> Label:
    return linear.add_label("claude")


@pytest.fixture
async def orch(orchestrator_factory: type[Orchestrator], tmp_path: Path) -> Orchestrator:
    # The server generates its token into its token file, and the worker finds it there.
    server = _server(orchestrator_factory, tmp_path, token="")
    await server.start()
    return server


def _server(
    factory: type[Orchestrator], tmp_path: Path, max_concurrent: int = 4, token: str | None = None
) -> Orchestrator:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    for name, text in POLICIES.items():
        (policies / f"{name}.toml").write_text(text)
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    env = {"CBOX_POLICIES_DIR": str(policies)}
    if token is not None:
        env["CBOX_API_TOKEN"] = token
    return factory(workspace=ws, max_concurrent=max_concurrent, env=env)


def worker_env(linear: FakeLinear, server: Orchestrator | str, **extra: str) -> dict[str, str]:
    """The worker's environment; the server's token as it would find it on the machine:
    in CBOX_API_TOKEN if the server was given one, else through CBOX_API_TOKEN_FILE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAR_", "CBOX_"))}
    env.update({
        "LINEAR_API_URL": linear.url,
        "LINEAR_API_KEY": API_KEY,
        "LINEAR_TEAM_ID": "ENG",
        "CBOX_SERVER": server if isinstance(server, str) else server.url,
    })
    if isinstance(server, Orchestrator):
        given = server.env.get("CBOX_API_TOKEN")
        if given:
            env["CBOX_API_TOKEN"] = given
        else:
            env["CBOX_API_TOKEN_FILE"] = server.env["CBOX_API_TOKEN_FILE"]
    env.update(extra)
    return env


async def start_worker(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "worker", "linear", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def worker(
    env: dict[str, str], *args: str, timeout_s: float = 240
) -> tuple[int, str, str]:
    proc = await start_worker(env, *args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def tasks_for(server: Orchestrator, issue: Issue) -> list[dict[str, Any]]:
    _, body = await server.request("GET", "/tasks", params={"limit": "500"})
    return [t for t in body["tasks"] if t["metadata"].get("linear_issue_id") == issue.id]


def result_comments(linear: FakeLinear, issue: Issue) -> list[str]:
    return [c.body for c in linear.comments_on(issue) if "<!-- cbox:task_" in c.body]


async def until(predicate: Any, timeout_s: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------ no orchestrator


def test_every_document_validates_against_linears_schema() -> None:
    schema = linear_schema()
    for name, text in DOCUMENTS.items():
        assert validate(schema, parse(text)) == [], name


async def test_dry_run_lists_in_priority_order_and_changes_nothing(
    linear: FakeLinear, team: Team, label: Label
) -> None:
    other = linear.add_label("other")
    none_old = linear.add_issue(team, "no priority, oldest", priority=0, labels=(label,))
    low = linear.add_issue(team, "low", priority=4, labels=(label,))
    urgent_old = linear.add_issue(team, "urgent, older", priority=1, labels=(label,))
    medium = linear.add_issue(team, "medium", priority=3, labels=(label,))
    high = linear.add_issue(team, "high, in backlog", priority=2, state="Backlog", labels=(label,))
    urgent_new = linear.add_issue(team, "urgent, newer", priority=1, labels=(label, other))
    linear.add_issue(team, "unlabelled", priority=1, labels=(other,))
    linear.add_issue(team, "already in progress", priority=1, state="In Progress", labels=(label,))
    linear.add_issue(team, "done", priority=1, state="Done", labels=(label,))
    ops = linear.add_team("OPS", "Operations")
    linear.add_issue(ops, "other team", priority=1, labels=(label,))

    code, out, err = await worker(worker_env(linear, "http://127.0.0.1:9"), "--dry-run")

    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    listed = [row[1] for row in rows if row and row[0].rstrip(".").isdigit()]
    expected = [urgent_old, urgent_new, high, medium, low, none_old]
    assert listed == [i.identifier for i in expected]
    assert linear.mutations == []
    assert all(r.authorization == API_KEY for r in linear.requests)  # no "Bearer"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"LINEAR_API_KEY": ""}, "LINEAR_API_KEY is not set"),
        ({"LINEAR_API_KEY": "lin_api_wrong"}, "Linear refused LINEAR_API_KEY"),
        ({"LINEAR_TEAM_ID": "NOPE"}, "Linear team 'NOPE' not found"),
        ({"LINEAR_LABEL": "no-such-label"}, "Linear label 'no-such-label' not found"),
    ],
)
async def test_bad_configuration_fails_at_start_in_one_line(
    linear: FakeLinear, team: Team, label: Label, change: dict[str, str], needle: str
) -> None:
    linear.add_issue(team, "must stay untouched", priority=1, labels=(label,))
    env = worker_env(linear, "http://127.0.0.1:9")
    env.update(change)
    code, _, err = await worker(env, timeout_s=60)
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert needle in err
    assert "Traceback" not in err
    assert linear.mutations == []


async def test_rate_limit_waits_for_the_reset(linear: FakeLinear, team: Team) -> None:
    linear.rate_limit_once(reset_in_s=1.5)
    async with LinearApi(linear.url, API_KEY) as api:
        assert await api.viewer_name() == "Cbox Bot"
    [(refused_at, reset_at)] = linear.rate_limits
    refused, retried = linear.requests[-2:]
    assert refused.status == 429
    assert retried.status == 200
    assert retried.at_s >= reset_at - 0.05  # the millisecond header rounds down
    assert reset_at - refused_at >= 1.4


def test_result_comment_format() -> None:
    task = {"id": "task_1", "state": "completed", "duration_ms": 61_500, "num_turns": 3,
            "cost_usd": 0.01234, "result": "Fixed."}
    body = linear_report.comment_body(
        task, answer=linear_report.answer_of(task, []), public_url="https://cbox.example/"
    )
    assert "Fixed." in body
    assert "| Cost | $0.0123 |" in body and "| Turns | 3 |" in body
    assert "| Duration | 1.0 min |" not in body and "61.5 s" in body
    assert "https://cbox.example/tasks/task_1" in body
    assert body.endswith("<!-- cbox:task_1 -->")


# ---------------------------------------------------------------- full runs


@pytest.mark.docker
async def test_one_issue_goes_in_progress_then_in_review_with_the_answer(
    linear: FakeLinear, team: Team, label: Label, orch: Orchestrator
) -> None:
    issue = linear.add_issue(team, "Fix the flux capacitor", priority=2, labels=(label,),
                             description="It sparks when it should not.")
    linear.add_comment(issue, "It started after the last deploy.")
    later = linear.add_issue(team, "A lower priority one", priority=4, labels=(label,))
    linear.rate_limit_once(reset_in_s=1.0)

    code, _, err = await worker(
        worker_env(linear, orch), "--policy", "ok", "--public-url", "https://cbox.example"
    )

    assert code == 0, err
    assert linear.moves(issue) == ["In Progress", "In Review"]
    assert linear.moves(later) == []  # one issue per run
    [body] = result_comments(linear, issue)
    [task] = await tasks_for(orch, issue)
    assert ANSWER in body
    assert "| Outcome | completed |" in body
    assert f"https://cbox.example/tasks/{task['id']}" in body
    assert task["idempotency_key"] == issue.id
    assert task["metadata"]["linear_issue"] == issue.identifier
    assert task["policy"] == "ok"
    for context in (issue.identifier, issue.title, "It sparks", "after the last deploy",
                    "https://linear.app/fake/issue/"):
        assert context in task["prompt"]
    assert linear.rate_limits  # was hit, and waited out


@pytest.mark.docker
async def test_failed_task_sends_the_issue_back_to_todo_with_the_reason(
    linear: FakeLinear, team: Team, label: Label, orch: Orchestrator
) -> None:
    breaks = linear.add_label("breaks-things", team)
    issue = linear.add_issue(team, "This will fail", priority=1, labels=(label, breaks))
    code, _, err = await worker(
        worker_env(linear, orch), "--policy", "ok", "--label-policy", "breaks-things=broken"
    )
    assert code == 1, err
    [task] = await tasks_for(orch, issue)
    assert task["policy"] == "broken"  # the label's policy beats --policy
    assert linear.moves(issue) == ["In Progress", "Todo"]
    [body] = result_comments(linear, issue)
    assert "could not finish" in body
    assert "exited with code 1" in body
    assert "trying" in body  # the output tail stands in for an answer


@pytest.mark.docker
@pytest.mark.slow
async def test_real_claude_code_answer_and_cost(
    linear: FakeLinear, team: Team, label: Label, orch: Orchestrator,
    fake_api: FakeAnthropic, marker: str,
) -> None:
    fake_api.script(marker, [Text(f"{marker}: I looked, and the answer is 42.")])
    issue = linear.add_issue(team, f"{marker} find the answer", priority=1, labels=(label,))
    code, _, err = await worker(worker_env(linear, orch))
    assert code == 0, err
    assert linear.moves(issue) == ["In Progress", "In Review"]
    [body] = result_comments(linear, issue)
    assert "the answer is 42" in body
    cost_row = next(line for line in body.splitlines() if line.startswith("| Cost |"))
    assert "$" in cost_row, body
    assert "| Turns | 1 |" in body


@pytest.mark.docker
@pytest.mark.slow
async def test_two_daemons_never_run_the_same_issue_twice(
    linear: FakeLinear, team: Team, label: Label, orch: Orchestrator
) -> None:
    issues = [linear.add_issue(team, f"job {n}", priority=2, labels=(label,)) for n in range(4)]
    env = worker_env(linear, orch)
    args = ("--daemon", "--interval", "0.3", "--max-parallel", "2", "--policy", "slow")
    daemons = [await start_worker(env, *args) for _ in range(2)]
    try:
        await until(lambda: all(linear.state_name(i) == "In Review" for i in issues),
                    timeout_s=180, what="every issue In Review")
    finally:
        for proc in daemons:
            proc.send_signal(signal.SIGTERM)
        results = [await asyncio.wait_for(p.communicate(), 60) for p in daemons]
    assert [p.returncode for p in daemons] == [0, 0], results
    for issue in issues:
        assert len(await tasks_for(orch, issue)) == 1, issue.identifier
        assert len(result_comments(linear, issue)) == 1, issue.identifier
    logs = b"".join(err for _, err in results).decode()
    assert logs.count("submitted as task") == 4
    assert "Traceback" not in logs and "destroyed" not in logs


@pytest.mark.docker
@pytest.mark.slow
async def test_restart_posts_the_result_of_a_dead_workers_task_once(
    linear: FakeLinear, team: Team, label: Label, orch: Orchestrator
) -> None:
    issue = linear.add_issue(team, "Survive a crash", priority=1, labels=(label,))
    env = worker_env(linear, orch)
    proc = await start_worker(env, "--policy", "slow")
    await until(lambda: tasks_for(orch, issue), what="the task to be submitted")
    proc.kill()
    await proc.wait()
    [task] = await tasks_for(orch, issue)
    await orch.wait_done(task["id"])
    assert linear.state_name(issue) == "In Progress"
    assert result_comments(linear, issue) == []

    code, _, err = await worker(env, "--policy", "slow")
    assert code == 0, err
    assert "recovering task" in err
    assert linear.state_name(issue) == "In Review"
    assert len(result_comments(linear, issue)) == 1
    assert len(await tasks_for(orch, issue)) == 1  # not run again

    before = len(linear.mutations)
    code, _, err = await worker(env, "--policy", "slow")
    assert code == 0, err
    assert len(linear.mutations) == before  # nothing posted or moved twice


@pytest.mark.docker
async def test_waits_for_an_orchestrator_that_starts_late(
    linear: FakeLinear, team: Team, label: Label,
    orchestrator_factory: type[Orchestrator], tmp_path: Path,
) -> None:
    issue = linear.add_issue(team, "Patience", priority=1, labels=(label,))
    server = _server(orchestrator_factory, tmp_path)
    proc = await start_worker(worker_env(linear, server), "--policy", "ok")
    await asyncio.sleep(1.5)  # the worker is now retrying against a closed port
    assert linear.mutations == []  # nothing claimed while the orchestrator is away
    await server.start()
    _, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()
    assert linear.moves(issue) == ["In Progress", "In Review"]
