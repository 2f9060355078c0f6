"""Dumps too large for one read: 1000 routes and 200 addresses (rtnl_bulk_layout) listed over many
datagrams, read with the buffers tools read with, as the kernel reference lists them.

The contract checked: every record once, NLM_F_MULTI on each message, seq and port id echoed,
one NLMSG_DONE and nothing after it, and no datagram cut: the kernel sizes a dump's datagrams to
the reader's reads (the first one page, then the reader's largest buffer up to 32 KiB), which is
what lets Go's syscall.NetlinkRIB (behind net.Interfaces) read a dump one page at a time. How
many reads a dump takes is not part of it (where the kernel cuts depends on its allocations and
on the reader's earlier reads); it is recorded, with the largest datagram, as the `reads` property.
"""

from __future__ import annotations

import pytest

from labkit.rtnetlink import differ, sockets

from .conftest import BULK_ADDRESSES, BULK_ROUTES, SUITE, bulk_addresses, bulk_routes, rtnl_bulk_layout

pytestmark = [*(m for m in SUITE if m.name != "layout"), pytest.mark.layout.with_args(rtnl_bulk_layout)]

SIZES = {
    "4KiB-Go-NetlinkRIB": 4096,  # Go's syscall.NetlinkRIB: one page, no peek
    "32KiB-iproute2": 32768,  # iproute2 rtnl_recvmsg: the peeked length, at least 32 KiB
    "1MiB": 1 << 20,
}
ROUTES, ADDRESSES = set(bulk_routes()), set(bulk_addresses())
# What is compared: the layout's bulk routes and addresses. The rest (the local table, other
# families a stack lists despite the filter) is test_getroute's and test_getaddr's business.
DUMPS = {
    "route": ("RTM_GETROUTE", BULK_ROUTES, lambda m: f"{m.attr('RTA_DST')}/{m.fields.get('dst_len')}" in ROUTES),
    "address": ("RTM_GETADDR", BULK_ADDRESSES, lambda m: m.attr("IFA_ADDRESS") in ADDRESSES),
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("dump", list(DUMPS))
def test_large_dump_across_reads(rtnl, dump, size, record_property):
    type_, at_least, keep = DUMPS[dump]
    kernel, stack = (sockets.run_dump(side.agent(), type_, 2, SIZES[size]) for side in (rtnl.kernel.stack, rtnl.stack))
    record_property("reads", {side: [len(run.reads), run.largest] for side, run in (("kernel", kernel), ("stack", stack))})
    assert not kernel.faults, f"the kernel's own {dump} dump: {kernel.faults}"
    kernel_records, stack_records = (sockets.dumped_records(run.reads, keep) for run in (kernel, stack))
    assert len(kernel_records) == at_least, (
        f"the kernel lists {len(kernel_records)} bulk {dump}s: the layout did not put them in place"
    )
    where = (
        f"{type_} read with {SIZES[size]}-byte buffers ({len(kernel.reads)} reads on the kernel, {len(stack.reads)} on the stack)"
    )
    differences = [differ.Difference(where, fault, "-", "-") for fault in stack.faults]
    differences += sockets.record_differences(kernel_records, stack_records, where)
    rtnl.judge(f"dump: {type_} across reads", differences, f"answers a dump of {at_least} {dump}s")


@pytest.mark.fresh
@pytest.mark.changes("addresses", "routes")  # an address added on lo during the dump
def test_dump_interrupted_by_a_change_says_so(rtnl):
    """An address added between two reads of an address dump: the kernel flags the messages it
    sends after the change with NLM_F_DUMP_INTR (iproute2 then warns "Dump was interrupted and
    may be inconsistent", NetworkManager dumps again). Read into one page, so the dump has parts
    left to send after the change."""
    outcomes = []
    for side in (rtnl.kernel.stack, rtnl.stack):
        agent = side.agent()
        change: list = []
        run = sockets.run_dump(
            agent, "RTM_GETADDR", 2, 4096, between=lambda a=agent, c=change: c.append(sockets.add_address(a, "198.19.99.6"))
        )
        outcomes.append(
            {"address added": change[0] if change else "no second read", "NLM_F_DUMP_INTR": run.interrupted, "faults": run.faults}
        )
    kernel, stack = outcomes
    assert kernel == {"address added": 0, "NLM_F_DUMP_INTR": True, "faults": []}, f"the kernel: {kernel}"
    differences = sockets.compare(kernel, stack, "an address dump with an address added after its first read")
    rtnl.judge("dump: NLM_F_DUMP_INTR", differences, "says whether a dump was interrupted")
