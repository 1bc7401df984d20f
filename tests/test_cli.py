"""Issue: policies and CLI. `cbox` as a subprocess against a live orchestrator."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cbox.cli.blocking_client import BlockingClient
from cbox.cli.defaults import resolve_token, token_file
from cbox.cli.main import COMMANDS, parse_run
from cbox.cli.render import EventPrinter, event_line, safe
from cbox.cli.sse import SseEvent
from cbox.errors import ClientError, ServerUnreachable
from tests.conftest import WORKSPACE_GID, WORKSPACE_UID
from tests.fakes.anthropic import FakeAnthropic, Text, ToolUse
from tests.orch import Orchestrator

pytestmark = [pytest.mark.docker]

POLICIES = {
    "ok": 'agent = "command"\ncommand = ["sh", "-c", "echo working; echo all good"]\n'
    "timeout_s = 120\n",
    "bad": 'agent = "command"\ncommand = ["sh", "-c", "echo trying; exit 3"]\n',
    "slow": 'agent = "command"\ncommand = ["sh", "-c", '
    '"for i in $(seq 1 600); do echo tick $i; sleep 0.1; done"]\n',
    "custom": 'agent = "command"\ncommand = ["python3", "/workspace/agent.py"]\n',
}

CUSTOM_AGENT = r'''
import json
task = json.load(open("/cbox/task.json"))
print("got prompt: " + task["prompt"], flush=True)
print(json.dumps({"event": "tool_use", "data": {"name": "Bash", "input": {"command": "ls"}}}))
print(json.dumps({"event": "assistant", "data": {"text": "thinking out loud"}}))
print("{not an event, just text")
json.dump({"answer": 42, "task_id": task["task_id"]}, open("/cbox/result.json", "w"))
'''


@pytest.fixture
async def server(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, workspace: Path
) -> Orchestrator:
    agent = workspace / "agent.py"
    agent.write_text(CUSTOM_AGENT)
    os.chown(agent, WORKSPACE_UID, WORKSPACE_GID)
    orch = orchestrator_factory(workspace=workspace, policies=POLICIES)
    await orch.start()
    return orch


async def cbox(
    server: Orchestrator | str, *args: str, timeout_s: float = 180
) -> tuple[int, str, str]:
    env = {**os.environ, "CBOX_SERVER": server} if isinstance(server, str) else server.client_env
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", *args,
        env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_run_ro_cannot_write(
    server: Orchestrator, fake_api: FakeAnthropic, workspace: Path, marker: str
) -> None:
    fake_api.script(
        marker,
        [ToolUse("Write", {"file_path": "/workspace/evil.txt", "content": "x"}), Text("I tried.")],
    )
    before = {p.name: p.read_bytes() for p in workspace.iterdir()}
    code, out, err = await cbox(server, "run", "--ro", f"{marker} write evil.txt")
    assert code == 0, (out, err)
    assert "→ Write" in out
    assert "EROFS" in out or "read-only" in out.lower()
    assert "I tried." in out
    assert "completed" in out.splitlines()[-1]
    assert {p.name: p.read_bytes() for p in workspace.iterdir()} == before


async def test_exit_codes_match_outcomes(server: Orchestrator) -> None:
    code, out, _ = await cbox(server, "run", "--policy", "ok", "fine")
    assert code == 0
    assert "all good" in out
    code, out, _ = await cbox(server, "run", "--policy", "bad", "fails")
    assert code == 1
    assert "exited with code 3" in out
    code, out, _ = await cbox(server, "run", "--policy", "slow", "--timeout", "2", "too slow")
    assert code == 5
    assert "timed_out" in out
    code, _, err = await cbox("http://127.0.0.1:9", "run", "nobody home")
    assert code == 3
    assert len(err.strip().splitlines()) == 1
    assert "no claude-box server" in err
    code, _, err = await cbox(server, "logs", "task_nope")
    assert code == 3
    assert err.strip() == "cbox: HTTP 404: no task with id 'task_nope'"
    code, _, err = await cbox(server, "run", "--priority", "high", "x")
    assert code == 2
    assert "Traceback" not in err


async def test_bare_prompt_json_and_no_ansi(server: Orchestrator) -> None:
    code, out, _ = await cbox(server, "--json", "--policy", "ok", "bare prompt")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["type"] == "start"
    assert events[0]["data"]["prompt"] == "bare prompt"
    assert events[-1]["type"] == "done"
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    code, out, err = await cbox(server, "run", "--policy", "ok", "plain")
    assert code == 0
    assert "\x1b[" not in out + err


async def test_detach_then_logs_follow(server: Orchestrator) -> None:
    code, out, _ = await cbox(server, "run", "--detach", "--policy", "slow", "--timeout", "3", "x")
    assert code == 0
    task_id = out.strip()
    assert task_id.startswith("task_")
    code, out, _ = await cbox(server, "logs", "-f", task_id)
    assert code == 5  # the task timed out, and logs -f reports it like run does
    ticks = [line for line in out.splitlines() if line.startswith("tick ")]
    assert ticks == [f"tick {n}" for n in range(1, len(ticks) + 1)]
    assert ticks
    code, again, _ = await cbox(server, "logs", task_id)
    assert code == 5  # a finished task's logs exit with its outcome's code
    assert again == out
    code, out, _ = await cbox(server, "history", "--limit", "1")
    assert task_id in out
    assert "timed_out" in out


async def test_ceiling_refused(server: Orchestrator) -> None:
    code, _, err = await cbox(server, "run", "--policy", "readonly", "--timeout", "99999", "x")
    assert code == 3
    assert "timeout_s=99999 exceeds the ceiling" in err
    _, body = await server.request("GET", "/policies")
    names = {p["name"]: p for p in body["policies"]}
    assert names["readonly"]["workspace"] == "ro"
    assert "analysis" in names["readonly"]["aliases"]
    assert names["custom"]["agent"] == "command"


async def test_custom_agent_protocol(server: Orchestrator) -> None:
    code, out, err = await cbox(server, "run", "--json", "--policy", "custom", "hello agent")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    lines = [e["data"]["line"] for e in events if e["type"] == "output"]
    assert "got prompt: hello agent" in lines
    assert "{not an event, just text" in lines
    assert any(e["type"] == "tool_use" and e["data"]["name"] == "Bash" for e in events)
    assert any(e["type"] == "assistant" for e in events)
    done = events[-1]["data"]
    assert done["result"]["answer"] == 42
    task = await server.task(done["task_id"])
    assert task["result"] == {"answer": 42, "task_id": done["task_id"]}


async def test_ctrl_c_stops_remote_task(server: Orchestrator) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "run", "--policy", "slow", "long",
        env=server.client_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.startswith(b"tick"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert "stopped task" in err.decode()
    _, history = await server.request("GET", "/history?limit=1")
    done = await server.wait_done(history[0]["id"], timeout_s=30)
    assert done["state"] == "stopped"


async def test_doctor_reports_each_check(server: Orchestrator) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "doctor", "--server", server.url,
        env={**server.env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    for name in ("engine", "image", "credential", "workspace", "server"):
        assert f"✓ {name}" in text
    env = {**server.env, "CBOX_IMAGE": "cbox-sandbox:does-not-exist"}
    env.pop("ANTHROPIC_API_KEY")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cbox", "doctor", "--server", "http://127.0.0.1:9",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 1
    assert "✗ image" in text and "cbox image build" in text
    assert "✗ credential" in text
    assert "✗ server" in text


async def test_fast_path_submits_what_click_does(server: Orchestrator, workspace: Path) -> None:
    # `cbox run` is parsed by cbox.cli.main; `--` before the prompt is one of the
    # command lines it leaves to click. Both must send the same task.
    options = [
        "run", "-d", "--ro", "--policy", "ok", "--priority=3", "--timeout", "50",
        "--model", "m1", "--max-turns", "2", "--workspace", str(workspace),
    ]
    assert parse_run([*options, "same task"]) is not None
    assert parse_run([*options, "--", "same task"]) is None
    specs = []
    for args in ([*options, "same task"], [*options, "--", "same task"]):
        code, out, err = await cbox(server, *args)
        assert code == 0, err
        task = await server.task(out.strip())
        specs.append({k: v for k, v in task.items() if k in SPEC_FIELDS})
    assert specs[0] == specs[1]
    assert specs[0]["priority"] == 3
    assert specs[0]["read_only"] is True
    assert specs[0]["workspace"] == str(workspace.resolve())


SPEC_FIELDS = {
    "prompt", "policy", "priority", "timeout_s", "model", "max_turns", "read_only", "workspace",
}


def test_parse_run_leaves_everything_unusual_to_click(tmp_path: Path) -> None:
    from cbox.cli.app import cli

    assert set(cli.commands) == COMMANDS  # `cbox "prompt"` must know every command name
    assert parse_run(["run", "--json", "-d", "hi", "--server", "http://h:1"]) == {
        "as_json": True, "detach": True, "prompt": "hi", "server": "http://h:1",
    }
    assert parse_run(["--policy=ok", "bare prompt"]) == {"policy": "ok", "prompt": "bare prompt"}
    a_file = tmp_path / "f"
    a_file.write_text("")
    for args in (
        [], ["--help"], ["run", "--help"], ["run", "-h", "x"], ["--version"], ["status"],
        ["run"], ["run", "a", "b"], ["run", "--priority", "high", "x"],
        ["run", "--timeout", "-1", "x"], ["run", "--policy", "", "x"], ["run", "--policy"],
        ["run", "--ro=1", "x"], ["run", "-x", "x"], ["run", "-dv", "x"], ["run", "-", "x"],
        ["run", "--workspace", str(a_file), "x"], ["run", "--", "x"], ["logs", "t"],
    ):
        assert parse_run(args) is None, args


EVENTS = [
    SseEvent(1, "start", {"prompt": "p"}),
    SseEvent(2, "queued", {"position": 2}),
    SseEvent(3, "running", {"container_id": "abc", "mount_mode": "rw", "branch": "cbox/t"}),
    SseEvent(4, "output", {"line": "plain text, 42 /paths and [bold]markup[/bold] :smile:"}),
    SseEvent(5, "output", {"line": "→ Bash ls"}),
    SseEvent(6, "output", {"line": "bell\x07 back\x08 cr\r vt\x0b ff\x0c esc\x1b[31m ü 日本"}),
    SseEvent(7, "output", {"line": "tab\tstops\tand 日本\twide"}),
    SseEvent(8, "output", {"line": "two\nlines  "}),
    SseEvent(9, "output", {"line": ""}),
    SseEvent(10, "stderr", {"line": "warn " * 40}),
    SseEvent(11, "log", {"line": "a log line"}),
    SseEvent(12, "assistant", {"text": "not shown"}),
    SseEvent(13, "done", {"state": "failed", "duration_ms": 1234, "exit_code": 3,
                          "error": "exited with code 3"}),
]


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("as_json", [False, True])
def test_event_printer_writes_what_rich_did(
    colour: bool, as_json: bool, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The printer writes piped output itself; it must be byte for byte rich's."""
    from rich.console import Console
    from rich.text import Text

    if colour:
        monkeypatch.setenv("FORCE_COLOR", "1")
    else:
        monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    printer = EventPrinter(as_json=as_json)
    for event in EVENTS:
        printer(event)
    ours = capsys.readouterr().out

    # What the CLI printed before, through rich (`render_event` of the aiohttp CLI).
    expected = io.StringIO()
    console = Console(file=expected, highlight=False, soft_wrap=True, force_terminal=colour)
    for event in EVENTS:
        if as_json:
            console.out(json.dumps({"id": event.id, "type": event.type, "data": event.data}))
        elif (line := event_line(event)) is not None:
            console.print(Text(safe(line[0]), style=line[1] or ""))
    assert ours == expected.getvalue()
    assert ("\x1b[35m→ Bash ls" in ours) == (colour and not as_json)


@pytest.mark.parametrize("colour", [False, True])
def test_agent_text_cannot_drive_the_terminal(
    colour: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """OSC 52 (clipboard), OSC 8 (links), CSI (clear screen), C1 forms: all made inert."""
    if colour:
        monkeypatch.setenv("FORCE_COLOR", "1")
    else:
        monkeypatch.delenv("FORCE_COLOR", raising=False)
    hostile = ["\x1b]52;c;cm0gLXJmIH4=\x1b\\", "\x1b]8;;http://evil.example\x07x\x1b]8;;\x07",
               "\x1b[2J\x1b[H", "\x9b2J", "\x9d0;title\x9c", "\x1bP+q\x1b\\"]
    printer = EventPrinter(as_json=False)
    for n, text in enumerate(hostile):
        printer(SseEvent(n, "output", {"line": text}))
        printer(SseEvent(n, "stderr", {"line": text}))
    printer(SseEvent(99, "done", {"state": "failed", "error": hostile[0]}))
    out = capsys.readouterr().out
    # Only rich's own style codes (ESC [ ... m) may reach the terminal.
    assert "\x1b]" not in out and "\x1bP" not in out and "\x1b\\" not in out, repr(out)
    assert "\x1b[2J" not in out and "\x1b[H" not in out, repr(out)
    assert not any(0x80 <= ord(c) < 0xA0 for c in out), repr(out)


class CannedServer:
    """A real aiohttp server on loopback, with answers the orchestrator never gives."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.bodies: list[Any] = []
        self.drop_first = True
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/tasks", self.submit)
        app.router.add_get("/tasks/{id}/events", self.events)
        app.router.add_get("/boom", self.boom)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"

    async def close(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def submit(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        self.bodies.append(await request.json())
        return web.json_response({"id": "task_1", "state": "queued"}, status=202)

    async def boom(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="kaput\n")

    async def events(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        task = request.match_info["id"]
        if task == "nope":
            return web.json_response({"error": {"message": "no task with id 'nope'"}}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # chunked: no length
        if task == "split":
            stream = (
                b': keep-alive\n\nid: 1\nevent: output\ndata: {"line": "h\xc3\xa9llo"}\n\n'
                b'id: 2\r\nevent: output\r\ndata: not json\r\n\r\n'
                b'id: 3\nevent: done\ndata: {"state": "completed"}\n\n'
            )
            for i in range(0, len(stream), 7):  # frames, lines and UTF-8 cut across chunks
                await response.write(stream[i:i + 7])
                await asyncio.sleep(0)
        elif task == "drop" and self.drop_first:
            self.drop_first = False
            await response.write(b'id: 1\nevent: output\ndata: {"line": "1"}\n\nid: 2\nevent: out')
            assert request.transport is not None
            request.transport.close()  # the connection dies mid-frame
        else:
            await response.write(b'id: 2\nevent: done\ndata: {"state": "stopped"}\n\n')
        return response


@pytest.fixture
async def canned() -> AsyncIterator[CannedServer]:
    server = CannedServer()
    await server.start()
    yield server
    await server.close()


async def test_blocking_client_reads_chunked_sse(canned: CannedServer) -> None:
    client = BlockingClient(canned.url, "tok")
    events = await asyncio.to_thread(lambda: list(client.events("split")))
    assert events == [
        SseEvent(1, "output", {"line": "héllo"}),
        SseEvent(2, "output", {"line": "not json"}),
        SseEvent(3, "done", {"state": "completed"}),
    ]
    assert canned.seen[-1]["Authorization"] == "Bearer tok"
    assert canned.seen[-1]["Last-Event-ID"] == "0"
    task = await asyncio.to_thread(client.submit, {"prompt": "ü", "priority": 2})
    assert task == {"id": "task_1", "state": "queued"}
    assert canned.bodies == [{"prompt": "ü", "priority": 2}]


async def test_blocking_client_resumes_after_a_dropped_stream(canned: CannedServer) -> None:
    client = BlockingClient(canned.url)
    events = await asyncio.to_thread(lambda: list(client.events("drop")))
    assert [(e.id, e.type) for e in events] == [(1, "output"), (2, "done")]
    assert canned.seen[-1]["Last-Event-ID"] == "1"
    assert "Authorization" not in canned.seen[-1]


async def test_blocking_client_errors_are_one_clear_line(canned: CannedServer) -> None:
    client = BlockingClient(canned.url)
    with pytest.raises(ClientError, match=r"^HTTP 404: no task with id 'nope'$") as info:
        await asyncio.to_thread(lambda: list(client.events("nope")))
    assert info.value.status == 404
    with pytest.raises(ClientError, match=r"^HTTP 500: kaput$"):
        await asyncio.to_thread(client.request, "GET", "/boom")
    with pytest.raises(ServerUnreachable, match=r"^no claude-box server at http://127.0.0.1:9 "):
        await asyncio.to_thread(BlockingClient("http://127.0.0.1:9").get, "t")
    with pytest.raises(ClientError, match=r"^request to localhost:8080/status failed"):
        await asyncio.to_thread(BlockingClient("localhost:8080").request, "GET", "/status")


def test_cli_reads_the_token_file_the_server_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cbox.auth import default_token_file, ensure_token

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CBOX_API_TOKEN_FILE", raising=False)
    assert token_file() == str(default_token_file())
    assert resolve_token(None) is None
    token, created = ensure_token(default_token_file())
    assert created
    assert resolve_token(None) == token
    assert resolve_token("explicit") == "explicit"
    # CBOX_API_TOKEN_FILE moves the file for the server and the CLI alike.
    elsewhere = tmp_path / "elsewhere" / "token"
    monkeypatch.setenv("CBOX_API_TOKEN_FILE", str(elsewhere))
    assert token_file() == str(elsewhere)
    assert resolve_token(None) is None
    other, _ = ensure_token(elsewhere)
    assert resolve_token(None) == other != token


async def test_version_matches_the_installed_metadata() -> None:
    from importlib.metadata import version

    from cbox import _version_from_dist_info

    expected = version("claude-box")
    assert _version_from_dist_info() == expected
    code, out, _ = await cbox("http://127.0.0.1:9", "--version")
    assert (code, out) == (0, f"cbox, version {expected}\n")
