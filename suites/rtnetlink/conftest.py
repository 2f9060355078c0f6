"""The rtnetlink suite: the same requests to the kernel and to the stack, answers side by side.

The stack under test runs on a topology made for route lookups (`rtnl_layout`); the differential
itself (the `rtnl` fixture, its kernel reference on that same layout, the support table) is
labkit's (labkit.rtnetlink.differential, labkit.pytest_plugin.rtnetlink). What is left here is
the topology and the addresses the checks ask about.
"""

from __future__ import annotations

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
