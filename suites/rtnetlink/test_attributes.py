"""Every attribute of the answers, not just the ones pyroute2 names or the record checks compare.

Each answer message is walked from its bytes (labkit.rtnetlink.attributes): every attribute by
number, into the containers the kernel nests (IFLA_AF_SPEC, IFLA_LINKINFO, RTA_METRICS ...),
so an attribute the kernel sends and the stack does not, or one only the stack sends, is seen
whether or not pyroute2 has a name for it. Values are compared where two namespaces of one
kernel agree; counters, timestamps and ids of other namespaces by presence only. Records one
side lacks are the record checks' business (test_getlink, test_getaddr, test_getroute); here,
the attributes of the records both list.
"""

from __future__ import annotations

import socket

import pytest

from labkit.packet import echo
from labkit.rtnetlink import attributes, differ
from labkit.rtnetlink.differential import RTM_F_LOOKUP_TABLE, Pair, dump, lookup

from .conftest import IN_SPECIFIC4, IN_SPECIFIC6, SUITE

pytestmark = SUITE


def link_get(ifname: str) -> dict:
    return {"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0, "index": {"ifindex_of": ifname}}}


# name: (message type, request (the stack's link filled in), the family the kernel's records must have, or None)
ASKED = {
    "link-dump": ("RTM_GETLINK", lambda plan: dump("RTM_GETLINK"), None),
    "link-get": ("RTM_GETLINK", lambda plan: link_get(plan.stack_ifname), None),
    "addr-dump": ("RTM_GETADDR", lambda plan: dump("RTM_GETADDR"), None),
    "route-dump-v4": ("RTM_GETROUTE", lambda plan: dump("RTM_GETROUTE", socket.AF_INET), socket.AF_INET),
    "route-dump-v6": ("RTM_GETROUTE", lambda plan: dump("RTM_GETROUTE", socket.AF_INET6), socket.AF_INET6),
    "route-get-v4": ("RTM_GETROUTE", lambda plan: lookup(IN_SPECIFIC4, RTM_F_LOOKUP_TABLE), None),
    "route-get-v6": ("RTM_GETROUTE", lambda plan: lookup(IN_SPECIFIC6, RTM_F_LOOKUP_TABLE), None),
}


def every_attribute(pair: Pair, name: str) -> list[differ.Difference]:
    """The request's outcome, then the attributes of each record both sides list."""
    kernel = pair.kernel[name]
    assert kernel.errno is None and kernel.payload(), f"the kernel answered {name} with errno {kernel.errno}, no records"
    found = attributes.differences(kernel, pair.stack[name], pair.kernel_norm, pair.stack_norm)
    return differ.diff_outcome(kernel, pair.stack[name]) + found


@pytest.mark.parametrize("asked", list(ASKED))
def test_every_attribute(rtnl, plan, asked):
    message_type, request, family = ASKED[asked]
    pair = rtnl.ask({asked: request(plan)})
    if family is not None:  # the filter itself is test_getroute's; the kernel honours it
        assert {m.fields.get("family") for m in pair.kernel[asked].payload()} == {family}, "the kernel's dump mixes families"
    differences = every_attribute(pair, asked)
    rtnl.verdict(message_type, pair, asked, differences, f"every attribute of {asked}")


@pytest.mark.fresh  # the neighbour tables it fills stay filled
@pytest.mark.changes("neighbours")
@pytest.mark.varies_with("channels")  # the echo that makes both resolve the peer crosses the link
def test_every_attribute_of_the_neighbour_dump(rtnl, plan, wire, kernel_reference):
    """Both resolve the peer (an echo from the Wire, as test_changes's neighbour check does), then
    list their IPv4 neighbours; NDA_CACHEINFO and NDA_PROBES move with time, so by presence."""
    for bed_wire in (kernel_reference.wire, wire):
        echo.echo_outcome(bed_wire, plan.endpoints("ipv4"), plan.stack4)
    pair = rtnl.ask({"neighbours": {"type": "RTM_GETNEIGH", "flags": ["REQUEST", "DUMP"], "fields": {"family": 2}}})
    kernel = pair.kernel["neighbours"]
    assert any(m.attr("NDA_DST") == plan.peer4 for m in kernel.payload()), f"the kernel lists no peer: {kernel.messages}"
    differences = every_attribute(pair, "neighbours")
    rtnl.verdict("RTM_GETNEIGH", pair, "neighbours", differences, "every attribute of the neighbour dump")
