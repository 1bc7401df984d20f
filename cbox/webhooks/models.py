"""Webhook subscriptions, deliveries and attempts, as served and stored.

A subscription's secrets are Standard Webhooks secrets: `whsec_` and the
base64 of 24 to 62 random bytes. They are checked here, strictly (the
library's own decoding forgives bad padding and stray characters), and never
served back: the API shows `previous_secret_set` and a fingerprint instead.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

#: Names end up in URLs and log lines.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 62
#: Canonical base64 of MIN..MAX bytes, so the description (`pattern`) and the
#: check are one rule: 8 to 20 full quads, then an optional padded tail.
SECRET = re.compile(
    r"^whsec_(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
)


class EventType(enum.StrEnum):
    """What a subscription can ask for; `webhook.ping` is only sent by `cbox webhooks test`."""

    STARTED = "task.started"
    COMPLETED = "task.completed"
    FAILED = "task.failed"
    STOPPED = "task.stopped"
    TIMED_OUT = "task.timed_out"
    OVER_BUDGET = "task.over_budget"
    STALLED = "task.stalled"


PING = "webhook.ping"


def check_secret(value: str) -> str:
    """The secret itself, or ValueError saying what is wrong with it."""
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (Standard Webhooks secret)")
    if not SECRET.match(value):
        raise ValueError(
            f"must be {SECRET_PREFIX!r} followed by the base64 of {MIN_SECRET_BYTES} to "
            f"{MAX_SECRET_BYTES} random bytes"
        )
    try:
        raw = base64.b64decode(value[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {SECRET_PREFIX!r} followed by base64") from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes, not {len(raw)}"
        )
    return value


def fingerprint(secret: SecretStr) -> str:
    """Enough to tell two secrets apart in a listing, nothing to sign with."""
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:12]


class SubscriptionFilter(BaseModel):
    """Only tasks matching every given field; an empty filter matches all."""

    model_config = ConfigDict(extra="forbid")

    policy: str | None = Field(None, description="Only tasks of this policy.")
    session: str | None = Field(None, description="Only tasks of this session.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Only tasks whose metadata has all these pairs."
    )

    def matches(self, policy: str, session: str | None, metadata: dict[str, str]) -> bool:
        return (
            (self.policy is None or self.policy == policy)
            and (self.session is None or self.session == session)
            and all(metadata.get(k) == v for k, v in self.labels.items())
        )


class SubscriptionIn(BaseModel):
    """A subscription as given by the API or the TOML file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        json_schema_extra={"pattern": NAME.pattern},
        description="Letters, digits, `_.-`; at most 64 characters.",
    )
    url: str = Field(max_length=2000, description="Where deliveries are POSTed.")
    secret: SecretStr = Field(
        json_schema_extra={"pattern": SECRET.pattern},
        description="`whsec_` + base64 of 24-62 random bytes.",
    )
    previous_secret: SecretStr | None = Field(
        None, json_schema_extra={"pattern": SECRET.pattern},
        description="The secret being rotated out: deliveries carry both signatures.",
    )
    events: list[EventType] = Field(min_length=1, description="Event types to deliver.")
    filter: SubscriptionFilter = Field(default_factory=SubscriptionFilter)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(
                "must be 1-64 characters of letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("secret", "previous_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value())
        return value


class Subscription(SubscriptionIn):
    """A stored subscription."""

    source: Literal["api", "file"] = "api"
    created_at: float = 0.0
    disabled: str | None = Field(
        None, description="Why deliveries stopped (a receiver's 410 Gone); None while active."
    )

    def secrets(self) -> list[str]:
        """Signing secrets, the current one first."""
        found = [self.secret.get_secret_value()]
        if self.previous_secret is not None:
            found.append(self.previous_secret.get_secret_value())
        return found

    def stored(self) -> str:
        """The JSON kept in the store, secrets included."""
        data = self.model_dump(mode="json")
        data["secret"] = self.secret.get_secret_value()
        if self.previous_secret is not None:
            data["previous_secret"] = self.previous_secret.get_secret_value()
        return json.dumps(data, separators=(",", ":"))

    def public(self) -> dict[str, Any]:
        """What the API serves: no secret, only fingerprints of them."""
        data = self.model_dump(mode="json", exclude={"secret", "previous_secret"})
        data["secret_fingerprint"] = fingerprint(self.secret)
        data["previous_secret_fingerprint"] = (
            fingerprint(self.previous_secret) if self.previous_secret is not None else None
        )
        return data


class Attempt(BaseModel):
    n: int
    at: float
    status: int | None = Field(None, description="The receiver's HTTP status; None if none.")
    latency_ms: int
    error: str | None = None


class Delivery(BaseModel):
    """One message to one receiver, with the attempts made so far."""

    id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    subscription: str
    url: str
    event: str
    task_id: str | None
    status: Literal["pending", "delivered", "failed", "cancelled"]
    attempts: int
    next_at: float | None = Field(None, description="When the next attempt is due (pending).")
    created_at: float
    finished_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    last_latency_ms: int | None = None
    log: list[Attempt] = Field(default_factory=list)
