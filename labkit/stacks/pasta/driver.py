"""pasta (passt) as a stack under test, on the far side of the namespace's tap.

pasta gets the plan's addresses: the namespace is .1 / ::1 and pasta answers as the gateway at
.2 / ::2 (the checks' "stack"). It maps the gateway to the host's loopback (its default). pasta
runs in the layout's host namespace; DNS queries to .3 / ::3 go to the lab's outside responder,
whose address (the resolv.conf pasta reads) DHCP and DHCPv6 hand out. pasta takes forwarded ports only on its command line,
so the driver starts it with the lab's whole forwarding table (labkit.stacks.forwarding.STANDARD).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from labkit.net.layouts import OUTSIDE4, OUTSIDE6
from labkit.net.plan import AddressPlan
from labkit.stacks import base
from labkit.stacks.forwarding import STANDARD, PortForward
from labkit.stacks.pasta.launcher import Pasta, PastaOptions
from labkit.stacks.tap import TapStack

INSTALL = "apt-get install -y passt"


class PastaStack(TapStack):
    kind = "pasta"
    capabilities = frozenset(
        {
            base.ARP, base.NDP, base.IPV4, base.IPV6, base.EXEC, base.SERVICES,
            base.OUTSIDE, base.FORWARD, base.DHCP, base.DNS,
        }
    )  # fmt: skip
    option_defaults: ClassVar[Mapping[str, Any]] = {"rootless": False, "mtu": 1500}
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "": {},  # rootful (a named netns), MTU 1500
        "rootless": {"rootless": True},  # a user+net namespace, joined by pid
        "mtu65520": {"mtu": 65520},
    }

    @classmethod
    def plan_for(cls, variant: str, plan: AddressPlan) -> AddressPlan:
        # .3 / ::3 is pasta's DNS forwarder here (TapStack.DNS_HOST): the unused address moves to .50.
        return replace(plan, mtu=cls.variant_options(variant).get("mtu", 1500), unused_host=50)

    program = "pasta"  # passt runs as pasta when its file name says so: a build keeps its name
    install = INSTALL

    def __init__(self, variant: str = "", binary: str | None = None) -> None:
        super().__init__(variant, binary)
        self.pasta: Pasta | None = None

    def _start_stack(self) -> None:
        tap, workdir = self.tap, self.workdir
        assert workdir is not None
        gateway4 = str(tap.net4.network_address + 2)
        gateway6 = str(tap.net6.network_address + 2)
        options = PastaOptions(
            f"{tap.peer4}/{tap.net4.prefixlen}", gateway4, f"{tap.peer6}/{tap.net6.prefixlen}", gateway6,
            mtu=tap.mtu, ifname=tap.name, forwards=STANDARD,
            dns_forward=(self.dns_address("ipv4"), self.dns_address("ipv6")),
        )  # fmt: skip
        self.pasta = Pasta(
            tap.netns, options, host=tap.host_netns, workdir=workdir, binary=self.binary, pid=self.holder_pid,
            resolv_conf=self.resolv_conf(),
        ).start()  # fmt: skip

    def _stop_stack(self) -> None:
        if self.pasta is not None:
            self.pasta.stop()
            self.pasta = None

    def forward_refusal(self, forward: PortForward) -> str | None:
        if forward not in STANDARD:
            return f"pasta takes forwards only on its command line; {forward} is not in the table it was started with"
        return None

    def forwarded_source(self, forward: PortForward, client: str) -> str:
        """The client's own address across the tap; a loopback client is spliced through the
        container's loopback, so the container sees its own 127.0.0.1."""
        return "127.0.0.1" if forward.loopback else client

    def dns_offered(self, family: str = "ipv4") -> str:
        """What `--dhcp-dns` hands out in this passt (2023-03): the resolvers of the resolv.conf it
        reads (the lab's outside responder), not its `--dns-forward` address; the container then
        reaches that resolver through pasta like any outside host."""
        return OUTSIDE4 if family == "ipv4" else OUTSIDE6

    def dhcp_range(self) -> list[str]:
        """pasta leases the one address it was told to give the namespace."""
        return [self.tap.peer4]

    def healthy(self) -> bool:
        return super().healthy() and self.pasta is not None and self.pasta.running()

    def ended(self, wait: float = 0.0) -> str | None:
        """pasta is not the lab's child (it daemonizes): its exit code is its parent's to read."""
        if self.pasta is None or not self.pasta.wait_ended(wait):
            return None
        return f"ended; its log: {self.pasta.log_tail()}"

    def own_pids(self) -> list[int]:
        return [self.pasta.pid] if self.pasta is not None and self.pasta.pid is not None else []

    def command_lines(self) -> list[list[str]]:
        return [self.pasta.argv] if self.pasta is not None and self.pasta.argv else []
