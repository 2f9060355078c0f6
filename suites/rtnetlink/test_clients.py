"""The tools containers use, run inside the stack: `ip -j` and pyroute2's IPRoute must work as
they do on the kernel (same exit, no exception) and list the same links, addresses and routes."""

from __future__ import annotations

import weakref

import pytest

from labkit.rtnetlink import clients

from .conftest import DEFAULTED6, IN_SPECIFIC4, SUITE

pytestmark = SUITE

LOOKUPS = [IN_SPECIFIC4, DEFAULTED6]


# One run of the tools per stack serves every check below (they only read).
_runs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@pytest.fixture
def tool_runs(rtnl) -> tuple[dict, dict]:
    if rtnl.stack not in _runs:
        _runs[rtnl.stack] = (clients.ask(rtnl.kernel.stack, LOOKUPS), clients.ask(rtnl.stack, LOOKUPS))
    return _runs[rtnl.stack]


@pytest.mark.parametrize("tool", [*clients.IP_COMMANDS, *(f"ip route get {d}" for d in LOOKUPS), "pyroute2 IPRoute"])
def test_tool_works_as_on_the_kernel(tool_runs, rtnl, tool):
    kernel, stack = tool_runs[0][tool], tool_runs[1][tool]
    assert "error" not in kernel, f"{tool} fails on the kernel: {kernel['error']}"
    assert "error" not in stack, f"{tool} fails inside {rtnl.stack.id}: {stack['error']} (on the kernel it lists {kernel})"
    assert stack == kernel, f"{tool} inside {rtnl.stack.id} lists\n  {stack}\nwhere on the kernel it lists\n  {kernel}"
