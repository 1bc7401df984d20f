"""How a task ended: from the container's exit, the agent's result and our own flags.

Pure functions, so the rules read in one place: a credential the model API
refused fails the task whatever else happened; a stop or a spent budget wins
over anything the agent said, then the timeout, then an engine failure, then
an OOM kill; only an exit code of 0 with no `is_error` is `completed`.
Claude Code's success is `result.is_error`, not `result.subtype`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cbox.models import Outcome, TaskState
from cbox.orchestrator.docker import ExitInfo
from cbox.orchestrator.streamjson import CommandParser, StreamJsonParser


@dataclass(frozen=True, slots=True)
class Ending:
    """What the orchestrator itself knows about why a container stopped."""

    over_budget: str | None
    stop_requested: bool
    timed_out: bool
    timeout_s: float
    memory_mb: int
    refused: str | None = None
    #: Why the task's output was cut off (`max_task_output_bytes`); ends it `failed`.
    output_exceeded: str | None = None


def apply_result(parser: StreamJsonParser | CommandParser, outcome: Outcome) -> None:
    """Copy what the agent reported into the outcome."""
    if isinstance(parser, CommandParser):
        if parser.result is not None:
            outcome.result = parser.result
        return
    outcome.claude_session_id = parser.session_id
    result = parser.result
    if result is None:
        return  # killed runs print no result line
    # Every value here was validated by `report.ResultReport` at the parser.
    outcome.is_error = bool(result.is_error)
    outcome.result = result.result
    outcome.cost_usd = result.total_cost_usd
    outcome.usage = result.usage
    outcome.num_turns = result.num_turns
    outcome.duration_ms = result.duration_ms
    outcome.dropped = [f"result.{k}: {v}" for k, v in parser.dropped.items()]
    if outcome.is_error and not outcome.result and result.errors:
        outcome.error = "; ".join(result.errors)[:500]


def decide(ending: Ending, info: ExitInfo | None, outcome: Outcome) -> TaskState:
    """The final state; fills `outcome.exit_code`, `oom_killed` and `error` on the way."""
    if info is not None:
        outcome.exit_code = info.exit_code
        outcome.oom_killed = info.oom_killed
    if ending.refused:
        outcome.error = ending.refused
        return TaskState.FAILED
    if ending.over_budget:
        outcome.error = ending.over_budget
        return TaskState.STOPPED
    if ending.output_exceeded:
        outcome.error = ending.output_exceeded
        return TaskState.FAILED
    if ending.stop_requested:
        outcome.error = outcome.error or "stopped by request"
        return TaskState.STOPPED
    if ending.timed_out:
        outcome.error = f"timed out after {ending.timeout_s:g}s"
        return TaskState.TIMED_OUT
    if info is None:
        return TaskState.FAILED  # the engine failed us; the error is already recorded
    if outcome.oom_killed:
        outcome.error = f"out of memory: the container hit its {ending.memory_mb} MB limit"
        return TaskState.FAILED
    if outcome.exit_code == 0 and not outcome.is_error:
        return TaskState.COMPLETED
    if not outcome.error:
        outcome.error = (
            str(outcome.result)[:500]
            if outcome.is_error and outcome.result
            else f"agent exited with code {outcome.exit_code}"
        )
    return TaskState.FAILED
