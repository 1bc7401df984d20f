"""Fixtures of the GitHub worker's tests: the fake GitHub, a user's checkout, a
`cbox serve` with command-agent policies. Loaded with `pytest_plugins`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import WORKSPACE_GID, WORKSPACE_UID
from tests.fakes.github import FakeGitHub
from tests.fakes.github import Repo as FakeRepo
from tests.github_support import POLICIES, git
from tests.orch import Orchestrator


@pytest.fixture
async def gh(tmp_path: Path) -> AsyncIterator[FakeGitHub]:
    root = tmp_path / "remotes"
    root.mkdir()
    fake = FakeGitHub(root)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def repo(gh: FakeGitHub) -> FakeRepo:
    return gh.add_repo("acme", "rocket")


@pytest.fixture
def checkout() -> Iterator[Path]:
    """The user's checkout: one commit, owned by the workspace uid. Outside pytest's
    base directory: other test sessions on this machine reset that one to 0700,
    and host-side git runs as the workspace owner, who must reach it."""
    top = Path(tempfile.mkdtemp(prefix="cbox-gh-"))
    top.chmod(0o711)
    ws = top / "ws"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main")
    (ws / "README.md").write_text("hello\n")
    git(ws, "add", ".")
    git(ws, "-c", "user.name=User", "-c", "user.email=u@example.com", "commit", "-qm", "init")
    for path in [ws, *ws.rglob("*")]:
        os.lchown(path, WORKSPACE_UID, WORKSPACE_GID)
    yield ws
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
async def orch(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, checkout: Path
) -> Orchestrator:
    # Host-side git of isolated tasks runs as the workspace owner in the data
    # dir, so it sits beside the checkout, outside pytest's base directory.
    data = checkout.parent / "data"
    data.mkdir()
    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in POLICIES.items():
        (policies / f"{name}.toml").write_text(text)
    server = orchestrator_factory(
        workspace=checkout, max_concurrent=4,
        env={"CBOX_POLICIES_DIR": str(policies), "CBOX_DATA_DIR": str(data)},
    )
    await server.start()
    return server
