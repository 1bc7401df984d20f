"""Turning task events into terminal lines: colour on a TTY, plain text when piped.

rich does the colouring, but importing it costs ~30 ms of `cbox run`'s start-up,
and when the output is not a terminal rich writes nothing but the text itself.
So `EventPrinter` writes piped output directly, doing the two things rich
would do to it (drop the control codes rich strips, end each print with a
newline), and imports rich only when it colours or expands tabs. Messages and
tables (`fail`, `console`) always go through rich: they are off the hot path.
"""

from __future__ import annotations

import json
import os
import sys

from cbox.cli.sse import SseEvent

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: see cbox.cli.sse
if TYPE_CHECKING:
    from typing import Any, NoReturn, TextIO

    from rich.console import Console
    from rich.table import Table

STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "stderr": "red dim",
    "log": "dim",
    "tool": "magenta",
    "error": "red",
    "completed": "green",
}


#: What rich's `Text` removes from every string (rich.control.STRIP_CONTROL_CODES):
#: bell, backspace, vertical tab, form feed, carriage return.
_STRIP = dict.fromkeys((7, 8, 11, 12, 13))
#: Every other control character becomes "?": ESC would let agent text (or an
#: issue's text in a prompt) drive the terminal (OSC 52 clipboard writes,
#: hyperlinks, clearing the screen); C1 codes are 8-bit forms of the same.
_CONTROL: dict[int, str | None] = {
    **{c: "?" for c in (*range(32), 127, *range(128, 160)) if c not in (9, 10)},
    **_STRIP,
}


def safe(text: str) -> str:
    """Text from a task (the agent's, or a tracker's) made inert for a terminal."""
    return text.translate(_CONTROL)
#: Variables with which rich treats a stream as a terminal whatever isatty() says.
_FORCE_TERMINAL = ("FORCE_COLOR", "TTY_COMPATIBLE")


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    # highlight=False: rich would otherwise colour numbers and paths in agent text.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    console(stderr=True).print(f"cbox: {safe(message)}", markup=False)
    sys.exit(code)


def rich_would_colour(stream: TextIO) -> bool:
    """Whether rich would treat `stream` as a terminal (rich.console.Console.is_terminal)."""
    if any(name in os.environ for name in _FORCE_TERMINAL):
        return True
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


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


class EventPrinter:
    """Prints a task's events on stdout, one `write` and `flush` per event."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.out = sys.stdout
        self._console: Console | None = None
        self._plain = not rich_would_colour(self.out)

    def _rich(self) -> Console:
        if self._console is None:
            self._console = console()
        return self._console

    def __call__(self, event: SseEvent) -> None:
        if self.as_json:
            # rich would print this unstyled even on a terminal, and JSON escapes
            # every control code, so it is written as it is.
            self.out.write(
                json.dumps({"id": event.id, "type": event.type, "data": event.data}) + "\n"
            )
        else:
            line = event_line(event)
            if line is None:
                return
            text, style = line
            text = safe(text)
            if self._plain and "\t" not in text:
                self.out.write(text + "\n")
            else:
                from rich.text import Text

                self._rich().print(Text(text, style=style or ""))
        self.out.flush()


def event_line(event: SseEvent) -> tuple[str, str | None] | None:
    """The text and rich style an event is shown with; None for events not shown."""
    data = event.data
    if event.type == "output":
        line = str(data.get("line", ""))
        return line, STYLE["tool"] if line.startswith("→") else None
    if event.type == "queued":
        return f"… queued, position {data.get('position')}", STYLE["queued"]
    if event.type == "running":
        return (
            f"▶ running in container {data.get('container_id')} "
            f"({data.get('mount_mode')} workspace"
            + (f", branch {data['branch']}" if data.get("branch") else "")
            + (f", session {data['session']}" if data.get("session") else "")
            + ")",
            STYLE["running"],
        )
    if event.type in ("stderr", "log"):
        return str(data.get("line", "")), STYLE[event.type]
    if event.type == "done":
        style = STYLE["completed"] if data.get("state") == "completed" else STYLE["error"]
        return "■ " + summary_line(data), style
    return None


def tasks_table(tasks: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("ID", "STATE", "DURATION", "COST", "PROMPT"):
        table.add_column(column, no_wrap=column != "PROMPT", overflow="ellipsis")
    for task in tasks:
        cost = task.get("cost_usd")
        prompt = safe(" ".join(str(task.get("prompt", "")).split()))
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

    from rich.table import Table

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
