"""RTM_GETADDR: the dump under each family filter; address, prefix length, scope and flags."""

from __future__ import annotations

import socket

import pytest

from labkit.rtnetlink import differ
from labkit.rtnetlink.differential import dump, family_filter_differences

from .conftest import SUITE

pytestmark = SUITE

FAMILIES = {"unspec": socket.AF_UNSPEC, "inet": socket.AF_INET, "inet6": socket.AF_INET6}


@pytest.mark.parametrize("family", ["inet", "inet6"])
def test_address_dump_honours_the_family_filter(rtnl, family):
    pair = rtnl.ask({"dump": dump("RTM_GETADDR", FAMILIES[family])})
    differences = family_filter_differences(pair, "dump", FAMILIES[family])
    rtnl.verdict("RTM_GETADDR", pair, "dump", differences, f"an address dump filtered to {family}")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_addresses_match_the_kernel(rtnl, plan, family):
    """Each address of the requested family (the filter itself is the check above): present on
    both, with the same prefix length, scope, flags, label and IFA_LOCAL/IFA_ADDRESS."""
    pair = rtnl.ask({"dump": dump("RTM_GETADDR", FAMILIES[family])})
    wanted = (socket.AF_INET, socket.AF_INET6) if family == "unspec" else (FAMILIES[family],)
    kernel, stack = ([r for r in records if r.values["family"] in wanted] for records in pair.records("dump"))
    assert {r.key[1].split("/")[0] for r in kernel} & {plan.stack4, plan.stack6}, (
        f"the kernel's dump lacks the stack's addresses: {kernel}"
    )
    differences = differ.diff_outcome(pair.kernel["dump"], pair.stack["dump"]) + differ.diff_records(kernel, stack)
    rtnl.verdict("RTM_GETADDR", pair, "dump", differences, f"the {family} address dump")
