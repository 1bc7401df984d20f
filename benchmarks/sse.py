"""A deliberately cheap SSE follower, so the client is not what gets measured.

It never builds event objects: it stamps each chunk's arrival with
`time.time_ns()`, keeps the chunk, and once the stream has ended scans the
raw bytes (regex over each chunk) for what a scenario needs: the arrival of
given event types, the number of `output` events, gap-free ids, and for
stamped lines (`<i> <time_ns>` printed in the box) the per-line latency.
Container and host share the kernel clock, so the difference is the whole
path from the box's write to this process's read.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import aiohttp

_STAMP = re.compile(rb'"line":"(\d+) (\d+)"')


@dataclass
class Followed:
    """What one follower saw; times are wall clock in ns."""

    first: dict[str, int] = field(default_factory=dict)  # event type -> first arrival
    outputs: int = 0
    last_output_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    done_state: str | None = None
    last_id: int = 0  # the newest SSE `id:`; ids are checked to go up by one per frame
    ids_gap_free: bool = True

    def complete(self, n: int) -> bool:
        """Every stamped line 0..n-1 arrived once, in order, and no event was missed."""
        return self.ids_gap_free and self.seqs == list(range(n))


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
    resp.raise_for_status()
    # Only stamp and keep each chunk while the stream runs; parse afterwards,
    # so 100 followers in this process do not queue each other's reads (which
    # would show up as server latency).
    arrivals = [(time.time_ns(), chunk) async for chunk in resp.content.iter_any()]
    seen = Followed()
    tail = b""
    for now, chunk in arrivals:
        data = tail + chunk
        cut = data.rfind(b"\n\n") + 2
        if cut < 2:
            tail = data
            continue
        body, tail = data[:cut], data[cut:]
        _check_ids(seen, body)
        for kind in watch:
            if kind not in seen.first and f"\nevent: {kind}\n".encode() in body:
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

def _check_ids(seen: Followed, body: bytes) -> None:
    """Every frame's `id:` is the previous one plus one, from 1: no gap, no duplicate.

    Checked per chunk from the number of frames and the first and last id, so
    the client spends no Python step per event (it shares 2 cores with the
    server). `id:` can only start a line at a frame: JSON data has no newline.
    """
    count = body.count(b"\nid: ") + body.startswith(b"id: ")
    if not count:
        return  # keep-alives only
    first_at = 4 if body.startswith(b"id: ") else body.index(b"\nid: ") + 5
    last_at = body.rindex(b"\nid: ") + 5 if b"\nid: " in body else 4
    first = int(body[first_at : body.index(b"\n", first_at)])
    last = int(body[last_at : body.index(b"\n", last_at)])
    if first != seen.last_id + 1 or last - first != count - 1:
        seen.ids_gap_free = False
    seen.last_id = last
