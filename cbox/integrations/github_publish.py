"""The GitHub worker's second half: follow a task, then report it where it belongs.

- read-only and `rw` tasks: the answer goes into the tracking comment;
- isolated tasks: the branch `cbox/<task>` comes from the orchestrator as a
  bundle and is pushed with the worker's credential (`github_push.py`), then a
  draft pull request says `Closes #N`; the tracking comment links to it. A
  task that changed nothing opens no PR and says so;
- failures: the tracking comment starts with the reason, `claude-working`
  becomes `claude-failed`, nothing is pushed.

Also the recovery pass for tasks whose worker died (see `github.py`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from cbox.cli.client import Client, SseEvent
from cbox.errors import CboxError, ClientError, GitHubError
from cbox.integrations import github_report as report
from cbox.integrations.follow import TERMINAL, follow_task, lost_task
from cbox.integrations.github_api import Comment, GitHubApi, Issue, Repo, RepoInfo
from cbox.integrations.github_config import WorkerConfig
from cbox.integrations.github_push import push_bundle

logger = logging.getLogger("cbox.worker.github")

T = TypeVar("T")
MAX_BUNDLE_BYTES = 2 * 1024**3


class Publisher:
    def __init__(self, config: WorkerConfig, github: GitHubApi, client: Client) -> None:
        self.config = config
        self.github = github
        self.client = client
        self.repos: dict[Repo, RepoInfo] = {}
        self._warned: set[str] = set()
        self.me: str | None = None  # our login, set by the worker's prepare()

    # ----------------------------------------------------------------- follow

    async def follow_and_report(
        self, issue: Issue, task_id: str, source: str, tracker: Comment
    ) -> bool:
        task, tail = await self._follow(task_id, issue, source, tracker)
        return await self.report(issue, task, tail, source, tracker)

    async def _follow(
        self, task_id: str, issue: Issue, source: str, tracker: Comment
    ) -> tuple[dict[str, Any], list[str]]:
        """Follow the task to its end; the tracking comment says "running" once it starts."""
        said_running = False

        async def on_event(event: SseEvent) -> None:
            nonlocal said_running
            if event.type == "running" and not said_running:
                said_running = True
                await self.github.update_comment(
                    issue.repo, tracker.id,
                    report.progress_body(task_id, source, "running", self.config.public_url),
                )

        return await follow_task(
            self.client, task_id, wait_s=self.config.orchestrator_wait_s, on_event=on_event
        )

    # ----------------------------------------------------------------- report

    async def report(
        self, issue: Issue, task: dict[str, Any], tail: list[str], source: str,
        tracker: Comment | None,
    ) -> bool:
        cfg = self.config
        answer = report.answer_of(task, tail)
        ok = report.succeeded(task)
        pull_url: str | None = None
        note: str | None = None
        iso = task.get("isolation") or {}
        if ok and task.get("isolated") and iso.get("commit"):
            try:
                pull_url = await self._publish(issue, task, answer)
            except CboxError as exc:
                note = f"the work is on the orchestrator's branch {iso.get('branch')}, but " \
                       f"publishing it failed: {exc}"
                logger.error("%s: %s", issue.ref, note)
        body = report.done_body(task, source, answer=answer, public_url=cfg.public_url,
                                pull_url=pull_url, note=note)
        if tracker is None:
            await self.github.create_comment(issue.repo, issue.number, body)
        else:
            await self.github.update_comment(issue.repo, tracker.id, body)
        ok = ok and note is None
        if ok:
            await self.github.remove_label(issue.repo, issue.number, cfg.label)
            await self.github.remove_label(issue.repo, issue.number, cfg.failed_label)
        else:
            await self.github.add_labels(issue.repo, issue.number, [cfg.failed_label])
        await self.github.remove_label(issue.repo, issue.number, cfg.working_label)
        logger.info("%s: task %s %s%s", issue.ref, task["id"], task["state"],
                    f" → {pull_url}" if pull_url else "")
        return ok

    async def _publish(self, issue: Issue, task: dict[str, Any], answer: str | None) -> str:
        """Push the task's branch and open (or find) its draft pull request."""
        iso = task["isolation"]
        branch = str(iso["branch"])
        info = self.repos.get(issue.repo) or await self.github.repo(issue.repo)
        existing = await self.github.find_pull(issue.repo, branch)
        if existing is not None:
            return existing
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="cbox-bundle-"))
        try:
            bundle = scratch / "task.bundle"
            await self.orch(lambda: self.client.download(
                f"/tasks/{task['id']}/bundle", bundle, max_bytes=MAX_BUNDLE_BYTES))
            await push_bundle(bundle, branch, str(iso["commit"]), info.clone_url,
                              await self.github.source.token())
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        logger.info("%s: pushed %s (%s)", issue.ref, branch, str(iso["commit"])[:12])
        try:
            return await self.github.create_pull(
                issue.repo, title=f"{issue.title} (#{issue.number})"[:250], head=branch,
                base=info.default_branch,
                body=report.pull_body(issue, task, answer=answer,
                                      public_url=self.config.public_url),
            )
        except GitHubError as exc:
            # 422: another worker (a recovery pass) opened it a moment ago.
            found = await self.github.find_pull(issue.repo, branch) if exc.status == 422 else None
            if found is None:
                raise
            return found

    # --------------------------------------------------------------- recovery

    async def recover(self, busy: set[str]) -> None:
        """Finish reports of ended tasks on issues still labelled working (not ours)."""
        for repo in self.repos:
            for issue in await self.github.open_issues(repo, self.config.working_label):
                if issue.ref in busy:
                    continue
                comments = await self.github.comments(repo, issue.number)
                trackers = report.tracking(comments, self.me or "")
                if not trackers:
                    if issue.ref not in self._warned:
                        self._warned.add(issue.ref)
                        logger.warning("%s is labelled %s but has no tracking comment; "
                                       "leaving it (remove the label to have it taken again)",
                                       issue.ref, self.config.working_label)
                    continue
                last = trackers[-1]
                if last.state in report.FINAL_STATES:
                    continue
                try:
                    task = await self.orch(lambda t=last.task_id: self.client.get(t))  # type: ignore[misc]
                except ClientError as exc:
                    if exc.status != 404:
                        raise
                    task = lost_task(last.task_id)
                if task["state"] not in TERMINAL:
                    continue
                meta = task.get("metadata") or {}
                if "metadata" in task and (meta.get("github_issue_id") != issue.node_id
                                           or meta.get("github_repo") != repo.full_name):
                    logger.warning("%s: tracking comment names task %s of another issue; "
                                   "ignoring it", issue.ref, task["id"])
                    continue
                logger.info("%s: recovering task %s (%s)", issue.ref, task["id"], task["state"])
                busy.add(issue.ref)
                try:
                    await self.report(issue, task, [], last.source, last.comment)
                finally:
                    busy.discard(issue.ref)

    # ---------------------------------------------------------------- helpers

    async def orch(self, call: Callable[[], Awaitable[T]]) -> T:
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
                logger.warning("orchestrator: %s; retrying in %.1fs", exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(15.0, delay_s * 2)


