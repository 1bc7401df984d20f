"""Scenarios 4 and 5: SSE fan-out latency per line, and raw event throughput.

Baselines are `docker logs -f` of an equivalent bare container: the engine's
own way of following a log, which is also what the orchestrator reads from.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from benchmarks import sse
from benchmarks.env import Bench, Server
from benchmarks.load import client_session, submit
from benchmarks.stats import percentile, sample, self_cpu_s


class RssPeak:
    """Sample a process's RSS every 100 ms while a scenario runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssPeak:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _loop(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, sample(self.pid).rss_mb)
            await asyncio.sleep(0.1)


def _ms(ns: float) -> float:
    return round(ns / 1e6, 2)


async def _fanout_once(bench: Bench, server: Server, clients: int, lines: int
                       ) -> dict[str, Any]:
    async with client_session(server) as session:
        before = sample(server.pid)
        client_cpu0 = self_cpu_s()
        t0 = time.perf_counter()
        async with RssPeak(server.pid) as peak:
            task_id = await submit(session, server, "bench-fanout", "fanout")
            url = f"{server.url}/tasks/{task_id}/events"
            seen = await asyncio.gather(*(
                sse.follow(session, url, stamped=True, watch=("start", "output", "done"))
                for _ in range(clients)))
        wall_s = time.perf_counter() - t0
        after = sample(server.pid)
        client_cpu = self_cpu_s() - client_cpu0
    latencies = [lat for s in seen for lat in s.latencies_ns]
    first_line = await bench.events.wait_for("container", "start", f"cbox-{task_id}")
    late = sum(1 for s in seen if first_line and s.first.get("start", 0) > first_line + 1e9)
    cpu_s = after.cpu_s - before.cpu_s
    return {
        "clients": clients,
        "lines": lines,
        "complete_clients": sum(s.complete(lines) for s in seen),
        "subscribed_late": late,
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies, default=0)),
        "wall_s": round(wall_s, 2),
        "orch_cpu_s": round(cpu_s, 2),
        "orch_cpu_pct": round(100 * cpu_s / wall_s, 1),
        "orch_rss_before_mb": round(before.rss_mb, 1),
        "orch_rss_peak_mb": round(peak.peak_mb, 1),
        "orch_rss_after_mb": round(after.rss_mb, 1),
        "client_cpu_pct": round(100 * client_cpu / wall_s, 1),
    }


async def _docker_logs_lines(name: str, stamped: bool) -> tuple[int, int, list[int]]:
    """Follow `docker logs -f`; (lines, arrival of the last, per-line latency if stamped)."""
    proc = await asyncio.create_subprocess_exec(
        "docker", "logs", "-f", name,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    count, last, tail = 0, 0, b""
    lat: list[int] = []
    while chunk := await proc.stdout.read(1 << 16):
        now = time.time_ns()
        data = tail + chunk
        cut = data.rfind(b"\n") + 1
        body, tail = data[:cut], data[cut:]
        n = body.count(b"\n")
        if n:
            count, last = count + n, now
        if stamped:
            lat.extend(now - int(line.split()[1]) for line in body.splitlines() if line)
    await proc.wait()
    return count, last, lat


async def fanout(bench: Bench, server: Server, clients: list[int], lines: int
                 ) -> dict[str, Any]:
    rows = {}
    for n in clients:
        rows[str(n)] = await _fanout_once(bench, server, n, lines)
        row = rows[str(n)]
        print(f"  {n} followers: complete {row['complete_clients']}/{n}, "
              f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
    name = bench.bare_name()
    proc = await asyncio.create_subprocess_exec(
        *bench.bare_args(name, bench.fanout_cmd, detach=True),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    await proc.wait()
    count, _, lat = await _docker_logs_lines(name, stamped=True)
    rows["docker_logs_f"] = {
        "clients": 1, "lines": count,
        "p50_ms": _ms(percentile(lat, 50)), "p99_ms": _ms(percentile(lat, 99)),
        "max_ms": _ms(max(lat, default=0)),
    }
    await _rm(name)
    return rows


async def _rm(name: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "docker", "rm", "-f", name,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    await proc.wait()


async def event_throughput(bench: Bench, server: Server, lines: int) -> dict[str, Any]:
    """One task printing `lines` lines: how fast they reach one SSE client."""
    async with client_session(server) as session:
        before = sample(server.pid)
        async with RssPeak(server.pid) as peak:
            task_id = await submit(session, server, "bench-flood", "flood")
            seen = await sse.follow(session, f"{server.url}/tasks/{task_id}/events",
                                    watch=("start", "running", "output", "done"))
        after = sample(server.pid)
    started = await bench.events.wait_for("container", "start", f"cbox-{task_id}")
    died = await bench.events.wait_for("container", "die", f"cbox-{task_id}")
    assert started is not None
    cbox_s = (seen.last_output_ns - started) / 1e9
    name = bench.bare_name()
    t0 = time.time_ns()
    proc = await asyncio.create_subprocess_exec(
        *bench.bare_args(name, bench.flood_cmd, detach=True),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    await proc.wait()
    count, last, _ = await _docker_logs_lines(name, stamped=False)
    bare_started = await bench.events.wait_for("container", "start", name, t0)
    assert bare_started is not None
    bare_s = (last - bare_started) / 1e9
    await _rm(name)
    cbox_rate = seen.outputs / cbox_s
    bare_rate = count / bare_s
    return {
        "lines": lines,
        "cbox_lines_received": seen.outputs,
        "cbox_ids_gap_free": seen.ids_gap_free,
        "cbox_complete": seen.outputs == lines and seen.ids_gap_free
        and seen.done_state == "completed",
        "cbox_done_state": seen.done_state,
        "cbox_lines_per_s": round(cbox_rate),
        "cbox_s_start_to_last_line": round(cbox_s, 2),
        "container_runtime_s": round(((died or started) - started) / 1e9, 2),
        "docker_logs_lines": count,
        "docker_logs_lines_per_s": round(bare_rate),
        "docker_logs_s_start_to_last_line": round(bare_s, 2),
        "ratio": round(cbox_rate / bare_rate, 3),
        "orch_cpu_s": round(after.cpu_s - before.cpu_s, 2),
        "orch_rss_before_mb": round(before.rss_mb, 1),
        "orch_rss_peak_mb": round(peak.peak_mb, 1),
        "orch_rss_after_mb": round(after.rss_mb, 1),
    }
