"""The `cbox` command line, as click commands.

`cbox.cli.main` runs the common `cbox run` without importing this module
(click and the command tree cost ~50 ms); everything else comes here. Exit
codes are listed in `cbox.cli.follow`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cbox.cli import render
from cbox.cli.blocking_client import BlockingClient
from cbox.cli.defaults import DEFAULT_SERVER, resolve_token
from cbox.cli.follow import EXIT_CLIENT, finish, follow, replay, run_task
from cbox.cli.main import GROUP_FLAGS
from cbox.cli.render import fail
from cbox.cli.webhooks import webhooks
from cbox.errors import CboxError

if TYPE_CHECKING:
    from collections.abc import Callable

    from cbox.settings import Settings


def load_settings() -> Settings:
    # Imported here: pydantic-settings costs ~100 ms, and `cbox run` never needs it.
    from pydantic import ValidationError

    from cbox.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        fail(f"bad setting {'.'.join(str(p) for p in err['loc'])}: {err['msg']}", 2)


def call(action: Callable[[], Any]) -> Any:
    """Run a client action; an error from the server or the network is one line, exit 3."""
    try:
        return action()
    except CboxError as exc:
        fail(str(exc), EXIT_CLIENT)


class DefaultGroup(click.Group):
    """`cbox "prompt"` is `cbox run "prompt"`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in GROUP_FLAGS:
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # Not click.version_option: that needs the version when the module is
    # imported, and importlib.metadata costs ~30 ms that only --version needs.
    if not value or ctx.resilient_parsing:
        return
    from cbox import __version__

    click.echo(f"cbox, version {__version__}", color=ctx.color)
    ctx.exit()


server_option = click.option(
    "--server",
    envvar="CBOX_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="Orchestrator URL (env CBOX_SERVER).",
)


def _token_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return resolve_token(value)


token_option = click.option(
    "--token",
    envvar="CBOX_API_TOKEN",
    default=None,
    callback=_token_callback,
    help="API token (env CBOX_API_TOKEN; default: the token file a local server wrote).",
)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
def cli() -> None:
    """claude-box: run Claude Code in a fresh, limited Docker container per task."""


@cli.command()
@click.argument("prompt")
@click.option("--ro", "read_only", is_flag=True, help="Mount the workspace read-only.")
@click.option("--policy", default=None, help="Policy name (see GET /policies).")
@click.option("--priority", type=int, default=None, help="Higher runs first.")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds; tightens policy.")
@click.option("--model", default=None, help="Model for Claude Code.")
@click.option("--max-turns", type=int, default=None, help="Turn limit; tightens policy.")
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Host directory to work on (default: the server's WORKSPACE_DIR).",
)
@click.option(
    "--session",
    default=None,
    help="Continue (or start) the named conversation; tasks of one session run one at a time.",
)
@click.option("--detach", "-d", is_flag=True, help="Print the task id and return.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@server_option
@token_option
def run(
    prompt: str,
    read_only: bool,
    policy: str | None,
    priority: int | None,
    timeout_s: float | None,
    model: str | None,
    max_turns: int | None,
    workspace: Path | None,
    session: str | None,
    detach: bool,
    as_json: bool,
    server: str,
    token: str | None,
) -> None:
    """Submit a task and stream it live. Ctrl-C stops the remote task."""
    spec: dict[str, Any] = {"prompt": prompt}
    if read_only:
        spec["read_only"] = True
    for key, value in (
        ("policy", policy),
        ("priority", priority),
        ("timeout_s", timeout_s),
        ("model", model),
        ("max_turns", max_turns),
        ("session", session),
    ):
        if value is not None:
            spec[key] = value
    if workspace is not None:
        spec["workspace"] = str(workspace.resolve())
    client = BlockingClient(server, token)
    finish(call(lambda: run_task(client, spec, detach=detach, as_json=as_json)))


@cli.command()
@server_option
@token_option
def status(server: str, token: str | None) -> None:
    """What is running and queued."""
    body = call(lambda: BlockingClient(server, token).request("GET", "/status"))
    out = render.console()
    if body["state"] == "idle" and not body["queued"]:
        out.print("idle: nothing running, nothing queued")
        return
    for task in body["running"]:
        out.print(f"running  {task['task_id']}  {_short(task['prompt'])}", markup=False)
    for task in body["queued"]:
        out.print(
            f"queued#{task['queue_position']} {task['task_id']}  {_short(task['prompt'])}",
            markup=False,
        )


def _short(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@cli.command()
@click.argument("task_id", required=False)
@server_option
@token_option
def stop(task_id: str | None, server: str, token: str | None) -> None:
    """Stop one task, or every running task when no ID is given."""
    client = BlockingClient(server, token)
    if task_id:
        task = call(lambda: client.stop(task_id))
        click.echo(f"stopping {task['id']} (was {task['state']})")
    else:
        body = call(lambda: client.request("POST", "/stop"))
        click.echo(body["message"])


@cli.command()
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_option
@token_option
def history(limit: int, as_json: bool, server: str, token: str | None) -> None:
    """Recent tasks, newest first."""
    tasks = call(lambda: BlockingClient(server, token).request("GET", f"/history?limit={limit}"))
    if as_json:
        import json

        click.echo(json.dumps(tasks, indent=2))
    elif not tasks:
        click.echo("no tasks yet")
    else:
        render.console().print(render.tasks_table(tasks))


@cli.command()
@click.argument("task_id")
@click.option("--follow", "-f", "follow_", is_flag=True, help="Keep following until the task ends.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@server_option
@token_option
def logs(task_id: str, follow_: bool, as_json: bool, server: str, token: str | None) -> None:
    """Replay a task's events; with -f, follow it live until it ends."""
    client = BlockingClient(server, token)

    def go() -> int:
        task = client.get(task_id)
        if follow_ or task["state"] not in ("queued", "running"):
            return follow(client, task_id, as_json=as_json, stop_on_interrupt=False)
        return replay(client, task_id, task.get("last_seq", 0), as_json=as_json)

    finish(call(go))


@cli.group(invoke_without_command=True)
@server_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def sessions(ctx: click.Context, server: str, token: str | None, as_json: bool) -> None:
    """Named conversations: list them (default), show or delete one."""
    ctx.obj = BlockingClient(server, token)
    if ctx.invoked_subcommand is not None:
        return
    body = call(lambda: ctx.obj.request("GET", "/sessions"))
    if as_json:
        import json

        click.echo(json.dumps(body["sessions"], indent=2))
    elif not body["sessions"]:
        click.echo("no sessions yet")
    else:
        render.console().print(render.sessions_table(body["sessions"]))


@sessions.command("show")
@click.argument("name")
@click.pass_obj
def sessions_show(client: BlockingClient, name: str) -> None:
    """A session and its tasks, oldest first."""
    body = call(lambda: client.request("GET", f"/sessions/{name}"))
    out = render.console()
    out.print(
        f"session {body['id']}  volume {body['volume']}  "
        f"claude session {body.get('claude_session_id') or '-'}",
        markup=False,
    )
    if body["tasks"]:
        out.print(render.tasks_table(body["tasks"]))


@sessions.command("delete")
@click.argument("name")
@click.pass_obj
def sessions_delete(client: BlockingClient, name: str) -> None:
    """Delete a session and its volume (refused while one of its tasks is active)."""
    body = call(lambda: client.request("DELETE", f"/sessions/{name}"))
    click.echo(f"deleted session {body['deleted']} (volume {body['volume']})")


@cli.command()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(verbose: bool) -> None:
    """Run the orchestrator (settings from the environment; see README)."""
    import asyncio
    import logging

    from cbox.cli.serve import serve as serve_forever

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = load_settings()
    try:
        asyncio.run(serve_forever(settings))
    except CboxError as exc:
        fail(str(exc), 1)
    except OSError as exc:
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", 1)


@cli.group()
def image() -> None:
    """The sandbox image."""


@image.command("build")
@click.option("--tag", default=None, help="Image tag (default: CBOX_IMAGE).")
@click.option(
    "--base", "base_image", default=None, help="Base image (default debian:bookworm-slim)."
)
@click.option(
    "--wheel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A local claude-agent-sdk wheel to take Claude Code from.",
)
@click.option(
    "--download-in-build",
    is_flag=True,
    help="Let the build download the wheel itself instead of pip on this host.",
)
@click.option(
    "--debootstrap",
    is_flag=True,
    help="No registry? Make the Debian base locally with debootstrap from this machine's "
    "apt sources (needs root and debootstrap).",
)
@click.option("--force", is_flag=True, help="Rebuild even when the image is up to date.")
def image_build(
    tag: str | None,
    base_image: str | None,
    wheel: Path | None,
    download_in_build: bool,
    debootstrap: bool,
    force: bool,
) -> None:
    """Build the sandbox image; does nothing when it is up to date."""
    import asyncio

    from cbox import image as images

    settings = load_settings()
    out = render.console(stderr=True)

    async def go() -> None:
        import aiodocker

        base = base_image or images.DEFAULT_BASE
        if debootstrap:
            from cbox.baseimage import debootstrap_base

            out.print("making a Debian base image with debootstrap (about a minute)")
            base, _ = await asyncio.to_thread(debootstrap_base)
        chosen = wheel
        if chosen is None and not download_in_build:
            cache = Path(os.path.expanduser("~/.cache/cbox/wheels"))
            chosen = await images.download_wheel(
                images.pinned_sdk_version(), cache, lambda m: out.print(m, markup=False)
            )
        docker = aiodocker.Docker(url=settings.docker_host)
        try:
            result = await images.build_image(
                docker,
                tag=tag or settings.image,
                base_image=base,
                wheel=chosen,
                progress=lambda m: out.print(m, markup=False, style="dim"),
                force=force,
            )
        finally:
            await docker.close()
        verb = "built" if result.built else "up to date:"
        click.echo(f"{verb} {result.tag} (Claude Code {result.claude_code_version})")

    try:
        asyncio.run(go())
    except CboxError as exc:
        fail(str(exc), 1)


@cli.command()
@server_option
def doctor(server: str) -> None:
    """Check each prerequisite and say how to fix what fails."""
    import asyncio

    from cbox.cli.doctor import run_checks

    sys.exit(asyncio.run(run_checks(load_settings(), server)))


class LazyGroup(click.Group):
    """Subcommands named by import path and imported on first use, so `cbox run`
    never pays for (or needs) an integration's dependencies such as gql."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        import importlib

        module, _, attr = self.lazy[cmd_name].partition(":")
        try:
            command: click.Command = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            fail(f"`{cmd_name}` needs: pip install 'claude-box[{cmd_name}]' ({exc})", 2)
        return command


@cli.group(
    cls=LazyGroup,
    lazy={
        "linear": "cbox.integrations.linear_cli:linear",
        "github": "cbox.integrations.github_cli:github",
    },
)
def worker() -> None:
    """Workers that feed an issue tracker's backlog to the orchestrator."""


cli.add_command(webhooks)


def main(args: list[str] | None = None) -> None:
    cli(args, prog_name="cbox")
