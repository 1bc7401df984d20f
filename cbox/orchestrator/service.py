"""TaskService: the one core behind the HTTP API, the CLI and the workers.

It takes submissions, starts each task in a fresh container when the queue
(`queue.py`) lets it, turns the agent's output into events (`tasklog.py`),
persists everything (`store.py`), and recovers after a crash: queued tasks are
queued again, running containers are adopted (their log is re-read from Docker
and resumes exactly after the last line the store has), finished ones are
finalized, and strangers are removed. What a box can reach is `networks.py`;
how a task ended is `outcome.py`; sessions and isolated copies have their own
modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbox.errors import CboxError, Conflict, DockerError, TaskNotFound
from cbox.models import (
    Event,
    Outcome,
    Session,
    Task,
    TaskSpec,
    TaskState,
    new_task_id,
)
from cbox.orchestrator.bundle import Bundler
from cbox.orchestrator.container import (
    Workspace,
    container_config,
    pool_key,
    resolve_workspace,
    task_message,
)
from cbox.orchestrator.docker import (
    DockerBackend,
    ExitInfo,
    wait_quietly,
)
from cbox.orchestrator.isolated import Isolator, check_repository
from cbox.orchestrator.listener import NullListener, TaskListener
from cbox.orchestrator.networks import TaskNetworks
from cbox.orchestrator.outcome import Ending, apply_result, decide
from cbox.orchestrator.pool import Shape, Slot, WarmPool
from cbox.orchestrator.queue import TaskQueue
from cbox.orchestrator.sessions import SessionManager, SessionMount
from cbox.orchestrator.store import Store
from cbox.orchestrator.streamjson import (
    MAX_OUTPUT_LINE_CHARS,
    CommandParser,
    ParsedEvent,
    StreamJsonParser,
)
from cbox.orchestrator.tasklog import TAIL_EVENTS, TaskLog
from cbox.orchestrator.untrusted import clip
from cbox.policies import EffectiveLimits, PolicySet, check_passthrough
from cbox.settings import Settings

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05
STORE_PAGE = 2000
BATCH = 1000
ACTIVE = (TaskState.QUEUED, TaskState.RUNNING)


@dataclass
class _Run:
    """Book-keeping of one running task."""

    task: Task
    limits: EffectiveLimits
    parser: StreamJsonParser | CommandParser
    stop_requested: bool = False
    timed_out: bool = False
    over_budget: str | None = None
    refused: str | None = None  # the model API refused the credential
    output_exceeded: str | None = None
    handle: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class Submitted:
    task: Task
    created: bool


class TaskService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        docker: DockerBackend,
        policies: PolicySet,
        listener: TaskListener | None = None,
    ) -> None:
        self.settings = settings
        self.listener: TaskListener = listener or NullListener()
        self.store = store
        self.docker = docker
        self.policies = policies
        self.networks = TaskNetworks(
            settings, docker, on_budget=self._on_budget, on_denied=self._on_denied,
            on_refused=self._on_refused,
        )
        self.pool = WarmPool(settings, docker, self.networks)
        self._warm: dict[str, Slot] = {}  # warm containers taken by tasks not yet started
        self._logs: dict[str, TaskLog] = {}
        self._tasks: dict[str, Task] = {}  # active tasks, the live copy
        self._queue = TaskQueue()
        self._positions: dict[str, int] = {}
        self._runs: dict[str, _Run] = {}
        self.sessions = SessionManager(store, docker, settings.instance)
        self.isolator = Isolator(
            settings.work_dir / "isolated", docker, settings.instance, settings.git_timeout_s
        )
        self.bundler = Bundler(
            settings.work_dir / "bundles", docker, settings.instance, settings.image,
            settings.git_timeout_s,
        )
        self._submit_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._jobs: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        settings = self.settings
        if not (settings.anthropic_api_key or settings.claude_code_oauth_token):
            log.warning(
                "no ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN is set: Claude Code tasks "
                "will fail to authenticate (custom command agents still run)"
            )
        if not settings.workspace_dir.is_dir():
            log.warning(
                "WORKSPACE_DIR %s does not exist: tasks must name a workspace under "
                "CBOX_ALLOWED_WORKSPACE_ROOTS", settings.workspace_dir,
            )
        await self.store.open()
        await self.docker.ping()
        await self.networks.start()
        await self._recover()
        await self.networks.sweep(list(self._tasks.values()))
        self._flusher = asyncio.create_task(self._flush_loop(), name="cbox-flusher")
        self._dispatch()
        self.pool.start()
        self._warm_default()

    async def close(self) -> None:
        """Stop serving. Running containers keep running; a restart adopts them."""
        self._closing = True
        for run in list(self._runs.values()):
            if run.handle is not None:
                run.handle.cancel()
        for run in list(self._runs.values()):
            if run.handle is not None:
                await wait_quietly(run.handle)
        if self._flusher is not None:
            self._flusher.cancel()
            await wait_quietly(self._flusher)
        await self._flush()
        await self.pool.close()
        await self.networks.close()
        await self.store.close()
        await self.docker.close()

    # ------------------------------------------------------------------ queries

    async def get(self, task_id: str) -> Task:
        task = self._tasks.get(task_id) or await self.store.get_task(task_id)
        if task is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        if task.state is TaskState.QUEUED:
            task = task.model_copy(update={"queue_position": self._queue.position(task_id)})
        return task

    async def list_tasks(
        self, *, states: list[TaskState] | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[list[Task], int]:
        await self._flush()
        tasks = await self.store.list_tasks(states=states, limit=limit, offset=offset)
        total = await self.store.count_tasks(states=states)
        live = [self._tasks.get(t.id, t) for t in tasks]
        return [await self.get(t.id) if t.state is TaskState.QUEUED else t for t in live], total

    def running(self) -> list[Task]:
        return [run.task for run in self._runs.values()]

    def queued(self) -> list[Task]:
        return [
            task.model_copy(update={"queue_position": n})
            for n, task in enumerate(self._queue.ordered(), 1)
        ]

    async def subscribe(
        self, task_id: str, *, after: int = 0, keepalive_s: float | None = None
    ) -> AsyncIterator[list[Event] | None]:
        """Events with seq > `after`, then live ones until `done`, in batches.

        A batch is everything already there (up to `BATCH` events), so a slow
        or late follower catches up in a few large writes instead of one per
        event. Yields None when nothing happened for `keepalive_s`, so a
        transport can send a keep-alive. Works the same for finished tasks
        (from the store).
        """
        tlog = self._logs.get(task_id)
        if tlog is None:
            if await self.store.get_task(task_id) is None:
                raise TaskNotFound(f"no task with id {task_id!r}")
            tlog = self._logs.get(task_id)
        if tlog is None:
            while True:
                page = await self.store.events(task_id, after=after, limit=STORE_PAGE)
                if page:
                    yield page
                if len(page) < STORE_PAGE:
                    return
                after = page[-1].seq
        seq = after
        wait_s = keepalive_s if keepalive_s is not None else 3600.0
        while True:
            while seq < tlog.last_seq:
                if seq < tlog.trimmed:  # behind the in-memory tail: the store has it
                    batch = await self.store.events(
                        task_id, after=seq, limit=min(STORE_PAGE, tlog.trimmed - seq)
                    )
                    if not batch:
                        raise RuntimeError(f"events {seq + 1}.. of {task_id} are not stored")
                else:
                    batch = tlog.since(seq, BATCH)
                seq = batch[-1].seq
                yield batch
            if tlog.closed:
                return
            if not await tlog.wait(seq, wait_s) and keepalive_s is not None:
                yield None

    async def bundle(self, task_id: str) -> Path:
        """A git bundle of an isolated task's branch (`bundle.py`); the caller
        removes the file's directory."""
        return await self.bundler.create(await self.get(task_id))

    async def raw_lines(self, task_id: str, *, after: int = 0, limit: int = 10_000) -> list[str]:
        await self.get(task_id)
        await self._flush()
        return await self.store.raw_lines(task_id, after=after, limit=limit)

    # ------------------------------------------------------------------ commands

    async def submit(self, spec: TaskSpec) -> Submitted:
        async with self._submit_lock:
            if spec.idempotency_key:
                for task in self._tasks.values():
                    key_matches = task.spec.idempotency_key == spec.idempotency_key
                    if key_matches and not task.state.terminal:
                        return Submitted(await self.get(task.id), created=False)
                existing = await self.store.active_with_key(spec.idempotency_key)
                # The live copy is ahead of the store: a task that just ended
                # may not be flushed as ended yet.
                if existing is not None and existing.id not in self._tasks:
                    return Submitted(await self.get(existing.id), created=False)
            limits = self.policies.resolve(spec)
            self.networks.firewall.check(limits.policy.network)
            self.listener.check(spec)
            workspace = resolve_workspace(
                spec.workspace,
                self.settings.workspace_dir,
                self.settings.allowed_workspace_roots,
            )
            if limits.isolated:
                await asyncio.to_thread(check_repository, workspace.path)
            if spec.session:
                await self.sessions.ensure(spec.session)
            slot = self._claim_warm(spec, limits, workspace)
            task = Task(
                id=slot.holder.id if slot else new_task_id(),
                spec=spec,
                workspace=str(workspace.path),
                mount_mode=limits.mount_mode,
                isolated=limits.isolated,
            )
            if slot is not None:
                slot.hand_to(task)
                self._warm[task.id] = slot
            tlog = self._new_log(task.id)
            tlog.append("start", {"task_id": task.id, "prompt": spec.prompt})
            task.last_seq = tlog.last_seq
            await self.store.insert_task(task)
            self._tasks[task.id] = task
            self._logs[task.id] = tlog
            self._queue.add(task)
            await self._flush()
        self._dispatch()
        return Submitted(await self.get(task.id), created=True)

    async def stop(self, task_id: str) -> Task:
        task = await self.get(task_id)
        if task.state.terminal:
            raise Conflict(f"task {task_id} already ended ({task.state.value})")
        if task.state is TaskState.QUEUED and self._queue.remove(task_id):
            live = self._tasks[task_id]
            live.outcome.error = "stopped while queued"
            await self._finish(live, TaskState.STOPPED)
            self._dispatch()
            return await self.get(task_id)
        run = self._runs.get(task_id)
        if run is not None and not run.stop_requested:
            run.stop_requested = True
            self._logs[task_id].append("log", {"line": "stop requested"})
            if run.task.container_id:
                self._background(
                    self.docker.stop(run.task.container_id, self.settings.stop_grace_s)
                )
        return await self.get(task_id)

    async def stop_running(self) -> list[Task]:
        return [await self.stop(run.task.id) for run in list(self._runs.values())]

    # ------------------------------------------------------------------ warm pool

    def _shape(self, limits: EffectiveLimits, workspace: Workspace) -> tuple[str, Shape]:
        image = limits.policy.image or self.settings.image
        passthrough = self._passthrough(limits)
        shape = Shape(limits=limits, workspace=workspace, image=image,
                      passthrough_env=passthrough)
        return pool_key(limits, workspace, image, passthrough), shape

    def _claim_warm(
        self, spec: TaskSpec, limits: EffectiveLimits, workspace: Workspace
    ) -> Slot | None:
        """A warm container for this task, if its shape has one; sessions and
        isolated copies mount per-task things, so they always start cold."""
        if spec.session or limits.isolated:
            return None
        return self.pool.claim(*self._shape(limits, workspace))

    def _warm_default(self) -> None:
        """Keep the default task shape (default policy, WORKSPACE_DIR) warm from the start."""
        if not self.pool.enabled:
            return
        try:
            limits = self.policies.resolve(TaskSpec(prompt="-"))
            workspace = resolve_workspace(
                None, self.settings.workspace_dir, self.settings.allowed_workspace_roots
            )
            self.networks.firewall.check(limits.policy.network)
        except CboxError:
            return  # no usable default: shapes are learnt from the tasks that come
        if not limits.isolated:
            self.pool.want(*self._shape(limits, workspace))

    # ------------------------------------------------------------------ scheduling

    def _dispatch(self) -> None:
        if self._closing:
            return
        for task in self._queue.take_ready(self.settings.max_concurrent - len(self._runs)):
            self._launch(task)
        for n, task in enumerate(self._queue.ordered(), 1):
            if self._positions.get(task.id) != n:
                self._positions[task.id] = n
                self._logs[task.id].append("queued", {"position": n})

    def _launch(self, task: Task, *, adopt: bool = False) -> None:
        try:
            limits = self.policies.resolve(task.spec)
        except CboxError as exc:
            task.outcome.error = f"policy no longer valid: {exc}"
            self._background(self._finish(task, TaskState.FAILED))
            return
        max_event = self.settings.max_event_bytes
        parser: StreamJsonParser | CommandParser = (
            CommandParser(max_event) if limits.policy.agent == "command"
            else StreamJsonParser(max_event)
        )
        run = _Run(task=task, limits=limits, parser=parser)
        self._runs[task.id] = run
        self._positions.pop(task.id, None)
        coro = self._adopt(run) if adopt else self._run(run)
        run.handle = asyncio.create_task(coro, name=f"cbox-run-{task.id}")

    def _new_log(self, task_id: str, history: list[Event] | None = None) -> TaskLog:
        return TaskLog(
            task_id, history or (), budget_bytes=self.settings.max_task_output_bytes,
            max_event_bytes=self.settings.max_event_bytes,
        )

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine we do not await, keeping a reference until it ends."""
        job = asyncio.create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    # ------------------------------------------------------------------ running

    async def _run(self, run: _Run) -> None:
        task = run.task
        tlog = self._logs[task.id]
        try:
            slot = self._warm.pop(task.id, None)
            if slot is None or not await self._start_warm(run, tlog):
                if slot is not None:
                    await self.pool.discard(slot)
                    task.container_id = task.network = task.gateway_token = None
                    task.gateway_url = task.proxy_url = None
                await self._start_cold(run, tlog)
        except (CboxError, OSError) as exc:
            task.outcome.error = str(exc)
            await self._finish(task, TaskState.FAILED)
            return
        await self._follow(run)

    async def _start_cold(self, run: _Run, tlog: TaskLog) -> None:
        """Make the task's network, doors and container, and start it."""
        task = run.task
        workspace = resolve_workspace(
            task.workspace, self.settings.workspace_dir, self.settings.allowed_workspace_roots
        )
        image = run.limits.policy.image or self.settings.image
        session: SessionMount | None = None
        if task.spec.session:
            session = await self.sessions.prepare(
                task.spec.session, task_id=task.id, uid=workspace.uid, gid=workspace.gid,
                image=image,
            )
            if session.resume_id:
                tlog.append("log", {"line": f"session {task.spec.session}: resuming "
                                    f"conversation {session.resume_id}"})
            else:
                tlog.append("log", {"line": f"session {task.spec.session}: new "
                                    "conversation"})
        if run.limits.isolated:
            task.isolation = await self.isolator.prepare(
                task.id, workspace.path, workspace.uid, workspace.gid,
                lambda line: _log(tlog, line), image=image,
            )
            assert task.isolation.copy_path is not None
            workspace = Workspace(
                path=Path(task.isolation.copy_path), uid=workspace.uid, gid=workspace.gid
            )
        await self.networks.open(task, run.limits)
        assert task.network is not None
        config = container_config(
            task=task,
            limits=run.limits,
            workspace=workspace,
            image=image,
            network=task.network,
            instance=self.settings.instance,
            gateway=self.networks.gateway_for(task),
            passthrough_env=self._passthrough(run.limits),
            stop_grace_s=self.settings.stop_grace_s,
            session=session,
            log_max_size_mb=self.settings.container_log_max_size_mb,
            log_max_files=self.settings.container_log_max_files,
        )
        task.container_id = await self.docker.create(f"cbox-{task.id}", config)
        task.state = TaskState.RUNNING
        task.started_at = time.time()
        _running(run, tlog)
        self.listener.task_event(task, "started")
        # No flush here: the flusher stores `running` within 50 ms, and a
        # crash before that finds a queued task with a container, which
        # recovery removes before running the task again.
        await self.docker.start(task.container_id)

    async def _start_warm(self, run: _Run, tlog: TaskLog) -> bool:
        """Hand the task to the warm container it took; False if that container is lost."""
        task = run.task
        assert task.container_id is not None
        self.networks.set_budget(task, run.limits)
        try:
            await self.docker.deliver(task.container_id, task_message(task, run.limits))
        except DockerError as exc:
            log.warning("warm container of %s is unusable (%s); starting a new one",
                        task.id, exc)
            return False
        task.state = TaskState.RUNNING
        task.started_at = time.time()
        _running(run, tlog, warm=True)
        self.listener.task_event(task, "started")
        return True

    async def _adopt(self, run: _Run) -> None:
        """Continue a task whose container outlived the previous orchestrator."""
        task = run.task
        try:
            await self.networks.open(task, run.limits)
        except (CboxError, OSError) as exc:
            # Fail closed: a box that cannot be confined (or reached) again is stopped.
            log.error("re-confining adopted task %s failed: %s; stopping it", task.id, exc)
            task.outcome.error = f"could not re-confine the box after a restart: {exc}"
            if task.container_id:
                with contextlib.suppress(CboxError):
                    await self.docker.stop(task.container_id, 0)
            await self._finish(task, TaskState.FAILED)
            return
        # Rebuild the parser's state from the lines already processed.
        after = 0
        while after < task.lines_consumed:
            lines = await self.store.raw_lines(task.id, after=after, limit=STORE_PAGE)
            if not lines:
                break
            for line in lines[: task.lines_consumed - after]:
                run.parser.feed(line)
            after += len(lines)
        self._logs[task.id].append("log", {"line": "orchestrator restarted; task re-adopted"})
        await self._follow(run)

    def _on_budget(self, task_id: str, reason: str) -> None:
        run = self._runs.get(task_id)
        if run is None:
            return
        run.over_budget = reason
        self._logs[task_id].append("log", {"line": reason})
        self._background(self._stop_for_budget(task_id))

    def _on_refused(self, task_id: str, reason: str) -> None:
        """A bad credential: end the task now, not after the CLI's minutes of retries."""
        run = self._runs.get(task_id)
        if run is None:
            return
        run.refused = reason
        self._logs[task_id].append("log", {"line": reason})
        self._background(self._stop_for_budget(task_id))

    async def _stop_for_budget(self, task_id: str) -> None:
        with contextlib.suppress(CboxError):
            await self.stop(task_id)

    def _on_denied(self, task_id: str, target: str, reason: str) -> None:
        tlog = self._logs.get(task_id)
        if tlog is not None:
            tlog.append("egress_denied", {"target": target, "reason": reason})
            tlog.append("log", {"line": f"egress denied: {target} ({reason})"})

    def _passthrough(self, limits: EffectiveLimits) -> dict[str, str]:
        """The variables a policy passes in, checked again now: the environment or
        the credentials may have changed since the policy was loaded."""
        environ = self.settings.host_env()
        check_passthrough(
            limits.policy, f"of policy {limits.policy.name!r}", environ,
            self.settings.credentials(),
        )
        return {n: environ[n] for n in limits.policy.env_passthrough if n in environ}

    async def _follow(self, run: _Run) -> None:
        task = run.task
        cid = task.container_id
        assert cid is not None
        tlog = self._logs[task.id]
        started = task.started_at or time.time()
        remaining = started + run.limits.timeout_s - time.time()
        reader = asyncio.create_task(self._consume(run, tlog))
        info: ExitInfo | None = None
        try:
            try:
                await asyncio.wait_for(asyncio.shield(reader), max(remaining, 0.001))
            except TimeoutError:
                run.timed_out = True
                tlog.append("log", {"line": f"timed out after {run.limits.timeout_s:g}s"})
                await self.docker.stop(cid, self.settings.stop_grace_s)
                await reader
            info = await self.docker.wait(cid)
        except DockerError as exc:
            task.outcome.error = str(exc)
            await _cancel(reader)
        except asyncio.CancelledError:
            # The orchestrator is closing: stop reading, leave the container
            # running for the next start to adopt.
            await _cancel(reader)
            raise
        await self._complete(run, info)

    async def _consume(self, run: _Run, tlog: TaskLog) -> None:
        """Turn the container's output into events, every line exactly once.

        Both streams come from one engine log stream (see
        `DockerBackend.log_lines`). Docker's follow stream can end before the
        container does; then we follow again, skipping what was consumed. Once the container has
        ended, one last read without following picks up anything left.
        """
        task = run.task
        assert task.container_id is not None
        while True:
            await self._consume_pass(run, tlog, follow=True)
            if not (await self.docker.inspect(task.container_id)).running:
                break
            log.info("log stream of %s ended early; following again", task.id)
        await self._consume_pass(run, tlog, follow=False)

    async def _consume_pass(self, run: _Run, tlog: TaskLog, *, follow: bool) -> None:
        task = run.task
        assert task.container_id is not None
        skip_out, skip_err = task.lines_consumed, task.stderr_consumed
        n_out = n_err = 0
        lines = self.docker.log_lines(
            task.container_id, follow=follow, max_line_bytes=self.settings.max_line_bytes
        )
        async for out, err in lines:
            n_out += len(out)
            n_err += len(err)
            if n_err > skip_err and err:
                err = err[max(0, len(err) - (n_err - skip_err)) :]
                task.stderr_consumed += len(err)
                tlog.agent_output([
                    ParsedEvent("stderr", {"line": clip(line, MAX_OUTPUT_LINE_CHARS)})
                    for line in err if line.strip()
                ])
            if n_out > skip_out and out:
                out = out[max(0, len(out) - (n_out - skip_out)) :]
                first = task.lines_consumed
                task.lines_consumed += len(out)
                self._emit(tlog, run.parser.feed_many(out), out, first)
            if tlog.over_budget and run.output_exceeded is None:
                self._output_exceeded(run)

    @staticmethod
    def _emit(
        tlog: TaskLog, parsed: list[ParsedEvent | str], raw: list[str], first_raw: int
    ) -> None:
        tlog.agent_output(parsed, raw, first_raw)

    def _output_exceeded(self, run: _Run) -> None:
        """End a task whose output went past its budget (see `max_task_output_bytes`).

        It is ended, not left running unrecorded: what an agent does after
        its log stops being kept could not be audited.
        """
        run.output_exceeded = (
            f"output budget exceeded: more than {self.settings.max_task_output_bytes} bytes"
        )
        if run.task.container_id:
            self._background(
                self.docker.stop(run.task.container_id, self.settings.stop_grace_s)
            )

    async def _complete(self, run: _Run, info: ExitInfo | None) -> None:
        task = run.task
        apply_result(run.parser, task.outcome)
        if task.started_at is not None and task.outcome.duration_ms is None:
            task.outcome.duration_ms = int((time.time() - task.started_at) * 1000)
        ending = Ending(
            refused=run.refused,
            over_budget=run.over_budget,
            output_exceeded=run.output_exceeded,
            stop_requested=run.stop_requested,
            timed_out=run.timed_out,
            timeout_s=run.limits.timeout_s,
            memory_mb=run.limits.memory_mb,
        )
        await self._finish(task, decide(ending, info, task.outcome))

    async def _finish(self, task: Task, state: TaskState) -> None:
        """Record the end: state, `done` event, store; then clean up the container."""
        await self.networks.close_for(task)  # its usage figures go into `done`
        self._warm.pop(task.id, None)
        tlog = self._logs[task.id]
        if task.isolation is not None and task.isolation.copy_path is not None:
            await self._collect(task, state)
        if task.spec.session and task.started_at is not None:
            await self.sessions.record(
                task.spec.session, task.id, task.outcome.claude_session_id
            )
        task.state = state
        task.finished_at = time.time()
        outcome = task.outcome
        iso = task.isolation
        tlog.append(
            "done",
            {
                "task_id": task.id,
                "exit_code": outcome.exit_code,
                "state": state.value,
                "is_error": outcome.is_error,
                "error": outcome.error,
                "duration_ms": outcome.duration_ms,
                "num_turns": outcome.num_turns,
                "cost_usd": outcome.cost_usd,
                "oom_killed": outcome.oom_killed,
                "result": outcome.result,
                "gateway_usage": outcome.gateway_usage,
                "claude_session_id": outcome.claude_session_id,
                "session": task.spec.session,
                "branch": iso.branch if iso and iso.commit else None,
                "commit": iso.commit if iso else None,
                "diffstat": iso.diffstat if iso else None,
                "isolation": iso.model_dump(mode="json", exclude={"copy_path", "uid", "gid"})
                if iso
                else None,
            },
        )
        tlog.close()
        run = self._runs.get(task.id)
        self.listener.task_event(task, "over_budget" if run and run.over_budget else state.value)
        # Out of the running set at once, so /status and /stop never see a
        # finished task; the live copy stays readable until the store has it.
        self._runs.pop(task.id, None)
        self._positions.pop(task.id, None)
        self._queue.unlock(task)
        try:
            await self._flush()
        except Exception as exc:
            # The end is recorded even so (and the container removed below):
            # a task must never stay `running` because one write failed.
            log.exception("storing the end of %s failed", task.id)
            task.state = TaskState.FAILED
            task.outcome = Outcome(
                exit_code=outcome.exit_code,
                error=clip(f"the task's end could not be stored: {exc}", 500),
            )
            with contextlib.suppress(Exception):
                await self._flush()
        finally:
            try:
                if task.container_id:
                    await self.docker.remove(task.container_id)
                await self.networks.release(task)
                await self.networks.remove(task)
            except (DockerError, CboxError) as exc:
                log.warning("could not clean up after %s: %s", task.id, exc)
            self._tasks.pop(task.id, None)
            self._logs.pop(task.id, None)
            self._dispatch()
            self.pool.kick()

    async def _collect(self, task: Task, state: TaskState) -> None:
        """Bring an isolated task's work back as branch `cbox/<task id>`."""
        iso = task.isolation
        assert iso is not None
        assert task.workspace is not None
        tlog = self._logs[task.id]
        first_line = " ".join(task.spec.prompt.split())[:72]
        message = f"cbox: {first_line}\n\nTask {task.id} ended {state.value}."
        policy_image = None
        with contextlib.suppress(CboxError):
            policy_image = self.policies.resolve(task.spec).policy.image
        await self.isolator.collect(
            task.id, Path(task.workspace), iso, message=message,
            image=policy_image or self.settings.image,
            log=lambda line: _log(tlog, line),
        )

    # ------------------------------------------------------------------ sessions

    async def list_sessions(self) -> list[Session]:
        return await self.sessions.all()

    async def get_session(self, name: str) -> tuple[Session, list[Task]]:
        session = await self.sessions.get(name)
        await self._flush()
        tasks = await self.store.session_tasks(name, limit=1000)
        return session, [self._tasks.get(t.id, t) for t in tasks]

    async def delete_session(self, name: str) -> Session:
        """Forget a session and remove its volume; refused while one of its tasks is active."""
        async with self._submit_lock:
            await self.sessions.get(name)
            active = [
                t.id for t in self._tasks.values()
                if t.spec.session == name and not t.state.terminal
            ]
            if active:
                raise Conflict(
                    f"session {name!r} has active tasks ({', '.join(active)}); stop them first"
                )
            return await self.sessions.delete(name)

    # ------------------------------------------------------------------ persistence

    async def _flush(self) -> None:
        async with self._flush_lock:
            for task_id, tlog in list(self._logs.items()):
                if not tlog.pending and not tlog.pending_raw:
                    continue
                task = self._tasks.get(task_id)
                if task is None:
                    continue
                task.last_seq = tlog.last_seq
                first_raw = tlog.pending_raw_first
                events, raw = tlog.take_pending()
                outbox = self.listener.staged(task_id)
                try:
                    await self.store.append(task, events, raw, outbox, first_raw=first_raw)
                except BaseException:
                    # Put the batch back: the next flush retries it (the
                    # listener hands out its staged rows again by itself).
                    tlog.pending[:0] = events
                    if raw:
                        tlog.pending_raw[:0] = raw
                        tlog.pending_raw_first = first_raw
                    raise
                if outbox:
                    self.listener.committed(task_id, outbox)
                if events:
                    tlog.trim(events[-1].seq)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self._flush()
            except Exception:  # keep flushing; the next round retries the rest
                log.exception("flushing events failed")

    async def _recover(self) -> None:
        containers = {c.task_id: c for c in await self.docker.managed(self.settings.instance)}
        adopt: list[Task] = []
        for state in ACTIVE:
            offset = 0
            while True:
                page = await self.store.list_tasks(states=[state], limit=500, offset=offset)
                offset += len(page)
                for task in page:
                    if task.state.terminal:
                        # Its row was invalid and repaired as failed (store.py):
                        # store the repair; such a task is never run again.
                        await self.store.update_task(task)
                        offset -= 1  # it left this state's pages
                        continue
                    events = await self._load_events(task.id)
                    tlog = self._new_log(task.id, events)
                    self._tasks[task.id] = task
                    self._logs[task.id] = tlog
                    container = containers.pop(task.id, None)
                    if state is TaskState.RUNNING and container is not None:
                        adopt.append(task)
                    elif state is TaskState.RUNNING:
                        task.outcome.error = "container lost while the orchestrator was down"
                        await self._finish(task, TaskState.FAILED)
                    else:
                        if container is not None:
                            await self.docker.remove(container.id)
                        self._queue.add(task)
                if len(page) < 500:
                    break
        for stranger in containers.values():
            log.info("removing container %s of unknown task %s", stranger.id[:12], stranger.task_id)
            await self.docker.remove(stranger.id)
        for name, task_id in (await self.docker.managed_networks(self.settings.instance)).items():
            if task_id not in self._tasks:
                await self.docker.remove_network(name)
        self._queue.restore_order()
        for task in adopt:
            self._queue.lock(task)
            self._launch(task, adopt=True)

    async def _load_events(self, task_id: str) -> list[Event]:
        """The newest part of a task's stored log: what its `TaskLog` keeps in memory."""
        return await self.store.last_events(task_id, limit=TAIL_EVENTS)


def _running(run: _Run, tlog: TaskLog, *, warm: bool = False) -> None:
    task = run.task
    assert task.container_id is not None
    running: dict[str, Any] = {
        "container_id": task.container_id[:12],
        "mount_mode": run.limits.mount_mode.value,
        "warm": warm,
    }
    if task.isolation is not None:
        running["branch"] = task.isolation.branch
    if task.spec.session:
        running["session"] = task.spec.session
    tlog.append("running", running)


def _log(tlog: TaskLog, line: str) -> None:
    tlog.append("log", {"line": line})


async def _cancel(*jobs: asyncio.Task[Any]) -> None:
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[TaskService]:
    """Build the service from settings, start it, and close it on exit."""
    from cbox.orchestrator.store import SqliteStore
    from cbox.webhooks import Webhooks

    policies = PolicySet.load(
        settings.policies_dir, environ=settings.host_env(), secrets=settings.credentials()
    )
    hooks = await Webhooks.open(settings)
    service = TaskService(
        settings, SqliteStore(settings.db_path), DockerBackend(settings.docker_host), policies,
        listener=hooks,
    )
    try:
        await service.start()
        hooks.start(service)
        try:
            yield service
        finally:
            await service.close()
    finally:
        await hooks.close()
