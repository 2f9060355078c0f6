"""The tools containers use, run inside the stack: `ip -j` and pyroute2's IPRoute must work as
they do on the kernel (same exit, no exception) and list the same links, addresses and routes."""

from __future__ import annotations

import weakref

import pytest

from labkit import nlclients

from .conftest import DEFAULTED6, IN_SPECIFIC4, rtnl_layout

pytestmark = [pytest.mark.needs("rtnetlink", "ipv4", "ipv6"), pytest.mark.layout.with_args(rtnl_layout)]

LOOKUPS = [IN_SPECIFIC4, DEFAULTED6]


# One run of the tools per stack serves every check below (they only read).
_runs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@pytest.fixture
def clients(rtnl) -> tuple[dict, dict]:
    if rtnl.stack not in _runs:
        _runs[rtnl.stack] = (nlclients.ask(rtnl.kernel.stack, LOOKUPS), nlclients.ask(rtnl.stack, LOOKUPS))
    return _runs[rtnl.stack]


@pytest.mark.parametrize("tool", [*nlclients.IP_COMMANDS, *(f"ip route get {d}" for d in LOOKUPS), "pyroute2 IPRoute"])
def test_tool_works_as_on_the_kernel(clients, rtnl, tool):
    kernel, stack = clients[0][tool], clients[1][tool]
    assert "error" not in kernel, f"{tool} fails on the kernel: {kernel['error']}"
    assert "error" not in stack, f"{tool} fails inside {rtnl.stack.id}: {stack['error']} (on the kernel it lists {kernel})"
    assert stack == kernel, f"{tool} inside {rtnl.stack.id} lists\n  {stack}\nwhere on the kernel it lists\n  {kernel}"
