"""Issue: sandbox image and test bed. The real CLI, in the real image, on the real engine."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from cbox import image as images
from tests.conftest import TEST_LABEL, TEST_RUN, WORKSPACE_GID, WORKSPACE_UID
from tests.fakes.anthropic import FakeAnthropic, Text, ToolUse
from tests.testbed.images import WHEEL_CACHE

pytestmark = [pytest.mark.docker, pytest.mark.slow]


async def run_box(
    docker: aiodocker.Docker,
    image: str,
    cmd: list[str],
    *,
    network: str = "none",
    env: dict[str, str] | None = None,
    binds: list[str] | None = None,
    user: str | None = None,
    memory_mb: int | None = None,
) -> tuple[int, bool, list[dict[str, Any]], str]:
    """Run one labelled container to its end: (exit code, OOMKilled, JSON lines, raw stdout)."""
    host: dict[str, Any] = {
        "NetworkMode": network,
        "Binds": binds or [],
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
    }
    if memory_mb:
        host["Memory"] = host["MemorySwap"] = memory_mb * 1024 * 1024
    config: dict[str, Any] = {
        "Image": image,
        "Cmd": cmd,
        "Env": [f"{k}={v}" for k, v in (env or {}).items()],
        "Labels": {TEST_LABEL: TEST_RUN},
        "HostConfig": host,
    }
    if user:
        config["User"] = user
    container = await docker.containers.create(config, name=f"cbox-test-{uuid.uuid4().hex[:8]}")
    try:
        await container.start()
        await container.wait(timeout=300)
        info = await container.show()
        stdout = "".join(await container.log(stdout=True))
        stderr = "".join(await container.log(stderr=True))
    finally:
        await container.delete(force=True)
    lines = []
    for line in stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    state = info["State"]
    return state["ExitCode"], bool(state["OOMKilled"]), lines, stdout + stderr


def claude_cmd(prompt: str) -> list[str]:
    return [
        "claude", "-p", prompt, "--output-format", "stream-json", "--verbose",
        "--dangerously-skip-permissions",
    ]


def claude_env(fake: FakeAnthropic, gateway_ip: str) -> dict[str, str]:
    return {
        "ANTHROPIC_BASE_URL": fake.url(gateway_ip),
        "ANTHROPIC_API_KEY": "sk-test",
        "HOME": "/tmp",
    }


def tool_results(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        if line.get("type") != "user":
            continue
        for block in line.get("message", {}).get("content", []):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                found.append(block)
    return found


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content)


async def test_image_carries_version_labels(docker: aiodocker.Docker, image: str) -> None:
    labels = (await docker.images.inspect(image))["Config"]["Labels"]
    assert labels["dev.cbox.claude-code.version"] == "2.1.332"
    assert labels["dev.cbox.image.version"]
    assert labels[images.LABEL_INPUTS]


async def test_claude_code_version_and_default_user(docker: aiodocker.Docker, image: str) -> None:
    code, _, _, out = await run_box(docker, image, ["sh", "-c", "claude --version; id -u; id -g"])
    assert code == 0, out
    version, uid, gid = out.split()[0], out.split()[-2], out.split()[-1]
    assert version == "2.1.332"
    assert (uid, gid) == ("1000", "1000")


async def test_claude_writes_file_owned_by_workspace_owner(
    docker: aiodocker.Docker,
    image: str,
    fake_api: FakeAnthropic,
    testbed_network: tuple[str, str],
    workspace: Path,
    marker: str,
) -> None:
    fake_api.script(
        marker,
        [
            ToolUse("Write", {"file_path": "/workspace/hello.txt", "content": "hi from the box\n"}),
            ToolUse("Bash", {"command": "id -u", "description": "who am I"}),
            Text("done"),
        ],
    )
    code, _, lines, out = await run_box(
        docker,
        image,
        claude_cmd(f"{marker} write hello.txt"),
        network=testbed_network[0],
        env=claude_env(fake_api, testbed_network[1]),
        binds=[f"{workspace}:/workspace:rw"],
        user=f"{WORKSPACE_UID}:{WORKSPACE_GID}",
    )
    assert code == 0, out
    written = workspace / "hello.txt"
    assert written.read_text() == "hi from the box\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (WORKSPACE_UID, WORKSPACE_GID)
    results = tool_results(lines)
    # The agent process (and the tools it runs) are not root.
    assert result_text(results[1]).strip() == str(WORKSPACE_UID)
    assert lines[-1]["type"] == "result" and lines[-1]["is_error"] is False
    assert len(fake_api.requests_with(marker)) >= 3


async def test_readonly_mount_gives_erofs_and_no_file(
    docker: aiodocker.Docker,
    image: str,
    fake_api: FakeAnthropic,
    testbed_network: tuple[str, str],
    workspace: Path,
    marker: str,
) -> None:
    fake_api.script(
        marker,
        [ToolUse("Write", {"file_path": "/workspace/nope.txt", "content": "x"}), Text("done")],
    )
    before = sorted(p.name for p in workspace.iterdir())
    code, _, lines, out = await run_box(
        docker,
        image,
        claude_cmd(f"{marker} try to write"),
        network=testbed_network[0],
        env=claude_env(fake_api, testbed_network[1]),
        binds=[f"{workspace}:/workspace:ro"],
        user=f"{WORKSPACE_UID}:{WORKSPACE_GID}",
    )
    assert code == 0, out
    [write_result] = tool_results(lines)
    assert write_result.get("is_error") is True
    assert "EROFS" in result_text(write_result)
    assert not (workspace / "nope.txt").exists()
    assert sorted(p.name for p in workspace.iterdir()) == before


async def test_memory_limit_kills_allocator_and_reports_oom(
    docker: aiodocker.Docker, image: str
) -> None:
    code, oom, _, out = await run_box(
        docker,
        image,
        ["python3", "-c", "blocks = [bytearray(16 << 20) for _ in range(64)]; print('survived')"],
        memory_mb=64,
    )
    assert oom is True, out
    assert code == 137
    assert "survived" not in out


async def test_second_build_rebuilds_nothing(docker: aiodocker.Docker, image: str) -> None:
    """The image fixture already built (or found) it; building again is a no-op."""
    base = (await docker.images.inspect(image))["Config"]["Labels"]
    wheel = await images.download_wheel(images.pinned_sdk_version(), WHEEL_CACHE, print)
    base_tag = next(
        t for t in (await docker.images.list()) for t in (t.get("RepoTags") or [])
        if t.startswith("cbox-base:")
    )
    result = await images.build_image(docker, tag=image, base_image=base_tag, wheel=wheel)
    assert result.built is False
    assert result.inputs_hash == base[images.LABEL_INPUTS]


@pytest.mark.parametrize(
    ("stdin", "code", "stdout", "stderr"),
    [
        # A task message: its env and task file are in place, its stdin is empty.
        (json.dumps({"argv": ["sh", "-c", 'cat /cbox/task.json; echo "$X"; cat'],
                     "env": {"CBOX_TASK_JSON": '{"task_id": "t1"}', "X": "from the message"}}),
         0, '{"task_id": "t1"}\nfrom the message\n', ""),
        ("", 0, "", ""),  # discarded unused: stdin closes with no task
        ("not json", 125, "", "cbox-await: malformed task message"),
        (json.dumps({"argv": []}), 125, "", "empty argv"),
        (json.dumps({"argv": ["no-such-agent"]}), 127, "", "cannot run no-such-agent"),
    ],
)
def test_cbox_await_runs_the_task_it_is_handed(
    image: str, stdin: str, code: int, stdout: str, stderr: str
) -> None:
    """What a warm container runs: one JSON line on stdin, then the agent in its place."""
    proc = subprocess.run(
        ["docker", "run", "--rm", "-i", "--label", f"{TEST_LABEL}={TEST_RUN}",
         "--read-only", "--tmpfs", "/cbox:uid=1000,gid=1000", "--network", "none",
         image, "/usr/local/bin/cbox-await"],
        input=(stdin + "\n").encode() if stdin else b"", capture_output=True, timeout=60,
        check=False,
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.decode() == stdout
    assert stderr in proc.stderr.decode()
