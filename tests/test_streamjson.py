"""Tests of the stdout parsers, against real recorded Claude Code output.

Why: the parsers sit between an untrusted container and the event log. They
must read what the real CLI prints (the fixtures are recordings, not our guess
of the format) and must never raise on anything else, since one exception
would end a task's event stream.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cbox.orchestrator.streamjson import (
    CommandParser,
    ParsedEvent,
    StreamJsonParser,
    summarize_tool_use,
)
from tests.shared_dir import shared_path

FIXTURES = ("text", "write_rw", "write_ro", "bash", "maxturns", "err500", "stop", "resume")
KNOWN_TYPES = {
    "system", "assistant", "tool_use", "tool_result", "api_retry", "result", "output", "log"
}


def fixture_lines(name: str) -> list[str]:
    path = shared_path("fixtures", "claude-code") / f"{name}.jsonl"
    return path.read_text(encoding="utf-8").splitlines()


def parse(name: str) -> tuple[StreamJsonParser, list[ParsedEvent]]:
    parser = StreamJsonParser()
    events = [event for line in fixture_lines(name) for event in parser.feed(line)]
    return parser, events


def of_type(events: list[ParsedEvent], kind: str) -> list[dict[str, object]]:
    return [event.data for event in events if event.type == kind]


def outputs(events: list[ParsedEvent]) -> list[str]:
    return [str(event.data["line"]) for event in events if event.type == "output"]


def assert_well_formed(events: list[ParsedEvent]) -> None:
    for event in events:
        assert event.type in KNOWN_TYPES
        json.dumps(event.data, allow_nan=False)
        if event.type == "output":
            assert isinstance(event.data["line"], str)
            assert "\x1b[" not in event.data["line"]


# --- the recordings --------------------------------------------------------------------


@pytest.mark.parametrize("name", [*FIXTURES, "jsonfmt"])
def test_every_fixture_line_gives_typed_events_and_no_raw_json(name: str) -> None:
    parser = StreamJsonParser()
    for line in fixture_lines(name):
        events = parser.feed(line)
        assert_well_formed(events)
        kind = json.loads(line)["type"]
        expected = {"system": {"system", "api_retry"}, "assistant": {"assistant", "tool_use"}}
        expected |= {"user": {"tool_result"}, "result": {"result"}}
        assert events, f"{kind} line produced nothing"
        assert events[0].type in expected[kind]
        # Nothing in a recording should fall through as a raw JSON output line.
        assert not any(line.startswith("{") for line in outputs(events))


@pytest.mark.parametrize("name", FIXTURES)
def test_session_id_is_the_init_one(name: str) -> None:
    parser, events = parse(name)
    init = of_type(events, "system")[0]
    assert init["subtype"] == "init"
    assert parser.session_id == init["session_id"]
    assert isinstance(parser.session_id, str)
    assert "Bash" in init["tools"]  # type: ignore[operator]
    assert init["claude_code_version"] == "2.1.332"


def test_text_gives_assistant_text_and_result_with_cost() -> None:
    parser, events = parse("text")
    [assistant] = of_type(events, "assistant")
    assert str(assistant["text"]).startswith("Hello from the fake model.")
    assert str(assistant["message_id"]).startswith("msg_")
    [result] = of_type(events, "result")
    assert result["is_error"] is False
    assert result["subtype"] == "success"
    assert result["num_turns"] == 1
    assert result["total_cost_usd"] == pytest.approx(0.000184)
    assert parser.result is not None
    assert parser.result.num_turns == 1  # the validated report, not the raw line
    assert "Hello from the fake model." in outputs(events)[0]
    assert outputs(events)[-1] == "✓ completed in 0.3s, 1 turn, $0.0002"


def test_typed_event_comes_before_its_output_lines() -> None:
    _, events = parse("bash")
    types = [event.type for event in events]
    assert types == [
        "system",
        "tool_use",
        "output",
        "tool_result",
        "assistant",
        *["output"] * 5,  # the five lines of the assistant text
        "result",
        "output",
    ]


def test_write_rw_tool_use_names_the_file() -> None:
    _, events = parse("write_rw")
    [tool] = of_type(events, "tool_use")
    assert tool["name"] == "Write"
    assert tool["id"] == "toolu_324a042b72354837a02d"
    assert tool["input"] == {"file_path": "/workspace/a.txt", "content": "alpha\n"}
    assert tool["summary"] == "Write /workspace/a.txt (6 bytes)"
    assert "→ Write /workspace/a.txt (6 bytes)" in outputs(events)
    [tool_result] = of_type(events, "tool_result")
    assert tool_result["tool_use_id"] == tool["id"]
    assert tool_result["is_error"] is False
    assert not any(line.startswith("✗") for line in outputs(events))


def test_write_ro_tool_result_is_an_erofs_error_but_the_run_succeeds() -> None:
    parser, events = parse("write_ro")
    [tool_result] = of_type(events, "tool_result")
    assert tool_result["is_error"] is True
    assert "EROFS" in str(tool_result["content"])
    assert tool_result["truncated"] is False
    assert any(line.startswith("✗ EROFS: read-only file system") for line in outputs(events))
    assert parser.result is not None
    assert parser.result.is_error is False


def test_bash_summary_shows_the_command() -> None:
    _, events = parse("bash")
    [tool] = of_type(events, "tool_use")
    assert tool["summary"] == "Bash: ls -la /workspace && echo bye"
    [tool_result] = of_type(events, "tool_result")
    assert str(tool_result["content"]).endswith("bye")


def test_maxturns_result_is_an_error() -> None:
    _, events = parse("maxturns")
    [result] = of_type(events, "result")
    assert result["is_error"] is True
    assert result["subtype"] == "error_max_turns"
    assert result["errors"] == ["Reached maximum number of turns (1)"]
    assert outputs(events)[-1] == "✗ error_max_turns: Reached maximum number of turns (1)"


def test_err500_has_ten_retries_and_an_api_error_result() -> None:
    _, events = parse("err500")
    retries = of_type(events, "api_retry")
    assert [retry["attempt"] for retry in retries] == list(range(1, 11))
    assert retries[0] == {
        "attempt": 1,
        "max_retries": 10,
        "retry_delay_ms": 570,
        "error_status": 500,
        "error": "server_error",
    }
    assert "API error 500, retry 1/10 in 0.6s" in outputs(events)
    [result] = of_type(events, "result")
    assert result["api_error_status"] == 500
    assert result["is_error"] is True
    assert result["subtype"] == "success"  # the README's point: trust is_error, not subtype
    [assistant] = of_type(events, "assistant")
    assert assistant["api_error"] is True
    assert outputs(events)[-1].startswith("✗ error: API Error: 500")


def test_stop_has_no_result() -> None:
    parser, events = parse("stop")
    assert parser.result is None
    assert not of_type(events, "result")
    assert parser.session_id == "bed2b5ab-8912-4e52-8828-66d9200c02cb"
    subtypes = [system["subtype"] for system in of_type(events, "system")]
    assert subtypes == ["init", "task_started", "task_notification"]
    notification = of_type(events, "system")[2]
    assert notification["status"] == "stopped"
    assert "✗ Exit code 137" in outputs(events)


def test_resume_keeps_the_session_of_write_rw() -> None:
    first, _ = parse("write_rw")
    resumed, _ = parse("resume")
    assert resumed.session_id == first.session_id


# --- hostile input --------------------------------------------------------------------


GARBAGE = [
    "\x00\x01\x02\xff\ufffd binary junk \x7f",
    "{",
    "[1,2]",
    '"just a string"',
    "42",
    "null",
    '{"type": 5}',
    '{"type": "something_new", "x": 1}',
    '{"type":"assistant","message":null}',
    '{"type":"assistant","message":{"content":"plain string content"}}',
    '{"type":"assistant","message":{"content":[null, 3, {"type":"tool_use"}]}}',
    '{"type":"assistant","message":{"content":[{"type":"tool_use","name":"X","input":[1]}]}}',
    '{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hmm"}]}}',
    '{"type":"user","message":{"content":[{"type":"tool_result","content":{"odd":true}}]}}',
    '{"type":"user","message":{"content":[{"type":"tool_result","is_error":true}]}}',
    '{"type":"user","message":{"content":"a prompt"}}',
    '{"type":"user","message":"not a dict"}',
    '{"type":"system"}',
    '{"type":"system","subtype":"api_retry"}',
    '{"type":"system","subtype":"init","tools":"Bash"}',
    '{"type":"result"}',
    '{"type":"result","is_error":"yes","duration_ms":"soon","num_turns":true}',
    '{"type":"result","subtype":"success","value": NaN}',
    "[" * 100_000,
    '{"type":"assistant","message":{"content":[{"type":"text","text":"' + "x" * 500_000 + '"}]}}',
    "y" * 1_000_000,
]


@pytest.mark.parametrize("line", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_never_raises(line: str, caplog: pytest.LogCaptureFixture) -> None:
    for parser in (StreamJsonParser(), CommandParser()):
        events = parser.feed(line)
        assert_well_formed(events)
        assert all(len(str(e.data.get("line", ""))) <= 8000 for e in events)
    assert not caplog.records, "a parser bug was caught by the safety net"


def test_non_json_line_passes_through_as_output() -> None:
    parser = StreamJsonParser()
    assert parser.feed("npm WARN something\n") == [
        ParsedEvent("output", {"line": "npm WARN something"})
    ]
    assert parser.feed("[1,2]") == [ParsedEvent("output", {"line": "[1,2]"})]
    assert parser.feed('{"type": 5}') == []
    assert parser.feed('{"type":"assistant","message":null}') == []
    assert parser.feed("   \n") == []
    assert parser.feed("") == []


def test_result_without_is_error_falls_back_to_subtype() -> None:
    parser = StreamJsonParser()
    [result, line] = parser.feed('{"type":"result","subtype":"error_during_execution"}')
    assert result.data["is_error"] is True
    assert line.data["line"] == "✗ error_during_execution: no detail given"


def test_tool_result_content_blocks_are_joined_and_truncated() -> None:
    blocks = [
        {"type": "text", "text": "a" * 1500},
        {"type": "image"},
        {"type": "text", "text": "b"},
    ]
    line = {"type": "user", "message": {"content": [{"type": "tool_result", "content": blocks}]}}
    [event] = StreamJsonParser().feed(json.dumps(line))
    assert event.data["content"] == "a" * 1500 + "\n[image]\nb"
    big = {"type": "tool_result", "tool_use_id": "t", "content": "z" * 5000}
    [event] = StreamJsonParser().feed(json.dumps({"type": "user", "message": {"content": [big]}}))
    assert event.data["truncated"] is True
    assert len(event.data["content"]) == 2000


def test_result_file_line_is_reported_by_both_parsers() -> None:
    line = json.dumps({"type": "cbox.result_file", "result": {"answer": 42}})
    stream = StreamJsonParser()
    assert stream.feed(line) == [
        ParsedEvent("result", {"result": {"answer": 42}, "source": "file"})
    ]
    assert stream.file_result == {"answer": 42}
    assert stream.result is None  # still "Claude printed no result line"
    command = CommandParser()
    assert command.feed(line) == [
        ParsedEvent("result", {"result": {"answer": 42}, "source": "file"})
    ]
    assert command.result == {"answer": 42}


BATCH_LINES = [
    "plain",
    "  indented\r",
    "",
    "   ",
    "é ünïcode ☃ \x00\x1b[31m",
    "x" * 9000,
    '{"event": "output", "data": {"line": "typed"}}',
    '{"event": "log", "data": {"line": "a log"}}',
    '  {"event": "shout"}',
    "{not json",
    json.dumps({"type": "cbox.result_file", "result": 7}),
    *GARBAGE[:20],
]


@pytest.mark.parametrize("make", [CommandParser, StreamJsonParser])
def test_feed_many_is_feed_line_by_line(make: type[CommandParser | StreamJsonParser]) -> None:
    """The batch path (a plain output line as its bare text) must say what `feed` says."""
    lines = BATCH_LINES + [line for name in FIXTURES for line in fixture_lines(name)]
    one, many = make(), make()
    expected = [event for line in lines for event in one.feed(line)]
    got = many.feed_many(lines)
    assert [ParsedEvent("output", {"line": e}) if isinstance(e, str) else e for e in got] == (
        expected
    )
    assert many.result == one.result


def test_random_truncations_of_fixture_lines_never_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(20261128)
    lines = [line for name in FIXTURES for line in fixture_lines(name)]
    for _ in range(3000):
        line = rng.choice(lines)
        cut = line[: rng.randrange(len(line) + 1)]
        if rng.random() < 0.3 and cut:  # and sometimes a flipped character
            at = rng.randrange(len(cut))
            cut = cut[:at] + rng.choice('{}[]":,\\x0 ') + cut[at + 1 :]
        for parser in (StreamJsonParser(), CommandParser()):
            assert_well_formed(parser.feed(cut))
    assert not caplog.records


# --- summaries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tool_input", "summary"),
    [
        (
            "Write",
            {"file_path": "hello.txt", "content": "hello world\n"},
            "Write hello.txt (12 bytes)",
        ),
        ("Write", {"file_path": "é.txt", "content": "é"}, "Write é.txt (2 bytes)"),
        (
            "Bash",
            {"command": "ls -la /workspace && echo bye"},
            "Bash: ls -la /workspace && echo bye",
        ),
        ("Bash", {"command": "echo a\necho b"}, "Bash: echo a ⏎ echo b"),
        ("Read", {"file_path": "src/x.py", "offset": 10}, "Read src/x.py"),
        ("Edit", {"file_path": "a.py", "old_string": "x", "new_string": "y"}, "Edit a.py"),
        ("Grep", {"pattern": "foo", "path": "src"}, "Grep 'foo' in src"),
        ("Glob", {"pattern": "**/*.py"}, "Glob '**/*.py'"),
        ("WebFetch", {"url": "https://example.com/x"}, "WebFetch https://example.com/x"),
        ("Task", {"description": "find bugs", "prompt": "..."}, "Task: find bugs"),
        ("TodoWrite", {"todos": [{}, {}]}, "TodoWrite (2 items)"),
        ("mcp__x__y", {"a": 1, "b": "two"}, 'mcp__x__y {"a":1,"b":"two"}'),
        ("Bash", {}, "Bash"),
        ("Read", {"file_path": 7}, 'Read {"file_path":7}'),
    ],
)
def test_summaries(name: str, tool_input: dict[str, object], summary: str) -> None:
    assert summarize_tool_use(name, tool_input) == summary


def test_summaries_are_one_short_line() -> None:
    summary = summarize_tool_use("Bash", {"command": "echo hi\n" * 100})
    assert "\n" not in summary
    assert len(summary) <= 120
    assert summary.endswith("…")


# --- custom agent protocol -------------------------------------------------------------


def test_command_plain_lines_are_output() -> None:
    parser = CommandParser()
    assert parser.feed("hello\n") == [ParsedEvent("output", {"line": "hello"})]
    assert parser.feed('{"not": "an event"}') == [
        ParsedEvent("output", {"line": '{"not": "an event"}'})
    ]
    assert parser.feed("") == []
    assert parser.result is None


def test_command_typed_events() -> None:
    parser = CommandParser()
    feed = parser.feed
    assert feed('{"event": "output", "data": {"line": "hi", "stream": "x"}}') == [
        ParsedEvent("output", {"line": "hi", "stream": "x"})
    ]
    assert feed('{"event": "assistant", "data": {"text": "one\\ntwo"}}') == [
        ParsedEvent("assistant", {"text": "one\ntwo"}),
        ParsedEvent("output", {"line": "one"}),
        ParsedEvent("output", {"line": "two"}),
    ]
    tool_use = '{"event": "tool_use", "data": {"name": "Bash", "input": {"command": "ls"}}}'
    assert feed(tool_use) == [
        ParsedEvent(
            "tool_use", {"name": "Bash", "input": {"command": "ls"}, "summary": "Bash: ls"}
        ),
        ParsedEvent("output", {"line": "→ Bash: ls"}),
    ]
    tool_result = '{"event": "tool_result", "data": {"is_error": true, "content": "boom\\nmore"}}'
    assert [e.type for e in feed(tool_result)] == ["tool_result", "output"]
    assert feed(tool_result)[1].data == {"line": "✗ boom"}
    assert feed('{"event": "log", "data": {"level": "info", "msg": "m"}}') == [
        ParsedEvent("log", {"level": "info", "msg": "m"})
    ]
    assert feed('{"event": "result", "data": {"result": {"ok": true}}}') == [
        ParsedEvent("result", {"result": {"ok": True}})
    ]
    assert parser.result == {"ok": True}


@pytest.mark.parametrize(
    "line",
    [
        '{"event": "shout", "data": {"line": "x"}}',
        '{"event": "output", "data": "x"}',
        '{"event": "output", "data": {"text": "no line"}}',
        '{"event": "output", "data": {"line": 5}}',
        '{"event": "assistant", "data": {"text": null}}',
        '{"event": "tool_use", "data": {"input": {}}}',
        '{"event": 5, "data": {}}',
        '{"event": "result"}',
        '{"event": "result", "data": {"result": 1}',
    ],
)
def test_command_invalid_shapes_fall_back_to_output(line: str) -> None:
    parser = CommandParser()
    assert parser.feed(line) == [ParsedEvent("output", {"line": line})]
    assert parser.result is None


def test_shared_dir_default_points_next_to_the_repo() -> None:
    from tests.shared_dir import DEFAULT_SHARED_DIR

    assert Path(__file__).resolve().parents[2] / "shared" == DEFAULT_SHARED_DIR
