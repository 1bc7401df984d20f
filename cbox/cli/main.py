"""The `cbox` entry point: `cbox run` straight away, everything else through click.

`cbox --version` and a plain `cbox run [options] "prompt"` (or `cbox "prompt"`)
are handled here, without importing click or the command tree (`cbox.cli.app`),
which would cost ~50 ms (click alone ~25). The parser accepts only what it is
sure click would read the same way — known options, each in the forms click
takes, well-formed numbers, one prompt — and hands any other command line,
`--help` and every mistake to click, so help, error messages and exit codes
stay click's. `tests/test_cli.py` checks both paths build the same task.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: see cbox.cli.sse
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: The group's own flags; any other first argument that is not a command name
#: starts `cbox "prompt"`, i.e. `cbox run "prompt"`.
GROUP_FLAGS = frozenset({"-h", "--help", "--version"})
#: The group's commands (`cbox.cli.app.cli`; a test keeps the two in step).
COMMANDS = frozenset(
    {"doctor", "history", "image", "logs", "run", "serve", "sessions", "status", "stop", "webhooks",
     "worker"}
)

EXIT_INTERRUPTED = 130


def _path(value: str) -> str:
    # click.Path(file_okay=False) refuses a file and an unreadable directory: leave those
    # to click; a path that does not exist yet is fine, as with click.
    if os.path.exists(value) and not (os.path.isdir(value) and os.access(value, os.R_OK)):
        raise ValueError(value)
    return os.path.realpath(value)  # what Path.resolve() gives


#: `cbox run`'s options taking a value: the spec field and the conversion click does.
_VALUED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--policy": ("policy", str),
    "--priority": ("priority", int),
    "--timeout": ("timeout_s", float),
    "--model": ("model", str),
    "--max-turns": ("max_turns", int),
    "--session": ("session", str),
    "--workspace": ("workspace", _path),
    "--server": ("server", str),
    "--token": ("token", str),
}
_FLAGS = {"--ro": "read_only", "--detach": "detach", "-d": "detach", "--json": "as_json"}


def parse_run(args: list[str]) -> dict[str, Any] | None:
    """`cbox run`'s parameters from a command line, or None when click should read it."""
    if args and args[0] == "run":
        args = args[1:]
    elif not args or args[0] in COMMANDS or args[0] in GROUP_FLAGS:
        return None
    found: dict[str, Any] = {}
    prompts: list[str] = []
    rest = iter(args)
    for arg in rest:
        if not arg.startswith("-"):
            prompts.append(arg)
        elif arg in _FLAGS:
            found[_FLAGS[arg]] = True
        else:
            name, eq, value = arg.partition("=")
            if name not in _VALUED or not name.startswith("--"):
                return None
            if not eq:
                value = next(rest, "-")
            if not value or value.startswith("-"):
                return None  # missing or empty, or one click might read differently
            key, convert = _VALUED[name]
            try:
                found[key] = convert(value)
            except ValueError:
                return None
    if len(prompts) != 1:
        return None
    found["prompt"] = prompts[0]
    return found


def run(params: dict[str, Any]) -> None:
    """`cbox run` with parsed parameters; the same steps as `cbox.cli.app.run`."""
    from cbox.cli.blocking_client import BlockingClient
    from cbox.cli.defaults import DEFAULT_SERVER, resolve_token
    from cbox.cli.follow import EXIT_CLIENT, finish, run_task
    from cbox.errors import CboxError

    spec: dict[str, Any] = {"prompt": params["prompt"]}
    if params.get("read_only"):
        spec["read_only"] = True
    for key in ("policy", "priority", "timeout_s", "model", "max_turns", "session", "workspace"):
        if key in params:
            spec[key] = params[key]
    server = params.get("server") or os.environ.get("CBOX_SERVER") or DEFAULT_SERVER
    token = resolve_token(params.get("token") or os.environ.get("CBOX_API_TOKEN") or None)
    client = BlockingClient(server, token)
    try:
        code = run_task(
            client, spec, detach=bool(params.get("detach")), as_json=bool(params.get("as_json"))
        )
    except CboxError as exc:
        from cbox.cli.render import fail

        fail(str(exc), EXIT_CLIENT)
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")  # what click says for Ctrl-C outside `follow`
        finish(1)
    finish(code)


def main() -> None:
    try:
        if sys.argv[1:] == ["--version"]:  # what click's --version prints, without click
            from cbox import __version__

            sys.stdout.write(f"cbox, version {__version__}\n")
            return
        params = parse_run(sys.argv[1:])
        if params is not None:
            run(params)
        from cbox.cli.app import cli

        cli(prog_name="cbox")
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
