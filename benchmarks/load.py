"""Scenarios 3 and 6: throughput at a concurrency cap, and the orchestrator's memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from benchmarks import sse
from benchmarks.env import ECHO, Bench, Server
from benchmarks.stats import sample


async def submit(session: aiohttp.ClientSession, server: Server, policy: str,
                  prompt: str) -> str:
    async with session.post(server.url + "/tasks",
                            json={"prompt": prompt, "policy": policy}) as resp:
        body = await resp.json()
        if resp.status not in (200, 202):
            raise RuntimeError(f"submit failed: {resp.status} {body}")
        return str(body["id"])


def client_session(server: Server) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers=server.headers,
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
    )


async def _cbox_batch(server: Server, n: int) -> tuple[float, int]:
    """Submit n trivial tasks at once; seconds until the last `done`, and how many completed."""
    async with client_session(server) as session:
        t0 = time.perf_counter()
        ids = await asyncio.gather(*(submit(session, server, "bench-echo", f"tp {i}")
                                     for i in range(n)))
        seen = await asyncio.gather(*(sse.follow(session, f"{server.url}/tasks/{i}/events")
                                      for i in ids))
        elapsed = time.perf_counter() - t0
    return elapsed, sum(s.done_state == "completed" for s in seen)


async def _bare_batch(bench: Bench, n: int, parallel: int) -> tuple[float, int]:
    gate = asyncio.Semaphore(parallel)

    async def one() -> bool:
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                *bench.bare_args(bench.bare_name(), ECHO),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            return await proc.wait() == 0

    t0 = time.perf_counter()
    oks = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - t0, sum(oks)


async def throughput(bench: Bench, server: Server, n: int, levels: list[int]
                     ) -> dict[str, Any]:
    """n tasks per level; the server restarts with CBOX_MAX_CONCURRENT = level."""
    rows: dict[str, Any] = {}
    for level in levels:
        await server.restart(level)
        cbox_s, cbox_ok = await _cbox_batch(server, n)
        bare_s, bare_ok = await _bare_batch(bench, n, level)
        rows[str(level)] = {
            "cbox_tasks_per_min": round(n / cbox_s * 60, 1),
            "bare_tasks_per_min": round(n / bare_s * 60, 1),
            "ratio": round(bare_s / cbox_s, 3),
            "cbox_s": round(cbox_s, 2),
            "bare_s": round(bare_s, 2),
            "cbox_completed": cbox_ok,
            "bare_ok": bare_ok,
        }
        print(f"  concurrency {level}: cbox {rows[str(level)]['cbox_tasks_per_min']}/min, "
              f"bare {rows[str(level)]['bare_tasks_per_min']}/min")
    return {"tasks": n, "levels": rows}


async def idle_rss(server: Server, settle_s: float = 2.0) -> dict[str, float]:
    await asyncio.sleep(settle_s)
    now = sample(server.pid)
    return {"rss_mb": round(now.rss_mb, 1), "cpu_s_since_start": round(now.cpu_s, 2)}


async def memory_per_task(bench: Bench, server: Server, k: int) -> dict[str, Any]:
    """RSS with k idle tasks running (sleep) against the RSS just before."""
    await asyncio.sleep(1)
    before = sample(server.pid)
    async with client_session(server) as session:
        ids = await asyncio.gather(*(submit(session, server, "bench-sleep", f"mem {i}")
                                     for i in range(k)))
        started = await asyncio.gather(*(
            bench.events.wait_for("container", "start", f"cbox-{i}", timeout_s=60)
            for i in ids))
        await asyncio.sleep(2)  # followers attached, first flushes done
        during = sample(server.pid)
        # One SSE follower per task too, as `cbox run` would hold.
        followers = [asyncio.create_task(sse.follow(session, f"{server.url}/tasks/{i}/events"))
                     for i in ids]
        await asyncio.sleep(2)
        with_followers = sample(server.pid)
        async with session.post(server.url + "/stop") as resp:
            await resp.read()
        await asyncio.gather(*followers)
    await asyncio.sleep(1)
    after = sample(server.pid)
    return {
        "tasks": k,
        "all_started": all(started),
        "rss_before_mb": round(before.rss_mb, 1),
        "rss_running_mb": round(during.rss_mb, 1),
        "rss_running_followed_mb": round(with_followers.rss_mb, 1),
        "rss_after_stop_mb": round(after.rss_mb, 1),
        "per_task_mb": round((during.rss_mb - before.rss_mb) / k, 2),
        "per_followed_task_mb": round((with_followers.rss_mb - before.rss_mb) / k, 2),
    }
