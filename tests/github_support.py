"""Helpers shared by the GitHub worker's tests (fixtures: `tests/github_fixtures.py`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.fakes.github import TOKEN, FakeGitHub
from tests.fakes.github import Issue as FakeIssue
from tests.fakes.github import Repo as FakeRepo
from tests.orch import Orchestrator

ANSWER = "All done: the flux capacitor is fixed."
_RESULT = f"echo '{{\"event\": \"result\", \"data\": {{\"result\": \"{ANSWER}\"}}}}'"
POLICIES = {
    "ok": f"agent = 'command'\ntimeout_s = 120\ncommand = ['sh', '-c', '''echo working; "
    f"{_RESULT} ''']\n",
    "slow": "agent = 'command'\nworkspace = 'ro'\ntimeout_s = 120\n"
    f"command = ['sh', '-c', '''sleep 3; {_RESULT} ''']\n",
    "broken": "agent = 'command'\ncommand = ['sh', '-c', 'echo trying; exit 1']\n",
    "iso-edit": "agent = 'command'\nworkspace = 'isolated'\ntimeout_s = 120\n"
    "command = ['sh', '-c', '''echo fixed >> README.md; " + _RESULT + " ''']\n",
    "iso-noop": "agent = 'command'\nworkspace = 'isolated'\ntimeout_s = 120\n"
    f"command = ['sh', '-c', '''{_RESULT} ''']\n",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def worker_env(gh: FakeGitHub, server: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CBOX_"))}
    env.update({"GITHUB_API_URL": gh.url, "GITHUB_TOKEN": TOKEN, "GITHUB_REPOS": "acme/rocket",
                "CBOX_SERVER": server, **extra})
    return env


async def start_worker(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "worker", "github", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def worker(env: dict[str, str], *args: str, timeout_s: float = 240) -> tuple[int, str, str]:
    proc = await start_worker(env, *args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def tasks_for(server: Orchestrator, issue: FakeIssue) -> list[dict[str, Any]]:
    _, body = await server.request("GET", "/tasks", params={"limit": "500"})
    found = [t for t in body["tasks"] if t["metadata"].get("github_issue_id") == issue.node_id]
    return sorted(found, key=lambda t: t["created_at"])


def trackers(gh: FakeGitHub, repo: FakeRepo, issue: FakeIssue) -> list[Any]:
    return [c for c in gh.comments_on(repo, issue) if "<!-- cbox:task_" in c.body]


async def until(predicate: Any, timeout_s: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
