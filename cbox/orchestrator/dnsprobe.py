"""Does this Docker engine leak DNS from internal networks? (CVE-2024-29018)

On engines before 23.0.11, 25.0.5 and 26.0.0 (GHSA-mq39-4gv4-mvpx; 24.x was
never fixed) the embedded resolver of a container attached only to an
`--internal` network still forwards queries to upstream servers. An agent in
a box can then send data out in DNS names (`<secret>.attacker.example`),
past every other door. claude-box mitigates it for its own boxes with the
advisory's workaround — a custom upstream (`container.NON_FORWARDING_DNS`)
that is forwarded to from the box's namespace, where it has no route — and
`cbox doctor` reports the engine.

The probe shows it empirically without touching anything outside this host:
a throw-away internal network, a tiny DNS responder on that network's gateway
address (an address of this host), and a container asking the embedded
resolver for a made-up name with that responder as its upstream. A fixed
engine refuses to forward; an affected one returns the responder's answer.
A second container with the boxes' own DNS setting must get no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from dataclasses import dataclass
from typing import Any, cast

from cbox.errors import CboxError
from cbox.orchestrator.container import NON_FORWARDING_DNS
from cbox.orchestrator.docker import LABEL_MANAGED, DockerBackend

ADVISORY = "CVE-2024-29018 / GHSA-mq39-4gv4-mvpx"
FIXED_IN = "23.0.11, 25.0.5, 26.0.0"
#: What the probe's responder answers: a documentation address nobody uses.
PROBE_ANSWER = "192.0.2.77"
PROBE_TIMEOUT_S = 60.0


def engine_affected(version: str) -> bool | None:
    """Whether an engine version forwards DNS from internal networks; None if unparsable."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)(-rc\.?(\d+))?", version.strip())
    if match is None:
        return None
    major, minor, patch = int(match[1]), int(match[2]), int(match[3])
    rc = int(match[5]) if match[5] else None
    if major < 23:
        return True
    if major == 23:
        return (minor, patch) < (0, 11)
    if major == 24:
        return True
    if major == 25:
        return (minor, patch) < (0, 5)
    if major == 26 and (minor, patch) == (0, 0) and rc is not None:
        return rc < 3
    return False


@dataclass(frozen=True)
class ProbeResult:
    leaked: bool  # the engine forwarded a query from an internal network
    queries: int  # how many reached the responder
    mitigated: bool  # a container with the boxes' DNS setting got no answer


class _Responder(asyncio.DatagramProtocol):
    """Answers every A query with PROBE_ANSWER and counts what it saw."""

    def __init__(self) -> None:
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        import dns.message
        import dns.rdatatype
        import dns.rrset

        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        self.queries += 1
        response = dns.message.make_response(query)
        for question in query.question:
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(
                    dns.rrset.from_text(question.name, 5, "IN", "A", PROBE_ANSWER)
                )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


def _ask(image: str, network: str, dns: str, name: str, label: str) -> dict[str, Any]:
    return {
        "Image": image,
        "Cmd": ["getent", "hosts", name],
        "User": "65534:65534",
        "Labels": {LABEL_MANAGED: "true", label: "dns-probe"},
        "HostConfig": {
            "NetworkMode": network,
            "Dns": [dns],
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
        },
    }


async def probe(docker: DockerBackend, image: str) -> ProbeResult:
    """Run the empirical probe; needs root (port 53) and an image with `getent`."""
    tag = secrets.token_hex(4)
    network = f"cbox-dnsprobe-{tag}"
    label = "dev.cbox.dns-probe"
    gateway = await docker.create_network(
        network, bridge=f"cbp-{tag}", internal=True, labels={label: tag}
    )
    loop = asyncio.get_running_loop()
    transport: asyncio.BaseTransport | None = None
    try:
        try:
            transport, responder = await loop.create_datagram_endpoint(
                _Responder, local_addr=(gateway, 53)
            )
        except OSError as exc:
            raise CboxError(f"DNS probe: cannot listen on {gateway}:53 ({exc})") from exc
        name = f"leak-{tag}.cbox-probe.example"
        _, out = await docker.run_helper(
            f"cbox-dnsprobe-{tag}", _ask(image, network, gateway, name, label), PROBE_TIMEOUT_S
        )
        leaked = PROBE_ANSWER in out or responder.queries > 0
        seen = responder.queries
        code_m, out_m = await docker.run_helper(
            f"cbox-dnsprobe-{tag}-m",
            _ask(image, network, NON_FORWARDING_DNS, f"box-{name}", label),
            PROBE_TIMEOUT_S,
        )
        mitigated = code_m != 0 and PROBE_ANSWER not in out_m and responder.queries == seen
        return ProbeResult(leaked=leaked, queries=seen, mitigated=mitigated)
    finally:
        if transport is not None:
            transport.close()
        with contextlib.suppress(CboxError):
            await docker.remove_network(network)
