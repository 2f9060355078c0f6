"""Topologies a check can ask for instead of the standard one (`@pytest.mark.layout.with_args`).

Each is a function of the address plan returning (topology, the stack's end, the Wire's end).
- `kernel_peer`: the standard pair, but the peer end is a kernel host with the peer addresses,
  for checks that need a real TCP/UDP endpoint across the veth.
- `routed`: the peer end is a router; behind it, over a second veth without any offload, sits a
  kernel host at FAR4/FAR6. What leaves the router towards it has been through the kernel's own
  device path: GSO super-frames cut into segments, partial checksums finished, as a NIC would
  put them on a wire.
"""

from __future__ import annotations

from .plan import AddressPlan
from .topology import Link, Topology

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
