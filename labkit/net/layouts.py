"""Topologies a check can ask for instead of the standard one (`@pytest.mark.layout.with_args`).

Each is a function of the address plan returning (topology, the stack's end, the Wire's end).
- `kernel_peer`: the standard pair, but the peer end is a kernel host with the peer addresses,
  for checks that need a real TCP/UDP endpoint across the veth.
- `routed`: the peer end is a router; behind it, over a second veth without any offload, sits a
  kernel host at FAR4/FAR6. What leaves the router towards it has been through the kernel's own
  device path: GSO super-frames cut into segments, partial checksums finished, as a NIC would
  put them on a wire.
- `tap`: for a stack that makes its own link (slirp4netns, pasta: a tap whose other side is the
  user-space stack). The container namespace holds the tap, and the Wire sits on it next to the
  kernel. The stack's process runs in a lab "host" namespace, whose default route leads over a
  veth to a lab "outside" namespace: the stack's outbound sockets leave from the host and reach
  the outside world the lab serves there, never the root namespace or a real network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from labkit.errors import LabInputError
from labkit.net.netns import NetNS
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link, Namespace, Topology

FAR_NET4, FAR_NET6 = "198.19.9.0/24", "2001:db8:9::/64"
ROUTER4, ROUTER6 = "198.19.9.1", "2001:db8:9::1"
FAR4, FAR6 = "198.19.9.2", "2001:db8:9::2"
FAR_IFNAME = "far0"

# The tap stacks' world: the host namespace's uplink and the outside namespace behind it.
UPLINK_NET4, UPLINK_NET6 = "198.19.1.0/24", "2001:db8:1:1::/64"
HOST4, HOST6 = "198.19.1.1", "2001:db8:1:1::1"  # the host namespace: where forwarded ports listen
OUTSIDE4, OUTSIDE6 = "198.19.1.2", "2001:db8:1:1::2"  # the outside namespace: the lab's services
UPLINK_IFNAME, OUTSIDE_IFNAME = "up0", "wan0"


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
    host: Namespace | None = None  # where the stack's process runs and its sockets leave from
    outside: Namespace | None = None  # the world behind the host: the lab's outside services

    @property
    def host_netns(self) -> NetNS:
        assert self.host is not None and self.host.netns is not None, "this tap layout has no host namespace"
        return self.host.netns

    @property
    def outside_netns(self) -> NetNS:
        assert self.outside is not None and self.outside.netns is not None, "this tap layout has no outside namespace"
        return self.outside.netns

    @property
    def netns(self) -> NetNS:
        """Where the tap is: the topology's namespace, or (rootless) the stack's own."""
        if self.userns_netns is not None:
            return self.userns_netns
        assert self.ns.netns is not None
        return self.ns.netns


End = Link | TapEnd  # where a stack runs, or the Wire sits: a veth end, or a tap's namespace side


def tap(plan: AddressPlan) -> tuple[Topology, TapEnd, TapEnd]:
    """The container namespace (the tap's, empty until the stack makes it), the host namespace
    and the outside namespace (`uplink`)."""
    for net, taken in ((plan.net4, UPLINK_NET4), (plan.net6, UPLINK_NET6)):
        if net.overlaps(ipaddress.ip_network(taken)):
            raise LabInputError(
                f"lab prefix {net} overlaps the tap stacks' uplink {taken} (labkit.net.layouts); allowed: a prefix apart from it"
            )
    topo = Topology()
    host, outside = uplink(topo)
    end = TapEnd(topo.namespace("sb"), "tap0", plan.net4, plan.net6, plan.mtu, plan.peer4, plan.peer6, host=host, outside=outside)
    # The tap does not exist yet: its addresses must not wait for duplicate address detection either.
    end.ns.sysctl("net.ipv6.conf.default.accept_dad", 0).sysctl("net.ipv6.conf.all.accept_dad", 0)
    return topo, end, end


def uplink(topo: Topology) -> tuple[Namespace, Namespace]:
    """A tap stack's host namespace and the outside namespace behind it, in `topo`: the veth
    between them with the lab's addresses, the host's default routes to the outside, and ICMP
    echo sockets open to every group in the host, as libslirp and pasta need for their own pings
    (a per-namespace sysctl: the root's is untouched)."""
    host, outside = topo.namespace("host"), topo.namespace("out")
    up, wan = topo.veth(host, UPLINK_IFNAME, outside, OUTSIDE_IFNAME, tx_checksum=False)
    up.addr(f"{HOST4}/24").addr(f"{HOST6}/64")
    wan.addr(f"{OUTSIDE4}/24").addr(f"{OUTSIDE6}/64")
    kernel_host(up)
    kernel_host(wan)
    host.route("default", via=OUTSIDE4).route("default", via=OUTSIDE6)
    host.sysctl("net.ipv4.ping_group_range", "0 2147483647")
    return host, outside
