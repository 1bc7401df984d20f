"""Optional py-spy profiles of the server, one per scenario (`--profile`).

py-spy samples the live `cbox serve` process from outside (`--nonblocking`,
so the server is not paused). Raw collapsed stacks are kept; the summary
ranks functions by samples where they were on CPU themselves ("self") and
anywhere on the stack ("total"). Idle samples (the loop waiting in epoll)
are not recorded, so the counts are CPU work.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

_FRAME_LINE = re.compile(r":\d+\)$")
#: Frames on every stack of the server's main thread or its worker threads: noise in "total".
_BORING = ("runpy", "click/", "asyncio/runners.py", "asyncio/base_events.py",
           "asyncio/events.py", "threading.py", "cbox/__main__.py", "cbox/cli/main.py",
           "cbox/cli/serve.py", "selectors.py", "aiohttp/web_protocol.py",
           "aiohttp/web_app.py", "aiohttp/web_middlewares.py", "cbox/api/errors.py")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profile:
    def __init__(self, out_dir: Path | None, pid: int, name: str, rate_hz: int = 250) -> None:
        self.out = out_dir / f"profile-{name}.txt" if out_dir else None
        self.pid = pid
        self.rate_hz = rate_hz
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Profile:
        exe = py_spy()
        if self.out is None or exe is None:
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(self.pid), "--rate", str(self.rate_hz),
            "--format", "raw", "--nonblocking", "--output", str(self.out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)  # attached
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGINT)
        await self._proc.wait()


def summarize(raw: Path, top: int = 25) -> str:
    """Self and total sample counts per function, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_FRAME_LINE.sub(")", f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(b in frame for b in _BORING):
                total[frame] += count
    if not samples:
        return f"{raw.name}: no samples\n"
    lines = [f"{raw.name}: {samples} CPU samples", "", "self %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:7.1f}  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines) + "\n"
