"""What a task's container looks like: command, environment, mounts and limits.

Hardening that no policy can relax: a non-root user (the workspace owner's
uid, or the image's agent user when the workspace belongs to root), all
capabilities dropped, `no-new-privileges`, a read-only root filesystem with
tmpfs scratch space, swap equal to memory (no swap), no Docker socket, no
host network/pid/ipc namespace, not privileged.

What a policy sets (it is server-side configuration, and each value is also
a ceiling for requests): the cpus, memory, pids and nofile limits, the
timeout, the workspace mount mode, and the network mode — `gateway` (the
default: an internal per-task network whose only reachable address is the
API gateway), `allowlist` (the same plus a CONNECT proxy for named hosts) or
`open` (a plain per-task bridge; an explicit opt-in).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbox.errors import InvalidRequest
from cbox.models import MountMode, Task
from cbox.orchestrator.docker import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POLICY,
    LABEL_TASK,
    LABEL_WARM,
)
from cbox.orchestrator.sessions import SESSION_MOUNT, SessionMount
from cbox.policies import EffectiveLimits

#: uid/gid of the image's `agent` user, used when the workspace belongs to root
#: (Claude Code refuses --dangerously-skip-permissions as root).
DEFAULT_AGENT_ID = 1000


@dataclass(frozen=True, slots=True)
class Workspace:
    path: Path
    uid: int
    gid: int


def resolve_workspace(requested: str | None, default: Path, roots: list[Path]) -> Workspace:
    """Check the host path a task wants mounted, and find whose files they are."""
    raw = Path(requested) if requested else default
    if not raw.is_absolute():
        raise InvalidRequest(f"workspace {raw} must be an absolute path", field="workspace")
    path = Path(os.path.realpath(raw))
    allowed = [Path(os.path.realpath(r)) for r in [default, *roots]]
    if not any(path == root or root in path.parents for root in allowed):
        names = ", ".join(str(r) for r in allowed)
        raise InvalidRequest(
            f"workspace {path} is outside the allowed roots ({names})", field="workspace"
        )
    try:
        info = path.stat()
    except OSError as exc:
        raise InvalidRequest(f"workspace {path}: {exc.strerror}", field="workspace") from exc
    if not path.is_dir():
        raise InvalidRequest(f"workspace {path} is not a directory", field="workspace")
    uid = info.st_uid or DEFAULT_AGENT_ID
    gid = info.st_gid if info.st_uid else DEFAULT_AGENT_ID
    return Workspace(path=path, uid=uid, gid=gid)


def agent_command(
    task: Task, limits: EffectiveLimits, resume_id: str | None = None
) -> list[str]:
    policy = limits.policy
    if policy.agent == "command":
        return list(policy.command)
    cmd = [
        "claude",
        "-p",
        task.spec.prompt,
        "--output-format",
        "stream-json",
        "--verbose",
        "--dangerously-skip-permissions",
    ]
    if resume_id:
        cmd += ["--resume", resume_id]
    if limits.model:
        cmd += ["--model", limits.model]
    if limits.max_turns is not None:
        cmd += ["--max-turns", str(limits.max_turns)]
    if policy.allowed_tools:
        cmd += ["--allowedTools", ",".join(policy.allowed_tools)]
    if policy.disallowed_tools:
        cmd += ["--disallowedTools", ",".join(policy.disallowed_tools)]
    if policy.append_system_prompt:
        cmd += ["--append-system-prompt", policy.append_system_prompt]
    return cmd


@dataclass(frozen=True, slots=True)
class Gateway:
    """How a container reaches the model API: URL and the task's own token."""

    url: str
    token: str
    oauth: bool
    proxy_url: str | None = None


#: The upstream DNS server of boxes on internal networks: an address that is
#: never routed (TEST-NET-1, RFC 5737). Docker engines before 23.0.11 / 25.0.5 /
#: 26.0.0 (CVE-2024-29018, GHSA-mq39-4gv4-mvpx) let the embedded resolver of an
#: internal network forward queries upstream — a way to exfiltrate data in DNS
#: names. With a custom upstream the resolver forwards from the box's own
#: namespace, which has no route to it, so every outside name fails at once.
#: Fixed engines do not forward at all; the setting is harmless there.
NON_FORWARDING_DNS = "192.0.2.53"

#: What a warm container runs until its task arrives (see sandbox-image/cbox-await).
AWAIT_COMMAND = ["/usr/local/bin/cbox-await"]


def task_json(task: Task, limits: EffectiveLimits) -> str:
    """The task as the box sees it: $CBOX_TASK_JSON and /cbox/task.json."""
    return json.dumps(
        {
            "task_id": task.id,
            "prompt": task.spec.prompt,
            "policy": limits.policy.name,
            "read_only": limits.mount_mode is MountMode.RO,
            "model": limits.model,
            "max_turns": limits.max_turns,
            "metadata": task.spec.metadata,
            "session": task.spec.session,
            "branch": task.isolation.branch if task.isolation else None,
        }
    )


def task_message(task: Task, limits: EffectiveLimits) -> bytes:
    """What a warm container's `cbox-await` reads on stdin: the command and its task."""
    message = {
        "argv": agent_command(task, limits),
        "env": {"CBOX_TASK_JSON": task_json(task, limits)},
    }
    return json.dumps(message).encode() + b"\n"


def pool_key(
    limits: EffectiveLimits, workspace: Workspace, image: str, passthrough_env: dict[str, str]
) -> str:
    """Which tasks a warm container can serve: everything `container_config` reads
    except what only reaches the box with the task itself (its command, id, prompt
    and the knobs that end up in its argv), and the gateway budget and API access,
    which are set when the task takes the container.
    """
    per_task = {
        "model", "max_turns", "timeout_s", "max_cost_usd", "max_tokens", "server_tools",
        "gateway_betas",
    }
    return json.dumps(
        [
            image,
            str(workspace.path),
            workspace.uid,
            workspace.gid,
            limits.model_dump(mode="json", exclude=per_task),
            passthrough_env,
        ],
        sort_keys=True,
    )


def container_config(
    *,
    task: Task,
    limits: EffectiveLimits,
    workspace: Workspace,
    image: str,
    network: str,
    instance: str,
    gateway: Gateway,
    passthrough_env: dict[str, str],
    stop_grace_s: float,
    session: SessionMount | None = None,
    warm: bool = False,
    log_max_size_mb: int = 64,
    log_max_files: int = 4,
) -> dict[str, Any]:
    """The Docker Engine API `ContainerCreate` body for one task.

    `workspace` is what gets mounted at /workspace: the user's tree, or an
    isolated task's copy of it. A session adds its volume as the CLI's config
    dir. A `warm` container is made before its task is known: it waits on
    stdin for `task_message` instead of carrying the command and the task.
    """
    env = {
        **passthrough_env,
        "ANTHROPIC_BASE_URL": gateway.url,
        "CBOX_TASK_ID": task.id,
        "HOME": "/home/agent",
    }
    if not warm:
        env["CBOX_TASK_JSON"] = task_json(task, limits)
    binds = [f"{workspace.path}:/workspace:{limits.mount_mode.value}"]
    if session is not None:
        env["CLAUDE_CONFIG_DIR"] = SESSION_MOUNT
        binds.append(f"{session.volume}:{SESSION_MOUNT}:rw")
    # The container only ever holds the per-task token; the gateway swaps in
    # the real credential, in the header the CLI uses for this kind of token.
    env["CLAUDE_CODE_OAUTH_TOKEN" if gateway.oauth else "ANTHROPIC_API_KEY"] = gateway.token
    if gateway.proxy_url:
        gateway_host = gateway.url.split("//", 1)[-1].rsplit(":", 1)[0]
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            env[name] = gateway.proxy_url
        env["NO_PROXY"] = env["no_proxy"] = gateway_host
    ids = f"uid={workspace.uid},gid={workspace.gid}"
    memory = limits.memory_mb * 1024 * 1024
    labels = {
        LABEL_MANAGED: "true",
        LABEL_TASK: task.id,
        LABEL_INSTANCE: instance,
        LABEL_POLICY: limits.policy.name,
    }
    if warm:
        labels[LABEL_WARM] = "true"
    # The box needs no name resolution: the gateway is an IP and the allowlist
    # proxy resolves names itself.
    dns: dict[str, list[str]] = (
        {"Dns": [NON_FORWARDING_DNS], "DnsSearch": [], "DnsOptions": []}
        if limits.policy.network != "open"
        else {}
    )
    return {
        "Image": image,
        "Cmd": AWAIT_COMMAND
        if warm
        else agent_command(task, limits, session.resume_id if session else None),
        "Env": [f"{k}={v}" for k, v in env.items()],
        "User": f"{workspace.uid}:{workspace.gid}",
        "WorkingDir": "/workspace",
        # A warm container's stdin stays open until the orchestrator has
        # written its task and detached (then it is closed for good).
        "OpenStdin": warm,
        "StdinOnce": warm,
        "Labels": labels,
        "StopSignal": "SIGTERM",
        "StopTimeout": max(1, int(stop_grace_s)),
        "HostConfig": {
            "Binds": binds,
            "Memory": memory,
            "MemorySwap": memory,
            "NanoCpus": int(limits.cpus * 1e9),
            "PidsLimit": limits.pids,
            "Ulimits": [
                {"Name": "nofile", "Soft": limits.policy.nofile, "Hard": limits.policy.nofile}
            ],
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "Tmpfs": {
                "/tmp": "rw,nosuid,nodev,size=1g",
                "/home/agent": f"rw,nosuid,nodev,size=512m,mode=0700,{ids}",
                "/cbox": f"rw,nosuid,nodev,noexec,size=16m,mode=0700,{ids}",
            },
            "NetworkMode": network,
            **dns,
            "IpcMode": "private",
            "PidMode": "",
            "Privileged": False,
            # The engine keeps what the box prints on the host's disk: bounded,
            # so a box printing without end cannot fill it.
            "LogConfig": {
                "Type": "json-file",
                "Config": {"max-size": f"{log_max_size_mb}m", "max-file": str(log_max_files)},
            },
        },
    }
