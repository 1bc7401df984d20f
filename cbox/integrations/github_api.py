"""GitHub's REST API, as much of it as the worker needs, behind one class.

githubkit does the HTTP and parses every answer into its typed models, which
are generated from GitHub's official OpenAPI description: an answer of the
wrong shape fails loudly here instead of deep in the workflow. Its exceptions
are translated here, and only here, into `GitHubError` (or `ConfigError` for a
refused credential or a repository that cannot be seen).

Pagination follows the `Link: <...>; rel="next"` header GitHub sends, not a
guessed page count.

Rate limits. GitHub refuses an over-budget request with 403 or 429 and either
`Retry-After` (secondary limits) or `x-ratelimit-remaining: 0` with
`x-ratelimit-reset` (epoch seconds). githubkit recognizes both and raises
`RateLimitExceeded` with the wait; our retry rule (`_Retry`) waits it out, up
to `max_wait_s`, and tries again, a few times. The remaining quota of every
answer is logged at debug level (`--verbose`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pydantic
from githubkit import GitHub, Response
from githubkit.exception import GitHubException, RateLimitExceeded, RequestFailed
from githubkit.retry import RetryOption

from cbox.errors import CboxError, ConfigError, GitHubError
from cbox.integrations.github_auth import AppTokens, SourceAuth, TokenSource
from cbox.integrations.github_models import (
    WRITE_PERMISSIONS,
    Comment,
    Issue,
    Repo,
    RepoInfo,
    priority_rank,
)

__all__ = [
    "WRITE_PERMISSIONS", "Comment", "GitHubApi", "Issue", "Repo", "RepoInfo", "priority_rank",
]

logger = logging.getLogger("cbox.worker.github")

DEFAULT_API_URL = "https://api.github.com"
T = TypeVar("T")

_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


class GitHubApi:
    """One authenticated githubkit client."""

    def __init__(
        self, url: str, source: TokenSource, *, timeout_s: float = 30.0,
        max_wait_s: float = 3600.0, rate_retries: int = 5,
    ) -> None:
        self.url = url
        self.source = source
        self._gh = GitHub(
            SourceAuth(source),
            base_url=url,
            timeout=timeout_s,
            http_cache=False,
            auto_retry=_Retry(rate_retries, max_wait_s),
            async_event_hooks={"response": [_log_quota]},
        )

    async def __aenter__(self) -> GitHubApi:
        """Keep one HTTP client (and its connections) for the worker's lifetime;
        outside `async with`, githubkit opens one per call."""
        await self._gh.__aenter__()  # type: ignore[no-untyped-call]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._gh.__aexit__(None, None, None)

    # ---------------------------------------------------------------- reads

    async def whoami(self) -> str:
        """The login our comments carry: tracking comments are trusted only from it."""
        if isinstance(self.source, AppTokens):
            return await self.source.app_login()
        try:
            resp = await self._gh.rest.users.async_get_authenticated()
        except RequestFailed as exc:
            raise ConfigError(f"GitHub refused GITHUB_TOKEN (HTTP "
                              f"{exc.response.status_code} on GET /user)") from exc
        except (GitHubException, httpx.HTTPError) as exc:
            raise _error("GET /user", exc) from exc
        return _parsed("GET /user", resp).login

    async def repo(self, repo: Repo) -> RepoInfo:
        try:
            resp = await self._gh.rest.repos.async_get(repo.owner, repo.name)
        except RequestFailed as exc:
            status = exc.response.status_code
            if status in (401, 403, 404):
                raise ConfigError(
                    f"GitHub repository {repo.full_name} cannot be read with this "
                    f"credential (HTTP {status})"
                ) from exc
            raise _error(f"GET repository {repo.full_name}", exc) from exc
        except (GitHubException, httpx.HTTPError) as exc:
            raise _error(f"GET repository {repo.full_name}", exc) from exc
        data = _parsed(f"GET repository {repo.full_name}", resp)
        return RepoInfo(repo, data.node_id, data.clone_url, data.default_branch)

    async def open_issues(self, repo: Repo, label: str) -> list[Issue]:
        """Open issues (not pull requests) with the label, oldest first."""
        def page(n: int) -> Awaitable[Response[Any]]:
            return self._gh.rest.issues.async_list_for_repo(
                repo.owner, repo.name, state="open", labels=label, sort="created",
                direction="asc", per_page=100, page=n,
            )
        found = [_issue(repo, i) for i in await self._pages(f"issues of {repo.full_name}", page)]
        return [i for i in found if not i.is_pull]

    async def issue(self, repo: Repo, number: int) -> Issue:
        resp = await self._call(
            f"GET issue {repo.full_name}#{number}",
            lambda: self._gh.rest.issues.async_get(repo.owner, repo.name, number),
        )
        return _issue(repo, resp.parsed_data)

    async def comments(self, repo: Repo, number: int) -> list[Comment]:
        """The issue's comments, oldest first (GitHub's order)."""
        def page(n: int) -> Awaitable[Response[Any]]:
            return self._gh.rest.issues.async_list_comments(
                repo.owner, repo.name, number, per_page=100, page=n
            )
        return [_comment(c) for c in await self._pages(f"comments of #{number}", page)]

    async def recent_comments(self, repo: Repo, since: datetime) -> list[Comment]:
        """Every issue comment of the repository updated since then, oldest first."""
        def page(n: int) -> Awaitable[Response[Any]]:
            return self._gh.rest.issues.async_list_comments_for_repo(
                repo.owner, repo.name, sort="created", direction="asc", since=since,
                per_page=100, page=n,
            )
        return [_comment(c) for c in await self._pages(f"comments of {repo.full_name}", page)]

    async def permission(self, repo: Repo, user: str) -> str:
        """The user's permission on the repository: admin, write, read or none."""
        try:
            resp = await self._gh.rest.repos.async_get_collaborator_permission_level(
                repo.owner, repo.name, user
            )
        except RequestFailed as exc:
            if exc.response.status_code == 404:  # not a collaborator
                return "none"
            raise _error(f"permission of {user}", exc) from exc
        except (GitHubException, httpx.HTTPError) as exc:
            raise _error(f"permission of {user}", exc) from exc
        data = _parsed(f"permission of {user}", resp)
        role = data.role_name if isinstance(data.role_name, str) else ""
        return role if role in WRITE_PERMISSIONS else data.permission

    async def find_pull(self, repo: Repo, branch: str) -> str | None:
        """The URL of an open pull request from `branch`, if there is one."""
        resp = await self._call(
            "list pull requests",
            lambda: self._gh.rest.pulls.async_list(
                repo.owner, repo.name, state="open", head=f"{repo.owner}:{branch}"
            ),
        )
        pulls: list[Any] = resp.parsed_data
        return next((str(p.html_url) for p in pulls), None)

    # --------------------------------------------------------------- writes

    async def ensure_label(self, repo: Repo, name: str, color: str, description: str) -> None:
        """Create the label unless it exists (another worker may create it at once)."""
        try:
            await self._gh.rest.issues.async_get_label(repo.owner, repo.name, name)
            return
        except RequestFailed as exc:
            if exc.response.status_code != 404:
                raise _error(f"GET label {name}", exc) from exc
        except (GitHubException, httpx.HTTPError) as exc:
            raise _error(f"GET label {name}", exc) from exc
        try:
            await self._gh.rest.issues.async_create_label(
                repo.owner, repo.name, name=name, color=color, description=description
            )
        except RequestFailed as exc:
            if exc.response.status_code != 422:  # 422: it exists by now
                raise _error(f"create label {name}", exc) from exc
        except (GitHubException, httpx.HTTPError) as exc:
            raise _error(f"create label {name}", exc) from exc

    async def add_labels(self, repo: Repo, number: int, names: list[str]) -> None:
        await self._call(
            f"label #{number}",
            lambda: self._gh.rest.issues.async_add_labels(
                repo.owner, repo.name, number, labels=names
            ),
        )

    async def remove_label(self, repo: Repo, number: int, name: str) -> None:
        try:
            await self._gh.rest.issues.async_remove_label(repo.owner, repo.name, number, name)
        except RequestFailed as exc:
            if exc.response.status_code != 404:  # not on the issue: fine
                raise _error(f"unlabel #{number}", exc) from exc
        except (GitHubException, httpx.HTTPError) as exc:
            raise _error(f"unlabel #{number}", exc) from exc

    async def create_comment(self, repo: Repo, number: int, body: str) -> Comment:
        resp = await self._call(
            f"comment on #{number}",
            lambda: self._gh.rest.issues.async_create_comment(
                repo.owner, repo.name, number, body=body
            ),
        )
        return _comment(resp.parsed_data)

    async def update_comment(self, repo: Repo, comment_id: int, body: str) -> None:
        await self._call(
            f"edit comment {comment_id}",
            lambda: self._gh.rest.issues.async_update_comment(
                repo.owner, repo.name, comment_id, body=body
            ),
        )

    async def create_pull(
        self, repo: Repo, *, title: str, head: str, base: str, body: str
    ) -> str:
        """Open a draft pull request; its URL."""
        resp = await self._call(
            f"open a pull request from {head}",
            lambda: self._gh.rest.pulls.async_create(
                repo.owner, repo.name, title=title, head=head, base=base, body=body, draft=True
            ),
        )
        return resp.parsed_data.html_url

    # ------------------------------------------------------------ transport

    async def _call(self, what: str, call: Callable[[], Awaitable[Response[T]]]) -> Response[T]:
        """One call; its answer is parsed (validated) here, so a malformed one fails here."""
        try:
            resp = await call()
        except (GitHubException, httpx.HTTPError) as exc:
            raise _error(what, exc) from exc
        _parsed(what, resp)
        return resp

    async def _pages(
        self, what: str, page: Callable[[int], Awaitable[Response[Any]]], max_pages: int = 30
    ) -> list[Any]:
        items: list[Any] = []
        number = 1
        for _ in range(max_pages):
            resp = await self._call(what, lambda n=number: page(n))  # type: ignore[misc]
            items += resp.parsed_data
            following = _next_page(resp.headers.get("link", ""))
            if following is None:
                return items
            number = following
        # Fail closed: decisions taken on a cut list (a mention whose answer lies past
        # the cut looks unanswered, and would start a task on every poll) are wrong.
        raise GitHubError(f"{what}: more than {max_pages} pages; not acting on a partial list")


class _Retry:
    """githubkit retry rule: wait out rate limits (capped), retry 5xx with backoff."""

    def __init__(self, rate_retries: int, max_wait_s: float) -> None:
        self.rate_retries = rate_retries
        self.max_wait_s = max_wait_s

    def __call__(self, exc: GitHubException, count: int) -> RetryOption:
        if isinstance(exc, RateLimitExceeded) and count < self.rate_retries:
            wait_s = min(exc.retry_after.total_seconds(), self.max_wait_s)
            logger.warning(
                "GitHub rate limit (HTTP %s) on %s %s; waiting %.1fs",
                exc.response.status_code, exc.request.method, exc.request.url.path, wait_s,
            )
            return RetryOption(True, timedelta(seconds=max(wait_s, 0.0)))
        if (isinstance(exc, RequestFailed) and exc.response.status_code >= 500 and count < 3):
            return RetryOption(True, timedelta(seconds=0.5 * 2**count))
        return RetryOption(False)


async def _log_quota(response: httpx.Response) -> None:
    remaining = response.headers.get("x-ratelimit-remaining")
    if remaining is not None and logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "GitHub %s %s → %s; quota %s/%s left (resource %s)",
            response.request.method, response.request.url.path, response.status_code,
            remaining, response.headers.get("x-ratelimit-limit", "?"),
            response.headers.get("x-ratelimit-resource", "core"),
        )


def _parsed(what: str, resp: Response[T]) -> T:
    """The answer as githubkit's model; one that does not validate is a GitHubError."""
    try:
        return resp.parsed_data
    except pydantic.ValidationError as exc:
        raise GitHubError(f"GitHub's answer to {what} does not match its schema: "
                          f"{exc.errors()[0]}") from exc


def _next_page(link: str) -> int | None:
    match = _NEXT.search(link)
    if match is None:
        return None
    values = parse_qs(urlsplit(match.group(1)).query).get("page", [])
    return int(values[0]) if values and values[0].isdigit() else None


def _error(what: str, exc: BaseException) -> CboxError:
    if isinstance(exc, RequestFailed):
        status = exc.response.status_code
        if status == 401:
            return ConfigError(f"GitHub refused the credential (HTTP 401) on {what}")
        return GitHubError(f"GitHub answered {what} with HTTP {status}", status=status)
    return GitHubError(f"cannot reach GitHub for {what}: {exc}")


def _issue(repo: Repo, data: Any) -> Issue:
    labels = tuple(
        label if isinstance(label, str) else str(getattr(label, "name", "") or "")
        for label in data.labels
    )
    user = data.user
    return Issue(
        repo=repo,
        number=data.number,
        node_id=data.node_id,
        title=data.title,
        body=data.body or "",
        url=data.html_url,
        author=user.login if user is not None else None,
        labels=labels,
        created_at=_utc(data.created_at),
        is_pull=bool(data.pull_request),
    )


def _comment(data: Any) -> Comment:
    number: int | None = None
    tail = str(data.issue_url).rstrip("/").rsplit("/", 1)[-1]
    if tail.isdigit():
        number = int(tail)
    return Comment(
        id=data.id,
        node_id=data.node_id,
        body=data.body or "",
        author=data.user.login if data.user is not None else None,
        created_at=_utc(data.created_at),
        issue_number=number,
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
