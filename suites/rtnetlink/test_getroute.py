"""RTM_GETROUTE: dumps per family and table, and lookups (`ip route get`): the longest prefix,
the default route, no route at all, and the rtm_flags a lookup may carry."""

from __future__ import annotations

import errno
import socket

import pytest

from labkit.rtnetlink import differ
from labkit.rtnetlink.differential import RTM_F_LOOKUP_TABLE, dump, family_filter_differences, lookup

from .conftest import DEFAULTED6, IN_SPECIFIC4, IN_SPECIFIC6, SUITE, UNROUTED4

pytestmark = SUITE

MAIN, LOCAL = 254, 255
RTM_F_NOTIFY, RTM_F_FIB_MATCH = 0x100, 0x2000
FAMILY = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}


@pytest.mark.parametrize("family", list(FAMILY))
def test_route_dump_honours_the_family_filter(rtnl, family):
    pair = rtnl.ask({"dump": dump("RTM_GETROUTE", FAMILY[family])})
    differences = family_filter_differences(pair, "dump", FAMILY[family])
    rtnl.verdict("RTM_GETROUTE", pair, "dump", differences, f"a route dump filtered to {family}")


@pytest.mark.parametrize("table", ["main", "local"])
@pytest.mark.parametrize("family", list(FAMILY))
def test_route_dump_per_table(rtnl, family, table):
    """The routes of one family (the filter itself is the check above), compared table by table:
    `ip route` shows main, `ip route show table local` the local and broadcast routes the kernel
    adds for each address."""
    pair = rtnl.ask({"dump": dump("RTM_GETROUTE", FAMILY[family])})
    number = MAIN if table == "main" else LOCAL
    kernel, stack = (
        [r for r in records if r.key[0] == f"table {number}" and r.values["family"] == FAMILY[family]]
        for records in pair.records("dump")
    )
    assert kernel, f"the kernel's {family} dump has no {table} routes"
    differences = differ.diff_outcome(pair.kernel["dump"], pair.stack["dump"]) + differ.diff_records(kernel, stack)
    rtnl.verdict("RTM_GETROUTE", pair, "dump", differences, f"the {family} route dump ({table} table)")


@pytest.mark.parametrize(
    "dst, expect",
    [
        (IN_SPECIFIC4, "specific"),
        (IN_SPECIFIC6, "specific"),
        (DEFAULTED6, "default"),
        (UNROUTED4, "unreachable"),
    ],
    ids=["v4-longest-prefix", "v6-longest-prefix", "v6-default", "v4-no-route"],
)
def test_route_lookup(rtnl, plan, dst, expect):
    pair = rtnl.ask({"get": lookup(dst)})
    kernel = pair.kernel["get"]
    if expect == "unreachable":
        assert kernel.errno == errno.ENETUNREACH, f"the kernel's lookup of {dst} gave errno {kernel.errno}"
    else:
        (route,) = kernel.payload()
        gateway = plan.peer6 if ":" in dst else plan.peer4
        assert route.attr("RTA_GATEWAY") == gateway, f"the kernel routes {dst} via {route.attr('RTA_GATEWAY')}"
    differences = pair.differences("get")
    rtnl.verdict("RTM_GETROUTE", pair, "get", differences, f"ip route get {dst}")


# A lookup with RTM_F_NOTIFY marks the kernel's cached route to that destination (RTCF_NOTIFY):
# every later `ip route get` of it then shows "notify". So that check changes the stack, and runs
# on a fresh one, and a fresh kernel reference, not to hand the mark on to the next check.
CACHE_MARKING = [pytest.mark.fresh, pytest.mark.changes("routes")]


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(RTM_F_LOOKUP_TABLE, id="lookup-table"),
        pytest.param(RTM_F_FIB_MATCH, id="fib-match"),
        pytest.param(RTM_F_NOTIFY, id="notify", marks=CACHE_MARKING),
    ],
)
def test_route_lookup_flags(rtnl, flags):
    """iproute2 sets RTM_F_LOOKUP_TABLE on every `ip route get`; `ip route get fibmatch` sets
    RTM_F_FIB_MATCH. A stack that does not support a flag may refuse it (EOPNOTSUPP), which the
    support table shows, but that is still a difference from the kernel."""
    pair = rtnl.ask({"get": lookup(IN_SPECIFIC4, flags)})
    assert pair.kernel["get"].errno is None, f"the kernel refused rtm_flags {flags:#x}: errno {pair.kernel['get'].errno}"
    differences = pair.differences(
        "get", only=("type", "table", "RTA_GATEWAY", "RTA_OIF")
    )  # the route found; its attributes: above
    rtnl.verdict("RTM_GETROUTE", pair, "get", differences, f"a lookup with rtm_flags {flags:#x}")
