"""Async HTTP/SSE client of the claude-box API, shared by the CLI and workers.

aiohttp translates into `ClientError` / `ServerUnreachable` here and only here.
The event stream keeps `Last-Event-ID` and resumes after a dropped connection.
The CLI itself uses the stdlib `BlockingClient` (`cbox.cli.blocking_client`),
which starts in a fraction of aiohttp's import time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from cbox.cli.sse import MAX_STREAM_FAILURES, SseDecoder, SseEvent, error_message
from cbox.errors import ClientError, ServerUnreachable

__all__ = ["Client", "SseEvent", "parse_sse"]


class Client:
    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        _, body = await self.request_with_status(method, path, json_body=json_body, params=params)
        return body

    async def request_with_status(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """Like `request`, also returning the status (202 vs 200 tells new from existing)."""
        url = self.server + path
        try:
            async with self._session.request(method, url, json=json_body, params=params) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise ClientError(error_message(resp.status, text), status=resp.status)
                return resp.status, json.loads(text) if text else None
        except aiohttp.ClientConnectionError as exc:
            raise ServerUnreachable(
                f"no claude-box server at {self.server} ({exc.__class__.__name__}); "
                "start one with `cbox serve` or pass --server"
            ) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ClientError(f"request to {url} failed: {exc}") from exc

    async def download(self, path: str, dest: Path, *, max_bytes: int) -> None:
        """Save a binary answer (a task's git bundle) to `dest`, refusing more than max_bytes."""
        url = self.server + path
        try:
            async with self._session.get(url) as resp:
                if resp.status >= 400:
                    raise ClientError(error_message(resp.status, await resp.text()),
                                      status=resp.status)
                size = 0
                with dest.open("wb") as file:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        size += len(chunk)
                        if size > max_bytes:
                            raise ClientError(f"{url} sent more than {max_bytes} bytes")
                        file.write(chunk)
        except aiohttp.ClientConnectionError as exc:
            raise ServerUnreachable(f"no claude-box server at {self.server} ({exc})") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ClientError(f"request to {url} failed: {exc}") from exc

    async def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/tasks", json_body=spec)
        return result

    async def submit_keyed(self, spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Submit; also say whether a task was created (False: the spec's
        `idempotency_key` matched an active task, which is returned instead)."""
        status, body = await self.request_with_status("POST", "/tasks", json_body=spec)
        return dict(body), status == 202

    async def get(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/tasks/{task_id}")
        return result

    async def stop(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/tasks/{task_id}/stop")
        return result

    async def events(self, task_id: str, after: int = 0) -> AsyncIterator[SseEvent]:
        """Follow a task's events until `done`, reconnecting with Last-Event-ID."""
        last = after
        failures = 0
        while True:
            try:
                async for event in self._events_once(task_id, last):
                    failures = 0
                    if event.id is not None:
                        last = event.id
                    yield event
                    if event.type == "done":
                        return
                return
            except ServerUnreachable:
                failures += 1
                if failures > MAX_STREAM_FAILURES:
                    raise
                await asyncio.sleep(min(2.0, 0.1 * failures))

    async def _events_once(self, task_id: str, after: int) -> AsyncIterator[SseEvent]:
        url = f"{self.server}/tasks/{task_id}/events"
        headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
        try:
            async with self._session.get(url, headers=headers) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    raise ClientError(error_message(resp.status, text), status=resp.status)
                async for event in parse_sse(resp.content):
                    yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise ServerUnreachable(f"lost the connection to {self.server}: {exc}") from exc


async def parse_sse(stream: aiohttp.StreamReader) -> AsyncIterator[SseEvent]:
    decoder = SseDecoder()
    async for raw in stream:
        event = decoder.line(raw)
        if event is not None:
            yield event
