"""A scripted DNS server on loopback: the allowlist proxy's resolver in tests.

`cbox serve` can be told to resolve through one DNS server
(`CBOX_EGRESS_DNS`); this one answers from a fixed table, so a test can make
a listed wildcard name point wherever an attacker would point it (loopback,
metadata, an IPv4-mapped address) without touching the host's resolver.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class FakeDns(asyncio.DatagramProtocol):
    def __init__(self, records: dict[str, list[str]]) -> None:
        # name -> addresses; IPv6 ones are served as AAAA, the rest as A.
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.asked: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.port = int(transport.get_extra_info("sockname")[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        for question in query.question:
            name = question.name.to_text().lower().rstrip(".")
            self.asked.append(name)
            if name not in self.records:
                response.set_rcode(dns.rcode.NXDOMAIN)
                continue
            want = "AAAA" if question.rdtype == dns.rdatatype.AAAA else "A"
            for address in self.records[name]:
                if ("AAAA" if ":" in address else "A") == want:
                    response.answer.append(
                        dns.rrset.from_text(question.name, 5, "IN", want, address)
                    )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
