"""Token and cost accounting from the model traffic the gateway relays.

The gateway sees every response; reading the `usage` objects of Anthropic's
`message_start` / `message_delta` events (or of a plain JSON message) gives a
per-task count that does not depend on the agent reporting honestly. Prices
are list prices per million tokens by model family — an estimate for budgets;
Claude Code's own `total_cost_usd` is kept alongside when it reports one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# (input, output) USD per million tokens. Cache writes cost 1.25x input, cache reads 0.1x.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "opus": (15.0, 75.0),
    "sonnet": (3.0, 15.0),
    "haiku": (0.8, 4.0),
}
DEFAULT_PRICE = PRICES_PER_MTOK["sonnet"]


def price_for(model: str) -> tuple[float, float]:
    lowered = model.lower()
    for family, price in PRICES_PER_MTOK.items():
        if family in lowered:
            return price
    return DEFAULT_PRICE


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def add(self, usage: dict[str, Any], model: str) -> None:
        def num(key: str) -> int:
            value = usage.get(key)
            return int(value) if isinstance(value, int | float) and value > 0 else 0

        inp, out = num("input_tokens"), num("output_tokens")
        write, read = num("cache_creation_input_tokens"), num("cache_read_input_tokens")
        self.input_tokens += inp
        self.output_tokens += out
        self.cache_creation_input_tokens += write
        self.cache_read_input_tokens += read
        p_in, p_out = price_for(model)
        self.cost_usd += (inp * p_in + out * p_out + write * p_in * 1.25 + read * p_in * 0.1) / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "requests": self.requests,
        }


class UsageMeter:
    """Feeds on a response body, chunk by chunk, and adds what it finds to a Usage."""

    def __init__(self, usage: Usage, *, streaming: bool) -> None:
        self.usage = usage
        self.streaming = streaming
        self._buffer = b""
        self._model = ""
        #: The response's final usage was read (a stream's `message_delta`, or a
        #: whole JSON body). A call cut off before it is charged its estimate.
        self.complete = False

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        if not self.streaming:
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:])

    def finish(self) -> None:
        if self.streaming:
            if self._buffer.startswith(b"data:"):
                self._event(self._buffer[5:])
            return
        try:
            body = json.loads(self._buffer)
        except ValueError:
            return
        if isinstance(body, dict) and isinstance(body.get("usage"), dict):
            self.usage.add(body["usage"], str(body.get("model", "")))
            self.complete = True

    def _event(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if data.get("type") == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            self._model = str(message.get("model", ""))
            if isinstance(message.get("usage"), dict):
                # Output tokens are counted from message_delta, which carries the total.
                self.usage.add({**message["usage"], "output_tokens": 0}, self._model)
        elif data.get("type") == "message_delta" and isinstance(data.get("usage"), dict):
            self.usage.add({"output_tokens": data["usage"].get("output_tokens", 0)}, self._model)
            self.complete = True
