"""labkit.rtnetlink.notifications without a stack: subscribing, bounded reading, what a notification
is compared on, the comparison itself, the requests it makes, and `ip monitor`'s lines."""

from __future__ import annotations

import struct

import pytest

from labkit.errors import ExpectTimeout, LabInputError
from labkit.rtnetlink import differ, differential, notifications, probe
from labkit.rtnetlink.differential import Pair
from labkit.rtnetlink.notifications import Cause, Ended, Expect, Listener, Monitor, Step, compare, gather
from labkit.stacks.agent import SocketCallError

LINKS = differ.Normaliser(
    probe.Answer(
        "_links", messages=[probe.Message("RTM_NEWLINK", 2, 1, 9, 0, fields={"index": 7}, attrs=[["IFLA_IFNAME", "eth0"]])]
    )
)


def _message(type_: str, seq: int = 0, pid: int = 0, flags: int = 0, **request: object) -> probe.Message:
    """A notification as the kernel would send it: encoded by pyroute2, decoded as a listener does."""
    data = bytearray(probe.encode({"type": type_, **request}, seq=seq))
    struct.pack_into("=HII", data, 6, flags, seq, pid)  # nlmsg_flags, seq, pid as a notification has them
    (message,) = probe.decode(bytes(data))
    return message


def _newaddr(type_: str = "RTM_NEWADDR", address: str = "198.18.0.77", **kw: object) -> probe.Message:
    family = 10 if ":" in address else 2
    fields = {"family": family, "prefixlen": 24, "index": 7, "flags": kw.pop("ifa_flags", 0x80)}
    return _message(type_, fields=fields, attrs=[["IFA_ADDRESS", address], ["IFA_LOCAL", address]], **kw)


def _newlink(flags: int, change: int = 0) -> probe.Message:
    return _message(
        "RTM_NEWLINK", fields={"family": 0, "index": 7, "flags": flags, "change": change}, attrs=[["IFLA_IFNAME", "eth0"]]
    )


# -- groups ----------------------------------------------------------------------------------------


def test_the_mask_is_the_rtmgrp_bits_of_the_groups():
    assert notifications.MASK == 0x1 | 0x10 | 0x40 | 0x100 | 0x400
    assert notifications.group_mask([1, 1, 11]) == 0x401


def test_bit_names_keep_unknown_bits_as_hex():
    assert differ.flag_names(0x600, notifications.NLM_F_NAMES) == "EXCL,CREATE"
    assert differ.flag_names(0x10001, {1: "UP"}) == "UP,0x10000"
    assert differ.flag_names(0, {1: "UP"}) == "-"


# -- subscribing -----------------------------------------------------------------------------------


class _Sock:
    """An AgentSocket stand-in: refuses what `refuse` names (call -> errno), hands out `data`."""

    def __init__(self, refuse: dict[str, str] | None = None, data: list[bytes | str] | None = None) -> None:
        self.refuse, self.data, self.calls = refuse or {}, list(data or []), []

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if what in self.refuse:
            raise SocketCallError(what.split("(")[0], self.refuse[what], "refused")

    def bind_netlink(self, pid: int = 0, groups: int = 0) -> tuple[int, int]:
        self._call(f"bind({groups:#x})")
        return 5, groups

    def setsockopt(self, name: str, value: int) -> None:
        self._call(f"{name}({value})")

    def recvmsg(self, size: int, flags: tuple[str, ...] = (), timeout: float = 3.0) -> dict:
        if not self.data:
            raise SocketCallError("recv", "TIMEOUT", "nothing")
        item = self.data.pop(0)
        if isinstance(item, str):
            raise SocketCallError("recv", item, "the stack's")
        return {"data": item.hex(), "len": len(item)}


def test_bind_subscribes_with_the_mask_and_a_refusal_names_the_call_and_errno():
    sock = _Sock()
    assert Listener(sock).refusal is None and sock.calls == ["bind(0x551)"]
    assert Listener(_Sock({"bind(0x551)": "EACCES"})).refusal == "bind(groups=0x551): EACCES"


def test_membership_binds_without_groups_then_adds_each_and_names_the_one_refused():
    sock = _Sock()
    assert Listener(sock, "membership").refusal is None
    assert sock.calls == ["bind(0x0)", *(f"NETLINK_ADD_MEMBERSHIP({n})" for n in (1, 5, 7, 9, 11))]
    refused = Listener(_Sock({"NETLINK_ADD_MEMBERSHIP(5)": "ENOPROTOOPT"}), "membership").refusal
    assert refused == "setsockopt(NETLINK_ADD_MEMBERSHIP, RTNLGRP_IPV4_IFADDR): ENOPROTOOPT"
    with pytest.raises(LabInputError, match="allowed: bind, membership"):
        Listener(_Sock(), "groups")


def test_receive_decodes_a_datagram_says_none_at_the_bound_and_raises_the_stacks_errno():
    sock = _Sock(data=[bytes.fromhex(_newaddr().raw) * 2, "ENOBUFS"])
    listener = Listener(sock)
    assert [m.type for m in listener.receive(1.0) or []] == ["RTM_NEWADDR", "RTM_NEWADDR"]
    with pytest.raises(SocketCallError, match="ENOBUFS"):
        listener.receive(1.0)
    assert listener.receive(1.0) is None


# -- bounded reading -------------------------------------------------------------------------------


class _Source:
    """Items that arrive at given times on a clock of its own; receive(timeout) advances it."""

    def __init__(self, arrivals: list[tuple[float, str]], ends_at: float | None = None) -> None:
        self.now, self.arrivals, self.ends_at, self.timeouts = 0.0, sorted(arrivals), ends_at, []

    def clock(self) -> float:
        return self.now

    def receive(self, timeout: float) -> list[str] | None:
        self.timeouts.append(round(timeout, 3))
        due = self.now + timeout
        if self.ends_at is not None and self.ends_at <= due and not (self.arrivals and self.arrivals[0][0] <= self.ends_at):
            self.now = self.ends_at
            raise Ended
        if self.arrivals and self.arrivals[0][0] <= due:
            at, item = self.arrivals.pop(0)
            self.now = max(self.now, at)
            return [item]
        self.now = due
        return None


def test_gather_waits_for_what_is_expected_then_for_quiet():
    source = _Source([(0.2, "a"), (1.5, "wanted"), (1.7, "follows"), (3.0, "too late")])
    got = gather(source.receive, lambda items: "wanted" in items, quiet=0.5, deadline=5.0, clock=source.clock)
    assert got.items == ["a", "wanted", "follows"] and got.complete and not got.ended
    assert source.now == pytest.approx(2.2)  # quiet for 0.5 s after the last


def test_gather_ends_at_the_deadline_incomplete():
    source = _Source([(0.2, "a")])
    got = gather(source.receive, lambda items: "wanted" in items, quiet=0.5, deadline=2.0, clock=source.clock)
    assert got.items == ["a"] and not got.complete
    assert source.now == pytest.approx(2.0)


def test_gather_stops_when_its_source_ends():
    source = _Source([(0.1, "Cannot bind netlink socket: Permission denied")], ends_at=0.2)
    got = gather(source.receive, lambda items: False, deadline=5.0, clock=source.clock)
    assert got.ended and not got.complete and got.items == ["Cannot bind netlink socket: Permission denied"]


# -- what a notification is compared on -----------------------------------------------------------


def test_a_notification_is_keyed_with_names_and_says_where_its_seq_and_pid_came_from():
    cause = Cause(port=4242, seqs=frozenset({1002}))
    caused = notifications.record(_newaddr(seq=1002, pid=4242), LINKS, cause)
    assert caused.key == ("eth0", "198.18.0.77/24")
    assert (caused.values["seq"], caused.values["pid"], caused.values["nlmsg_flags"]) == ("the request's", "the requester's", "-")
    event = notifications.record(_newaddr(seq=0, pid=0, flags=0x600), LINKS, Cause())
    assert (event.values["seq"], event.values["pid"], event.values["nlmsg_flags"]) == (0, 0, "EXCL,CREATE")
    stray = notifications.record(_newaddr(seq=7, pid=99), LINKS, cause)
    assert (stray.values["seq"], stray.values["pid"]) == ("another", "another")


def test_a_delete_is_keyed_as_its_new_and_keeps_its_type():
    rec = notifications.record(_newaddr("RTM_DELADDR"), LINKS)
    assert rec.type == "RTM_DELADDR" and rec.key == ("eth0", "198.18.0.77/24") and rec.values["IFA_LOCAL"] == "198.18.0.77"


def test_an_address_notification_keeps_the_tentative_flag_a_dump_record_leaves_out():
    tentative = _newaddr(address="2001:db8::77", ifa_flags=0x40 | 0x80)
    assert notifications.record(tentative, LINKS).values["flags"] == "tentative,permanent"
    assert LINKS.record(tentative).values["flags"] == "permanent"


def test_a_link_notification_names_its_flags_and_change():
    rec = notifications.record(_newlink(0x1043, change=0x1), LINKS)
    assert rec.key == ("eth0",) and rec.values["flags"] == "UP,BROADCAST,RUNNING,MULTICAST" and rec.values["ifi_change"] == "UP"


def test_cause_of_reads_the_seq_each_request_was_sent_with():
    sent = [probe.Answer("a", sent=probe.encode({"type": "RTM_GETLINK"}, seq=s).hex(), port=31) for s in (5, 6)]
    assert Cause.of(sent) == Cause(31, frozenset({5, 6}))
    assert Cause.of([]) == Cause()


def test_expect_matches_type_key_parts_flags_and_values():
    link = notifications.record(_newlink(0x1003), LINKS)  # UP, no RUNNING
    assert Expect("RTM_NEWLINK", ("eth0",), flags=("UP",), no_flags=("RUNNING",)).met_by(link)
    assert not Expect("RTM_NEWLINK", ("eth0",), flags=("RUNNING",)).met_by(link)
    assert not Expect("RTM_NEWLINK", ("eth0",), no_flags=("UP",)).met_by(link)
    assert not Expect("RTM_NEWLINK", ("eth1",)).met_by(link)
    address = notifications.record(_newaddr(address="fe80::ff:fe00:2"), LINKS)
    assert Expect("RTM_NEWADDR", ("eth0", "fe80:")).met_by(address)
    assert not Expect("RTM_DELADDR", ("fe80:",)).met_by(address)
    assert not Expect("RTM_NEWADDR", ("eth0",), values=(("IFA_LABEL", "eth0"),)).met_by(address)
    assert str(Expect("RTM_NEWLINK", ("eth0",), flags=("LOWER_UP",), values=(("IFLA_OPERSTATE", "UP"),))) == (
        "RTM_NEWLINK eth0 (LOWER_UP, IFLA_OPERSTATE=UP)"
    )


def test_all_met_needs_every_expected_notification():
    done = notifications.all_met([Expect("RTM_NEWADDR", ("198.18.0.77",)), Expect("RTM_NEWLINK", ("eth0",))], LINKS)
    assert not done([_newaddr()])
    assert done([_newaddr(), _newlink(0x1)])


# -- the comparison --------------------------------------------------------------------------------


def _rec(type_: str, key: str, **values: object) -> differ.Record:
    return differ.Record(type_, ("eth0", key), dict(values))


def test_the_same_notifications_compare_equal():
    same = [_rec("RTM_NEWADDR", "198.18.0.77/24", seq=0), _rec("RTM_NEWROUTE", "198.18.0.77/32")]
    assert compare("add", same, list(same)) == []


def test_notifications_one_side_lacks_or_adds_are_named():
    kernel = [_rec("RTM_NEWADDR", "a"), _rec("RTM_NEWROUTE", "r")]
    found = compare("add", kernel, [_rec("RTM_NEWADDR", "a"), _rec("RTM_NEWLINK", "l")])
    assert [(d.where, d.what, d.kernel, d.stack) for d in found] == [
        ("add: RTM_NEWROUTE eth0 r", "notification", "sent", "not sent"),
        ("add: RTM_NEWLINK eth0 l", "notification", "not sent", "sent"),
    ]
    assert [d.stack for d in compare("add", kernel, [])] == ["not sent", "not sent"]


def test_a_repeat_counts_and_values_compare_nth_with_nth():
    kernel = [_rec("RTM_NEWADDR", "a", flags="tentative"), _rec("RTM_NEWADDR", "a", flags="permanent")]
    found = compare("add", kernel, [_rec("RTM_NEWADDR", "a", flags="permanent")])
    assert [(d.where, d.what, d.kernel, d.stack) for d in found] == [
        ("add: RTM_NEWADDR eth0 a (#2)", "notification", "sent", "not sent"),
        ("add: RTM_NEWADDR eth0 a", "flags", "tentative", "permanent"),
    ]


def test_the_order_of_notifications_both_sent_is_compared():
    a, b = _rec("RTM_NEWLINK", "l"), _rec("RTM_DELROUTE", "r")
    (found,) = compare("down", [a, b], [b, a])
    assert found.what == "order" and found.kernel == ["down: RTM_NEWLINK eth0 l", "down: RTM_DELROUTE eth0 r"]


# -- the changes it makes --------------------------------------------------------------------------


def test_requests_encode_as_ip_sends_them():
    add = probe.encode(differential.address("RTM_NEWADDR", "lo", "2001:db8::77/64"), seq=1)
    assert struct.unpack_from("=H", add, 4)[0] == 20  # RTM_NEWADDR
    (decoded,) = probe.decode(add)
    assert decoded.fields["family"] == 10 and decoded.fields["prefixlen"] == 64 and decoded.attr("IFA_LOCAL") == "2001:db8::77"
    default = notifications.route("RTM_NEWROUTE", "::/0", "2001:db8::1", "lo")
    assert [name for name, _ in default["attrs"]] == ["RTA_GATEWAY", "RTA_OIF"] and default["fields"]["proto"] == 4
    assert "proto" not in notifications.route("RTM_DELROUTE", "198.19.251.0/24", "198.18.0.1", "lo")["fields"]
    assert notifications.link_state("lo", False)["fields"] | {"index": None} == {
        "family": 0,
        "index": None,
        "flags": 0,
        "change": 1,
    }


# -- steps on both sides, with stand-ins for the differential and the listeners ------------------------


def _acked(name: str, seq: int, port: int, error: int = 0) -> probe.Answer:
    sent = probe.encode({"type": "RTM_NEWADDR"}, seq=seq).hex()
    return probe.Answer(name, sent=sent, port=port, messages=[probe.Message("NLMSG_ERROR", 0, seq, port, 36, error=error)])


class _Rtnl:
    """A Differential stand-in: each ask answers as the kernel and the stack were told to."""

    def __init__(self, stack_errno: int = 0) -> None:
        self.stack_errno, self.asked = stack_errno, []

    def ask(self, requests: dict) -> Pair:
        self.asked.append(list(requests))
        links = LINKS_ANSWER
        kernel = {"_links": links, **{n: _acked(n, 1002, 40) for n in requests}}
        stack = {"_links": links, **{n: _acked(n, 1002, 50, self.stack_errno) for n in requests}}
        return Pair(kernel, stack, "stand-in")


LINKS_ANSWER = probe.Answer(
    "_links", messages=[probe.Message("RTM_NEWLINK", 2, 1, 9, 0, fields={"index": 7}, attrs=[["IFLA_IFNAME", "eth0"]])]
)


class _Heard:
    """A Listener stand-in: hands out its messages once, then nothing."""

    def __init__(self, messages: list[probe.Message]) -> None:
        self.messages = messages

    def receive(self, timeout: float) -> list[probe.Message] | None:
        out, self.messages = self.messages, []
        return out or None


ADD = Step(
    "add",
    {"add": differential.address("RTM_NEWADDR", "eth0", "198.18.0.77/24")},
    expect=(Expect("RTM_NEWADDR", ("198.18.0.77/24",)),),
)


def test_observe_compares_each_sides_notifications_with_their_cause(monkeypatch):
    monkeypatch.setattr(notifications, "QUIET", 0.01)
    kernel, stack = _Heard([_newaddr(seq=1002, pid=40)]), _Heard([_newaddr(seq=0, pid=0)])
    observed = notifications.observe(_Rtnl(), (None, None), (kernel, stack), [ADD])  # type: ignore[arg-type]
    assert [(d.what, d.kernel, d.stack) for d in observed.differences] == [
        ("pid", "the requester's", 0),
        ("seq", "the request's", 0),
    ]
    assert not observed.unsupported


def test_observe_stops_at_a_change_the_stack_refuses():
    observed = notifications.observe(
        _Rtnl(stack_errno=95), (None, None), (_Heard([_newaddr(seq=1002, pid=40)]), _Heard([])), [ADD, ADD]
    )  # type: ignore[arg-type]
    assert observed.unsupported and [(d.where, d.what) for d in observed.differences][:1] == [("add: add", "errno")]


def test_observe_fails_when_the_kernel_does_not_send_what_the_step_expects(monkeypatch):
    monkeypatch.setattr(notifications, "DEADLINE", 0.05)
    with pytest.raises(AssertionError, match=r"the kernel sent no RTM_NEWADDR 198.18.0.77/24 within .* of add; it sent \[\]"):
        notifications.observe(_Rtnl(), (None, None), (_Heard([]), _Heard([])), [ADD])  # type: ignore[arg-type]


# -- ip monitor ------------------------------------------------------------------------------------


def test_monitor_lines_lose_what_numbers_links_per_namespace():
    assert notifications.monitor_line("100: eth0    inet 198.18.0.77/24 scope global secondary eth0\n") == (
        "N: eth0    inet 198.18.0.77/24 scope global secondary eth0"
    )
    assert notifications.monitor_line("Deleted 3: eth0@if7: <BROADCAST> link-netnsid 0 ") == (
        "Deleted N: eth0@ifN: <BROADCAST> link-netns PEER"
    )
    assert notifications.monitor_line("4: eth0@if9: <UP> link-netns labkit-7-peer") == "N: eth0@ifN: <UP> link-netns PEER"
    assert (
        notifications.monitor_line("198.19.64.0/24 via 198.18.0.1 dev eth0 proto static ")
        == "198.19.64.0/24 via 198.18.0.1 dev eth0 proto static"
    )


class _Process:
    """A LabProcess stand-in: what it was given to print, then quiet (ExpectTimeout), or EOF once ended."""

    def __init__(self, lines: list[str], ended: bool = False) -> None:
        self.lines, self.ended = lines, ended

    def read_line(self, timeout: float) -> str | None:
        if self.lines:
            return self.lines.pop(0) + "\n"
        if self.ended:
            return None
        raise ExpectTimeout("quiet")


def test_monitor_readiness_retries_the_harmless_change_until_its_line_comes():
    process = _Process([])
    touched = []

    def touch(n: int) -> str:  # the first change comes before ip monitor listens
        touched.append(n)
        if n:
            process.lines += [
                f"1: lo    inet 198.19.254.{n + 1}/32 scope global lo",
                f"Deleted 1: lo    inet 198.19.254.{n + 1}/32 scope global lo",
            ]
        return f"inet 198.19.254.{n + 1}/32"

    ready = Monitor(process).await_ready(touch, tries=3, wait=0.05)  # type: ignore[arg-type]
    assert ready.complete and touched == [0, 1]
    assert ready.items == ["N: lo    inet 198.19.254.2/32 scope global lo", "Deleted N: lo    inet 198.19.254.2/32 scope global lo"]
    assert not Monitor(_Process([])).await_ready(lambda n: "inet 198.19.254.1/32", tries=2, wait=0.02).complete  # type: ignore[arg-type]


def test_a_monitor_that_exits_is_not_ready_and_keeps_what_it_said():
    process = _Process(["Cannot bind netlink socket: Permission denied"], ended=True)
    ready = Monitor(process).await_ready(lambda n: "inet 198.19.254.1/32", tries=3, wait=0.05)  # type: ignore[arg-type]
    assert not ready.complete and ready.ended and ready.items == ["Cannot bind netlink socket: Permission denied"]
