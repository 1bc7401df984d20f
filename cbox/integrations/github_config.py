"""The GitHub worker's configuration; built once by the CLI from options and env."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cbox.integrations.github_api import DEFAULT_API_URL


class WorkerConfig(BaseModel):
    """Everything the worker is told. Credentials are held as secrets and only ever
    leave this process towards GitHub (REST calls and the branch push)."""

    model_config = ConfigDict(frozen=True)

    api_url: str = Field(DEFAULT_API_URL, description="GITHUB_API_URL: the REST API root.")
    repos: tuple[str, ...] = Field(description="OWNER/NAME of each repository served.")
    label: str = Field("claude", description="Open issues with this label are taken.")
    handle: str = Field("@claude", description="A comment mentioning this asks for work.")
    working_label: str = Field("claude-working", description="Added while a task runs.")
    failed_label: str = Field("claude-failed", description="Replaces it when a task fails.")
    server: str = Field(description="CBOX_SERVER: the orchestrator's URL.")
    token: str | None = Field(None, description="CBOX_API_TOKEN for the orchestrator.")
    policy: str | None = Field(None, description="Policy for issues no label maps to one.")
    label_policies: dict[str, str] = Field(
        default_factory=lambda: {"claude-readonly": "readonly"},
        description="Issue label → policy; a mapped label beats `policy`.",
    )
    public_url: str | None = Field(None, description="Orchestrator URL for links in comments.")
    max_parallel: int = Field(1, ge=1, le=64, description="Daemon: issues run at once.")
    interval_s: float = Field(60.0, gt=0, description="Daemon: seconds between intake polls.")
    recent_comments: int = Field(10, ge=0, description="Comments copied into the prompt.")
    mention_window_s: float = Field(
        7 * 86_400.0, gt=0, description="Mentions older than this are not looked at."
    )
    orchestrator_wait_s: float = Field(
        300.0, gt=0, description="How long one call waits out an unreachable orchestrator."
    )
    listen: str | None = Field(None, description="HOST:PORT for the webhook receiver.")
    webhook_secret: SecretStr | None = Field(
        None, description="GITHUB_WEBHOOK_SECRET: deliveries must be signed with it."
    )
