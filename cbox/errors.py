"""The one exception tree of claude-box.

    CboxError
    ├── ConfigError            bad settings or policy files (stops start-up)
    ├── InvalidRequest         a caller's mistake: bad field, empty prompt (HTTP 400/422)
    │   └── PolicyViolation    a request that would loosen a policy ceiling
    ├── TaskNotFound           (also LookupError)  unknown task id (HTTP 404)
    ├── SessionNotFound        (also LookupError)  unknown session (HTTP 404)
    ├── WebhookNotFound        (also LookupError)  unknown webhook subscription (HTTP 404)
    ├── SessionBroken          a session's volume is gone or corrupt (the task fails)
    ├── Conflict               an action the task's state does not allow (HTTP 409)
    ├── FirewallUnavailable    the host firewall a task's network needs is not there (503)
    ├── DockerError            the engine refused or is unreachable
    │   ├── ImageNotFound      the sandbox image is missing: build it first
    │   └── UnsafeMount        a bind source no longer resolves to itself (a symlink swap)
    ├── ImageBuildError        `cbox image build` failed, with the engine's message
    ├── ClientError            the CLI could not talk to a server
    │   └── ServerUnreachable
    ├── LinearError            Linear's API refused a request or could not be reached
    └── GitHubError            GitHub's API refused a request, or a push failed

Foreign exceptions (aiodocker, aiohttp, sqlite) are translated once, in the
module that talks to them, with `raise ... from exc`. The HTTP layer maps this
tree to status codes through one table (`cbox.api.errors`).
"""

from __future__ import annotations


class CboxError(Exception):
    """Root of every error claude-box raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class ConfigError(CboxError, ValueError):
    """Settings or a policy file are wrong; the process should not start."""


class InvalidRequest(CboxError, ValueError):
    """The caller sent something we cannot accept."""


class PolicyViolation(InvalidRequest):
    """The request asks for more than the policy's ceiling allows."""


class TaskNotFound(CboxError, LookupError):
    """No task has this id."""


class SessionNotFound(CboxError, LookupError):
    """No session has this name."""


class WebhookNotFound(CboxError, LookupError):
    """No webhook subscription has this name."""


class SessionBroken(CboxError):
    """A session's stored conversation is gone or unreadable; never silently restarted."""


class Conflict(CboxError):
    """The task is in a state where this action makes no sense."""


class FirewallUnavailable(CboxError):
    """The host firewall rules a box relies on cannot be installed: refuse, never run open."""


class DockerError(CboxError):
    """The Docker engine refused a request or could not be reached."""


class UnsafeMount(DockerError):
    """A host path about to be bind-mounted now passes through a symlink."""


class ImageNotFound(DockerError):
    """The sandbox image is not present on the engine."""


class ImageBuildError(CboxError):
    """Building the sandbox image failed."""


class ClientError(CboxError):
    """The CLI or a worker got an error answer from a server."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachable(ClientError):
    """No claude-box server answered at the given URL."""


class LinearError(CboxError):
    """Linear's GraphQL API answered with an error, or could not be reached.

    Bad configuration found at start (key, team, label) is a `ConfigError`
    instead, so the worker can say it in one line and exit.
    """


class GitHubError(CboxError):
    """GitHub's API refused a request or could not be reached, or a push failed.

    Bad configuration found at start (token, App key, repository, label) is a
    `ConfigError` instead, as for Linear.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
