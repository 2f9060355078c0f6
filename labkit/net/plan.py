"""The address plan of the standard lab: one stack behind a veth, the Wire on the other end.

Every test gets its own pair of namespaces, so every test can use the same addresses; the plan
is data so suites can ask "what is the stack's IPv6 address" instead of hard-coding it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from labkit.errors import LabInputError
from labkit.net.addressing import lab_interface
from labkit.net.topology import Link, Topology, check_mac, check_mtu

if TYPE_CHECKING:
    from scapy.packet import Packet

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")


@dataclass(frozen=True)
class Endpoints:
    """One IP version of the plan: who is who, so a check says `ends.stack` once for v4 and v6.

    `peer` is the Wire's side, `stack` the stack under test, `unused` an address of the stack's
    subnet that nobody owns. `to_stack()` and `from_stack()` are the IP headers of each direction
    (scapy layers, imported on use: this module stays free of scapy).
    """

    family: Family
    peer: str
    stack: str
    unused: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    @property
    def version(self) -> int:
        return 4 if self.family == "ipv4" else 6

    @property
    def af(self) -> socket.AddressFamily:
        return socket.AF_INET if self.family == "ipv4" else socket.AF_INET6

    @property
    def ip(self) -> type[Packet]:
        """scapy's IP or IPv6 layer class."""
        if self.family == "ipv4":
            from scapy.layers.inet import IP

            return cast("type[Packet]", IP)
        from scapy.layers.inet6 import IPv6

        return cast("type[Packet]", IPv6)

    def to_stack(self, **fields: Any) -> Packet:
        """The IP header of a packet from the peer to the stack (fields override)."""
        return self.ip(**{"src": self.peer, "dst": self.stack, **fields})

    def from_stack(self, **fields: Any) -> Packet:
        """A template for the IP header of the stack's packets to the peer (fields override)."""
        return self.ip(**{"src": self.stack, "dst": self.peer, **fields})

    def host(self, number: int) -> str:
        """Host `number` of the stack's subnet (another neighbour a check invents)."""
        return str(self.network.network_address + number)


@dataclass(frozen=True)
class AddressPlan:
    net4: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network("198.18.0.0/24"))
    net6: ipaddress.IPv6Network = field(default_factory=lambda: ipaddress.IPv6Network("2001:db8::/64"))
    stack_mac: str = "02:00:00:00:00:02"
    peer_mac: str = "02:00:00:00:00:01"
    mtu: int = 1500
    stack_ifname: str = "eth0"
    peer_ifname: str = "peer0"
    # Host numbers in both prefixes. A stack that fixes its own (slirp4netns: the namespace's
    # tap is .100) says so through its driver's plan_for().
    peer_host: int = 1
    stack_host: int = 2
    unused_host: int = 3

    def __post_init__(self) -> None:
        for net in (self.net4, self.net6):
            lab_interface(str(net))
            if net.num_addresses < 4:
                raise LabInputError(f"lab prefix {net} is too small; allowed: /30 or larger (IPv4), /126 or larger (IPv6)")
            hosts = (self.peer_host, self.stack_host, self.unused_host)
            if len(set(hosts)) != 3 or not all(0 < h < net.num_addresses - 1 for h in hosts):
                raise LabInputError(f"host numbers {hosts} do not fit {net}; allowed: three different hosts of the prefix")
        check_mac(self.stack_mac)
        check_mac(self.peer_mac)
        check_mtu(self.mtu)

    @classmethod
    def parse(cls, net4: str | None = None, net6: str | None = None, **kw: object) -> AddressPlan:
        values: dict[str, object] = dict(kw)
        for key, text, want in (("net4", net4, 4), ("net6", net6, 6)):
            if text is None:
                continue
            iface = lab_interface(text if "/" in text else f"{text}/")
            if iface.version != want:
                raise LabInputError(f"lab prefix {text!r} is not IPv{want}; allowed: a prefix in the IPv{want} lab range")
            values[key] = iface.network
        return cls(**values)  # type: ignore[arg-type]

    # By default the peer (gateway) is .1 / ::1, the stack .2 / ::2.
    @property
    def peer4(self) -> str:
        return str(self.net4.network_address + self.peer_host)

    @property
    def stack4(self) -> str:
        return str(self.net4.network_address + self.stack_host)

    @property
    def peer6(self) -> str:
        return str(self.net6.network_address + self.peer_host)

    @property
    def stack6(self) -> str:
        return str(self.net6.network_address + self.stack_host)

    def unused4(self) -> str:
        """An address in the stack's subnet that nobody owns."""
        return str(self.net4.network_address + self.unused_host)

    def unused6(self) -> str:
        return str(self.net6.network_address + self.unused_host)

    def endpoints(self, family: str) -> Endpoints:
        """The addresses of one IP version: `plan.endpoints("ipv6").stack` is `plan.stack6`."""
        if family == "ipv4":
            return Endpoints("ipv4", self.peer4, self.stack4, self.unused4(), self.net4)
        if family == "ipv6":
            return Endpoints("ipv6", self.peer6, self.stack6, self.unused6(), self.net6)
        raise LabInputError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")

    def build(self, defaults: tuple[int, ...] = (4, 6)) -> tuple[Topology, Link, Link]:
        """Declare the standard topology: (topology, the stack's end, the Wire's end), with a
        default route via the peer for each IP version in `defaults`."""
        topo = Topology()
        sb, peer = topo.namespace("sb"), topo.namespace("peer")
        # The peer end is quiet: no addresses and no IPv6, so its kernel never answers or
        # solicits anything; the Wire speaks for the peer.
        stack_end, peer_end = topo.veth(
            sb, self.stack_ifname, peer, self.peer_ifname, mtu=self.mtu, a_mac=self.stack_mac, b_mac=self.peer_mac
        )
        peer_end.ipv6 = False
        stack_end.addr(f"{self.stack4}/{self.net4.prefixlen}").addr(f"{self.stack6}/{self.net6.prefixlen}")
        for version in defaults:
            sb.route("default", via=self.peer4 if version == 4 else self.peer6)
        return topo, stack_end, peer_end
