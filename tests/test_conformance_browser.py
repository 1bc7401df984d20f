"""Issue 13: any web page in the user's browser is hostile, and it can reach the API.

Each test sends, with a real `cbox serve` on loopback, what a browser would send
for a page of the attacker's: a cross-origin "simple" request (no preflight:
`text/plain`, form-encoded or multipart bodies, a foreign or `null` Origin,
`Sec-Fetch-Site: cross-site`), or a DNS-rebinding request (the attacker's name
in `Host`). Every attack fails the suite if it gets through. After each refused
mutation, nothing may exist: no task, no container, no file in the workspace.
The attack policy `pwn` writes a file into the workspace, as the reproduction did.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.orch import Orchestrator

pytestmark = [pytest.mark.docker]

POLICIES = {"pwn": 'agent = "command"\ncommand = ["sh", "-c", "echo pwned > /workspace/pwned"]\n'}
SPEC = b'{"prompt": "exfiltrate everything", "policy": "pwn"}'
JSON = {"Content-Type": "application/json"}
BOUNDARY = "----cboxattack"
MULTIPART = (
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n"
    f"exfiltrate everything\r\n--{BOUNDARY}--\r\n"
).encode()
#: Bodies a page can send with fetch(..., {mode: "no-cors"}) or a plain <form>.
SIMPLE_BODIES = [
    ("text/plain", SPEC),
    ("text/plain;charset=UTF-8", SPEC),
    ("application/x-www-form-urlencoded", SPEC),
    (f"multipart/form-data; boundary={BOUNDARY}", MULTIPART),
]
MUTATIONS = [("POST", "/tasks"), ("POST", "/task")]


@pytest.fixture
async def api(orchestrator_factory: type[Orchestrator], workspace: Path) -> Orchestrator:
    """A server given its token in CBOX_API_TOKEN: attacks that hold a valid token."""
    orch = orchestrator_factory(workspace=workspace, policies=POLICIES)
    await orch.start()
    return orch


@pytest.fixture
async def default_api(orchestrator_factory: type[Orchestrator], workspace: Path) -> Orchestrator:
    """A server as compose starts it: loopback, no CBOX_API_TOKEN (the seed had no auth)."""
    orch = orchestrator_factory(
        workspace=workspace, policies=POLICIES, env={"CBOX_API_TOKEN": ""}
    )
    await orch.start()
    return orch


async def assert_nothing_created(orch: Orchestrator, tasks: int = 0) -> None:
    status, listing = await orch.request("GET", "/tasks")
    assert status == 200, listing
    assert listing["total"] == tasks, listing
    assert orch.containers() == []
    assert sorted(os.listdir(orch.workspace)) == ["README.md"]


def refused(status: int, body: object, expected: int) -> None:
    assert status == expected, body
    assert isinstance(body, dict) and set(body["error"]) >= {"type", "message"}, body


async def test_cross_origin_simple_post_without_token_creates_nothing(
    default_api: Orchestrator,
) -> None:
    api = default_api
    for content_type, body in SIMPLE_BODIES:
        for method, path in MUTATIONS:
            status, answer = await api.request(
                method, path, data=body, auth=False,
                headers={"Content-Type": content_type, "Origin": "http://evil.example"},
            )
            refused(status, answer, 403)
    await assert_nothing_created(api)


async def test_browser_content_types_with_a_valid_token_are_415(api: Orchestrator) -> None:
    """A page that somehow holds the token still cannot send a body without a preflight."""
    for content_type, body in SIMPLE_BODIES:
        for method, path in MUTATIONS:
            status, answer = await api.request(
                method, path, data=body, headers={"Content-Type": content_type}
            )
            refused(status, answer, 415)
            assert "application/json" in answer["error"]["message"]
    status, answer = await api.request("POST", "/tasks", data=SPEC)  # no type at all
    refused(status, answer, 415)
    await assert_nothing_created(api)
    # Bodiless POST /stop (the seed's `curl -X POST $S/stop`) needs no type, and
    # JSON may name its charset.
    status, answer = await api.request("POST", "/stop")
    assert status == 200, answer
    status, answer = await api.request(
        "POST", "/tasks", data=SPEC, headers={"Content-Type": "Application/JSON; charset=utf-8"}
    )
    assert status == 202, answer


async def test_rebinding_host_is_refused_even_with_a_token(api: Orchestrator) -> None:
    task = await api.submit("secret prompt of the user", policy="pwn")
    await api.wait_done(task["id"], timeout_s=120)
    (api.workspace / "pwned").unlink()
    hosts = [
        "evil.example", f"evil.example:{api.port}", f"127.0.0.1.evil.example:{api.port}",
        f"localhost.evil.example:{api.port}", "2130706433", "[::1", "::1",
        f"[::1]x:{api.port}", f"127.0.0.1:{api.port}@evil.example", "",
    ]
    reads = ["/tasks", "/history", f"/tasks/{task['id']}", f"/tasks/{task['id']}/events",
             f"/tasks/{task['id']}/raw", "/status", "/healthz", "/openapi.json"]
    for host in hosts:
        for path in reads:
            status, answer = await api.request("GET", path, headers={"Host": host})
            refused(status, answer, 421)
            assert "secret prompt" not in str(answer)
            assert "CBOX_ALLOWED_HOSTS" in answer["error"]["message"]
        for method, path in MUTATIONS:
            status, answer = await api.request(
                method, path, data=SPEC, headers={"Host": host, **JSON}
            )
            refused(status, answer, 421)
    await assert_nothing_created(api, tasks=1)


async def test_null_and_foreign_origins_are_refused_even_with_a_token(
    api: Orchestrator,
) -> None:
    other = f"http://127.0.0.1:{api.port + 1 if api.port < 65535 else api.port - 1}"
    origins = [
        "null", "http://evil.example", f"http://evil.example:{api.port}", other,
        f"http://localhost:{api.port}", f"https://127.0.0.1:{api.port}.evil.example",
        f"http://127.0.0.1:{api.port}/", "file://", "chrome-extension://abcdef",
    ]
    for origin in origins:
        for method, path in MUTATIONS:
            status, answer = await api.request(
                method, path, data=SPEC, headers={"Origin": origin, **JSON}
            )
            refused(status, answer, 403)
        status, answer = await api.request("GET", "/tasks", headers={"Origin": origin})
        refused(status, answer, 403)
        status, answer = await api.request("POST", "/stop", headers={"Origin": origin})
        refused(status, answer, 403)
    for site in ("cross-site", "same-site", "CROSS-SITE", "bogus"):
        status, answer = await api.request(
            "POST", "/tasks", data=SPEC, headers={"Sec-Fetch-Site": site, **JSON}
        )
        refused(status, answer, 403)
    await assert_nothing_created(api)
    # The API's own origin, and the user typing a URL, are served.
    status, answer = await api.request(
        "GET", "/tasks", headers={"Origin": api.url, "Sec-Fetch-Site": "same-origin"}
    )
    assert status == 200, answer
    status, answer = await api.request("GET", "/status", headers={"Sec-Fetch-Site": "none"})
    assert status == 200, answer


async def raw_get(api: Orchestrator, path: str, header: bytes) -> bytes:
    """The status line of a GET sent byte for byte (clients refuse non-UTF-8 headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header
                     + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


async def test_loopback_without_token_is_401(default_api: Orchestrator) -> None:
    api = default_api
    for method, path in [("GET", "/tasks"), ("GET", "/history"), ("GET", "/status"),
                         ("GET", "/sessions"), ("GET", "/policies"), ("POST", "/stop")]:
        status, answer = await api.request(method, path, auth=False)
        refused(status, answer, 401)
    for method, path in MUTATIONS:
        status, answer = await api.request(method, path, data=SPEC, headers=JSON, auth=False)
        refused(status, answer, 401)
        status, answer = await api.request(
            method, path, data=SPEC, headers={"Authorization": "Bearer wrong", **JSON}
        )
        refused(status, answer, 401)
    # Header bytes that are not UTF-8 are a wrong token too, not a server error.
    for raw in (b"Bearer \xff\xfe", b"Bearer " + api.token.encode() + b"\xff", b"\xc3"):
        status_line = await raw_get(api, "/tasks", b"Authorization: " + raw)
        assert status_line.startswith(b"HTTP/1.1 401"), status_line
    await assert_nothing_created(api)
    # The two open paths need no token, and /healthz says nothing worth stealing.
    status, health = await api.request("GET", "/healthz", auth=False)
    assert status == 200 and set(health) == {"ok", "warm"}, health
    assert api.token not in str(health)
    status, _ = await api.request("GET", "/openapi.json", auth=False)
    assert status == 200


async def test_generated_token_file_is_private_and_the_cli_reads_it(
    orchestrator_factory: type[Orchestrator], workspace: Path, tmp_path: Path
) -> None:
    """On loopback too, no CBOX_API_TOKEN means a generated one, in a 0600 file."""
    token_file = tmp_path / "config" / "cbox" / "api-token"
    orch = orchestrator_factory(
        workspace=workspace,
        env={"CBOX_API_TOKEN": "", "CBOX_API_TOKEN_FILE": str(token_file)},
    )
    await orch.start()
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32 and token not in orch.log.read_text()
    status, answer = await orch.request("GET", "/tasks", auth=False)
    refused(status, answer, 401)

    async def cli(env: dict[str, str]) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cbox", "status", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    base = {k: v for k, v in os.environ.items() if not k.startswith("CBOX_")}
    base["CBOX_SERVER"] = orch.url
    code, out = await cli({**base, "CBOX_API_TOKEN_FILE": str(token_file)})
    assert code == 0, out
    code, out = await cli({**base, "CBOX_API_TOKEN_FILE": str(tmp_path / "none")})
    assert code != 0 and "401" in out and "CBOX_API_TOKEN" in out, out
    # A restart keeps the token.
    await orch.stop()
    await orch.start()
    assert token_file.read_text().strip() == token
    status, _ = await orch.request("GET", "/tasks")
    assert status == 200


async def test_hosts_the_server_answers_to(
    orchestrator_factory: type[Orchestrator], workspace: Path
) -> None:
    orch = orchestrator_factory(
        workspace=workspace, env={"CBOX_ALLOWED_HOSTS": "cbox.example.com, Proxy.Internal"}
    )
    await orch.start()
    port = orch.port
    served = [
        f"127.0.0.1:{port}", "127.0.0.1", f"[::1]:{port}", "[::1]", f"localhost:{port}",
        f"LOCALHOST:{port}", f"{socket.gethostname()}:{port}", f"cbox.example.com:{port}",
        "cbox.example.com.", f"proxy.internal:{port}", f"192.0.2.7:{port}",
    ]
    for host in served:
        status, answer = await orch.request("GET", "/tasks", headers={"Host": host})
        assert status == 200, (host, answer)
    # A listed name is still not a wildcard for its subdomains or look-alikes.
    for host in ("evil.cbox.example.com", "cbox.example.com.evil.example", "example.com"):
        status, answer = await orch.request("GET", "/tasks", headers={"Host": host})
        refused(status, answer, 421)
    # The same name, as Origin, is the server's own origin only with the same port.
    status, _ = await orch.request(
        "GET", "/tasks", headers={"Host": "cbox.example.com", "Origin": "http://cbox.example.com"}
    )
    assert status == 200
    status, _ = await orch.request(
        "GET", "/tasks",
        headers={"Host": "cbox.example.com", "Origin": "http://cbox.example.com:8443"},
    )
    assert status == 403


def test_allowed_hosts_refuses_wildcards_and_urls() -> None:
    """No setting may switch the host check off: a `*` or a URL is a start-up error."""
    from pydantic import ValidationError

    from cbox.settings import Settings

    for value in ("*", "*.example.com", "http://cbox.example.com", "cbox.example.com:8080",
                  "a b"):
        with pytest.raises(ValidationError, match="CBOX_ALLOWED_HOSTS"):
            Settings(allowed_hosts=value)
    assert Settings(allowed_hosts="A.example., b.example").allowed_hosts == [
        "a.example", "b.example"
    ]
