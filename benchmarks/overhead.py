"""Scenarios 1 and 2: end-to-end overhead of `cbox run`, and submit-to-start latency.

Both sides run interleaved (cbox, bare, bare, cbox, ...) so drift on a shared
machine hits both alike. The engine's own event times (`docker events`) split
each run into phases, which is what says where the time goes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import sse
from benchmarks.docker_events import DockerEvents
from benchmarks.env import ECHO, MARKER, Bench, Server
from benchmarks.stats import median

CBOX = str(Path(sys.executable).parent / "cbox")
CLAUDE = ["claude", "-p", f"{MARKER} say hi", "--output-format", "stream-json",
          "--verbose", "--dangerously-skip-permissions"]


def ms(ns: float) -> float:
    return round(ns / 1e6, 1)


async def _timed(*cmd: str) -> tuple[int, int, int, int]:
    """Run to the end; (start ns, end ns, arrival of its last stdout line, exit code)."""
    t0 = time.time_ns()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    last = t0
    async for _line in proc.stdout:
        last = time.time_ns()
    await proc.wait()
    t1 = time.time_ns()
    if proc.returncode != 0:
        assert proc.stderr is not None
        err = await proc.stderr.read()
        print(f"  ! {' '.join(cmd[:3])} exited {proc.returncode}: {err.decode()[-300:]}")
    return t0, t1, last, proc.returncode or 0


async def _phases(events: DockerEvents, name: str, t0: int,
                  network: str | None = None) -> dict[str, float]:
    """Engine-side milestones of one run, in ms after `t0`."""
    out: dict[str, float] = {}
    if network:
        found = await events.wait_for("network", "create", network, t0, timeout_s=2)
        if found:
            out["network_create"] = ms(found - t0)
    for action in ("create", "start", "die", "destroy"):
        found = await events.wait_for("container", action, name, t0, timeout_s=3)
        if found:
            out[f"container_{action}"] = ms(found - t0)
    return out


async def _cbox_run(bench: Bench, server: Server, policy: str, prompt: str
                    ) -> tuple[float, dict[str, float], bool]:
    t0, t1, last, code = await _timed(
        CBOX, "run", "--server", server.url, "--token", server.token, "--policy", policy, prompt
    )
    found = await _wait_prefix(bench, "container", "create", "cbox-task_", t0)
    phases: dict[str, float] = {}
    if found:
        name = found[0]
        task_id = name.removeprefix("cbox-")
        phases = await _phases(bench.events, name, t0, f"{bench.net_prefix}-{task_id}")
    phases["last_line_printed"] = ms(last - t0)  # the rendered `done`
    phases["exit"] = ms(t1 - t0)
    return ms(t1 - t0), phases, code == 0


async def _wait_prefix(bench: Bench, type_: str, action: str, prefix: str,
                       since: int, timeout_s: float = 3) -> tuple[str, int] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = bench.events.first_with_prefix(type_, action, prefix, bench.instance, since)
        if found:
            return found
        await asyncio.sleep(0.02)
    return None


async def _bare_run(bench: Bench, command: list[str], *, claude: bool = False
                    ) -> tuple[float, dict[str, float], bool]:
    name = bench.bare_name()
    env = bench.bare_claude_env() if claude else None
    mode = "rw" if claude else "ro"
    t0, t1, _, code = await _timed(
        *bench.bare_args(name, command, workspace_mode=mode, env=env)
    )
    phases = await _phases(bench.events, name, t0)
    phases["exit"] = ms(t1 - t0)
    return ms(t1 - t0), phases, code == 0


def _summary(cbox: list[tuple[float, dict[str, float], bool]],
             bare: list[tuple[float, dict[str, float], bool]]) -> dict[str, Any]:
    def phase_medians(runs: list[tuple[float, dict[str, float], bool]]) -> dict[str, float]:
        keys = sorted({k for _, p, _ in runs for k in p}, key=lambda k: median(
            [p[k] for _, p, _ in runs if k in p]))
        return {k: round(median([p[k] for _, p, _ in runs if k in p]), 1) for k in keys}

    cbox_ms = [t for t, _, _ in cbox]
    bare_ms = [t for t, _, _ in bare]
    return {
        "runs": len(cbox),
        "cbox_median_ms": round(median(cbox_ms), 1),
        "bare_median_ms": round(median(bare_ms), 1),
        "ratio": round(median(cbox_ms) / median(bare_ms), 3),
        "cbox_ms": cbox_ms,
        "bare_ms": bare_ms,
        "cbox_ok": sum(ok for _, _, ok in cbox),
        "bare_ok": sum(ok for _, _, ok in bare),
        "cbox_phases_ms": phase_medians(cbox),
        "bare_phases_ms": phase_medians(bare),
        "cbox_runs_phases_ms": [p for _, p, _ in cbox],
        "bare_runs_phases_ms": [p for _, p, _ in bare],
    }


async def overhead(bench: Bench, server: Server, reps: int, real_cli: bool) -> dict[str, Any]:
    """`cbox run` vs `docker run --rm`, trivial command (and the real CLI, one turn).

    Measured twice: with the warm pool (the product's default) and without it
    (`CBOX_WARM_POOL=0`, every task makes its container). Before every measured
    run, of either side, the pool is back to full, so refilling it never
    overlaps a measurement; the first run of each case is an unmeasured warm-up
    that teaches the pool the case's shape.
    """
    result: dict[str, Any] = {}
    cases: list[tuple[str, str, list[str], bool]] = [("echo", "bench-echo", ECHO, False)]
    if real_cli:
        cases.append(("claude_one_turn", "bench-claude", CLAUDE, True))
    for pool in ("warm", "cold"):
        if pool == "cold":
            await server.restart(server.max_concurrent, warm_pool=0)
        for label, policy, command, claude in cases:
            cbox: list[tuple[float, dict[str, float], bool]] = []
            bare: list[tuple[float, dict[str, float], bool]] = []
            prompt = f"{MARKER} say hi" if claude else "bench overhead"
            before = await server.steady_pool()
            await _cbox_run(bench, server, policy, prompt)  # warm-up, not measured
            full = await server.settle_pool(before + 1) if pool == "warm" else 0
            for i in range(reps):
                for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                    await server.settle_pool(full)
                    if side == 0:
                        cbox.append(await _cbox_run(bench, server, policy, prompt))
                    else:
                        bare.append(await _bare_run(bench, command, claude=claude))
            key = label if pool == "warm" else f"{label}_cold"
            result[key] = _summary(cbox, bare)
            result[key]["warm_pool"] = full
    await server.restart(server.max_concurrent, warm_pool=None)
    # Client start-up alone: what a Python CLI costs before it sends a byte.
    startup: dict[str, list[float]] = {"cbox --version": [], "docker --version": []}
    for _ in range(5):
        for key, cmd in (("cbox --version", [CBOX, "--version"]),
                         ("docker --version", ["docker", "--version"])):
            t0, t1, _, _ = await _timed(*cmd)
            startup[key].append(ms(t1 - t0))
    result["client_startup_ms"] = {k: round(median(v), 1) for k, v in startup.items()}
    return result


async def latency(bench: Bench, server: Server, reps: int) -> dict[str, Any]:
    """POST → first event / running / container start / first output, vs bare docker run."""
    rest: dict[str, list[float]] = {}
    seed: dict[str, list[float]] = {}
    bare: dict[str, list[float]] = {}

    def add(into: dict[str, list[float]], key: str, value: float | None) -> None:
        if value is not None:
            into.setdefault(key, []).append(value)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, headers=server.headers) as session:
        await session.get(server.url + "/healthz")  # a warm connection, as a worker has
        # An unmeasured task teaches the warm pool this shape; each measured one
        # starts with the pool full again (refilling is engine work).
        before = await server.steady_pool()
        async with session.post(server.url + "/task",
                                json={"prompt": "warm-up", "policy": "bench-echo"}) as resp:
            await sse.read_stream(resp)
        full = await server.settle_pool(before + 1)
        for _ in range(reps):
            await server.settle_pool(full)
            # REST: POST /tasks, then follow its events.
            t0 = time.time_ns()
            async with session.post(server.url + "/tasks",
                                    json={"prompt": "latency", "policy": "bench-echo"}) as resp:
                task = await resp.json()
            add(rest, "post_response", ms(time.time_ns() - t0))
            seen = await sse.follow(session, f"{server.url}/tasks/{task['id']}/events")
            for kind in ("start", "running", "output", "done"):
                add(rest, f"event_{kind}", ms(seen.first[kind] - t0) if kind in seen.first
                    else None)
            for action in ("create", "start", "die", "destroy"):
                when = await bench.events.wait_for("container", action, f"cbox-{task['id']}", t0)
                add(rest, f"container_{action}", ms(when - t0) if when else None)
            # Seed API: POST /task answers with the event stream itself.
            await server.settle_pool(full)
            t0 = time.time_ns()
            async with session.post(server.url + "/task",
                                    json={"prompt": "latency", "policy": "bench-echo"}) as resp:
                seen = await sse.read_stream(resp)
            for kind in ("start", "running", "output", "done"):
                add(seed, f"event_{kind}", ms(seen.first[kind] - t0) if kind in seen.first
                    else None)
            # Bare: docker run, attached; its first stdout line is the "first output".
            await server.settle_pool(full)
            name = bench.bare_name()
            t0 = time.time_ns()
            proc = await asyncio.create_subprocess_exec(
                *bench.bare_args(name, ECHO), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert proc.stdout is not None
            await proc.stdout.readline()
            add(bare, "first_output", ms(time.time_ns() - t0))
            await proc.wait()
            add(bare, "exit", ms(time.time_ns() - t0))
            for action in ("create", "start", "die", "destroy"):
                when = await bench.events.wait_for("container", action, name, t0)
                add(bare, f"container_{action}", ms(when - t0) if when else None)

    def med(values: dict[str, list[float]]) -> dict[str, float]:
        return {k: round(median(v), 1) for k, v in values.items()}

    return {"runs": reps, "warm_pool": full, "rest_ms": med(rest), "seed_ms": med(seed),
            "bare_ms": med(bare), "rest_all_ms": rest}
