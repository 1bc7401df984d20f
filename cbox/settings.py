"""One settings object, built once at the edge (CLI entry) and passed down.

The seed's environment names are kept as they were (`AGENT_HOST`, `AGENT_PORT`,
`WORKSPACE_DIR`, `ANTHROPIC_API_KEY`, ...); everything new takes the `CBOX_`
prefix. Nothing else in claude-box reads `os.environ`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cbox.api.authority import allowed_host_name


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "cbox"


class Settings(BaseSettings):
    """Every knob of the orchestrator; each field documents its environment name."""

    # env_ignore_empty: `CBOX_API_TOKEN=` (as compose passes an unset variable) means unset.
    model_config = SettingsConfigDict(
        env_prefix="CBOX_", extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    host: str = Field(
        "0.0.0.0",
        validation_alias=AliasChoices("AGENT_HOST", "CBOX_HOST"),
        description="AGENT_HOST: address the HTTP API listens on.",
    )
    port: int = Field(
        8080,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("AGENT_PORT", "CBOX_PORT"),
        description="AGENT_PORT: port of the HTTP API.",
    )
    workspace_dir: Path = Field(
        Path("/workspace"),
        validation_alias=AliasChoices("WORKSPACE_DIR", "CBOX_WORKSPACE_DIR"),
        description="WORKSPACE_DIR: host path mounted into tasks that name no workspace.",
    )
    allowed_workspace_roots: list[Path] = Field(
        default_factory=list,
        description="CBOX_ALLOWED_WORKSPACE_ROOTS (JSON list): host paths a task may name as "
        "its workspace. Empty means only WORKSPACE_DIR and paths below it.",
    )
    anthropic_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "CBOX_ANTHROPIC_API_KEY"),
        description="ANTHROPIC_API_KEY: the real credential. It never enters a container; "
        "the gateway swaps it in.",
    )
    claude_code_oauth_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CLAUDE_CODE_OAUTH_TOKEN", "CBOX_CLAUDE_CODE_OAUTH_TOKEN"),
        description="CLAUDE_CODE_OAUTH_TOKEN: subscription credential, used when no API key.",
    )
    anthropic_base_url: str = Field(
        "https://api.anthropic.com",
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "CBOX_ANTHROPIC_BASE_URL"),
        description="ANTHROPIC_BASE_URL: where the agent's API traffic ends up, as this host "
        "sees it. Containers reach it through the gateway.",
    )
    image: str = Field("cbox-sandbox:latest", description="CBOX_IMAGE: sandbox image tag.")
    db_path: Path = Field(
        default_factory=lambda: _default_data_dir() / "cbox.db",
        description="CBOX_DB_PATH: the SQLite file holding tasks and event logs.",
    )
    data_dir: Path | None = Field(
        None,
        description="CBOX_DATA_DIR: where per-task working copies of isolated tasks live "
        "(`<data_dir>/isolated/<task id>`); default: the directory holding CBOX_DB_PATH.",
    )
    git_timeout_s: float = Field(
        300.0,
        gt=0,
        description="CBOX_GIT_TIMEOUT_S: deadline of each git helper container of an "
        "isolated task (copy, commit, fetch back); a repository that makes git hang fails "
        "the step after this long.",
    )
    max_concurrent: int = Field(2, ge=1, le=256, description="CBOX_MAX_CONCURRENT: running cap.")
    policies_dir: Path | None = Field(
        None, description="CBOX_POLICIES_DIR: directory of extra or overriding policy files."
    )
    network: str = Field(
        "cbox",
        description="CBOX_NETWORK: name prefix of the per-task Docker networks "
        "(`<prefix>-<task id>`).",
    )
    api_token: SecretStr | None = Field(
        None,
        description="CBOX_API_TOKEN: the token API calls must carry as `Authorization: "
        "Bearer <token>`. Unset: the server uses (or generates) the one in CBOX_API_TOKEN_FILE; "
        "there is no way to turn the check off.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CBOX_ALLOWED_HOSTS (comma-separated): host names, besides IP literals, "
        "`localhost` and this machine's own names, that requests may name in their `Host` "
        "header (e.g. the name of a reverse proxy in front of the API). Anything else is "
        "refused, so that a DNS-rebinding web page cannot talk to the API.",
    )
    host_firewall: Literal["auto", "on", "off"] = Field(
        "auto",
        description="CBOX_HOST_FIREWALL: confine task networks to the gateway's ports on the "
        "host with iptables. auto: used when root and iptables are there, and without it "
        "gateway/allowlist tasks are refused (503); on: required to start; off: not used, "
        "host services on all interfaces are reachable from boxes (a loud warning).",
    )
    egress_dns: str | None = Field(
        None,
        description="CBOX_EGRESS_DNS: `address[:port]` of the DNS server the allowlist proxy "
        "resolves names with (e.g. a filtering resolver); default: this host's resolver.",
    )
    egress_idle_s: float = Field(
        300.0,
        gt=0,
        description="CBOX_EGRESS_IDLE_S: an allowlist tunnel with no traffic either way "
        "for this long is closed.",
    )
    api_token_file: Path = Field(
        default_factory=lambda: Path.home() / ".config" / "cbox" / "api-token",
        description="CBOX_API_TOKEN_FILE: where the API token is kept (mode 0600) when "
        "CBOX_API_TOKEN is not set; generated at the first start. The CLI and the Linear "
        "worker on this machine read it.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="CBOX_MAX_BODY_BYTES: request body size cap."
    )
    keepalive_s: float = Field(
        15.0, gt=0, description="CBOX_KEEPALIVE_S: SSE keep-alive comment interval."
    )
    stop_grace_s: float = Field(
        5.0, ge=0, description="CBOX_STOP_GRACE_S: SIGTERM-to-SIGKILL grace on stop."
    )
    warm_pool: int = Field(
        1,
        ge=0,
        le=8,
        description="CBOX_WARM_POOL: fresh containers kept created and started ahead of "
        "time for each recently used (policy, workspace); each serves exactly one task. "
        "0 turns the pool off.",
    )
    warm_pool_max: int = Field(
        4, ge=0, le=64, description="CBOX_WARM_POOL_MAX: warm containers in all, at most."
    )
    warm_pool_idle_s: float = Field(
        900.0,
        gt=0,
        description="CBOX_WARM_POOL_IDLE_S: a (policy, workspace) unused this long loses "
        "its warm containers.",
    )
    # What a task's agent may print (the box is untrusted; see orchestrator/untrusted.py).
    max_line_bytes: int = Field(
        1_048_576, ge=1024, le=64 * 1_048_576,
        description="CBOX_MAX_LINE_BYTES: one stdout/stderr line of a task is cut past this "
        "(the stored line ends with `…[line cut: N more bytes]`).",
    )
    max_event_bytes: int = Field(
        65_536, ge=1024, le=16 * 1_048_576,
        description="CBOX_MAX_EVENT_BYTES: one event's data (tool input, tool result, text, "
        "result) is cut past this many characters.",
    )
    max_task_output_bytes: int = Field(
        256 * 1_048_576, ge=65_536,
        description="CBOX_MAX_TASK_OUTPUT_BYTES: what one task's output may take in the store "
        "(event JSON plus raw lines). Past it nothing more is kept and the task ends `failed`.",
    )
    container_log_max_size_mb: int = Field(
        64, ge=1, le=10_240,
        description="CBOX_CONTAINER_LOG_MAX_SIZE_MB: Docker json-file log size per file of a "
        "task container (`max-size`).",
    )
    container_log_max_files: int = Field(
        4, ge=1, le=100,
        description="CBOX_CONTAINER_LOG_MAX_FILES: json-file log files kept per task "
        "container (`max-file`).",
    )
    instance: str = Field(
        "default",
        description="CBOX_INSTANCE: name of this orchestrator; it only adopts or removes "
        "containers labelled with the same name.",
    )
    # -- webhooks (cbox.webhooks; README "Webhooks")
    public_url: str | None = Field(
        None,
        description="CBOX_PUBLIC_URL: this server's address as receivers reach it, for the "
        "links in webhook payloads; default http://<AGENT_HOST>:<AGENT_PORT>.",
    )
    webhooks_file: Path | None = Field(
        None, description="CBOX_WEBHOOKS_FILE: TOML file of webhook subscriptions."
    )
    webhook_allowed_urls: list[str] = Field(
        default_factory=list,
        description="CBOX_WEBHOOK_ALLOWED_URLS (JSON list of `scheme://host[:port]`, host may "
        "start with `*.`): the only places webhooks are sent to. Empty: none.",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="CBOX_WEBHOOK_SECRET (whsec_...): signs deliveries to tasks' notify_url."
    )
    webhook_previous_secret: SecretStr | None = Field(
        None, description="CBOX_WEBHOOK_PREVIOUS_SECRET: also signs them, during a rotation."
    )
    webhook_timeout_s: float = Field(
        5.0, gt=0, le=60, description="CBOX_WEBHOOK_TIMEOUT_S: one delivery attempt, at most."
    )
    webhook_retry_scale: float = Field(
        1.0, gt=0, description="CBOX_WEBHOOK_RETRY_SCALE: multiplies the retry schedule."
    )
    webhook_concurrency: int = Field(
        2, ge=1, le=64, description="CBOX_WEBHOOK_CONCURRENCY: attempts in flight per receiver."
    )
    webhook_stall_s: float = Field(
        300.0, ge=0,
        description="CBOX_WEBHOOK_STALL_S: a running task silent this long is `task.stalled` "
        "(0: never).",
    )
    webhook_max_field_chars: int = Field(
        4096, ge=64,
        description="CBOX_WEBHOOK_MAX_FIELD_CHARS: `result`, `prompt` and `error` are cut to "
        "this in payloads.",
    )
    docker_host: str | None = Field(
        None,
        validation_alias=AliasChoices("DOCKER_HOST", "CBOX_DOCKER_HOST"),
        description="DOCKER_HOST: engine address; default is the local socket.",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [allowed_host_name(str(part)) for part in value]
        return value

    def credentials(self) -> list[str]:
        """The real credentials this server holds, for the env_passthrough check."""
        found = [
            s.get_secret_value()
            for s in (
                self.anthropic_api_key, self.claude_code_oauth_token, self.api_token,
                self.webhook_secret, self.webhook_previous_secret,
            )
            if s is not None
        ]
        from cbox.policies import CREDENTIAL_NAMES

        found += [os.environ[n] for n in sorted(CREDENTIAL_NAMES) if os.environ.get(n)]
        return found

    def host_env(self) -> dict[str, str]:
        """The host environment, for policies' `env_passthrough` (read here only)."""
        return dict(os.environ)

    @property
    def work_dir(self) -> Path:
        """Root of the orchestrator's own files besides the database."""
        # Resolved: bind sources under it must be canonical (`docker.check_binds`).
        root = self.data_dir if self.data_dir is not None else self.db_path.parent
        return root.resolve()
