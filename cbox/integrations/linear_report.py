"""What the Linear worker writes: the task prompt and the result comment.

Pure functions, so their wording can change without touching the workflow.

The result comment carries a hidden marker `<!-- cbox:task_... -->` and is
created with an id derived from the task id (`result_comment_id`). The marker
lets a restarted worker see that a task's result is already posted; the fixed
id makes Linear itself refuse a second copy when two workers race to post.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from cbox.integrations.linear_api import Comment, Issue

#: Namespace for `uuid5(task id)`: any fixed UUID works, it only has to never change.
_COMMENT_NAMESPACE = uuid.UUID("6f1b9a52-3c1e-4d5e-9a57-6c0b8e2d1f40")

#: Cap on what goes into the prompt from comments and into the comment from the
#: answer; both sides have limits (prompt argv size, Linear's comment size).
MAX_COMMENT_CHARS = 2_000
MAX_ANSWER_CHARS = 20_000


def marker(task_id: str) -> str:
    return f"<!-- cbox:{task_id} -->"


def result_comment_id(task_id: str) -> str:
    return str(uuid.uuid5(_COMMENT_NAMESPACE, task_id))


def has_result(comments: Sequence[Comment], task_id: str) -> bool:
    needle = marker(task_id)
    return any(needle in c.body for c in comments)


def prompt(issue: Issue, comments: Sequence[Comment], *, recent: int = 10) -> str:
    """The task prompt: the issue and its recent discussion, our own reports left out."""
    lines = [
        f"You are working on the Linear issue {issue.identifier}: {issue.title}",
        f"URL: {issue.url}",
        f"Priority: {issue.priority}  Labels: {', '.join(issue.labels) or '-'}",
        "",
        "## Description",
        "",
        issue.description.strip() or "(no description)",
    ]
    human = [c for c in comments if "<!-- cbox:" not in c.body][-recent:]
    if human:
        lines += ["", "## Recent comments", ""]
        for comment in human:
            body = comment.body.strip()
            if len(body) > MAX_COMMENT_CHARS:
                body = body[:MAX_COMMENT_CHARS] + " …"
            lines += [f"**{comment.author or 'someone'}** ({comment.created_at}):", body, ""]
    lines += [
        "",
        "Do the work this issue asks for in the workspace. End with a short summary of",
        "what you did (or found) for the issue's comment thread.",
    ]
    return "\n".join(lines)


def succeeded(task: dict[str, Any]) -> bool:
    return task.get("state") == "completed"


def failure_reason(task: dict[str, Any]) -> str:
    state = str(task.get("state"))
    error = task.get("error")
    if error:
        return str(error)
    if task.get("exit_code") is not None:
        return f"{state}: agent exited with code {task['exit_code']}"
    return state


def comment_body(
    task: dict[str, Any], *, answer: str | None, public_url: str | None
) -> str:
    """The markdown result comment: answer first, then a small facts table."""
    task_id = str(task["id"])
    ok = succeeded(task)
    head = (
        "**claude-box finished this issue.** Moving it to review."
        if ok
        else "**claude-box could not finish this issue.** Moving it back to Todo."
    )
    parts = [head, ""]
    if not ok:
        parts += [f"**Reason:** {failure_reason(task)}", ""]
    text = (answer or "").strip()
    if text:
        if len(text) > MAX_ANSWER_CHARS:
            text = text[:MAX_ANSWER_CHARS] + "\n\n… (cut; see the task log)"
        parts += ["### Agent's answer", "", text, ""]
    link = f"`{task_id}`"
    if public_url:
        link += f" ([open]({public_url.rstrip('/')}/tasks/{task_id}))"
    rows = [
        ("Outcome", str(task.get("state"))),
        ("Duration", _duration(task.get("duration_ms"))),
        ("Turns", str(task["num_turns"]) if task.get("num_turns") is not None else "—"),
        ("Cost", f"${task['cost_usd']:.4f}" if task.get("cost_usd") is not None else "—"),
        ("Task", link),
    ]
    parts += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "", marker(task_id)]
    return "\n".join(parts)


def _duration(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "—"
    seconds = ms / 1000
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def answer_of(task: dict[str, Any], output_tail: Sequence[str]) -> str | None:
    """The agent's own result if it gave one, else the end of what it printed."""
    result = task.get("result")
    if isinstance(result, str) and result.strip():
        return result
    if result is not None and not isinstance(result, str):
        return f"```json\n{result}\n```"
    if output_tail:
        return "```\n" + "\n".join(output_tail) + "\n```"
    return None
