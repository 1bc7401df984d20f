"""Each task's way out: its own Docker network, gateway listener, proxy and firewall rules.

`TaskNetworks` puts together the pieces that decide what a box can reach:
the per-task network (internal unless the policy says `open`), the API
gateway's listener on that network's gateway IP, the `allowlist` CONNECT
proxy, and the host firewall rules that confine the bridge to those ports.
On adoption after a restart the same network, token, address and ports are
reused: the running container already holds them.
"""

from __future__ import annotations

from cbox.models import Task
from cbox.orchestrator.budget import Budget
from cbox.orchestrator.container import Gateway
from cbox.orchestrator.docker import LABEL_INSTANCE, LABEL_TASK, DockerBackend, bridge_name
from cbox.orchestrator.egress import DenialHandler, EgressProxy, dns_resolver, system_resolver
from cbox.orchestrator.firewall import CONFINED_NETWORKS, HostFirewall
from cbox.orchestrator.gateway import Access, ApiGateway, BudgetHandler, RefusedHandler, new_token
from cbox.policies import EffectiveLimits
from cbox.settings import Settings


def port_of(url: str | None) -> int:
    if not url:
        return 0
    tail = url.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class TaskNetworks:
    def __init__(
        self,
        settings: Settings,
        docker: DockerBackend,
        *,
        on_budget: BudgetHandler,
        on_denied: DenialHandler,
        on_refused: RefusedHandler | None = None,
    ) -> None:
        self.settings = settings
        self.docker = docker
        key = settings.anthropic_api_key
        oauth = settings.claude_code_oauth_token
        self.gateway = ApiGateway(
            upstream=settings.anthropic_base_url,
            api_key=key.get_secret_value() if key else None,
            oauth_token=oauth.get_secret_value() if oauth else None,
            on_budget=on_budget,
            on_refused=on_refused,
            on_denied=on_denied,
        )
        self.egress = EgressProxy(
            on_denied=on_denied,
            resolver=dns_resolver(settings.egress_dns) if settings.egress_dns else system_resolver,
            idle_s=settings.egress_idle_s,
        )
        self.firewall = HostFirewall(settings.host_firewall, settings.instance)

    @property
    def uses_oauth(self) -> bool:
        return self.gateway.uses_oauth

    async def start(self) -> None:
        await self.firewall.setup()
        await self.gateway.start()

    async def close(self) -> None:
        """Stop listening. Firewall rules stay: adopted containers are still confined."""
        await self.gateway.close()
        await self.egress.close()

    async def open(self, task: Task, limits: EffectiveLimits) -> None:
        """Give the task its network and doors; fills network, token and URLs on `task`.

        Also for an adopted task, whose box is running: its firewall rules were
        kept across the restart, and are checked in place here. Raises
        `FirewallUnavailable` when the box cannot be confined: the caller
        must not run it.
        """
        policy = limits.policy
        self.firewall.check(policy.network)
        task.network = task.network or f"{self.settings.network}-{task.id}"
        ip = await self.docker.create_network(
            task.network,
            bridge=bridge_name(task.id),
            internal=policy.network != "open",
            labels={LABEL_INSTANCE: self.settings.instance, LABEL_TASK: task.id},
        )
        task.gateway_token = task.gateway_token or new_token()
        port = await self.gateway.open_for(
            task.id, task.gateway_token, ip, port_of(task.gateway_url), *_rules(limits)
        )
        task.gateway_url = f"http://{ip}:{port}"
        if policy.network == "allowlist":
            proxy = await self.egress.open_for(
                task.id, ip, policy.allow_hosts, policy.allow_ports, port_of(task.proxy_url)
            )
            task.proxy_url = f"http://{ip}:{proxy}"
        if self.firewall.enabled or policy.network in CONFINED_NETWORKS:
            await self.firewall.confine(bridge_name(task.id), _door_ports(task))

    def gateway_for(self, task: Task) -> Gateway:
        """How the task's box reaches the model API; `open` must have filled the task."""
        assert task.gateway_url is not None
        assert task.gateway_token is not None
        return Gateway(
            url=task.gateway_url,
            token=task.gateway_token,
            oauth=self.uses_oauth,
            proxy_url=task.proxy_url,
        )

    def set_budget(self, task: Task, limits: EffectiveLimits) -> None:
        """The task's own budget and API access, for doors opened before the task was
        known (warm pool)."""
        self.gateway.set_rules(task.id, *_rules(limits))

    async def close_for(self, task: Task) -> None:
        """Close the task's doors and record what the gateway counted on it."""
        usage = await self.gateway.close_for(task.id)
        if usage is not None and usage.requests:
            task.outcome.gateway_usage = usage.as_dict()
            if task.outcome.cost_usd is None:
                task.outcome.cost_usd = round(usage.cost_usd, 6)
        await self.egress.close_for(task.id)

    async def release(self, task: Task) -> None:
        """Drop the task's firewall rules: only once its container is gone."""
        if task.network:
            await self.firewall.release(bridge_name(task.id))

    async def sweep(self, tasks: list[Task]) -> None:
        """After recovery: drop firewall rules of bridges no task of ours has any more."""
        await self.firewall.sweep({bridge_name(t.id) for t in tasks if t.network})

    async def remove(self, task: Task) -> None:
        if task.network:
            await self.docker.remove_network(task.network)


def _rules(limits: EffectiveLimits) -> tuple[Budget, Access]:
    return (
        Budget(max_cost_usd=limits.max_cost_usd, max_tokens=limits.max_tokens),
        Access(betas=frozenset(limits.gateway_betas), server_tools=limits.server_tools),
    )


def _door_ports(task: Task) -> list[int]:
    return [p for p in (port_of(task.gateway_url), port_of(task.proxy_url)) if p]
