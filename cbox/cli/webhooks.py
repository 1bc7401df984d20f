"""`cbox webhooks`: list subscriptions, send a signed test ping, read the delivery log.

Every call goes through the server's API (token-protected like the rest), so
the CLI never holds a secret: signing happens on the server.
"""

from __future__ import annotations

import json
from typing import Any

import click

from cbox.cli import render
from cbox.cli.blocking_client import BlockingClient
from cbox.cli.defaults import DEFAULT_SERVER, resolve_token
from cbox.cli.follow import EXIT_CLIENT
from cbox.errors import CboxError


def _call(client: BlockingClient, method: str, path: str) -> Any:
    try:
        return client.request(method, path)
    except CboxError as exc:
        render.fail(str(exc), EXIT_CLIENT)


@click.group()
@click.option("--server", envvar="CBOX_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="Orchestrator URL (env CBOX_SERVER).")
@click.option("--token", envvar="CBOX_API_TOKEN", default=None,
              help="API token (env CBOX_API_TOKEN; default: the token file a local server "
              "wrote).")
@click.pass_context
def webhooks(ctx: click.Context, server: str, token: str | None) -> None:
    """Webhook subscriptions: list them, test one, read its deliveries."""
    ctx.obj = BlockingClient(server, resolve_token(token))


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def webhooks_list(client: BlockingClient, as_json: bool) -> None:
    """Subscriptions, with their events and state."""
    subs = _call(client, "GET", "/webhooks")["webhooks"]
    if as_json:
        click.echo(json.dumps(subs, indent=2))
        return
    if not subs:
        click.echo("no webhook subscriptions")
        return
    from rich.table import Table

    table = Table("name", "url", "events", "source", "state")
    for sub in subs:
        state = f"disabled: {sub['disabled']}" if sub.get("disabled") else "active"
        if sub.get("previous_secret_fingerprint"):
            state += " (rotating secret)"
        table.add_row(sub["name"], sub["url"], ", ".join(sub["events"]), sub["source"], state)
    render.console().print(table)


@webhooks.command("test")
@click.argument("name")
@click.pass_obj
def webhooks_test(client: BlockingClient, name: str) -> None:
    """Send a signed webhook.ping to NAME now; exit 1 unless the receiver took it."""
    delivery = _call(client, "POST", f"/webhooks/{name}/test")
    if delivery["status"] == "delivered":
        click.echo(f"delivered {delivery['id']} to {delivery['url']}: HTTP "
                   f"{delivery['last_status']} in {delivery['last_latency_ms']} ms")
        return
    render.fail(f"ping {delivery['id']} to {delivery['url']} failed: {delivery['last_error']}", 1)


@webhooks.command("deliveries")
@click.argument("name")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def webhooks_deliveries(client: BlockingClient, name: str, limit: int, as_json: bool) -> None:
    """NAME's delivery log, newest first."""
    found = _call(client, "GET", f"/webhooks/{name}/deliveries?limit={limit}")["deliveries"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for d in found:
        last = d["last_error"] or (f"HTTP {d['last_status']}" if d["last_status"] else "")
        click.echo(f"{d['id']}  {d['event']:<17} {d['status']:<9} attempts {d['attempts']}  "
                   f"{d['task_id'] or '-'}  {last}")
