"""Issue: isolated workspaces. Parallel writers on one repository, each on its own branch."""

from __future__ import annotations

import os
import subprocess
from itertools import permutations
from pathlib import Path

import pytest

from tests.conftest import WORKSPACE_GID, WORKSPACE_UID
from tests.fakes.anthropic import FakeAnthropic, Text, ToolUse
from tests.orch import Orchestrator

pytestmark = [pytest.mark.docker]

POLICIES = {
    "iso-noop": 'agent = "command"\nworkspace = "isolated"\ncommand = ["sh", "-c", "echo hi"]\n',
    "iso-edit": 'agent = "command"\nworkspace = "isolated"\n'
    'command = ["sh", "-c", "echo changed >> README.md"]\n',
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(repo), *args],
        capture_output=True, text=True, check=True,
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A user's checkout: one commit, an uncommitted edit, a staged file, an untracked file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hello\n")
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=User", "-c", "user.email=u@example.com", "commit", "-qm", "init")
    (repo / "README.md").write_text("hello\nuncommitted edit\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "untracked.txt").write_text("untracked\n")
    (repo / "debug.log").write_text("ignored\n")
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, WORKSPACE_UID, WORKSPACE_GID)
    # Host-side git runs as the repository's owner, who must reach it (pytest
    # makes its base directories private to root).
    for path in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        path.chmod(path.stat().st_mode | 0o011)
    return repo


@pytest.fixture
async def server(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, repo: Path
) -> Orchestrator:
    orch = orchestrator_factory(
        workspace=repo, max_concurrent=3, policies=POLICIES
    )
    await orch.start()
    return orch


def checkout_state(repo: Path) -> tuple[str, ...]:
    return (
        git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored"),
        git(repo, "rev-parse", "HEAD"),
        git(repo, "symbolic-ref", "HEAD"),
        git(repo, "diff", "--cached"),
        git(repo, "diff"),
        (repo / "README.md").read_text(),
    )


async def test_three_isolated_writers_run_in_parallel(
    server: Orchestrator, fake_api: FakeAnthropic, repo: Path, marker: str, tmp_path: Path
) -> None:
    before = checkout_state(repo)
    wait = "for i in $(seq 1 30); do echo wait $i; sleep 0.1; done"
    tasks = []
    for n in range(3):
        fake_api.script(f"{marker}-{n}", [
            ToolUse("Write", {"file_path": f"/workspace/out-{n}.txt", "content": f"task {n}\n"}),
            ToolUse("Bash", {"command": wait, "description": "wait"}),
            Text(f"wrote out-{n}.txt"),
        ])
        tasks.append(await server.submit(f"{marker}-{n} write a file", policy="isolated"))
    dones = [await server.wait_done(t["id"]) for t in tasks]
    finals = [await server.task(t["id"]) for t in tasks]
    assert [d["state"] for d in dones] == ["completed"] * 3, dones

    for a, b in permutations(finals, 2):
        assert a["started_at"] < b["finished_at"]  # all three overlapped in time

    for n, (done, final) in enumerate(zip(dones, finals, strict=True)):
        branch = f"cbox/{final['id']}"
        assert done["branch"] == branch
        assert final["isolation"]["branch"] == branch
        assert done["commit"] == final["isolation"]["commit"]
        assert git(repo, "rev-parse", branch).strip() == done["commit"]
        assert f"out-{n}.txt" in done["diffstat"]
        assert final["isolation"]["files_changed"] == 1
        assert final["isolation"]["empty"] is False
        files = set(git(repo, "ls-tree", "-r", "--name-only", branch).split())
        # Its own change, plus the user's uncommitted work it started from; no other task's.
        assert files == {".gitignore", "README.md", "staged.txt", "untracked.txt", f"out-{n}.txt"}
        assert git(repo, "show", f"{branch}:out-{n}.txt") == f"task {n}\n"
        assert git(repo, "show", f"{branch}:README.md") == "hello\nuncommitted edit\n"
        assert git(repo, "log", "--format=%an", "-1", branch).strip() == "claude-box agent"
        ref = repo / ".git" / "refs" / "heads" / "cbox" / final["id"]
        assert (ref.stat().st_uid, ref.stat().st_gid) == (WORKSPACE_UID, WORKSPACE_GID)
        assert not (repo / f"out-{n}.txt").exists()

    assert checkout_state(repo) == before
    assert not any((tmp_path / "isolated").iterdir())  # copies cleaned up
    objects = repo / ".git" / "objects"
    assert {p.stat().st_uid for p in objects.rglob("*")} == {WORKSPACE_UID}
    assert await server.no_containers_left()


async def test_no_change_means_no_branch(server: Orchestrator, repo: Path) -> None:
    before = checkout_state(repo)
    task = await server.submit("nothing", policy="iso-noop")
    done = await server.wait_done(task["id"])
    assert done["state"] == "completed"
    assert done["branch"] is None
    assert done["commit"] is None
    assert done["isolation"]["empty"] is True
    assert git(repo, "branch", "--list", "cbox/*") == ""
    events = [e async for e in server.events(task["id"])]
    logs = [e.data["line"] for e in events if e.type == "log"]
    assert any("uncommitted changes (3 files" in line for line in logs), logs
    assert any("changed nothing" in line for line in logs), logs
    assert checkout_state(repo) == before


async def test_diffstat_counts_only_the_tasks_change(server: Orchestrator, repo: Path) -> None:
    task = await server.submit("edit", policy="iso-edit")
    done = await server.wait_done(task["id"])
    assert done["state"] == "completed"
    iso = done["isolation"]
    assert (iso["files_changed"], iso["insertions"], iso["deletions"]) == (1, 1, 0)
    assert "README.md" in done["diffstat"]
    branch = done["branch"]
    assert git(repo, "show", f"{branch}:README.md") == "hello\nuncommitted edit\nchanged\n"
    # HEAD -> snapshot of the user's uncommitted work -> the task's commit.
    parent = git(repo, "rev-parse", f"{branch}~1").strip()
    assert parent == iso["snapshot_commit"]
    assert git(repo, "rev-parse", f"{branch}~2").strip() == iso["base_commit"]


async def test_not_a_git_repository_is_refused(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    orch = orchestrator_factory(workspace=workspace)
    await orch.start()
    got, answer = await orch.request(
        "POST", "/tasks", json={"prompt": "x", "policy": "isolated"}
    )
    assert got == 400
    assert "not a git repository" in answer["error"]["message"]
