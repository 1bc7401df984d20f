"""Subscriptions from a TOML file (CBOX_WEBHOOKS_FILE), checked at start-up.

    [[webhook]]
    name = "ci"
    url = "https://ci.example.com/hooks/cbox"
    secret = "whsec_..."
    previous_secret = "whsec_..."      # optional: during a rotation
    events = ["task.completed", "task.failed"]
    filter = { policy = "default", labels = { team = "infra" } }   # optional

A mistake stops the server with one line naming the file and the field
(`webhooks file F: webhook[0].url: ...`), as a bad policy file does. A receiver
that does not answer at start-up is only logged: it may be restarting too,
and its deliveries wait in the outbox.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cbox.errors import ConfigError, InvalidRequest
from cbox.webhooks.models import SubscriptionIn
from cbox.webhooks.urls import Origin, check_url

log = logging.getLogger(__name__)


def first_error(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(field, message) of a validation error, unknown fields first (they explain "missing")."""
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    where = ".".join(str(p) for p in err["loc"])
    message = {"extra_forbidden": "unknown field", "missing": "field required"}.get(
        err["type"], err["msg"].removeprefix("Value error, ")
    )
    return prefix + where, message


def parse(data: dict[str, Any], allowed: tuple[Origin, ...]) -> SubscriptionIn:
    """A subscription from untrusted input; InvalidRequest naming the field otherwise."""
    try:
        sub = SubscriptionIn.model_validate(data)
    except ValidationError as exc:
        where, message = first_error(exc)
        raise InvalidRequest(f"{where}: {message}", field=where) from None
    try:
        check_url(sub.url, allowed)
    except ValueError as exc:
        raise InvalidRequest(f"url: {sub.url!r} {exc}", field="url") from None
    return sub


def load_file(path: Path, allowed: tuple[Origin, ...]) -> list[SubscriptionIn]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"webhooks file {path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"webhooks file {path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"webhook"}
    if unknown:
        raise ConfigError(f"webhooks file {path}: field {sorted(unknown)[0]}: unknown field")
    entries = data.get("webhook", [])
    if not isinstance(entries, list):
        raise ConfigError(f"webhooks file {path}: field webhook: must be [[webhook]] tables")
    subs: list[SubscriptionIn] = []
    for n, entry in enumerate(entries):
        try:
            sub = parse(entry, allowed)
        except InvalidRequest as exc:
            raise ConfigError(f"webhooks file {path}: field webhook[{n}].{exc.message}") from None
        if any(s.name == sub.name for s in subs):
            raise ConfigError(
                f"webhooks file {path}: field webhook[{n}].name: {sub.name!r} is used twice"
            )
        subs.append(sub)
    return subs
