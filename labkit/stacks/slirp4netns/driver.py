"""slirp4netns (libslirp) as a stack under test, on the far side of the namespace's tap.

slirp4netns --configure gives the namespace .100 of the CIDR; the gateway .2 and the DNS address
.3 are libslirp's, which answers ARP for them with 52:55 and the address's four bytes. The
checks talk to libslirp at .2.

IPv6 is left out of the conformance checks: libslirp's IPv6 prefix is fd00::/64, outside the
lab's documentation range, so the lab sends nothing there.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from labkit.net.plan import AddressPlan
from labkit.stacks import base
from labkit.stacks.slirp4netns.launcher import Slirp4netns
from labkit.stacks.slirp4netns.options import SlirpOptions
from labkit.stacks.tap import TapStack

INSTALL = "apt-get install -y slirp4netns"
SLIRP_GUEST, SLIRP_GATEWAY, SLIRP_UNUSED = 100, 2, 50  # .3 is libslirp's DNS address


class Slirp4netnsStack(TapStack):
    kind = "slirp4netns"
    capabilities = frozenset({base.ARP, base.IPV4, base.ICMP, base.EXEC, base.SERVICES})
    option_defaults: ClassVar[Mapping[str, Any]] = {"rootless": False, "sandbox": False, "mtu": 1500}
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "": {},  # rootful (a named netns, by path), MTU 1500, no --enable-sandbox
        "rootless": {"rootless": True},  # a user+net namespace, by pid
        "sandbox": {"sandbox": True},
        "mtu65520": {"mtu": 65520},
    }

    def __init__(self, variant: str = "") -> None:
        super().__init__(variant)
        self.slirp: Slirp4netns | None = None

    @classmethod
    def plan_for(cls, variant: str, plan: AddressPlan) -> AddressPlan:
        mtu = cls.variant_options(variant).get("mtu", 1500)
        return replace(plan, peer_host=SLIRP_GUEST, stack_host=SLIRP_GATEWAY, unused_host=SLIRP_UNUSED, mtu=mtu)

    @classmethod
    def availability(cls) -> base.Availability:
        if shutil.which("slirp4netns") is None:
            return base.Availability(False, "slirp4netns is not installed", INSTALL)
        return base.Availability(True)

    def _start_stack(self) -> None:
        tap, workdir = self.tap, self.workdir
        assert workdir is not None
        options = SlirpOptions(cidr=str(tap.net4), mtu=tap.mtu)
        sandbox = self.options.get("sandbox", False)
        target = self.holder_pid if self.rootless else tap.netns
        assert target is not None
        self.slirp = Slirp4netns(target, options, workdir=workdir, tap=tap.name, sandbox=sandbox).start()
        gateway = tap.net4.network_address + SLIRP_GATEWAY
        tap.stack_mac = "52:55:" + ":".join(f"{b:02x}" for b in gateway.packed)

    def _stop_stack(self) -> None:
        if self.slirp is not None:
            self.slirp.stop()
            self.slirp = None

    def healthy(self) -> bool:
        return super().healthy() and self.slirp is not None and self.slirp.running()
