"""Conformance: a repository an agent wrote must not make the host run anything.

Each test plays a hostile agent in two steps, through a real orchestrator:
a default `rw` task (a command agent) plants something in `/workspace/.git`
(config, hooks, attributes, symlinks, FIFOs, a gitfile), then an `isolated`
task runs on the same repository, which makes the orchestrator clone,
snapshot, commit and fetch it. Every planted program tries to append the
hostname of wherever it runs to a marker file on the host, outside the
repository (`tmp_path/host/pwned`); the test demands that the marker never
appears, that the isolated task either still works or fails (or is refused)
with a reason, and that it never hangs. Host paths named by an attack (a
host config file, a FIFO, another repository) play the part of files an
attacker would guess.

The tests never run host git in a repository after an attack: that would
set off the planted program themselves. The branch is read from its ref file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WORKSPACE_GID, WORKSPACE_UID
from tests.orch import Orchestrator

pytestmark = [pytest.mark.docker]

#: The isolated task: looks for another repository's data in its copy, then edits a file.
ISOLATED = (
    "cd /workspace; if git log --all -p 2>/dev/null | grep -q 'private data'; "
    'then echo "BREACH: another repository is in the copy"; fi; echo changed >> README.md'
)
POLICIES = {
    "plant": 'agent = "command"\ncommand = ["bash", "/workspace/attack.sh"]\ntimeout_s = 60\n',
    "iso": 'agent = "command"\nworkspace = "isolated"\ntimeout_s = 60\n'
    f"command = {json.dumps(['sh', '-c', ISOLATED])}\n",
}
GIT_TIMEOUT_S = 15
SHA = re.compile(r"^[0-9a-f]{40}$")


def host_git(repo: Path, *args: str) -> None:
    """Host git, only to build a repository before any agent touched it."""
    subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(repo), *args],
        capture_output=True, text=True, check=True,
    )


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    host_git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).write_text(text)
    host_git(path, "add", ".")
    host_git(path, "-c", "user.name=User", "-c", "user.email=u@example.com", "commit", "-qm", "i")
    for p in [path, *path.rglob("*")]:
        os.lchown(p, WORKSPACE_UID, WORKSPACE_GID)
    return path


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host directory outside the repository that the workspace owner could write."""
    directory = tmp_path / "host"
    directory.mkdir(mode=0o700)
    os.chown(directory, WORKSPACE_UID, WORKSPACE_GID)
    for path in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        path.chmod(path.stat().st_mode | 0o011)  # the owner must reach it, as git would
    return directory


@pytest.fixture
def repo(tmp_path: Path, host: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "hello\n"})


@pytest.fixture
async def server(orchestrator_factory: type[Orchestrator], repo: Path) -> Orchestrator:
    orch = orchestrator_factory(
        workspace=repo, policies=POLICIES, env={"CBOX_GIT_TIMEOUT_S": str(GIT_TIMEOUT_S)}
    )
    await orch.start()
    return orch


def evil(host: Path) -> str:
    """A shell command that records where it ran, on the host, and succeeds."""
    return f"hostname >> {host / 'pwned'} 2>/dev/null; true"


async def plant(server: Orchestrator, repo: Path, script: str) -> None:
    path = repo / "attack.sh"
    path.write_text("set -eu\ncd /workspace\n" + script)
    os.chown(path, WORKSPACE_UID, WORKSPACE_GID)
    task = await server.submit("plant", policy="plant")
    done = await server.wait_done(task["id"], timeout_s=120)
    assert done["state"] == "completed", done


async def run_isolated(server: Orchestrator) -> tuple[int, dict[str, Any], list[str]]:
    """Submit the isolated task; (HTTP status, done event or refusal, output lines)."""
    status, body = await asyncio.wait_for(
        server.request("POST", "/tasks", json={"prompt": "work", "policy": "iso"}), 20
    )
    if status == 400:
        return status, body, []
    assert status in (200, 202), body
    done = await server.wait_done(body["id"], timeout_s=GIT_TIMEOUT_S * 4 + 60)
    events = [e async for e in server.events(body["id"])]
    lines = [str(e.data.get("line", "")) for e in events if e.type in ("output", "stderr", "log")]
    return status, done, lines


def assert_held(host: Path, lines: list[str]) -> None:
    marker = host / "pwned"
    ran_on = marker.read_text().split() if marker.exists() else []
    assert not marker.exists(), f"a planted program ran on the host ({ran_on})"
    assert not [line for line in lines if line.startswith("BREACH")], lines


def assert_worked(repo: Path, done: dict[str, Any]) -> None:
    assert done["state"] == "completed", done
    assert done["commit"] and SHA.match(done["commit"]), done
    ref = repo / ".git" / "refs" / "heads" / "cbox" / done["isolation"]["branch"].split("/")[1]
    assert ref.read_text().strip() == done["commit"]
    assert "README.md" in done["diffstat"]


async def test_fsmonitor_in_config(server: Orchestrator, repo: Path, host: Path) -> None:
    await plant(server, repo, f"git config core.fsmonitor {evil(host)!r}\n")
    _, done, lines = await run_isolated(server)
    assert_held(host, lines)
    assert_worked(repo, done)


@pytest.mark.parametrize("kind", ["clean", "process"])
async def test_filter_driver_from_gitattributes(
    server: Orchestrator, repo: Path, host: Path, kind: str
) -> None:
    command = f"sh -c '{evil(host)}; cat'" if kind == "clean" else evil(host)
    await plant(server, repo, f"""
git config filter.evil.{kind} {command!r}
echo '* filter=evil' > .gitattributes
echo uncommitted > notes.txt
""")
    _, done, lines = await run_isolated(server)
    assert_held(host, lines)
    if kind == "process" and done["state"] == "failed":
        # A long-running filter that dies at once makes git give up (in the helper).
        assert "could not make the isolated copy" in done["error"], done
    else:
        assert_worked(repo, done)


@pytest.mark.parametrize("where", ["hooks", "hooksPath"])
async def test_reference_transaction_hook(
    server: Orchestrator, repo: Path, host: Path, where: str
) -> None:
    hooks = ".git/hooks" if where == "hooks" else ".git/evil-hooks"
    setting = "" if where == "hooks" else f"git config core.hooksPath {hooks}\n"
    # Also leaves its hostname in the repository, which the fetch helper may write.
    program = f'{evil(host)}; hostname >> "$GIT_DIR/ran-in" 2>/dev/null; true'
    await plant(server, repo, f"""
mkdir -p {hooks}
for hook in reference-transaction post-checkout pre-commit post-commit; do
  printf '#!/bin/sh\\n%s\\n' {program!r} > {hooks}/$hook
  chmod +x {hooks}/$hook
done
{setting}""")
    _, done, lines = await run_isolated(server)
    assert_held(host, lines)
    assert_worked(repo, done)
    if where == "hooks":  # (a relative hooksPath names nothing from the helper's cwd)
        ran_in = (repo / ".git" / "ran-in").read_text().split()
        assert ran_in, "the hook never ran"
        assert socket.gethostname() not in ran_in  # it ran, in a helper container only


@pytest.mark.parametrize("how", ["include.path", "symlinked config"])
async def test_config_from_a_host_file(
    server: Orchestrator, repo: Path, host: Path, how: str
) -> None:
    hostile = host / "evil.gitconfig"
    hostile.write_text(f"[core]\n\trepositoryformatversion = 0\n\tfsmonitor = \"{evil(host)}\"\n")
    if how == "include.path":
        script = f"git config include.path {hostile}\n"
    else:
        script = f"ln -sf {hostile} .git/config\n"
    await plant(server, repo, script)
    _, done, lines = await run_isolated(server)
    assert_held(host, lines)
    assert_worked(repo, done)


async def test_index_symlinked_to_a_host_file(
    server: Orchestrator, repo: Path, host: Path
) -> None:
    """`.git/index` names a host file outside the repository: nothing on the host reads it."""
    secret = host / "secret"
    secret.write_text("host data\n")
    os.utime(secret, (0, time.time()))  # a read sets its atime again (relatime)
    await plant(server, repo, f"rm -f .git/index\nln -s {secret} .git/index\n")
    status, done, lines = await run_isolated(server)
    assert secret.stat().st_atime == 0, "a host process read the file the index names"
    assert_held(host, lines)
    assert status == 400 or done["state"] == "failed", done
    reason = done["error"]["message"] if status == 400 else done["error"]
    assert "index" in reason


async def test_config_includes_a_fifo(server: Orchestrator, repo: Path, host: Path) -> None:
    """Reading the config blocks forever: submit stays quick, the step times out."""
    await plant(server, repo, "mkfifo .git/evil-fifo\ngit config include.path evil-fifo\n")
    try:
        status, done, lines = await run_isolated(server)
    finally:
        release(repo / ".git" / "evil-fifo")
    assert_held(host, lines)
    assert status != 400, done
    assert done["state"] == "failed", done
    assert f"did not finish in {GIT_TIMEOUT_S}s" in str(done["error"])


async def test_head_is_a_fifo(server: Orchestrator, repo: Path, host: Path) -> None:
    """The submit-time check must not block on a planted FIFO: a prompt, clear refusal."""
    await plant(server, repo, "rm .git/HEAD\nmkfifo .git/HEAD\n")
    try:
        status, done, lines = await run_isolated(server)
    finally:
        release(repo / ".git" / "HEAD")
    assert_held(host, lines)
    assert status == 400, done
    assert "HEAD is not a regular file" in done["error"]["message"]


@pytest.mark.parametrize("how", ["gitfile", "symlink"])
async def test_git_dir_elsewhere_on_the_host(
    server: Orchestrator, repo: Path, host: Path, tmp_path: Path, how: str
) -> None:
    """`.git` names another of the user's repositories: its files must not reach the box."""
    private = make_repo(tmp_path / "private", {"secret.txt": "private data\n"})
    target = private / ".git"
    if how == "gitfile":
        script = f"mv .git .git-moved\necho 'gitdir: {target}' > .git\n"
    else:
        script = f"mv .git .git-moved\nln -s {target} .git\n"
    await plant(server, repo, script)
    status, done, lines = await run_isolated(server)
    assert_held(host, lines)
    assert status == 400, done
    assert ".git is a" in done["error"]["message"]


async def test_nested_repository_fsmonitor(server: Orchestrator, repo: Path, host: Path) -> None:
    """A repository inside the tree, staged as a gitlink: `git add -A` asks it for its status."""
    await plant(server, repo, f"""
git init -q sub
git -C sub -c user.name=a -c user.email=a@b commit -q --allow-empty -m sub
git add sub
git -C sub config core.fsmonitor {evil(host)!r}
echo dirty > sub/file.txt
""")
    _, done, lines = await run_isolated(server)
    assert_held(host, lines)
    assert_worked(repo, done)


def release(fifo: Path) -> None:
    """Let a reader stuck on the FIFO go (on code that still opens it)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
