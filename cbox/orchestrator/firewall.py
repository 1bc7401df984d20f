"""Host firewall rules that make the gateway the box's only door on the host.

A task network's gateway IP is an address of the host, so without this any
host service listening on all interfaces (a database, the claude-box API
itself, sshd) would be reachable from a task container. For each task we
allow TCP from its bridge to the gateway's (and proxy's) ports only, and
reject everything else arriving from that bridge, in a chain of our own
jumped to from INPUT.

It needs root and `iptables`. `CBOX_HOST_FIREWALL=auto` (the default) uses it
when it can and warns when it cannot; `on` refuses to start without it; `off`
skips it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil

from cbox.errors import ConfigError

log = logging.getLogger(__name__)


def chain_name(instance: str) -> str:
    """The iptables chain of one orchestrator instance (chain names stop at 28 chars)."""
    return "CBOX-" + hashlib.sha256(instance.encode()).hexdigest()[:10]


class HostFirewall:
    def __init__(self, mode: str, instance: str) -> None:
        self.mode = mode
        self.enabled = False
        self.chain = chain_name(instance)

    async def _iptables(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "iptables", "-w", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace").strip()

    async def setup(self) -> None:
        if self.mode == "off":
            return
        problem = None
        if shutil.which("iptables") is None:
            problem = "iptables is not installed"
        elif os.geteuid() != 0:
            problem = "it needs root"
        if problem is None:
            await self._iptables("-N", self.chain)  # exists already after a restart: fine
            code, out = await self._iptables("-F", self.chain)
            if code == 0 and (await self._iptables("-C", "INPUT", "-j", self.chain))[0] != 0:
                code, out = await self._iptables("-I", "INPUT", "1", "-j", self.chain)
            if code != 0:
                problem = f"iptables failed: {out}"
        if problem is None:
            self.enabled = True
            return
        message = (
            f"host firewall for task networks unavailable ({problem}): host services "
            "listening on all interfaces are reachable from task containers"
        )
        if self.mode == "on":
            raise ConfigError(message + " (CBOX_HOST_FIREWALL=on)")
        log.warning("%s; set CBOX_HOST_FIREWALL=off to silence this", message)

    def _rules(self, iface: str, ports: list[int]) -> list[list[str]]:
        dports = ",".join(str(p) for p in ports)
        return [
            ["-i", iface, "-p", "tcp", "-m", "multiport", "--dports", dports, "-j", "ACCEPT"],
            ["-i", iface, "-j", "REJECT"],
        ]

    async def confine(self, iface: str, ports: list[int], *, fresh: bool = True) -> None:
        """Add the task's rules; `fresh=False` (adoption) first drops any it already has."""
        if not self.enabled:
            return
        if not fresh:
            await self.release(iface, ports)
        for rule in self._rules(iface, ports):
            code, out = await self._iptables("-A", self.chain, *rule)
            if code != 0:
                raise ConfigError(f"iptables could not confine {iface}: {out}")

    async def release(self, iface: str, ports: list[int]) -> None:
        if not self.enabled:
            return
        for rule in self._rules(iface, ports):
            await self._iptables("-D", self.chain, *rule)
