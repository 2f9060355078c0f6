"""Requests that change the stack: addresses (and what follows from them on the wire), routes,
links and the neighbour table. Each runs on a fresh stack and a fresh kernel namespace (which it leaves changed), and
every step's outcome is compared with the kernel's; the support table records which of these
message types each stack carries out.
"""

from __future__ import annotations

import errno

import pytest

from labkit.net.plan import FAMILIES
from labkit.packet import echo
from labkit.rtnetlink import differ
from labkit.rtnetlink.differential import LINKS, dump
from labkit.rtnetlink.differential import address as address_request

from .conftest import IN_SPECIFIC4, SPECIFIC4, SUITE

pytestmark = [
    *SUITE,
    pytest.mark.fresh,  # each starts from the addresses and routes the layout gave
    pytest.mark.changes("addresses", "routes", "links", "neighbours"),
]
# Besides the requests, these checks judge echo replies on the link, which a stack with several
# channels reads on several (the first varies_with wins). The others only ask and compare answers.
ON_THE_LINK = pytest.mark.varies_with("channels")

ADD = ["REQUEST", "ACK", "CREATE", "EXCL"]


def echo_outcome(wire, plan, address: str) -> str:
    return echo.echo_outcome(wire, plan.endpoints("ipv6" if ":" in address else "ipv4"), address)


@ON_THE_LINK
@pytest.mark.parametrize("family", FAMILIES)
def test_address_add_and_delete(rtnl, plan, wire, kernel_reference, ends):
    net, address, prefixlen, fam = ends.network, ends.host(50), ends.network.prefixlen, int(ends.af)
    ifname = plan.stack_ifname
    steps = {
        "add": address_request("RTM_NEWADDR", ifname, f"{address}/{prefixlen}", ADD),
        "add-again-excl": address_request("RTM_NEWADDR", ifname, f"{address}/{prefixlen}", ADD),
        "add-again": address_request("RTM_NEWADDR", ifname, f"{address}/{prefixlen}", ("REQUEST", "ACK", "CREATE")),
        "dump-after-add": dump("RTM_GETADDR", fam),
    }
    pair = rtnl.ask(steps)
    want = {"add": None, "add-again-excl": errno.EEXIST, "add-again": errno.EEXIST}
    assert {s: pair.kernel[s].errno for s in want} == want, f"the kernel: {[(s, pair.kernel[s].errno) for s in want]}"
    # Whether the address is there (how it is described is test_getaddr's business).
    differences = [d for step in steps for d in pair.differences(step, about=address, only=())]
    assert echo_outcome(kernel_reference.wire, plan, address) == "answered", f"the kernel does not answer at {address}"
    if (seen := echo_outcome(wire, plan, address)) != "answered":
        differences.append(differ.Difference(f"echo to {address} after the add", "outcome", "answered", seen))
    deleted = rtnl.ask(
        {
            "delete": address_request("RTM_DELADDR", ifname, f"{address}/{prefixlen}"),
            "delete-missing": address_request("RTM_DELADDR", ifname, f"{address}/{prefixlen}"),
            "dump-after-delete": dump("RTM_GETADDR", fam),
            "routes-after-delete": dump("RTM_GETROUTE", fam),
        }
    )
    assert deleted.kernel["delete"].acked and deleted.kernel["delete-missing"].errno == errno.EADDRNOTAVAIL, "the kernel's delete"
    for step in ("delete", "delete-missing", "dump-after-delete"):
        differences += deleted.differences(step, about=address, only=())
    differences += deleted.differences("routes-after-delete", about=str(net), only=())  # the subnet's route stays
    assert echo_outcome(kernel_reference.wire, plan, address) == "silent", f"the kernel still answers at {address}"
    if (seen := echo_outcome(wire, plan, address)) != "silent":
        differences.append(differ.Difference(f"echo to {address} after the delete", "outcome", "silent", seen))
    rtnl.note("RTM_NEWADDR", pair, "add", [d for d in differences if "delete" not in d.where])
    rtnl.note("RTM_DELADDR", deleted, "delete", [d for d in differences if "delete" in d.where])  # steps name themselves
    assert not differences, pair.report(f"adding and deleting {address}/{prefixlen}", differences)


def test_address_in_a_new_subnet_brings_its_route(rtnl, plan):
    """Linux adds the subnet's route with the address and removes it with the address."""
    ifname, address = plan.stack_ifname, "198.19.99.5"
    pair = rtnl.ask(
        {
            "add": address_request("RTM_NEWADDR", ifname, f"{address}/24", ADD),
            "routes-after-add": dump("RTM_GETROUTE", 2),
            "delete": address_request("RTM_DELADDR", ifname, f"{address}/24"),
            "routes-after-delete": dump("RTM_GETROUTE", 2),
        }
    )
    main = [r for r in pair.kernel_norm.records(pair.kernel["routes-after-add"]) if r.key[1] == "198.19.99.0/24"]
    assert main, "the kernel added no route for the new subnet"
    steps = ("add", "routes-after-add", "delete", "routes-after-delete")
    differences = [d for step in steps for d in pair.differences(step, about="198.19.99.", only=())]
    rtnl.verdict("RTM_NEWADDR", pair, "add", differences, f"the routes around adding and deleting {address}/24")


CHANGES = {
    "RTM_NEWROUTE": (
        {
            "type": "RTM_NEWROUTE",
            "flags": ADD,
            "fields": {"family": 2, "dst_len": 24, "table": 254, "proto": 4, "scope": 0, "type": 1},
            "attrs": [["RTA_DST", "198.19.251.0"], ["RTA_GATEWAY", "PEER4"], ["RTA_OIF", {"ifindex_of": "IFNAME"}]],
        },
        {
            "type": "RTM_GETROUTE",
            "flags": ["REQUEST"],
            "fields": {"family": 2, "dst_len": 32},
            "attrs": [["RTA_DST", "198.19.251.7"]],
        },
    ),
    "RTM_DELROUTE": (
        {
            "type": "RTM_DELROUTE",
            "flags": ["REQUEST", "ACK"],
            "fields": {"family": 2, "dst_len": 24, "table": 254},
            "attrs": [["RTA_DST", SPECIFIC4.split("/")[0]]],
        },
        {
            "type": "RTM_GETROUTE",
            "flags": ["REQUEST"],
            "fields": {"family": 2, "dst_len": 32},
            "attrs": [["RTA_DST", IN_SPECIFIC4]],
        },
    ),
    "RTM_NEWLINK": (
        {
            "type": "RTM_NEWLINK",
            "flags": ADD,
            "fields": {"family": 0},
            "attrs": [["IFLA_IFNAME", "labkit0"], ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "bridge"]]}]],
        },
        {"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0}, "attrs": [["IFLA_IFNAME", "labkit0"]]},
    ),
    "RTM_SETLINK": (
        {
            "type": "RTM_SETLINK",
            "flags": ["REQUEST", "ACK"],
            "fields": {"family": 0, "index": {"ifindex_of": "IFNAME"}},
            "attrs": [["IFLA_MTU", 1400]],
        },
        {"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0, "index": {"ifindex_of": "IFNAME"}}},
    ),
}


# What the GET after each change is compared on: the record it concerns, and the values that show
# the change (the other attributes are the GET checks' business).
CHANGED = {
    "RTM_NEWROUTE": ("198.19.251.", ("type", "table", "RTA_GATEWAY", "RTA_OIF")),
    "RTM_DELROUTE": (IN_SPECIFIC4, ("type", "table", "RTA_GATEWAY", "RTA_OIF")),
    "RTM_NEWLINK": ("labkit0", ()),
    "RTM_SETLINK": ("IFNAME", ("IFLA_MTU",)),
}


def _with_plan(request: dict, plan) -> dict:
    def fill(value):
        if value == "PEER4":
            return plan.peer4
        if value == {"ifindex_of": "IFNAME"}:
            return {"ifindex_of": plan.stack_ifname}
        return value

    return {
        **request,
        "fields": {k: fill(v) for k, v in request.get("fields", {}).items()},
        "attrs": [[k, fill(v)] for k, v in request.get("attrs", [])],
    }


@pytest.mark.parametrize("type_", list(CHANGES))
def test_change_is_carried_out(rtnl, plan, type_):
    """The change, then a GET that shows whether it happened, both compared with the kernel."""
    change, check = (_with_plan(r, plan) for r in CHANGES[type_])
    pair = rtnl.ask({"change": change, "after": check})
    assert pair.kernel["change"].acked, f"the kernel refused the {type_}: errno {pair.kernel['change'].errno}"
    about, values = CHANGED[type_]
    about = plan.stack_ifname if about == "IFNAME" else about
    differences = pair.differences("change") + pair.differences("after", about=about, only=values)
    rtnl.verdict(type_, pair, "change", differences, type_)


@pytest.mark.parametrize("by", ["index", "name"])
def test_dellink(rtnl, plan, by):
    ident = {"index": {"ifindex_of": plan.stack_ifname}} if by == "index" else {"index": 0}
    attrs = [] if by == "index" else [["IFLA_IFNAME", plan.stack_ifname]]
    pair = rtnl.ask(
        {
            "delete": {"type": "RTM_DELLINK", "flags": ["REQUEST", "ACK"], "fields": {"family": 0, **ident}, "attrs": attrs},
            "links-after": LINKS,
        }
    )
    assert pair.kernel["delete"].acked, (
        f"the kernel did not delete {plan.stack_ifname} by {by}: errno {pair.kernel['delete'].errno}"
    )
    differences = pair.differences("delete") + pair.differences("links-after", about=plan.stack_ifname, only=())
    rtnl.verdict("RTM_DELLINK", pair, "delete", differences, f"RTM_DELLINK by {by}")


@ON_THE_LINK
def test_neighbour_dump_after_traffic(rtnl, plan, wire, kernel_reference):
    """Both resolve the peer (an echo from the Wire makes them answer it), then list neighbours."""
    for bed_wire in (kernel_reference.wire, wire):
        echo_outcome(bed_wire, plan, plan.stack4)
    pair = rtnl.ask({"neighbours": {"type": "RTM_GETNEIGH", "flags": ["REQUEST", "DUMP"], "fields": {"family": 2}}})
    assert any(r.key[1] == plan.peer4 for r in pair.kernel_norm.records(pair.kernel["neighbours"])), "the kernel lists no peer"
    differences = pair.differences("neighbours", about=plan.peer4)
    rtnl.verdict("RTM_GETNEIGH", pair, "neighbours", differences, "the neighbour dump")
