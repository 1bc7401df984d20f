"""Inputs the description calls invalid are refused with a 4xx, never accepted or a 500.

Found by running schemathesis against the server: parameters that Python's
`int()` reads but no schema calls an integer, a bad `?after=` hidden behind a
good `Last-Event-ID`, a NUL in a workspace path (a 500), a session name with a
trailing newline, a 405 without `Allow`. Each case here failed on the code
before the description and the handlers shared their declarations.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cbox.cli.client import parse_sse
from tests.orch import Orchestrator

pytestmark = [pytest.mark.docker]

POLICIES = {"default": 'agent = "command"\ncommand = ["sh", "-c", "echo hi"]\n'}


@pytest.fixture
async def api(orchestrator_factory: type[Orchestrator], tmp_path: Path) -> Orchestrator:
    ws = tmp_path / "ws"
    ws.mkdir()
    orch = orchestrator_factory(workspace=ws, policies=POLICIES)
    if getattr(orch, "token", None) is None:
        orch.token = secrets.token_urlsafe(24)  # type: ignore[attr-defined]
        orch.env["CBOX_API_TOKEN"] = orch.token  # type: ignore[attr-defined]
    await orch.start()
    return orch


def _auth(orch: Orchestrator) -> dict[str, str]:
    return {"Authorization": f"Bearer {orch.token}"}  # type: ignore[attr-defined]


async def _call(orch: Orchestrator, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """One request with the token (our own session, whatever `Orchestrator.request` adds)."""
    async with aiohttp.ClientSession(headers=_auth(orch)) as session, session.request(
        method, orch.url + path, **kwargs
    ) as resp:
        return resp.status, await resp.json()


async def _finished_task(orch: Orchestrator) -> str:
    """A task that has run to `done`: its replayed stream then ends by itself."""
    got, task = await _call(orch, "POST", "/tasks", json={"prompt": "hello"})
    assert got == 202, task
    async with aiohttp.ClientSession(headers=_auth(orch)) as session, session.get(
        f"{orch.url}/tasks/{task['id']}/events", timeout=aiohttp.ClientTimeout(total=120)
    ) as resp:
        assert resp.status == 200
        async for event in parse_sse(resp.content):
            if event.type == "done":
                return str(task["id"])
    raise AssertionError("the stream ended without done")


#: Not integers in any schema, but `int()` reads each of them.
NOT_INTEGERS = [" 5", "5 ", "1_0", "+5", "\u0663", "1\n"]
#: The same for a header (whose surrounding white space HTTP itself strips).
HEADER_NOT_INTEGERS = ["1_0", "+5", "-0_0"]


async def test_integer_parameters_are_read_strictly(api: Orchestrator) -> None:
    task = {"id": await _finished_task(api)}
    async with aiohttp.ClientSession(headers=_auth(api)) as session:
        for raw in NOT_INTEGERS:
            for path, params in [
                ("/history", {"limit": raw}),
                ("/tasks", {"limit": raw}),
                ("/tasks", {"offset": raw}),
                (f"/tasks/{task['id']}/raw", {"after": raw}),
                (f"/tasks/{task['id']}/events", {"after": raw}),
            ]:
                async with session.get(api.url + path, params=params) as resp:
                    assert resp.status == 400, (path, params, await resp.text())
        for raw in HEADER_NOT_INTEGERS:
            async with session.get(
                f"{api.url}/tasks/{task['id']}/events", headers={"Last-Event-ID": raw}
            ) as resp:
                assert resp.status == 400, (raw, await resp.text())


async def test_a_bad_after_is_refused_even_behind_a_good_last_event_id(api: Orchestrator) -> None:
    task = {"id": await _finished_task(api)}
    async with aiohttp.ClientSession(headers=_auth(api)) as session, session.get(
        f"{api.url}/tasks/{task['id']}/events",
        params={"after": "true"}, headers={"Last-Event-ID": "1"},
    ) as resp:
        assert resp.status == 400, await resp.text()
        assert "after" in (await resp.json())["error"]["message"]


async def test_an_empty_state_filter_is_refused(api: Orchestrator) -> None:
    got, body = await _call(api, "GET", "/tasks?state=")
    assert got == 400, body
    got, body = await _call(api, "GET", "/tasks?state=queued,,running")
    assert got == 400, body


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"workspace": "/tmp/a\u0000b"}, "workspace"),  # was a 500: embedded null byte
        ({"session": "abc\n"}, "session"),  # Python's `$` let the newline through
    ],
)
async def test_malformed_fields_get_a_400(
    api: Orchestrator, spec: dict[str, str], needle: str
) -> None:
    body = {"prompt": "x", **spec}
    for path in ("/tasks", "/task"):
        got, answer = await _call(api, "POST", path, json=body)
        assert got == 400, (path, answer)
        assert needle in answer["error"]["message"], answer
    _, listing = await _call(api, "GET", "/tasks")
    assert listing["total"] == 0
