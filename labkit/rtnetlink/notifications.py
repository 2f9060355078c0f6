"""What a NETLINK_ROUTE listener is told when links, addresses and routes change, next to what the
kernel tells one.

Tools that follow the network rather than poll it (systemd-networkd, NetworkManager through libnl,
`ip monitor`, container engines through Go's netlink) join rtnetlink's multicast groups and act on
each notification. A stack that answers requests as the kernel does but notifies differently, or
not at all, leaves them with a stale view. So the lab listens on both sides through the socket
agent, makes the same change on both (a request, or the lab taking the veth's far end down), and
compares what each listener was sent, in order.

A notification is normalised as an answer is (labkit.rtnetlink.differ: indexes as names, keyed
records), plus what only a notification carries: its header flags, and whether its seq and pid
are those of the request that caused it or 0 (what the kernel sends for a change no request made).
Every read is bounded and event-driven: until the notifications a change must bring have come,
then until the listener stays quiet (what follows them belongs to the change too).
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from labkit.errors import ExpectTimeout, LabError, LabInputError
from labkit.rtnetlink import differ, ip_batch, probe, sockets
from labkit.rtnetlink.differential import UNSUPPORTED
from labkit.rtnetlink.sockets import GROUPS, group_mask
from labkit.stacks.agent import SocketCallError

if TYPE_CHECKING:
    from labkit.lifecycle.process import LabProcess
    from labkit.net.topology import Link
    from labkit.rtnetlink.differential import Differential, Pair
    from labkit.stacks.agent import AgentSocket, SocketAgent

HOW = ("bind", "membership")
QUIET = 0.5  # what follows a change's last expected notification comes within this (the kernel's: at once)
DEADLINE = 5.0  # linkwatch holds a carrier change back up to a second; a sandbox may be slower still


MASK = group_mask(list(GROUPS.values()))  # 0x551

# The header flags a notification carries are those of a NEW request (linux/netlink.h).
NLM_F_NAMES = {
    0x1: "REQUEST",
    0x2: "MULTI",
    0x4: "ACK",
    0x8: "ECHO",
    0x100: "REPLACE",
    0x200: "EXCL",
    0x400: "CREATE",
    0x800: "APPEND",
}


# -- subscribing and reading ---------------------------------------------------------------------


class Ended(Exception):
    """What was read from has ended (a process that exited)."""


T = TypeVar("T")


@dataclass
class Gathered(Generic[T]):
    items: list[T]
    complete: bool  # what was waited for came before the deadline
    ended: bool = False  # the source ended first


def gather(
    receive: Callable[[float], list[T] | None],
    done: Callable[[list[T]], bool],
    *,
    quiet: float = QUIET,
    deadline: float = DEADLINE,
    clock: Callable[[], float] = time.monotonic,
) -> Gathered[T]:
    """Read until `done` says what was waited for is in, then until `quiet` seconds pass with
    nothing more, or until `deadline`. `receive(timeout)` gives what came within `timeout` (None:
    nothing) and raises Ended when its source has."""
    items: list[T] = []
    end = clock() + deadline
    while (left := end - clock()) > 0:
        complete = done(items)
        try:
            got = receive(min(quiet, left) if complete else left)
        except Ended:
            return Gathered(items, done(items), ended=True)
        if got is None and complete:
            return Gathered(items, True)
        items += got or []
    return Gathered(items, done(items))


class Listener:
    """A NETLINK_ROUTE socket in a stack's socket agent joined to GROUPS: by bind(2) (iproute2,
    pyroute2, Go's netlink) or by NETLINK_ADD_MEMBERSHIP after a bind with no groups (sd-netlink,
    libnl). `refusal` names the call the stack refused and its errno; None when it joined."""

    def __init__(self, sock: AgentSocket, how: str = "bind") -> None:
        if how not in HOW:
            raise LabInputError(f"subscribe how {how!r}; allowed: {', '.join(HOW)}")
        self.sock = sock
        self.refusal = self._subscribe(how)

    def _subscribe(self, how: str) -> str | None:
        call = f"bind(groups={MASK:#x})" if how == "bind" else "bind(groups=0)"
        try:
            self.sock.bind_netlink(0, MASK if how == "bind" else 0)
            if how == "membership":
                for name, number in GROUPS.items():
                    call = f"setsockopt(NETLINK_ADD_MEMBERSHIP, {name})"
                    self.sock.setsockopt("NETLINK_ADD_MEMBERSHIP", number)
        except SocketCallError as exc:
            return f"{call}: {exc.errno}"
        return None

    def receive(self, timeout: float) -> list[probe.Message] | None:
        """One datagram's messages, or None when none came within `timeout`. (An error such as
        ENOBUFS raises: the stack's answer, and the check's failure.)"""
        try:
            got = self.sock.recvmsg(1 << 16, timeout=timeout)
        except SocketCallError as exc:
            if exc.errno == "TIMEOUT":
                return None
            raise
        return probe.decode(bytes.fromhex(got["data"]))

    def drain(self, quiet: float = 0.3) -> list[probe.Message]:
        """What is queued from before (a link just brought up): read until quiet."""
        return gather(self.receive, lambda _: True, quiet=quiet).items


@contextmanager
def listening(agent: SocketAgent, how: str = "bind") -> Iterator[Listener]:
    """A Listener in `agent`, its socket closed after (nobody resets the kernel reference's agent)."""
    with sockets.route_socket(agent) as sock:
        yield Listener(sock, how)


# -- what a notification says ----------------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    """The requests a change came from: their sender's port id and seqs (none: an event)."""

    port: int = 0
    seqs: frozenset[int] = frozenset()

    @classmethod
    def of(cls, answers: Sequence[probe.Answer]) -> Cause:
        sent = [bytes.fromhex(a.sent) for a in answers]
        return cls(answers[0].port if answers else 0, frozenset(struct.unpack_from("=I", s, 8)[0] for s in sent if len(s) >= 12))

    def seq(self, value: int) -> int | str:
        return 0 if value == 0 else "the request's" if value in self.seqs else "another"

    def pid(self, value: int) -> int | str:
        return 0 if value == 0 else "the requester's" if self.port and value == self.port else "another"


def record(message: probe.Message, names: differ.Normaliser, cause: Cause = Cause()) -> differ.Record:
    """A notification as compared: keyed as an answer's record of its family is (a DEL as its NEW),
    with its header flags, ifi_change for a link, and where its seq and pid came from."""
    if message.decode_error:
        return differ.Record(message.type, ("undecodable",), {"decode_error": message.decode_error, "bytes": message.raw})
    if not message.type.startswith("RTM_"):
        return differ.Record(message.type, (message.type,), {"error": message.error})
    family = "RTM_NEW" + message.type.removeprefix("RTM_DEL") if message.type.startswith("RTM_DEL") else message.type
    base = names.record(replace(message, type=family))
    values = {**base.values, "nlmsg_flags": differ.flag_names(message.flags, NLM_F_NAMES)}
    if family == "RTM_NEWADDR":  # with IFA_F_TENTATIVE, which a dump's records leave out: here it comes in order
        values["flags"] = differ.flag_names(int(message.attr("IFA_FLAGS") or message.fields.get("flags") or 0), differ.IFA_F_NAMES)
    if family == "RTM_NEWLINK":
        values["ifi_change"] = differ.flag_names(int(message.fields.get("change") or 0), differ.IFF_NAMES)
    values["seq"], values["pid"] = cause.seq(message.seq), cause.pid(message.pid)
    return differ.Record(message.type, base.key, values)


def records(messages: Sequence[probe.Message], names: differ.Normaliser, cause: Cause = Cause()) -> list[differ.Record]:
    return [record(m, names, cause) for m in messages]


@dataclass(frozen=True)
class Expect:
    """A notification a change must bring: its type, what its key names (each of `about`), link
    flags it carries (`flags`) or lacks (`no_flags`), and values it has."""

    type: str
    about: tuple[str, ...]
    flags: tuple[str, ...] = ()
    no_flags: tuple[str, ...] = ()
    values: tuple[tuple[str, Any], ...] = ()

    def met_by(self, rec: differ.Record) -> bool:
        if rec.type != self.type or not all(any(differ.is_about(k, a) for k in rec.key) for a in self.about):
            return False
        flags = str(rec.values.get("flags", "")).split(",")
        return (
            all(f in flags for f in self.flags)
            and not any(f in flags for f in self.no_flags)
            and all(rec.values.get(k) == v for k, v in self.values)
        )

    def __str__(self) -> str:
        wants = [*self.flags, *(f"no {f}" for f in self.no_flags), *(f"{k}={v}" for k, v in self.values)]
        return f"{self.type} {' '.join(self.about)}" + (f" ({', '.join(wants)})" if wants else "")


def all_met(expected: Sequence[Expect], names: differ.Normaliser) -> Callable[[list[probe.Message]], bool]:
    """`gather`'s `done`: every expected notification is among those read."""
    return lambda messages: all(any(e.met_by(r) for r in records(messages, names)) for e in expected)


def label(rec: differ.Record) -> str:
    return " ".join(str(k) for k in (rec.type, *rec.key) if k not in (None, ""))


def compare(step: str, kernel: Sequence[differ.Record], stack: Sequence[differ.Record]) -> list[differ.Difference]:
    """What differs between the notifications two sides sent for one change: those only one side
    sent (by type and key; a repeat counts), the values of those both sent (the n-th of a key with
    the n-th), then the order of those both sent."""

    def numbered(recs: Sequence[differ.Record]) -> dict[tuple, differ.Record]:
        seen: Counter[tuple] = Counter()
        out = {}
        for r in recs:
            out[(r.type, r.key, seen[(r.type, r.key)])] = r
            seen[(r.type, r.key)] += 1
        return out

    def where(ident: tuple, rec: differ.Record) -> str:
        return f"{step}: {label(rec)}" + (f" (#{ident[2] + 1})" if ident[2] else "")

    mine, theirs = numbered(stack), numbered(kernel)
    out = [differ.Difference(where(i, r), "notification", "sent", "not sent") for i, r in theirs.items() if i not in mine]
    out += [differ.Difference(where(i, r), "notification", "not sent", "sent") for i, r in mine.items() if i not in theirs]
    for ident, a in theirs.items():
        if (b := mine.get(ident)) is None:
            continue
        for name in sorted(a.values.keys() | b.values.keys()):
            if a.values.get(name) != b.values.get(name):
                out.append(differ.Difference(where(ident, a), name, a.values.get(name), b.values.get(name)))
    in_kernel_order = [where(i, r) for i, r in theirs.items() if i in mine]
    in_stack_order = [where(i, r) for i, r in mine.items() if i in theirs]
    if in_kernel_order != in_stack_order:
        out.append(differ.Difference(step, "order", in_kernel_order, in_stack_order))
    return out


# -- changes, as requests the probe sends (labkit.rtnetlink.probe) and as events the lab makes ------


def route(
    type_: str, cidr: str, via: str, ifname: str, flags: Sequence[str] = ("REQUEST", "ACK"), proto: int = 4
) -> dict[str, Any]:
    """`ip route add|del CIDR via VIA dev IFNAME` in the main table (proto 4, static, as ip's)."""
    dst, _, dst_len = cidr.partition("/")
    fields = {"family": 10 if ":" in via else 2, "dst_len": int(dst_len), "table": 254}
    if type_ == "RTM_NEWROUTE":
        fields |= {"proto": proto, "scope": 0, "type": 1}
    attrs = [["RTA_DST", dst]] if int(dst_len) else []
    return {
        "type": type_,
        "flags": list(flags),
        "fields": fields,
        "attrs": [*attrs, ["RTA_GATEWAY", via], ["RTA_OIF", {"ifindex_of": ifname}]],
    }


def link_state(ifname: str, up: bool) -> dict[str, Any]:
    """`ip link set dev IFNAME up|down`: IFF_UP in ifi_change, set or clear in ifi_flags."""
    return {
        "type": "RTM_NEWLINK",
        "flags": ["REQUEST", "ACK"],
        "fields": {"family": 0, "index": {"ifindex_of": ifname}, "flags": int(up), "change": 1},
    }


def set_far_end(end: Link, up: bool) -> None:
    """The lab's end of a veth set up or down in its own (lab) namespace: for the other end an
    event no request made (its carrier comes and goes)."""
    if end.ns.netns is None or end.index is None:
        raise LabError(f"{end.name}: its namespace is not up")
    with end.ns.iproute() as ipr:
        ipr.link("set", index=end.index, state="up" if up else "down")


# -- a change made on both sides, and what each listener was sent ----------------------------------


@dataclass(frozen=True)
class Step:
    """One change: `requests` asked of both (through the probe), or the lab taking the veth's far
    end `far_end` "down" or "up"; `expect` what must follow on the kernel; `compared`: whether its
    notifications are the check's business (or it only prepares one that is)."""

    name: str
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    far_end: str | None = None
    expect: tuple[Expect, ...] = ()
    compared: bool = True


@dataclass
class Observed:
    """What the steps showed: the differences, and whether the stack refused something outright."""

    differences: list[differ.Difference] = field(default_factory=list)
    unsupported: bool = False


def observe(
    rtnl: Differential, far_ends: tuple[Link, Link], listeners: tuple[Listener, Listener], steps: Sequence[Step]
) -> Observed:
    """Each step on the kernel reference and on the stack, then each side's notifications for it,
    compared. A change the stack refuses is the finding, and the steps end there."""
    observed = Observed()
    names: Pair | None = None  # the link names each side's notifications are read with
    for step in steps:
        causes = (Cause(), Cause())
        if step.far_end is not None:
            for end in far_ends:
                set_far_end(end, step.far_end == "up")
            names = names or rtnl.ask({})
        else:
            names = pair = rtnl.ask(step.requests)
            refused = [f"{n}: errno {pair.kernel[n].errno}" for n in step.requests if not pair.kernel[n].acked]
            assert not refused, f"the kernel refused {step.name}: {refused}"
            causes = (Cause.of([pair.kernel[n] for n in step.requests]), Cause.of([pair.stack[n] for n in step.requests]))
            outcome = [
                replace(d, where=f"{step.name}: {d.where}")
                for n in step.requests
                for d in differ.diff_outcome(pair.kernel[n], pair.stack[n])
            ]
            if outcome:
                observed.differences += outcome
                observed.unsupported = any(pair.stack[n].errno in UNSUPPORTED for n in step.requests)
                return observed
        kernel = gather(listeners[0].receive, all_met(step.expect, names.kernel_norm), quiet=QUIET, deadline=DEADLINE)
        assert kernel.complete, (
            f"the kernel sent no {', '.join(map(str, step.expect))} within {DEADLINE:g}s of {step.name}; "
            f"it sent {[label(r) for r in records(kernel.items, names.kernel_norm)]}"
        )
        stack = gather(listeners[1].receive, all_met(step.expect, names.stack_norm), quiet=QUIET, deadline=DEADLINE)
        if step.compared:
            observed.differences += compare(
                step.name, records(kernel.items, names.kernel_norm, causes[0]), records(stack.items, names.stack_norm, causes[1])
            )
    return observed


def undo(rtnl: Differential, far_ends: tuple[Link, Link], steps: Sequence[Step], requests: dict[str, dict[str, Any]]) -> list[str]:
    """Put back what the steps changed: the far ends up (if a step took them down), then
    `requests` on both sides. Returns what the kernel refused; a stack's refusal here is no
    finding of this check (its steps already showed what the stack does)."""
    if any(step.far_end for step in steps):
        for end in far_ends:
            set_far_end(end, True)
    if not requests:
        return []
    pair = rtnl.ask(requests)
    return [f"{n}: errno {pair.kernel[n].errno}" for n in requests if not pair.kernel[n].acked]


# -- ip monitor ------------------------------------------------------------------------------------

# `ip monitor` reads no stdin: a reader beside it does (on the lab's pipe as fd 3: sh gives a job in
# the background /dev/null for stdin), and ends it when the lab closes the pipe (runsc exec passes
# no signal on). What ip says goes to stdout, and its exit too, where the check reads them; the
# reader's own output goes nowhere, so the lab sees EOF once ip has exited.
MONITOR = [
    "sh",
    "-c",
    "exec 3<&0; ip monitor link address route 2>&1 & ip=$!; (read -r _ <&3; kill $ip) >/dev/null 2>&1 & exec 3<&-; "
    'wait $ip; echo "ip monitor exited $?"',
]


def monitor_line(line: str) -> str:
    """A line of `ip monitor` normalised as `ip` output is (labkit.rtnetlink.ip_batch: indexes,
    the veth peer's, its namespace, timers), behind its "Deleted " prefix."""
    text = line.rstrip()
    prefix = "Deleted " if text.startswith("Deleted ") else ""
    return prefix + ip_batch.normalise(text.removeprefix(prefix))


def deleted_line(text: str) -> Callable[[list[str]], bool]:
    """`gather`'s `done` for `ip monitor`: it printed the deletion of what `text` names (the
    last line a change of its own brings: an add and a delete)."""
    return lambda lines: any(line.startswith("Deleted ") and text in line for line in lines)


class Monitor:
    """`ip monitor link address route` running inside a stack, read line by line."""

    def __init__(self, process: LabProcess) -> None:
        self.process = process

    def receive(self, timeout: float) -> list[str] | None:
        try:
            line = self.process.read_line(timeout)
        except ExpectTimeout:
            return None
        if line is None:
            raise Ended
        return [monitor_line(line)]

    def gather_until(self, text: str) -> Gathered[str]:
        """The lines up to the one deleting what `text` names, and what follows it."""
        return gather(self.receive, deleted_line(text))

    def await_ready(self, touch: Callable[[int], str], tries: int = 5, wait: float = 1.0) -> Gathered[str]:
        """Whether it listens yet cannot be seen from outside: make a harmless change (`touch(n)`
        adds and deletes something and returns the text that names it) and look for its line, a
        few times. Complete once a try's line came (and what followed it was read); else what was
        printed meanwhile, and whether ip exited."""
        printed: list[str] = []
        for n in range(tries):
            got = gather(self.receive, deleted_line(touch(n)), quiet=0.3, deadline=wait)
            printed += got.items
            if got.complete or got.ended:
                return Gathered(printed, got.complete, got.ended)
        return Gathered(printed, False)


@contextmanager
def monitoring(stack: Any) -> Iterator[Monitor]:
    """`ip monitor` inside `stack` (through its spawn), ended after."""
    process = stack.spawn(MONITOR)
    try:
        yield Monitor(process)
    finally:
        process.close()
