"""The GitHub worker: from a labelled issue (or a mention) to a report or a draft PR.

One issue's life, as the worker drives it:

    open + `claude` ──claim──▶ + `claude-working`, tracking comment "queued"
        ──task runs──▶ comment "running" ──▶ done: answer in the comment, or a
        draft PR (`Closes #N`) for the `isolated` policy; labels `claude` and
        `claude-working` removed
                                        └──▶ failed: comment starts with the
        reason, `claude-working` → `claude-failed`, nothing pushed

Intake, in this order: open issues (not pull requests) carrying the label and
neither working/failed label, a `priority:` label first, then oldest; then
comments that mention the handle (`@claude`) written by a user whose
repository permission is write or more (asked of the collaborator-permission
endpoint; anyone else is ignored). A mention is pending until a tracking
comment posted after it exists; on an issue that had tasks before it is a
follow-up in the same session (one Claude Code session per issue).

Never two tasks for one request. Two workers can both see the same issue; the
orchestrator arbitrates with `idempotency_key` = the issue's node id (for a
mention: the comment's node id): while a task with that key is active, a
second submission gets it back (200, not 202), and that worker walks away.
Within one worker, one issue runs at most one task at a time.

Restarts. The task, not the worker, holds the state. A recovery pass (at start
and before every daemon poll) looks at open issues labelled `claude-working`
that this process is not handling: the newest tracking comment names the task;
if the task has ended and the comment does not say so, the report (and the
push, for isolated tasks) is finished then.

See docs/github-worker.md for the operator's view; the push is in
`github_push.py`, the wording in `github_report.py`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cbox.cli.client import Client
from cbox.errors import ClientError, ConfigError
from cbox.integrations import github_report as report
from cbox.integrations.follow import logged, shutdown
from cbox.integrations.github_api import WRITE_PERMISSIONS, Comment, GitHubApi, Issue, Repo
from cbox.integrations.github_config import WorkerConfig
from cbox.integrations.github_publish import Publisher
from cbox.models import MAX_PROMPT_CHARS

logger = logging.getLogger("cbox.worker.github")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of intake: an issue, and the mention that asked for it (if any)."""

    issue: Issue
    request: Comment | None = None

    @property
    def source(self) -> str:
        return self.request.node_id if self.request else self.issue.node_id


class GitHubWorker:
    """Takes issues and mentions, runs them as tasks, reports back."""

    def __init__(self, config: WorkerConfig, github: GitHubApi, client: Client) -> None:
        self.config = config
        self.github = github
        self.client = client
        self.repos = [Repo.parse(r) for r in config.repos]
        self.publisher = Publisher(config, github, client)
        self.poke = asyncio.Event()
        self._busy: set[str] = set()
        self._starting: set[str] = set()
        self._refused: set[str] = set()
        self._ignored: set[str] = set()
        self._isolated: set[str] = set()
        self._mention = re.compile(
            rf"(?<![\w@/]){re.escape(config.handle)}(?![\w-])", re.IGNORECASE
        )

    # ---------------------------------------------------------------- start-up

    async def prepare(self, *, check_orchestrator: bool = True) -> None:
        """Check the credential and every repository (and the orchestrator's policies)."""
        if not self.repos:
            raise ConfigError("no repository: pass --repo OWNER/NAME (or set GITHUB_REPOS)")
        self.publisher.me = await self.github.whoami()
        for repo in self.repos:
            info = await self.github.repo(repo)
            self.publisher.repos[repo] = info
        if check_orchestrator:
            body = await self._orch(lambda: self.client.request("GET", "/policies"))
            known = {p["name"] for p in body["policies"]}
            known |= {a for p in body["policies"] for a in p.get("aliases") or []}
            self._isolated = {
                name for p in body["policies"] if p.get("workspace") == "isolated"
                for name in [p["name"], *(p.get("aliases") or [])]
            }
            if self.config.policy and self.config.policy not in known:
                raise ConfigError(f"the orchestrator has no policy {self.config.policy!r} "
                                  "(--policy)")
            for label, name in self.config.label_policies.items():
                if name not in known:
                    logger.warning("label %r maps to unknown policy %r", label, name)
            for repo in self.repos:
                for name, color, text in (
                    (self.config.working_label, "fbca04", "claude-box is working on this"),
                    (self.config.failed_label, "d93f0b", "claude-box could not finish this"),
                ):
                    await self.github.ensure_label(repo, name, color, text)
        logger.info("GitHub as %s: %s, label %r, handle %s → orchestrator %s",
                    self.publisher.me, ", ".join(r.full_name for r in self.repos),
                    self.config.label,
                    self.config.handle, self.config.server)

    # ------------------------------------------------------------------ intake

    async def candidates(self) -> list[Issue]:
        """Labelled issues that would be taken, in the order they would be taken."""
        skip = {self.config.working_label, self.config.failed_label}
        found: list[Issue] = []
        for repo in self.repos:
            issues = await self.github.open_issues(repo, self.config.label)
            found += [i for i in issues if not skip & set(i.labels)]
        return sorted(found, key=lambda i: i.sort_key)

    async def mentions(self) -> list[Job]:
        """Pending mentions of the handle by users with write permission, oldest first."""
        since = datetime.now(UTC) - timedelta(seconds=self.config.mention_window_s)
        jobs: list[Job] = []
        for repo in self.repos:
            asks = [
                c for c in await self.github.recent_comments(repo, since)
                if c.issue_number is not None and c.author and c.node_id not in self._ignored
                and not report.is_ours(c) and self._mention.search(c.body)
            ]
            allowed: dict[str, bool] = {}
            for number in dict.fromkeys(c.issue_number for c in asks if c.issue_number):
                comments = await self.github.comments(repo, number)
                # Comment ids only grow (timestamps have whole seconds): a mention
                # is answered by the first tracking comment posted after it.
                ours = report.tracking(comments, self.publisher.me)
                answered = max((t.comment.id for t in ours), default=0)
                wanted = {a.node_id for a in asks}
                pending = [c for c in comments if c.node_id in wanted and c.id > answered]
                for comment in pending:
                    author = comment.author or ""
                    if author not in allowed:
                        allowed[author] = (
                            await self.github.permission(repo, author) in WRITE_PERMISSIONS
                        )
                    if not allowed[author]:
                        self._ignored.add(comment.node_id)
                        logger.info("%s#%d: ignoring the mention by %s (no write permission)",
                                    repo.full_name, number, author)
                        continue
                    issue = await self.github.issue(repo, number)
                    if not issue.is_pull:
                        jobs.append(Job(issue, comment))
                    break  # the oldest pending mention; the next waits for its answer
        return sorted(jobs, key=lambda j: j.request.created_at if j.request else j.issue.created_at)

    async def jobs(self) -> list[Job]:
        return [Job(i) for i in await self.candidates()] + await self.mentions()

    async def run_once(self) -> int:
        """Recover, then take one job. Exit code: 0 done or nothing to do, 1 failed."""
        await self.publisher.recover(self._busy)
        for job in await self.jobs():
            outcome = await self.handle(job)
            if outcome is not None:
                return 0 if outcome else 1
        logger.info("nothing to do: no open issue with label %r, no pending %s",
                    self.config.label, self.config.handle)
        return 0

    async def run_daemon(self, stop: asyncio.Event) -> None:
        """Keep up to `max_parallel` jobs running until `stop` is set; a webhook pokes."""
        running: dict[str, asyncio.Task[bool | None]] = {}
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            self.poke.clear()
            await logged(self.publisher.recover(self._busy), None, logger)
            free = self.config.max_parallel - len(running)
            if free > 0:
                for job in await logged(self.jobs(), [], logger):
                    if free == 0:
                        break
                    if job.issue.ref in running or job.source in self._refused:
                        continue
                    running[job.issue.ref] = asyncio.create_task(self.handle(job))
                    free -= 1
            poked = asyncio.ensure_future(self.poke.wait())
            await asyncio.wait({stopping, poked, *running.values()},
                               timeout=self.config.interval_s,
                               return_when=asyncio.FIRST_COMPLETED)
            poked.cancel()
            for ref, job_task in list(running.items()):
                if job_task.done():
                    del running[ref]
                    if not job_task.cancelled() and job_task.exception() is not None:
                        logger.error("%s: %s", ref, _one_line(job_task.exception()))
        stopping.cancel()
        await shutdown(running, self._starting)

    # ------------------------------------------------------------- one job

    async def handle(self, job: Job) -> bool | None:
        """Claim, run and report one job. None when it was not ours to take."""
        cfg = self.config
        issue = job.issue
        self._busy.add(issue.ref)
        self._starting.add(issue.ref)
        try:
            fresh = await self.github.issue(issue.repo, issue.number)
            labels = set(fresh.labels)
            if cfg.working_label in labels or (job.request is None and (
                    cfg.failed_label in labels or cfg.label not in labels)):
                logger.info("%s: already taken or changed; skipping", issue.ref)
                return None
            await self.github.add_labels(issue.repo, issue.number, [cfg.working_label])
            comments = await self.github.comments(issue.repo, issue.number)
            spec = self._spec(Job(fresh, job.request), comments)
            try:
                task, created = await self._orch(lambda: self.client.submit_keyed(spec))
            except ClientError as exc:
                if exc.status is not None and 400 <= exc.status < 500:
                    await self._refuse(job, str(exc))
                    return False
                await self.github.remove_label(issue.repo, issue.number, cfg.working_label)
                raise
            if not created:
                logger.info("%s: already running as %s (another worker); leaving it",
                            issue.ref, task["id"])
                return None
            logger.info("%s: submitted as task %s", issue.ref, task["id"])
            tracker = await self.github.create_comment(
                issue.repo, issue.number,
                report.progress_body(task["id"], job.source, "queued", cfg.public_url),
            )
            self._starting.discard(issue.ref)
            return await self.publisher.follow_and_report(fresh, task["id"], job.source, tracker)
        finally:
            self._starting.discard(issue.ref)
            self._busy.discard(issue.ref)

    def _spec(self, job: Job, comments: list[Comment]) -> dict[str, Any]:
        issue = job.issue
        policy = next(
            (p for label, p in self.config.label_policies.items() if label in issue.labels),
            self.config.policy,
        )
        isolated = policy in self._isolated
        text = report.prompt(issue, comments, request=job.request,
                             recent=self.config.recent_comments, isolated=isolated)
        metadata = {
            "github_repo": issue.repo.full_name,
            "github_issue": str(issue.number),
            "github_issue_id": issue.node_id,
            "github_url": issue.url,
        }
        if job.request is not None:
            metadata["github_comment_id"] = job.request.node_id
        spec: dict[str, Any] = {
            "prompt": text[:MAX_PROMPT_CHARS],
            "idempotency_key": job.source,
            "session": report.session_name(issue),
            "metadata": metadata,
        }
        if policy:
            spec["policy"] = policy
        return spec

    async def _refuse(self, job: Job, reason: str) -> None:
        """The orchestrator refused the task (4xx): say why; do not take it again here."""
        cfg = self.config
        issue = job.issue
        self._refused.add(job.source)
        await self.github.create_comment(
            issue.repo, issue.number,
            f"**claude-box failed: the orchestrator refused the task: {_one_line(reason)}**"
            f"\n\n<!-- cbox:refused for:{job.source} -->",
        )
        await self.github.add_labels(issue.repo, issue.number, [cfg.failed_label])
        await self.github.remove_label(issue.repo, issue.number, cfg.working_label)
        logger.error("%s: refused by the orchestrator: %s", issue.ref, reason)

    async def _orch(self, call: Callable[[], Awaitable[T]]) -> T:
        return await self.publisher.orch(call)


def _one_line(exc: BaseException | str | None) -> str:
    text = str(exc) if exc is not None else ""
    return " ".join(text.split()) or "error"
