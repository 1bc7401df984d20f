"""Property: whatever an agent prints, its task ends and the API keeps answering.

Generated agent output (stream-json and custom-agent lines, valid and broken
JSON, random types in the fields we read, random Unicode with lone
surrogates and NUL, invalid bytes, long lines) goes through the real chain:
Docker's frame format into the real line assembler (`Frames`, `Lines`), the
real parsers, the real `TaskLog`, the real outcome rules, the real SQLite
store, and the real HTTP handlers (`make_app` around a real `TaskService`,
served in-process on loopback). Docker itself is not needed for this part:
the conformance file runs the same attacks through real boxes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from cbox.api.app import make_app
from cbox.models import Task, TaskSpec
from cbox.orchestrator.docker import DockerBackend, ExitInfo
from cbox.orchestrator.logstream import Frames, Lines
from cbox.orchestrator.outcome import Ending, apply_result, decide
from cbox.orchestrator.service import TaskService
from cbox.orchestrator.store import SqliteStore
from cbox.orchestrator.streamjson import CommandParser, StreamJsonParser
from cbox.orchestrator.tasklog import TaskLog
from cbox.policies import PolicySet
from cbox.settings import Settings
from tests.strict_json import strict_loads

#: Small caps, so generated lines and events cross them often.
LINE_BYTES = 4096
EVENT_BYTES = 2048
BUDGET_BYTES = 200_000
#: Fixed and derandomized: the same examples every run, well under a minute.
EXAMPLES = 250
TOKEN = "property-test-token-" + "x" * 24

NASTY = ["\ud800", "\udfff", "\udc00\ud800", "\x00", "\ufffd", "é", "😀", "\u2028", "\\", '"']
text = st.text(max_size=40) | st.sampled_from(NASTY) | st.lists(
    st.sampled_from(NASTY) | st.text(max_size=5), max_size=8
).map("".join)
scalar = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | text
)
json_value = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
RESULT_FIELDS = ["subtype", "is_error", "result", "total_cost_usd", "usage", "num_turns",
                 "duration_ms", "session_id", "errors", "api_error_status"]


def _line(obj: Any) -> bytes:
    """One JSON line as an agent would print it (NaN/Infinity as Python writes them)."""
    return json.dumps(obj).encode()


stream_line = st.one_of(
    st.dictionaries(st.sampled_from(RESULT_FIELDS), json_value).map(
        lambda d: _line({"type": "result", **d})
    ),
    st.fixed_dictionaries({"session_id": json_value, "tools": json_value}).map(
        lambda d: _line({"type": "system", "subtype": "init", **d})
    ),
    st.tuples(text, json_value, json_value).map(lambda t: _line({
        "type": "assistant", "message": {"id": t[0], "content": [
            {"type": "text", "text": t[0]}, {"type": "tool_use", "name": t[0], "input": t[1]},
            t[2]]}})),
    st.tuples(json_value, json_value).map(lambda t: _line({
        "type": "user", "message": {"content": [
            {"type": "tool_result", "content": t[0], "is_error": t[1]}]}})),
    json_value.map(lambda v: _line({"type": "cbox.result_file", "result": v})),
)
command_line = st.one_of(
    st.tuples(st.sampled_from(["output", "assistant", "tool_use", "tool_result", "log",
                               "result", "bogus"]), json_value).map(
        lambda t: _line({"event": t[0], "data": t[1] if isinstance(t[1], dict)
                         else {"line": t[1], "result": t[1], "name": "x", "text": t[1]}})
    ),
    json_value.map(lambda v: _line({"type": "cbox.result_file", "result": v})),
)
noise = st.one_of(
    st.binary(max_size=60),
    text.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(0, 3 * LINE_BYTES).map(lambda n: b"{" + b"x" * n),
    st.just(b"[" * 3000),
    st.just(b'{"type":"result","total_cost_usd":NaN}'),
)


@dataclass
class Case:
    dialect: str
    lines: list[bytes]
    trailing_newline: bool
    frame_size: int
    chunk_size: int


cases = st.builds(
    Case,
    dialect=st.sampled_from(["stream", "command"]),
    lines=st.lists(st.one_of(stream_line, command_line, noise), max_size=12),
    trailing_newline=st.booleans(),
    frame_size=st.integers(1, 5000),
    chunk_size=st.integers(1, 9000),
)


def docker_stream(data: bytes, frame_size: int) -> bytes:
    """`data` as the engine's multiplexed log stream (stdout frames)."""
    frames = [data[i : i + frame_size] for i in range(0, len(data), frame_size)]
    return b"".join(struct.pack(">B3xI", 1, len(f)) + f for f in frames)


@asynccontextmanager
async def served(tmp: Path) -> AsyncIterator[tuple[TaskService, TestClient[Any, Any]]]:
    config = Settings(db_path=tmp / "cbox.db", workspace_dir=tmp, warm_pool=0,
                      api_token=SecretStr(TOKEN))
    service = TaskService(config, SqliteStore(config.db_path), DockerBackend(),
                          PolicySet.load(None))
    await service.store.open()
    client: TestClient[Any, Any] = TestClient(
        TestServer(make_app(service)), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    await client.start_server()
    try:
        yield service, client
    finally:
        await client.close()
        await service.store.close()
        await service.docker.close()


async def run_case(service: TaskService, client: TestClient[Any, Any], case: Case, n: int) -> None:
    task = Task(id=f"task_prop{n:08d}", spec=TaskSpec(prompt="p"))
    tlog = TaskLog(task.id, budget_bytes=BUDGET_BYTES, max_event_bytes=EVENT_BYTES)
    tlog.append("start", {"task_id": task.id, "prompt": "p"})
    await service.store.insert_task(task)
    parser = StreamJsonParser(EVENT_BYTES) if case.dialect == "stream" else CommandParser(
        EVENT_BYTES
    )
    data = b"\n".join(case.lines) + (b"\n" if case.trailing_newline else b"")
    stream = docker_stream(data, case.frame_size)
    frames, lines = Frames(), Lines(LINE_BYTES)
    out: list[str] = []
    for i in range(0, len(stream), case.chunk_size):
        out += lines.feed(frames.feed(stream[i : i + case.chunk_size])[0])
    out += lines.rest()
    assert all(len(line.encode()) <= LINE_BYTES + 64 for line in out)
    tlog.agent_output(parser.feed_many(out), out, 0)
    task.lines_consumed = len(out)
    apply_result(parser, task.outcome)
    ending = Ending(over_budget=None, stop_requested=False, timed_out=False, timeout_s=1.0,
                    memory_mb=1, output_exceeded="over" if tlog.over_budget else None)
    task.state = decide(ending, ExitInfo(0, False, False), task.outcome)
    outcome = task.outcome
    tlog.append("done", {"task_id": task.id, "state": task.state.value,
                         "result": outcome.result, "num_turns": outcome.num_turns,
                         "cost_usd": outcome.cost_usd,
                         "claude_session_id": outcome.claude_session_id})
    task.last_seq = tlog.last_seq
    first = tlog.pending_raw_first
    events, raw = tlog.take_pending()
    await service.store.append(task, events, raw, first_raw=first)

    assert task.state.terminal
    for path in ("/history", "/tasks?limit=5", f"/tasks/{task.id}", "/status"):
        resp = await client.get(path)
        assert resp.status == 200, (path, await resp.text())
        strict_loads(await resp.text())
    stored = await service.store.events(task.id, after=0, limit=10_000)
    assert stored[-1].type == "done"
    for event in stored:
        strict_loads(event.data_json)
        assert len(event.data_json) <= 4 * EVENT_BYTES + 1024 + 200, event.type


def test_any_agent_output_ends_the_task_and_keeps_the_api_answering(tmp_path: Path) -> None:
    counter = itertools.count()
    with asyncio.Runner() as runner:

        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(case=cases)
        def check(case: Case) -> None:
            runner.run(_one(tmp_path, case, next(counter)))

        check()


async def _one(tmp: Path, case: Case, n: int) -> None:
    # A fresh service and server per example, on one database that fills up
    # as a real one does.
    async with served(tmp) as (service, client):
        await run_case(service, client, case, n)
