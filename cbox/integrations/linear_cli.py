"""`cbox worker linear`: the command line of the Linear worker.

Settings come from options, each with an environment variable (click's
`envvar`), so nothing here reads `os.environ`. `LINEAR_API_KEY` is accepted
only from the environment (a hidden option), to keep keys out of shell history
and `ps`.

Exit codes: 0 done (or nothing to do, or a daemon stopped by SIGTERM/SIGINT);
1 the one issue's task failed (the issue went back to Todo); 2 bad
configuration (key, team, label, policy), always as one line on stderr; 3
Linear or the orchestrator could not be reached.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click
from pydantic import ValidationError

from cbox.cli.client import Client
from cbox.cli.defaults import resolve_token
from cbox.errors import CboxError, ConfigError
from cbox.integrations.follow import EXIT_CONFIG, EXIT_UNREACHABLE, label_policy, stop_on_signals
from cbox.integrations.linear import LinearWorker
from cbox.integrations.linear_api import DEFAULT_API_URL, LinearApi
from cbox.integrations.linear_config import WorkerConfig

PRIORITY_NAMES = {0: "No priority", 1: "Urgent", 2: "High", 3: "Medium", 4: "Low"}



@click.command("linear", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dry-run", is_flag=True, help="List what would be taken, in order; change nothing.")
@click.option("--daemon", is_flag=True, help="Keep polling instead of taking one issue.")
@click.option(
    "--interval", "interval_s", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
    envvar="LINEAR_POLL_INTERVAL", help="Daemon: seconds between polls (env LINEAR_POLL_INTERVAL).",
)
@click.option(
    "--label", default="claude", show_default=True, envvar="LINEAR_LABEL",
    help="Take only issues with this label (env LINEAR_LABEL).",
)
@click.option("--team", envvar="LINEAR_TEAM_ID", help="Team id or key (env LINEAR_TEAM_ID).")
@click.option(
    "--server", envvar="CBOX_SERVER", default="http://127.0.0.1:8080", show_default=True,
    help="Orchestrator URL (env CBOX_SERVER).",
)
@click.option(
    "--token", envvar="CBOX_API_TOKEN", default=None,
    help="Orchestrator API token (env CBOX_API_TOKEN; default: the token file of a server on "
    "this machine, CBOX_API_TOKEN_FILE).",
)
@click.option(
    "--max-parallel", type=click.IntRange(1, 64), default=1, show_default=True,
    envvar="CBOX_LINEAR_MAX_PARALLEL", help="Daemon: issues run at once.",
)
@click.option("--policy", envvar="CBOX_LINEAR_POLICY", help="Policy for unmapped issues.")
@click.option(
    "--label-policy", "label_policies", multiple=True, callback=label_policy,
    metavar="LABEL=POLICY",
    help="Map an issue label to a policy (claude-readonly=readonly is built in).",
)
@click.option(
    "--public-url", envvar="CBOX_PUBLIC_URL", help="Orchestrator URL for links in comments.",
)
@click.option(
    "--api-url", envvar="LINEAR_API_URL", default=DEFAULT_API_URL, show_default=True,
    help="Linear GraphQL endpoint (env LINEAR_API_URL).",
)
@click.option("--api-key", envvar="LINEAR_API_KEY", hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def linear(
    dry_run: bool,
    daemon: bool,
    interval_s: float,
    label: str,
    team: str | None,
    server: str,
    token: str | None,
    max_parallel: int,
    policy: str | None,
    label_policies: dict[str, str],
    public_url: str | None,
    api_url: str,
    api_key: str | None,
    verbose: bool,
) -> None:
    """Feed a Linear team's labelled backlog to the orchestrator.

    Takes one issue (or, with --daemon, keeps taking them), runs it as a task,
    comments the result and moves the issue. LINEAR_API_KEY comes from the
    environment. See docs/linear-worker.md.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s cbox worker linear: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not verbose:
        for noisy in ("gql", "aiohttp"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if not api_key:
        _fail("LINEAR_API_KEY is not set: create a personal API key in Linear's settings")
    try:
        config = WorkerConfig(
            api_url=api_url, api_key=api_key, team=team, label=label, server=server,
            token=resolve_token(token), policy=policy, label_policies=label_policies,
            public_url=public_url, max_parallel=max_parallel, interval_s=interval_s,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"bad option {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    sys.exit(asyncio.run(_main(config, dry_run=dry_run, daemon=daemon)))


def _fail(message: str, code: int = EXIT_CONFIG) -> None:
    click.echo(f"cbox: {message}", err=True)
    sys.exit(code)


async def _main(config: WorkerConfig, *, dry_run: bool, daemon: bool) -> int:
    assert config.api_key is not None
    try:
        async with LinearApi(config.api_url, config.api_key.get_secret_value()) as api, Client(
            config.server, config.token
        ) as client:
            worker = LinearWorker(config, api, client)
            await worker.prepare(check_orchestrator=not dry_run)
            if dry_run:
                await _dry_run(worker)
                return 0
            if daemon:
                await worker.run_daemon(stop_on_signals())
                return 0
            return await worker.run_once()
    except ConfigError as exc:
        click.echo(f"cbox: {exc}", err=True)
        return EXIT_CONFIG
    except CboxError as exc:
        click.echo(f"cbox: {' '.join(str(exc).split())}", err=True)
        return EXIT_UNREACHABLE


async def _dry_run(worker: LinearWorker) -> None:
    board = worker.board
    assert board is not None  # prepare() ran
    issues = await worker.candidates()
    if not issues:
        click.echo(f"nothing to take: no issue of {board.team.key} in Backlog/Todo "
                   f"with label {board.label.name!r}")
        return
    click.echo(f"would take, in this order ({len(issues)}; dry run, nothing changed):")
    for n, issue in enumerate(issues, 1):
        priority = PRIORITY_NAMES.get(issue.priority, str(issue.priority))
        click.echo(
            f"{n:3}. {issue.identifier:<10} {priority:<12} {issue.state.name:<12} {issue.title}"
        )
