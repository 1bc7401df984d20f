"""Server-Sent Events framing for task event logs.

Written by hand rather than with aiohttp-sse: we need our own `id:` (the
event's gap-free seq, which is what `Last-Event-ID` replays from) and our own
keep-alive cadence, which comes from the service's subscription; the framing
itself is a few lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from cbox.models import Event


async def open_stream(request: web.Request, status: int = 200) -> web.StreamResponse:
    response = web.StreamResponse(
        status=status,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    await response.prepare(request)
    return response


def frame(event: Event) -> bytes:
    """The event's SSE frame, encoded once however many followers it goes to.

    `data_json` is one line of JSON already (it is what the store keeps), so
    the frame is put together without encoding the data again.
    """
    cached = event.sse_frame
    if cached is None:
        cached = f"id: {event.seq}\nevent: {event.type}\ndata: {event.data_json}\n\n".encode()
        event.sse_frame = cached
    return cached


async def pump(response: web.StreamResponse, batches: AsyncIterator[list[Event] | None]) -> None:
    """Write batches of events, one write each; None means send a keep-alive comment."""
    try:
        async for batch in batches:
            if batch is None:
                await response.write(b": keep-alive\n\n")
            else:
                await response.write(b"".join(frame(event) for event in batch))
    except (ConnectionResetError, ConnectionError):
        return  # the client went away; the task goes on
    await response.write_eof()
