"""`GET /tasks/{id}/bundle`: an isolated task's branch as a `git bundle` file.

Why a bundle. A worker that publishes a task's work (the GitHub worker pushes
`cbox/<task>` and opens a pull request) must not run git in the user's
repository: earlier agents with a read-write workspace may have planted a
`core.fsmonitor`, a hook or a filter driver in its `.git/config`, and any git
command there would run it on the host. So the orchestrator makes the bundle
inside a throw-away hardened helper container (no network, no capabilities,
read-only root, the repository mounted read-only, only a scratch directory
writable) and hands out the file. Reading a bundle (`git fetch <file>`) runs
no configuration of the repository it came from, so the worker can unpack it
into a scratch repository whose configuration it controls.

What is checked here. Only isolated tasks whose work came back as a branch
have a bundle (409 otherwise). The helper refuses to bundle when the branch no
longer points at the commit the orchestrator recorded when it brought the work
back (someone, or a later agent, moved it). The helper's word is still not
trusted: the bundle is untrusted data, and its consumer checks that the
branch's tip in it is the task's recorded `isolation.commit`.

It runs in the same kind of helper box as every other git step
(`gitbox.helper_config`), under the same deadline (`CBOX_GIT_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from pathlib import Path

from cbox.errors import Conflict
from cbox.models import Task
from cbox.orchestrator.docker import DockerBackend
from cbox.orchestrator.gitbox import helper_config, reason
from cbox.orchestrator.isolated import branch_name

#: A bundle bigger than this is refused (the branch holds the repository's
#: whole history; far past this, a pull request is not the way to ship it).
MAX_BUNDLE_BYTES = 2 * 1024**3
BUNDLE_FILE = "task.bundle"

# $1 ref, $2 expected tip. Config that could run programs is switched off as
# well, though whatever runs here runs in the box, not on the host.
_SCRIPT = r"""
set -eu
cd /repo
tip="$(git rev-parse --verify -q "$1^{commit}" || true)"
if [ "$tip" != "$2" ]; then
  echo "branch $1 is at ${tip:-nothing}, not at the task's commit $2" >&2
  exit 3
fi
git bundle create /out/task.bundle "$1" 2>/dev/null
"""

_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_COUNT": "4",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
    "GIT_CONFIG_KEY_1": "core.fsmonitor",
    "GIT_CONFIG_VALUE_1": "false",
    "GIT_CONFIG_KEY_2": "core.hooksPath",
    "GIT_CONFIG_VALUE_2": "/dev/null",
    "GIT_CONFIG_KEY_3": "gc.auto",
    "GIT_CONFIG_VALUE_3": "0",
}


class BundleError(Conflict):
    """The task has no branch to bundle (HTTP 409): not isolated, nothing changed, moved.

    A conflict, not a 404: the task exists, and its kind or state is what does
    not allow a bundle (an unknown task id is still a 404).
    """


class Bundler:
    """Makes bundles of isolated tasks' branches in helper containers."""

    def __init__(
        self, root: Path, docker: DockerBackend, instance: str, image: str, timeout_s: float
    ) -> None:
        self.root = root
        self.timeout_s = timeout_s
        self.docker = docker
        self.instance = instance
        self.image = image

    async def create(self, task: Task) -> Path:
        """The bundle file of `task`'s branch; the caller removes its parent directory."""
        iso = task.isolation
        if iso is None or not task.workspace:
            raise BundleError(f"task {task.id} has no isolated workspace, so no bundle")
        if not iso.commit:
            raise BundleError(f"task {task.id} left no branch (it changed nothing, or has "
                               "not finished), so no bundle")
        scratch = self.root / f"{task.id}-{secrets.token_hex(4)}"
        await asyncio.to_thread(_make_dir, scratch, iso.uid, iso.gid)
        try:
            await self._run(task.id, Path(task.workspace), scratch, iso.commit, iso.uid, iso.gid)
            path = scratch / BUNDLE_FILE
            size = path.lstat().st_size if path.is_file() and not path.is_symlink() else -1
            if size <= 0:
                raise BundleError(f"the bundle of task {task.id} was not written")
            if size > MAX_BUNDLE_BYTES:
                raise BundleError(f"the bundle of task {task.id} is {size} bytes, over "
                                  f"the {MAX_BUNDLE_BYTES} byte limit")
            return path
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
            raise

    async def _run(
        self, task_id: str, repo: Path, scratch: Path, commit: str, uid: int, gid: int
    ) -> None:
        # Hardened like every git step (`gitbox.helper_config`); the repository read-only.
        config = helper_config(
            self.instance, self.image, _SCRIPT,
            [f"refs/heads/{branch_name(task_id)}", commit],
            [f"{repo}:/repo:ro", f"{scratch}:/out:rw"], uid, gid,
        )
        config["Env"] = [*config["Env"], *(f"{k}={v}" for k, v in _GIT_ENV.items())]
        name = f"cbox-bundle-{task_id}-{secrets.token_hex(3)}"
        code, output = await self.docker.run_helper(name, config, timeout_s=self.timeout_s)
        if code != 0:
            raise BundleError(
                f"bundling branch {branch_name(task_id)} failed: {reason(output)}"
            )


def _make_dir(path: Path, uid: int, gid: int) -> None:
    path.mkdir(parents=True, exist_ok=False)
    path.chmod(0o700)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
