"""A fake Linear GraphQL API on loopback, answering in the real shapes.

Every incoming document is parsed and validated against Linear's published
schema (`<shared>/linear/schema.graphql`, read from there, never copied) and
refused with HTTP 400 and GraphQL errors if it does not validate: a query
the worker sends that would not work against the real API fails the tests.
Valid documents are then *executed* by graphql-core against that same schema,
over an in-memory world of teams, workflow states, labels, issues and
comments, so answers have exactly the shape Linear's would (only the fields
asked for, connections as `{nodes, pageInfo}`).

Also like Linear: the key goes in `Authorization` as is (a `Bearer` prefix is
refused), a bad key is an `AUTHENTICATION_ERROR`, a comment id that exists is
refused, and `rate_limit_once()` answers the next request with HTTP 429, a
`RATELIMITED` error and the `X-RateLimit-Requests-*` headers.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from graphql import (
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    build_schema,
    execute_sync,
    parse,
    validate,
)

from tests.shared_dir import shared_path

API_KEY = "lin_api_fake0123456789"
DEFAULT_STATES = (
    ("Backlog", "backlog"),
    ("Todo", "unstarted"),
    ("In Progress", "started"),
    ("In Review", "started"),
    ("Done", "completed"),
    ("Canceled", "canceled"),
)
_OPS = {"eq", "neq", "in", "nin", "eqIgnoreCase", "neqIgnoreCase", "null", "containsIgnoreCase",
        "gt", "gte", "lt", "lte"}


@functools.cache
def linear_schema() -> GraphQLSchema:
    return build_schema((shared_path("linear") / "schema.graphql").read_text())


def _iso(moment: datetime) -> str:
    millis = f"{moment.microsecond // 1000:03d}"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + millis + "Z"


@dataclass
class State:
    id: str
    name: str
    type: str
    position: float
    team_id: str


@dataclass
class Team:
    id: str
    key: str
    name: str
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


@dataclass
class Label:
    id: str
    name: str
    team_id: str | None


@dataclass
class Issue:
    id: str
    identifier: str
    title: str
    description: str
    priority: int
    state_id: str
    label_ids: list[str]
    team_id: str
    created_at: str
    started_at: str | None = None


@dataclass
class Comment:
    id: str
    issue_id: str
    body: str
    created_at: str
    user: str


@dataclass
class Recorded:
    operation: str | None
    kind: str  # "query" | "mutation"
    variables: dict[str, Any]
    status: int
    at_s: float
    authorization: str | None


class FakeLinear:
    """The server plus its world. Build the world with `add_*`, then point
    `LINEAR_API_URL` at `url`."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.schema = linear_schema()
        self.teams: dict[str, Team] = {}
        self.states: dict[str, State] = {}
        self.labels: dict[str, Label] = {}
        self.issues: dict[str, Issue] = {}
        self.comments: dict[str, Comment] = {}
        self.requests: list[Recorded] = []
        self.invalid: list[str] = []  # documents refused by schema validation
        self.rate_limits: list[tuple[float, float]] = []  # (refused at, reset at)
        self._rate_limit_next: float | None = None
        self._clock = datetime(2025, 1, 1, tzinfo=UTC)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/graphql", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    # ---------------------------------------------------------------- world

    def _now(self) -> str:
        self._clock += timedelta(seconds=1)
        return _iso(self._clock)

    def add_team(self, key: str = "ENG", name: str = "Engineering",
                 states: tuple[tuple[str, str], ...] = DEFAULT_STATES) -> Team:
        team = Team(str(uuid.uuid4()), key, name)
        self.teams[team.id] = team
        for n, (state_name, kind) in enumerate(states):
            state = State(str(uuid.uuid4()), state_name, kind, float(n), team.id)
            self.states[state.id] = state
        return team

    def add_label(self, name: str, team: Team | None = None) -> Label:
        label = Label(str(uuid.uuid4()), name, team.id if team else None)
        self.labels[label.id] = label
        return label

    def state(self, team: Team, name: str) -> State:
        return next(s for s in self.states.values() if s.team_id == team.id and s.name == name)

    def add_issue(self, team: Team, title: str, *, priority: int = 0, state: str = "Todo",
                  labels: tuple[Label, ...] = (), description: str = "") -> Issue:
        number = next(team.counter)
        issue = Issue(
            str(uuid.uuid4()), f"{team.key}-{number}", title, description, priority,
            self.state(team, state).id, [label.id for label in labels], team.id, self._now(),
        )
        self.issues[issue.id] = issue
        return issue

    def add_comment(self, issue: Issue, body: str, user: str = "Ada Lovelace") -> Comment:
        comment = Comment(str(uuid.uuid4()), issue.id, body, self._now(), user)
        self.comments[comment.id] = comment
        return comment

    def state_name(self, issue: Issue) -> str:
        return self.states[self.issues[issue.id].state_id].name

    def comments_on(self, issue: Issue) -> list[Comment]:
        return sorted(
            (c for c in self.comments.values() if c.issue_id == issue.id),
            key=lambda c: c.created_at,
        )

    @property
    def mutations(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind == "mutation"]

    def moves(self, issue: Issue) -> list[str]:
        """Names of the states the issue was moved to, in order."""
        return [
            self.states[r.variables["stateId"]].name
            for r in self.mutations
            if r.operation == "CboxMove" and r.variables.get("id") == issue.id and r.status == 200
        ]

    def rate_limit_once(self, reset_in_s: float = 1.0) -> None:
        """Refuse the next request as over budget, with a reset `reset_in_s` ahead."""
        self._rate_limit_next = reset_in_s

    # ---------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.Response:
        headers = {
            "X-RateLimit-Requests-Limit": "1500",
            "X-RateLimit-Requests-Remaining": "1499",
            "X-RateLimit-Requests-Reset": str(int((time.time() + 3600) * 1000)),
        }
        try:
            body = await request.json()
            query, variables = body["query"], body.get("variables") or {}
            document = parse(query)
        except (ValueError, KeyError, TypeError, GraphQLError) as exc:
            return self._errors(400, [{"message": f"bad request: {exc}"}], headers)
        operation = next(
            (d for d in document.definitions if isinstance(d, OperationDefinitionNode)), None
        )
        name = operation.name.value if operation and operation.name else None
        kind = operation.operation.value if operation else "query"
        record = Recorded(name, kind, variables, 200, time.time(),
                          request.headers.get("Authorization"))
        self.requests.append(record)
        problems = validate(self.schema, document)
        if problems:
            self.invalid.append(query)
            record.status = 400
            return self._errors(400, [
                {"message": p.message, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}
                for p in problems
            ], headers)
        if request.headers.get("Authorization") != self.api_key:
            record.status = 400
            return self._errors(400, [{
                "message": "Authentication required, not authenticated",
                "extensions": {
                    "type": "authentication error", "code": "AUTHENTICATION_ERROR",
                    "statusCode": 401,
                    "userPresentableMessage": "You need to authenticate to access this operation.",
                },
            }], headers)
        if self._rate_limit_next is not None:
            reset_s = time.time() + self._rate_limit_next
            self._rate_limit_next = None
            self.rate_limits.append((time.time(), reset_s))
            record.status = 429
            headers.update({
                "X-RateLimit-Requests-Remaining": "0",
                "X-RateLimit-Requests-Reset": str(int(reset_s * 1000)),
                "Retry-After": str(max(1, round(reset_s - time.time()))),
            })
            return self._errors(429, [{
                "message": "Rate limit exceeded",
                "extensions": {"code": "RATELIMITED", "type": "ratelimited",
                               "userPresentableMessage": "Too many requests."},
            }], headers)
        result = execute_sync(
            self.schema, document, root_value=self._root(kind), variable_values=variables
        )
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            record.status = 200
            answer["errors"] = [
                {"message": e.message, "path": e.path,
                 "extensions": {"code": "INVALID_INPUT", "userPresentableMessage": e.message}}
                for e in result.errors
            ]
            answer["data"] = None
        return web.json_response(answer, headers=headers, dumps=json.dumps)

    @staticmethod
    def _errors(status: int, errors: list[dict[str, Any]], headers: dict[str, str]) -> web.Response:
        return web.json_response({"errors": errors}, status=status, headers=headers)

    # ------------------------------------------------------------ resolvers

    def _root(self, kind: str) -> dict[str, Any]:
        if kind == "mutation":
            return {"issueUpdate": self._issue_update, "commentCreate": self._comment_create}
        return {
            "viewer": {"id": "user-1", "name": "Cbox Bot", "email": "bot@example.com"},
            "teams": lambda info, **a: _connection(
                [self._team_view(t) for t in self.teams.values()
                 if _matches(self._team_fview(t), a.get("filter"))], a),
            "issueLabels": lambda info, **a: _connection(
                [self._label_view(x) for x in self.labels.values()
                 if _matches(self._label_fview(x), a.get("filter"))], a),
            "issues": lambda info, **a: _connection(
                [self._issue_view(i) for i in sorted(self.issues.values(),
                                                     key=lambda i: i.created_at)
                 if _matches(self._issue_fview(i), a.get("filter"))], a),
            "issue": lambda info, id: self._issue_view(self._find_issue(id)),
        }

    def _find_issue(self, ref: str) -> Issue:
        for issue in self.issues.values():
            if ref in (issue.id, issue.identifier):
                return issue
        raise GraphQLError("Entity not found: Issue")

    def _team_fview(self, team: Team) -> dict[str, Any]:
        return {"id": team.id, "key": team.key, "name": team.name}

    def _team_view(self, team: Team) -> dict[str, Any]:
        states = [s for s in self.states.values() if s.team_id == team.id]
        return {
            **self._team_fview(team),
            "states": lambda info, **a: _connection([self._state_view(s) for s in states], a),
        }

    def _state_view(self, state: State) -> dict[str, Any]:
        return {"id": state.id, "name": state.name, "type": state.type,
                "position": state.position, "color": "#bec2c8",
                "team": self._team_view(self.teams[state.team_id])}

    def _label_fview(self, label: Label) -> dict[str, Any]:
        team = self.teams.get(label.team_id or "")
        return {"id": label.id, "name": label.name,
                "team": self._team_fview(team) if team else None}

    def _label_view(self, label: Label) -> dict[str, Any]:
        team = self.teams.get(label.team_id or "")
        return {"id": label.id, "name": label.name, "color": "#5e6ad2", "isGroup": False,
                "team": self._team_view(team) if team else None}

    def _issue_fview(self, issue: Issue) -> dict[str, Any]:
        state = self.states[issue.state_id]
        return {
            "id": issue.id, "title": issue.title, "priority": issue.priority,
            "team": self._team_fview(self.teams[issue.team_id]),
            "state": {"id": state.id, "name": state.name, "type": state.type},
            "labels": [self._label_fview(self.labels[x]) for x in issue.label_ids],
        }

    def _issue_view(self, issue: Issue) -> dict[str, Any]:
        labels = [self._label_view(self.labels[x]) for x in issue.label_ids]
        slug = "-".join(issue.title.lower().split())[:40]
        return {
            "id": issue.id, "identifier": issue.identifier, "title": issue.title,
            "description": issue.description or None, "priority": issue.priority,
            "url": f"https://linear.app/fake/issue/{issue.identifier}/{slug}",
            "createdAt": issue.created_at, "startedAt": issue.started_at,
            "state": self._state_view(self.states[issue.state_id]),
            "team": self._team_view(self.teams[issue.team_id]),
            "labels": lambda info, **a: _connection(labels, a),
            "comments": lambda info, **a: _connection(
                [self._comment_view(c) for c in self.comments_on(issue)], a),
        }

    def _comment_view(self, comment: Comment) -> dict[str, Any]:
        return {"id": comment.id, "body": comment.body, "createdAt": comment.created_at,
                "user": {"id": "user-x", "name": comment.user}}

    def _issue_update(self, info: Any, id: str, input: dict[str, Any]) -> dict[str, Any]:
        issue = self._find_issue(id)
        if "stateId" in input:
            state = self.states.get(input["stateId"])
            if state is None or state.team_id != issue.team_id:
                raise GraphQLError("Entity not found: WorkflowState")
            if state.type == "started" and issue.started_at is None:
                issue.started_at = self._now()
            elif state.type in ("backlog", "unstarted"):
                issue.started_at = None
            issue.state_id = state.id
        return {"success": True, "lastSyncId": 1.0, "issue": self._issue_view(issue)}

    def _comment_create(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        issue = self._find_issue(input["issueId"])
        comment_id = input.get("id") or str(uuid.uuid4())
        if comment_id in self.comments:
            raise GraphQLError("Entity already exists: Comment")
        comment = Comment(comment_id, issue.id, input.get("body") or "", self._now(), "Cbox Bot")
        self.comments[comment.id] = comment
        return {"success": True, "lastSyncId": 1.0, "comment": self._comment_view(comment)}


def _connection(nodes: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
    start = int(args.get("after") or 0)
    first = args.get("first") or 50
    page = nodes[start:start + first]
    end = start + len(page)
    return {
        "nodes": page,
        "pageInfo": {"hasNextPage": end < len(nodes), "hasPreviousPage": start > 0,
                     "startCursor": str(start), "endCursor": str(end)},
    }


def _matches(view: Any, flt: dict[str, Any] | None) -> bool:
    """Linear's filter semantics, for the comparators a worker would use."""
    for key, cond in (flt or {}).items():
        if cond is None:
            continue
        if key == "and":
            ok = all(_matches(view, f) for f in cond)
        elif key == "or":
            ok = any(_matches(view, f) for f in cond)
        elif key in _OPS:
            ok = _compare(view, key, cond)
        elif key == "some":
            ok = any(_matches(item, cond) for item in view or [])
        elif key == "every":
            ok = all(_matches(item, cond) for item in view or [])
        else:
            sub = view.get(key) if isinstance(view, dict) else None
            if isinstance(sub, list):
                ok = _matches(sub, cond) if {"some", "every"} & set(cond) else any(
                    _matches(item, cond) for item in sub)
            else:
                ok = _matches(sub, cond)
        if not ok:
            return False
    return True


def _compare(value: Any, op: str, arg: Any) -> bool:
    lowered = str(value).lower() if value is not None else None
    checks: dict[str, Callable[[], bool]] = {
        "eq": lambda: value == arg,
        "neq": lambda: value != arg,
        "in": lambda: value in arg,
        "nin": lambda: value not in arg,
        "eqIgnoreCase": lambda: lowered == str(arg).lower(),
        "neqIgnoreCase": lambda: lowered != str(arg).lower(),
        "containsIgnoreCase": lambda: lowered is not None and str(arg).lower() in lowered,
        "null": lambda: (value is None) == bool(arg),
        "gt": lambda: value is not None and value > arg,
        "gte": lambda: value is not None and value >= arg,
        "lt": lambda: value is not None and value < arg,
        "lte": lambda: value is not None and value <= arg,
    }
    return bool(checks[op]())
