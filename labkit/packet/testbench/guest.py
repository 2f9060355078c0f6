"""The container the Wire plays in front of a tap stack (slirp4netns, pasta).

The container namespace's kernel keeps its own address on tap0, so the Wire takes another one
of the container's network (host GUEST_HOST) and answers for it: the two never answer for each
other. Before anything else it resolves the gateway, as a container's kernel does first: the
stack learns the guest's MAC from it (libslirp answers nothing to a guest it has not heard from
by ARP or NDP).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet
from scapy.utils6 import in6_getnsma, in6_getnsmac

from labkit.net.plan import AddressPlan, Endpoints
from labkit.packet.wire import Wire

GUEST_HOST = 60  # the Wire's own host number in the container's network


@dataclass(frozen=True)
class Guest:
    """Who is who for one IP version: the Wire's `address`, the stack's `gateway` on the tap,
    and the outside's and the host's addresses behind it."""

    family: str
    address: str
    gateway: str
    outside: str
    host: str
    ends: Endpoints

    @classmethod
    def of(cls, plan: AddressPlan, family: str, outside: str, host: str) -> Guest:
        ends = plan.endpoints(family)
        return cls(family, ends.host(GUEST_HOST), ends.stack, outside, host, ends)

    def ip(self, dst: str, **fields: Any) -> Packet:
        """An IP header from the guest to `dst` (the outside, the gateway, ...)."""
        return self.ends.ip(**{"src": self.address, "dst": dst, **fields})

    def towards(self, remote: str) -> Endpoints:
        """The testbench's endpoints for a flow of the guest's to `remote`: the Wire plays the
        container at its own address, and the stack answers in `remote`'s name."""
        e = self.ends
        return Endpoints(e.family, peer=self.address, stack=remote, unused=e.unused, network=e.network)


def announce(wire: Wire, me: Guest, timeout: float = 2.0) -> None:
    """Own the guest's address on the Wire and resolve the gateway from it."""
    wire.own(me.address)
    if me.family == "ipv4":
        wire.send_and_expect(
            Ether(src=wire.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=wire.mac, psrc=me.address, pdst=me.gateway),
            ARP(op=2, psrc=me.gateway),
            timeout=timeout,
        )
        return
    group = in6_getnsma(socket.inet_pton(socket.AF_INET6, me.gateway))
    wire.send_and_expect(
        Ether(src=wire.mac, dst=in6_getnsmac(group))
        / IPv6(src=me.address, dst=socket.inet_ntop(socket.AF_INET6, group), hlim=255)
        / ICMPv6ND_NS(tgt=me.gateway)
        / ICMPv6NDOptSrcLLAddr(lladdr=wire.mac),
        ICMPv6ND_NA(tgt=me.gateway),
        timeout=timeout,
    )
