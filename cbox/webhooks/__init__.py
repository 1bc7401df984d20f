"""Signed, durable webhooks when tasks start, stall and end (Standard Webhooks).

    models.py   subscriptions, deliveries, attempts; secret checks
    urls.py     the allowlist (SSRF) and the reachability check
    config.py   the TOML file, and parsing untrusted subscription input
    payload.py  the delivery body and the size cut
    outbox.py   the durable outbox in the task store's SQLite file
    sender.py   signing (the `standardwebhooks` library), one attempt, the retry schedule
    stalls.py   the watcher behind `task.stalled`
    hub.py      `Webhooks`: the task service's listener and the delivery loop
"""

from cbox.webhooks.hub import NOTIFY, Webhooks
from cbox.webhooks.models import EventType, Subscription

__all__ = ["NOTIFY", "EventType", "Subscription", "Webhooks"]
