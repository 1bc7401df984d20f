"""JSON as any strict client parses it: what the API serves must pass this."""

from __future__ import annotations

import json
from typing import Any


def strict_loads(text: str) -> Any:
    """Parse `text`; fail on NaN/Infinity, lone surrogates and NUL anywhere in it."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {name}")

    value = json.loads(text, parse_constant=refuse)
    for piece in strings(value):
        piece.encode("utf-8")  # raises on a lone surrogate
        assert "\x00" not in piece, "NUL in served text"
    return value


def strings(value: Any) -> list[str]:
    """Every string in a JSON value, keys too (without recursion: values may be deep)."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
    return found
