"""The rtnetlink suite: the same requests to the kernel and to the stack, answers side by side.

The stack under test runs on a topology made for route lookups (`rtnl_layout`); the differential
itself (the `rtnl` fixture, its kernel reference on that same layout, the support table) is
labkit's (labkit.rtnetlink.differential, labkit.pytest_plugin.rtnetlink). What is left here is
the topology and the addresses the checks ask about.
"""

from __future__ import annotations

import ipaddress

import pytest

from labkit.net import layouts
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link, Topology

SPECIFIC4, SPECIFIC6 = "198.19.64.0/24", "2001:db8:64::/64"  # via the peer: more specific than any default
IN_SPECIFIC4, IN_SPECIFIC6 = "198.19.64.9", "2001:db8:64::9"
UNROUTED4 = "198.19.77.7"  # IPv4 has no default route here: nothing matches it
DEFAULTED6 = "2001:db8:77::7"  # IPv6 has one: only the default matches


def rtnl_layout(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    """The standard pair; routes: on-link, a /24 via the peer, and a default route for IPv6 only.
    The sandbox end skips duplicate address detection and is up before the stack starts, so
    the kernel's link-local address is not tentative in one namespace and settled in the other."""
    topo, stack_end, peer_end = plan.build(defaults=(6,))
    layouts.kernel_host(stack_end)
    stack_end.ns.route(SPECIFIC4, via=plan.peer4).route(SPECIFIC6, via=plan.peer6)
    return topo, stack_end, peer_end


# Every check of the suite: the stack's own NETLINK_ROUTE, on this topology. The answers to a
# request do not depend on how a stack reads its link (channels, offloads, qdisc), so each driver
# runs a check on one variant and the others carry the verdict (labkit.pytest_plugin.matrix).
# Checks that also judge frames on the link (after a change, after malformed input) add channels.
SUITE = [pytest.mark.needs("rtnetlink", "ipv4", "ipv6"), pytest.mark.layout.with_args(rtnl_layout), pytest.mark.varies_with()]


# The large-dump layout: the standard one plus BULK_ROUTES routes via the peer and BULK_ADDRESSES
# /32 addresses on the stack's end, enough that a dump takes many reads at any buffer size.
BULK_ROUTES, BULK_ADDRESSES = 1000, 200
BULK_ROUTE_BASE = "198.19.128.0"  # /30s up from here: 198.19.128.0 to 198.19.143.156
BULK_ADDRESS_BASE = "198.19.200.0"  # .1 to .200


def bulk_routes() -> list[str]:
    base = ipaddress.ip_address(BULK_ROUTE_BASE)
    return [f"{base + 4 * i}/30" for i in range(BULK_ROUTES)]


def bulk_addresses() -> list[str]:
    base = ipaddress.ip_address(BULK_ADDRESS_BASE)
    return [str(base + 1 + i) for i in range(BULK_ADDRESSES)]


def rtnl_bulk_layout(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    """`rtnl_layout` with the bulk routes and addresses, declared like the others: the topology
    puts them in place before the stack starts (gVisor copies the namespace when it starts)."""
    topo, stack_end, peer_end = rtnl_layout(plan)
    for route in bulk_routes():
        stack_end.ns.route(route, via=plan.peer4)
    for address in bulk_addresses():
        stack_end.addr(f"{address}/32")
    return topo, stack_end, peer_end
