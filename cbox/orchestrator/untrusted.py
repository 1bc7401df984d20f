"""Make what the agent says safe to store, serve and read back.

Everything that comes out of a box is untrusted: stdout and stderr bytes, the
JSON on them, the result file. Two kinds of value broke the store before this
module existed: text that is not valid Unicode (a lone UTF-16 surrogate such
as `"\\ud800"` in JSON cannot be encoded as UTF-8, so the task row could not
be written and the task stayed `running`), and values of the wrong type or
size (a string `num_turns` was written and then refused on every read, so
`/history` answered 500 for good). So every agent value passes through one of
these functions where it enters:

- `decode_text` for bytes off the engine's log stream,
- `clean_text` for a `str` (JSON strings may hold lone surrogates),
- `bound_json` for a JSON value: text cleaned, numbers finite and in range,
  depth and total size capped.

Invalid text becomes U+FFFD, never an error: a garbled line must cost one line.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Lone surrogates cannot be encoded as UTF-8; NUL ends C strings and most
#: terminals and tools choke on it. Both become U+FFFD.
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
#: Integers a JavaScript client reads exactly; larger ones are dropped.
MAX_SAFE_INT = 2**53 - 1
#: JSON deeper than this is cut; pydantic refuses to serialize past ~255 levels.
MAX_DEPTH = 32
#: Dict keys are names, not payloads.
MAX_KEY_CHARS = 200
CUT_MARK = "…[cut]"


def clean_text(text: str) -> str:
    """`text` with lone surrogates and NUL replaced by U+FFFD (fast for clean ASCII)."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _BAD_CHARS.sub(REPLACEMENT, text)


def decode_text(data: bytes) -> str:
    """Bytes from the box as text: invalid UTF-8 becomes U+FFFD, and so does NUL."""
    text = data.decode("utf-8", errors="replace")
    return text.replace("\x00", REPLACEMENT) if "\x00" in text else text


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def bound_json(value: Any, max_chars: int) -> Any:
    """A JSON value made safe: clean text, finite numbers, bounded depth and size.

    `max_chars` is spent by every string's length and one per item, so the
    result's JSON is about that long at most; what does not fit is replaced
    by `CUT_MARK`. Non-finite floats and integers beyond ±2^53 become None,
    anything that is not a JSON type becomes its (clipped) text.
    """
    budget = [max_chars]
    return _walk(value, budget, 0)


def _walk(value: Any, budget: list[int], depth: int) -> Any:
    kind = type(value)
    budget[0] -= 1
    if value is None or kind is bool:
        return value
    if kind is str:
        text = clean_text(value)
        room = max(budget[0], 0)
        if len(text) > room:
            budget[0] = 0
            return text[:room] + CUT_MARK
        budget[0] -= len(text)
        return text
    if kind is int:
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else None
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            return CUT_MARK
        if kind is list:
            items: list[Any] = []
            for item in value:
                if budget[0] <= 0:
                    items.append(CUT_MARK)
                    break
                items.append(_walk(item, budget, depth + 1))
            return items
        out: dict[str, Any] = {}
        for key, item in value.items():
            if budget[0] <= 0:
                out[CUT_MARK] = None
                break
            name = clip(clean_text(key if type(key) is str else str(key)), MAX_KEY_CHARS)
            budget[0] -= len(name)
            out[name] = _walk(item, budget, depth + 1)
        return out
    return _walk(clip(str(value), MAX_KEY_CHARS), budget, depth)
