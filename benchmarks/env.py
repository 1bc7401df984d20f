"""The benchmark's world: its own `cbox serve`, workspace, policies, bare network, fake API.

Everything it creates carries the label `dev.cbox.instance=<its instance>`
(the server labels its own containers and networks so; the bare baselines are
labelled the same by hand), and `close()` removes all of it, plus the
server's host firewall chain, the same way `tests/orch.py` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.docker_events import DockerEvents
from tests.fakes.anthropic import FakeAnthropic, Text
from tests.orch import drop_firewall_chain, free_port, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
FAKE_KEY = "sk-ant-bench-credential"
MARKER = "CBOX-BENCH-REAL-CLI"


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits every bench policy sets and every bare `docker run` repeats."""

    cpus: float = 2.0
    memory_mb: int = 4096
    pids: int = 512
    nofile: int = 4096
    uid: int = 1000  # a root-owned workspace runs as the image's agent user
    gid: int = 1000
    timeout_s: int = 900


LIMITS = Limits()


def _policy(command: list[str] | None, workspace: str = "ro") -> str:
    lines = [
        f'workspace = "{workspace}"',
        f"cpus = {LIMITS.cpus}",
        f"memory_mb = {LIMITS.memory_mb}",
        f"pids = {LIMITS.pids}",
        f"nofile = {LIMITS.nofile}",
        f"timeout_s = {LIMITS.timeout_s}",
    ]
    if command is not None:
        lines += ['agent = "command"', f"command = {json.dumps(command)}"]
    return "\n".join(lines) + "\n"


def stamped_lines_command(n: int, pace_s: float, delay_s: float = 1.0) -> list[str]:
    """Print `<i> <time_ns>` n times, one write per line, `pace_s` apart."""
    code = (
        "import sys, time\n"
        f"time.sleep({delay_s})\n"
        f"for i in range({n}):\n"
        "    sys.stdout.write(f'{i} {time.time_ns()}\\n'); sys.stdout.flush()\n"
        f"    time.sleep({pace_s})\n"
    )
    return ["python3", "-c", code]


def flood_command(n: int) -> list[str]:
    return ["seq", "1", str(n)]


ECHO = ["sh", "-c", "echo hi"]
SLEEP = ["sleep", "600"]



async def sh(*cmd: str, check: bool = True) -> str:
    """Run a command without blocking the loop; its stripped stdout."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {err.decode(errors='replace')}")
    return out.decode(errors="replace").strip()


class Bench:
    """Shared fixtures of one benchmark run; `async with Bench(...)` cleans up."""

    def __init__(self, image: str, *, fanout_lines: int, fanout_pace_s: float,
                 flood_lines: int) -> None:
        self.image = image
        self.id = uuid.uuid4().hex[:6]
        self.instance = f"bench-{self.id}"
        self.net_prefix = f"cbench-{self.id}"
        self.bare_network = f"cbench-{self.id}-bare"
        self.root = Path(tempfile.mkdtemp(prefix="cbox-bench-"))
        self.workspace = self.root / "ws"
        self.policies = self.root / "policies"
        self.fanout_cmd = stamped_lines_command(fanout_lines, fanout_pace_s)
        self.flood_cmd = flood_command(flood_lines)
        self.events = DockerEvents()
        self.fake: FakeAnthropic | None = None
        self.bare_gateway = ""
        self._bare_n = 0

    async def __aenter__(self) -> Bench:
        self.root.chmod(0o755)
        self.workspace.mkdir()
        self.workspace.chmod(0o755)
        (self.workspace / "README.md").write_text("benchmark workspace\n")
        self.policies.mkdir()
        for name, command in {
            "bench-echo": ECHO,
            "bench-fanout": self.fanout_cmd,
            "bench-flood": self.flood_cmd,
            "bench-sleep": SLEEP,
        }.items():
            (self.policies / f"{name}.toml").write_text(_policy(command))
        (self.policies / "bench-claude.toml").write_text(_policy(None, workspace="rw"))
        await self.events.start()
        await sh("docker", "network", "create", "--internal",
                 "-o", "com.docker.network.bridge.enable_icc=false",
                 "--label", f"dev.cbox.instance={self.instance}", self.bare_network)
        self.bare_gateway = await sh(
            "docker", "network", "inspect", self.bare_network,
            "--format", "{{(index .IPAM.Config 0).Gateway}}",
        )
        self.fake = FakeAnthropic(hosts=("127.0.0.1", self.bare_gateway))
        await self.fake.start()
        self.fake.script(MARKER, [Text("hi")])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.fake is not None:
            await self.fake.close()
        await self.events.close()
        self.cleanup_docker()
        shutil.rmtree(self.root, ignore_errors=True)

    def cleanup_docker(self) -> None:
        label = f"label=dev.cbox.instance={self.instance}"
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", label],
                             capture_output=True, text=True, check=False).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
        nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", label],
                              capture_output=True, text=True, check=False).stdout.split()
        if nets:
            subprocess.run(["docker", "network", "rm", *nets], capture_output=True, check=False)
        drop_firewall_chain(self.instance)

    # ------------------------------------------------------------------ bare docker

    def bare_name(self) -> str:
        self._bare_n += 1
        return f"{self.net_prefix}-bare-{self._bare_n}"

    def bare_args(self, name: str, command: list[str], *, detach: bool = False,
                  workspace_mode: str = "ro", env: dict[str, str] | None = None) -> list[str]:
        """`docker run` with the hardening and limits of cbox/orchestrator/container.py."""
        ids = f"uid={LIMITS.uid},gid={LIMITS.gid}"
        memory = f"{LIMITS.memory_mb}m"
        environment = {
            "HOME": "/home/agent",
            "CBOX_TASK_ID": name,
            "CBOX_TASK_JSON": json.dumps({"task_id": name, "prompt": "bench"}),
            **(env or {}),
        }
        args = ["docker", "run", "-d" if detach else "--rm", "--name", name,
                "--label", f"dev.cbox.instance={self.instance}",
                "--read-only",
                "--tmpfs", "/tmp:rw,nosuid,nodev,size=1g",
                "--tmpfs", f"/home/agent:rw,nosuid,nodev,size=512m,mode=0700,{ids}",
                "--tmpfs", f"/cbox:rw,nosuid,nodev,noexec,size=16m,mode=0700,{ids}",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "--memory", memory, "--memory-swap", memory, "--cpus", str(LIMITS.cpus),
                "--pids-limit", str(LIMITS.pids),
                "--ulimit", f"nofile={LIMITS.nofile}:{LIMITS.nofile}",
                "--user", f"{LIMITS.uid}:{LIMITS.gid}", "--workdir", "/workspace",
                "--ipc", "private", "--stop-timeout", "1",
                "-v", f"{self.workspace}:/workspace:{workspace_mode}",
                "--network", self.bare_network]
        for key, value in environment.items():
            args += ["-e", f"{key}={value}"]
        return [*args, self.image, *command]

    def bare_claude_env(self) -> dict[str, str]:
        assert self.fake is not None
        return {"ANTHROPIC_BASE_URL": self.fake.url(self.bare_gateway),
                "ANTHROPIC_API_KEY": FAKE_KEY}


class Server:
    """A `cbox serve` subprocess of this benchmark (restartable with another cap)."""

    def __init__(self, bench: Bench, max_concurrent: int = 8) -> None:
        self.bench = bench
        self.max_concurrent = max_concurrent
        #: CBOX_WARM_POOL; None keeps the product's default (a warm pool of 1 per shape).
        self.warm_pool: int | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        #: The API always needs a token; one per benchmark server.
        self.token = secrets.token_urlsafe(32)
        self.log = bench.root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        bench = self.bench
        assert bench.fake is not None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CBOX_") and k not in ("AGENT_PORT", "AGENT_HOST")}
        env.update({
            "AGENT_HOST": "127.0.0.1",
            "AGENT_PORT": str(self.port),
            "WORKSPACE_DIR": str(bench.workspace),
            "ANTHROPIC_API_KEY": FAKE_KEY,
            "ANTHROPIC_BASE_URL": bench.fake.url(),
            "CBOX_IMAGE": bench.image,
            "CBOX_DB_PATH": str(bench.root / "cbox.db"),
            "CBOX_DATA_DIR": str(bench.root / "data"),
            "CBOX_NETWORK": bench.net_prefix,
            "CBOX_INSTANCE": bench.instance,
            "CBOX_POLICIES_DIR": str(bench.policies),
            "CBOX_MAX_CONCURRENT": str(self.max_concurrent),
            "CBOX_STOP_GRACE_S": "1",
            "CBOX_API_TOKEN": self.token,
        })
        if self.warm_pool is not None:
            env["CBOX_WARM_POOL"] = str(self.warm_pool)
        return env

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "cbox", "serve"], cwd=REPO, env=self.env(),
                stdout=log, stderr=subprocess.STDOUT,
            )

    async def start(self, timeout_s: float = 60) -> None:
        self.proc = await asyncio.to_thread(self._spawn)
        await wait_until_serving(self.url, self.proc, self.log, timeout_s)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)

    async def restart(self, max_concurrent: int, warm_pool: int | None = None) -> None:
        await self.stop()
        self.max_concurrent = max_concurrent
        self.warm_pool = warm_pool
        await self.start()

    async def warm(self) -> int:
        """Warm containers ready on the server (its /healthz)."""
        async with aiohttp.ClientSession() as session, session.get(self.url + "/healthz") as resp:
            return int((await resp.json()).get("warm", 0))

    async def steady_pool(self, quiet_s: float = 2.5, timeout_s: float = 20) -> int:
        """The warm count once it has not changed for `quiet_s`: refills still due (a
        new server warms its default shape; a take is refilled a second later) are done."""
        deadline = time.monotonic() + timeout_s
        count, since = await self.warm(), time.monotonic()
        while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now = await self.warm()
            if now != count:
                count, since = now, time.monotonic()
        return count

    async def settle_pool(self, at_least: int, timeout_s: float = 10) -> int:
        """Wait until the warm pool is back to `at_least`, so refilling it (engine work)
        never overlaps a measured run, of either side."""
        deadline = time.monotonic() + timeout_s
        while True:
            count = await self.warm()
            if count >= at_least or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.05)
