"""The other requests tools send on the same NETLINK_ROUTE socket: `ip rule` (RTM_GETRULE),
`ip netconf` (RTM_GETNETCONF), `ip stats` / `ip -s link` (RTM_GETSTATS) and `ip netns list-id`
(RTM_GETNSID). Each is compared with the kernel's answer: the outcome, the records (rules by
priority and table, netconf by family and link, stats by link, namespace ids by count), their
fixed fields and every attribute (labkit.rtnetlink.attributes), counters and ids by presence.
"""

from __future__ import annotations

import socket

import pytest

from labkit.rtnetlink import attributes, differ
from labkit.rtnetlink.differential import Pair

from .conftest import SUITE

pytestmark = SUITE

IFLA_STATS_LINK_64 = 1  # the filter_mask bit of IFLA_STATS_LINK_64: IFLA_STATS_FILTER_BIT(1)
FAMILY = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}


def request(type_: str, dump: bool, fields: dict, attrs: list | None = None) -> dict:
    return {"type": type_, "flags": ["REQUEST", "DUMP"] if dump else ["REQUEST"], "fields": fields, "attrs": attrs or []}


def whole_answer(pair: Pair, name: str, message: str) -> list[differ.Difference]:
    """The outcome, the records both ways and their fixed fields, then every attribute of the
    records both list."""
    kernel = pair.kernel[name]
    assert kernel.errno is None and kernel.payload(), f"the kernel answered {name} with errno {kernel.errno}, no records"
    fields = differ.COMPARED_FIELDS[message]
    found = pair.differences(name, only=fields)
    found += attributes.differences(kernel, pair.stack[name], pair.kernel_norm, pair.stack_norm, none_in_common=False)
    return found


@pytest.mark.parametrize("family", list(FAMILY))
def test_rule_dump(rtnl, family):
    """`ip rule` / `ip -6 rule`: a namespace starts with the local, main (and for IPv4 default)
    rules, protocol kernel, at priorities 0, 32766, 32767."""
    pair = rtnl.ask({"rules": request("RTM_GETRULE", True, {"family": FAMILY[family]})})
    tables = {m.attr("FRA_TABLE") for m in pair.kernel["rules"].payload()}
    assert {254, 255} <= tables, f"the kernel's {family} rules point at tables {tables}"
    differences = whole_answer(pair, "rules", "RTM_NEWRULE")
    rtnl.verdict("RTM_GETRULE", pair, "rules", differences, f"ip {'-6 ' if family == 'inet6' else ''}rule")


@pytest.mark.parametrize("family", list(FAMILY))
def test_netconf_dump(rtnl, plan, family):
    """`ip netconf`: per family, the forwarding, rp_filter, proxy_neigh ... of each link and of
    "all" and "default"."""
    pair = rtnl.ask({"netconf": request("RTM_GETNETCONF", True, {"family": FAMILY[family]})})
    keys = {r.key[1] for r in pair.kernel_norm.records(pair.kernel["netconf"])}
    assert {"all", "default", plan.stack_ifname} <= keys, f"the kernel's {family} netconf dump lists {keys}"
    differences = whole_answer(pair, "netconf", "RTM_NEWNETCONF")
    rtnl.verdict("RTM_GETNETCONF", pair, "netconf", differences, f"ip {'-6 ' if family == 'inet6' else ''}netconf")


def test_netconf_of_one_link(rtnl, plan):
    """`ip netconf show dev IFNAME`: a GET naming the link by NETCONFA_IFINDEX."""
    link = [["NETCONFA_IFINDEX", {"ifindex_of": plan.stack_ifname}]]
    pair = rtnl.ask({"netconf": request("RTM_GETNETCONF", False, {"family": socket.AF_INET}, link)})
    assert [r.key for r in pair.kernel_norm.records(pair.kernel["netconf"])] == [("family 2", plan.stack_ifname)]
    differences = whole_answer(pair, "netconf", "RTM_NEWNETCONF")
    rtnl.verdict("RTM_GETNETCONF", pair, "netconf", differences, f"ip netconf show dev {plan.stack_ifname}")


@pytest.mark.parametrize("how", ["dump", "one-link"])
def test_stats(rtnl, plan, how):
    """`ip stats show group link` / `ip -s link`: RTM_GETSTATS with filter_mask IFLA_STATS_LINK_64.
    The counters differ by nature; compared are the outcome, the links listed and which stats
    groups each carries."""
    fields = {"family": 0, "filter_mask": IFLA_STATS_LINK_64}
    if how == "one-link":
        fields["ifindex"] = {"ifindex_of": plan.stack_ifname}
    pair = rtnl.ask({"stats": request("RTM_GETSTATS", how == "dump", fields)})
    links = {r.key[1] for r in pair.kernel_norm.records(pair.kernel["stats"])}
    assert plan.stack_ifname in links, f"the kernel's stats list {links}"
    differences = whole_answer(pair, "stats", "RTM_NEWSTATS")
    rtnl.verdict("RTM_GETSTATS", pair, "stats", differences, f"RTM_GETSTATS ({how})")


@pytest.mark.parametrize("how", ["dump", "by-fd", "by-pid"])
def test_nsid(rtnl, how):
    """`ip netns list-id` dumps the ids this namespace gave its peers (the lab's veth peer has
    one); `ip netns identify`-style GETs ask for our own namespace by NETNSA_FD of
    /proc/self/ns/net or NETNSA_PID, which has no id in itself (NETNSA_NSID -1)."""
    attrs = {"dump": [], "by-fd": [["NETNSA_FD", {"own": "netns_fd"}]], "by-pid": [["NETNSA_PID", {"own": "pid"}]]}[how]
    pair = rtnl.ask({"nsid": request("RTM_GETNSID", how == "dump", {"rtgen_family": 0}, attrs)})
    differences = whole_answer(pair, "nsid", "RTM_NEWNSID")
    rtnl.verdict("RTM_GETNSID", pair, "nsid", differences, f"RTM_GETNSID ({how})")
