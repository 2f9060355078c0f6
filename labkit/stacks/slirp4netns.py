"""slirp4netns (libslirp) as a stack under test: the user-space stack on the far side of a tap.

The lab's namespace gets tap0 from slirp4netns (--configure: the namespace is .100 of the CIDR,
the gateway .2 and the DNS address .3 are libslirp's). The Wire sits on tap0, next to the
namespace's kernel, and the checks talk to libslirp at .2. The lab's services run in the
namespace, behind slirp (what a container would be).

IPv6 is left out of the conformance checks: libslirp's IPv6 prefix is fd00::/64, outside the
lab's documentation range, so the lab sends nothing there.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from ..errors import LabError
from ..layouts import TapEnd
from ..plan import AddressPlan
from ..process import LabProcess, run_in
from ..slirp import Slirp4netns, SlirpOptions
from . import base

INSTALL = "apt-get install -y slirp4netns"
SLIRP_GUEST, SLIRP_GATEWAY, SLIRP_UNUSED = 100, 2, 50  # .3 is libslirp's DNS address


class Slirp4netnsStack(base.Stack):
    kind = "slirp4netns"
    capabilities = frozenset({base.ARP, base.IPV4, base.ICMP, base.EXEC, base.SERVICES})
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "": {},  # MTU 1500, no --enable-sandbox
        "sandbox": {"sandbox": True},
        "mtu65520": {"mtu": 65520},
    }
    makes_link = True

    def __init__(self, variant: str = "") -> None:
        super().__init__(variant)
        self.slirp: Slirp4netns | None = None

    @classmethod
    def plan_for(cls, variant: str, plan: AddressPlan) -> AddressPlan:
        return replace(plan, peer_host=SLIRP_GUEST, stack_host=SLIRP_GATEWAY, unused_host=SLIRP_UNUSED)

    @classmethod
    def availability(cls) -> base.Availability:
        if shutil.which("slirp4netns") is None:
            return base.Availability(False, "slirp4netns is not installed", INSTALL)
        return base.Availability(True)

    @property
    def mac(self) -> str:
        assert self.tap.stack_mac is not None
        return self.tap.stack_mac

    @property
    def tap(self) -> TapEnd:
        if not isinstance(self.link, TapEnd):
            raise LabError(f"{self.id} runs on a tap layout (labkit.layouts.tap), not on {self.link!r}")
        return self.link

    def _start(self) -> None:
        tap, workdir = self.tap, self.workdir
        assert tap.ns.netns is not None and workdir is not None
        options = SlirpOptions(cidr=str(tap.net4), mtu=self.options.get("mtu", 1500))
        self.slirp = Slirp4netns(
            tap.ns.netns, options, workdir=workdir, tap=tap.name, sandbox=self.options.get("sandbox", False)
        ).start()
        # libslirp answers ARP for its addresses with 52:55 and the address's four bytes.
        gateway = tap.net4.network_address + SLIRP_GATEWAY
        tap.stack_mac = "52:55:" + ":".join(f"{b:02x}" for b in gateway.packed)
        with tap.ns.iproute() as ipr:
            (link,) = ipr.get_links(ifname=tap.name)
            tap.mac = link.get_attr("IFLA_ADDRESS")
            tap.addresses = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=link["index"], family=2)]

    def _stop(self) -> None:
        if self.slirp is not None:
            self.slirp.stop()
            self.slirp = None

    def healthy(self) -> bool:
        return super().healthy() and self.slirp is not None and self.slirp.running()

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_in(self.tap.ns.netns, argv, timeout=timeout, env=self.child_env())

    def spawn(self, argv: Sequence[str]) -> LabProcess:
        assert self.workdir is not None
        with open(self.workdir / "services.log", "ab") as log:
            return LabProcess(
                argv, netns=self.tap.ns.netns, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.child_env()
            )
