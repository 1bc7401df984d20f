"""Fixtures: the real engine, the real sandbox image, the fake model API, orchestrators.

Every container a test starts carries `dev.cbox.test=<this run's id>` (direct
runs) or an orchestrator instance label `test-...`; both are removed after each
test and again at the end of the session, whether the test passed or not. The
run id keeps two test runs on one engine (two checkouts) out of each other's way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiodocker
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.orch import Orchestrator, remove_containers
from tests.testbed.engine import ensure_engine
from tests.testbed.images import base_image, sandbox_image

TEST_LABEL = "dev.cbox.test"
#: This pytest run's value of TEST_LABEL: cleanup removes only its own containers.
TEST_RUN = uuid.uuid4().hex[:12]
WORKSPACE_UID = 1234
WORKSPACE_GID = 1234
REPO = Path(__file__).resolve().parent.parent


def _remove_test_containers() -> None:
    remove_containers(f"{TEST_LABEL}={TEST_RUN}")


def _remove_stale_test_networks() -> None:
    """Task networks left by an earlier, killed test run: Docker's address pools are small
    (about 30 networks), so leftovers would eventually make every new task fail."""
    lines = subprocess.run(
        ["docker", "network", "ls", "--filter", "label=dev.cbox.managed=true",
         "--format", '{{.Name}} {{.Label "dev.cbox.instance"}}'],
        capture_output=True, text=True, check=False,
    ).stdout.splitlines()
    for line in lines:
        name, _, instance = line.partition(" ")
        if instance.startswith(("test-", "cbox-test-")):
            subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    ensure_engine()
    _remove_stale_test_networks()
    yield
    _remove_test_containers()


@pytest.fixture(scope="session")
async def image(engine: None) -> str:
    return await sandbox_image(base_image())


@pytest.fixture(scope="session")
async def docker(engine: None) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker()
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def testbed_network(docker: aiodocker.Docker) -> AsyncIterator[tuple[str, str]]:
    """An internal network for direct container runs; the host is its only peer."""
    name = f"cbox-testbed-{uuid.uuid4().hex[:8]}"
    net = await docker.networks.create({"Name": name, "Internal": True})
    info = await net.show()
    gateway = info["IPAM"]["Config"][0]["Gateway"]
    yield name, gateway
    _remove_test_containers()
    await net.delete()


@pytest.fixture(scope="session")
async def fake_api(testbed_network: tuple[str, str]) -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(hosts=("127.0.0.1", testbed_network[1]))
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture(autouse=True)
def _cleanup_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "engine" in request.fixturenames:
        _remove_test_containers()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace owned by a non-root user, as a user's checkout would be."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "README.md").write_text("hello from the workspace\n")
    for path in (ws, ws / "README.md"):
        os.chown(path, WORKSPACE_UID, WORKSPACE_GID)
    tmp_path.chmod(0o755)
    return ws


@pytest.fixture
def marker() -> str:
    """A unique string that routes this test's model calls to its own script."""
    return f"CBOX-TEST-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def orchestrator_factory(
    image: str, fake_api: FakeAnthropic, tmp_path: Path
) -> AsyncIterator[type[Orchestrator]]:
    started: list[Orchestrator] = []

    class Factory(Orchestrator):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(image=image, fake_url=fake_api.url(), tmp=tmp_path, **kwargs)
            started.append(self)

    yield Factory
    for orch in started:
        await orch.destroy()


@pytest.fixture
async def orchestrator(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> Orchestrator:
    orch = orchestrator_factory(workspace=workspace)
    await orch.start()
    return orch


def repo_root() -> Path:
    return REPO


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
