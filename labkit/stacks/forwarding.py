"""Port forwarding from the host namespace into the container, as engines ask tap stacks for it.

A `PortForward` is what `podman run -p` turns into: host ports (one, or a range) on an address
of the host namespace, or on all of them, to ports of the container. slirp4netns takes them at
run time through its API (one port per call, IPv4 only); pasta only on its command line, so the
pasta driver starts with every forward of `STANDARD` and the checks use those.

`STANDARD` is the lab's table: TCP and UDP x IPv4 and IPv6 x one port or a range x the same or a
translated container port x bound to the host's address or to all, plus one forward per protocol
bound to the host's loopback (pasta splices those without crossing the tap).
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass

from labkit.errors import LabInputError
from labkit.net.addressing import lab_address
from labkit.net.layouts import HOST4, HOST6

PROTOS = ("tcp", "udp")
RANGE = 3  # ports in a ranged forward


@dataclass(frozen=True)
class PortForward:
    proto: str  # "tcp" | "udp"
    host_port: int
    container_port: int
    count: int = 1  # consecutive ports from each
    host_addr: str | None = None  # an address of the host namespace; None: all of them
    family: str = "ipv4"  # which IP version a client uses (an unbound forward takes both)

    def __post_init__(self) -> None:
        if self.proto not in PROTOS:
            raise LabInputError(f"forward proto={self.proto!r}: allowed: {', '.join(PROTOS)}")
        if self.family not in ("ipv4", "ipv6"):
            raise LabInputError(f"forward family={self.family!r}: allowed: ipv4, ipv6")
        for name, first in (("host_port", self.host_port), ("container_port", self.container_port)):
            if not (0 < first and first + self.count - 1 < 65536) or self.count < 1:
                raise LabInputError(f"forward {name}={first} count={self.count}: allowed: ports 1-65535, count >= 1")
        if self.host_addr is not None:
            addr = lab_address(self.host_addr)
            if (addr.version == 4) != (self.family == "ipv4"):
                raise LabInputError(
                    f"forward host_addr={self.host_addr} with family={self.family}: allowed: an address of that family"
                )

    @property
    def ports(self) -> list[tuple[int, int]]:
        """(host port, container port) for each port of the forward."""
        return [(self.host_port + i, self.container_port + i) for i in range(self.count)]

    @property
    def loopback(self) -> bool:
        return self.host_addr is not None and ipaddress.ip_address(self.host_addr).is_loopback

    def connect_to(self) -> str:
        """The address a client of this forward connects to: the bound one, else the host's own."""
        if self.host_addr is not None:
            return self.host_addr
        return HOST4 if self.family == "ipv4" else HOST6

    @property
    def name(self) -> str:
        span = "range" if self.count > 1 else "one"
        mapping = "same" if self.host_port == self.container_port else "translated"
        if self.loopback:
            return f"{self.proto}-{self.family}-loopback"
        bound = "bound" if self.host_addr is not None else "any"
        return f"{self.proto}-{self.family}-{span}-{mapping}-{bound}"


def standard() -> list[PortForward]:
    """The lab's forwarding table (see the module's docstring); each forward has ports of its own."""
    table = []
    for p, proto in enumerate(PROTOS):
        for i, (family, count, translated, bound) in enumerate(
            itertools.product(("ipv4", "ipv6"), (1, RANGE), (False, True), (False, True))
        ):
            host_port = 41000 + 1000 * p + 10 * i
            host_addr = (HOST4 if family == "ipv4" else HOST6) if bound else None
            table.append(PortForward(proto, host_port, host_port - 33000 if translated else host_port, count, host_addr, family))
        table.append(PortForward(proto, 41900 + 1000 * p, 41900 + 1000 * p, 1, "127.0.0.1", "ipv4"))
    return table


STANDARD = tuple(standard())
