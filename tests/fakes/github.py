"""A fake GitHub REST API on loopback, answering in the real wire format.

Paths, methods, status codes, headers (`Link` pagination, `x-ratelimit-*`,
`retry-after`) and JSON shapes follow GitHub's REST API. The shapes are not
trusted on our word: `tests/test_github_worker.py` has every answer parsed by
githubkit's models (generated from GitHub's official OpenAPI description), and
the worker itself talks to this fake through githubkit, which validates each
answer it reads.

Also like GitHub: `Authorization: token X` or `Bearer X`; a bad token is 401
"Bad credentials"; the App's JWT (RS256, checked with the App's public key) is
accepted only on `/app/...`; installation tokens expire; issues lists include
pull requests (with a `pull_request` key); an unknown label or collaborator is
404; a pull request needs its head branch to exist on the remote.

The remote: each repository's `clone_url` is a `file://` URL of a real local
bare git repository, so the worker's push is a real `git push`.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web

TOKEN = "ghp_fakeToken0123456789"
_ids = itertools.count(1000)
_URL_NAMES = (
    "archive assignees blobs branches collaborators comments commits compare contents "
    "contributors deployments downloads events forks git_commits git_refs git_tags "
    "issue_comment issue_events issues keys labels languages merges milestones notifications "
    "pulls releases stargazers statuses subscribers subscription tags teams trees hooks"
)
_URL_FIELDS = tuple(_URL_NAMES.split())


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node(kind: str, number: int) -> str:
    return f"{kind}_kwDO{number:08d}"


@dataclass
class User:
    login: str
    id: int = field(default_factory=lambda: next(_ids))
    kind: str = "User"

    def json(self, base: str) -> dict[str, Any]:
        url = f"{base}/users/{self.login}"
        return {
            "login": self.login, "id": self.id, "node_id": _node("U", self.id),
            "avatar_url": f"{base}/avatars/{self.id}", "gravatar_id": "", "url": url,
            "html_url": f"https://github.example/{self.login}",
            "followers_url": f"{url}/followers",
            "following_url": f"{url}/following{{/other_user}}",
            "gists_url": f"{url}/gists{{/gist_id}}",
            "starred_url": f"{url}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{url}/subscriptions", "organizations_url": f"{url}/orgs",
            "repos_url": f"{url}/repos", "events_url": f"{url}/events{{/privacy}}",
            "received_events_url": f"{url}/received_events", "type": self.kind,
            "site_admin": False,
        }


@dataclass
class Comment:
    issue: int
    body: str
    user: User
    id: int = field(default_factory=lambda: next(_ids))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    edits: list[str] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return _node("IC", self.id)


@dataclass
class Issue:
    number: int
    title: str
    body: str
    user: User
    labels: list[str]
    created_at: datetime
    id: int = field(default_factory=lambda: next(_ids))
    state: str = "open"
    pull: dict[str, Any] | None = None

    @property
    def node_id(self) -> str:
        return _node("I", self.id)


@dataclass
class Repo:
    owner: User
    name: str
    remote: Path
    id: int = field(default_factory=lambda: next(_ids))
    labels: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    issues: dict[int, Issue] = field(default_factory=dict)
    comments: list[Comment] = field(default_factory=list)
    permissions: dict[str, str] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"


@dataclass
class Seen:
    method: str
    path: str
    status: int
    authorization: str
    at_s: float


class FakeGitHub:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.tokens = {TOKEN}
        self.repos: dict[str, Repo] = {}
        self.requests: list[Seen] = []
        self.mutations: list[tuple[str, str]] = []
        self.bot = User("cbox-bot")
        self.app_bot = User("cbox-app[bot]", kind="Bot")
        self.users: dict[str, User] = {}
        self.app_id = "4242"
        self.app_public_key: str | None = None
        self.installation_id = 77
        self.token_lifetime_s = 3600.0
        self.issued: list[tuple[str, float]] = []
        self._rate_limits: list[dict[str, str]] = []
        self.rate_limited: list[float] = []
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- world

    def user(self, login: str) -> User:
        return self.users.setdefault(login, User(login))

    def add_repo(self, owner: str, name: str) -> Repo:
        remote = self.root / f"{owner}-{name}.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
        repo = Repo(self.user(owner), name, remote)
        repo.permissions[owner] = "admin"
        self.repos[repo.full_name] = repo
        self.add_label(repo, "claude")
        return repo

    def add_label(self, repo: Repo, name: str) -> None:
        repo.labels.setdefault(name, (next(_ids), "ededed", ""))

    def add_issue(
        self, repo: Repo, title: str, *, labels: tuple[str, ...] = ("claude",), body: str = "",
        author: str = "reporter", age_s: float = 0.0,
    ) -> Issue:
        for name in labels:
            self.add_label(repo, name)
        number = next(repo.counter)
        issue = Issue(number, title, body, self.user(author), list(labels),
                      datetime.now(UTC) - timedelta(seconds=age_s))
        repo.issues[number] = issue
        return issue

    def add_comment(self, repo: Repo, issue: Issue, body: str, author: str) -> Comment:
        comment = Comment(issue.number, body, self.user(author))
        repo.comments.append(comment)
        return comment

    def rate_limit_once(
        self, *, retry_after_s: int = 1, status: int = 403, primary: bool = False
    ) -> None:
        """Answer the next request as GitHub's secondary rate limit does (`retry-after`),
        or, `primary`, as the exhausted hourly quota does (`x-ratelimit-remaining: 0`
        and the reset time in epoch seconds)."""
        if primary:
            headers = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0",
                       "x-ratelimit-used": "5000", "x-ratelimit-resource": "core",
                       "x-ratelimit-reset": str(int(time.time()) + retry_after_s + 1)}
            message = "API rate limit exceeded for installation ID 77."
        else:
            headers = {"retry-after": str(retry_after_s)}
            message = ("You have exceeded a secondary rate limit. Please wait a few minutes "
                       "before you try again.")
        self._rate_limits.append({"status": str(status), "message": message, **headers})

    def comments_on(self, repo: Repo, issue: Issue) -> list[Comment]:
        return [c for c in repo.comments if c.issue == issue.number]

    # ------------------------------------------------------------- serving

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        p = "/repos/{owner}/{repo}"
        r.add_get(p, self._get_repo)
        r.add_get(p + "/issues", self._list_issues)
        r.add_get(p + "/issues/comments", self._repo_comments)
        r.add_patch(p + r"/issues/comments/{id:\d+}", self._edit_comment)
        r.add_get(p + r"/issues/{n:\d+}", self._get_issue)
        r.add_get(p + r"/issues/{n:\d+}/comments", self._issue_comments)
        r.add_post(p + r"/issues/{n:\d+}/comments", self._post_comment)
        r.add_post(p + r"/issues/{n:\d+}/labels", self._add_labels)
        r.add_delete(p + r"/issues/{n:\d+}/labels/{name}", self._remove_label)
        r.add_get(p + "/labels/{name}", self._get_label)
        r.add_post(p + "/labels", self._create_label)
        r.add_get(p + "/collaborators/{user}/permission", self._permission)
        r.add_get(p + "/pulls", self._list_pulls)
        r.add_post(p + "/pulls", self._create_pull)
        r.add_post(r"/app/installations/{id:\d+}/access_tokens", self._access_token)
        r.add_get("/app", self._get_app)
        r.add_get("/user", self._get_user)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        response = await self._answer(request, handler, auth)
        self.requests.append(Seen(request.method, request.path, response.status, auth,
                                  time.monotonic()))
        if request.method != "GET" and response.status < 400:
            self.mutations.append((request.method, request.path))
        return response

    async def _answer(self, request: web.Request, handler: Any, auth: str) -> web.StreamResponse:
        if self._rate_limits:
            spec = self._rate_limits.pop(0)
            self.rate_limited.append(time.monotonic())
            status, message = int(spec.pop("status")), spec.pop("message")
            return _error(status, message, spec)
        scheme, _, credential = auth.partition(" ")
        if request.path == "/app" or request.path.startswith("/app/"):
            if scheme != "Bearer" or not self._valid_jwt(credential):
                return _error(401, "A JSON web token could not be decoded")
        elif scheme.lower() not in ("token", "bearer") or not self._valid_token(credential):
            return _error(401, "Bad credentials")
        try:
            response: web.StreamResponse = await handler(request)
        except _Missing as exc:
            return _error(404, str(exc))
        response.headers.update({
            "x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999",
            "x-ratelimit-reset": str(int(time.time()) + 3600), "x-ratelimit-resource": "core",
            "x-github-api-version-selected": "2022-11-28",
        })
        return response

    def _valid_token(self, token: str) -> bool:
        if token in self.tokens:
            return True
        return any(t == token and exp > time.time() for t, exp in self.issued)

    def _valid_jwt(self, token: str) -> bool:
        if self.app_public_key is None:
            return False
        try:
            claims = jwt.decode(token, self.app_public_key, algorithms=["RS256"])
        except jwt.PyJWTError:
            return False
        return str(claims.get("iss")) == self.app_id

    # ------------------------------------------------------------- answers

    def _repo(self, request: web.Request) -> Repo:
        repo = self.repos.get(f"{request.match_info['owner']}/{request.match_info['repo']}")
        if repo is None:
            raise _not_found()
        return repo

    def _repo_json(self, repo: Repo) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        data: dict[str, Any] = {f"{n}_url": f"{api}/{n.replace('_', '/')}" for n in _URL_FIELDS}
        now = _iso(datetime.now(UTC))
        data.update({
            "id": repo.id, "node_id": _node("R", repo.id), "name": repo.name,
            "full_name": repo.full_name, "owner": repo.owner.json(self.url), "private": True,
            "html_url": f"https://github.example/{repo.full_name}", "description": None,
            "fork": False, "url": api, "git_url": f"git://github.example/{repo.full_name}.git",
            "ssh_url": f"git@github.example:{repo.full_name}.git",
            "clone_url": repo.remote.as_uri(), "mirror_url": None,
            "svn_url": f"https://github.example/{repo.full_name}", "homepage": None,
            "language": "Python", "forks_count": 0, "stargazers_count": 0, "watchers_count": 0,
            "size": 1, "default_branch": "main", "open_issues_count": len(repo.issues),
            "has_issues": True, "has_projects": False, "has_wiki": False, "has_pages": False,
            "has_discussions": False, "archived": False, "disabled": False, "pushed_at": now,
            "created_at": now, "updated_at": now, "subscribers_count": 1, "network_count": 0,
            "license": None, "forks": 0, "open_issues": len(repo.issues), "watchers": 0,
        })
        return data

    def _label_json(self, repo: Repo, name: str) -> dict[str, Any]:
        label_id, color, description = repo.labels[name]
        return {"id": label_id, "node_id": _node("LA", label_id),
                "url": f"{self.url}/repos/{repo.full_name}/labels/{name}", "name": name,
                "description": description or None, "color": color, "default": False,
                "archived_at": None, "archived_by": None}

    def _issue_json(self, repo: Repo, issue: Issue) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}/issues/{issue.number}"
        data: dict[str, Any] = {
            "id": issue.id, "node_id": issue.node_id, "url": api,
            "repository_url": f"{self.url}/repos/{repo.full_name}",
            "labels_url": f"{api}/labels{{/name}}", "comments_url": f"{api}/comments",
            "events_url": f"{api}/events",
            "html_url": f"https://github.example/{repo.full_name}/issues/{issue.number}",
            "number": issue.number, "state": issue.state, "title": issue.title,
            "body": issue.body or None, "user": issue.user.json(self.url),
            "labels": [self._label_json(repo, n) for n in issue.labels], "assignee": None,
            "assignees": [], "milestone": None, "locked": False,
            "comments": len(self_comments := [c for c in repo.comments
                                              if c.issue == issue.number]),
            "closed_at": None, "created_at": _iso(issue.created_at),
            "updated_at": _iso(max([issue.created_at, *(c.updated_at for c in self_comments)])),
            "author_association": "NONE",
        }
        if issue.pull is not None:
            data["pull_request"] = issue.pull
        return data

    def _comment_json(self, repo: Repo, c: Comment) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        return {
            "id": c.id, "node_id": c.node_id, "url": f"{api}/issues/comments/{c.id}",
            "html_url": f"https://github.example/{repo.full_name}/issues/{c.issue}"
                        f"#issuecomment-{c.id}",
            "body": c.body, "user": c.user.json(self.url), "created_at": _iso(c.created_at),
            "updated_at": _iso(c.updated_at), "issue_url": f"{api}/issues/{c.issue}",
            "author_association": _association(repo.permissions.get(c.user.login)),
        }

    def _page(self, request: web.Request, items: list[Any]) -> web.Response:
        per_page = min(int(request.query.get("per_page", "30")), 100)
        page = max(int(request.query.get("page", "1")), 1)
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        last = max(1, -(-len(items) // per_page))
        if page < last:
            def link(n: int) -> str:
                query = {**request.query, "page": str(n)}
                return f"<{self.url}{request.path}?{urlencode(query)}>"
            headers["Link"] = f'{link(page + 1)}; rel="next", {link(last)}; rel="last"'
        return web.json_response(chunk, headers=headers)

    async def _get_repo(self, request: web.Request) -> web.Response:
        return web.json_response(self._repo_json(self._repo(request)))

    async def _list_issues(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        wanted = [n for n in request.query.get("labels", "").split(",") if n]
        state = request.query.get("state", "open")
        issues = [i for i in repo.issues.values()
                  if (state == "all" or i.state == state) and all(n in i.labels for n in wanted)]
        issues.sort(key=lambda i: i.created_at, reverse=request.query.get("direction") != "asc")
        return self._page(request, [self._issue_json(repo, i) for i in issues])

    async def _get_issue(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        issue = repo.issues.get(int(request.match_info["n"]))
        if issue is None:
            raise _not_found()
        return web.json_response(self._issue_json(repo, issue))

    async def _issue_comments(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        n = int(request.match_info["n"])
        return self._page(request, [self._comment_json(repo, c) for c in repo.comments
                                    if c.issue == n])

    async def _repo_comments(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        since = request.query.get("since")
        found = list(repo.comments)
        if since:
            moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
            found = [c for c in found if c.updated_at >= moment]
        found.sort(key=lambda c: c.created_at, reverse=request.query.get("direction") == "desc")
        return self._page(request, [self._comment_json(repo, c) for c in found])

    async def _post_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        n = int(request.match_info["n"])
        if n not in repo.issues:
            raise _not_found()
        body = (await request.json())["body"]
        comment = Comment(n, body, self._author(request))
        repo.comments.append(comment)
        return web.json_response(self._comment_json(repo, comment), status=201)

    async def _edit_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        comment = next((c for c in repo.comments if c.id == int(request.match_info["id"])), None)
        if comment is None:
            raise _not_found()
        comment.edits.append(comment.body)
        comment.body = (await request.json())["body"]
        comment.updated_at = datetime.now(UTC)
        return web.json_response(self._comment_json(repo, comment))

    async def _add_labels(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        issue = repo.issues[int(request.match_info["n"])]
        body = await request.json()
        for name in body["labels"] if isinstance(body, dict) else body:
            self.add_label(repo, name)
            if name not in issue.labels:
                issue.labels.append(name)
        return web.json_response([self._label_json(repo, n) for n in issue.labels])

    async def _remove_label(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        issue = repo.issues[int(request.match_info["n"])]
        name = request.match_info["name"]
        if name not in issue.labels:
            raise _not_found("Label does not exist")
        issue.labels.remove(name)
        return web.json_response([self._label_json(repo, n) for n in issue.labels])

    async def _get_label(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        name = request.match_info["name"]
        if name not in repo.labels:
            raise _not_found()
        return web.json_response(self._label_json(repo, name))

    async def _create_label(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        body = await request.json()
        if body["name"] in repo.labels:
            return _error(422, "Validation Failed")
        repo.labels[body["name"]] = (next(_ids), body.get("color", "ededed"),
                                     body.get("description", ""))
        return web.json_response(self._label_json(repo, body["name"]), status=201)

    async def _permission(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        login = request.match_info["user"]
        permission = repo.permissions.get(login)
        if permission is None:
            raise _not_found(f"{login} is not a user")  # GitHub: 404 for non-collaborators
        legacy = {"maintain": "write", "triage": "read"}.get(permission, permission)
        return web.json_response({"permission": legacy, "role_name": permission,
                                  "user": {**self.user(login).json(self.url),
                                           "role_name": permission,
                                           "permissions": _flags(permission)}})

    async def _list_pulls(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        head = request.query.get("head", "")
        found = [p for p in repo.pulls
                 if not head or f"{repo.owner.login}:{p['head']['ref']}" == head]
        return self._page(request, found)

    async def _create_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        body = await request.json()
        head, base = body["head"], body["base"]
        sha = _rev(repo.remote, head)
        if sha is None:
            return _error(422, "Validation Failed", errors=[
                {"resource": "PullRequest", "field": "head", "code": "invalid"}])
        number = next(repo.counter)
        api = f"{self.url}/repos/{repo.full_name}"
        html = f"https://github.example/{repo.full_name}/pull/{number}"
        pull_id = next(_ids)
        now = _iso(datetime.now(UTC))

        def side(ref: str, commit: str) -> dict[str, Any]:
            return {"label": f"{repo.owner.login}:{ref}", "ref": ref, "sha": commit,
                    "user": repo.owner.json(self.url), "repo": self._repo_json(repo)}

        links = {k: {"href": f"{api}/pulls/{number}/{k}"} for k in
                 ("comments", "commits", "statuses", "review_comments", "review_comment")}
        links.update({"html": {"href": html}, "issue": {"href": f"{api}/issues/{number}"},
                      "self": {"href": f"{api}/pulls/{number}"}})
        pull = {
            "url": f"{api}/pulls/{number}", "id": pull_id, "node_id": _node("PR", pull_id),
            "html_url": html, "diff_url": html + ".diff", "patch_url": html + ".patch",
            "issue_url": f"{api}/issues/{number}", "commits_url": f"{api}/pulls/{number}/commits",
            "review_comments_url": f"{api}/pulls/{number}/comments",
            "review_comment_url": f"{api}/pulls/comments{{/number}}",
            "comments_url": f"{api}/issues/{number}/comments",
            "statuses_url": f"{api}/statuses/{sha}", "number": number, "state": "open",
            "locked": False, "title": body["title"], "user": self.bot.json(self.url),
            "body": body.get("body"), "labels": [], "milestone": None, "created_at": now,
            "updated_at": now, "closed_at": None, "merged_at": None, "merge_commit_sha": None,
            "assignee": None, "assignees": [], "requested_reviewers": [], "requested_teams": [],
            "head": side(head, sha), "base": side(base, _rev(repo.remote, base) or sha),
            "_links": links, "author_association": "NONE", "auto_merge": None,
            "draft": bool(body.get("draft")), "merged": False, "mergeable": None,
            "mergeable_state": "unknown", "merged_by": None, "comments": 0,
            "review_comments": 0, "maintainer_can_modify": False, "commits": 1, "additions": 1,
            "deletions": 0, "changed_files": 1,
        }
        repo.pulls.append(pull)
        repo.issues[number] = Issue(number, body["title"], body.get("body") or "", self.bot,
                                    [], datetime.now(UTC), id=pull_id,
                                    pull={"url": pull["url"], "html_url": html,
                                          "diff_url": pull["diff_url"],
                                          "patch_url": pull["patch_url"], "merged_at": None})
        return web.json_response(pull, status=201)

    def _author(self, request: web.Request) -> User:
        """Who a write is made as: the App's bot user for installation tokens."""
        token = request.headers.get("Authorization", "").partition(" ")[2]
        return self.app_bot if any(t == token for t, _ in self.issued) else self.bot

    async def _get_user(self, request: web.Request) -> web.Response:
        if self._author(request) is self.app_bot:  # installation tokens have no user
            return _error(403, "Resource not accessible by integration")
        now = _iso(datetime.now(UTC))
        return web.json_response({
            **self.bot.json(self.url), "name": "Cbox Bot", "company": None, "blog": "",
            "location": None, "email": None, "hireable": None, "bio": None,
            "public_repos": 0, "public_gists": 0, "followers": 0, "following": 0,
            "created_at": now, "updated_at": now,
        })

    async def _get_app(self, request: web.Request) -> web.Response:
        now = _iso(datetime.now(UTC))
        return web.json_response({
            "id": int(self.app_id), "slug": "cbox-app", "node_id": _node("A", int(self.app_id)),
            "client_id": "Iv1.fake", "owner": self.user("acme").json(self.url),
            "name": "cbox app", "description": "claude-box", "external_url": "https://x.example",
            "html_url": "https://github.example/apps/cbox-app", "created_at": now,
            "updated_at": now, "permissions": {"issues": "write", "contents": "write",
                                                "pull_requests": "write"},
            "events": ["issues", "issue_comment", "label"],
        })

    async def _access_token(self, request: web.Request) -> web.Response:
        if int(request.match_info["id"]) != self.installation_id:
            raise _not_found()
        token = f"ghs_installation{len(self.issued):04d}"
        expires = time.time() + self.token_lifetime_s
        self.issued.append((token, expires))
        return web.json_response({
            "token": token,
            "expires_at": _iso(datetime.fromtimestamp(expires, UTC)),
            "permissions": {"issues": "write", "contents": "write", "pull_requests": "write"},
            "repository_selection": "all",
        }, status=201)


def _flags(permission: str) -> dict[str, bool]:
    order = ["read", "triage", "write", "maintain", "admin"]
    rank = order.index(permission) if permission in order else -1
    return {"pull": rank >= 0, "triage": rank >= 1, "push": rank >= 2, "maintain": rank >= 3,
            "admin": rank >= 4}


def _association(permission: str | None) -> str:
    return {"admin": "OWNER", "maintain": "MEMBER", "write": "COLLABORATOR"}.get(
        permission or "", "NONE")


def _rev(remote: Path, ref: str) -> str | None:
    out = subprocess.run(["git", "-C", str(remote), "rev-parse", "--verify", "-q",
                          f"refs/heads/{ref}"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           errors: list[Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message,
                            "documentation_url": "https://docs.github.com/rest",
                            "status": str(status)}
    if errors:
        body["errors"] = errors
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers=headers)


class _Missing(Exception):
    """A 404, raised from deep in a handler; answered as GitHub's JSON error."""


def _not_found(message: str = "Not Found") -> _Missing:
    return _Missing(message)
