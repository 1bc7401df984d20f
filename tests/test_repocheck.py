"""The submit-time check of isolated workspaces, on hostile repository layouts.

No git runs (the repository may be an agent's work), nothing blocks and no
path outside the repository is followed; each case ends in a clear refusal.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbox.errors import InvalidRequest
from cbox.orchestrator.repocheck import check_repository

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A minimal repository: .git/HEAD on main, main a loose ref."""
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "refs" / "heads" / "main").write_text(SHA + "\n")
    return repo


def refused(repo: Path) -> str:
    with pytest.raises(InvalidRequest) as raised:
        check_repository(repo)
    return raised.value.message


def test_a_plain_repository_passes(repo: Path) -> None:
    check_repository(repo)
    (repo / ".git" / "refs" / "heads" / "main").unlink()
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs\n{SHA} refs/heads/main\n")
    check_repository(repo)
    (repo / ".git" / "HEAD").write_text(SHA + "\n")  # detached
    check_repository(repo)


def test_no_commits(repo: Path) -> None:
    (repo / ".git" / "refs" / "heads" / "main").unlink()
    assert "without commits" in refused(repo)


def test_not_a_repository_and_a_subdirectory(repo: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "not a git repository" in refused(plain)
    (repo / "sub").mkdir()
    assert "inside the git repository" in refused(repo / "sub")


def test_git_dir_that_is_a_symlink_or_a_file(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (repo / ".git").rename(other)
    (repo / ".git").symlink_to(other)
    assert ".git is a symbolic link" in refused(repo)
    (repo / ".git").unlink()
    (repo / ".git").write_text(f"gitdir: {other}\n")
    assert ".git is a file" in refused(repo)


def test_head_symlink_fifo_and_garbage(repo: Path, tmp_path: Path) -> None:
    head = repo / ".git" / "HEAD"
    outside = tmp_path / "outside"
    outside.write_text("ref: refs/heads/main\n")
    head.unlink()
    head.symlink_to(outside)
    assert "HEAD is a symbolic link" in refused(repo)
    head.unlink()
    os.mkfifo(head)  # must not block
    assert "HEAD is not a regular file" in refused(repo)
    head.unlink()
    head.write_bytes(b"x" * 10_000_000)
    assert "not a valid HEAD" in refused(repo)


def test_a_ref_never_leads_outside_the_repository(repo: Path, tmp_path: Path) -> None:
    """`refs/heads/..`-style names are refused; a symlinked ref directory is not followed."""
    (tmp_path / "secret").write_text(SHA + "\n")
    head = repo / ".git" / "HEAD"
    head.write_text("ref: refs/heads/../../../../secret\n")
    assert "not a valid HEAD" in refused(repo)
    head.write_text("ref: refs/heads/main\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "main").write_text(SHA + "\n")
    heads = repo / ".git" / "refs" / "heads"
    (heads / "main").unlink()
    heads.rmdir()
    heads.symlink_to(elsewhere)
    assert "without commits" in refused(repo)
