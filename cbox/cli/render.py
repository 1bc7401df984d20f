"""Turning task events into terminal lines: colour on a TTY, plain text when piped."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cbox.cli.client import SseEvent

STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "stderr": "red dim",
    "log": "dim",
    "tool": "magenta",
    "error": "red",
    "completed": "green",
}


def console(stderr: bool = False) -> Console:
    # highlight=False: rich would otherwise colour numbers and paths in agent text.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def format_duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def summary_line(done: dict[str, Any]) -> str:
    parts = [str(done.get("state", "?"))]
    parts.append(format_duration(done.get("duration_ms")))
    if done.get("num_turns") is not None:
        parts.append(f"{done['num_turns']} turns")
    if done.get("cost_usd") is not None:
        parts.append(f"${done['cost_usd']:.4f}")
    if done.get("exit_code") is not None:
        parts.append(f"exit {done['exit_code']}")
    if done.get("branch") and done.get("commit"):
        iso = done.get("isolation") or {}
        parts.append(
            f"branch {done['branch']} ({str(done['commit'])[:12]}, "
            f"{iso.get('files_changed', '?')} files, +{iso.get('insertions', 0)} "
            f"-{iso.get('deletions', 0)})"
        )
    elif (done.get("isolation") or {}).get("empty"):
        parts.append("no change, no branch")
    line = " · ".join(parts)
    if done.get("error") and done.get("state") != "completed":
        line += f" — {done['error']}"
    return line


def render_event(out: Console, event: SseEvent, *, as_json: bool) -> None:
    if as_json:
        out.out(json.dumps({"id": event.id, "type": event.type, "data": event.data}))
        return
    data = event.data
    if event.type == "output":
        line = str(data.get("line", ""))
        style = STYLE["tool"] if line.startswith("→") else None
        out.print(Text(line, style=style or ""))
    elif event.type == "queued":
        out.print(Text(f"… queued, position {data.get('position')}", style=STYLE["queued"]))
    elif event.type == "running":
        out.print(
            Text(
                f"▶ running in container {data.get('container_id')} "
                f"({data.get('mount_mode')} workspace"
                + (f", branch {data['branch']}" if data.get("branch") else "")
                + (f", session {data['session']}" if data.get("session") else "")
                + ")",
                style=STYLE["running"],
            )
        )
    elif event.type in ("stderr", "log"):
        out.print(Text(str(data.get("line", "")), style=STYLE[event.type]))
    elif event.type == "done":
        state = data.get("state")
        style = STYLE["completed"] if state == "completed" else STYLE["error"]
        out.print(Text("■ " + summary_line(data), style=style))


def tasks_table(tasks: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("ID", "STATE", "DURATION", "COST", "PROMPT"):
        table.add_column(column, no_wrap=column != "PROMPT", overflow="ellipsis")
    for task in tasks:
        cost = task.get("cost_usd")
        prompt = " ".join(str(task.get("prompt", "")).split())
        table.add_row(
            task["id"],
            task["state"],
            format_duration(task.get("duration_ms")),
            f"${cost:.4f}" if cost is not None else "-",
            prompt[:80],
        )
    return table


def sessions_table(sessions: list[dict[str, Any]]) -> Table:
    import datetime

    table = Table(box=None, pad_edge=False, show_edge=False)
    # Names and ids are what users copy into the next command: never cut them.
    table.add_column("NAME", overflow="fold")
    table.add_column("LAST TASK", overflow="fold", min_width=len("task_") + 20)
    table.add_column("UPDATED", no_wrap=True)
    table.add_column("VOLUME", overflow="ellipsis", no_wrap=True)
    for session in sessions:
        updated = datetime.datetime.fromtimestamp(session["updated_at"]).strftime(
            "%Y-%m-%d %H:%M"
        )
        table.add_row(
            session["id"], session.get("last_task_id") or "-", updated, session["volume"]
        )
    return table
