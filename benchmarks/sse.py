"""A deliberately cheap SSE follower, so the client is not what gets measured.

It never builds event objects: it stamps each chunk's arrival with
`time.time_ns()` and scans the raw bytes (regex over the chunk) for what a
scenario needs: the arrival of given event types, the number of `output`
events, and for stamped lines (`<i> <time_ns>` printed in the box) the
per-line latency. Container and host share the kernel clock, so the
difference is the whole path from the box's write to this process's read.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import aiohttp

_STAMP = re.compile(rb'"line":"(\d+) (\d+)"')
_EVENT = re.compile(rb"\nevent: ([a-z_]+)\n")


@dataclass
class Followed:
    """What one follower saw; times are wall clock in ns."""

    first: dict[str, int] = field(default_factory=dict)  # event type -> first arrival
    outputs: int = 0
    last_output_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    done_state: str | None = None

    def complete(self, n: int) -> bool:
        """Every stamped line 0..n-1 arrived once, in order."""
        return self.seqs == list(range(n))


async def follow(
    session: aiohttp.ClientSession, url: str, *, stamped: bool = False,
    watch: tuple[str, ...] = ("start", "running", "output", "done"),
) -> Followed:
    """GET an event stream and read it to its end (the server closes it after `done`)."""
    async with session.get(url) as resp:
        return await read_stream(resp, stamped=stamped, watch=watch)


async def read_stream(
    resp: aiohttp.ClientResponse, *, stamped: bool = False,
    watch: tuple[str, ...] = ("start", "running", "output", "done"),
) -> Followed:
    seen = Followed()
    tail = b""
    resp.raise_for_status()
    async for chunk in resp.content.iter_any():
        now = time.time_ns()
        data = tail + chunk
        cut = data.rfind(b"\n\n") + 2
        if cut < 2:
            tail = data
            continue
        body, tail = data[:cut], data[cut:]
        for name in _EVENT.findall(body):
            kind = name.decode()
            if kind in watch and kind not in seen.first:
                seen.first[kind] = now
        n_out = body.count(b"\nevent: output\n")
        if n_out:
            seen.outputs += n_out
            seen.last_output_ns = now
        if stamped:
            for i, stamp in _STAMP.findall(body):
                seen.seqs.append(int(i))
                seen.latencies_ns.append(now - int(stamp))
        if b"\nevent: done\n" in body:
            match = re.search(rb'event: done\ndata: .*?"state":"([a-z_]+)"', body)
            seen.done_state = match.group(1).decode() if match else "?"
    return seen
