"""Linear's GraphQL API, as much of it as the worker needs, behind one class.

gql does the HTTP; its exceptions are translated here, and only here, into
`LinearError` (or `ConfigError` for a refused key). Every document sent is a
constant in `DOCUMENTS`, and the tests check each of them against Linear's
published schema (the fake server refuses any document that does not
validate), so a field that does not exist fails in CI, not in production.

Rate limits. Linear refuses a request over budget with an error whose
`extensions.code` is `RATELIMITED` (HTTP 400, or 429 from its edge) and says in
`X-RateLimit-Requests-Reset` (epoch milliseconds) when the budget refills. We
wait until then (or `Retry-After` seconds) and try again; and when a normal
answer reports `X-RateLimit-Requests-Remaining: 0` we pause before the next call
instead of spending a refused request. All calls go through one lock: gql keeps
only the *last* response's headers on the transport, so serializing is what
makes those headers belong to the call that reads them, and it makes one wait
hold back every caller, which is what a shared budget needs. Linear calls are
a handful per issue, so the lock costs nothing that matters.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gql import Client as GqlClient
from gql import GraphQLRequest
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.exceptions import (
    TransportError,
    TransportQueryError,
    TransportServerError,
)

from cbox.errors import ConfigError, LinearError

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.linear.app/graphql"

#: Transient failures (connection refused, 5xx) are retried this many times
#: with doubling delays before the call fails.
NETWORK_RETRIES = 5

_ISSUE_FIELDS = """
fragment CboxIssue on Issue {
  id identifier title description url priority createdAt startedAt
  state { id name type }
  labels(first: 50) { nodes { id name } }
}
"""

DOCUMENTS: dict[str, str] = {
    "viewer": "query CboxViewer { viewer { id name email } }",
    "teams": """
query CboxTeams($filter: TeamFilter) {
  teams(filter: $filter, first: 2) {
    nodes { id key name states(first: 100) { nodes { id name type position } } }
  }
}""",
    "labels": """
query CboxLabels($name: String!) {
  issueLabels(filter: {name: {eqIgnoreCase: $name}}, first: 50) {
    nodes { id name team { id } }
  }
}""",
    "issues": """
query CboxIssues($filter: IssueFilter, $after: String) {
  issues(filter: $filter, first: 50, after: $after) {
    nodes { ...CboxIssue }
    pageInfo { hasNextPage endCursor }
  }
}"""
    + _ISSUE_FIELDS,
    "issue": "query CboxIssue($id: String!) { issue(id: $id) { ...CboxIssue } }" + _ISSUE_FIELDS,
    "comments": """
query CboxComments($id: String!) {
  issue(id: $id) {
    comments(first: 100) { nodes { id body createdAt user { name } } }
  }
}""",
    "move": """
mutation CboxMove($id: String!, $stateId: String!) {
  issueUpdate(id: $id, input: {stateId: $stateId}) { success issue { id state { id name } } }
}""",
    "comment": """
mutation CboxComment($input: CommentCreateInput!) {
  commentCreate(input: $input) { success comment { id } }
}""",
}

_REQUESTS = {name: GraphQLRequest(text) for name, text in DOCUMENTS.items()}

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

#: Linear's state types that mean "not started yet": the worker's intake.
INTAKE_STATE_TYPES = ("backlog", "unstarted")


@dataclass(frozen=True, slots=True)
class State:
    id: str
    name: str
    type: str
    position: float = 0.0


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    key: str
    name: str
    states: tuple[State, ...]


@dataclass(frozen=True, slots=True)
class Label:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Issue:
    id: str
    identifier: str
    title: str
    description: str
    url: str
    priority: int
    created_at: str
    started_at: str | None
    state: State
    labels: tuple[str, ...]

    @property
    def sort_key(self) -> tuple[int, str]:
        """Linear's 1 urgent .. 4 low first, 0 (no priority) last; oldest first within."""
        rank = self.priority if 1 <= self.priority <= 4 else 5
        return rank, self.created_at


@dataclass(frozen=True, slots=True)
class Comment:
    id: str
    body: str
    created_at: str
    author: str | None


class LinearApi:
    """One authenticated GraphQL session to Linear."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: int = 30,
        max_wait_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        # Personal API keys go in Authorization as they are: no "Bearer".
        self._transport = AIOHTTPTransport(
            url=url, headers={"Authorization": api_key}, timeout=timeout_s
        )
        self._client = GqlClient(transport=self._transport, fetch_schema_from_transport=False)
        self._session: Any = None
        self._lock = asyncio.Lock()
        self._pause_until_s = 0.0
        self._max_wait_s = max_wait_s
        self._clock = clock

    async def __aenter__(self) -> LinearApi:
        self._session = await self._client.connect_async()  # type: ignore[no-untyped-call]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close_async()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ calls

    async def viewer_name(self) -> str:
        """Who the key belongs to; the cheapest call that proves the key works."""
        data = await self.execute("viewer")
        viewer = data["viewer"]
        return str(viewer.get("name") or viewer.get("email") or viewer["id"])

    async def find_team(self, ref: str) -> Team | None:
        """A team by id (UUID) or by key (`ENG`), as LINEAR_TEAM_ID may hold either."""
        field = "id" if _UUID.match(ref) else "key"
        op = "eq" if field == "id" else "eqIgnoreCase"
        data = await self.execute("teams", {"filter": {field: {op: ref}}})
        nodes = data["teams"]["nodes"]
        if not nodes:
            return None
        node = nodes[0]
        states = tuple(
            State(s["id"], s["name"], s["type"], float(s.get("position") or 0))
            for s in node["states"]["nodes"]
        )
        return Team(node["id"], node["key"], node["name"], states)

    async def find_label(self, name: str, team_id: str) -> Label | None:
        """The team's label of that name, else the workspace-wide one."""
        data = await self.execute("labels", {"name": name})
        nodes = data["issueLabels"]["nodes"]
        own = [n for n in nodes if (n.get("team") or {}).get("id") == team_id]
        shared = [n for n in nodes if n.get("team") is None]
        for node in own + shared:
            return Label(node["id"], node["name"])
        return None

    async def issues(
        self,
        team_id: str,
        label_id: str,
        *,
        state_types: tuple[str, ...] | None = None,
        state_id: str | None = None,
        max_pages: int = 20,
    ) -> list[Issue]:
        """The team's issues with the label, in the given state (type or id)."""
        flt: dict[str, Any] = {
            "team": {"id": {"eq": team_id}},
            "labels": {"some": {"id": {"eq": label_id}}},
        }
        if state_types is not None:
            flt["state"] = {"type": {"in": list(state_types)}}
        if state_id is not None:
            flt["state"] = {"id": {"eq": state_id}}
        found: list[Issue] = []
        after: str | None = None
        for _ in range(max_pages):
            data = await self.execute("issues", {"filter": flt, "after": after})
            page = data["issues"]
            found += [_issue(n) for n in page["nodes"]]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        return found

    async def issue(self, issue_id: str) -> Issue:
        return _issue((await self.execute("issue", {"id": issue_id}))["issue"])

    async def comments(self, issue_id: str) -> list[Comment]:
        """The issue's comments, oldest first."""
        data = await self.execute("comments", {"id": issue_id})
        nodes = data["issue"]["comments"]["nodes"]
        found = [
            Comment(n["id"], n["body"], n["createdAt"], (n.get("user") or {}).get("name"))
            for n in nodes
        ]
        return sorted(found, key=lambda c: c.created_at)

    async def move(self, issue_id: str, state_id: str) -> None:
        data = await self.execute("move", {"id": issue_id, "stateId": state_id})
        if not data["issueUpdate"]["success"]:
            raise LinearError(f"Linear did not move issue {issue_id} to state {state_id}")

    async def create_comment(self, issue_id: str, body: str, comment_id: str) -> None:
        """Post a comment with a chosen id. Linear refuses a second comment with the
        same id, which is what lets two workers race to post a result safely."""
        variables = {"input": {"id": comment_id, "issueId": issue_id, "body": body}}
        data = await self.execute("comment", variables)
        if not data["commentCreate"]["success"]:
            raise LinearError(f"Linear did not create the comment on issue {issue_id}")

    # ------------------------------------------------------------ transport

    async def execute(self, name: str, variables: Mapping[str, Any] | None = None) -> Any:
        """Run one of `DOCUMENTS`, waiting out rate limits and transient failures."""
        request = GraphQLRequest(_REQUESTS[name], variable_values=dict(variables or {}))
        async with self._lock:
            failures = 0
            while True:
                await self._respect_pause()
                try:
                    result = await self._session.execute(request)
                except TransportQueryError as exc:
                    self._note_headers()
                    code = _error_code(exc.errors)
                    if code == "RATELIMITED":
                        self._rate_limited(name)
                        continue
                    if code == "AUTHENTICATION_ERROR":
                        raise ConfigError(
                            f"Linear refused LINEAR_API_KEY: {_first_message(exc.errors)}"
                        ) from exc
                    raise LinearError(
                        f"Linear answered {name} with an error: {_first_message(exc.errors)}"
                    ) from exc
                except TransportServerError as exc:
                    self._note_headers()
                    if exc.code == 429:
                        self._rate_limited(name)
                        continue
                    if exc.code in (401, 403):
                        message = f"Linear refused LINEAR_API_KEY (HTTP {exc.code})"
                        raise ConfigError(message) from exc
                    failures = await self._transient(name, failures, exc)
                    continue
                except (TransportError, OSError, TimeoutError) as exc:
                    failures = await self._transient(name, failures, exc)
                    continue
                self._note_headers()
                return result

    async def _transient(self, name: str, failures: int, exc: BaseException) -> int:
        failures += 1
        if failures > NETWORK_RETRIES:
            raise LinearError(f"cannot reach Linear at {self.url}: {exc}") from exc
        delay_s = min(30.0, 0.5 * 2 ** (failures - 1))
        logger.warning("Linear %s failed (%s); retrying in %.1fs", name, exc, delay_s)
        await asyncio.sleep(delay_s)
        return failures

    def _headers(self) -> Mapping[str, str]:
        headers = getattr(self._transport, "response_headers", None)
        return headers if headers is not None else {}

    def _note_headers(self) -> None:
        """Remaining 0 means the next call would be refused: pause until the reset."""
        headers = self._headers()
        if headers.get("X-RateLimit-Requests-Remaining") == "0":
            reset_s = _reset_s(headers)
            if reset_s is not None:
                self._pause_until_s = max(self._pause_until_s, reset_s)

    def _rate_limited(self, name: str) -> None:
        headers = self._headers()
        now = self._clock()
        until = _reset_s(headers)
        if until is None:
            retry_after = headers.get("Retry-After", "")
            until = now + (float(retry_after) if _is_number(retry_after) else 60.0)
        until = min(until, now + self._max_wait_s)
        logger.warning("Linear rate limit hit on %s; waiting %.1fs", name, max(0.0, until - now))
        self._pause_until_s = max(self._pause_until_s, until)

    async def _respect_pause(self) -> None:
        wait_s = self._pause_until_s - self._clock()
        if wait_s > 0:
            await asyncio.sleep(wait_s)


def _reset_s(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("X-RateLimit-Requests-Reset", "")
    return float(raw) / 1000.0 if _is_number(raw) else None


def _is_number(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def _error_code(errors: list[Any] | None) -> str | None:
    for error in errors or []:
        if isinstance(error, dict):
            code = (error.get("extensions") or {}).get("code")
            if isinstance(code, str):
                return code
    return None


def _first_message(errors: list[Any] | None) -> str:
    for error in errors or []:
        if isinstance(error, dict):
            ext = error.get("extensions") or {}
            return str(ext.get("userPresentableMessage") or error.get("message") or error)
    return "no details"


def _issue(node: Mapping[str, Any]) -> Issue:
    state = node["state"]
    return Issue(
        id=node["id"],
        identifier=node["identifier"],
        title=node["title"],
        description=node.get("description") or "",
        url=node["url"],
        priority=int(node.get("priority") or 0),
        created_at=node["createdAt"],
        started_at=node.get("startedAt"),
        state=State(state["id"], state["name"], state["type"]),
        labels=tuple(label["name"] for label in node["labels"]["nodes"]),
    )
