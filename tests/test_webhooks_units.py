"""Webhooks without Docker: the retry schedule, the payload cut, the allowlist, secrets,
the store migration and outbox transaction, and the TOML file's start-up errors."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from cbox.errors import ConfigError
from cbox.models import Task, TaskSpec
from cbox.orchestrator.migrations import OutboxRow
from cbox.orchestrator.store import _SCHEMA, SqliteStore
from cbox.webhooks import payload, sender
from cbox.webhooks.models import check_secret
from cbox.webhooks.urls import check_url, parse_allowlist
from tests.webhook_receiver import new_secret


def test_retry_schedule_is_standard_webhooks_reference_with_jitter_and_scale() -> None:
    rng = random.Random(7)
    assert sender.RETRY_SCHEDULE_S == (5, 300, 1800, 7200, 18000, 36000, 36000)
    for n, base in enumerate(sender.RETRY_SCHEDULE_S, 1):
        for _ in range(50):
            delay = sender.retry_delay_s(n, 1.0, rng)
            assert delay is not None
            assert base * 0.8 <= delay <= base * 1.2
        scaled = sender.retry_delay_s(n, 0.001, rng)
        assert scaled is not None and scaled <= base * 0.0012
    assert sender.retry_delay_s(len(sender.RETRY_SCHEDULE_S) + 1, 1.0) is None
    assert sender.retry_delay_s(0, 1.0) is None
    assert sum(sender.RETRY_SCHEDULE_S) / 3600 > 27  # retried over more than a day


def test_signature_entries_verify_with_the_library() -> None:
    old, new = new_secret(), new_secret()
    at = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()), UTC)
    header = sender.signature([new, old], "msg_1", at, '{"a":1}')
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(at.timestamp())),
               "webhook-signature": header}
    assert len(header.split(" ")) == 2
    assert Webhook(new).verify('{"a":1}', headers) == {"a": 1}
    assert Webhook(old).verify('{"a":1}', headers) == {"a": 1}


def test_payload_is_the_served_task_with_large_fields_cut() -> None:
    task = Task(id="task_1", spec=TaskSpec(prompt="p" * 10_000, metadata={"k": "v"}))
    task.outcome.result = "r" * 5000
    task.outcome.error = "short"
    body = json.loads(payload.task_body(
        "task.completed", task, public_url="https://x.test/", max_field_chars=100, at=0.0))
    assert body["type"] == "task.completed"
    assert body["timestamp"] == "1970-01-01T00:00:00Z"
    data = body["data"]
    assert len(data["result"]) == 100 and data["result"].endswith("…")
    assert len(data["prompt"]) == 100
    assert data["error"] == "short"
    assert data["truncated"] == ["result", "prompt"]
    assert data["links"]["task"] == "https://x.test/tasks/task_1"
    served = task.public()
    assert {k: v for k, v in data.items() if k not in ("result", "prompt", "truncated", "links")} \
        == {k: v for k, v in served.items() if k not in ("result", "prompt")}
    structured, cut = payload.cut({"items": list(range(1000))}, 50)
    assert cut and isinstance(structured, str) and len(structured) == 50
    assert payload.cut({"small": 1}, 50) == ({"small": 1}, False)


def test_allowlist_matches_scheme_host_and_port_exactly() -> None:
    allowed = parse_allowlist(["http://127.0.0.1:9000", "https://*.example.com"])
    for good in ("http://127.0.0.1:9000/x", "https://a.example.com/h", "https://A.Example.COM"):
        check_url(good, allowed)
    for bad in ("http://127.0.0.1:9001/", "https://127.0.0.1:9000/", "http://127.1:9000/",
                "http://localhost:9000/", "https://example.com/", "https://evilexample.com/",
                "https://a.example.com:8443/", "http://u:p@127.0.0.1:9000/",
                "http://127.0.0.1:9000@169.254.169.254/", "gopher://127.0.0.1:9000/",
                "file:///etc/passwd", "//127.0.0.1:9000/", "http://[::1]:9000/"):
        with pytest.raises(ValueError, match=r"not allowed|user name|absolute"):
            check_url(bad, allowed)
    with pytest.raises(ValueError, match="is empty"):
        check_url("http://127.0.0.1:9000/", ())
    for entry in ("127.0.0.1:9000", "http://h/path", "ftp://h", "http://h?q=1"):
        with pytest.raises(ConfigError, match="CBOX_WEBHOOK_ALLOWED_URLS"):
            parse_allowlist([entry])


def test_secrets_are_checked_strictly() -> None:
    check_secret(new_secret())
    for bad, words in (("abc", "whsec_"), ("whsec_!!!!", "base64"),
                       ("whsec_c2hvcnQ=", "24 to 62"), ("whsec_" + "A" * 200, "24 to 62")):
        with pytest.raises(ValueError, match=words):
            check_secret(bad)


async def test_migration_keeps_an_old_database_and_adds_the_outbox(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = Task(id="task_old", spec=TaskSpec(prompt="before webhooks"))
    with sqlite3.connect(db) as conn:  # a database as the previous version left it
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                     (old.id, "completed", 0, old.created_at, None, old.model_dump_json()))
    for _ in range(2):  # and opening it again changes nothing
        store = SqliteStore(db)
        await store.open()
        assert (await store.get_task("task_old")) is not None
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"webhook_subscriptions", "webhook_deliveries", "webhook_attempts"} <= tables


async def test_outbox_rows_are_written_with_the_task_state(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    task = Task(id="task_1", spec=TaskSpec(prompt="x"))
    await store.insert_task(task)
    row = OutboxRow("msg_1", "ci", "http://h/", "task.completed", task.id, "{}", 1.0)
    await store.append(task, [], [], [row])
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        rows = conn.execute("SELECT id, status, next_at FROM webhook_deliveries").fetchall()
    assert rows == [("msg_1", "pending", 1.0)]


WEBHOOK = """
[[webhook]]
name = "ci"
url = "{url}"
secret = "{secret}"
events = ["task.completed"]
"""


@pytest.mark.parametrize(("url", "secret", "extra", "field", "words"), [
    ("not a url", None, "", "webhook[0].url", "absolute http"),
    ("http://127.0.0.1:1/hook", None, "", "webhook[0].url", "not allowed"),
    ("http://127.0.0.1:9/hook", "whsec_x", "", "webhook[0].secret", "base64"),
    ("http://127.0.0.1:9/hook", "", "", "webhook[0].secret", "whsec_"),
    ("http://127.0.0.1:9/hook", None, 'filter = { owner = "me" }\n', "webhook[0].filter.owner",
     "unknown field"),
    ("http://127.0.0.1:9/hook", None, 'events = ["task.exploded"]\n', "webhook[0].events", ""),
])
def test_a_bad_webhooks_file_stops_the_server_with_one_line(
    tmp_path: Path, url: str, secret: str | None, extra: str, field: str, words: str
) -> None:
    text = WEBHOOK.format(url=url, secret=new_secret() if secret is None else secret)
    if extra.startswith("events"):
        text = text.replace('events = ["task.completed"]\n', extra)
    else:
        text += extra
    path = tmp_path / "hooks.toml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "cbox", "serve"],
        env={**os.environ, "CBOX_WEBHOOKS_FILE": str(path), "AGENT_PORT": "0",
             "CBOX_WEBHOOK_ALLOWED_URLS": '["http://127.0.0.1:9"]',
             "CBOX_DB_PATH": str(tmp_path / "db.sqlite")},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("cbox:")]
    assert line.startswith(f"cbox: webhooks file {path}: field {field}"), proc.stderr
    assert words in line


def test_a_missing_secret_in_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "hooks.toml"
    path.write_text('[[webhook]]\nname = "ci"\nurl = "http://127.0.0.1:9/"\n'
                    'events = ["task.failed"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "cbox", "serve"],
        env={**os.environ, "CBOX_WEBHOOKS_FILE": str(path), "AGENT_PORT": "0",
             "CBOX_WEBHOOK_ALLOWED_URLS": '["http://127.0.0.1:9"]',
             "CBOX_DB_PATH": str(tmp_path / "db.sqlite")},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"cbox: webhooks file {path}: field webhook[0].secret: field required" in proc.stderr


async def test_one_busy_receiver_cannot_fill_the_batch_of_due_deliveries(tmp_path: Path) -> None:
    from cbox.webhooks.outbox import Outbox

    outbox = Outbox(tmp_path / "o.db")
    await outbox.open()
    rows = [OutboxRow(f"msg_a{n:03}", "a", "http://a/", "task.completed", None, "{}", n)
            for n in range(300)]
    rows.append(OutboxRow("msg_b", "b", "http://b/", "task.completed", None, "{}", 500.0))
    await outbox.enqueue(rows)
    due = await outbox.due(1000.0, per_receiver=2, limit=200)
    await outbox.close()
    assert [d.id for d in due] == ["msg_a000", "msg_a001", "msg_b"]


@pytest.mark.parametrize(("env", "line"), [
    ({"CBOX_WEBHOOK_ALLOWED_URLS": '["hooks.example.com"]'},
     "cbox: CBOX_WEBHOOK_ALLOWED_URLS: 'hooks.example.com' must be an absolute http"),
    ({"CBOX_WEBHOOK_SECRET": "hunter2"}, "cbox: CBOX_WEBHOOK_SECRET: must start with 'whsec_'"),
    ({"CBOX_WEBHOOK_PREVIOUS_SECRET": new_secret()},
     "cbox: CBOX_WEBHOOK_PREVIOUS_SECRET is set without CBOX_WEBHOOK_SECRET"),
])
def test_bad_webhook_settings_stop_the_server_with_one_line(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cbox", "serve"],
        env={**os.environ, "AGENT_PORT": "0", "CBOX_DB_PATH": str(tmp_path / "db.sqlite"),
             **env},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("cbox:")] == [
        ln for ln in proc.stderr.splitlines() if ln.startswith(line)], proc.stderr
    assert line in proc.stderr
