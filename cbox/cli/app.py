"""The `cbox` command line.

Exit codes of `cbox run` (and `cbox logs -f`), also documented in the README:

    0   completed            4   stopped
    1   failed               5   timed out
    2   wrong usage          3   server unreachable or API error
    130 interrupted (Ctrl-C; the remote task was stopped)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cbox import __version__
from cbox.cli import render
from cbox.cli.client import Client
from cbox.errors import CboxError, ClientError

if TYPE_CHECKING:
    from cbox.settings import Settings

EXIT = {"completed": 0, "failed": 1, "stopped": 4, "timed_out": 5}
EXIT_CLIENT = 3
EXIT_INTERRUPTED = 130
DEFAULT_SERVER = "http://127.0.0.1:8080"


def fail(message: str, code: int = 1) -> NoReturn:
    render.console(stderr=True).print(f"cbox: {message}", markup=False)
    sys.exit(code)


def load_settings() -> Settings:
    # Imported here: pydantic-settings costs ~100 ms, and `cbox run` never needs it.
    from pydantic import ValidationError

    from cbox.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        fail(f"bad setting {'.'.join(str(p) for p in err['loc'])}: {err['msg']}", 2)


GROUP_FLAGS = frozenset({"-h", "--help", "--version"})


class DefaultGroup(click.Group):
    """`cbox "prompt"` is `cbox run "prompt"`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in GROUP_FLAGS:
            args = ["run", *args]
        return super().parse_args(ctx, args)


server_option = click.option(
    "--server",
    envvar="CBOX_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="Orchestrator URL (env CBOX_SERVER).",
)
def _token_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Explicit token, else the one a local server generated (see cbox.auth)."""
    if value:
        return value
    from cbox.auth import default_token_file, read_token

    try:
        return read_token(default_token_file())
    except CboxError:
        return None


token_option = click.option(
    "--token",
    envvar="CBOX_API_TOKEN",
    default=None,
    callback=_token_callback,
    help="API token (env CBOX_API_TOKEN; default: the token file a local server wrote).",
)


def run_async(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except CboxError as exc:
        fail(str(exc), EXIT_CLIENT)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cbox")
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
    sys.exit(run_async(_run(server, token, spec, detach, as_json)))


async def _run(
    server: str, token: str | None, spec: dict[str, Any], detach: bool, as_json: bool
) -> int:
    async with Client(server, token) as client:
        task = await client.submit(spec)
        if detach:
            click.echo(task["id"])
            return 0
        return await _follow(client, task["id"], as_json=as_json, stop_on_interrupt=True)


async def _follow(client: Client, task_id: str, *, as_json: bool, stop_on_interrupt: bool) -> int:
    out = render.console()
    follow = asyncio.ensure_future(_stream(client, task_id, out, as_json))
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGINT, follow.cancel)
    try:
        return await follow
    except asyncio.CancelledError:
        if stop_on_interrupt:
            try:
                await client.stop(task_id)
                render.console(stderr=True).print(
                    f"cbox: interrupted; stopped task {task_id}", markup=False
                )
            except ClientError as exc:
                render.console(stderr=True).print(
                    f"cbox: interrupted; could not stop task {task_id}: {exc}", markup=False
                )
        return EXIT_INTERRUPTED
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _stream(client: Client, task_id: str, out: Any, as_json: bool) -> int:
    state = None
    async for event in client.events(task_id):
        render.render_event(out, event, as_json=as_json)
        if event.type == "done":
            state = event.data.get("state")
    if state is None:
        state = (await client.get(task_id))["state"]
    return EXIT.get(str(state), 1)


@cli.command()
@server_option
@token_option
def status(server: str, token: str | None) -> None:
    """What is running and queued."""

    async def go() -> None:
        async with Client(server, token) as client:
            body = await client.request("GET", "/status")
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

    run_async(go())


def _short(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@cli.command()
@click.argument("task_id", required=False)
@server_option
@token_option
def stop(task_id: str | None, server: str, token: str | None) -> None:
    """Stop one task, or every running task when no ID is given."""

    async def go() -> None:
        async with Client(server, token) as client:
            if task_id:
                task = await client.stop(task_id)
                click.echo(f"stopping {task['id']} (was {task['state']})")
            else:
                body = await client.request("POST", "/stop")
                click.echo(body["message"])

    run_async(go())


@cli.command()
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_option
@token_option
def history(limit: int, as_json: bool, server: str, token: str | None) -> None:
    """Recent tasks, newest first."""

    async def go() -> None:
        async with Client(server, token) as client:
            tasks = await client.request("GET", "/history", params={"limit": limit})
        if as_json:
            import json

            click.echo(json.dumps(tasks, indent=2))
        elif not tasks:
            click.echo("no tasks yet")
        else:
            render.console().print(render.tasks_table(tasks))

    run_async(go())


@cli.command()
@click.argument("task_id")
@click.option("--follow", "-f", is_flag=True, help="Keep following until the task ends.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@server_option
@token_option
def logs(task_id: str, follow: bool, as_json: bool, server: str, token: str | None) -> None:
    """Replay a task's events; with -f, follow it live until it ends."""

    async def go() -> int:
        async with Client(server, token) as client:
            task = await client.get(task_id)
            if follow or task["state"] not in ("queued", "running"):
                return await _follow(client, task_id, as_json=as_json, stop_on_interrupt=False)
            out = render.console()
            last = task.get("last_seq", 0)
            async for event in client.events(task_id):
                render.render_event(out, event, as_json=as_json)
                if event.id is not None and event.id >= last:
                    break
            return 0

    sys.exit(run_async(go()))


@cli.group(invoke_without_command=True)
@server_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def sessions(ctx: click.Context, server: str, token: str | None, as_json: bool) -> None:
    """Named conversations: list them (default), show or delete one."""
    ctx.obj = (server, token)
    if ctx.invoked_subcommand is not None:
        return

    async def go() -> None:
        async with Client(server, token) as client:
            body = await client.request("GET", "/sessions")
        if as_json:
            import json

            click.echo(json.dumps(body["sessions"], indent=2))
        elif not body["sessions"]:
            click.echo("no sessions yet")
        else:
            render.console().print(render.sessions_table(body["sessions"]))

    run_async(go())


@sessions.command("show")
@click.argument("name")
@click.pass_obj
def sessions_show(obj: tuple[str, str | None], name: str) -> None:
    """A session and its tasks, oldest first."""

    async def go() -> None:
        async with Client(*obj) as client:
            body = await client.request("GET", f"/sessions/{name}")
        out = render.console()
        out.print(
            f"session {body['id']}  volume {body['volume']}  "
            f"claude session {body.get('claude_session_id') or '-'}",
            markup=False,
        )
        if body["tasks"]:
            out.print(render.tasks_table(body["tasks"]))

    run_async(go())


@sessions.command("delete")
@click.argument("name")
@click.pass_obj
def sessions_delete(obj: tuple[str, str | None], name: str) -> None:
    """Delete a session and its volume (refused while one of its tasks is active)."""

    async def go() -> None:
        async with Client(*obj) as client:
            body = await client.request("DELETE", f"/sessions/{name}")
        click.echo(f"deleted session {body['deleted']} (volume {body['volume']})")

    run_async(go())


@cli.command()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(verbose: bool) -> None:
    """Run the orchestrator (settings from the environment; see README)."""
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


@cli.group(cls=LazyGroup, lazy={"linear": "cbox.integrations.linear_cli:linear"})
def worker() -> None:
    """Workers that feed an issue tracker's backlog to the orchestrator."""


def main() -> None:
    try:
        cli(prog_name="cbox")
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
