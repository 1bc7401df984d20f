"""`cbox worker github`: the command line of the GitHub worker.

Settings come from options, each with an environment variable (click's
`envvar`), so nothing here reads `os.environ`. Credentials (`GITHUB_TOKEN`,
the App's private key, the webhook secret) are accepted only from the
environment or a file (hidden options), to keep them out of shell history and
`ps`.

Exit codes, as the Linear worker's: 0 done (or nothing to do, or a daemon
stopped by SIGTERM/SIGINT); 1 the one task failed; 2 bad configuration
(credential, repository, policy), always as one line on stderr; 3 GitHub or
the orchestrator could not be reached.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import NoReturn

import click
from pydantic import ValidationError

from cbox.cli.client import Client
from cbox.cli.defaults import resolve_token
from cbox.errors import CboxError, ConfigError
from cbox.integrations.follow import EXIT_CONFIG, EXIT_UNREACHABLE, label_policy, stop_on_signals
from cbox.integrations.github import GitHubWorker
from cbox.integrations.github_api import DEFAULT_API_URL, GitHubApi
from cbox.integrations.github_auth import AppTokens, StaticToken, TokenSource
from cbox.integrations.github_config import WorkerConfig


@click.command("github", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", "repos", multiple=True, envvar="GITHUB_REPOS", metavar="OWNER/NAME",
              help="Repository to serve; repeatable (env GITHUB_REPOS, space-separated).")
@click.option("--dry-run", is_flag=True, help="List what would be taken, in order; change nothing.")
@click.option("--daemon", is_flag=True, help="Keep polling instead of taking one issue.")
@click.option(
    "--interval", "interval_s", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
    envvar="GITHUB_POLL_INTERVAL", help="Daemon: seconds between polls (env GITHUB_POLL_INTERVAL).",
)
@click.option("--label", default="claude", show_default=True, envvar="GITHUB_LABEL",
              help="Take open issues with this label (env GITHUB_LABEL).")
@click.option("--handle", default="@claude", show_default=True, envvar="GITHUB_HANDLE",
              help="A comment mentioning this asks for work (env GITHUB_HANDLE).")
@click.option("--server", envvar="CBOX_SERVER", default="http://127.0.0.1:8080",
              show_default=True, help="Orchestrator URL (env CBOX_SERVER).")
@click.option("--token", envvar="CBOX_API_TOKEN", default=None,
              callback=lambda ctx, param, value: resolve_token(value),
              help="Orchestrator API token (env CBOX_API_TOKEN; default: the token file a "
              "local server wrote), sent as the CLI sends it.")
@click.option("--max-parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              envvar="CBOX_GITHUB_MAX_PARALLEL", help="Daemon: issues run at once.")
@click.option("--policy", envvar="CBOX_GITHUB_POLICY",
              help="Policy for unmapped issues ('isolated' opens pull requests).")
@click.option("--label-policy", "label_policies", multiple=True, callback=label_policy,
              metavar="LABEL=POLICY",
              help="Map an issue label to a policy (claude-readonly=readonly is built in).")
@click.option("--public-url", envvar="CBOX_PUBLIC_URL",
              help="Orchestrator URL for links in comments.")
@click.option("--api-url", envvar="GITHUB_API_URL", default=DEFAULT_API_URL, show_default=True,
              help="GitHub REST API root (env GITHUB_API_URL; GitHub Enterprise, tests).")
@click.option("--listen", envvar="GITHUB_WEBHOOK_LISTEN", metavar="HOST:PORT",
              help="Daemon: receive webhooks here (needs GITHUB_WEBHOOK_SECRET).")
@click.option("--app-id", envvar="GITHUB_APP_ID", help="GitHub App id (instead of a token).")
@click.option("--installation-id", envvar="GITHUB_APP_INSTALLATION_ID", type=int,
              help="The App's installation id on the repositories' account.")
@click.option("--app-private-key-file", envvar="GITHUB_APP_PRIVATE_KEY_FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The App's private key (PEM file).")
@click.option("--app-private-key", envvar="GITHUB_APP_PRIVATE_KEY", hidden=True)
@click.option("--github-token", envvar="GITHUB_TOKEN", hidden=True)
@click.option("--webhook-secret", envvar="GITHUB_WEBHOOK_SECRET", hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (shows the API quota left).")
def github(
    repos: tuple[str, ...], dry_run: bool, daemon: bool, interval_s: float, label: str,
    handle: str, server: str, token: str | None, max_parallel: int, policy: str | None,
    label_policies: dict[str, str], public_url: str | None, api_url: str, listen: str | None,
    app_id: str | None, installation_id: int | None, app_private_key_file: Path | None,
    app_private_key: str | None, github_token: str | None, webhook_secret: str | None,
    verbose: bool,
) -> None:
    """Feed GitHub issues (a label, or a mention) to the orchestrator.

    Takes one issue (or, with --daemon, keeps taking them), runs it as a task
    and reports in one tracking comment; with an isolated policy the work comes
    back as a draft pull request. GITHUB_TOKEN, or a GitHub App, comes from the
    environment. See docs/github-worker.md.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s cbox worker github: %(message)s", datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("aiohttp", "httpx", "httpcore", "githubkit"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if listen and not webhook_secret:
        _fail("--listen needs GITHUB_WEBHOOK_SECRET: unsigned webhooks are never accepted")
    try:
        config = WorkerConfig(
            api_url=api_url, repos=tuple(repos), label=label, handle=handle, server=server,
            token=token, policy=policy, label_policies=label_policies, public_url=public_url,
            max_parallel=max_parallel, interval_s=interval_s, listen=listen,
            webhook_secret=webhook_secret,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"bad option {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    source = _source(api_url, github_token, app_id, installation_id, app_private_key_file,
                     app_private_key)
    sys.exit(asyncio.run(_main(config, source, dry_run=dry_run, daemon=daemon)))


def _source(
    api_url: str, github_token: str | None, app_id: str | None, installation_id: int | None,
    key_file: Path | None, key: str | None,
) -> TokenSource:
    if app_id or installation_id or key_file or key:
        if key_file is not None:
            key = key_file.read_text()
        if not (app_id and installation_id and key):
            _fail("a GitHub App needs GITHUB_APP_ID, GITHUB_APP_INSTALLATION_ID and a "
                  "private key (GITHUB_APP_PRIVATE_KEY_FILE)")
        return AppTokens(app_id, key, installation_id, base_url=api_url)
    if not github_token:
        _fail("GITHUB_TOKEN is not set (or configure a GitHub App: GITHUB_APP_ID, ...)")
    return StaticToken(github_token)


def _fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    click.echo(f"cbox: {message}", err=True)
    sys.exit(code)


async def _main(config: WorkerConfig, source: TokenSource, *, dry_run: bool,
                daemon: bool) -> int:
    runner = None
    try:
        async with Client(config.server, config.token) as client, GitHubApi(
            config.api_url, source
        ) as api:
            worker = GitHubWorker(config, api, client)
            await worker.prepare(check_orchestrator=not dry_run)
            if dry_run:
                await _dry_run(worker)
                return 0
            if daemon:
                if config.listen and config.webhook_secret:
                    from cbox.integrations.github_webhook import serve

                    runner = await serve(config.listen, config.webhook_secret.get_secret_value(),
                                         worker.poke)
                await worker.run_daemon(stop_on_signals())
                return 0
            return await worker.run_once()
    except ConfigError as exc:
        click.echo(f"cbox: {exc}", err=True)
        return EXIT_CONFIG
    except CboxError as exc:
        click.echo(f"cbox: {' '.join(str(exc).split())}", err=True)
        return EXIT_UNREACHABLE
    finally:
        if runner is not None:
            await runner.cleanup()


async def _dry_run(worker: GitHubWorker) -> None:
    issues = await worker.candidates()
    if not issues:
        click.echo(f"nothing to take: no open issue with label {worker.config.label!r}")
        return
    click.echo(f"would take, in this order ({len(issues)}; dry run, nothing changed):")
    for n, issue in enumerate(issues, 1):
        click.echo(f"{n:3}. {issue.ref:<30} {issue.created_at:%Y-%m-%d %H:%M} {issue.title}")
