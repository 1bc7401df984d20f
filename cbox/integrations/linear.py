"""The Linear worker: feeds a team's labelled backlog to the orchestrator.

One issue's life, as the worker drives it:

    Backlog/Todo (+label) ──claim──▶ In Progress ──task runs──▶ result comment
        ▲                                                        │
        └──────── failure (reason in the comment) ◀──────────────┴──▶ In Review

Intake is the team's issues in `backlog`/`unstarted`-type states carrying the
label, highest priority first (Linear's 1 urgent .. 4 low, 0 "none" last),
oldest first within a priority. States are found by name ("In Progress",
"In Review", "Todo") and, failing that, by type (the first `started` state;
a `started` state whose name mentions review, else the issue stays put; the
first `unstarted` state).

Never the same issue twice at once. Linear has no compare-and-set, so two
workers can both see an issue in Todo and both claim it. The orchestrator
arbitrates: every task carries `idempotency_key = <Linear issue id>`, and
while a task with that key is active a second submission gets the existing
task back (HTTP 200, not 202). The worker that gets 200 walks away; only the
one that created the task follows it and reports.

Exactly one result comment. The comment is created with an id derived from
the task id and carries the marker `<!-- cbox:task_... -->`. Before posting, the
worker looks for the marker; if two workers still race, Linear refuses the
second comment with the same id, and the loser checks the marker again.

Restarts. A worker may die (or be stopped) while its issue is In Progress;
the task lives on in the orchestrator. A *recovery pass* runs when a worker
starts (and, in daemon mode, before every poll): for each labelled issue in
the In Progress state that this process is not handling itself, it finds the
issue's newest task by metadata (`linear_issue_id`) among the orchestrator's
most recent tasks, and:

- task still active: leaves it; its worker reports it, or, if that worker is
  dead, a recovery pass after the task ends does (following it here would
  hold a slot and duplicate a live worker's work);
- task finished, no result comment for it: posts the comment once, then
  moves the issue (only if it is still In Progress: a human's move wins);
- task finished and already reported: leaves the issue alone (a human may
  have moved it back to In Progress on purpose);
- no task at all: the worker died between the claim and the submission, or a
  human started the issue by hand; it is left alone and a warning says so.
  Move it back to Todo to have it taken again.

See docs/linear-worker.md for the operator's view.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cbox.cli.client import Client
from cbox.errors import ClientError, ConfigError, LinearError
from cbox.integrations import linear_report as report
from cbox.integrations.follow import TERMINAL, follow_task, logged, shutdown
from cbox.integrations.linear_api import INTAKE_STATE_TYPES, Comment, Issue, LinearApi
from cbox.integrations.linear_config import Board, WorkerConfig, pick_states
from cbox.models import MAX_PROMPT_CHARS

logger = logging.getLogger("cbox.worker.linear")

T = TypeVar("T")

#: How far back recovery looks for an issue's task (newest first, pages of 500).
RECOVERY_TASK_SCAN = 2_000


class LinearWorker:
    """Takes issues, runs them as tasks, reports back. See the module docstring."""

    def __init__(self, config: WorkerConfig, linear: LinearApi, client: Client) -> None:
        self.config = config
        self.linear = linear
        self.client = client
        self.board: Board | None = None
        self._refused: set[str] = set()
        self._active: set[str] = set()
        self._starting: set[str] = set()
        self._warned: set[str] = set()

    # ---------------------------------------------------------------- start-up

    async def prepare(self, *, check_orchestrator: bool = True) -> Board:
        """Check key, team, label (and the orchestrator and policies); ConfigError if wrong."""
        cfg = self.config
        who = await self.linear.viewer_name()
        if not cfg.team:
            raise ConfigError("no Linear team: set LINEAR_TEAM_ID or pass --team")
        team = await self.linear.find_team(cfg.team)
        if team is None:
            raise ConfigError(f"Linear team {cfg.team!r} not found (LINEAR_TEAM_ID / --team)")
        label = await self.linear.find_label(cfg.label, team.id)
        if label is None:
            raise ConfigError(
                f"Linear label {cfg.label!r} not found in team {team.key} or the workspace"
            )
        in_progress, in_review, todo = pick_states(team)
        self.board = Board(team, label, in_progress, in_review, todo)
        if check_orchestrator:
            await self._check_policies()
        logger.info(
            "Linear as %s, team %s, label %r → orchestrator %s", who, team.key, label.name,
            cfg.server,
        )
        return self.board

    async def _check_policies(self) -> None:
        body = await self._orch(lambda: self.client.request("GET", "/policies"))
        known = {p["name"] for p in body["policies"]}
        known |= {a for p in body["policies"] for a in p.get("aliases") or []}
        wanted = {self.config.policy} if self.config.policy else set()
        for name in wanted - known:
            raise ConfigError(f"the orchestrator has no policy {name!r} (--policy)")
        for label, name in self.config.label_policies.items():
            if name not in known:
                logger.warning("label %r maps to unknown policy %r", label, name)

    def _board(self) -> Board:
        if self.board is None:
            raise RuntimeError("call prepare() first")
        return self.board

    # ------------------------------------------------------------------ intake

    async def candidates(self) -> list[Issue]:
        """What would be taken, in the order it would be taken."""
        board = self._board()
        issues = await self.linear.issues(
            board.team.id, board.label.id, state_types=INTAKE_STATE_TYPES
        )
        return sorted(issues, key=lambda i: i.sort_key)

    async def run_once(self) -> int:
        """Recover, then take one issue. Exit code: 0 done or nothing to do, 1 failed."""
        await self.recover()
        for issue in await self.candidates():
            outcome = await self.handle(issue)
            if outcome is not None:
                return 0 if outcome else 1
        logger.info("nothing to do: no issue in Backlog/Todo with label %r", self.config.label)
        return 0

    async def run_daemon(self, stop: asyncio.Event) -> None:
        """Keep up to `max_parallel` issues running until `stop` is set."""
        running: dict[str, asyncio.Task[bool | None]] = {}
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            await logged(self.recover(), None, logger)
            free = self.config.max_parallel - len(running)
            if free > 0:
                issues = await logged(self.candidates(), [], logger)
                for issue in issues:
                    if free == 0:
                        break
                    if issue.id in running or issue.id in self._refused:
                        continue
                    running[issue.id] = asyncio.create_task(self.handle(issue))
                    free -= 1
            waiters: set[asyncio.Future[Any]] = {stopping, *running.values()}
            await asyncio.wait(
                waiters, timeout=self.config.interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            for issue_id, job in list(running.items()):
                if job.done():
                    del running[issue_id]
                    if job.cancelled():
                        continue
                    exc = job.exception()
                    if exc is not None:
                        logger.error("issue %s: %s", issue_id, _one_line(exc))
        stopping.cancel()
        await shutdown(running, self._starting)

    # ------------------------------------------------------------- one issue

    async def handle(self, issue: Issue) -> bool | None:
        """Claim, run and report one issue. None when it was not ours to take."""
        board = self._board()
        self._starting.add(issue.id)
        try:
            fresh = await self.linear.issue(issue.id)
            if fresh.state.type not in INTAKE_STATE_TYPES:
                logger.info("%s: already %s; skipping", issue.identifier, fresh.state.name)
                return None
            await self.linear.move(issue.id, board.in_progress.id)
            logger.info("%s: claimed (%s)", issue.identifier, board.in_progress.name)
            comments = await self.linear.comments(issue.id)
            spec = self._spec(fresh, comments)
            try:
                task, created = await self._orch(lambda: self.client.submit_keyed(spec))
            except ClientError as exc:
                if exc.status is not None and 400 <= exc.status < 500:
                    await self._refuse(fresh, str(exc))
                    return False
                # Unreachable for too long: un-claim, so the issue is not stranded.
                await self.linear.move(issue.id, fresh.state.id)
                raise
        finally:
            self._starting.discard(issue.id)
        if not created:
            logger.info(
                "%s: already running as %s (another worker); leaving it",
                issue.identifier, task["id"],
            )
            return None
        logger.info("%s: submitted as task %s", issue.identifier, task["id"])
        return await self._follow_and_report(fresh, task["id"])

    def _spec(self, issue: Issue, comments: list[Comment]) -> dict[str, Any]:
        text = report.prompt(issue, comments, recent=self.config.recent_comments)
        spec: dict[str, Any] = {
            "prompt": text[:MAX_PROMPT_CHARS],
            "idempotency_key": issue.id,
            "metadata": {
                "linear_issue": issue.identifier,
                "linear_issue_id": issue.id,
                "linear_url": issue.url,
            },
        }
        policy = next(
            (p for label, p in self.config.label_policies.items() if label in issue.labels),
            self.config.policy,
        )
        if policy:
            spec["policy"] = policy
        return spec

    async def _refuse(self, issue: Issue, reason: str) -> None:
        """The orchestrator refused the submission (4xx): say why, hand the issue back,
        and do not take it again in this process (it would be refused again)."""
        board = self._board()
        self._refused.add(issue.id)
        await self.linear.create_comment(
            issue.id,
            f"**claude-box could not start this issue.** Moving it back to Todo.\n\n"
            f"**Reason:** {reason}",
            report.result_comment_id(f"refused:{issue.id}:{time.time()}"),
        )
        await self.linear.move(issue.id, board.todo.id)
        logger.error("%s: refused by the orchestrator: %s", issue.identifier, reason)

    async def _follow_and_report(self, issue: Issue, task_id: str) -> bool:
        self._active.add(issue.id)
        try:
            task, tail = await self._follow(task_id)
            return await self._report(issue, task, tail)
        finally:
            self._active.discard(issue.id)

    async def _follow(self, task_id: str) -> tuple[dict[str, Any], list[str]]:
        return await follow_task(self.client, task_id, wait_s=self.config.orchestrator_wait_s)

    async def _report(self, issue: Issue, task: dict[str, Any], tail: list[str]) -> bool:
        """Post the result comment once, then move the issue if it is still ours."""
        board = self._board()
        task_id = str(task["id"])
        ok = report.succeeded(task)
        if not report.has_result(await self.linear.comments(issue.id), task_id):
            body = report.comment_body(
                task, answer=report.answer_of(task, tail), public_url=self.config.public_url
            )
            try:
                await self.linear.create_comment(
                    issue.id, body, report.result_comment_id(task_id)
                )
            except LinearError:
                if not report.has_result(await self.linear.comments(issue.id), task_id):
                    raise
                logger.info("%s: result of %s already posted", issue.identifier, task_id)
        target = board.in_review if ok else board.todo
        current = await self.linear.issue(issue.id)
        if target is not None and current.state.id == board.in_progress.id:
            await self.linear.move(issue.id, target.id)
        where = target.name if target is not None else current.state.name
        logger.info("%s: task %s %s → %s", issue.identifier, task_id, task["state"], where)
        return ok

    # --------------------------------------------------------------- recovery

    async def recover(self) -> None:
        """Finish what a dead worker left In Progress (rules in the module docstring)."""
        board = self._board()
        stranded = await self.linear.issues(
            board.team.id, board.label.id, state_id=board.in_progress.id
        )
        stranded = [i for i in stranded if i.id not in self._active | self._starting]
        if not stranded:
            return
        newest = await self._tasks_by_issue({i.id for i in stranded})
        for issue in stranded:
            task = newest.get(issue.id)
            if task is None:
                if issue.id not in self._warned:
                    self._warned.add(issue.id)
                    logger.warning(
                        "%s is In Progress but has no claude-box task; leaving it "
                        "(move it back to Todo to have it taken again)", issue.identifier,
                    )
                continue
            if task["state"] not in TERMINAL or report.has_result(
                await self.linear.comments(issue.id), task["id"]
            ):
                continue
            logger.info("%s: recovering task %s (%s)", issue.identifier, task["id"], task["state"])
            await self._follow_and_report(issue, task["id"])

    async def _tasks_by_issue(self, issue_ids: set[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for offset in range(0, RECOVERY_TASK_SCAN, 500):
            page = await self._orch(_lister(self.client, offset))
            for task in page["tasks"]:
                issue_id = (task.get("metadata") or {}).get("linear_issue_id")
                if issue_id in issue_ids and issue_id not in found:
                    found[issue_id] = task
            if offset + 500 >= page["total"] or len(found) == len(issue_ids):
                break
        return found

    # ---------------------------------------------------------------- helpers

    async def _orch(self, call: Callable[[], Awaitable[T]]) -> T:
        """One orchestrator call, retried with backoff while it is unreachable or 5xx."""
        deadline = time.monotonic() + self.config.orchestrator_wait_s
        delay_s = 0.5
        while True:
            try:
                return await call()
            except ClientError as exc:
                transient = exc.status is None or exc.status >= 500
                if not transient or time.monotonic() + delay_s > deadline:
                    raise
                logger.warning("orchestrator: %s; retrying in %.1fs", _one_line(exc), delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(15.0, delay_s * 2)


def _lister(client: Client, offset: int) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await client.request("GET", "/tasks", params={"limit": 500, "offset": offset})

    return call


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__
