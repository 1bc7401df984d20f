"""Push an isolated task's branch to GitHub without running git in the user's repository.

The user's repository was writable by earlier agents, so its `.git/config`,
hooks and attributes are untrusted: a planted `core.fsmonitor`, hook or filter
would run on the host with any git command there. The worker never goes near
it. Instead:

1. the orchestrator hands out the branch as a bundle file
   (`GET /tasks/{id}/bundle`, made in a hardened helper container);
2. the worker makes its *own* scratch bare repository, whose configuration it
   wrote, and `git fetch`es the branch from the bundle file (reading a bundle
   runs nothing from the repository it came from; `transfer.fsckObjects`
   checks every object on the way in);
3. it checks the fetched tip is the commit the orchestrator recorded for the
   task (`isolation.commit`), so a branch moved after the task cannot be
   smuggled into the pull request;
4. it pushes that one ref, with the credential in an ephemeral
   `http.extraHeader` passed through `GIT_CONFIG_*` environment variables of
   that one git process: never written to a config file, never on a command
   line (`ps`), never in the box. System and global git configuration are
   off (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`), hooks point at
   `/dev/null`, no credential helper, no terminal prompt.

The scratch directory is removed afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
from pathlib import Path

from cbox.errors import GitHubError

GIT_TIMEOUT_S = 600.0

_HARDENING = {
    "core.hooksPath": "/dev/null",
    "core.fsmonitor": "false",
    "credential.helper": "",
    "transfer.fsckObjects": "true",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "protocol.ext.allow": "never",
}


def git_env(home: Path, token: str | None = None) -> dict[str, str]:
    """A clean environment for git: no system/global config, the credential as a header."""
    config = dict(_HARDENING)
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        config["http.extraHeader"] = f"Authorization: Basic {basic}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for n, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{n}"] = key
        env[f"GIT_CONFIG_VALUE_{n}"] = value
    return env


async def _git(*args: str, cwd: Path, env: dict[str, str], secret: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise GitHubError(f"git {args[0]} timed out") from None
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"exit {proc.returncode}"
        if secret:
            for form in (secret, base64.b64encode(f"x-access-token:{secret}".encode()).decode()):
                message = message.replace(form, "***")
        raise GitHubError(f"git {args[0]} failed: {message[-500:]}")
    return out.decode(errors="replace").strip()


async def push_bundle(
    bundle: Path, branch: str, expected: str, remote_url: str, token: str | None
) -> None:
    """Fetch `branch` from the bundle into a scratch repository and push it to the remote."""
    ref = f"refs/heads/{branch}"
    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="cbox-push-"))
    try:
        repo = scratch / "repo.git"
        env = git_env(scratch)
        await _git("init", "--quiet", "--bare", str(repo), cwd=scratch, env=env)
        await _git("fetch", "--quiet", "--no-tags", str(bundle), f"{ref}:{ref}", cwd=repo,
                   env=env)
        tip = await _git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", cwd=repo, env=env)
        if tip != expected:
            raise GitHubError(
                f"the bundle's {branch} is at {tip[:12]}, not at the task's commit "
                f"{expected[:12]}; nothing pushed"
            )
        await _git("push", "--quiet", "--no-verify", remote_url, f"{ref}:{ref}", cwd=repo,
                   env=git_env(scratch, token), secret=token)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
