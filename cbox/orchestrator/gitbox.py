"""Git on user repositories, run only in throw-away helper containers.

Why. A repository an agent could write (the user's, after any `rw` task; an
isolated task's copy, always) can make git run programs of its choosing:
`core.fsmonitor`, filter drivers named in `.gitattributes`, hooks and
`core.hooksPath`, `include.path`, `gpg.program`, a `.git` that is a symlink
or a gitfile naming another repository, alternates naming host paths, an
index that is a FIFO... Blocking keys one by one never ends, so the host
never execs git on these paths at all. Every git command runs in a helper
container of the sandbox image: no network, the workspace owner's uid, all
capabilities dropped, `no-new-privileges`, a read-only root filesystem,
memory, pids and log limits, and a deadline (a FIFO or an endless file only
costs that much time). Whatever the repository's config does, it does in a
box that sees only the mounts of that one step.

The steps, and what each may write:

- `prepare`: the user's repository read-only at /src, the empty copy
  directory (made by the host) at /dst. Clone, snapshot of uncommitted
  changes into the copy's object store, checkout of the task's branch.
- `commit`: the copy (agent-controlled) at /workspace and an empty output
  directory at /out. `git add -A && git commit`, then a bundle of the new
  commits in /out. The copy's own config runs here, next to nothing but
  agent-controlled files.
- `fetch`: the user's repository read-write at /repo and the output
  directory read-only at /in. `git fetch` of the bundle (objects checked
  with fsck) into `refs/heads/cbox/<task id>`, then the diffstat. No
  program from the copy runs here: a bundle is data.

Mount roots are directories the host made or checked, never paths an agent
could have replaced with a symlink (Docker resolves a bind source's
symlinks on the host). What a helper prints is untrusted: results are read
only from strictly formed marker lines, and error text is cut short and
stripped of control characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbox.errors import CboxError, DockerError
from cbox.orchestrator.docker import LABEL_INSTANCE, LABEL_MANAGED, DockerBackend

AGENT_IDENTITY = {
    "GIT_AUTHOR_NAME": "claude-box agent",
    "GIT_AUTHOR_EMAIL": "agent@claude-box.invalid",
    "GIT_COMMITTER_NAME": "claude-box agent",
    "GIT_COMMITTER_EMAIL": "agent@claude-box.invalid",
}
BUNDLE = "work.bundle"
_SHA = r"(?:[0-9a-f]{40}|[0-9a-f]{64})"
_PREPARED = re.compile(rf"^cbox-prepared ({_SHA}) ({_SHA}|-) ([0-9]{{1,9}})$")
_COMMITTED = re.compile(rf"^cbox-committed ({_SHA})$")
_FETCHED = re.compile(rf"^cbox-fetched ({_SHA})$")
_SHORTSTAT = re.compile(
    r"^cbox-shortstat(?: ([0-9]{1,9}) files? changed"
    r"(?:, ([0-9]{1,12}) insertions?\(\+\))?(?:, ([0-9]{1,12}) deletions?\(-\))?)?$"
)
_ERROR = re.compile(r"^cbox-error ([a-z-]{1,40})$")
_MAX_STAT_LINES = 52

ERRORS = {
    "not-a-repository": "its .git is no longer a directory of its own",
    "no-commits": "it has no commits; commit once first",
    "index-not-regular": "its index (.git/index) is not a regular file",
}

# Each script takes its values as positional arguments, never spliced into
# the text. `set -eu`: the first failing step ends the helper with its error.
PREPARE = r"""set -eu
branch=$1 task=$2
cd /src
[ -d .git ] && [ ! -L .git ] || { echo cbox-error not-a-repository; exit 3; }
base=$(git rev-parse --verify -q 'HEAD^{commit}') || { echo cbox-error no-commits; exit 3; }
git clone --quiet --local --no-hardlinks --no-checkout /src /dst
git -C /dst remote remove origin
index=$(git rev-parse --git-path index)  # not made absolute: that resolves symlinks
case $index in /*) ;; *) index=/src/$index ;; esac
objects=$(git rev-parse --path-format=absolute --git-path objects)
snapshot_index=/dst/.git/cbox-snapshot-index
if [ -e "$index" ] || [ -L "$index" ]; then
  { [ -f "$index" ] && [ ! -L "$index" ]; } || { echo cbox-error index-not-regular; exit 3; }
  cp "$index" "$snapshot_index"
fi
tree=$(GIT_INDEX_FILE=$snapshot_index GIT_OBJECT_DIRECTORY=/dst/.git/objects \
  GIT_ALTERNATE_OBJECT_DIRECTORIES=$objects sh -ec 'git add -A; git write-tree')
rm -f "$snapshot_index"
head_tree=$(git -C /dst rev-parse "$base^{tree}")
start=$base snapshot=- files=0
if [ "$tree" != "$head_tree" ]; then
  files=$(git -C /dst diff-tree -r -z --name-only --no-commit-id "$head_tree" "$tree" \
    | tr -cd '\000' | wc -c)
  snapshot=$(git -C /dst commit-tree --no-gpg-sign "$tree" -p "$base" \
    -m "cbox: uncommitted changes at the start of task $task")
  start=$snapshot
fi
git -C /dst checkout --quiet -b "$branch" "$start"
echo "cbox-prepared $base $snapshot $files"
"""

COMMIT = r"""set -eu
message=$1 base=$2 start=$3
cd /workspace
git add -A
git diff --cached --quiet || printf '%s\n' "$message" \
  | git commit --quiet --no-verify --no-gpg-sign -F -
tip=$(git rev-parse --verify 'HEAD^{commit}')
if [ "$tip" != "$start" ]; then
  git bundle create --quiet /out/work.bundle HEAD "^$base" 2>/dev/null \
    || git bundle create --quiet /out/work.bundle HEAD
fi
echo "cbox-committed $tip"
"""

FETCH = r"""set -eu
ref=$1 base=$2 start=$3
[ -d /repo/.git ] && [ ! -L /repo/.git ] || { echo cbox-error not-a-repository; exit 3; }
export GIT_DIR=/repo/.git
git -c gc.auto=0 -c maintenance.auto=false -c fetch.fsckObjects=true \
  fetch --quiet --no-tags --no-write-fetch-head --no-recurse-submodules \
  /in/work.bundle "HEAD:$ref"
tip=$(git rev-parse --verify "$ref^{commit}")
git cat-file -e "$start^{commit}" 2>/dev/null || start=$base
flags="--no-ext-diff --no-textconv --no-color"
shortstat=$(git diff $flags --shortstat "$start" "$tip")
git diff $flags --stat=100 "$start" "$tip" > /tmp/stat
echo "cbox-fetched $tip"
echo "cbox-shortstat$shortstat"
echo cbox-stat
if [ "$(wc -l < /tmp/stat)" -gt 51 ]; then head -n 50 /tmp/stat; echo ...; tail -n 1 /tmp/stat
else cat /tmp/stat; fi
"""


class GitError(CboxError):
    """A git step of an isolated task failed (in its helper container)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    base: str
    snapshot: str | None
    files: int


@dataclass(frozen=True, slots=True)
class Fetched:
    tip: str
    files_changed: int
    insertions: int
    deletions: int
    diffstat: str


class GitBox:
    """Runs the three git steps of an isolated task in helper containers."""

    def __init__(self, docker: DockerBackend, instance: str, timeout_s: float) -> None:
        self.docker = docker
        self.instance = instance
        self.timeout_s = timeout_s

    async def prepare(
        self, task_id: str, repo: Path, copy: Path, branch: str, image: str, uid: int, gid: int
    ) -> Prepared:
        binds = [f"{repo}:/src:ro", f"{copy}:/dst:rw"]
        what = f"could not make the isolated copy of {repo}"
        output = await self._run("prepare", task_id, what, PREPARE, [branch, task_id], binds,
                                 image, uid, gid)
        found = _last(_PREPARED, output)
        if found is None:
            raise GitError(f"{what}: {reason(output)}")
        base, snapshot, files = found.groups()
        return Prepared(base=base, snapshot=None if snapshot == "-" else snapshot,
                        files=int(files))

    async def commit(
        self, task_id: str, copy: Path, out: Path, message: str, base: str, start: str,
        image: str, uid: int, gid: int,
    ) -> str:
        """Commit the copy's work; the new HEAD (agent-controlled: only compared)."""
        binds = [f"{copy}:/workspace:rw", f"{out}:/out:rw"]
        what = "committing the task's work failed"
        output = await self._run("commit", task_id, what, COMMIT, [message, base, start],
                                 binds, image, uid, gid)
        found = _last(_COMMITTED, output)
        if found is None:
            raise GitError(f"{what}: {reason(output)}")
        return found.group(1)

    async def fetch(
        self, task_id: str, repo: Path, out: Path, ref: str, base: str, start: str,
        image: str, uid: int, gid: int,
    ) -> Fetched:
        binds = [f"{repo}:/repo:rw", f"{out}:/in:ro"]
        what = f"fetching the task's work into {repo} failed"
        output = await self._run("fetch", task_id, what, FETCH, [ref, base, start], binds,
                                 image, uid, gid)
        lines = output.splitlines()
        tip = _last(_FETCHED, output)
        stat = _last(_SHORTSTAT, output)
        if tip is None or stat is None or "cbox-stat" not in lines:
            raise GitError(f"{what}: {reason(output)}")
        files, added, removed = (int(n) if n else 0 for n in stat.groups())
        marker = len(lines) - lines[::-1].index("cbox-stat")  # just after the last one
        stat_lines = lines[marker:marker + _MAX_STAT_LINES]
        diffstat = "\n".join(_clean(line, 200) for line in stat_lines)
        return Fetched(tip=tip.group(1), files_changed=files, insertions=added,
                       deletions=removed, diffstat=diffstat)

    async def _run(
        self, step: str, task_id: str, what: str, script: str, args: list[str],
        binds: list[str], image: str, uid: int, gid: int,
    ) -> str:
        config = helper_config(self.instance, image, script, args, binds, uid, gid)
        try:
            code, output = await self.docker.run_helper(
                f"cbox-git-{step}-{task_id}", config, timeout_s=self.timeout_s
            )
        except DockerError as exc:
            raise GitError(f"{what}: {exc}") from exc
        if code != 0:
            raise GitError(f"{what}: {reason(output)}")
        return output


def helper_config(
    instance: str, image: str, script: str, args: list[str], binds: list[str],
    uid: int, gid: int,
) -> dict[str, Any]:
    """A `ContainerCreate` body for one git step, hardened like a task and offline."""
    memory = 1024 * 1024 * 1024
    env = {
        **AGENT_IDENTITY,
        "HOME": "/tmp",
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
    }
    return {
        "Image": image,
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": [script, "sh", *args],
        "User": f"{uid}:{gid}",
        "WorkingDir": "/tmp",
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": {LABEL_MANAGED: "true", LABEL_INSTANCE: instance},
        "NetworkDisabled": True,
        "HostConfig": {
            "Binds": binds,
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "Privileged": False,
            "IpcMode": "private",
            "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
            "Memory": memory,
            "MemorySwap": memory,
            "PidsLimit": 128,
            "Ulimits": [{"Name": "nofile", "Soft": 4096, "Hard": 4096}],
            # What it prints is read back whole: keep it small.
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
        },
    }


def _last(pattern: re.Pattern[str], output: str) -> re.Match[str] | None:
    found = None
    for line in output.splitlines():
        match = pattern.match(line)
        if match is not None:
            found = match
    return found


def reason(output: str) -> str:
    """The helper's own error code, else the tail of its output, made safe to show."""
    code = _last(_ERROR, output)
    if code is not None and code.group(1) in ERRORS:
        return ERRORS[code.group(1)]
    lines = [line for line in output.splitlines() if line.strip()]
    return _clean(" / ".join(lines[-3:]), 300) or "no output"


def _clean(text: str, max_chars: int) -> str:
    """Printable characters only, at most `max_chars`: the text came out of a box."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:max_chars]
