"""The GitHub worker's credential: a token, or a GitHub App's installation tokens.

One `TokenSource` serves both uses of the credential, REST calls (through
`SourceAuth`, a githubkit auth strategy) and the `git push` of a task's
branch, so both always use the same, current token.

App flow. The App's private key signs a short JWT (githubkit's `AppAuthStrategy`
does that), which buys an installation token from
`POST /app/installations/{id}/access_tokens`. Installation tokens live an
hour; we fetch a new one when the current one has less than
`refresh_margin_s` left, so a push that starts just before expiry still has a
valid token while git runs.

The credential stays on the worker's host: it is never put in a task's prompt,
environment or workspace (the orchestrator never sees it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from githubkit import AppAuthStrategy, GitHub
from githubkit.auth.base import BaseAuthStrategy
from githubkit.exception import GitHubException, RequestFailed

from cbox.errors import ConfigError, GitHubError

if TYPE_CHECKING:
    from githubkit.core import GitHubCore


class TokenSource(Protocol):
    async def token(self) -> str: ...


class StaticToken:
    """`GITHUB_TOKEN`: a personal access token, or Actions' token."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token


class AppTokens:
    """Installation tokens of a GitHub App, fetched and refreshed before they expire."""

    def __init__(
        self,
        app_id: str,
        private_key: str,
        installation_id: int,
        *,
        base_url: str,
        refresh_margin_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.installation_id = installation_id
        self._app = GitHub(
            AppAuthStrategy(app_id, private_key), base_url=base_url, http_cache=False,
            auto_retry=False,
        )
        self._margin_s = refresh_margin_s
        self._clock = clock
        self._token: str | None = None
        self._expires_s = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0

    async def app_login(self) -> str:
        """The login the App's comments carry (`<slug>[bot]`), asked with the App's JWT."""
        try:
            resp = await self._app.rest.apps.async_get_authenticated()
        except RequestFailed as exc:
            raise ConfigError(f"GitHub refused the App's JWT (HTTP "
                              f"{exc.response.status_code}): check GITHUB_APP_ID and the "
                              "private key") from exc
        except (GitHubException, httpx.HTTPError) as exc:
            raise GitHubError(f"cannot ask GitHub about the App: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"the GitHub App private key is not usable: {exc}") from exc
        app = resp.parsed_data
        if app is None:
            raise GitHubError("GitHub did not describe the App")
        slug = app.slug if isinstance(app.slug, str) else app.name
        return f"{slug}[bot]"

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or self._expires_s - self._clock() < self._margin_s:
                self._token, self._expires_s = await self._fetch()
                self.fetched += 1
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        try:
            resp = await self._app.rest.apps.async_create_installation_access_token(
                self.installation_id
            )
        except RequestFailed as exc:
            status = exc.response.status_code
            if status in (401, 403, 404):
                raise ConfigError(
                    f"GitHub refused the App's installation token (HTTP {status}): check "
                    "GITHUB_APP_ID, the private key and GITHUB_APP_INSTALLATION_ID"
                ) from exc
            raise GitHubError(f"GitHub installation token: HTTP {status}") from exc
        except (GitHubException, httpx.HTTPError) as exc:
            raise GitHubError(f"cannot get a GitHub installation token: {exc}") from exc
        except ValueError as exc:  # a key PyJWT cannot read
            raise ConfigError(f"the GitHub App private key is not usable: {exc}") from exc
        data = resp.parsed_data
        expires = datetime.fromisoformat(data.expires_at.replace("Z", "+00:00")).timestamp()
        return data.token, expires


class SourceAuth(BaseAuthStrategy):
    """githubkit auth strategy that asks a `TokenSource` before every request."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def get_auth_flow(self, github: GitHubCore[Any]) -> httpx.Auth:
        return _Flow(self.source)


class _Flow(httpx.Auth):
    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, Any, None]:
        raise RuntimeError("the GitHub worker is async only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"token {await self.source.token()}"
        yield request
