"""pyroute2's IPRoute as programs call it (links, addresses, routes, neighbours; reads, changes and
the errors a program handles), made inside the kernel reference and inside the stack: each call
must give its caller what it gives on the kernel, the same result or the same NetlinkError. Any
other exception is a program that would crash inside the stack."""

from __future__ import annotations

import errno

import pytest

from labkit.net.plan import AddressPlan
from labkit.rtnetlink import pyroute2_calls
from labkit.rtnetlink.differ import Difference
from labkit.rtnetlink.differential import UNSUPPORTED

from .conftest import DEFAULTED6, IN_SPECIFIC4, IN_SPECIFIC6, SPECIFIC4, SUITE, UNROUTED4

pytestmark = SUITE

MISSING_INDEX = 65000  # an interface index neither namespace has
CHANGES = [pytest.mark.fresh, pytest.mark.changes("addresses", "routes", "neighbours")]


def call(name: str, method: str, *args: str, **kwargs: object) -> dict:
    return {"name": name, "call": [method, *args], "kwargs": kwargs}


def checks(plan: AddressPlan) -> dict[str, tuple[list[dict], dict[str, str]]]:
    """Per check: the calls, and the errno the kernel is known to raise for those that fail (so a
    check whose calls stopped meaning what they say fails on the kernel first)."""
    ifname, dev = plan.stack_ifname, {"ifindex_of": plan.stack_ifname}
    v4, v6 = plan.endpoints("ipv4"), plan.endpoints("ipv6")
    return {
        "link-read": (
            [
                call("link get by index", "link", "get", index=dev),
                call("link get by ifname", "link", "get", ifname=ifname),
                call("link get lo", "link", "get", ifname="lo"),
                call("link dump", "link", "dump"),
                call("link get missing name", "link", "get", ifname="nosuch0"),
                call("link get missing index", "link", "get", index=MISSING_INDEX),
            ],
            {"link get missing name": "ENODEV", "link get missing index": "ENODEV"},
        ),
        "addr-read": (
            [
                call("addr dump", "addr", "dump"),
                call("addr dump inet", "addr", "dump", family=2),
                call("addr dump inet6", "addr", "dump", family=10),
            ],
            {},
        ),
        "route-read": (
            [
                call("route dump", "route", "dump"),
                call("route dump inet6", "route", "dump", family=10),
                call("route get longest prefix v4", "route", "get", dst=IN_SPECIFIC4),
                call("route get longest prefix v6", "route", "get", dst=IN_SPECIFIC6),
                call("route get default v6", "route", "get", dst=DEFAULTED6),
                call("route get no route", "route", "get", dst=UNROUTED4),
            ],
            {"route get no route": "ENETUNREACH"},
        ),
        "neigh-read": (
            [
                # IPv4 only: the kernel's IPv6 multicast entries (NOARP, made when an MLD report
                # leaves) come and go with timers, not with the stack.
                call("neigh dump inet", "neigh", "dump", family=2),
                call("get_neighbours on the link", "get_neighbours", family=2, ifindex=dev),
                call("neigh get missing", "neigh", "get", dst=v4.host(77), ifindex=dev),
            ],
            {"neigh get missing": "ENOENT"},
        ),
        "filters-links-addrs": (
            [
                call("get_links ifname", "get_links", ifname=ifname),
                call("get_links ifname lo", "get_links", ifname="lo"),
                call("get_addr family inet", "get_addr", family=2),
                call("get_addr family inet6", "get_addr", family=10),
                call("get_addr index", "get_addr", index=dev),
                call("get_addr label", "get_addr", label=ifname),
                call("get_addr address", "get_addr", address=v4.stack),
                call("get_addr match", "get_addr", match={"prefixlen": 64}),
            ],
            {},
        ),
        "filters-routes": (
            [
                call("get_routes family inet", "get_routes", family=2),
                call("get_routes family inet6 table main", "get_routes", family=10, table=254),
                call("get_routes table local", "get_routes", family=2, table=255),
                call("get_routes dst", "get_routes", dst=IN_SPECIFIC4),
                call("get_routes oif", "get_routes", family=2, oif=dev),
                call("get_routes gateway", "get_routes", family=2, gateway=v4.peer),
                call("get_routes match dst_len", "get_routes", family=2, match={"dst_len": 24}),
            ],
            {},
        ),
        "addr-change": (
            [
                call("addr add v4", "addr", "add", index=dev, address=v4.host(50), prefixlen=v4.network.prefixlen),
                call("addr add v6", "addr", "add", index=dev, address=v6.host(0x50), prefixlen=v6.network.prefixlen),
                call("get_addr after add", "get_addr", index=dev),
                call("addr replace", "addr", "replace", index=dev, address=v4.host(50), prefixlen=v4.network.prefixlen),
                call("addr del v4", "addr", "del", index=dev, address=v4.host(50), prefixlen=v4.network.prefixlen),
                call("addr del v6", "addr", "del", index=dev, address=v6.host(0x50), prefixlen=v6.network.prefixlen),
                call("get_addr after del", "get_addr", index=dev),
                call("route dump after del", "route", "dump", family=2),
            ],
            {},
        ),
        "addr-errors": (
            [
                call("addr add", "addr", "add", index=dev, address=v4.host(52), prefixlen=v4.network.prefixlen),
                call("addr add again", "addr", "add", index=dev, address=v4.host(52), prefixlen=v4.network.prefixlen),
                call("addr add the layout's address", "addr", "add", index=dev, address=v4.stack, prefixlen=v4.network.prefixlen),
                call("addr del", "addr", "del", index=dev, address=v4.host(52), prefixlen=v4.network.prefixlen),
                call("addr del missing", "addr", "del", index=dev, address=v4.host(52), prefixlen=v4.network.prefixlen),
                call(
                    "addr add on a missing link",
                    "addr",
                    "add",
                    index=MISSING_INDEX,
                    address=v4.host(53),
                    prefixlen=v4.network.prefixlen,
                ),
                call("addr del missing v6", "addr", "del", index=dev, address=v6.host(0x53), prefixlen=v6.network.prefixlen),
            ],
            {
                "addr add again": "EEXIST",
                "addr add the layout's address": "EEXIST",
                "addr del missing": "EADDRNOTAVAIL",
                "addr add on a missing link": "ENODEV",
                "addr del missing v6": "EADDRNOTAVAIL",
            },
        ),
        "route-change": (
            [
                call("route add", "route", "add", dst="198.19.251.0/24", gateway=v4.peer),
                call("route get after add", "route", "get", dst="198.19.251.7"),
                call("route replace", "route", "replace", dst="198.19.251.0/24", gateway=v4.unused),
                call("route get after replace", "route", "get", dst="198.19.251.7"),
                call("route replace creates", "route", "replace", dst="198.19.252.0/24", gateway=v4.peer),
                call("route add v6", "route", "add", dst="2001:db8:251::/64", gateway=v6.peer),
                call("get_routes main after add", "get_routes", family=2, table=254),
                call("route del", "route", "del", dst="198.19.251.0/24"),
                call("route del created", "route", "del", dst="198.19.252.0/24"),
                call("route del v6", "route", "del", dst="2001:db8:251::/64"),
                call("route get after del", "route", "get", dst="198.19.251.7"),
                call("get_routes main after del", "get_routes", family=2, table=254),
            ],
            {"route get after del": "ENETUNREACH"},
        ),
        "route-errors": (
            [
                call("route add existing", "route", "add", dst=SPECIFIC4, gateway=v4.peer),
                call("route del missing", "route", "del", dst="198.19.250.0/24"),
                call("route del missing v6", "route", "del", dst="2001:db8:250::/64"),
                call("route add unreachable gateway", "route", "add", dst="198.19.250.0/24", gateway="198.19.99.1"),
                call("route add on a missing link", "route", "add", dst="198.19.250.0/24", oif=MISSING_INDEX),
            ],
            {
                "route add existing": "EEXIST",
                "route del missing": "ESRCH",
                "route del missing v6": "ESRCH",
                "route add unreachable gateway": "ENETUNREACH",
                "route add on a missing link": "ENODEV",
            },
        ),
    }


CHANGING = {"addr-change", "addr-errors", "route-change", "route-errors"}
NOT_IMPLEMENTED = {errno.errorcode[code] for code in UNSUPPORTED}


def row_of(c: dict) -> str:
    """The support-table row a call belongs to: pyroute2 and the method as called."""
    return "pyroute2: " + " ".join(c["call"])


@pytest.mark.parametrize("check", [pytest.param(name, marks=CHANGES if name in CHANGING else []) for name in checks(AddressPlan())])
def test_pyroute2_call_as_on_the_kernel(rtnl, plan, check):
    calls, refused = checks(plan)[check]
    kernel = pyroute2_calls.ask(rtnl.kernel.stack, calls)
    stack = pyroute2_calls.ask(rtnl.stack, calls)
    assert "_ipr" not in kernel, f"IPRoute fails on the kernel: {kernel['_ipr']}"
    unexpected = {
        n: o for n, o in kernel.items() if ("result" not in o) != (n in refused) or o.get("errno", None) != refused.get(n)
    }
    assert not unexpected, f"on the kernel these calls did not end as this check expects: {unexpected}"
    differences: list[Difference] = (
        [Difference("pyroute2 IPRoute()", "outcome", "opened", pyroute2_calls.describe(stack["_ipr"]))] if "_ipr" in stack else []
    )
    differences += pyroute2_calls.compare(kernel, {n: o for n, o in stack.items() if n != "_ipr"})
    for row in dict.fromkeys(row_of(c) for c in calls):
        names = [c["name"] for c in calls if row_of(c) == row]
        mine = [d for d in differences if d.where in {f"pyroute2 {n}" for n in names} or d.where == "pyroute2 IPRoute()"]
        declined = [
            n for n in names if stack.get(n, {}).get("errno") in NOT_IMPLEMENTED and kernel[n].get("errno") not in NOT_IMPLEMENTED
        ]
        rtnl.row(row, mine, unsupported=bool(declined))
    assert not differences, f"pyroute2 calls ({check}) inside {rtnl.stack.id} end unlike on the kernel:\n" + "\n".join(
        str(d) for d in differences[:25]
    )
