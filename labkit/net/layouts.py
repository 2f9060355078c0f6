"""Topologies a check can ask for instead of the standard one (`@pytest.mark.layout.with_args`).

Each is a function of the address plan returning (topology, the stack's end, the Wire's end).
- `kernel_peer`: the standard pair, but the peer end is a kernel host with the peer addresses,
  for checks that need a real TCP/UDP endpoint across the veth.
- `routed`: the peer end is a router; behind it, over a second veth without any offload, sits a
  kernel host at FAR4/FAR6. What leaves the router towards it has been through the kernel's own
  device path: GSO super-frames cut into segments, partial checksums finished, as a NIC would
  put them on a wire.
- `tap`: one namespace and no veth, for a stack that makes its own link (slirp4netns, pasta: a
  tap whose other side is the user-space stack). The Wire sits on the tap, next to the kernel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from labkit.net.netns import NetNS
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link, Namespace, Topology

FAR_NET4, FAR_NET6 = "198.19.9.0/24", "2001:db8:9::/64"
ROUTER4, ROUTER6 = "198.19.9.1", "2001:db8:9::1"
FAR4, FAR6 = "198.19.9.2", "2001:db8:9::2"
FAR_IFNAME = "far0"


def kernel_host(link: Link) -> None:
    """An end where the lab's kernel must answer at once: no duplicate address detection (its
    link-local address would stay tentative for a second), and up() waits until IPv6 counts it
    ready (see Topology._wait_live_ends)."""
    link.ns.sysctl("net.ipv6.conf.all.accept_dad", 0).sysctl(f"net.ipv6.conf.{link.name}.accept_dad", 0)
    link.await_up = True


def kernel_peer(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    topo, stack_end, peer_end = plan.build()
    peer_end.ipv6 = True
    peer_end.addr(f"{plan.peer4}/{plan.net4.prefixlen}").addr(f"{plan.peer6}/{plan.net6.prefixlen}")
    kernel_host(peer_end)
    return topo, stack_end, peer_end


def routed(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    topo, stack_end, peer_end = kernel_peer(plan)
    router = peer_end.ns
    far = topo.namespace("far")
    inner, outer = topo.veth(router, "r1", far, FAR_IFNAME, mtu=plan.mtu, tx_checksum=False)
    inner.addr(f"{ROUTER4}/24").addr(f"{ROUTER6}/64")
    outer.addr(f"{FAR4}/24").addr(f"{FAR6}/64")
    kernel_host(inner)
    kernel_host(outer)
    router.sysctl("net.ipv4.ip_forward", 1).sysctl("net.ipv6.conf.all.forwarding", 1)
    far.route("default", via=ROUTER4).route("default", via=ROUTER6)
    return topo, stack_end, peer_end


@dataclass
class TapEnd:
    """The namespace side of a tap a user-space stack serves. The stack creates the tap and fills
    in `mac`; the Wire then sits on it. The kernel there owns the peer address (the stack
    configures it), so the Wire need not answer for it."""

    ns: Namespace
    name: str
    net4: ipaddress.IPv4Network
    net6: ipaddress.IPv6Network
    mtu: int
    peer4: str
    peer6: str
    mac: str | None = None  # the tap's (the namespace side, where the Wire sits)
    userns_netns: NetNS | None = None  # rootless: the user+net namespace the stack made instead of `ns`
    stack_mac: str | None = None  # the stack's on the far side: what its driver knows, else learned by ARP
    addresses: list[str] = field(default_factory=list)  # what the stack configured on the tap

    @property
    def netns(self) -> NetNS:
        """Where the tap is: the topology's namespace, or (rootless) the stack's own."""
        if self.userns_netns is not None:
            return self.userns_netns
        assert self.ns.netns is not None
        return self.ns.netns


End = Link | TapEnd  # where a stack runs, or the Wire sits: a veth end, or a tap's namespace side


def tap(plan: AddressPlan) -> tuple[Topology, TapEnd, TapEnd]:
    topo = Topology()
    end = TapEnd(topo.namespace("sb"), "tap0", plan.net4, plan.net6, plan.mtu, plan.peer4, plan.peer6)
    return topo, end, end
