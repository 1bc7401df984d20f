"""Small numeric and /proc helpers: percentiles, a process's CPU and RSS, the machine.

Read straight from /proc rather than through psutil, to add no dependency.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted list; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


def median(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_s: float  # user + system, all threads, since the process started
    rss_mb: float
    hwm_mb: float  # peak RSS since the process started


def sample(pid: int) -> ProcSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss_kb = hwm_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm_kb = int(line.split()[1])
    return ProcSample(cpu_s=cpu_s, rss_mb=rss_kb / 1024, hwm_mb=hwm_kb / 1024)


def self_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine() -> dict[str, object]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_server": _run("docker", "version", "--format", "{{.Server.Version}}"),
        "docker_client": _run("docker", "version", "--format", "{{.Client.Version}}"),
        "storage_driver": _run("docker", "info", "--format", "{{.Driver}}"),
        "cgroup_version": _run("docker", "info", "--format", "{{.CgroupVersion}}"),
        "git_commit": _run("git", "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_run("git", "status", "--porcelain", "--untracked-files=no")),
    }
