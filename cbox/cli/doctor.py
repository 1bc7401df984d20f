"""`cbox doctor`: check each prerequisite, and say how to fix what fails."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from cbox.cli import render
from cbox.cli.client import Client
from cbox.errors import CboxError, ImageNotFound
from cbox.orchestrator.container import NON_FORWARDING_DNS
from cbox.orchestrator.dnsprobe import ADVISORY, FIXED_IN, engine_affected, probe
from cbox.orchestrator.docker import DockerBackend
from cbox.settings import Settings

Check = Callable[[], Awaitable[str]]


class Caveat(CboxError):
    """A finding worth reading that does not make the check fail (shown as `!`)."""


async def run_checks(settings: Settings, server: str) -> int:
    out = render.console()
    docker = DockerBackend(settings.docker_host)

    async def engine() -> str:
        info = await docker.ping()
        return f"Docker {info.get('ServerVersion', '?')}"

    async def image() -> str:
        labels = await docker.image_labels(settings.image)
        return f"{settings.image}, Claude Code {labels.get('dev.cbox.claude-code.version', '?')}"

    async def credential() -> str:
        if settings.anthropic_api_key:
            return "ANTHROPIC_API_KEY is set (it stays on this host)"
        if settings.claude_code_oauth_token:
            return "CLAUDE_CODE_OAUTH_TOKEN is set (it stays on this host)"
        raise CboxError("no credential: set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN")

    async def workspace() -> str:
        path = settings.workspace_dir
        if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
            raise CboxError(f"{path} is not a readable directory: set WORKSPACE_DIR")
        return str(path)

    async def dns() -> str:
        version = str((await docker.ping()).get("ServerVersion", "?"))
        affected = engine_affected(version)
        result = None
        how = "by version only (the probe needs root)"
        if os.geteuid() == 0:
            try:
                result = await probe(docker, settings.image)
            except ImageNotFound:
                how = "by version only (no sandbox image to probe with)"
        if result is not None:
            plural = "query" if result.queries == 1 else "queries"
            how = (
                f"probe: {result.queries} {plural} from an internal network reached a "
                "listener on this host" if result.leaked
                else "probe: no query left an internal network"
            )
        leaks = result.leaked if result is not None else bool(affected)
        if not leaks:
            patched = "; its version is in the advisory's range, so a patched build" if (
                affected and result is not None) else ""
            return f"Docker {version} does not forward DNS from internal networks ({how}{patched})"
        finding = (
            f"Docker {version} forwards DNS queries from internal networks, a way to "
            f"exfiltrate data ({ADVISORY}; fixed in {FIXED_IN}); {how}."
        )
        if result is not None and not result.mitigated:
            raise CboxError(f"{finding} NOT mitigated: a box-like container got an answer")
        checked = "checked: no answer" if result is not None else "not probed"
        raise Caveat(
            f"{finding} Mitigated for claude-box boxes: they resolve through "
            f"{NON_FORWARDING_DNS}, which is never routed ({checked}); other containers on "
            "internal networks of this engine still leak"
        )

    async def reachable() -> str:
        async with Client(server) as client:
            await client.request("GET", "/healthz")
        return server

    fixes = {
        "engine": "start Docker (`dockerd`, or `systemctl start docker`) or set DOCKER_HOST",
        "image": "run `cbox image build`",
        "credential": "export ANTHROPIC_API_KEY=... before `cbox serve`",
        "workspace": "export WORKSPACE_DIR=/path/to/your/repo",
        "dns": f"upgrade Docker Engine to {FIXED_IN} or later",
        "server": "start it with `cbox serve`, or pass --server / CBOX_SERVER",
    }
    checks: list[tuple[str, Check]] = [
        ("engine", engine),
        ("image", image),
        ("credential", credential),
        ("workspace", workspace),
        ("dns", dns),
        ("server", reachable),
    ]
    failed = 0
    try:
        for name, check in checks:
            try:
                detail = await check()
            except Caveat as exc:
                out.print(f"[yellow]![/yellow] {name}: {exc}", highlight=False)
                out.print(f"    fix: {fixes[name]}", markup=False)
            except CboxError as exc:
                failed += 1
                out.print(f"[red]✗[/red] {name}: {exc}", highlight=False)
                out.print(f"    fix: {fixes[name]}", markup=False)
            else:
                out.print(f"[green]✓[/green] {name}: {detail}", highlight=False)
    finally:
        await docker.close()
    return 1 if failed else 0
