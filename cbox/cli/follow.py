"""Submitting a task and following its events: the body of `cbox run` and `cbox logs`.

Exit codes (also in the README):

    0   completed            4   stopped
    1   failed               5   timed out
    2   wrong usage          3   server unreachable or API error
    130 interrupted (Ctrl-C; the remote task was stopped)

Once the outcome is printed the process ends with `finish`: flush, then
`os._exit`. Nothing is left to clean up by then (one socket, closed), and the
interpreter's own teardown was a visible part of a short task's wall time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from cbox.cli.blocking_client import BlockingClient
from cbox.cli.render import EventPrinter, console
from cbox.errors import ClientError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: see cbox.cli.sse
if TYPE_CHECKING:
    from typing import Any, NoReturn

EXIT = {"completed": 0, "failed": 1, "stopped": 4, "timed_out": 5}
EXIT_CLIENT = 3
EXIT_INTERRUPTED = 130


def run_task(client: BlockingClient, spec: dict[str, Any], *, detach: bool, as_json: bool) -> int:
    task = client.submit(spec)
    if detach:
        sys.stdout.write(task["id"] + "\n")
        return 0
    return follow(client, task["id"], as_json=as_json, stop_on_interrupt=True)


def follow(client: BlockingClient, task_id: str, *, as_json: bool, stop_on_interrupt: bool) -> int:
    """Print the task's events until `done`; the exit code of its outcome.

    Ctrl-C (a `KeyboardInterrupt` out of the blocking read) stops the remote
    task when `stop_on_interrupt`; a second Ctrl-C while stopping is ignored.
    """
    printer = EventPrinter(as_json=as_json)
    # Even when started with SIGINT ignored (`cbox run ... &` in a script), as the
    # asyncio client's handler did.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        state = None
        for event in client.events(task_id):
            printer(event)
            if event.type == "done":
                state = event.data.get("state")
        if state is None:
            state = client.get(task_id)["state"]
        return EXIT.get(str(state), 1)
    except KeyboardInterrupt:
        if stop_on_interrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                client.stop(task_id)
                message = f"cbox: interrupted; stopped task {task_id}"
            except ClientError as exc:
                message = f"cbox: interrupted; could not stop task {task_id}: {exc}"
            console(stderr=True).print(message, markup=False)
        return EXIT_INTERRUPTED


def replay(client: BlockingClient, task_id: str, last_seq: int, *, as_json: bool) -> int:
    """Print an active task's events up to `last_seq`, without following it."""
    printer = EventPrinter(as_json=as_json)
    for event in client.events(task_id):
        printer(event)
        if event.id is not None and event.id >= last_seq:
            break
    return 0


def finish(code: int) -> NoReturn:
    """Flush and end the process now, skipping the interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)
