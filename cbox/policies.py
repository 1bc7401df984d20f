"""Policies: what a task may do, as named TOML files.

A policy is both the default and the ceiling for a task: a request may
tighten any limit (less memory, a shorter timeout, read-only) but never loosen
one — that gets a `PolicyViolation` naming the field. Built-in policies ship
in `cbox/builtin_policies/`; files in `CBOX_POLICIES_DIR` add new ones or
replace built-ins of the same name. A broken file stops start-up with the
file, the field and the reason (`ConfigError`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cbox.egress_rules import check_host_entry, check_port_entry
from cbox.errors import ConfigError, InvalidRequest, PolicyViolation
from cbox.models import MountMode, TaskSpec
from cbox.orchestrator.apirules import DEFAULT_BETAS

BetaName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,99}$")]


class Policy(BaseModel):
    """One policy file. Every limit here is a ceiling for the tasks using it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", description="Set from the file name.")
    description: str = ""
    aliases: list[str] = Field(default_factory=list)
    workspace: Literal["ro", "rw", "isolated"] = Field(
        "rw",
        description="ro / rw: the workspace itself, mounted read-only or read-write (one "
        "writer at a time); isolated: a private copy of the git workspace on a new branch "
        "`cbox/<task id>`, committed back when the task ends (writers run in parallel).",
    )
    network: Literal["gateway", "allowlist", "open"] = Field(
        "gateway",
        description="gateway: the model API through the host gateway, nothing else; "
        "allowlist: also HTTPS to `allow_hosts` through a CONNECT proxy; open: a plain bridge.",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="For network = 'allowlist': host names, *.suffix wildcards, IP addresses "
        "or CIDRs that may be reached. A name is resolved by the proxy and refused if any of "
        "its addresses is loopback, private, link-local, multicast or the host's own, unless "
        "that address (or a CIDR holding it) is listed too.",
    )
    allow_ports: list[int | str] = Field(
        default_factory=lambda: list[int | str]([443]),
        description="For network = 'allowlist': ports (or 'low-high' ranges) the proxy may "
        "connect to; default 443 only. List 80 explicitly for plain-HTTP-over-CONNECT.",
    )
    max_cost_usd: float | None = Field(
        None, gt=0, description="Budget: stop the task once the gateway counts more than this."
    )
    max_tokens: int | None = Field(None, gt=0, description="Budget in tokens, same rule.")
    server_tools: bool = Field(
        False,
        description="Let model calls use Anthropic's server-side tools (web search / fetch, "
        "code execution, MCP connectors, URL and Files-API content): the API itself "
        "reaching out, past any network policy. Off: Claude Code's WebSearch tool fails.",
    )
    gateway_betas: list[BetaName] = Field(
        default_factory=lambda: list(DEFAULT_BETAS),
        description="`anthropic-beta` values the gateway lets through. Default: exactly "
        "those Claude Code sends (recorded, see cbox/orchestrator/apirules.py).",
    )
    cpus: float = Field(2.0, gt=0, le=256)
    memory_mb: int = Field(4096, ge=64)
    pids: int = Field(512, ge=16)
    nofile: int = Field(4096, ge=64)
    timeout_s: float = Field(3600, gt=0)
    model: str | None = None
    max_turns: int | None = Field(None, gt=0)
    allowed_tools: list[str] = Field(default_factory=list)
    disallowed_tools: list[str] = Field(default_factory=list)
    append_system_prompt: str | None = None
    env_passthrough: list[str] = Field(
        default_factory=list, description="Host environment variables passed in by name."
    )
    image: str | None = Field(None, description="Sandbox image; default CBOX_IMAGE.")
    agent: Literal["claude", "command"] = "claude"
    command: list[str] = Field(
        default_factory=list, description="For agent = 'command': argv run in the box."
    )

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        return [check_host_entry(h) for h in hosts]

    @field_validator("allow_ports")
    @classmethod
    def _ports(cls, ports: list[int | str]) -> list[int | str]:
        for port in ports:
            check_port_entry(port)
        return ports


#: Variables that hold a credential of the host (or of claude-box itself): never
#: passed into a box, whatever a policy says. Anything named CBOX_* is refused too.
CREDENTIAL_NAMES = frozenset(
    {
        "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
        "LINEAR_API_KEY", "GITHUB_TOKEN", "GH_TOKEN", "GITHUB_PAT",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AZURE_CLIENT_SECRET", "OPENAI_API_KEY", "DOCKER_AUTH_CONFIG", "NPM_TOKEN",
        "PYPI_TOKEN",
    }
)
#: Whole families by shape, so a credential nobody listed is still kept out.
CREDENTIAL_PREFIXES = ("CBOX_", "ANTHROPIC_", "CLAUDE_CODE_OAUTH", "AWS_", "AZURE_", "GOOGLE_",
                       "GCP_", "GITHUB_", "GITLAB_", "LINEAR_")
CREDENTIAL_SUFFIXES = ("_TOKEN", "_API_KEY", "_APIKEY", "_ACCESS_KEY", "_PASSWORD", "_PASSWD",
                       "_CREDENTIALS", "_PRIVATE_KEY", "_AUTH")
CREDENTIAL_WORDS = ("SECRET",)
#: Variables that are a way to a credential rather than one (sockets, helpers, files).
ACCESS_NAMES = frozenset(
    {"DOCKER_HOST", "SSH_AUTH_SOCK", "GIT_ASKPASS", "GOOGLE_APPLICATION_CREDENTIALS"}
)
#: A credential shorter than this is only matched whole, not as a substring.
MIN_SECRET_CHARS = 8


def passthrough_problem(
    name: str, environ: Mapping[str, str] | None, secrets: Sequence[str]
) -> str | None:
    """Why passing host variable `name` into a box would leak a credential, or None."""
    upper = name.upper()
    if (upper in CREDENTIAL_NAMES or upper in ACCESS_NAMES
            or upper.startswith(CREDENTIAL_PREFIXES) or upper.endswith(CREDENTIAL_SUFFIXES)
            or any(word in upper for word in CREDENTIAL_WORDS)):
        return f"{name} is a credential variable and never enters a box"
    if environ is None or name not in environ:
        return None
    value = environ[name]
    for secret in secrets:
        if secret and (
            value == secret or (len(secret) >= MIN_SECRET_CHARS and secret in value)
        ):
            return f"the value of {name} holds one of the server's credentials"
    return None


def check_passthrough(
    policy: Policy, where: str, environ: Mapping[str, str] | None, secrets: Sequence[str]
) -> None:
    """Refuse a policy whose `env_passthrough` would carry a credential into its boxes."""
    for name in policy.env_passthrough:
        problem = passthrough_problem(name, environ, secrets)
        if problem is not None:
            raise ConfigError(f"policy file {where}: field env_passthrough: {problem}")


class EffectiveLimits(BaseModel):
    """A policy with one request's tightenings applied: what the runner uses."""

    model_config = ConfigDict(frozen=True)

    policy: Policy
    mount_mode: MountMode
    isolated: bool = False
    cpus: float
    memory_mb: int
    pids: int
    timeout_s: float
    model: str | None
    max_turns: int | None
    max_cost_usd: float | None
    max_tokens: int | None
    server_tools: bool = False
    gateway_betas: tuple[str, ...] = DEFAULT_BETAS


def _load_file(
    path: Path,
    text: str,
    environ: Mapping[str, str] | None = None,
    secrets: Sequence[str] = (),
) -> Policy:
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy file {path}: not valid TOML: {exc}") from exc
    raw["name"] = path.stem
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(file)"
        raise ConfigError(f"policy file {path}: field {where}: {err['msg']}") from exc
    if policy.agent == "command" and not policy.command:
        raise ConfigError(f"policy file {path}: field command: required when agent = 'command'")
    if policy.network == "allowlist" and not policy.allow_hosts:
        raise ConfigError(
            f"policy file {path}: field allow_hosts: required when network = 'allowlist'"
        )
    check_passthrough(policy, str(path), environ, secrets)
    return policy


def _builtin_files() -> Iterable[tuple[Path, str]]:
    root = resources.files("cbox") / "builtin_policies"
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            yield Path(f"<builtin>/{entry.name}"), entry.read_text(encoding="utf-8")


class PolicySet:
    """All policies the server knows, by name and alias."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self._by_name: dict[str, Policy] = {}
        for policy in policies:
            self._by_name[policy.name] = policy
        self._aliases = {
            alias: p.name for p in self._by_name.values() for alias in p.aliases
        }

    @classmethod
    def load(
        cls,
        directory: Path | None,
        *,
        environ: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
    ) -> PolicySet:
        """Every policy; `environ` and `secrets` (the server's credentials) let
        `env_passthrough` be checked against what the variables hold."""
        found = {
            p.name: p
            for p in (_load_file(path, text, environ, secrets) for path, text in _builtin_files())
        }
        if directory is not None:
            if not directory.is_dir():
                raise ConfigError(f"policies directory {directory} does not exist")
            for path in sorted(directory.glob("*.toml")):
                try:
                    text = path.read_text(encoding="utf-8")
                except OSError as exc:
                    raise ConfigError(f"policy file {path}: {exc}") from exc
                found[path.stem] = _load_file(path, text, environ, secrets)
        return cls(found.values())

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def all(self) -> list[Policy]:
        return [self._by_name[n] for n in self.names()]

    def get(self, name: str) -> Policy:
        real = self._aliases.get(name, name)
        try:
            return self._by_name[real]
        except KeyError:
            known = ", ".join(self.names())
            raise InvalidRequest(
                f"unknown policy {name!r} (known: {known})", field="policy"
            ) from None

    def resolve(self, spec: TaskSpec) -> EffectiveLimits:
        """Apply the request's tightenings; refuse any that would loosen a ceiling."""
        policy = self.get(spec.policy)

        def tighten(field: str, asked: float | None, ceiling: float) -> float:
            if asked is None:
                return ceiling
            if asked > ceiling:
                raise PolicyViolation(
                    f"{field}={asked:g} exceeds the ceiling {ceiling:g} of policy "
                    f"{policy.name!r}",
                    field=field,
                )
            return asked

        max_turns = policy.max_turns
        if spec.max_turns is not None:
            if max_turns is not None and spec.max_turns > max_turns:
                raise PolicyViolation(
                    f"max_turns={spec.max_turns} exceeds the ceiling {max_turns} of policy "
                    f"{policy.name!r}",
                    field="max_turns",
                )
            max_turns = spec.max_turns
        def tighten_optional(
            field: str, asked: float | None, ceiling: float | None
        ) -> float | None:
            if asked is None or ceiling is None:
                return asked if asked is not None else ceiling
            return tighten(field, asked, ceiling)

        if spec.server_tools and not policy.server_tools:
            raise PolicyViolation(
                f"server_tools=true exceeds policy {policy.name!r}, which does not allow "
                "server-side tools",
                field="server_tools",
            )
        betas = policy.gateway_betas
        if spec.gateway_betas is not None:
            beyond = sorted(set(spec.gateway_betas) - set(betas))
            if beyond:
                raise PolicyViolation(
                    f"gateway_betas: {beyond[0]!r} is not allowed by policy {policy.name!r}",
                    field="gateway_betas",
                )
            betas = spec.gateway_betas

        ro = spec.read_only or policy.workspace == "ro"
        return EffectiveLimits(
            policy=policy,
            mount_mode=MountMode.RO if ro else MountMode.RW,
            # A read-only request needs no copy: nothing can change.
            isolated=policy.workspace == "isolated" and not ro,
            cpus=tighten("cpus", spec.cpus, policy.cpus),
            memory_mb=int(tighten("memory_mb", spec.memory_mb, policy.memory_mb)),
            pids=int(tighten("pids", spec.pids, policy.pids)),
            timeout_s=tighten("timeout_s", spec.timeout_s, policy.timeout_s),
            model=spec.model or policy.model,
            max_turns=max_turns,
            max_cost_usd=tighten_optional("max_cost_usd", spec.max_cost_usd, policy.max_cost_usd),
            max_tokens=(
                None
                if (t := tighten_optional("max_tokens", spec.max_tokens, policy.max_tokens))
                is None
                else int(t)
            ),
            server_tools=policy.server_tools and spec.server_tools is not False,
            gateway_betas=tuple(betas),
        )
