"""Issue 17: signed, durable webhooks. A real `cbox serve`, the real engine, command-agent
policies, and receivers on loopback that verify every signature with the
`standardwebhooks` library's own `Webhook(secret).verify`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic, Text, ToolUse
from tests.orch import Orchestrator, free_port
from tests.webhook_receiver import Receiver, deliveries, new_secret, settled, subscribe

pytestmark = [pytest.mark.docker]

POLICIES = {
    "ok": 'agent = "command"\ncommand = ["sh", "-c", "echo working; echo all good"]\n',
    "bad": 'agent = "command"\ncommand = ["sh", "-c", "echo trying; exit 3"]\n',
    "quiet": 'agent = "command"\ncommand = ["sh", "-c", "echo start; sleep 3; echo end"]\n',
    "slow": 'agent = "command"\ncommand = ["sh", "-c", "echo start; sleep 60"]\ntimeout_s = 2\n',
    "idle": 'agent = "command"\ncommand = ["sh", "-c", "echo start; sleep 60"]\n',
}
FAST_RETRIES = "0.002"  # 5 s -> 10 ms, 5 min -> 0.6 s, ...


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        await receiver.stop()


async def receiver(made: list[Receiver], *script: int | str, secrets: list[str] | None = None,
                   redirect_to: str | None = None) -> Receiver:
    r = Receiver(secrets=secrets or [new_secret()], script=list(script or [200]),
                 redirect_to=redirect_to)
    await r.start()
    made.append(r)
    return r


def serve(factory: type[Orchestrator], tmp_path: Path, allowed: list[str],
          max_concurrent: int = 2, **env: str) -> Orchestrator:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return factory(
        workspace=ws, policies=POLICIES, max_concurrent=max_concurrent,
        env={"CBOX_WEBHOOK_ALLOWED_URLS": json.dumps(allowed),
             "CBOX_WEBHOOK_RETRY_SCALE": FAST_RETRIES, "CBOX_WEBHOOK_TIMEOUT_S": "3",
             "CBOX_PUBLIC_URL": "https://cbox.example.test", **env},
    )


async def test_completed_and_failed_each_deliver_exactly_the_subscribed_event_signed(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    done_r = await receiver(receivers)
    fail_r = await receiver(receivers)
    start_r = await receiver(receivers)
    orch = serve(orchestrator_factory, tmp_path, [r.origin for r in receivers])
    await orch.start()
    await subscribe(orch, "done", done_r.url, done_r.secrets[0], ["task.completed"])
    await subscribe(orch, "fails", fail_r.url, fail_r.secrets[0], ["task.failed"])
    await subscribe(orch, "starts", start_r.url, start_r.secrets[0], ["task.started"],
                    filter={"policy": "ok", "labels": {"team": "infra"}})
    good = await orch.submit("fine", policy="ok", metadata={"team": "infra"})
    bad = await orch.submit("broken", policy="bad", metadata={"team": "infra"})
    assert (await orch.wait_done(good["id"]))["state"] == "completed"
    assert (await orch.wait_done(bad["id"]))["state"] == "failed"

    for name, r, task, event in (("done", done_r, good, "task.completed"),
                                 ("fails", fail_r, bad, "task.failed"),
                                 ("starts", start_r, good, "task.started")):
        [got] = await r.wait_for(1)
        assert all(got.verified.values()), f"{name}: signature did not verify"
        body = got.json
        assert body["type"] == event
        assert body["data"]["id"] == task["id"]
        assert body["data"]["metadata"] == {"team": "infra"}
        assert body["data"]["links"]["task"] == f"https://cbox.example.test/tasks/{task['id']}"
        assert got.headers["webhook-id"].startswith("msg_")
        assert got.headers["webhook-signature"].startswith("v1,")
        [logged] = await settled(orch, name, 1)
        assert logged["id"] == got.id and logged["status"] == "delivered"
        assert logged["event"] == event and logged["attempts"] == 1
    finals = {t["id"]: await orch.task(t["id"]) for t in (good, bad)}
    completed = done_r.received[0].json["data"]
    served = finals[good["id"]]
    assert completed["state"] == served["state"] == "completed"
    assert completed["result"] == served["result"]
    assert completed["exit_code"] == 0
    assert fail_r.received[0].json["data"]["exit_code"] == 3
    # Exactly the subscribed events: nothing else came, nothing else is queued.
    assert [len(r.received) for r in (done_r, fail_r, start_r)] == [1, 1, 1]


async def test_500_twice_then_200_is_three_attempts_with_one_webhook_id(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers, 500, 500, 200)
    orch = serve(orchestrator_factory, tmp_path, [r.origin])
    await orch.start()
    await subscribe(orch, "flaky", r.url, r.secrets[0], ["task.completed"])
    task = await orch.submit("fine", policy="ok")
    got = await r.wait_for(3)
    assert {g.id for g in got} == {got[0].id}
    assert all(all(g.verified.values()) for g in got)
    assert len({g.body for g in got}) == 1  # the same bytes every time
    [logged] = await settled(orch, "flaky", 1)
    assert logged["status"] == "delivered" and logged["attempts"] == 3
    assert [a["status"] for a in logged["log"]] == [500, 500, 200]
    assert logged["log"][0]["error"] == "HTTP 500: scripted answer"
    assert got[0].json["data"]["id"] == task["id"]
    assert len(r.received) == 3


async def test_kill9_between_the_end_and_the_delivery_delivers_after_restart(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    orch = serve(orchestrator_factory, tmp_path, [r.origin], CBOX_WEBHOOK_RETRY_SCALE="0.01")
    await orch.start()
    await subscribe(orch, "durable", r.url, r.secrets[0], ["task.completed"])
    await r.stop()  # the receiver is down when the task ends
    task = await orch.submit("fine", policy="ok")
    await orch.wait_done(task["id"])
    deadline = time.monotonic() + 60
    while True:
        [pending] = await deliveries(orch, "durable") or [None]
        if pending is not None and pending["attempts"] >= 1:
            break
        assert time.monotonic() < deadline, "no failed first attempt"
        await asyncio.sleep(0.05)
    assert pending["status"] == "pending" and pending["last_error"]
    orch.kill9()
    await r.start()
    await orch.start()
    [got] = await r.wait_for(1)
    assert got.id == pending["id"]
    assert all(got.verified.values())
    assert got.json["data"]["id"] == task["id"]
    [logged] = await settled(orch, "durable", 1)
    assert logged["status"] == "delivered" and logged["attempts"] >= 2


async def test_410_gone_disables_the_subscription(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    gone = await receiver(receivers, 410)
    witness = await receiver(receivers)
    orch = serve(orchestrator_factory, tmp_path, [gone.origin, witness.origin])
    await orch.start()
    await subscribe(orch, "gone", gone.url, gone.secrets[0], ["task.completed"])
    await subscribe(orch, "witness", witness.url, witness.secrets[0], ["task.completed"])
    first = await orch.submit("one", policy="ok")
    await gone.wait_for(1)
    [logged] = await settled(orch, "gone", 1)
    assert logged["status"] == "failed" and logged["attempts"] == 1
    deadline = time.monotonic() + 30
    while True:  # the subscription is disabled just after the attempt is recorded
        status, sub = await orch.request("GET", "/webhooks/gone")
        if status == 200 and sub["disabled"]:
            break
        assert time.monotonic() < deadline, sub
        await asyncio.sleep(0.05)
    assert sub["disabled"] == "the receiver answered 410 Gone"
    second = await orch.submit("two", policy="ok")
    # The witness's delivery was written with the second task's end: a row for
    # `gone` would have been written in that same transaction.
    got = await witness.wait_for(2)
    assert [g.json["data"]["id"] for g in got] == [first["id"], second["id"]]
    assert len(await deliveries(orch, "gone")) == 1
    assert len(gone.received) == 1


async def test_notify_url_must_be_allowlisted_and_redirects_are_not_followed(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    secret = new_secret()
    canary = await receiver(receivers, secrets=[secret])  # an SSRF target: not allowed
    bouncer = await receiver(receivers, 307, secrets=[secret], redirect_to=canary.url)
    notified = await receiver(receivers, secrets=[secret])
    orch = serve(orchestrator_factory, tmp_path, [bouncer.origin, notified.origin],
                 CBOX_WEBHOOK_SECRET=secret)
    await orch.start()
    for url in (canary.url, "http://169.254.169.254/latest/meta-data/",
                f"http://{notified.origin[7:]}@127.0.0.1:{canary.port}/hook",
                f"http://127.1:{notified.port}/hook", "file:///etc/passwd",
                f"http://localhost:{notified.port}/hook"):
        status, body = await orch.request(
            "POST", "/tasks", json={"prompt": "x", "policy": "ok", "notify_url": url})
        assert status == 400, (url, body)
        assert body["error"]["field"] == "notify_url", body
        assert body["error"]["message"].startswith("notify_url: "), body
    task = await orch.submit("fine", policy="ok", notify_url=notified.url)
    bounced = await orch.submit("bounce", policy="ok", notify_url=bouncer.url)
    events = [g.json for g in await notified.wait_for(2)]
    assert [e["type"] for e in events] == ["task.started", "task.completed"]
    assert all(e["data"]["id"] == task["id"] for e in events)
    assert all(all(g.verified.values()) for g in notified.received)
    await bouncer.wait_for(2)
    await orch.wait_done(bounced["id"])
    deadline = time.monotonic() + 60
    while True:
        redirected = [d for d in await deliveries(orch, "notify_url") if d["url"] == bouncer.url]
        if len(redirected) == 2 and all(d["attempts"] >= 2 for d in redirected):
            break
        assert time.monotonic() < deadline, redirected
        await asyncio.sleep(0.1)
    # A redirect is a failed attempt (retried on the schedule), never followed.
    assert all(d["status"] == "pending" and d["last_status"] == 307 for d in redirected)
    assert all(d["last_error"] == "HTTP 307: redirects are not followed" for d in redirected)
    assert canary.received == []


async def test_a_hanging_receiver_delays_neither_another_receiver_nor_the_next_task(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    slow = await receiver(receivers, "hang")
    fast = await receiver(receivers)
    orch = serve(orchestrator_factory, tmp_path, [slow.origin, fast.origin],
                 CBOX_WEBHOOK_TIMEOUT_S="30", CBOX_WEBHOOK_CONCURRENCY="1")
    await orch.start()
    await subscribe(orch, "slow", slow.url, slow.secrets[0], ["task.completed"])
    await subscribe(orch, "fast", fast.url, fast.secrets[0], ["task.completed"])
    first = await orch.submit("one", policy="ok")
    await slow.wait_for(1)
    assert slow.hanging == 1
    second = await orch.submit("two", policy="ok")
    done = await orch.wait_done(second["id"], timeout_s=60)
    assert done["state"] == "completed"
    got = await fast.wait_for(2, timeout_s=20)
    assert [g.json["data"]["id"] for g in got] == [first["id"], second["id"]]
    assert slow.hanging == 1, "the slow receiver's first request should still be open"
    assert len(slow.received) == 1  # its second delivery waits for its own slot
    slow.release.set()
    await slow.wait_for(2, timeout_s=30)


async def test_secret_rotation_sends_both_signatures_and_each_verifies(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    old, new = new_secret(), new_secret()
    r = await receiver(receivers, secrets=[old, new])
    orch = serve(orchestrator_factory, tmp_path, [r.origin])
    await orch.start()
    await subscribe(orch, "rot", r.url, old, ["task.completed"])
    await orch.submit("before", policy="ok")
    [before] = await r.wait_for(1)
    assert before.verified == {old: True, new: False}
    sub = await subscribe(orch, "rot", r.url, new, ["task.completed"], previous_secret=old)
    assert "secret" not in sub and "previous_secret" not in sub
    assert sub["previous_secret_fingerprint"] and sub["secret_fingerprint"]
    await orch.submit("during", policy="ok")
    during = (await r.wait_for(2))[1]
    entries = during.headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
    assert during.verified == {old: True, new: True}
    await subscribe(orch, "rot", r.url, new, ["task.completed"])
    await orch.submit("after", policy="ok")
    after = (await r.wait_for(3))[2]
    assert after.verified == {old: False, new: True}
    # The CLI: list, and a signed ping.
    env = {**os.environ, "CBOX_SERVER": orch.url}
    if orch.env.get("CBOX_API_TOKEN"):
        env["CBOX_API_TOKEN"] = orch.env["CBOX_API_TOKEN"]
    listed = subprocess.run([sys.executable, "-m", "cbox", "webhooks", "list", "--json"],
                            env=env, capture_output=True, text=True, timeout=60, check=True)
    [shown] = json.loads(listed.stdout)
    assert shown["name"] == "rot" and "secret" not in shown
    ping = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "cbox", "webhooks", "test", "rot"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.startswith("delivered msg_")
    pinged = (await r.wait_for(4))[3]
    assert pinged.json["type"] == "webhook.ping" and pinged.verified[new]
    log = subprocess.run([sys.executable, "-m", "cbox", "webhooks", "deliveries", "rot", "--json"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    shown_log = json.loads(log.stdout)
    assert shown_log[0]["id"] == pinged.id and shown_log[0]["event"] == "webhook.ping"
    assert [d["status"] for d in shown_log] == ["delivered"] * 4


async def test_bad_subscriptions_get_a_400_naming_the_field(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    closed = free_port()  # allowed, but nothing listens there
    orch = serve(orchestrator_factory, tmp_path, [r.origin, f"http://127.0.0.1:{closed}"])
    await orch.start()
    good = {"name": "x", "url": r.url, "secret": r.secrets[0], "events": ["task.completed"]}
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"url": "not a url"}, "url", "absolute http"),
        ({"url": "http://127.0.0.1:1/hook"}, "url", "not allowed"),
        ({"url": f"http://127.0.0.1:{closed}/hook"}, "url", "unreachable"),
        ({"url": "http://user:pw@" + r.url[7:]}, "url", "user name"),
        ({"secret": None}, "secret", ""),
        ({"secret": "s3cret"}, "secret", "whsec_"),
        ({"secret": "whsec_not*base64"}, "secret", "base64"),
        ({"secret": "whsec_c2hvcnQ="}, "secret", "24 to 62"),
        ({"previous_secret": "nope"}, "previous_secret", "whsec_"),
        ({"events": ["task.exploded"]}, "events.0", ""),
        ({"events": []}, "events", ""),
        ({"name": "../etc"}, "name", "letters"),
        ({"name": "notify_url"}, "name", "reserved"),
        ({"filter": {"owner": "me"}}, "filter.owner", "unknown field"),
    ]
    for change, field, words in cases:
        body = {k: v for k, v in {**good, **change}.items() if v is not None}
        status, answer = await orch.request("POST", "/webhooks", json=body)
        assert status == 400, (change, answer)
        assert answer["error"]["field"] == field, (change, answer)
        assert words in answer["error"]["message"], (change, answer)
        assert "whsec_" not in answer["error"]["message"].replace("'whsec_'", "")
    status, listed = await orch.request("GET", "/webhooks")
    assert status == 200 and listed["webhooks"] == []
    status, answer = await orch.request("GET", "/webhooks/nope/deliveries")
    assert status == 404


async def test_stalled_timed_out_and_stopped_tasks_are_reported(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    orch = serve(orchestrator_factory, tmp_path, [r.origin], CBOX_WEBHOOK_STALL_S="1")
    await orch.start()
    await subscribe(orch, "ops", r.url, r.secrets[0],
                    ["task.stalled", "task.timed_out", "task.stopped"])
    quiet = await orch.submit("quiet", policy="quiet")
    [stalled] = await r.wait_for(1)
    assert stalled.json["type"] == "task.stalled"
    assert stalled.json["data"]["id"] == quiet["id"]
    assert stalled.json["data"]["state"] == "running"
    assert (await orch.wait_done(quiet["id"]))["state"] == "completed"
    slow = await orch.submit("slow", policy="slow")
    assert (await orch.wait_done(slow["id"]))["state"] == "timed_out"
    idle = await orch.submit("idle", policy="idle")
    await orch.wait_state(idle["id"], {"running"})
    await orch.request("POST", f"/tasks/{idle['id']}/stop")
    await orch.wait_done(idle["id"])
    n = 3
    while ("task.stopped", idle["id"]) not in [
        (g.json["type"], g.json["data"]["id"]) for g in await r.wait_for(n)
    ]:
        n += 1
    got = r.received
    assert all(all(g.verified.values()) for g in got)
    seen = [(g.json["type"], g.json["data"]["id"]) for g in got]
    # One silence is one task.stalled, however long it lasts.
    assert seen.count(("task.stalled", quiet["id"])) == 1
    assert ("task.timed_out", slow["id"]) in seen
    assert ("task.stopped", idle["id"]) in seen


async def test_a_task_stopped_for_its_budget_is_over_budget_not_stopped(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver],
    fake_api: FakeAnthropic, marker: str,
) -> None:
    r = await receiver(receivers)
    orch = serve(orchestrator_factory, tmp_path, [r.origin])
    await orch.start()
    await subscribe(orch, "budget", r.url, r.secrets[0], ["task.over_budget", "task.stopped"])
    loop = "for i in $(seq 1 1200); do echo tick $i; sleep 0.1; done"
    fake_api.script(marker, [ToolUse("Bash", {"command": loop, "description": "wait",
                                              "timeout": 600000}), Text("finished")])
    task = await orch.submit(f"{marker} loop", max_tokens=50)
    done = await orch.wait_done(task["id"], timeout_s=120)
    assert done["state"] == "stopped" and done["error"].startswith("budget exceeded:")
    [got] = await r.wait_for(1)
    assert got.json["type"] == "task.over_budget" and all(got.verified.values())
    assert got.json["data"]["error"].startswith("budget exceeded:")
    assert [d["event"] for d in await settled(orch, "budget", 1)] == ["task.over_budget"]


async def test_subscriptions_from_the_toml_file(
    orchestrator_factory: type[Orchestrator], tmp_path: Path, receivers: list[Receiver]
) -> None:
    r = await receiver(receivers)
    down = free_port()
    hooks = tmp_path / "hooks.toml"
    hooks.write_text(f"""
[[webhook]]
name = "ci"
url = "{r.url}"
secret = "{r.secrets[0]}"
events = ["task.failed"]
filter = {{ labels = {{ team = "infra" }} }}

[[webhook]]
name = "later"
url = "http://127.0.0.1:{down}/hook"
secret = "{new_secret()}"
events = ["task.failed"]
""")
    orch = serve(orchestrator_factory, tmp_path, [r.origin, f"http://127.0.0.1:{down}"],
                 max_concurrent=1, CBOX_WEBHOOKS_FILE=str(hooks))
    await orch.start()
    # An unreachable receiver in the file is one logged line, not a refusal to start.
    assert f"webhooks file {hooks}: field webhook[1].url: " in orch.log.read_text()
    status, listed = await orch.request("GET", "/webhooks")
    assert [(s["name"], s["source"]) for s in listed["webhooks"]] == [
        ("ci", "file"), ("later", "file")]
    status, body = await orch.request("DELETE", "/webhooks/ci")
    assert status == 409 and str(hooks) in body["error"]["message"]
    other = await orch.submit("not ours", policy="bad")
    ours = await orch.submit("ours", policy="bad", metadata={"team": "infra"})
    await orch.wait_done(other["id"])
    # One at a time: the first task's end was stored (with any rows) before ours began.
    [got] = await r.wait_for(1)
    assert got.json["data"]["id"] == ours["id"] and all(got.verified.values())
    [logged] = await settled(orch, "ci", 1)
    assert logged["id"] == got.id
