"""One delivery attempt: sign with the `standardwebhooks` library, POST, never follow redirects.

Signatures are the library's `Webhook(secret).sign(id, timestamp, body)`: v1,
HMAC-SHA256 over `id.timestamp.body`. During a rotation a subscription has two
secrets and `webhook-signature` carries both entries, space-separated, so a
receiver holding either one verifies. The timestamp is the attempt's own
(receivers refuse old ones), the id is the delivery's (receivers deduplicate).

Retries follow Standard Webhooks' reference schedule (`RETRY_SCHEDULE_S`,
after the first attempt), each delay scaled by CBOX_WEBHOOK_RETRY_SCALE and
spread by ±`JITTER` so receivers that failed together are not hit together
again.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from cbox import __version__

#: Seconds to wait before each retry: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
#: (8 attempts over about 27.6 hours).
RETRY_SCHEDULE_S: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.2
ERROR_CHARS = 300


def retry_delay_s(attempts: int, scale: float, rng: random.Random | None = None) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None: give up."""
    if attempts < 1 or attempts > len(RETRY_SCHEDULE_S):
        return None
    base = RETRY_SCHEDULE_S[attempts - 1] * scale
    return base * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def signature(secrets: list[str], msg_id: str, at: datetime, body: str) -> str:
    return " ".join(Webhook(secret).sign(msg_id, at, body) for secret in secrets)


@dataclass(frozen=True, slots=True)
class Result:
    status: int | None
    latency_ms: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def session() -> aiohttp.ClientSession:
    """No cookies, no proxies from the environment, no connection limit of its own:
    concurrency is the caller's, per receiver."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        headers={"User-Agent": f"claude-box/{__version__} (webhooks)"},
    )


async def attempt(
    http: aiohttp.ClientSession, url: str, msg_id: str, body: str, secrets: list[str],
    timeout_s: float,
) -> Result:
    now = time.time()
    at = datetime.fromtimestamp(int(now), UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signature(secrets, msg_id, at, body),
        "Content-Type": "application/json",
    }
    started = time.monotonic()
    try:
        async with http.post(
            url, data=body.encode(), headers=headers, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            status = resp.status
            snippet = (await resp.content.read(ERROR_CHARS)).decode("utf-8", "replace")
    except TimeoutError:
        return Result(None, _ms(started), f"no answer within {timeout_s:g}s")
    except aiohttp.ClientError as exc:
        return Result(None, _ms(started), f"{exc.__class__.__name__}: {exc}"[:ERROR_CHARS])
    latency = _ms(started)
    if 200 <= status < 300:
        return Result(status, latency, None)
    if 300 <= status < 400:
        return Result(status, latency, f"HTTP {status}: redirects are not followed")
    text = " ".join(snippet.split())[:ERROR_CHARS]
    return Result(status, latency, f"HTTP {status}" + (f": {text}" if text else ""))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
