"""The NETLINK_ROUTE socket contract tools rely on, seen through the socket agent on both sides.

The request/answer checks (labkit.rtnetlink.probe) ask with a socket of their own; what is left is
the socket itself: the options iproute2, pyroute2, libnl (NetworkManager), systemd's sd-netlink and
Go's netlink libraries set, and what each does; binding and port ids; how a datagram is read (a
peek to size the buffer, a buffer too small); a dump answered over many reads. Every step here is
a socket call made by the agent (labkit.agent) inside the kernel reference and inside the stack,
and every function returns plain data (numbers, errno names, lists) so the two sides compare
value by value (`compare`) and a difference names what the tool would have seen.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from labkit.net.nlmsg import NLMSG_HDR, align
from labkit.rtnetlink import differ, differential, probe
from labkit.stacks.agent import SocketCallError

if TYPE_CHECKING:
    from labkit.stacks.agent import AgentSocket, SocketAgent

SOL_SOCKET, SOL_NETLINK = 1, 270
SCM_CREDENTIALS, NETLINK_PKTINFO, NETLINK_LISTEN_ALL_NSID = 2, 3, 8
# Header flags a client reads on what it receives (linux/netlink.h).
NLM_F_MULTI, NLM_F_DUMP_INTR, NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x2, 0x10, 0x100, 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSGERR_ATTRS = {1: "MSG", 2: "OFFS", 3: "COOKIE", 4: "POLICY", 5: "MISS_TYPE", 6: "MISS_NEST"}
# The groups a tool that follows links, addresses and routes joins (linux/rtnetlink.h), by number:
# NETLINK_ADD_MEMBERSHIP takes the number, bind(2) a mask with bit (number - 1) set (RTMGRP_*).
GROUPS = {"RTNLGRP_LINK": 1, "RTNLGRP_IPV4_IFADDR": 5, "RTNLGRP_IPV4_ROUTE": 7, "RTNLGRP_IPV6_IFADDR": 9, "RTNLGRP_IPV6_ROUTE": 11}


def group_mask(numbers: Iterable[int]) -> int:
    """bind(2)'s nl_groups for these group numbers (RTMGRP_LINK | RTMGRP_IPV4_IFADDR ...)."""
    return sum(1 << (n - 1) for n in set(numbers))


RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR = GROUPS["RTNLGRP_LINK"], GROUPS["RTNLGRP_IPV4_IFADDR"]
RTMGRP_LINK, RTMGRP_IPV4_IFADDR = group_mask([RTNLGRP_LINK]), group_mask([RTNLGRP_IPV4_IFADDR])
READ_TIMEOUT = 2.0  # each read of an answer: a stack that stops answering ends it
ANSWER_TIMEOUT = 30.0  # a whole answer, however many reads: a stack that drips one ends it too

Outcome = dict[str, Any]


def set_option(sock: AgentSocket, name: str, value: Any) -> str:
    sock.setsockopt(name, value)
    return "ok"


def bind_groups(sock: AgentSocket, groups: int) -> int:
    """bind(2) with a group mask and port id 0; the groups the stack says it bound."""
    return sock.bind_netlink(0, groups)[1]


def port_id(sock: AgentSocket) -> int:
    return int(sock.getsockname()[0])


def attempt(call: Callable[[], Any]) -> Any:
    """What a call gave, or "errno NAME" where the stack refused it (a value to compare)."""
    try:
        return call()
    except SocketCallError as exc:
        return f"errno {exc.errno}"


@contextlib.contextmanager
def route_socket(agent: SocketAgent) -> Iterator[AgentSocket]:
    """A NETLINK_ROUTE socket in the agent, closed afterwards: the kernel reference's agent is
    shared by every check and nobody resets it."""
    sock = agent.socket("netlink", "raw", "route")
    try:
        yield sock
    finally:
        with contextlib.suppress(SocketCallError):
            sock.close()


# -- requests ---------------------------------------------------------------------------------


def link_request(seq: int, index: int = 1) -> bytes:
    """`ip link show dev lo`: one answer, no dump (lo is index 1 in the kernel and in gVisor)."""
    return probe.encode({"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0, "index": index}}, seq)


def dump_request(type_: str, seq: int, family: int = 0, **fields: int) -> bytes:
    return probe.encode({"type": type_, "flags": ["REQUEST", "DUMP"], "fields": {"family": family, **fields}}, seq)


def refused_request(seq: int) -> bytes:
    """A GETLINK whose IFLA_IFNAME is longer than IFNAMSIZ: refused by attribute validation, which
    the kernel explains (extended ACK) and points at (the attribute's offset)."""
    return probe.encode(
        {"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0}, "attrs": [["IFLA_IFNAME", "x" * 40]]}, seq
    )


def address_request(type_: str, seq: int, address: str, index: int = 1) -> bytes:
    """`ip addr add|del ADDRESS/32 dev lo`, acknowledged."""
    flags = ["REQUEST", "ACK", "CREATE", "EXCL"] if type_ == "RTM_NEWADDR" else ["REQUEST", "ACK"]
    return probe.encode(differential.address(type_, index, f"{address}/32", flags), seq)


# -- reading ----------------------------------------------------------------------------------


@dataclass
class Datagram:
    """One recvmsg(2): what the call returned, its flags and control messages, and the messages
    in the bytes it copied."""

    returned: int
    copied: bytes
    msg_flags: list[str] = field(default_factory=list)
    ancillary: list[tuple[int, int, bytes]] = field(default_factory=list)

    @cached_property
    def messages(self) -> list[probe.Message]:
        return probe.decode(self.copied) if len(self.copied) >= NLMSG_HDR.size else []

    @classmethod
    def from_agent(cls, got: dict[str, Any]) -> Datagram:
        return cls(
            int(got["len"]),
            bytes.fromhex(got["data"]),
            list(got.get("msg_flags", [])),
            [(int(level), int(kind), bytes.fromhex(blob)) for level, kind, blob in got.get("ancillary", [])],
        )

    def control(self, level: int, kind: int) -> bytes | None:
        return next((blob for lvl, knd, blob in self.ancillary if (lvl, knd) == (level, kind)), None)


def receive(sock: AgentSocket, size: int, flags: tuple[str, ...] = (), timeout: float = READ_TIMEOUT) -> Datagram | str:
    """One datagram, or the errno name the read ended with ("TIMEOUT": nothing within `timeout`)."""
    try:
        return Datagram.from_agent(sock.recvmsg(size, flags=flags, timeout=timeout))
    except SocketCallError as exc:
        return exc.errno


def _ends_answer(message: probe.Message, seq: int) -> bool:
    if message.seq != seq:
        return False
    return message.type in ("NLMSG_DONE", "NLMSG_ERROR") or not message.flags & NLM_F_MULTI


def read_answer(
    sock: AgentSocket,
    seq: int,
    size: int,
    *,
    reads: list[Datagram] | None = None,
    max_reads: int = 10_000,
    seconds: float = ANSWER_TIMEOUT,
) -> tuple[list[Datagram], str]:
    """Read datagrams until the answer to `seq` ends (its DONE, its error, a single answer), at
    most `max_reads` of them within `seconds`; with how it ended: "end", "more" (max_reads
    reached first), "deadline" (a stack that drips its answer), or the errno a read ended with
    ("TIMEOUT": the stack stopped answering). `reads` continues an answer already partly read."""
    got = reads if reads is not None else []
    deadline = time.monotonic() + seconds
    for _ in range(max_reads):
        left = deadline - time.monotonic()
        if left <= 0:
            return got, "deadline"
        datagram = receive(sock, size, timeout=min(READ_TIMEOUT, left))
        if isinstance(datagram, str):
            return got, datagram
        got.append(datagram)
        if any(_ends_answer(m, seq) for m in datagram.messages):
            return got, "end"
    return got, "more"


# -- what an error looks like -----------------------------------------------------------------


def error_shape(raw: bytes, request_length: int) -> Outcome:
    """An NLMSG_ERROR as a client reads it: its errno, how much of the request it quotes (the
    header alone with NETLINK_CAP_ACK, else all of it), the flags saying so, and the extended-ACK
    attributes after the quote (NETLINK_EXT_ACK): their names and the offset NLMSGERR_ATTR_OFFS
    points at. The message text is left out: it words the same finding differently by version."""
    length, type_, flags, _seq, _pid = NLMSG_HDR.unpack_from(raw)
    if type_ != NLMSG_ERROR or len(raw) < 20:
        return {"message": probe.TYPE_NAMES.get(type_, f"type {type_}")}
    error = -struct.unpack_from("=i", raw, 16)[0]
    out: Outcome = {
        "errno": error,
        "flags": sorted(n for n, bit in (("CAPPED", NLM_F_CAPPED), ("ACK_TLVS", NLM_F_ACK_TLVS)) if flags & bit),
    }
    if flags & NLM_F_ACK_TLVS:
        quoted = NLMSG_HDR.size if flags & NLM_F_CAPPED else align(request_length)
    else:
        quoted = length - 20
    out["quoted"] = "header" if quoted == NLMSG_HDR.size else "request" if quoted == align(request_length) else f"{quoted} bytes"
    tlvs, offset, pos = [], None, 20 + quoted
    while pos + 4 <= min(length, len(raw)):
        nla_len, nla_type = struct.unpack_from("=HH", raw, pos)
        if nla_len < 4:
            tlvs.append("malformed")
            break
        name = NLMSGERR_ATTRS.get(nla_type & 0x3FFF, f"type {nla_type}")
        tlvs.append(name)
        if name == "OFFS" and nla_len >= 8:
            offset = struct.unpack_from("=I", raw, pos + 4)[0]
        pos += align(nla_len)
    out["tlvs"] = tlvs
    if offset is not None:
        out["offset"] = offset
    return out


def refused_shape(sock: AgentSocket) -> Outcome:
    """The error the refused GETLINK gets on `sock`, as `error_shape` describes it."""
    request = refused_request(41)
    sent = attempt(lambda: sock.send(request))
    if isinstance(sent, str):
        return {"send": sent}
    reads, ended = read_answer(sock, 41, 65536)
    errors = [d.copied for d in reads if d.messages and d.messages[0].type == "NLMSG_ERROR"]
    if not errors:
        return {"answer": ended if not reads else [m.type for d in reads for m in d.messages]}
    return error_shape(errors[0], len(request))


def strict_dump(sock: AgentSocket) -> Outcome:
    """An address dump with junk in its header (prefixlen 8): strict checking refuses it (EINVAL,
    in its NLMSG_DONE), a lax socket answers it as a plain dump."""
    seq = 42
    sock.send(dump_request("RTM_GETADDR", seq, family=2, prefixlen=8))
    reads, ended = read_answer(sock, seq, 32768)
    messages = [m for d in reads for m in d.messages]
    error = next((m.error for m in messages if m.type in ("NLMSG_DONE", "NLMSG_ERROR") and m.error), None)
    return {"ended": ended, "errno": error, "answered": any(m.type == "RTM_NEWADDR" for m in messages)}


def credentials(sock: AgentSocket) -> Outcome:
    """SO_PASSCRED: each datagram comes with the sender's credentials (pid, uid, gid): the
    kernel's own answers carry zeros."""
    sock.send(link_request(43))
    datagram = receive(sock, 65536)
    if isinstance(datagram, str):
        return {"answer": datagram}
    blob = datagram.control(SOL_SOCKET, SCM_CREDENTIALS)
    return {"credentials": list(struct.unpack("=iII", blob[:12])) if blob is not None and len(blob) >= 12 else None}


def oversized_send(sock: AgentSocket) -> Outcome:
    """A request larger than the send buffer (SO_SNDBUF 32768 counts as 65536) is refused whole
    (EMSGSIZE). It is a link request for lo padded with attributes of no known type, harmless
    if a stack takes it."""
    pad = [struct.pack("=HH", 35_000, 0x3FF0) + bytes(34_996)] * 2
    body = struct.pack("=BxHiII", 0, 0, 1, 0, 0) + b"".join(pad)
    request = NLMSG_HDR.pack(NLMSG_HDR.size + len(body), 18, 1, 44, 0) + body
    return {"send of 70 KB": attempt(lambda: sock.send(request))}


# -- the options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option as a tool sets it: the value, where the tool does so, how it reads back, what
    is done before it (a bind, another option), and the effect a check can see at little cost."""

    name: str
    value: Any
    tools: str
    read: str | None = None  # the option read back afterwards (None: the same one)
    before: tuple[tuple[str, Any], ...] = ()  # ("bind", groups) or (option, value)
    effect: Callable[[AgentSocket], Outcome] | None = None

    @property
    def row(self) -> str:
        return f"socket: {self.name}"

    @property
    def tool(self) -> str:
        """The first tool named, for a failure's heading ("iproute2", "pyroute2" ...)."""
        return self.tools.split()[0]


OPTIONS = (
    Option(
        "SO_SNDBUF",
        32768,
        "iproute2 rtnl_open_byproto (lib/libnetlink.c); libnl and NetworkManager nl_socket_set_buffer_size",
        effect=oversized_send,
    ),
    Option("SO_RCVBUF", 1 << 20, "iproute2 rtnl_open_byproto (rcvbuf, `ip -rcvbuf`); pyroute2 NetlinkSocket rcvbuf=1 MiB"),
    Option(
        "SO_RCVBUFFORCE",
        8 << 20,
        "systemd sd-netlink (RCVBUF_SIZE via fd_increase_rxbuf); vishvananda/netlink SetSocketReceiveBufferSize(force)",
        read="SO_RCVBUF",
    ),
    Option("SO_SNDBUFFORCE", 8 << 20, "systemd socket-util fd_set_sndbuf (SO_SNDBUF, then SO_SNDBUFFORCE)", read="SO_SNDBUF"),
    Option("SO_PASSCRED", 1, "libnl nl_socket_set_passcred; NetworkManager (NL_SOCKET_FLAGS_PASSCRED)", effect=credentials),
    Option("SO_RCVTIMEO", 3.0, "vishvananda/netlink Handle.SetSocketTimeout (SO_RCVTIMEO until 2024; moby sets seconds)"),
    Option(
        "NETLINK_ADD_MEMBERSHIP",
        RTNLGRP_LINK,
        "iproute2 rtnl_add_nl_group (ip monitor); pyroute2 add_membership; libnl nl_socket_add_memberships; sd-netlink broadcast_group_join",
        read="NETLINK_LIST_MEMBERSHIPS",
        before=(("bind", 0),),
    ),
    Option(
        "NETLINK_DROP_MEMBERSHIP",
        RTNLGRP_IPV4_IFADDR,
        "pyroute2 drop_membership; libnl nl_socket_drop_memberships; sd-netlink broadcast_group_leave",
        read="NETLINK_LIST_MEMBERSHIPS",
        before=(("bind", 0), ("NETLINK_ADD_MEMBERSHIP", RTNLGRP_LINK), ("NETLINK_ADD_MEMBERSHIP", RTNLGRP_IPV4_IFADDR)),
    ),
    Option("NETLINK_PKTINFO", 1, "sd-netlink socket_bind; libnl nl_socket_recv_pktinfo; NetworkManager nl_socket_set_pktinfo"),
    Option("NETLINK_BROADCAST_ERROR", 1, "mdlayher/netlink Conn.SetOption(BroadcastError) (Go, under jsimonetti/rtnetlink)"),
    Option("NETLINK_NO_ENOBUFS", 1, "mdlayher/netlink Conn.SetOption(NoENOBUFS) (Go, under jsimonetti/rtnetlink)"),
    Option("NETLINK_LISTEN_ALL_NSID", 1, "iproute2 rtnl_listen_all_nsid (ip monitor all-nsid); pyroute2 all_ns"),
    Option(
        "NETLINK_LIST_MEMBERSHIPS",
        None,  # read only
        "sd-netlink broadcast_groups_get, after its bind",
        before=(("bind", RTMGRP_LINK | RTMGRP_IPV4_IFADDR),),
    ),
    Option(
        "NETLINK_CAP_ACK",
        1,
        "iproute2 mnlu_socket_open (lib/mnl_utils.c: devlink, rdma, dpll); mdlayher/netlink",
        effect=refused_shape,
    ),
    Option(
        "NETLINK_EXT_ACK",
        1,
        "iproute2 rtnl_open_byproto; pyroute2 ext_ack; NetworkManager; sd-netlink; vishvananda/netlink SetExtAck",
        effect=refused_shape,
    ),
    Option(
        "NETLINK_GET_STRICT_CHK",
        1,
        "iproute2 rtnl_set_strict_dump; pyroute2 strict_check; NetworkManager; sd-netlink; vishvananda/netlink SetStrictCheck",
        effect=strict_dump,
    ),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}


def option_outcome(agent: SocketAgent, option: Option) -> Outcome:
    """On a new socket: the steps before, the set, the read back, then the effect: each step's
    result or errno, by name."""
    out: Outcome = {}
    with route_socket(agent) as sock:
        for step, value in option.before:
            if step == "bind":
                out[f"bind groups {value:#x}"] = attempt(partial(bind_groups, sock, value))
            else:
                out[f"set {step} {value}"] = attempt(partial(set_option, sock, step, value))
        if option.value is not None:
            out[f"set {option.value}"] = attempt(partial(set_option, sock, option.name, option.value))
        read = option.read or option.name
        out[f"get {read}"] = attempt(lambda: sock.getsockopt(read))
        if option.effect is not None:
            out.update(option.effect(sock))
    return out


def buffer_outcome(agent: SocketAgent, value: int | None, option: str = "SO_RCVBUF") -> Outcome:
    """What SO_RCVBUF reads back after `option` set to `value` (None: nothing set, the default)."""
    out: Outcome = {}
    with route_socket(agent) as sock:
        if value is not None:
            out[f"set {option} {value}"] = attempt(partial(set_option, sock, option, value))
        out["get SO_RCVBUF"] = attempt(lambda: sock.getsockopt("SO_RCVBUF"))
    return out


def compare(kernel: Outcome, stack: Outcome, where: str) -> list[differ.Difference]:
    """Each step either side took, where the two differ (a step one side lacks shows as None)."""
    steps = list(kernel) + [k for k in stack if k not in kernel]
    return [
        differ.Difference(where, step, kernel.get(step), stack.get(step)) for step in steps if kernel.get(step) != stack.get(step)
    ]


# -- dumps ------------------------------------------------------------------------------------


def dump_faults(reads: list[Datagram], ended: str, seq: int, port: int, size: int) -> list[str]:
    """What is wrong with a dump as a reader with a `size`-byte buffer sees it: an end that never
    came, a datagram cut (larger than the buffer: the kernel sizes its datagrams to the reader's
    reads, so a fixed buffer is never too small for it), a message without NLM_F_MULTI or with
    another seq or port, NLMSG_DONE missing, repeated, or not last."""
    faults = [] if ended == "end" else [f"the dump did not end ({ended})"]
    faults += [
        f"read {i + 1} was cut: a datagram larger than the {size}-byte buffer"
        for i, d in enumerate(reads)
        if "MSG_TRUNC" in d.msg_flags or d.returned > len(d.copied)
    ][:3]
    messages = [m for d in reads for m in d.messages]
    faults += [f"{m.type} lacks NLM_F_MULTI" for m in messages if not m.flags & NLM_F_MULTI][:3]
    faults += [f"{m.type} carries seq {m.seq}, not {seq}" for m in messages if m.seq != seq][:3]
    faults += [f"{m.type} carries pid {m.pid}, not the reader's port {port}" for m in messages if m.pid != port][:3]
    done = [i for i, m in enumerate(messages) if m.type == "NLMSG_DONE"]
    if len(done) != 1:
        faults.append(f"{len(done)} NLMSG_DONE")
    elif done[0] != len(messages) - 1:
        faults.append(f"NLMSG_DONE is followed by {len(messages) - 1 - done[0]} messages")
    return faults


def record_key(message: probe.Message) -> str | None:
    """What identifies a dumped route or address (None for anything else)."""
    if message.type == "RTM_NEWROUTE":
        table = message.attr("RTA_TABLE", message.fields.get("table"))
        dst = f"{message.attr('RTA_DST') or 'default'}/{message.fields.get('dst_len')}"
        return f"route table {table} {dst} via {message.attr('RTA_GATEWAY') or '-'}"
    if message.type == "RTM_NEWADDR":
        return f"address {message.attr('IFA_ADDRESS')}/{message.fields.get('prefixlen')}"
    return None


def dumped_records(reads: list[Datagram], keep: Callable[[probe.Message], bool] | None = None) -> Counter[str]:
    """Each record's key (of those `keep` keeps), with how often the dump listed it."""
    keys = (record_key(m) for d in reads for m in d.messages if keep is None or keep(m))
    return Counter(k for k in keys if k is not None)


def record_differences(kernel: Counter[str], stack: Counter[str], where: str) -> list[differ.Difference]:
    """Records one side lacks or lists another number of times (the first few of each kind)."""
    out = [
        differ.Difference(where, key, kernel[key], stack[key])
        for key in sorted(kernel.keys() | stack.keys())
        if kernel[key] != stack[key]
    ]
    if len(out) > 12:
        out = [*out[:10], differ.Difference(where, f"and {len(out) - 10} more records", "-", "-")]
    return out


@dataclass
class DumpRun:
    """A dump as one side answered it: the reads, how it ended, the reader's port."""

    reads: list[Datagram]
    ended: str
    port: int
    seq: int
    size: int

    @property
    def faults(self) -> list[str]:
        return dump_faults(self.reads, self.ended, self.seq, self.port, self.size)

    @property
    def largest(self) -> int:
        return max((d.returned for d in self.reads), default=0)

    @property
    def interrupted(self) -> bool:
        """Whether a message says the dump was interrupted by a change (NLM_F_DUMP_INTR)."""
        return any(m.flags & NLM_F_DUMP_INTR for d in self.reads for m in d.messages)


def run_dump(
    agent: SocketAgent, type_: str, family: int, size: int, *, between: Callable[[], None] | None = None, rcvbuf: int = 1 << 20
) -> DumpRun:
    """A dump read with `size`-byte buffers on a socket set up as iproute2's (SO_RCVBUF 1 MiB);
    `between` runs after the first read (a change while the dump is under way)."""
    seq = 77
    with route_socket(agent) as sock:
        sock.setsockopt("SO_RCVBUF", rcvbuf)
        port, _ = sock.bind_netlink(0, 0)
        sock.send(dump_request(type_, seq, family=family))
        reads, ended = read_answer(sock, seq, size, max_reads=1 if between else 10_000)
        if between is not None and ended == "more":
            between()
            reads, ended = read_answer(sock, seq, size, reads=reads)
    return DumpRun(reads, ended, port, seq, size)


# -- socket behaviour -------------------------------------------------------------------------


def bind_outcome(agent: SocketAgent) -> Outcome:
    """bind(2) with groups as `ip monitor` and sd-netlink do, then getsockname; an explicit port
    id as libnl chooses one (process id + n << 22), and the same one again (taken)."""
    groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR
    explicit = (agent.pid & 0x3FFFFF) | (1 << 22)
    out: Outcome = {}
    with route_socket(agent) as bound, route_socket(agent) as chosen, route_socket(agent) as again:
        given = attempt(lambda: bound.bind_netlink(0, groups))
        if isinstance(given, str):
            out["bind with groups"] = given
        else:
            port, out["bind: groups"] = given
            out["bind: port id given"] = port != 0
            name = attempt(lambda: list(bound.getsockname()))
            out["getsockname"] = ["same port id", name[1]] if isinstance(name, list) and name[0] == port else name
            out["memberships"] = attempt(lambda: bound.getsockopt("NETLINK_LIST_MEMBERSHIPS"))
        mine = attempt(lambda: chosen.bind_netlink(explicit, 0))
        out["bind an explicit port id: getsockname gives it"] = mine[0] == explicit if isinstance(mine, tuple) else mine
        out["bind the same port id again"] = attempt(lambda: again.bind_netlink(explicit, 0) and "bound")
    return out


def autobind_outcome(agent: SocketAgent) -> Outcome:
    """Sockets never bound get a port id at their first send: not 0, not the same for two
    sockets, and the answers addressed to it. (Which number is the kernel's choice: the process
    id for the first free one, netlink(7); tools read it back with getsockname.)"""
    out: Outcome = {}
    with route_socket(agent) as first, route_socket(agent) as second:
        out["getsockname before any send"] = attempt(lambda: list(first.getsockname()))
        ports, pids = [], []
        for seq, sock in ((61, first), (62, second)):
            sock.send(link_request(seq))
            reads, _ = read_answer(sock, seq, 65536)
            ports.append(attempt(partial(port_id, sock)))
            pids.append([m.pid for d in reads for m in d.messages])
        out["port ids given"] = all(isinstance(p, int) and p != 0 for p in ports)
        out["port ids distinct"] = len(set(ports)) == 2
        out["answers addressed to the port id"] = [
            bool(p) and all(pid == port for pid in p) for p, port in zip(pids, ports, strict=True)
        ]
    return out


def peek_outcome(agent: SocketAgent) -> Outcome:
    """How iproute2 sizes its read (rtnl_recvmsg): recvmsg(MSG_PEEK|MSG_TRUNC) into no buffer
    gives the datagram's length and leaves it queued; then the read itself."""
    out: Outcome = {}
    with route_socket(agent) as sock:
        sock.send(link_request(63))
        peeks = [receive(sock, size, ("MSG_PEEK", "MSG_TRUNC")) for size in (0, 16)]
        read = receive(sock, 65536)
        if isinstance(read, str):
            return {"read after the peeks": read}
        out["peek into 0 bytes gives the length"] = (
            peeks[0].returned == read.returned if isinstance(peeks[0], Datagram) else peeks[0]
        )
        out["peek into 16 bytes gives the length"] = (
            peeks[1].returned == read.returned if isinstance(peeks[1], Datagram) else peeks[1]
        )
        out["peek into 16 bytes says MSG_TRUNC"] = "MSG_TRUNC" in peeks[1].msg_flags if isinstance(peeks[1], Datagram) else peeks[1]
        out["the read gets the whole answer"] = [m.type for m in read.messages]
        out["then nothing is queued"] = receive(sock, 65536, ("MSG_DONTWAIT",))
    return out


def short_buffer_outcome(agent: SocketAgent) -> Outcome:
    """A datagram read into a buffer too small is cut (MSG_TRUNC in msg_flags) and the rest of it
    is gone: the next read gets the next datagram. Also with MSG_TRUNC asked: the real length."""
    out: Outcome = {}
    with route_socket(agent) as sock:
        for seq in (64, 65, 66):
            sock.send(link_request(seq))
        first = receive(sock, 20)
        out["a 20-byte read returns"] = first.returned if isinstance(first, Datagram) else first
        out["a 20-byte read says MSG_TRUNC"] = "MSG_TRUNC" in first.msg_flags if isinstance(first, Datagram) else first
        asked = receive(sock, 20, ("MSG_TRUNC",))
        whole = receive(sock, 65536)
        out["with MSG_TRUNC asked, the real length"] = (
            asked.returned == whole.returned if isinstance(asked, Datagram) and isinstance(whole, Datagram) else [asked, whole]
        )
        out["the next read answers seq"] = [m.seq for m in whole.messages] if isinstance(whole, Datagram) else whole
        out["then nothing is queued"] = receive(sock, 65536, ("MSG_DONTWAIT",))
    return out


def nonblocking_outcome(agent: SocketAgent) -> Outcome:
    """Reading an empty socket without waiting (O_NONBLOCK, or MSG_DONTWAIT): EAGAIN; poll says
    nothing to read."""
    out: Outcome = {}
    with route_socket(agent) as sock:
        sock.bind_netlink(0, 0)
        out["MSG_DONTWAIT"] = receive(sock, 65536, ("MSG_DONTWAIT",))
        out["poll"] = sorted(sock.poll(("POLLIN",), timeout=0))
        sock.setblocking(False)
        out["O_NONBLOCK"] = receive(sock, 65536)
        sock.send(link_request(67))
        out["poll once answered"] = sorted(sock.poll(("POLLIN",), timeout=READ_TIMEOUT))
    return out


# -- notifications ----------------------------------------------------------------------------


def _setup(sock: AgentSocket, steps: tuple[tuple[str, Any], ...]) -> Outcome:
    """Each step's result: the groups a bind gave, "ok" for an option set, or the errno."""
    out: Outcome = {}
    for step, value in steps:
        if step == "bind":
            out[f"bind groups {value:#x}"] = attempt(partial(bind_groups, sock, value))
        else:
            out[f"{step} {value}"] = attempt(partial(set_option, sock, step, value))
    return out


LISTENERS: dict[str, tuple[tuple[str, Any], ...]] = {
    # sd-netlink and libnl: a membership by option, with the group named in a control message.
    "NETLINK_ADD_MEMBERSHIP + NETLINK_PKTINFO": (
        ("bind", 0),
        ("NETLINK_ADD_MEMBERSHIP", RTNLGRP_IPV4_IFADDR),
        ("NETLINK_PKTINFO", 1),
    ),
    # `ip monitor address` and Go's netlink Subscribe: the legacy group mask at bind.
    "bind groups": (("bind", RTMGRP_IPV4_IFADDR),),
    # `ip monitor all-nsid`: the namespace id of a notification in a control message.
    "NETLINK_LISTEN_ALL_NSID": (("bind", 0), ("NETLINK_ADD_MEMBERSHIP", RTNLGRP_IPV4_IFADDR), ("NETLINK_LISTEN_ALL_NSID", 1)),
    # sd-netlink leaves a group it no longer matches on.
    "NETLINK_DROP_MEMBERSHIP": (
        ("bind", 0),
        ("NETLINK_ADD_MEMBERSHIP", RTNLGRP_IPV4_IFADDR),
        ("NETLINK_DROP_MEMBERSHIP", RTNLGRP_IPV4_IFADDR),
    ),
}


def notification_summary(datagram: Datagram) -> list[Any]:
    """What a listener got in one datagram: each notification's type and address, the group the
    PKTINFO control message names, and the namespace id LISTEN_ALL_NSID adds (None: none)."""
    group = datagram.control(SOL_NETLINK, NETLINK_PKTINFO)
    nsid = datagram.control(SOL_NETLINK, NETLINK_LISTEN_ALL_NSID)
    return [
        [f"{m.type} {m.attr('IFA_LOCAL')}" for m in datagram.messages],
        struct.unpack("=I", group[:4])[0] if group else None,
        struct.unpack("=i", nsid[:4])[0] if nsid else None,
    ]


def notification_outcome(agent: SocketAgent, address: str) -> Outcome:
    """Listeners joined to the IPv4 address group in each way a tool joins, then an address added
    to lo and deleted again by another socket: what each listener received (two notifications,
    with the control messages its options ask for), and that one that left the group got none."""
    out: Outcome = {}
    with contextlib.ExitStack() as stack:
        listeners = {name: stack.enter_context(route_socket(agent)) for name in LISTENERS}
        for name, sock in listeners.items():
            for step, result in _setup(sock, LISTENERS[name]).items():
                out[f"{name}: {step}"] = result
        changer = stack.enter_context(route_socket(agent))
        for seq, type_ in ((71, "RTM_NEWADDR"), (72, "RTM_DELADDR")):
            changer.send(address_request(type_, seq, address))
            reads, ended = read_answer(changer, seq, 65536)
            errors = [m.error for d in reads for m in d.messages if m.type == "NLMSG_ERROR"]
            out[f"{type_} acknowledged"] = errors == [0] or (errors or ended)
        for name, sock in listeners.items():
            got: list[Any] = []
            wait = READ_TIMEOUT if name != "NETLINK_DROP_MEMBERSHIP" else 0.0  # it would have come with the others
            while len(got) < 2:
                datagram = receive(sock, 65536, () if wait else ("MSG_DONTWAIT",), timeout=wait)
                if isinstance(datagram, str):
                    break
                got.append(notification_summary(datagram))
            out[f"{name}: received"] = got
            more = receive(sock, 65536, ("MSG_DONTWAIT",), timeout=0.0)  # a repeat, or one it should not get
            out[f"{name}: then"] = "nothing" if isinstance(more, str) else notification_summary(more)
    return out


OVERRUN_CHANGES = 32  # address adds and deletes: far more notifications than the smallest buffer holds
OVERRUN_BASE = "198.19.246."


def overrun_outcome(agent: SocketAgent, no_enobufs: bool) -> Outcome:
    """A listener with the smallest receive buffer (SO_RCVBUF 0) that does not read while
    addresses come and go on lo: the kernel drops what does not fit and says so once, with
    ENOBUFS on the next read (how `ip monitor`, sd-netlink and libnl learn to resynchronise),
    unless NETLINK_NO_ENOBUFS asked it not to (mdlayher/netlink). What each read then gave."""
    out: Outcome = {}
    with route_socket(agent) as listener, route_socket(agent) as changer:
        out["set SO_RCVBUF 0"] = attempt(partial(set_option, listener, "SO_RCVBUF", 0))
        if no_enobufs:
            out["set NETLINK_NO_ENOBUFS 1"] = attempt(partial(set_option, listener, "NETLINK_NO_ENOBUFS", 1))
        out[f"bind groups {RTMGRP_IPV4_IFADDR:#x}"] = attempt(partial(bind_groups, listener, RTMGRP_IPV4_IFADDR))
        acknowledged = 0
        for i in range(OVERRUN_CHANGES):
            for seq, type_ in ((100 + 2 * i, "RTM_NEWADDR"), (101 + 2 * i, "RTM_DELADDR")):
                changer.send(address_request(type_, seq, f"{OVERRUN_BASE}{i + 1}"))
                reads, _ = read_answer(changer, seq, 65536)
                acknowledged += [m.error for d in reads for m in d.messages if m.type == "NLMSG_ERROR"] == [0]
        out["changes acknowledged"] = acknowledged == 2 * OVERRUN_CHANGES or acknowledged
        errors, received = [], 0
        for _ in range(4 * OVERRUN_CHANGES + 8):  # every queued datagram, each error once, then EAGAIN
            got = receive(listener, 65536, ("MSG_DONTWAIT",), timeout=0.0)
            if got == "EAGAIN":
                break
            if isinstance(got, str):
                errors.append(got)
            else:
                received += len(got.messages)
        out["read errors"] = errors
        out["some notifications dropped"] = 0 < received < 2 * OVERRUN_CHANGES
    return out


def add_address(agent: SocketAgent, address: str) -> Any:
    """`ip addr add ADDRESS/32 dev lo` on a socket of its own: 0 (acknowledged), the errno, or
    how the answer ended where none came."""
    with route_socket(agent) as sock:
        sock.send(address_request("RTM_NEWADDR", 73, address))
        reads, ended = read_answer(sock, 73, 65536)
    errors = [m.error for d in reads for m in d.messages if m.type == "NLMSG_ERROR"]
    return errors[0] if errors else ended
