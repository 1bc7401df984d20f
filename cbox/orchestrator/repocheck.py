"""Submit-time check that a workspace can be isolated, without running git.

The repository may have been written by an agent (any `rw` task on it), so
the check runs no git (git would read its config) and follows no symlink:
every file is opened relative to a directory descriptor with `O_NOFOLLOW`
and `O_NONBLOCK` (a FIFO never blocks), must be a regular file by `fstat`,
and is read only up to a bound. It answers the common mistakes with an HTTP
400 at once; the prepare helper (`cbox.orchestrator.gitbox`) checks again,
with git, inside its container.

Refused: no `.git`; a `.git` that is a symlink or a file (a linked worktree
or submodule: its gitfile names a path elsewhere on the host, which would be
cloned); a subdirectory of a repository; a `HEAD` that is not a regular
file; a repository whose `HEAD` names no commit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from cbox.errors import InvalidRequest

_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_HEAD_MAX_BYTES = 4096
_PACKED_REFS_MAX_BYTES = 64 * 1024 * 1024
_SHA = re.compile(rb"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_REF_PART = re.compile(r"^[A-Za-z0-9_+@-][A-Za-z0-9._+@-]{0,254}$")
HINT = "isolated workspaces need a git repository; use a policy with workspace = 'rw'"


def check_repository(path: Path) -> None:
    """Refuse a workspace that cannot be isolated, with the reason (HTTP 400)."""
    try:
        info = os.lstat(path / ".git")
    except FileNotFoundError:
        for parent in path.parents:
            if os.path.lexists(parent / ".git"):
                _refuse(path, f"is inside the git repository {parent}; name the repository's "
                        "top level as the workspace")
        _refuse(path, f"is not a git repository ({HINT})")
    except OSError as exc:
        _refuse(path, f"cannot be isolated: .git: {exc.strerror}")
    if stat.S_ISLNK(info.st_mode):
        _refuse(path, "cannot be isolated: its .git is a symbolic link; isolated workspaces "
                "need the repository's own .git directory")
    if stat.S_ISREG(info.st_mode):
        _refuse(path, "cannot be isolated: its .git is a file (a linked worktree or a "
                "submodule); name the main repository as the workspace")
    if not stat.S_ISDIR(info.st_mode):
        _refuse(path, "cannot be isolated: its .git is not a directory")
    try:
        _check_head(path)
    except OSError as exc:  # the repository changed under us
        _refuse(path, f"cannot be isolated: .git: {exc.strerror or exc}")


def _check_head(path: Path) -> None:
    with _opened(os.open(path / ".git", _OPEN_DIR)) as git_dir:
        head = _read_small(path, git_dir, "HEAD", _HEAD_MAX_BYTES).strip()
        if _SHA.match(head):
            return
        ref = head.removeprefix(b"ref: ").decode("ascii", "replace")
        if not head.startswith(b"ref: ") or not _valid_ref(ref):
            _refuse(path, "cannot be isolated: its .git/HEAD is not a valid HEAD")
        if not _has_ref(path, git_dir, ref):
            _refuse(path, "is a git repository without commits; commit once first")


def _refuse(path: Path, why: str) -> NoReturn:
    raise InvalidRequest(f"workspace {path} {why}", field="workspace")


@contextlib.contextmanager
def _opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _valid_ref(ref: str) -> bool:
    parts = ref.split("/")
    return (
        len(parts) >= 2 and parts[0] == "refs"
        and all(_REF_PART.match(p) and not p.endswith(".lock") for p in parts)
    )


def _read_small(path: Path, dir_fd: int, name: str, max_bytes: int) -> bytes:
    """A regular file under `dir_fd`, at most `max_bytes`; refused if it is anything else."""
    try:
        fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse(path, f"cannot be isolated: its .git/{name} is a symbolic link")
        _refuse(path, f"cannot be isolated: .git/{name}: {exc.strerror or exc}")
    with _opened(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _refuse(path, f"cannot be isolated: its .git/{name} is not a regular file")
        return os.read(fd, max_bytes)


def _has_ref(path: Path, git_dir: int, ref: str) -> bool:
    """Whether `ref` exists: loose, packed, or kept in a reftable (then the helper decides)."""
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.stat("reftable", dir_fd=git_dir, follow_symlinks=False).st_mode):
            return True
    *dirs, leaf = ref.split("/")
    fds: list[int] = []
    try:
        at = git_dir
        for part in dirs:
            at = os.open(part, _OPEN_DIR, dir_fd=at)
            fds.append(at)
        info = os.stat(leaf, dir_fd=at, follow_symlinks=False)
        if stat.S_ISREG(info.st_mode) and info.st_size > 0:
            return True
    except OSError:
        pass
    finally:
        for fd in fds:
            os.close(fd)
    return _packed(path, git_dir, ref.encode())


def _packed(path: Path, git_dir: int, ref: bytes) -> bool:
    try:
        fd = os.open("packed-refs", _OPEN_FILE, dir_fd=git_dir)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as packed:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _refuse(path, "cannot be isolated: its .git/packed-refs is not a regular file")
        seen = 0
        while line := packed.readline(4096):
            seen += len(line)
            if seen > _PACKED_REFS_MAX_BYTES:
                return True  # too big to read here; the prepare helper checks with git
            if line.rstrip(b"\n").endswith(b" " + ref) and _SHA.match(line.split(b" ", 1)[0]):
                return True
    return False
