"""Linux, broken on purpose: each mutant breaks one property a family of linkdispatch checks
guards, so labkit's own tests can show those checks fail when it is broken.

    pytest suites/linkdispatch/test_routes.py --stack examples.mutants:WrongRouteLinux
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, ClassVar

from labkit.errors import LabError
from labkit.net.ethtool import set_tso
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


class NoDadLinux(LinuxStack):
    """Skips duplicate address detection: a new IPv6 address is used at once, whoever else has it."""

    kind = "linux-nodad"

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        self._ns.sysctl("net.ipv6.conf.all.accept_dad", 0).sysctl(f"net.ipv6.conf.{self.link.name}.accept_dad", 0)


class NoTsoLinux(LinuxStack):
    """Says it hands the device GSO super-frames (TX checksumming on), but has TSO off: a large
    write leaves already cut into segments."""

    kind = "linux-notso"
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {"": {"tx_checksum": True, "gso": True}}

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        set_tso(self._ns.netns, self.link.name, False)


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


def _load_nft(stack: LinuxStack, name: str, chains: str) -> None:
    """Load a netdev table on the stack's link: its hooks see frames before the kernel's IP layer
    (ingress) and after it (egress), so a rule there breaks the stack as a faulty NIC would."""
    assert stack.link is not None and stack.workdir is not None
    path = stack.workdir / f"{name}.nft"
    path.write_text(f"table netdev {name} {{\n{chains.replace('DEV', stack.link.name)}\n}}\n")
    done = stack.run(["nft", "-f", str(path)])
    if done.returncode:
        raise LabError(f"{stack.kind}: nft refused {path}: {done.stderr.strip()}")


class ChecksumBlindLinux(LinuxStack):
    """Accepts IPv4 UDP whatever its checksum: the checksum is zeroed ("none") on the way in."""

    kind = "linux-csumblind"

    def _start(self) -> None:
        super()._start()
        _load_nft(
            self, "csumblind", 'chain in { type filter hook ingress device "DEV" priority 0; meta protocol ip udp checksum set 0; }'
        )


class BadTxChecksumLinux(LinuxStack):
    """Sends every UDP datagram with the same made-up checksum, 0x1234."""

    kind = "linux-badtxcsum"

    def _start(self) -> None:
        super()._start()
        _load_nft(self, "badtxcsum", 'chain out { type filter hook egress device "DEV" priority 0; udp checksum set 0x1234; }')


class ReorderingLinux(LinuxStack):
    """Delays about half the frames it receives in a rate-limited queue, so later frames of a flow
    overtake them: those with bit 1 set in byte 7 of the transport header, which is the UDP
    checksum (as good as random) or the low byte of the TCP sequence number."""

    kind = "linux-reorder"

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        with self._ns.iproute() as ipr:
            ipr.link("add", ifname="lkdelay", kind="ifb")
            delay = ipr.link_lookup(ifname="lkdelay")[0]
            ipr.link("set", index=delay, state="up")
            ipr.tc("add", "tbf", delay, rate="2mbit", burst=1600, latency="1s")
            link = ipr.link_lookup(ifname=self.link.name)[0]
            ipr.tc("add", "ingress", link, "ffff:")
            # pyroute2 reads "value/mask+offset" per byte of the mask from the IP header: byte 7
            # of the transport header is at 27 (IPv4, no options) or 47 (IPv6, no extensions).
            for prio, (protocol, offset) in enumerate(((0x0800, 27), (0x86DD, 47)), start=1):
                ipr.tc(
                    "add-filter",
                    "u32",
                    link,
                    parent=0xFFFF0000,
                    prio=prio,
                    protocol=protocol,
                    keys=[f"0x2/0x2+{offset}"],
                    target=0x1,
                    action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": delay},
                )


class BurstDroppingLinux(LinuxStack):
    """Takes in no more than 64 UDP datagrams at once: the rest of a burst is dropped on the way
    in (an nftables limit at ingress, refilled at one packet a second), as a receive queue far
    smaller than the one it claims would."""

    kind = "linux-burstdrop"

    def _start(self) -> None:
        super()._start()
        _load_nft(
            self,
            "burstdrop",
            'chain in { type filter hook ingress device "DEV" priority 0; meta l4proto udp limit rate over 1/second burst 64 packets drop; }',
        )
