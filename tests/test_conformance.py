"""The conformance suite: each test attempts a break-out and fails if it succeeds.

Attack scripts run inside real task containers, through a real orchestrator,
with the default hardening. A script prints `BREACH: ...` for anything that
worked and `held: ...` for each attempt that was stopped; the test demands no
breach and every expected `held`. The list is counted in the README.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEST_LABEL, TEST_RUN, WORKSPACE_GID, WORKSPACE_UID
from tests.orch import FAKE_KEY, Orchestrator

pytestmark = [pytest.mark.docker]

POLICIES = {
    "attack-rw": 'agent = "command"\ncommand = ["bash", "/workspace/attack.sh"]\n'
    "timeout_s = 60\n",
    "attack-ro": 'agent = "command"\nworkspace = "ro"\ncommand = ["bash", "/workspace/attack.sh"]\n'
    "timeout_s = 60\n",
    "bomb": 'agent = "command"\ncommand = ["bash", "/workspace/attack.sh"]\npids = 64\n'
    "timeout_s = 20\n",
    "hog": 'agent = "command"\ncommand = ["bash", "/workspace/attack.sh"]\nmemory_mb = 128\n',
    "idle": 'agent = "command"\nworkspace = "ro"\ncommand = ["sh", "-c", "sleep 30"]\n',
    "allow": 'agent = "command"\ncommand = ["bash", "/workspace/attack.sh"]\n'
    'network = "allowlist"\nallow_hosts = ["127.0.0.1"]\nallow_ports = ["1024-65535"]\n',
}

# The key is assembled at run time so the script file itself never contains it.
KEY_HEAD, KEY_TAIL = FAKE_KEY[:10], FAKE_KEY[10:]


@pytest.fixture
async def box(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, workspace: Path
) -> Orchestrator:
    orch = orchestrator_factory(
        workspace=workspace, max_concurrent=3, policies=POLICIES
    )
    await orch.start()
    return orch


def write_attack(workspace: Path, script: str) -> None:
    path = workspace / "attack.sh"
    path.write_text("set -u\n" + script)
    os.chown(path, WORKSPACE_UID, WORKSPACE_GID)


async def run_attack(
    box: Orchestrator, workspace: Path, policy: str, script: str
) -> tuple[list[str], dict[str, Any], list[Any]]:
    write_attack(workspace, script)
    task = await box.submit("attack", policy=policy)
    events = [e async for e in box.events(task["id"])]
    lines = [str(e.data.get("line", "")) for e in events if e.type in ("output", "stderr")]
    breaches = [line for line in lines if line.startswith("BREACH")]
    assert breaches == [], breaches
    return lines, await box.task(task["id"]), events


def held(lines: list[str]) -> list[str]:
    return [line[len("held: "):] for line in lines if line.startswith("held: ")]


async def test_write_to_readonly_workspace(box: Orchestrator, workspace: Path) -> None:
    before = {p.name: p.read_bytes() for p in workspace.iterdir()}
    lines, task, _ = await run_attack(box, workspace, "attack-ro", """
touch /workspace/new 2>/dev/null && echo "BREACH: created a file" || echo "held: create"
echo x >> /workspace/README.md 2>/dev/null && echo "BREACH: appended" || echo "held: append"
mkdir /workspace/d 2>/dev/null && echo "BREACH: mkdir" || echo "held: mkdir"
rm -f /workspace/README.md 2>/dev/null; [ -e /workspace/README.md ] && echo "held: delete" \
  || echo "BREACH: deleted"
""")
    assert held(lines) == ["create", "append", "mkdir", "delete"]
    assert task["mount_mode"] == "ro"
    after = {p.name: p.read_bytes() for p in workspace.iterdir() if p.name != "attack.sh"}
    assert after == before


async def test_write_to_host_outside_workspace(
    box: Orchestrator, workspace: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("host file next to the workspace\n")
    lines, _, _ = await run_attack(box, workspace, "attack-rw", """
for p in /etc/pwned /usr/pwned /pwned /workspace/../pwned; do
  touch "$p" 2>/dev/null && echo "BREACH: wrote $p" || echo "held: $p"
done
ln -s / /workspace/escape && touch /workspace/escape/etc/pwned2 2>/dev/null \
  && echo "BREACH: wrote through a symlink" || echo "held: symlink"
cat /workspace/../outside.txt 2>/dev/null && echo "BREACH: read a host file" \
  || echo "held: read sibling"
found=$(find / -xdev -name outside.txt 2>/dev/null | head -1)
[ -z "$found" ] && echo "held: find sibling" || echo "BREACH: found $found"
""")
    assert len(held(lines)) == 7
    assert not Path("/etc/pwned").exists()
    assert not Path("/etc/pwned2").exists()
    assert not (tmp_path / "pwned").exists()
    assert secret.read_text() == "host file next to the workspace\n"


async def test_fork_bomb_is_contained(box: Orchestrator, workspace: Path) -> None:
    write_attack(workspace, """
bomb() { bomb | bomb & }
( bomb ) 2>/dev/null &
sleep 5
n=$(ls -d /proc/[0-9]* 2>/dev/null | wc -l)
[ "$n" -le 64 ] && echo "held: $n processes" || echo "BREACH: $n processes"
""")
    task = await box.submit("bomb", policy="bomb")
    await box.wait_state(task["id"], {"running"})
    # The host stays responsive while the box is at its pids limit.
    for _ in range(5):
        status, body = await asyncio.wait_for(box.request("GET", "/healthz"), 10)
        assert status == 200
        assert body["ok"] is True
        await asyncio.sleep(0.5)
    events = [e async for e in box.events(task["id"])]
    lines = [str(e.data.get("line", "")) for e in events if e.type == "output"]
    assert not [line for line in lines if line.startswith("BREACH")]
    assert await box.no_containers_left()


async def test_memory_past_limit_records_oom(box: Orchestrator, workspace: Path) -> None:
    _, task, events = await run_attack(box, workspace, "hog", """
python3 -c "b = [bytearray(16 << 20) for _ in range(64)]; print('BREACH: 1 GiB allocated')"
""")
    assert task["oom_killed"] is True
    assert task["state"] == "failed"
    assert "out of memory" in task["error"]
    assert events[-1].data["oom_killed"] is True


@pytest.fixture
async def outside_host(image: str) -> AsyncIterator[str]:
    """A web server on a different Docker network: somewhere a box must not reach."""
    name = f"cbox-outside-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "network", "create", name], check=True, capture_output=True)
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", name,
         "--label", f"{TEST_LABEL}={TEST_RUN}", image, "python3", "-m", "http.server", "8000"],
        check=True, capture_output=True,
    )
    info = json.loads(
        subprocess.run(["docker", "inspect", name], check=True, capture_output=True).stdout
    )
    ip = info[0]["NetworkSettings"]["Networks"][name]["IPAddress"]
    yield ip
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)


async def test_no_way_out_but_the_gateway(
    box: Orchestrator, workspace: Path, outside_host: str
) -> None:
    async def host_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")
        await writer.drain()
        writer.close()

    # A host service on all interfaces, as a database or sshd would be.
    service = await asyncio.start_server(host_service, "0.0.0.0", 0)
    service_port = service.sockets[0].getsockname()[1]
    gateway = "${ANTHROPIC_BASE_URL}"
    lines, _, _ = await run_attack(box, workspace, "attack-rw", f"""
curl -s -m 3 -o /dev/null http://{outside_host}:8000/ && echo "BREACH: reached another network" \
  || echo "held: other network"
host=$(echo {gateway} | sed -e 's|http://||' -e 's|:.*||')
curl -s -m 3 -o /dev/null http://$host:{box.port}/status && echo "BREACH: reached the API" \
  || echo "held: orchestrator API"
curl -s -m 3 -o /dev/null http://$host:{service_port}/ && echo "BREACH: reached a host service" \
  || echo "held: host service"
curl -s -m 3 -o /dev/null http://$host:2375/version && echo "BREACH: docker tcp" \
  || echo "held: docker tcp"
[ -S /var/run/docker.sock ] && echo "BREACH: docker socket" || echo "held: docker socket"
curl -s -m 3 --unix-socket /var/run/docker.sock http://d/version >/dev/null 2>&1 \
  && echo "BREACH: docker API" || echo "held: docker API"
code=$(curl -s -m 5 -o /dev/null -w '%{{http_code}}' -X POST {gateway}/v1/messages/count_tokens \
  -H "x-api-key: $ANTHROPIC_API_KEY" -H 'content-type: application/json' \
  -d '{{"model": "m", "messages": []}}')
[ "$code" = 200 ] && echo "gateway answers" || echo "BREACH-ish: gateway gave $code"
""")
    service.close()
    assert held(lines) == [
        "other network", "orchestrator API", "host service", "docker tcp", "docker socket",
        "docker API",
    ]
    assert "gateway answers" in lines


async def test_real_key_is_nowhere_in_the_box(box: Orchestrator, workspace: Path) -> None:
    write_attack(workspace, f"""
k="{KEY_HEAD}"; k="${{k}}{KEY_TAIL}"
env | grep -qF "$k" && echo "BREACH: key in env" || echo "held: env"
cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -qF "$k" \
  && echo "BREACH: key in /proc environ" || echo "held: proc environ"
# Matched in bash itself: a grep would carry the key in its own argv.
table=$(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ')
[[ "$table" == *"$k"* ]] && echo "BREACH: key in process table" || echo "held: process table"
grep -rsqF "$k" /etc /home /tmp /cbox /workspace /run /var 2>/dev/null \
  && echo "BREACH: key in a file" || echo "held: files"
sleep 3
""")
    task = await box.submit("find the key", policy="attack-rw")
    running = await box.wait_state(task["id"], {"running"})
    inspect = json.loads(
        subprocess.run(
            ["docker", "inspect", running["container_id"]], check=True, capture_output=True
        ).stdout
    )
    env = inspect[0]["Config"]["Env"]
    assert not [e for e in env if FAKE_KEY in e]
    assert any(e.startswith("ANTHROPIC_API_KEY=cbox-") for e in env)
    events = [e async for e in box.events(task["id"])]
    lines = [str(e.data.get("line", "")) for e in events if e.type == "output"]
    assert not [line for line in lines if line.startswith("BREACH")]
    assert held(lines) == ["env", "proc environ", "process table", "files"]


def container_env(container_id: str) -> dict[str, str]:
    inspect = json.loads(
        subprocess.run(["docker", "inspect", container_id], check=True, capture_output=True).stdout
    )
    return dict(e.split("=", 1) for e in inspect[0]["Config"]["Env"])


async def gateway_status(url: str, token: str) -> int | str:
    try:
        async with aiohttp.ClientSession() as session, session.post(
            url + "/v1/messages/count_tokens",
            json={"model": "m", "messages": []},
            headers={"x-api-key": token},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp:
            return resp.status
    except aiohttp.ClientConnectionError:
        return "refused"


async def test_tokens_are_per_task_and_die_with_it(box: Orchestrator) -> None:
    a = await box.submit("a", policy="idle")
    b = await box.submit("b", policy="idle")
    env_a = container_env((await box.wait_state(a["id"], {"running"}))["container_id"])
    env_b = container_env((await box.wait_state(b["id"], {"running"}))["container_id"])
    url_a, token_a = env_a["ANTHROPIC_BASE_URL"], env_a["ANTHROPIC_API_KEY"]
    url_b, token_b = env_b["ANTHROPIC_BASE_URL"], env_b["ANTHROPIC_API_KEY"]
    assert await gateway_status(url_a, token_a) == 200
    assert await gateway_status(url_b, token_a) == 401  # A's token on B's door
    assert await gateway_status(url_a, "cbox-forged") == 401
    await box.request("POST", f"/tasks/{a['id']}/stop")
    await box.wait_done(a["id"])
    assert await gateway_status(url_a, token_a) == "refused"  # A's door is gone
    assert await gateway_status(url_b, token_a) == 401
    assert await gateway_status(url_b, token_b) == 200
    await box.request("POST", f"/tasks/{b['id']}/stop")
    await box.wait_done(b["id"])
    assert await gateway_status(url_b, token_b) == "refused"


async def test_allowlist_lets_listed_hosts_through_and_records_denials(
    box: Orchestrator, workspace: Path, unused_tcp_port: int
) -> None:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", unused_tcp_port)
    try:
        lines, task, events = await run_attack(box, workspace, "allow", f"""
out=$(curl -s -m 5 -p http://127.0.0.1:{unused_tcp_port}/)
[ "$out" = hello ] && echo "allowed: listed host" || echo "BREACH-ish: listed host failed: $out"
out=$(curl -s -m 5 -p http://127.0.0.2:{unused_tcp_port}/)
[ "$out" = hello ] && echo "BREACH: unlisted host" || echo "held: unlisted host"
out=$(curl -s -m 5 http://127.0.0.1:{unused_tcp_port}/)
[ "$out" = hello ] && echo "BREACH: plain HTTP proxying" || echo "held: plain http"
curl -s -m 3 --noproxy '*' -o /dev/null http://127.0.0.1:{unused_tcp_port}/ \
  && echo "BREACH: direct" || echo "held: direct"
""")
    finally:
        server.close()
    assert "allowed: listed host" in lines
    assert held(lines) == ["unlisted host", "plain http", "direct"]
    denials = [e.data for e in events if e.type == "egress_denied"]
    assert [d["target"] for d in denials] == [
        f"127.0.0.2:{unused_tcp_port}", f"http://127.0.0.1:{unused_tcp_port}/"
    ]
    assert task["state"] == "completed"


@pytest.fixture
def unused_tcp_port() -> int:
    from tests.orch import free_port

    return free_port()


async def test_api_requires_its_token(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    orch = orchestrator_factory(workspace=workspace, env={"CBOX_API_TOKEN": "s3cret-token"})
    await orch.start()
    status, body = await orch.request("POST", "/tasks", json={"prompt": "x"}, auth=False)
    assert status == 401
    assert body["error"]["message"] == "missing or wrong API token"
    status, _ = await orch.request(
        "GET", "/tasks", headers={"Authorization": "Bearer wrong-token"}
    )
    assert status == 401
    status, _ = await orch.request("GET", "/status", headers={"Authorization": "s3cret-token"})
    assert status == 401
    status, _ = await orch.request(
        "GET", "/tasks", headers={"Authorization": "Bearer s3cret-token"}
    )
    assert status == 200
    status, _ = await orch.request("GET", "/healthz")
    assert status == 200


async def test_listening_beyond_loopback_generates_a_token(
    orchestrator_factory: type[Orchestrator], workspace: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "config" / "api-token"
    orch = orchestrator_factory(
        workspace=workspace,
        env={
            "AGENT_HOST": "0.0.0.0", "CBOX_API_TOKEN": "", "CBOX_API_TOKEN_FILE": str(token_file)
        },
    )
    await orch.start()
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    status, _ = await orch.request("GET", "/status", auth=False)
    assert status == 401
    status, _ = await orch.request("GET", "/status", headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    assert token in orch.log.read_text()  # shown once, at generation


async def test_malformed_and_oversized_input(box: Orchestrator) -> None:
    import io

    json_type = {"Content-Type": "application/json"}
    status, _ = await box.request(
        "POST", "/tasks", data=io.BytesIO(b"{" * 3_000_000), headers=json_type
    )
    assert status == 413
    status, _ = await box.request("POST", "/tasks", data=b"\xff\xfe not json", headers=json_type)
    assert status == 400
    status, _ = await box.request("POST", "/tasks", json={"prompt": "x" * 200_000})
    assert status == 400


async def test_mounts_outside_the_roots_are_refused(
    box: Orchestrator, workspace: Path, tmp_path: Path
) -> None:
    (workspace / "link-out").symlink_to("/etc")
    (tmp_path / "elsewhere").mkdir()
    for path in ["/", "/etc", f"{workspace}/../elsewhere", f"{workspace}/link-out",
                 f"{workspace}/link-out/.."]:
        status, body = await box.request(
            "POST", "/tasks", json={"prompt": "x", "workspace": path}
        )
        assert status == 400, (path, body)
        assert "outside the allowed roots" in body["error"]["message"]
    _, listing = await box.request("GET", "/tasks")
    assert listing["total"] == 0


async def test_a_workspace_swapped_for_a_symlink_after_submit_is_not_mounted(
    orchestrator_factory: type[Orchestrator], workspace: Path, tmp_path: Path
) -> None:
    """A rw box turns a queued task's workspace (inside its own) into a symlink to a
    host directory between submit and mount: the engine would follow it."""
    home = tmp_path / "host-home"
    home.mkdir()
    os.chown(home, WORKSPACE_UID, WORKSPACE_GID)
    sub = workspace / "sub"
    sub.mkdir()
    os.chown(sub, WORKSPACE_UID, WORKSPACE_GID)
    orch = orchestrator_factory(workspace=workspace, max_concurrent=1, policies={
        **POLICIES,
        "touch": 'agent = "command"\ncommand = ["sh", "-c", "echo pwned > /workspace/pwned"]\n',
    })
    await orch.start()
    write_attack(workspace, f"mv /workspace/sub /workspace/sub.orig && ln -s {home} "
                 "/workspace/sub && echo swapped\n")
    first = await orch.submit("swap", policy="attack-rw")
    second = await orch.submit("touch", policy="touch", workspace=str(sub))
    assert (await orch.wait_done(first["id"]))["state"] == "completed"
    done = await orch.wait_done(second["id"])
    assert not (home / "pwned").exists(), "the box wrote into the symlink's target"
    assert done["state"] == "failed", done
    # Refused at the start (the workspace is resolved again) or at the mount itself
    # (`docker.check_binds`, the last line for the warm and git-helper paths).
    assert any(why in (done["error"] or "") for why in (
        "replaced by a symlink", "outside the allowed roots")), done


async def test_task_networks_have_no_ipv6(box: Orchestrator) -> None:
    """The host firewall is IPv4: a dual-stack network would be a way around it."""
    task = await box.submit("idle", policy="idle")
    await box.wait_state(task["id"], {"running"})
    nets = box.networks()
    assert nets
    for net in nets:
        shown = json.loads(subprocess.run(
            ["docker", "network", "inspect", net], capture_output=True, text=True, check=True
        ).stdout)[0]
        assert shown["EnableIPv6"] is False, shown
    await box.request("POST", f"/tasks/{task['id']}/stop")
    await box.wait_done(task["id"])
