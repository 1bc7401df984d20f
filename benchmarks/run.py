"""`python -m benchmarks.run [--quick] [--profile] [--only NAME ...]`: all scenarios, one run.

Starts its own `cbox serve` (own database, port, instance and network prefix),
a fake Anthropic API on loopback and on a bare internal network, and measures
each scenario against bare `docker run`s of the same image, command and
limits. Prints a table, writes `benchmarks/results/<date>-<time>.json`, and
removes every container and network it made.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.env import Bench, Server
from benchmarks.load import idle_rss, memory_per_task, throughput
from benchmarks.overhead import latency, overhead
from benchmarks.profile import Profile, summarize
from benchmarks.stats import machine
from benchmarks.streams import event_throughput, fanout

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("idle", "overhead", "latency", "fanout", "events", "memory", "throughput")


@dataclass(frozen=True, slots=True)
class Config:
    overhead_reps: int = 10
    real_cli: bool = True
    latency_reps: int = 10
    throughput_tasks: int = 20
    throughput_levels: tuple[int, ...] = (1, 2, 4, 8)
    fanout_clients: tuple[int, ...] = (1, 100)
    fanout_lines: int = 10_000
    fanout_pace_s: float = 0.001
    flood_lines: int = 200_000
    memory_tasks: int = 8


FULL = Config()
QUICK = Config(overhead_reps=5, real_cli=False, latency_reps=5, throughput_tasks=8,
               throughput_levels=(1, 4), fanout_clients=(20,), fanout_lines=2000,
               flood_lines=50_000, memory_tasks=4)


async def run(config: Config, only: set[str], profile_dir: Path | None,
              image: str | None) -> dict[str, Any]:
    if image is None:
        from tests.testbed.images import build_all

        image = await asyncio.to_thread(build_all)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "image": image,
        "config": asdict(config),
    }
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)  # unwind through the cleanups below
    bench = Bench(image, fanout_lines=config.fanout_lines, fanout_pace_s=config.fanout_pace_s,
                  flood_lines=config.flood_lines)
    async with bench:
        server = Server(bench, max_concurrent=8)
        await server.start()
        c = config
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("idle", lambda: idle_rss(server)),
            # Memory first: on a fresh server freed arenas do not hide the growth.
            ("memory", lambda: memory_per_task(bench, server, c.memory_tasks)),
            ("overhead", lambda: overhead(bench, server, c.overhead_reps, c.real_cli)),
            ("latency", lambda: latency(bench, server, c.latency_reps)),
            ("fanout", lambda: fanout(bench, server, list(c.fanout_clients), c.fanout_lines)),
            ("events", lambda: event_throughput(bench, server, c.flood_lines)),
            ("idle_after_load", lambda: idle_rss(server)),
            ("throughput", lambda: throughput(bench, server, c.throughput_tasks,
                                              list(c.throughput_levels))),
        ]
        try:
            for name, step in steps:
                base = name.removesuffix("_after_load")
                if only and base not in only:
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
                profile_name = name if name != "throughput" else None  # restarts the server
                async with Profile(profile_dir if profile_name else None, server.pid, name):
                    results[name] = await step()
        finally:
            await server.stop()
    if profile_dir is not None:
        for raw in sorted(profile_dir.glob("profile-*.txt")):
            summary = summarize(raw)
            (profile_dir / raw.name.replace("profile-", "summary-")).write_text(summary)
            print(summary)
    return results


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, claude-box, bare docker, ratio or detail, target) rows."""
    rows: list[tuple[str, str, str, str, str]] = []
    add = rows.append
    if "overhead" in r:
        for label, o in r["overhead"].items():
            if label == "client_startup_ms":
                add(("client start-up (ms)", _fmt(o["cbox --version"]),
                     _fmt(o["docker --version"]), "", ""))
                continue
            add((f"run {label}, median of {o['runs']} (ms)", _fmt(o["cbox_median_ms"]),
                 _fmt(o["bare_median_ms"]), f"ratio {o['ratio']:g}",
                 "ratio <= 1.0" if label == "echo" else ""))
    if "latency" in r:
        lat = r["latency"]
        seed, rest, bare = lat["seed_ms"], lat["rest_ms"], lat["bare_ms"]
        add(("POST /task -> first event (ms)", _fmt(seed.get("event_start")), "", "",
             "<= 150 ms"))
        add(("POST /tasks -> 202 (ms)", _fmt(rest.get("post_response")), "", "", ""))
        add(("POST -> container start (ms)", _fmt(rest.get("container_start")),
             _fmt(bare.get("container_start")), "", ""))
        add(("POST -> first output line (ms)", _fmt(rest.get("event_output")),
             _fmt(bare.get("first_output")), "", ""))
    if "fanout" in r:
        base = r["fanout"].get("docker_logs_f", {})
        for key, f in r["fanout"].items():
            if key == "docker_logs_f":
                continue
            target = "p99 <= 50 ms" if f["clients"] >= 100 else ""
            add((f"SSE {f['clients']} followers x {f['lines']} lines p50/p99 (ms)",
                 f"{_fmt(f['p50_ms'])} / {_fmt(f['p99_ms'])}",
                 f"{_fmt(base.get('p50_ms'))} / {_fmt(base.get('p99_ms'))} (1 logs -f)",
                 f"complete {f['complete_clients']}/{f['clients']}", target))
            add((f"  orchestrator CPU / peak RSS ({f['clients']} followers)",
                 f"{f['orch_cpu_pct']}% / {f['orch_rss_peak_mb']} MB", "",
                 f"client CPU {f['client_cpu_pct']}%", ""))
    if "events" in r:
        e = r["events"]
        add((f"event throughput, {e['lines']} lines (lines/s)", _fmt(e["cbox_lines_per_s"]),
             f"{_fmt(e['docker_logs_lines_per_s'])} (logs -f)",
             f"ratio {e['ratio']:g}, {'complete' if e.get('cbox_complete') else 'INCOMPLETE'}",
             ">= 0.8"))
    for key in ("idle", "idle_after_load"):
        if key in r:
            add((f"orchestrator RSS, {key.replace('_', ' ')} (MB)", _fmt(r[key]["rss_mb"]),
                 "", "", "<= 80 MB" if key == "idle" else ""))
    if "memory" in r:
        m = r["memory"]
        add((f"extra RSS per running task, {m['tasks']} tasks (MB)", _fmt(m["per_task_mb"]),
             "", f"followed: {_fmt(m['per_followed_task_mb'])}", ""))
    if "throughput" in r:
        t = r["throughput"]
        for level, row in t["levels"].items():
            add((f"throughput {t['tasks']} tasks @ {level} (tasks/min)",
                 _fmt(row["cbox_tasks_per_min"]), _fmt(row["bare_tasks_per_min"]),
                 f"ratio {row['ratio']:g}", ""))
    return rows


def render(rows: list[tuple[str, str, str, str, str]]) -> str:
    head = ("figure", "claude-box", "bare docker", "ratio / detail", "target")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]

    def line(row: tuple[str, ...]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *map(line, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (< 2 min)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=[],
                        help="run only these scenarios")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the server during each scenario (skews the figures)")
    parser.add_argument("--image", default=None,
                        help="sandbox image tag (default: the test bed's, built if missing)")
    args = parser.parse_args()
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S") + ("-quick" if args.quick else "")
    profile_dir = RESULTS / f"{stamp}-profile" if args.profile else None
    started = time.monotonic()
    try:
        results = asyncio.run(run(QUICK if args.quick else FULL, set(args.only), profile_dir,
                                  args.image))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the benchmark's containers, networks and server are gone")
        sys.exit(130)
    results["runtime_s"] = round(time.monotonic() - started, 1)
    results["profiled"] = args.profile
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(render(table(results)))
    print(f"\n{results['runtime_s']} s; figures in {out}")


if __name__ == "__main__":
    main()
