"""Docker's log stream of a task container, cut into bounded lines.

The box writes what it likes to stdout and stderr, so this is the first place
its output is bounded: `Frames` parses the engine's multiplexed stream in
linear time whatever the frame sizes, and `Lines` cuts each stream into lines
of at most `max_bytes` (a longer line is cut, with a marker, never held
whole), decoding them with `untrusted.decode_text` (invalid UTF-8 and NUL
become U+FFFD).
"""

from __future__ import annotations

import struct

from cbox.orchestrator.untrusted import decode_text

#: Default of `Settings.max_line_bytes`: one stdout/stderr line is cut past this.
MAX_LINE_BYTES = 1_048_576


class Frames:
    """Incremental parser of Docker's multiplexed log stream: (stdout, stderr) bytes out.

    A frame's payload is passed on as it arrives, even when it spans reads,
    so nothing is ever re-joined: the work is linear in the stream's size
    whatever the frame sizes are.
    """

    def __init__(self) -> None:
        self._head = b""  # a header cut by the end of the last read
        self._stream = 1
        self._left = 0  # payload bytes of the current frame still to come

    def feed(self, chunk: bytes) -> tuple[bytes, bytes]:
        view = memoryview(chunk)
        stdout: list[memoryview] = []
        stderr: list[memoryview] = []
        pos, end = 0, len(chunk)
        if self._head:
            need = 8 - len(self._head)
            self._head += chunk[:need]
            pos = min(need, end)
            if len(self._head) < 8:
                return b"", b""
            self._stream, self._left = _FRAME_HEADER.unpack(self._head)
            self._head = b""
        header_at = _FRAME_HEADER.unpack_from
        while True:
            if self._left:
                take = min(self._left, end - pos)
                (stderr if self._stream == 2 else stdout).append(view[pos : pos + take])
                pos += take
                self._left -= take
                if self._left:
                    break
            if end - pos < 8:
                self._head = bytes(view[pos:])
                break
            self._stream, self._left = header_at(chunk, pos)
            pos += 8
        return b"".join(stdout), b"".join(stderr)


#: A frame header: stream (1 stdout, 2 stderr), 3 zero bytes, payload size (big endian).
_FRAME_HEADER = struct.Struct(">B3xI")


class Lines:
    """Cut one stream's payload bytes into lines of at most `max_bytes` bytes.

    A trailing partial line waits for more. It is held as a list of pieces,
    joined once when its newline comes, and only its first `max_bytes` are
    kept: a box that prints 50 MB without a newline costs `max_bytes` of
    memory and linear time, and yields one line that ends with a marker
    saying how much was cut. The cut depends only on the bytes, not on how
    the engine split them into reads, so a re-read counts the same lines.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0  # bytes held in _parts
        self._cut = 0  # bytes of the current line dropped past the cap

    @property
    def tail(self) -> bool:
        """Whether part of a line is waiting for its newline."""
        return bool(self._parts or self._cut)

    def feed(self, data: bytes) -> list[str]:
        if not data:
            return []
        last = data.rfind(b"\n")
        if last < 0:
            self._hold(data)
            return []
        lines: list[str] = []
        start = 0
        if self.tail:
            first = data.find(b"\n")
            self._hold(data[:first])
            lines.append(self._take())
            start = first + 1
        if start <= last:
            middle = data[start:last]
            if len(middle) <= self.max_bytes:
                # One decode per read: a newline is never inside a UTF-8
                # sequence, so this equals decoding line by line.
                lines += decode_text(middle).split("\n")
            else:
                lines += [self._one(piece) for piece in middle.split(b"\n")]
        self._hold(data[last + 1 :])
        return lines

    def rest(self) -> list[str]:
        """The unterminated last line, once the stream is known to be complete."""
        return [self._take()] if self.tail else []

    def _one(self, line: bytes) -> str:
        if len(line) <= self.max_bytes:
            return decode_text(line)
        return decode_text(line[: self.max_bytes]) + _cut_marker(len(line) - self.max_bytes)

    def _hold(self, data: bytes) -> None:
        if not data:
            return
        room = self.max_bytes - self._size
        if room >= len(data):
            self._parts.append(data)
            self._size += len(data)
            return
        if room > 0:
            self._parts.append(data[:room])
            self._size += room
        self._cut += len(data) - max(room, 0)

    def _take(self) -> str:
        text = decode_text(b"".join(self._parts))
        if self._cut:
            text += _cut_marker(self._cut)
        self._parts, self._size, self._cut = [], 0, 0
        return text


def _cut_marker(n_bytes: int) -> str:
    return f" …[line cut: {n_bytes} more bytes]"
