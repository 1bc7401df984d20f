"""Attacks on the GitHub worker's publishing path.

The user's repository was writable by earlier agents, so its git
configuration is hostile: a planted `core.fsmonitor`, hook or filter driver
would run on the host with any git command there. The worker must publish a
task's branch without running git in it, and must publish exactly the commit
the orchestrator recorded for the task.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from cbox.errors import GitHubError
from cbox.integrations.github_push import push_bundle
from tests.fakes.github import FakeGitHub
from tests.fakes.github import Repo as FakeRepo
from tests.github_support import git, trackers, worker, worker_env
from tests.orch import Orchestrator

pytest_plugins = ("tests.github_fixtures",)


def plant(ws: Path, marker: Path) -> list[str]:
    """Every way we know to make host git in `ws` run a program; returns what was planted."""
    touch = f"touch {marker}"
    hooks = ws / ".git" / "evil-hooks"
    hooks.mkdir()
    planted = []
    for name in ("pre-push", "post-checkout", "reference-transaction", "post-index-change",
                 "pre-commit", "post-merge", "pre-auto-gc", "fsmonitor-watchman"):
        for where in (hooks, ws / ".git" / "hooks"):
            where.mkdir(exist_ok=True)
            hook = where / name
            hook.write_text(f"#!/bin/sh\n{touch}\n")
            hook.chmod(0o755)
        planted.append(f"hook {name}")
    settings = {
        "core.fsmonitor": touch,
        "core.hooksPath": str(hooks),
        "core.pager": touch,
        "core.sshCommand": touch,
        "core.alternateRefsCommand": touch,
        "diff.external": touch,
        "filter.evil.clean": touch,
        "filter.evil.smudge": touch,
        "filter.evil.process": touch,
        "filter.evil.required": "true",
    }
    for key, value in settings.items():
        git(ws, "config", key, value)
        planted.append(key)
    (ws / ".gitattributes").write_text("* filter=evil diff=evil\n")
    return planted


async def finished_isolated_task(
    gh: FakeGitHub, repo: FakeRepo, orch: Orchestrator, ws: Path, title: str,
    tracked: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """An issue whose isolated task ran to the end while its worker was dead: labelled
    working, tracking comment still 'running' (the recovery pass publishes it)."""
    git(ws, "push", "-q", repo.remote.as_uri(), "main:main")
    issue = gh.add_issue(repo, title, labels=("claude", "claude-working"))
    task = await orch.submit("edit the readme", policy="iso-edit",
                             metadata={"github_issue_id": issue.node_id,
                                       "github_repo": repo.full_name})
    done = await orch.wait_done(task["id"])
    assert done["state"] == "completed", done
    body = f"**claude-box is working on this.**\n\n<!-- cbox:{task['id']} " \
           f"for:{issue.node_id} state:running -->"
    if tracked:
        gh.add_comment(repo, issue, body, gh.bot.login)
    return issue, await orch.task(task["id"])


@pytest.mark.docker
async def test_publishing_runs_no_git_in_the_users_repository(
    gh: FakeGitHub, repo: FakeRepo, orch: Orchestrator, checkout: Path, tmp_path: Path
) -> None:
    issue, task = await finished_isolated_task(gh, repo, orch, checkout, "Planted config")
    marker = tmp_path / "ran-on-the-host"
    planted = plant(checkout, marker)

    code, _, err = await worker(worker_env(gh, orch), "--policy", "iso-edit")

    assert code == 0, (err, [c.body for c in gh.comments_on(repo, issue)])
    assert "recovering task" in err
    assert not marker.exists(), f"host git ran in the user's repository ({planted})"
    branch = f"cbox/{task['id']}"
    assert git(repo.remote, "rev-parse", f"refs/heads/{branch}") == task["isolation"]["commit"]
    [pull] = repo.pulls
    assert pull["head"]["ref"] == branch
    assert pull["body"].startswith(f"Closes #{issue.number}")
    # Control: the plant is live; host git in that repository does run it.
    subprocess.run(["git", "-c", "safe.directory=*", "-C", str(checkout), "status"],
                   capture_output=True, check=False)
    assert marker.exists(), "the planted configuration never fires; the test proves nothing"


@pytest.mark.docker
async def test_a_branch_moved_after_the_task_is_not_published(
    gh: FakeGitHub, repo: FakeRepo, orch: Orchestrator, checkout: Path
) -> None:
    issue, task = await finished_isolated_task(gh, repo, orch, checkout, "Moved branch")
    branch = f"cbox/{task['id']}"
    # A later agent with the repository read-write points the branch elsewhere.
    evil = git(checkout, "-c", "user.name=Evil", "-c", "user.email=e@x", "commit-tree",
               "-m", "backdoor", f"{task['isolation']['commit']}^{{tree}}")
    git(checkout, "update-ref", f"refs/heads/{branch}", evil)

    code, _, err = await worker(worker_env(gh, orch), "--policy", "iso-edit")

    assert code == 0, err
    assert git(repo.remote, "for-each-ref", "refs/heads/cbox/") == ""
    assert repo.pulls == []
    [tracker] = trackers(gh, repo, issue)
    assert tracker.body.startswith("**claude-box failed: ")
    assert "not at the task's commit" in tracker.body
    assert "claude-failed" in issue.labels


@pytest.mark.docker
async def test_a_forged_tracking_comment_cannot_publish_another_issues_work(
    gh: FakeGitHub, repo: FakeRepo, orch: Orchestrator, checkout: Path
) -> None:
    """Anyone can comment on a public issue, marker included: a stranger's "tracking
    comment" naming another issue's task must not get that work pushed and opened
    as a pull request where the stranger can read it."""
    _, task = await finished_isolated_task(gh, repo, orch, checkout, "Private work",
                                           tracked=False)
    target = gh.add_issue(repo, "Stranger's issue", labels=("claude", "claude-working"),
                          author="stranger")
    repo.permissions["stranger"] = "read"
    gh.add_comment(repo, target, f"<!-- cbox:{task['id']} for:{target.node_id} "
                   "state:running -->", "stranger")

    code, _, err = await worker(worker_env(gh, orch), "--policy", "iso-edit")

    assert code == 0, err
    assert repo.pulls == []
    assert git(repo.remote, "for-each-ref", "refs/heads/cbox/") == ""
    assert "recovering task" not in err
    assert [c.user.login for c in gh.comments_on(repo, target)] == ["stranger"]


@pytest.mark.docker
async def test_bundle_is_refused_for_tasks_that_are_not_isolated(orch: Orchestrator) -> None:
    task = await orch.submit("hello", policy="ok")
    await orch.wait_done(task["id"])
    status, body = await orch.request("GET", f"/tasks/{task['id']}/bundle")
    assert status == 409
    assert "no isolated workspace" in body["error"]["message"]
    status, _ = await orch.request("GET", "/tasks/task_00000000000000000000/bundle")
    assert status == 404


async def test_a_bundle_whose_tip_is_not_the_tasks_commit_is_not_pushed(
    tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    git(src, "init", "-q", "-b", "main")
    (src / "f").write_text("x")
    git(src, "add", "f")
    git(src, "-c", "user.name=U", "-c", "user.email=u@x", "commit", "-qm", "one")
    recorded = git(src, "rev-parse", "HEAD")
    (src / "f").write_text("backdoor")
    git(src, "-c", "user.name=U", "-c", "user.email=u@x", "commit", "-qam", "two")
    git(src, "branch", "cbox/task_x")
    bundle = tmp_path / "b.bundle"
    git(src, "bundle", "create", str(bundle), "refs/heads/cbox/task_x")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)

    with pytest.raises(GitHubError, match="not at the task's commit"):
        await push_bundle(bundle, "cbox/task_x", recorded, remote.as_uri(), "ghs_secret")
    assert git(remote, "for-each-ref") == ""
