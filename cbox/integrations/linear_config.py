"""The Linear worker's configuration and the part of a team's workflow it uses.

Kept apart from the workflow (`linear.py`) because the CLI builds these and
the tests read them without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cbox.errors import ConfigError
from cbox.integrations.linear_api import DEFAULT_API_URL, Label, State, Team


class WorkerConfig(BaseModel):
    """Everything the worker is told; built once by the CLI from options and env."""

    model_config = ConfigDict(frozen=True)

    api_url: str = Field(DEFAULT_API_URL, description="LINEAR_API_URL: Linear's GraphQL endpoint.")
    api_key: SecretStr | None = Field(None, description="LINEAR_API_KEY: a personal API key.")
    team: str | None = Field(None, description="LINEAR_TEAM_ID: team id (UUID) or key (ENG).")
    label: str = Field("claude", description="Only issues carrying this label are taken.")
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
    orchestrator_wait_s: float = Field(
        300.0, gt=0, description="How long one call waits out an unreachable orchestrator."
    )


@dataclass(frozen=True, slots=True)
class Board:
    """The team, the label and the states the worker moves issues between."""

    team: Team
    label: Label
    in_progress: State
    in_review: State | None
    todo: State


def pick_states(team: Team) -> tuple[State, State | None, State]:
    """In Progress / In Review / Todo by name, falling back to state type."""
    by_position = sorted(team.states, key=lambda s: s.position)

    def named(name: str) -> State | None:
        return next((s for s in by_position if s.name.lower() == name.lower()), None)

    def typed(kind: str) -> list[State]:
        return [s for s in by_position if s.type == kind]

    in_progress = named("In Progress") or next(iter(typed("started")), None)
    todo = named("Todo") or next(iter(typed("unstarted")), None)
    if in_progress is None or todo is None:
        missing = "started" if in_progress is None else "unstarted"
        raise ConfigError(f"Linear team {team.key} has no {missing}-type workflow state")
    in_review = named("In Review") or next(
        (s for s in typed("started") if "review" in s.name.lower()), None
    )
    return in_progress, in_review, todo
