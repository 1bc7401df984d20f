"""The client side of the event stream: `SseEvent`, the line decoder, error bodies.

Stdlib only, because `cbox run` imports it on its start-up path; both the
blocking client of the CLI and the aiohttp client of the workers feed lines
into the one `SseDecoder`. The format is four field names and a blank line.
"""

from __future__ import annotations

import json

# Not `from typing import ...`: typing costs ~3 ms of `cbox run`'s start-up.
# mypy treats any name TYPE_CHECKING as true.
#: Reconnections of an event stream before giving up (about a minute of back-off);
#: the same for the blocking and the asyncio client.
MAX_STREAM_FAILURES = 30

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SseEvent:
    """One event of a task's stream: `id` is its gap-free seq, `data` its JSON object."""

    __slots__ = ("data", "id", "type")

    def __init__(self, id: int | None, type: str, data: dict[str, Any]) -> None:
        self.id = id
        self.type = type
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SseEvent):
            return NotImplemented
        return (self.id, self.type, self.data) == (other.id, other.type, other.data)

    def __repr__(self) -> str:
        return f"SseEvent(id={self.id!r}, type={self.type!r}, data={self.data!r})"


class SseDecoder:
    """Turns the stream's lines, one at a time, into events."""

    __slots__ = ("_data", "_id", "_type")

    def __init__(self) -> None:
        self._id: int | None = None
        self._type = "message"
        self._data: list[str] = []

    def line(self, raw: bytes) -> SseEvent | None:
        """Feed one line (its line ending optional); an event when a blank line ends one."""
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            event = None
            if self._data:
                text = "\n".join(self._data)
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = {"line": text}
                event = SseEvent(self._id, self._type, payload if isinstance(payload, dict) else {})
            self._id, self._type, self._data = None, "message", []
            return event
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self._id = int(value) if value.isdigit() else None
        elif name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        return None


def error_message(status: int, text: str) -> str:
    """`HTTP 404: <the server's message>`, from our JSON error body or whatever came."""
    try:
        body = json.loads(text)
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text.strip()[:200] or "no details"
    if status == 401:
        message += (
            " (pass --token or set CBOX_API_TOKEN; a server on this machine keeps its token"
            " in CBOX_API_TOKEN_FILE, by default ~/.config/cbox/api-token)"
        )
    return f"HTTP {status}: {message}"
