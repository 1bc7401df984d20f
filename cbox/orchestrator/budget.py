"""A task's budget, counting what is spent and what requests in flight may still spend.

Usage is only known once a response has streamed to its end. Checking the
budget against that alone lets N parallel calls each pass the check and
overshoot by N calls. So each call the gateway relays first *reserves* an
upper estimate of what it can cost (its body's size as input, priced as a
cache write, plus its whole `max_tokens` as output), and a call is admitted
only while spent + reserved is still under the budget. When the response is
metered, the reservation is released and the real usage counted. The
overshoot is thereby bounded by the last admitted call's estimate, not by
the number of calls.

The price of that bound: with a budget close to one call's estimate, calls
are admitted one at a time (the rest get a retryable 429), which Claude Code
takes in its stride.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cbox.orchestrator.usage import Usage, price_for

#: Input tokens are estimated as body bytes / this: code and JSON run at
#: about 3 to 4 characters a token, so dividing by 3 errs on the high side.
BYTES_PER_TOKEN = 3
#: Input priced as a cache write, the dearest way to pay for input.
INPUT_PRICE_FACTOR = 1.25


@dataclass
class Budget:
    max_cost_usd: float | None = None
    max_tokens: int | None = None

    @property
    def limited(self) -> bool:
        return self.max_cost_usd is not None or self.max_tokens is not None

    def reached(self, usage: Usage) -> str | None:
        """Why no further call can be admitted even with nothing in flight."""
        if self.max_cost_usd is not None and usage.cost_usd >= self.max_cost_usd:
            return f"budget spent: ${usage.cost_usd:.4f} of ${self.max_cost_usd:g}"
        if self.max_tokens is not None and usage.total_tokens >= self.max_tokens:
            return f"budget spent: {usage.total_tokens} of {self.max_tokens} tokens"
        return None

    def crossed(self, usage: Usage) -> str | None:
        if self.max_cost_usd is not None and usage.cost_usd > self.max_cost_usd:
            return f"budget exceeded: ${usage.cost_usd:.4f} > ${self.max_cost_usd:g}"
        if self.max_tokens is not None and usage.total_tokens > self.max_tokens:
            return f"budget exceeded: {usage.total_tokens} tokens > {self.max_tokens}"
        return None


@dataclass(frozen=True, slots=True)
class Reservation:
    tokens: int
    cost_usd: float


NOTHING = Reservation(0, 0.0)


def estimate(model: str, max_tokens: int, body_bytes: int) -> Reservation:
    """The most a Messages call of this shape can plausibly cost."""
    input_tokens = body_bytes // BYTES_PER_TOKEN + 1
    p_in, p_out = price_for(model)
    cost = (input_tokens * p_in * INPUT_PRICE_FACTOR + max_tokens * p_out) / 1e6
    return Reservation(input_tokens + max_tokens, cost)


@dataclass
class Ledger:
    """One task's spending: counted usage plus what calls in flight have reserved."""

    budget: Budget = field(default_factory=Budget)
    usage: Usage = field(default_factory=Usage)
    reserved_tokens: int = 0
    reserved_cost_usd: float = 0.0
    reservations: int = 0

    @property
    def holding(self) -> bool:
        """Some call in flight holds a reservation."""
        return self.reservations > 0

    def exhausted(self) -> bool:
        """No headroom left once the calls in flight are counted at their estimate."""
        budget, usage = self.budget, self.usage
        tokens = usage.total_tokens + self.reserved_tokens
        cost = usage.cost_usd + self.reserved_cost_usd
        return (budget.max_tokens is not None and tokens >= budget.max_tokens) or (
            budget.max_cost_usd is not None and cost >= budget.max_cost_usd
        )

    def reserve(self, reservation: Reservation) -> bool:
        """Admit a call and hold its estimate, or refuse it (False) while there is no room."""
        if self.exhausted():
            return False
        self.reserved_tokens += reservation.tokens
        self.reserved_cost_usd += reservation.cost_usd
        self.reservations += 1
        return True

    def charge(self, reservation: Reservation) -> None:
        """Count a call whose usage never arrived (the box cut the stream) at its estimate:
        whatever it received, it cannot have cost more, and it must not cost nothing."""
        self.usage.output_tokens += reservation.tokens
        self.usage.cost_usd += reservation.cost_usd

    def release(self, reservation: Reservation) -> None:
        self.reservations -= 1
        if self.reservations == 0:  # no float residue left behind
            self.reserved_tokens, self.reserved_cost_usd = 0, 0.0
        else:
            self.reserved_tokens -= reservation.tokens
            self.reserved_cost_usd -= reservation.cost_usd
