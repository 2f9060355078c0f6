"""The NETLINK_ROUTE socket itself, as the tools use it: each option at the value a tool sets, read
back and, where it is cheap to see, at work; binding and port ids; how a datagram is read (the
peek iproute2 sizes its buffer with, a buffer too small, a socket with nothing to read); the
receive buffer sizes tools ask for; and multicast notifications as each tool subscribes to them.

Every step is a socket call the agent makes inside the kernel reference and inside the stack
(labkit.rtnetlink.sockets); the check compares what each side showed, step by step.
"""

from __future__ import annotations

import errno

import pytest

from labkit.rtnetlink import sockets
from labkit.rtnetlink.differential import UNSUPPORTED

from .conftest import SUITE

pytestmark = SUITE


def on_both(rtnl, outcome, *args) -> tuple[dict, dict]:
    """The same steps through the kernel reference's agent and the stack's."""
    return outcome(rtnl.kernel.stack.agent(), *args), outcome(rtnl.stack.agent(), *args)


NOT_IMPLEMENTED = {errno.errorcode[code] for code in UNSUPPORTED}


def refused(outcome: dict) -> bool:
    """A step refused as not implemented: an unsupported row, not merely different."""
    return any(isinstance(v, str) and v.removeprefix("errno ") in NOT_IMPLEMENTED for v in outcome.values())


@pytest.mark.parametrize("name", [o.name for o in sockets.OPTIONS])
def test_socket_option(rtnl, name):
    """Set as the tool sets it (see sockets.OPTIONS for which tool, and the value), read back,
    and its effect where one is cheap to see: an error quoting only the header (CAP_ACK), the
    error's explanation (EXT_ACK), a junk dump refused (GET_STRICT_CHK), credentials with each
    datagram (PASSCRED), a request larger than the send buffer refused (SNDBUF)."""
    option = sockets.OPTION_BY_NAME[name]
    kernel, stack = on_both(rtnl, sockets.option_outcome, option)
    steps = {k: v for k, v in kernel.items() if k.split()[0] in ("set", "get", "bind")}
    assert not any(isinstance(v, str) and v.startswith("errno") for v in steps.values()), f"the kernel refused a step: {kernel}"
    differences = sockets.compare(kernel, stack, f"{name} as {option.tool} sets it")
    rtnl.judge(option.row, differences, f"answers {name}", unsupported=refused(stack) and not refused(kernel))


@pytest.mark.parametrize(
    "value, option",
    [(None, "SO_RCVBUF"), (0, "SO_RCVBUF"), (8 << 20, "SO_RCVBUF")],
    ids=["default", "zero", "NetworkManager-8MiB-unforced"],
)
def test_receive_buffer_size(rtnl, value, option):
    """What SO_RCVBUF reads back: the kernel's default (net.core.rmem_default), its minimum for
    0, and 8 MiB asked without FORCE (NetworkManager's nl_socket_new) clamped at net.core.rmem_max
    and doubled; systemd reads it back to see whether to force. (iproute2's 1 MiB and systemd's
    forced 8 MiB: test_socket_option.)"""
    kernel, stack = on_both(rtnl, sockets.buffer_outcome, value, option)
    differences = sockets.compare(kernel, stack, f"SO_RCVBUF after {value if value is not None else 'nothing'} set")
    rtnl.judge("socket: SO_RCVBUF sizes", differences, f"sizes the receive buffer for {value}")


def test_bind_with_groups_and_getsockname(rtnl):
    kernel, stack = on_both(rtnl, sockets.bind_outcome)
    assert kernel["bind: port id given"] and kernel["bind the same port id again"] == "errno EADDRINUSE", kernel
    differences = sockets.compare(kernel, stack, "bind and getsockname")
    rtnl.judge("socket: bind, getsockname", differences, "binds", unsupported=refused(stack) and not refused(kernel))


def test_autobind_gives_distinct_port_ids(rtnl):
    kernel, stack = on_both(rtnl, sockets.autobind_outcome)
    assert kernel["port ids given"] and kernel["port ids distinct"], kernel
    differences = sockets.compare(kernel, stack, "sockets never bound, after their first send")
    rtnl.judge("socket: autobind", differences, "gives port ids")


def test_peek_with_msg_trunc_gives_the_length_and_keeps_the_datagram(rtnl):
    kernel, stack = on_both(rtnl, sockets.peek_outcome)
    assert kernel["peek into 0 bytes gives the length"] is True, kernel
    differences = sockets.compare(kernel, stack, "recvmsg(MSG_PEEK|MSG_TRUNC) as iproute2 sizes its read")
    rtnl.judge("socket: MSG_PEEK|MSG_TRUNC", differences, "answers a peek")


def test_short_buffer_cuts_the_datagram_and_drops_the_rest(rtnl):
    kernel, stack = on_both(rtnl, sockets.short_buffer_outcome)
    assert kernel["a 20-byte read says MSG_TRUNC"] is True, kernel
    differences = sockets.compare(kernel, stack, "three answers read into 20 bytes, 20 bytes with MSG_TRUNC, then 64 KiB")
    rtnl.judge("socket: short buffer", differences, "cuts a datagram")


def test_nonblocking_read_of_an_empty_socket(rtnl):
    kernel, stack = on_both(rtnl, sockets.nonblocking_outcome)
    assert kernel["O_NONBLOCK"] == "EAGAIN", kernel
    differences = sockets.compare(kernel, stack, "reads of an empty socket that do not wait")
    rtnl.judge("socket: non-blocking read", differences, "answers a read that must not wait")


@pytest.mark.fresh
@pytest.mark.changes("addresses", "routes")  # an address on lo, added and deleted again
def test_notifications_reach_each_kind_of_member(rtnl):
    """`ip monitor`, sd-netlink, libnl and Go's netlink each join the IPv4 address group their own
    way; an address added and deleted must reach each, with the control messages asked for
    (the group, by NETLINK_PKTINFO), and not reach a socket that left the group."""
    kernel, stack = on_both(rtnl, sockets.notification_outcome, "198.19.99.5")
    assert kernel["NETLINK_ADD_MEMBERSHIP + NETLINK_PKTINFO: received"], f"the kernel sent no notification: {kernel}"
    differences = sockets.compare(kernel, stack, "listeners of RTNLGRP_IPV4_IFADDR around an address add and delete")
    rtnl.judge("socket: multicast notifications", differences, "notifies its listeners", unsupported=refused(stack))


@pytest.mark.fresh
@pytest.mark.changes("addresses", "routes")  # addresses on lo, added and deleted again
@pytest.mark.parametrize("no_enobufs", [False, True], ids=["reported", "NETLINK_NO_ENOBUFS"])
def test_a_listener_that_overruns_is_told_once(rtnl, no_enobufs):
    """Notifications that do not fit a listener's buffer are dropped, and the next read says so
    (ENOBUFS), once: the listener then knows to dump again. NETLINK_NO_ENOBUFS turns that off."""
    kernel, stack = on_both(rtnl, sockets.overrun_outcome, no_enobufs)
    assert kernel["read errors"] == ([] if no_enobufs else ["ENOBUFS"]) and kernel["some notifications dropped"], kernel
    differences = sockets.compare(kernel, stack, f"a listener overrun by {2 * sockets.OVERRUN_CHANGES} notifications")
    row = "socket: NETLINK_NO_ENOBUFS at work" if no_enobufs else "socket: ENOBUFS on overrun"
    rtnl.judge(row, differences, "tells an overrun listener", unsupported=refused(stack) and not refused(kernel))
