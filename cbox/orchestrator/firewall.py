"""Host firewall rules that make the gateway the box's only door on the host.

A task network's gateway IP is an address of the host, so without this any
host service listening on all interfaces (a database, the claude-box API
itself, sshd) would be reachable from a task container. For each task we
allow TCP from its bridge to the gateway's (and proxy's) ports only, and
reject everything else arriving from that bridge, in a chain of our own
jumped to from INPUT.

The rules must never lapse while a box runs, restarts of the orchestrator
included: the chain is never flushed. Start-up only makes sure the chain and
its jump exist; each box's rules are installed idempotently (`-C` before
adding, the REJECT before the ACCEPT), an adopted box's rules are checked in
place, and only rules of bridges that no longer exist are swept. A rule that
cannot be installed fails the task.

It needs root and `iptables`. `CBOX_HOST_FIREWALL=auto` (the default) uses it
when it can; when it cannot, tasks that rely on it (`gateway` and `allowlist`
networks) are refused with the reason, at submit and in the start-up log.
`on` refuses to start without it. `off` skips it, with a loud warning: host
services listening on all interfaces are then reachable from every box.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shlex
import shutil

from cbox.errors import ConfigError, FirewallUnavailable

log = logging.getLogger(__name__)

#: Network modes whose confinement depends on these rules.
CONFINED_NETWORKS = ("gateway", "allowlist")


def chain_name(instance: str) -> str:
    """The iptables chain of one orchestrator instance (chain names stop at 28 chars)."""
    return "CBOX-" + hashlib.sha256(instance.encode()).hexdigest()[:10]


class HostFirewall:
    def __init__(self, mode: str, instance: str) -> None:
        self.mode = mode
        self.enabled = False
        self.problem: str | None = None
        self.chain = chain_name(instance)
        self._lock = asyncio.Lock()

    async def _iptables(self, *args: str) -> tuple[int, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                "iptables", "-w", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return 127, str(exc)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace").strip()

    async def setup(self) -> None:
        """Make sure the chain and its jump exist; never flush what is in it."""
        if self.mode == "off":
            self.problem = "CBOX_HOST_FIREWALL=off"
            log.warning(
                "HOST FIREWALL OFF (CBOX_HOST_FIREWALL=off): every host service listening "
                "on all interfaces (the claude-box API, databases, sshd) is reachable from "
                "task containers"
            )
            return
        problem = None
        if shutil.which("iptables") is None:
            problem = "iptables is not installed"
        elif os.geteuid() != 0:
            problem = "it needs root"
        if problem is None:
            code, out = await self._iptables("-S", self.chain)
            if code != 0:
                code, out = await self._iptables("-N", self.chain)
            if code == 0 and (await self._iptables("-C", "INPUT", "-j", self.chain))[0] != 0:
                code, out = await self._iptables("-I", "INPUT", "1", "-j", self.chain)
            if code != 0:
                problem = f"iptables failed: {out}"
        if problem is None:
            self.enabled = True
            return
        self.problem = problem
        message = f"host firewall for task networks unavailable ({problem})"
        if self.mode == "on":
            raise ConfigError(message + " (CBOX_HOST_FIREWALL=on)")
        log.error(
            "%s: tasks on gateway/allowlist networks will be refused; run as root with "
            "iptables, or set CBOX_HOST_FIREWALL=off to run them unconfined", message,
        )

    def check(self, network: str) -> None:
        """Refuse a task whose network mode relies on rules this server cannot install."""
        if self.enabled or self.mode == "off" or network not in CONFINED_NETWORKS:
            return
        raise FirewallUnavailable(
            f"this server cannot confine task networks ({self.problem}); tasks on "
            f"{network!r} networks are refused (CBOX_HOST_FIREWALL={self.mode}). Run the "
            "server as root with iptables, or set CBOX_HOST_FIREWALL=off to accept that "
            "host services are reachable from boxes"
        )

    def _rules(self, iface: str, ports: list[int]) -> list[list[str]]:
        """REJECT first: it is appended, the ACCEPT is inserted above it."""
        dports = ",".join(str(p) for p in ports)
        return [
            ["-i", iface, "-j", "REJECT"],
            ["-i", iface, "-p", "tcp", "-m", "multiport", "--dports", dports, "-j", "ACCEPT"],
        ]

    async def confine(self, iface: str, ports: list[int]) -> None:
        """Make the bridge's rules exactly these, without a moment of no REJECT.

        Called for new boxes and again for adopted ones: rules already there
        stay untouched; a leftover ACCEPT for other ports is dropped last.
        """
        if not self.enabled:
            if self.mode != "off":
                raise FirewallUnavailable(f"cannot confine {iface}: {self.problem}")
            return
        async with self._lock:
            wanted = self._rules(iface, ports)
            for n, rule in enumerate(wanted):
                if (await self._iptables("-C", self.chain, *rule))[0] == 0:
                    continue
                add = ["-A", self.chain] if n == 0 else ["-I", self.chain, "1"]
                code, out = await self._iptables(*add, *rule)
                if code != 0:
                    raise FirewallUnavailable(f"iptables could not confine {iface}: {out}")
            for rule in await self._rules_of(iface):
                if rule not in wanted:
                    await self._iptables("-D", self.chain, *rule)

    async def _listing(self) -> list[list[str]]:
        code, out = await self._iptables("-S", self.chain)
        if code != 0:
            return []
        rules = []
        for line in out.splitlines():
            words = shlex.split(line)
            if len(words) > 2 and words[0] == "-A" and words[1] == self.chain:
                rules.append(words[2:])
        return rules

    async def _rules_of(self, iface: str) -> list[list[str]]:
        return [_canonical(r) for r in await self._listing() if _iface(r) == iface]

    async def release(self, iface: str) -> None:
        """Drop every rule of a bridge: only once its container is gone."""
        if not self.enabled:
            return
        async with self._lock:
            for rule in await self._rules_of(iface):
                await self._iptables("-D", self.chain, *rule)

    async def sweep(self, present: set[str]) -> None:
        """Drop the rules of bridges that no longer exist (tasks that ended while down)."""
        if not self.enabled:
            return
        async with self._lock:
            for rule in await self._listing():
                iface = _iface(rule)
                if iface is not None and iface not in present:
                    await self._iptables("-D", self.chain, *_canonical(rule))


def _iface(rule: list[str]) -> str | None:
    return rule[rule.index("-i") + 1] if "-i" in rule and rule.index("-i") + 1 < len(rule) else None


def _canonical(rule: list[str]) -> list[str]:
    """A listed rule as we write it: `-S` adds `--reject-with` and `-m tcp` defaults."""
    words = list(rule)
    if words[-2:] == ["--reject-with", "icmp-port-unreachable"]:
        words = words[:-2]
    if "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == ["tcp"]:
        at = words.index("-m")
        del words[at : at + 2]
    return words
