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

Decisions (also in docs/isolated-workspaces.md):

- Uncommitted changes in the user's tree are included, never lost or
  ignored: tracked and untracked (not ignored) files are snapshotted with a
  throw-away index into a commit on top of HEAD — written into the copy's
  object store only — and the branch starts there. A `log` event says so. The
  task's own change is what comes after the snapshot; the diffstat counts
  only that.
- A workspace that is not the top level of a git repository with at least
  one commit is refused at submit (HTTP 400), saying why.
- Ownership: host-side git runs as the workspace owner (when the
  orchestrator is root), the box runs as that uid, so the copy, the objects
  fetched into the user's repository and the branch ref are the user's.
- The final commit is made inside a sandbox helper container, never by host
  git in the copy: the agent controls the copy's `.git/config` and
  `.gitattributes`, and filters, hooks or fsmonitor there would otherwise run
  on the host. The host only runs `git fetch` (upload-pack is safe in
  untrusted repositories) and reads the result in the user's repository.
- A task that changes nothing creates no branch: `isolation.empty` is true,
  `commit` is null, and a `log` event says so.
- Failed, stopped and timed-out tasks are committed too (the commit message
  names the state): partial work is kept, never silently dropped. If
  bringing the work back fails, the copy is kept and the error says where.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from cbox.errors import CboxError, InvalidRequest
from cbox.models import Isolation
from cbox.orchestrator.docker import LABEL_INSTANCE, LABEL_MANAGED, DockerBackend

AGENT_IDENTITY = {
    "GIT_AUTHOR_NAME": "claude-box agent",
    "GIT_AUTHOR_EMAIL": "agent@claude-box.invalid",
    "GIT_COMMITTER_NAME": "claude-box agent",
    "GIT_COMMITTER_EMAIL": "agent@claude-box.invalid",
}
GIT_TIMEOUT_S = 300.0
_SHA = re.compile(r"^[0-9a-f]{40}$", re.MULTILINE)


class GitError(CboxError):
    """A git command on the host failed."""


def branch_name(task_id: str) -> str:
    return f"cbox/{task_id}"


async def git(
    *args: str,
    cwd: Path,
    uid: int,
    gid: int,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> str:
    """Run host git as the workspace owner without blocking the loop; return stdout."""
    extra: dict[str, object] = {}
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}
    if os.geteuid() == 0 and uid != 0:
        # Files git writes (objects, refs) must be the user's, and git refuses
        # a repository owned by someone else ("dubious ownership").
        extra = {"user": uid, "group": gid, "extra_groups": []}
        full_env["HOME"] = "/nonexistent"
    proc = await asyncio.create_subprocess_exec(
        "git", *args,
        cwd=cwd, env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        **extra,  # type: ignore[arg-type]
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise GitError(f"git {args[0]} timed out in {cwd}") from None
    if check and proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"exit {proc.returncode}"
        raise GitError(f"git {args[0]} failed in {cwd}: {message}")
    return out.decode(errors="replace").strip()


async def check_repository(path: Path, uid: int, gid: int) -> None:
    """Refuse a workspace that cannot be isolated, with the reason (HTTP 400)."""
    hint = "isolated workspaces need a git repository; use a policy with workspace = 'rw'"
    try:
        top = await git("rev-parse", "--show-toplevel", cwd=path, uid=uid, gid=gid)
    except GitError as exc:
        if "not a git repository" not in str(exc):
            raise InvalidRequest(
                f"workspace {path} cannot be isolated: {exc}", field="workspace"
            ) from None
        raise InvalidRequest(
            f"workspace {path} is not a git repository ({hint})", field="workspace"
        ) from None
    if Path(os.path.realpath(top)) != path:
        raise InvalidRequest(
            f"workspace {path} is inside the git repository {top}; name the repository's "
            "top level as the workspace",
            field="workspace",
        )
    try:
        await git("rev-parse", "--verify", "-q", "HEAD^{commit}", cwd=path, uid=uid, gid=gid)
    except GitError:
        raise InvalidRequest(
            f"workspace {path} is a git repository without commits; commit once first",
            field="workspace",
        ) from None


class Isolator:
    """Makes per-task copies and brings their work back.

    Host git operations on one user repository are serialised (clone and
    snapshot, fetch back): concurrent fetches into one repository could race
    on its files; the tasks themselves still run in parallel.
    """

    def __init__(self, root: Path, docker: DockerBackend, instance: str) -> None:
        self.root = root
        self.docker = docker
        self.instance = instance
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, repo: Path) -> asyncio.Lock:
        return self._locks.setdefault(str(repo), asyncio.Lock())

    async def prepare(
        self, task_id: str, repo: Path, uid: int, gid: int, log: Callable[[str], None]
    ) -> Isolation:
        task_dir = self.root / task_id
        await asyncio.to_thread(_make_dir, task_dir, uid, gid)
        try:
            return await self._prepare(task_id, repo, task_dir, uid, gid, log)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, task_dir, True)
            raise

    async def _prepare(
        self, task_id: str, repo: Path, task_dir: Path, uid: int, gid: int,
        log: Callable[[str], None],
    ) -> Isolation:
        copy = task_dir / "repo"
        branch = branch_name(task_id)
        async with self._lock(repo):
            base = await git("rev-parse", "HEAD", cwd=repo, uid=uid, gid=gid)
            await git(
                "clone", "--quiet", "--local", "--no-hardlinks", "--no-checkout",
                str(repo), str(copy), cwd=task_dir, uid=uid, gid=gid,
            )
            await git("remote", "remove", "origin", cwd=copy, uid=uid, gid=gid)
            snapshot, count = await self._snapshot(task_id, repo, copy, task_dir, base, uid, gid)
        start = snapshot or base
        await git("checkout", "--quiet", "-b", branch, start, cwd=copy, uid=uid, gid=gid)
        if snapshot:
            log(
                f"isolated copy of {repo} on branch {branch}, from HEAD {base[:12]} plus your "
                f"uncommitted changes ({count} files, snapshot commit {snapshot[:12]}); "
                "your tree, index and branch are left as they are"
            )
        else:
            log(f"isolated copy of {repo} on branch {branch}, from HEAD {base[:12]}")
        return Isolation(
            branch=branch, base_commit=base, snapshot_commit=snapshot,
            copy_path=str(copy), uid=uid, gid=gid,
        )

    async def _snapshot(
        self, task_id: str, repo: Path, copy: Path, task_dir: Path, base: str, uid: int, gid: int
    ) -> tuple[str | None, int]:
        """Uncommitted changes (tracked and untracked) as a commit on HEAD, or None.

        A copy of the index and the copy's object store keep the user's index
        and objects exactly as they were.
        """
        index = Path(await git("rev-parse", "--git-path", "index", cwd=repo, uid=uid, gid=gid))
        objects = Path(
            await git("rev-parse", "--git-path", "objects", cwd=repo, uid=uid, gid=gid)
        )
        index = index if index.is_absolute() else repo / index
        objects = objects if objects.is_absolute() else repo / objects
        temp_index = task_dir / "snapshot-index"
        if index.exists():
            await asyncio.to_thread(shutil.copyfile, index, temp_index)
            await asyncio.to_thread(_chown, temp_index, uid, gid)
        env = {
            "GIT_INDEX_FILE": str(temp_index),
            "GIT_OBJECT_DIRECTORY": str(copy / ".git" / "objects"),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects),
            **AGENT_IDENTITY,
        }
        await git("add", "-A", cwd=repo, uid=uid, gid=gid, env=env)
        tree = await git("write-tree", cwd=repo, uid=uid, gid=gid, env=env)
        head_tree = await git("rev-parse", "HEAD^{tree}", cwd=repo, uid=uid, gid=gid)
        if tree == head_tree:
            return None, 0
        changed = await git(
            "diff-tree", "-r", "--name-only", "--no-commit-id", head_tree, tree,
            cwd=repo, uid=uid, gid=gid, env=env,
        )
        snapshot = await git(
            "commit-tree", tree, "-p", base, "-m",
            f"cbox: uncommitted changes at the start of task {task_id}",
            cwd=repo, uid=uid, gid=gid, env=env,
        )
        return snapshot, len(changed.splitlines())

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
        uid, gid = iso.uid, iso.gid
        start = iso.snapshot_commit or iso.base_commit
        try:
            tip = await self._commit_in_box(task_id, copy, message, image, uid, gid)
            if tip == start:
                iso.empty = True
                log(f"the task changed nothing; no branch {iso.branch} was created")
            else:
                async with self._lock(repo):
                    await git(
                        "-c", "gc.auto=0", "-c", "maintenance.auto=false",
                        "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                        str(copy), f"HEAD:refs/heads/{iso.branch}",
                        cwd=repo, uid=uid, gid=gid,
                    )
                got = await git("rev-parse", f"refs/heads/{iso.branch}", cwd=repo, uid=uid, gid=gid)
                await self._stats(iso, repo, start, got)
                iso.commit, iso.empty = got, False
                log(f"work committed on branch {iso.branch} ({got[:12]}): {iso.diffstat}")
        except (CboxError, OSError) as exc:
            iso.error = f"{exc}; the task's copy is kept at {copy}"
            log(f"could not bring the work back: {iso.error}")
            return
        await asyncio.to_thread(shutil.rmtree, copy.parent, True)
        iso.copy_path = None

    async def _stats(self, iso: Isolation, repo: Path, start: str, tip: str) -> None:
        """Diffstat of the task's own change, read in the user's (trusted) repository."""
        flags = ("--no-ext-diff", "--no-textconv", "--no-color")
        numstat = await git("diff", *flags, "--numstat", start, tip, cwd=repo, uid=iso.uid,
                            gid=iso.gid)
        for line in numstat.splitlines():
            added, removed, _ = line.split("\t", 2)
            iso.files_changed += 1
            iso.insertions += int(added) if added.isdigit() else 0
            iso.deletions += int(removed) if removed.isdigit() else 0
        stat = await git("diff", *flags, "--stat=100", start, tip, cwd=repo, uid=iso.uid,
                         gid=iso.gid)
        lines = stat.splitlines()
        if len(lines) > 51:  # keep the event small: the first 50 files and the summary
            lines = [*lines[:50], "...", lines[-1]]
        iso.diffstat = "\n".join(lines)

    async def _commit_in_box(
        self, task_id: str, copy: Path, message: str, image: str, uid: int, gid: int
    ) -> str:
        """`git add -A && git commit` inside a sandbox; the new HEAD."""
        script = (
            "cd /workspace && git add -A && "
            "{ git diff --cached --quiet || "
            "printf '%s\\n' \"$1\" | git commit --quiet --no-verify -F - ; } && "
            "git rev-parse HEAD"
        )
        config = {
            "Image": image,
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": [script, "sh", message],
            "User": f"{uid}:{gid}",
            "Env": [f"{k}={v}" for k, v in AGENT_IDENTITY.items()] + ["HOME=/tmp"],
            "Labels": {LABEL_MANAGED: "true", LABEL_INSTANCE: self.instance},
            "NetworkDisabled": True,
            "HostConfig": {
                "Binds": [f"{copy}:/workspace:rw"],
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "ReadonlyRootfs": True,
                "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
                "NetworkMode": "none",
                "Memory": 1024 * 1024 * 1024,
                "PidsLimit": 64,
            },
        }
        code, output = await self.docker.run_helper(f"cbox-commit-{task_id}", config)
        shas = _SHA.findall(output)
        if code != 0 or not shas:
            raise GitError(f"committing the task's work failed: {output.strip()[-300:]}")
        return str(shas[-1])


def _make_dir(path: Path, uid: int, gid: int) -> None:
    path.mkdir(parents=True, exist_ok=False)
    path.chmod(0o700)
    _chown(path, uid, gid)


def _chown(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
