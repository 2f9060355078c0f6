"""RTM_GETLINK: the dump, a link by index and by name, and the errors for what does not exist.

Every check asks the kernel and the stack the same thing (labkit.rtnetlink.differential) and fails on any
difference in the outcome (errno, ACK, silence) or in a compared field or attribute.
"""

from __future__ import annotations

import errno

import pytest

from .conftest import SUITE

pytestmark = SUITE


def getlink(flags=("REQUEST",), **fields) -> dict:
    return {"type": "RTM_GETLINK", "flags": list(flags), "fields": {"family": 0, **fields}}


def test_link_dump_matches_the_kernel(rtnl, plan):
    pair = rtnl.ask({"dump": getlink(("REQUEST", "DUMP"))})
    kernel, _ = pair.records("dump")
    assert {r.key[0] for r in kernel} >= {"lo", plan.stack_ifname}, f"the kernel's own dump lacks links: {kernel}"
    differences = pair.differences("dump")
    rtnl.verdict("RTM_GETLINK", pair, "dump", differences, "dump")


@pytest.mark.parametrize("how", ["index", "name"])
def test_one_link_by_index_or_name(rtnl, plan, how):
    if how == "index":
        request = getlink(index={"ifindex_of": plan.stack_ifname})
    else:
        request = getlink(index=0) | {"attrs": [["IFLA_IFNAME", plan.stack_ifname]]}
    pair = rtnl.ask({"get": request})
    kernel, _ = pair.records("get")
    assert [r.key for r in kernel] == [(plan.stack_ifname,)], f"the kernel answered {kernel}"
    differences = pair.differences("get")
    rtnl.verdict("RTM_GETLINK", pair, "get", differences, "get")


@pytest.mark.parametrize(
    "what, want",
    [("unknown-index", errno.ENODEV), ("unknown-name", errno.ENODEV), ("no-criteria", errno.EINVAL)],
)
def test_getlink_errors(rtnl, what, want):
    request = {
        "unknown-index": getlink(index=0x7FFF0000),
        "unknown-name": getlink(index=0) | {"attrs": [["IFLA_IFNAME", "nosuchlink0"]]},
        "no-criteria": getlink(index=0),
    }[what]
    pair = rtnl.ask({what: request})
    assert pair.kernel[what].errno == want, f"the kernel answered {what} with errno {pair.kernel[what].errno}, not {want}"
    differences = pair.differences(what)
    rtnl.verdict("RTM_GETLINK", pair, what, differences, what)
