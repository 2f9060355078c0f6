"""Notifications: a listener on rtnetlink's link, address and route groups is told of each change
as one is on the kernel, with the same content in the same order, whether a request made the
change or the link's far end went down; and `ip monitor` prints the same. A stack that refuses to
let a listener join the groups fails each check saying so: that is what a tool following the
network meets there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from labkit.net.plan import AddressPlan
from labkit.rtnetlink import differ
from labkit.rtnetlink.differential import address
from labkit.rtnetlink.notifications import (
    Expect,
    Listener,
    Step,
    compare,
    link_state,
    listening,
    monitoring,
    observe,
    route,
    undo,
)
from labkit.rtnetlink.probe import ask
from labkit.stacks.agent import SocketCallError

from .conftest import SPECIFIC4, SPECIFIC6, SUITE

pytestmark = [*SUITE, pytest.mark.fresh, pytest.mark.changes("addresses", "routes", "links")]

ADD, DEL = ("REQUEST", "ACK", "CREATE", "EXCL"), ("REQUEST", "ACK")
PUT_BACK = ("REQUEST", "ACK", "CREATE", "REPLACE")  # whether or not it is still there
NEW4, NEW6 = "198.19.251.0/24", "2001:db8:251::/64"  # routes via the peer the layout has not


def _new_address(plan: AddressPlan, v: int) -> str:
    return f"{plan.net4[77]}/{plan.net4.prefixlen}" if v == 4 else f"{plan.net6[0x77]}/{plan.net6.prefixlen}"


def _address_steps(plan: AddressPlan, v: int, *compared: str) -> list[Step]:
    """Add an address, then delete it; the steps named in `compared` are the check's, the other
    prepares one (the add before a delete) or puts the layout back (the delete after an add)."""
    cidr, ifname = _new_address(plan, v), plan.stack_ifname
    add = Step("add", {"add": address("RTM_NEWADDR", ifname, cidr, ADD)}, expect=(Expect("RTM_NEWADDR", (cidr,)),))
    delete = Step("delete", {"delete": address("RTM_DELADDR", ifname, cidr, DEL)}, expect=(Expect("RTM_DELADDR", (cidr,)),))
    return [replace(s, compared=s.name in compared) for s in (add, delete)]


def _route_steps(plan: AddressPlan, v: int, *compared: str) -> list[Step]:
    (cidr, via), ifname = ((NEW4, plan.peer4) if v == 4 else (NEW6, plan.peer6)), plan.stack_ifname
    add = Step("add", {"add": route("RTM_NEWROUTE", cidr, via, ifname, ADD)}, expect=(Expect("RTM_NEWROUTE", (cidr,)),))
    delete = Step("delete", {"delete": route("RTM_DELROUTE", cidr, via, ifname, DEL)}, expect=(Expect("RTM_DELROUTE", (cidr,)),))
    return [replace(s, compared=s.name in compared) for s in (add, delete)]


def _link_steps(plan: AddressPlan) -> list[Step]:
    """Down: the kernel drops the link's IPv6 addresses and routes, and says so. Up: once
    linkwatch counts it up (operstate UP), the link-local address comes back, and with it its routes."""
    ifname = plan.stack_ifname
    return [
        Step("down", {"down": link_state(ifname, False)}, expect=(Expect("RTM_NEWLINK", (ifname,), no_flags=("UP",)),)),
        Step(
            "up",
            {"up": link_state(ifname, True)},
            expect=(
                Expect("RTM_NEWLINK", (ifname,), flags=("UP", "LOWER_UP"), values=(("IFLA_OPERSTATE", "UP"),)),
                Expect("RTM_NEWADDR", (ifname, "fe80:")),
                Expect("RTM_NEWROUTE", ("table 255", "fe80:")),
            ),
        ),
    ]


def _far_end_steps(plan: AddressPlan) -> list[Step]:
    """The lab takes the veth's other end down and up: the stack's end loses its carrier
    (LOWER_UP) and gets it back, and no request of the stack's made that."""
    ifname = plan.stack_ifname
    return [
        Step("far end down", far_end="down", expect=(Expect("RTM_NEWLINK", (ifname,), no_flags=("LOWER_UP",)),)),
        Step(
            "far end up",
            far_end="up",
            expect=(Expect("RTM_NEWLINK", (ifname,), flags=("LOWER_UP",), values=(("IFLA_OPERSTATE", "UP"),)),),
        ),
    ]


def _layout_after_link_down(plan: AddressPlan) -> dict[str, dict]:
    """What the kernel removed with the link and does not put back with it: the layout's IPv6
    address (added without DAD) and the routes via the peer."""
    ifname = plan.stack_ifname
    return {
        "address6": address("RTM_NEWADDR", ifname, f"{plan.stack6}/{plan.net6.prefixlen}", PUT_BACK, ifa_flags=0x2),
        "specific4": route("RTM_NEWROUTE", SPECIFIC4, plan.peer4, ifname, PUT_BACK, proto=3),
        "specific6": route("RTM_NEWROUTE", SPECIFIC6, plan.peer6, ifname, PUT_BACK, proto=3),
        "default6": route("RTM_NEWROUTE", "::/0", plan.peer6, ifname, PUT_BACK, proto=3),
    }


# change -> (support-table row, its steps, what puts the layout back after them)
CHANGES: dict[str, Callable[[AddressPlan], tuple[str, list[Step], dict[str, dict]]]] = {
    "addr-add-v4": lambda plan: ("notify: RTM_NEWADDR", _address_steps(plan, 4, "add"), {}),
    "addr-del-v4": lambda plan: ("notify: RTM_DELADDR", _address_steps(plan, 4, "delete"), {}),
    "addr-add-v6": lambda plan: ("notify: RTM_NEWADDR", _address_steps(plan, 6, "add"), {}),
    "addr-del-v6": lambda plan: ("notify: RTM_DELADDR", _address_steps(plan, 6, "delete"), {}),
    "route-add-v4": lambda plan: ("notify: RTM_NEWROUTE", _route_steps(plan, 4, "add"), {}),
    "route-del-v4": lambda plan: ("notify: RTM_DELROUTE", _route_steps(plan, 4, "delete"), {}),
    "route-add-v6": lambda plan: ("notify: RTM_NEWROUTE", _route_steps(plan, 6, "add"), {}),
    "route-del-v6": lambda plan: ("notify: RTM_DELROUTE", _route_steps(plan, 6, "delete"), {}),
    "link-down-up": lambda plan: ("notify: RTM_NEWLINK", _link_steps(plan), _layout_after_link_down(plan)),
    "far-end-down-up": lambda plan: ("notify: RTM_NEWLINK carrier", _far_end_steps(plan), {}),
}


def _refused(how: str, kernel: Listener, stack: Listener) -> list[differ.Difference]:
    """The stack's refusal to let a listener join, where the kernel let it (None: both joined)."""
    assert kernel.refusal is None, f"the kernel refused the subscription: {kernel.refusal}"
    return [differ.Difference(f"subscribe ({how})", "outcome", "joined", stack.refusal)] if stack.refusal else []


@pytest.mark.parametrize("change", list(CHANGES))
def test_notification(rtnl, testbed, plan, change):
    """Both listen (bind with the groups), both make the change, each listener's notifications compared."""
    row, steps, layout_back = CHANGES[change](plan)
    far_ends = (rtnl.kernel.peer_end, testbed.peer_end)
    with listening(rtnl.kernel.stack.agent()) as kernel, listening(rtnl.stack.agent()) as stack:
        if refused := _refused("bind", kernel, stack):
            rtnl.judge(row, refused, "lets no listener join", unsupported=True)
        kernel.drain()
        stack.drain()
        try:
            observed = observe(rtnl, far_ends, (kernel, stack), steps)
        finally:
            left = undo(rtnl, far_ends, steps, layout_back)
    assert not left, f"the kernel did not take back what {change} changed: {left}"
    rtnl.judge(row, observed.differences, f"notifies {change}", unsupported=observed.unsupported)


def test_subscription_by_membership(rtnl, testbed, plan):
    """As sd-netlink and libnl join: bind with no groups, then NETLINK_ADD_MEMBERSHIP for each;
    the memberships the socket then lists, and an address added and deleted, compared."""
    far_ends = (rtnl.kernel.peer_end, testbed.peer_end)
    with listening(rtnl.kernel.stack.agent(), "membership") as kernel, listening(rtnl.stack.agent(), "membership") as stack:
        if refused := _refused("NETLINK_ADD_MEMBERSHIP", kernel, stack):
            rtnl.judge("notify: subscribe", refused, "lets no listener join", unsupported=True)
        joined = [_memberships(listener) for listener in (kernel, stack)]
        differences = [
            differ.Difference("joined", what, joined[0][what], joined[1][what])
            for what in joined[0]
            if joined[0][what] != joined[1][what]
        ]
        kernel.drain()
        stack.drain()
        observed = observe(rtnl, far_ends, (kernel, stack), _address_steps(plan, 4, "add", "delete"))
    rtnl.judge("notify: subscribe", differences + observed.differences, "joins by membership", unsupported=observed.unsupported)


def _memberships(listener: Listener) -> dict[str, object]:
    """What the socket says it joined: NETLINK_LIST_MEMBERSHIPS and getsockname's groups."""
    out: dict[str, object] = {}
    for what, get in (
        ("NETLINK_LIST_MEMBERSHIPS", lambda: listener.sock.getsockopt("NETLINK_LIST_MEMBERSHIPS")),
        ("getsockname groups", lambda: hex(listener.sock.getsockname()[1])),
    ):
        try:
            out[what] = get()
        except SocketCallError as exc:  # the errno is the answer
            out[what] = f"error {exc.errno}"
    return out


def test_ip_monitor_prints_the_change(rtnl, plan):
    """`ip monitor link address route` inside each: an address added and deleted, as printed."""
    cidr, ifname = _new_address(plan, 4), plan.stack_ifname
    with monitoring(rtnl.kernel.stack) as kernel, monitoring(rtnl.stack) as stack:
        ready = [monitor.await_ready(_touch(side)) for monitor, side in ((kernel, rtnl.kernel.stack), (stack, rtnl.stack))]
        assert ready[0].complete, f"ip monitor on the kernel printed no line for a change: {ready[0].items}"
        if not ready[1].complete:
            said = "; ".join(ready[1].items) or "nothing"
            refused = any(line.startswith("Cannot") for line in ready[1].items)  # "Cannot bind netlink socket: ..."
            difference = differ.Difference("ip monitor", "a line for a change", "printed", f"none; it printed: {said}")
            rtnl.judge("ip: monitor", [difference], "does not let ip monitor follow it", unsupported=refused)
        pair = rtnl.ask({"add": address("RTM_NEWADDR", ifname, cidr, ADD), "delete": address("RTM_DELADDR", ifname, cidr, DEL)})
        assert pair.kernel["add"].acked and pair.kernel["delete"].acked, "the kernel refused the address add or delete"
        printed = [monitor.gather_until(f"inet {cidr}") for monitor in (kernel, stack)]
    assert printed[0].complete, f"ip monitor on the kernel printed no deletion of {cidr}: {printed[0].items}"
    as_records = [[differ.Record("line", (line,)) for line in p.items] for p in printed]
    outcome = [d for step in ("add", "delete") for d in differ.diff_outcome(pair.kernel[step], pair.stack[step])]
    differences = outcome + compare("ip monitor", *as_records)
    rtnl.judge("ip: monitor", differences, f"shows adding and deleting {cidr} in ip monitor")


def _touch(side) -> Callable[[int], str]:
    """A harmless change on `side` (an address on lo, added and deleted): what its last line says."""

    def touch(n: int) -> str:
        cidr = f"198.19.254.{n + 1}/32"
        ask(side, {"add": address("RTM_NEWADDR", "lo", cidr, ADD), "delete": address("RTM_DELADDR", "lo", cidr, DEL)})
        return f"inet {cidr}"

    return touch
