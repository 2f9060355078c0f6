"""Linux, broken on purpose: each mutant breaks one property a family of linkdispatch checks
guards, so labkit's own tests can show those checks fail when it is broken.

    pytest suites/linkdispatch/test_routes.py --stack examples.mutants:WrongRouteLinux
"""

from __future__ import annotations

import socket

from labkit.stacks import LinuxStack


class NoGratuitousArpLinux(LinuxStack):
    """Ignores gratuitous ARP: a neighbour that announces a new MAC is not updated."""

    kind = "linux-nogarp"
    sysctls = {"net.ipv4.conf.all.drop_gratuitous_arp": 1}


class NoUnsolicitedNaLinux(LinuxStack):
    """Ignores unsolicited neighbour advertisements."""

    kind = "linux-nouna"

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        self._ns.sysctl(f"net.ipv6.conf.{self.link.name}.drop_unsolicited_na", 1)  # per device: "all" is not read


class WrongRouteLinux(LinuxStack):
    """Loses the more specific of two overlapping routes, so the wider one carries its traffic."""

    kind = "linux-wrongroute"
    lost = ("198.19.64.0", 24)

    def _start(self) -> None:
        super()._start()
        with self._ns.iproute() as ipr:
            routes = ipr.get_routes(family=socket.AF_INET)
            if any(r.get_attr("RTA_DST") == self.lost[0] and r["dst_len"] == self.lost[1] for r in routes):
                ipr.route("del", dst=f"{self.lost[0]}/{self.lost[1]}")
