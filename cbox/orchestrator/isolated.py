"""Isolated workspaces: each task on its own copy of a git repository.

Policy `workspace = "isolated"`. The task gets a private clone of the user's
repository on a new branch `cbox/<task id>`; when it ends, its work is
committed there and fetched back into the user's repository as that branch.
The user's working tree, index and current branch are never touched, so any
number of such writers run on one repository at once.

Mechanism. `git clone --local --no-hardlinks` into
`<CBOX_DATA_DIR>/isolated/<task id>/repo`, bind-mounted at /workspace. The
copy's `.git` is a real directory, so git works inside the box (a worktree's
`.git` file names a host path the box cannot see). No hard links: an object
file shared with the user's repository could be rewritten from inside the
box. The `origin` remote is removed (it names a host path).

No git runs on the host. The user's repository may have been written by an
agent (any `rw` task on it) and the copy always is, so clone, snapshot,
commit and fetch all run in helper containers (`cbox.orchestrator.gitbox`),
and the submit-time check reads a few files without git
(`cbox.orchestrator.repocheck`).

Decisions (also in docs/isolated-workspaces.md):

- Uncommitted changes in the user's tree are included, never lost or
  ignored: tracked and untracked (not ignored) files are snapshotted with a
  throw-away index into a commit on top of HEAD — written into the copy's
  object store only — and the branch starts there. A `log` event says so. The
  task's own change is what comes after the snapshot; the diffstat counts
  only that.
- A workspace that is not the top level of a git repository with at least
  one commit, or whose `.git` is a symlink or a gitfile, is refused at
  submit (HTTP 400), saying why.
- Ownership: the git helpers run as the workspace owner, as the box does, so
  the copy, the objects fetched into the user's repository and the branch
  ref are the user's.
- The work comes back as a bundle: the commit helper (which sees only the
  copy) writes the new commits to a file, and the fetch helper (which sees
  the user's repository, not the copy) fetches that file with fsck on. No
  program configured in the copy ever runs next to the user's repository.
- A task that changes nothing creates no branch: `isolation.empty` is true,
  `commit` is null, and a `log` event says so.
- Failed, stopped and timed-out tasks are committed too (the commit message
  names the state): partial work is kept, never silently dropped. If
  bringing the work back fails, the copy is kept and the error says where.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cbox.errors import CboxError
from cbox.models import Isolation
from cbox.orchestrator.docker import DockerBackend
from cbox.orchestrator.gitbox import GitBox, GitError
from cbox.orchestrator.repocheck import check_repository

__all__ = ["GitError", "Isolator", "branch_name", "check_repository"]


def branch_name(task_id: str) -> str:
    return f"cbox/{task_id}"


class Isolator:
    """Makes per-task copies and brings their work back.

    The git steps on one user repository are serialised (clone and snapshot,
    fetch back): concurrent fetches into one repository could race on its
    files; the tasks themselves still run in parallel.
    """

    def __init__(
        self, root: Path, docker: DockerBackend, instance: str, timeout_s: float = 300.0
    ) -> None:
        self.root = root
        self.box = GitBox(docker, instance, timeout_s)
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, repo: Path) -> asyncio.Lock:
        return self._locks.setdefault(str(repo), asyncio.Lock())

    async def prepare(
        self, task_id: str, repo: Path, uid: int, gid: int, log: Callable[[str], None],
        *, image: str,
    ) -> Isolation:
        task_dir = self.root / task_id
        copy = task_dir / "repo"
        branch = branch_name(task_id)
        # Made here, so a helper never gets to choose what a bind mount names.
        await asyncio.to_thread(_make_dirs, (task_dir, copy), uid, gid)
        try:
            async with self._lock(repo):
                got = await self.box.prepare(task_id, repo, copy, branch, image, uid, gid)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, task_dir, True)
            raise
        base = got.base
        if got.snapshot:
            log(
                f"isolated copy of {repo} on branch {branch}, from HEAD {base[:12]} plus your "
                f"uncommitted changes ({got.files} files, snapshot commit {got.snapshot[:12]}); "
                "your tree, index and branch are left as they are"
            )
        else:
            log(f"isolated copy of {repo} on branch {branch}, from HEAD {base[:12]}")
        return Isolation(
            branch=branch, base_commit=base, snapshot_commit=got.snapshot,
            copy_path=str(copy), uid=uid, gid=gid,
        )

    async def collect(
        self,
        task_id: str,
        repo: Path,
        iso: Isolation,
        *,
        message: str,
        image: str,
        log: Callable[[str], None],
    ) -> None:
        """Commit the task's work in the copy and fetch it into the user's repository."""
        if iso.copy_path is None:
            return
        copy = Path(iso.copy_path)
        out = copy.parent / "out"
        uid, gid = iso.uid, iso.gid
        base = iso.base_commit
        start = iso.snapshot_commit or base
        try:
            await asyncio.to_thread(_make_dirs, (out,), uid, gid)
            tip = await self.box.commit(task_id, copy, out, message, base, start, image, uid, gid)
            if tip == start:
                iso.empty = True
                log(f"the task changed nothing; no branch {iso.branch} was created")
            else:
                async with self._lock(repo):
                    got = await self.box.fetch(
                        task_id, repo, out, f"refs/heads/{iso.branch}", base, start,
                        image, uid, gid,
                    )
                iso.commit, iso.empty = got.tip, False
                iso.files_changed, iso.insertions = got.files_changed, got.insertions
                iso.deletions, iso.diffstat = got.deletions, got.diffstat
                log(f"work committed on branch {iso.branch} ({got.tip[:12]}): {iso.diffstat}")
        except (CboxError, OSError) as exc:
            iso.error = f"{exc}; the task's copy is kept at {copy}"
            log(f"could not bring the work back: {iso.error}")
            return
        await asyncio.to_thread(shutil.rmtree, copy.parent, True)
        iso.copy_path = None


def _make_dirs(paths: tuple[Path, ...], uid: int, gid: int) -> None:
    """Fresh private directories of the workspace owner (the first one's parents too)."""
    for n, path in enumerate(paths):
        path.parent.mkdir(parents=n == 0, exist_ok=True)
        path.mkdir(exist_ok=False)
        path.chmod(0o700)
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
