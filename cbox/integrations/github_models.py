"""The GitHub worker's view of GitHub: repositories, issues, comments (plain values).

githubkit's models are what the wire carries; these are the few fields the
workflow uses, so it does not depend on githubkit's generated classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cbox.errors import ConfigError

#: Permissions that may start work by mentioning the handle ("maintain" is
#: reported as "write" in `permission`; `role_name` says "maintain").
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})

@dataclass(frozen=True, slots=True)
class Repo:
    owner: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> Repo:
        owner, sep, name = text.strip().partition("/")
        if not sep or not owner or not name or "/" in name:
            raise ConfigError(f"--repo wants OWNER/NAME, got {text!r}")
        return cls(owner, name)


@dataclass(frozen=True, slots=True)
class RepoInfo:
    repo: Repo
    node_id: str
    clone_url: str
    default_branch: str


@dataclass(frozen=True, slots=True)
class Issue:
    repo: Repo
    number: int
    node_id: str
    title: str
    body: str
    url: str
    author: str | None
    labels: tuple[str, ...]
    created_at: datetime
    is_pull: bool

    @property
    def ref(self) -> str:
        return f"{self.repo.full_name}#{self.number}"

    @property
    def sort_key(self) -> tuple[int, datetime, int]:
        """A `priority:` label first (`priority:1`/`p1`/`priority: high` ...), then oldest."""
        return priority_rank(self.labels), self.created_at, self.number


@dataclass(frozen=True, slots=True)
class Comment:
    id: int
    node_id: str
    body: str
    author: str | None
    created_at: datetime
    issue_number: int | None


_WORDS = {"critical": 0, "urgent": 1, "highest": 1, "high": 2, "medium": 3, "normal": 3,
          "low": 4, "lowest": 5}


def priority_rank(labels: tuple[str, ...]) -> int:
    """Rank of a `priority:` label: `priority:0`..`priority:9`, `p0`.., or a word; none: 10."""
    best = 10
    for label in labels:
        name = label.strip().lower()
        if not name.startswith("priority:"):
            continue
        value = name.removeprefix("priority:").strip().removeprefix("p")
        rank = int(value) if value.isdigit() else _WORDS.get(value, 10)
        best = min(best, rank)
    return best
