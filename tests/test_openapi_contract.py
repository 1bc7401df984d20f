"""/openapi.json is a contract: an independent fuzzer checks it against a live server.

`schemathesis` reads the served description, generates valid and invalid
requests from it, sends them to a real `cbox serve` (command agents, so a task
takes a container start and not a model run) and checks each answer: no 5xx,
only declared statuses, content types and headers, bodies and every SSE event
matching their schemas, valid data accepted, invalid data refused, 405 with
`Allow`, the token enforced; then its stateful phase follows the description's
`links` from a submitted task to reading, following and stopping it.

Two facts of this deployment are not in the served description, because JSON
Schema cannot state them without publishing server configuration: which policy
names exist and which host paths are workspaces. The test adds exactly those
two (the policies it configured, its own workspace) to the copy it hands the
fuzzer, and checks that nothing else differs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import Field

from cbox.api import event_types, openapi, params
from cbox.models import NOT_BLANK, TaskSpec
from tests.orch import Orchestrator

README = Path(__file__).resolve().parent.parent / "README.md"

#: Command agents, so a fuzzed task costs one short container run.
POLICIES = {
    "default": 'agent = "command"\ntimeout_s = 30\n'
    'command = ["sh", "-c", "echo working; echo note >&2"]\n',
    "readonly": 'agent = "command"\nworkspace = "ro"\ntimeout_s = 30\n'
    'command = ["sh", "-c", "echo reading"]\n',
}
SEED = 20261201
MAX_EXAMPLES = 30


# ------------------------------------------------------------ without a server


def test_a_model_constraint_reaches_the_description_by_itself() -> None:
    class Stricter(TaskSpec):
        model: str | None = Field(None, max_length=7, description="A short model name.")

    document = openapi.spec(task_spec=Stricter)
    model = document["components"]["schemas"]["TaskSpec"]["properties"]["model"]
    assert {"maxLength": 7, "type": "string"} in model["anyOf"]
    assert "maxLength" not in json.dumps(
        openapi.spec()["components"]["schemas"]["TaskSpec"]["properties"]["model"]
    )


def test_parameters_are_described_with_the_bounds_the_handlers_enforce() -> None:
    document = openapi.spec()
    listed = {
        (path, method, p["name"]): p["schema"]
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        for p in op.get("parameters", [])
    }
    for path, method, param in [
        ("/history", "get", params.HISTORY_LIMIT),
        ("/tasks", "get", params.TASKS_LIMIT),
        ("/tasks", "get", params.TASKS_OFFSET),
        ("/tasks/{task_id}/raw", "get", params.RAW_LIMIT),
        ("/tasks/{task_id}/events", "get", params.EVENTS_AFTER),
        ("/tasks/{task_id}/events", "get", params.LAST_EVENT_ID),
    ]:
        schema = listed[(path, method, param.name)]
        assert (schema["minimum"], schema["maximum"]) == (param.minimum, param.maximum)
        assert param.value(str(param.minimum)) == param.minimum
        for bad in (str(param.minimum - 1), str(param.maximum + 1), " 5", "1_0", "", "x"):
            with pytest.raises(ValueError, match=param.name):
                param.value(bad)
    prompt = document["components"]["schemas"]["TaskSpec"]["properties"]["prompt"]
    assert (prompt["minLength"], prompt["maxLength"]) == (1, 100_000)


def test_not_blank_means_the_same_in_python_and_in_the_description() -> None:
    """The prompt's pattern is spelt out so every regex engine reads it alike."""
    for code in range(0x3100):
        char = chr(code)
        assert bool(re.search(NOT_BLANK, char)) == (not char.isspace()), hex(code)
    for prompt in (" \t\n", "\u001c\u3000", "\u00a0"):
        with pytest.raises(ValueError, match="must not be empty"):
            TaskSpec(prompt=prompt)


def test_readme_event_table_is_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    begin, end = event_types.README_BEGIN, event_types.README_END
    assert begin in text and end in text, "README lost the event table's markers"
    table = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == event_types.readme_table(), (
        "README's event table is not what cbox/api/event_types.py renders; paste "
        "`python -c 'from cbox.api.event_types import readme_table; print(readme_table())'`"
    )
    described = openapi.spec()["components"]["schemas"]["TaskEvent"]["oneOf"]
    assert [v["properties"]["event"]["const"] for v in described] == [
        e.name for e in event_types.EVENTS
    ]


# ---------------------------------------------------------------- with a server


@pytest.fixture
async def served(
    orchestrator_factory: type[Orchestrator], tmp_path: Path
) -> AsyncIterator[Orchestrator]:
    ws = tmp_path / "ws"
    ws.mkdir()
    # A receiver the deployment allows, so webhook subscriptions and a task's
    # `notify_url` can be accepted (both must name an allowed, reachable URL).
    receiver = web.Application()
    receiver.router.add_post("/hook", _accept)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    orch = orchestrator_factory(workspace=ws, policies=POLICIES, env={
        "CBOX_WEBHOOK_ALLOWED_URLS": json.dumps([f"http://127.0.0.1:{port}"]),
        "CBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
    })
    orch.hook_url = f"http://127.0.0.1:{port}/hook"  # type: ignore[attr-defined]
    if getattr(orch, "token", None) is None:
        # Before the API always required a token: require one here all the same.
        orch.token = secrets.token_urlsafe(24)  # type: ignore[attr-defined]
        orch.env["CBOX_API_TOKEN"] = orch.token  # type: ignore[attr-defined]
    await orch.start()
    yield orch
    await orch.destroy()  # first, so no container holds a session volume
    await runner.cleanup()
    subprocess.run(
        ["sh", "-c", f"docker volume ls -q --filter label=dev.cbox.instance={orch.instance}"
         " | xargs -r docker volume rm -f"],
        capture_output=True, check=False,
    )


def _auth(orch: Orchestrator) -> dict[str, str]:
    return {"Authorization": f"Bearer {orch.token}"}  # type: ignore[attr-defined]


@pytest.mark.docker
async def test_every_405_names_the_allowed_methods(served: Orchestrator) -> None:
    """RFC 9110: a 405 must carry `Allow`; our JSON error body used to drop it."""
    async with aiohttp.ClientSession(headers=_auth(served)) as session:
        for path, ops in openapi.spec()["paths"].items():
            concrete = re.sub(r"\{[a-z_]+\}", "nope", path.replace("{task_id}", "task_unknown"))
            declared = {m.upper() for m in ops}
            for method in sorted({"TRACE", "PATCH", "PUT", "DELETE", "POST"} - declared):
                async with session.request(method, served.url + concrete) as resp:
                    assert resp.status == 405, (method, path, await resp.text())
                    allow = resp.headers.get("Allow")
                    assert allow is not None, f"{method} {path}: 405 without Allow"
                    expected = declared | ({"HEAD"} if "GET" in declared else set())
                    assert {m.strip() for m in allow.split(",")} == expected, (path, allow)


async def _accept(request: web.Request) -> web.Response:
    return web.Response(text="ok")


WEBHOOK_SECRET = "whsec_" + "A" * 32


def _for_this_deployment(
    document: dict[str, Any], workspace: Path, hook_url: str
) -> dict[str, Any]:
    """The served description plus the facts only the deployment knows.

    Policy names, the workspace path and the allowed webhook receivers are
    the server's configuration, kept out of the public description.
    """
    narrowed = copy.deepcopy(document)
    schemas = narrowed["components"]["schemas"]
    props = schemas["TaskSpec"]["properties"]
    props["policy"]["enum"] = sorted(POLICIES)
    props["workspace"] = {"enum": [str(workspace), None], "default": None}
    props["notify_url"] = {"enum": [hook_url, None], "default": None}
    schemas["WebhookIn"]["properties"]["url"] = {"enum": [hook_url]}
    # Nothing else: the fuzzer checks the description the server serves.
    again = copy.deepcopy(narrowed)
    for name in ("TaskSpec", "WebhookIn"):
        again["components"]["schemas"][name]["properties"] = document["components"][
            "schemas"][name]["properties"]
    assert again == document
    return narrowed


@pytest.mark.docker
@pytest.mark.slow
async def test_schemathesis_finds_no_disagreement(served: Orchestrator, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session, session.get(
        served.url + "/openapi.json"
    ) as resp:
        assert resp.status == 200  # with no token: the description is public
        document = await resp.json()
    schema_file = tmp_path / "openapi.json"
    narrowed = _for_this_deployment(
        document, served.workspace, served.hook_url  # type: ignore[attr-defined]
    )
    schema_file.write_text(json.dumps(narrowed))
    command = schemathesis_command(served, schema_file, seed=SEED)
    # In a thread: the allowed webhook receiver runs on this test's loop.
    proc = await asyncio.to_thread(
        subprocess.run,
        command, capture_output=True, text=True, timeout=420, check=False, cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"$ {' '.join(command)}\n{output}"
    assert "No issues found" in output or "passed" in output, output


def schemathesis_command(orch: Orchestrator, schema: Path, *, seed: int | None) -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    command = [
        str(exe), "run", str(schema),
        "--url", orch.url,
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "1",
        "--request-timeout", "60",
        "--header", f"Authorization: Bearer {orch.token}",  # type: ignore[attr-defined]
    ]
    if seed is not None:
        command += ["--seed", str(seed)]
    return command
