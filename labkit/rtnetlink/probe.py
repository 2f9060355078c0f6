"""Ask a stack's NETLINK_ROUTE for something and write down exactly what it answered.

Runs inside the stack under test (`python -m labkit.rtnetlink.probe REQUESTS-JSON`), where container
tooling would run: a sandboxed stack answers rtnetlink itself, so the answers can only be seen
from in there. Each request is either a message described as data and encoded with pyroute2's
message classes, or raw bytes for the malformed cases. The answer to each is data too: every
message received (header, the message's fixed fields, attributes as pyroute2 decodes them, and
the raw bytes), or the socket error, or silence, so the lab can compare stacks field by field.
A message pyroute2 cannot decode is kept with its bytes and the decoder's error: a client
library breaking on a stack's answer is a finding, not a crash of the probe.

Every receive is bounded: a request is over at NLMSG_DONE, at an error or ACK that answers it,
or when the socket stays quiet for `quiet` seconds (what a message the stack ignores looks like).
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any


def _pyroute2_without_its_package_init() -> None:
    """Make `pyroute2` an empty package, so importing its netlink message classes does not run its
    `__init__`, which imports every API it has (NDB, IPDB, conntrack, nftables ...). That costs
    0.1 s on the host but 0.75 s inside gVisor, on every probe run (one or two per rtnetlink
    check); the probe needs only the message classes. Done only in the probe's own process."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is not None and spec.submodule_search_locations is not None:  # else the import below names what is missing
        sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)  # created, not executed


if __name__ == "__main__":
    _pyroute2_without_its_package_init()

from pyroute2 import netlink  # noqa: E402 (after the package stand-in above)
from pyroute2.netlink import NETLINK_ROUTE, NLM_F_ACK, NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, nlmsg  # noqa: E402
from pyroute2.netlink.rtnl import (  # noqa: E402
    RTM_NAMES,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWNETCONF,
    RTM_NEWNSID,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTM_NEWSTATS,
    RTM_VALUES,
)
from pyroute2.netlink.rtnl.fibmsg import fibmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifstatsmsg import ifstatsmsg  # noqa: E402
from pyroute2.netlink.rtnl.ndmsg import ndmsg  # noqa: E402
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402

from labkit.errors import LabError, LabInputError  # noqa: E402
from labkit.net.nlmsg import NLMSG_HDR, split  # noqa: E402

# A request's flags by name, as its JSON names them: "REQUEST", "DUMP", "CREATE", ...
NLM_F = {name.removeprefix("NLM_F_"): value for name, value in vars(netlink).items() if name.startswith("NLM_F_")}
TYPE_NAMES = RTM_VALUES | {NLMSG_NOOP: "NLMSG_NOOP", NLMSG_ERROR: "NLMSG_ERROR", NLMSG_DONE: "NLMSG_DONE"}


class netconfmsg(nlmsg):  # (lower case, as pyroute2 names its message classes)
    """`ip netconf`'s message, which pyroute2 has no class for: struct netconfmsg is one family
    byte, padded to 4, then NETCONFA_* attributes (each an s32)."""

    fields = (("family", "B"), ("__pad", "3x"))
    nla_map = (
        ("NETCONFA_UNSPEC", "none"),
        ("NETCONFA_IFINDEX", "int32"),
        ("NETCONFA_FORWARDING", "int32"),
        ("NETCONFA_RP_FILTER", "int32"),
        ("NETCONFA_MC_FORWARDING", "int32"),
        ("NETCONFA_PROXY_NEIGH", "int32"),
        ("NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN", "int32"),
        ("NETCONFA_INPUT", "int32"),
        ("NETCONFA_BC_FORWARDING", "int32"),
    )


# The pyroute2 class of each family's body: NEW, DEL, GET and SET of a family share one.
BODIES = {
    RTM_NEWLINK: ifinfmsg,
    RTM_NEWADDR: ifaddrmsg,
    RTM_NEWROUTE: rtmsg,
    RTM_NEWNEIGH: ndmsg,
    RTM_NEWRULE: fibmsg,
    RTM_NEWNETCONF: netconfmsg,
    RTM_NEWNSID: nsidmsg,
    RTM_NEWSTATS: ifstatsmsg,
}


def _message_class(type_: int) -> type | None:
    return BODIES.get(type_ & ~0x3)


@dataclass
class Message:
    """One netlink message as received."""

    type: str
    flags: int
    seq: int
    pid: int
    length: int
    fields: dict[str, Any] = field(default_factory=dict)  # the fixed part: family, index, prefixlen...
    attrs: list[list[Any]] = field(default_factory=list)  # [name, value] in the order sent
    error: int | None = None  # NLMSG_ERROR: 0 is an ACK, else a positive errno
    echoed: dict[str, Any] | None = None  # NLMSG_ERROR: the request header it quotes
    raw: str = ""
    decode_error: str | None = None

    def attr(self, name: str, default: Any = None) -> Any:
        return next((v for k, v in self.attrs if k == name), default)


@dataclass
class Answer:
    """Everything one request got back."""

    request: str
    sent: str = ""  # hex of what was sent
    port: int = 0  # the probe socket's netlink port id, which answers must carry as their pid
    messages: list[Message] = field(default_factory=list)
    send_errno: int | None = None  # the send itself failed (e.g. EPERM at sendmsg on some stacks)
    silent: bool = False  # nothing came before the quiet timeout
    unterminated: bool = False  # messages kept coming until the deadline, with no end in sight
    incomplete: bool = False  # messages came, then silence, without the DONE/ACK/error that ends them
    strays: list[Message] = field(default_factory=list)  # messages for another seq or port (late answers)
    crashed: str | None = None  # the probe's own failure (never the stack's answer)

    @property
    def errno(self) -> int | None:
        """The request's error: a failed send, the errno of the NLMSG_ERROR that answers it, or
        the one a dump's NLMSG_DONE carries (a dump that failed part-way)."""
        if self.send_errno is not None:
            return self.send_errno
        err = next((m.error for m in self.messages if m.type in ("NLMSG_ERROR", "NLMSG_DONE") and m.error), None)
        return err or None

    @property
    def acked(self) -> bool:
        return any(m.type == "NLMSG_ERROR" and m.error == 0 for m in self.messages)

    def payload(self) -> list[Message]:
        """The answer's messages other than DONE and errors/ACKs."""
        return [m for m in self.messages if m.type not in ("NLMSG_DONE", "NLMSG_ERROR", "NLMSG_NOOP")]


def raw_message(type_: int, flags: int, seq: int, body: bytes = b"", length: int | None = None) -> str:
    """A hand-made message, as the hex a `raw` request carries; `length` may lie."""
    size = NLMSG_HDR.size + len(body)
    return (NLMSG_HDR.pack(size if length is None else length, type_, flags, seq, 0) + body).hex()


def encode(request: dict[str, Any], seq: int) -> bytes:
    """A request as bytes: `raw` (hex, sent as is) or a described message encoded by pyroute2."""
    if "raw" in request:
        return bytes.fromhex(request["raw"])
    type_ = RTM_NAMES.get(request.get("type", ""), 0)
    cls = _message_class(type_)
    if cls is None:
        allowed = ", ".join(n for v, n in sorted(RTM_VALUES.items()) if _message_class(v))
        raise LabInputError(f"request type {request.get('type')!r}; allowed: {allowed}, or raw bytes")
    msg = cls()
    for key, value in request.get("fields", {}).items():
        msg[key] = _resolve(value)
    msg["attrs"] = [[name, _resolve(value)] for name, value in request.get("attrs", [])]
    flags = 0
    for name in request.get("flags", ["REQUEST"]):
        if name not in NLM_F:
            raise LabInputError(f"request flag {name!r}; allowed: {', '.join(NLM_F)}")
        flags |= NLM_F[name]
    msg["header"]["type"] = type_
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = request.get("seq", seq)
    msg["header"]["pid"] = request.get("pid", 0)
    msg.encode()
    data = bytes(msg.data[: msg["header"]["length"]])
    if "family_byte" in request and not request["family_byte"]:
        data = _without_family(data)
    return data


# Descriptors the requests refer to ({"own": "netns_fd"}), open until the probe closes.
_OPEN_FDS: list[int] = []


def _resolve(value: Any) -> Any:
    """{"ifindex_of": NAME} is this namespace's index of NAME: the same request names the same
    link in two namespaces that number their links differently. {"own": "pid"} and
    {"own": "netns_fd"} name the probe's own network namespace the two ways RTM_GETNSID takes
    one (NETNSA_PID, NETNSA_FD), whatever the process's pid or the descriptor's number."""
    if isinstance(value, dict) and "ifindex_of" in value:
        return socket.if_nametoindex(value["ifindex_of"])
    if isinstance(value, dict) and value.get("own") == "pid":
        return os.getpid()
    if isinstance(value, dict) and value.get("own") == "netns_fd":
        _OPEN_FDS.append(os.open("/proc/self/ns/net", os.O_RDONLY))
        return _OPEN_FDS[-1]
    return value


def _without_family(data: bytes) -> bytes:
    """Just the 16-byte header, its length saying so: a request with no body at all."""
    header = bytearray(data[:16])
    struct.pack_into("=I", header, 0, 16)
    return bytes(header)


def _plain(value: Any) -> Any:
    """pyroute2's decoded values, as JSON can carry them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k not in ("header", "__align")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)


def decode(data: bytes) -> list[Message]:
    """Split a datagram into messages and decode each; one that does not decode keeps its bytes."""
    out: list[Message] = []
    for (length, type_, flags, seq, pid), chunk in split(data):
        if len(chunk) != length:  # a length below a header or past the end: the rest, as bytes
            out.append(Message("MALFORMED", flags, seq, pid, length, raw=chunk.hex(), decode_error="bad nlmsg_len"))
        else:
            out.append(_decode_one(chunk, type_, flags, seq, pid, length))
    return out


def _decode_one(chunk: bytes, type_: int, flags: int, seq: int, pid: int, length: int) -> Message:
    msg = Message(TYPE_NAMES.get(type_, f"TYPE_{type_}"), flags, seq, pid, length, raw=chunk.hex())
    if type_ in (NLMSG_ERROR, NLMSG_DONE) and len(chunk) >= 20:
        msg.error = -struct.unpack_from("=i", chunk, 16)[0]
    if type_ == NLMSG_ERROR:
        if len(chunk) < 20:
            msg.decode_error = f"NLMSG_ERROR of {len(chunk)} bytes has no error code"
        if len(chunk) >= 36:
            e_len, e_type, e_flags, e_seq, e_pid = NLMSG_HDR.unpack_from(chunk, 20)
            msg.echoed = {"length": e_len, "type": e_type, "flags": e_flags, "seq": e_seq, "pid": e_pid}
        return msg
    if type_ in (NLMSG_DONE, NLMSG_NOOP):
        return msg  # (a DONE's error code, if any, was read above)
    cls = _message_class(type_)
    if cls is None:
        msg.decode_error = f"no decoder for type {type_}"
        return msg
    try:
        parsed = cls(chunk)
        parsed.decode()
        msg.fields = {k: _plain(v) for k, v in parsed.items() if k not in ("header", "attrs", "__align", "value", "event")}
        msg.attrs = [[name, _plain(value)] for name, value, *_ in parsed["attrs"]]
    except Exception as exc:  # the finding is the bytes and the decoder's complaint
        msg.decode_error = f"{type(exc).__name__}: {exc}"
    return msg


class Probe:
    """A NETLINK_ROUTE socket of our own; `ask` sends one request and gathers its answer."""

    def __init__(self, quiet: float = 0.3, deadline: float = 3.0) -> None:
        self.quiet, self.deadline = quiet, deadline
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.port = self.sock.getsockname()[0]
        self.seq = 1000

    def close(self) -> None:
        self.sock.close()
        while _OPEN_FDS:
            os.close(_OPEN_FDS.pop())

    def ask(self, name: str, request: dict[str, Any]) -> Answer:
        self.seq += 1
        answer = Answer(request=name, port=self.port)
        try:
            data = encode(request, self.seq)
        except Exception as exc:
            answer.crashed = f"encode: {type(exc).__name__}: {exc}"
            return answer
        answer.sent = data.hex()
        try:
            self.sock.send(data)
        except OSError as exc:
            answer.send_errno = exc.errno
            return answer
        seq = struct.unpack_from("=I", data, 8)[0] if len(data) >= 12 else None
        flags = struct.unpack_from("=H", data, 6)[0] if len(data) >= 8 else 0
        self._gather(answer, seq, wants_ack=bool(flags & NLM_F_ACK))
        return answer

    def _gather(self, answer: Answer, seq: int | None, wants_ack: bool) -> None:
        """Read until the request's answer ends, the socket stays quiet for `quiet` s, or the
        deadline. Messages for another seq or port (a late answer to an earlier request) are
        kept apart as strays."""
        end = time.monotonic() + self.deadline
        while True:
            left = end - time.monotonic()
            if left <= 0:
                answer.unterminated = True
                return
            ready, _, _ = select.select([self.sock], [], [], min(self.quiet, left))
            if not ready:
                answer.silent = not answer.messages
                answer.incomplete = bool(answer.messages)
                return
            try:
                data = self.sock.recv(1 << 20)
            except OSError as exc:  # e.g. ENOBUFS: an answer that overran us is an answer too
                answer.messages.append(Message("RECV_ERROR", 0, 0, 0, 0, error=exc.errno))
                return
            for m in decode(data):
                if (seq is not None and m.seq != seq) or m.pid not in (0, self.port):
                    answer.strays.append(m)
                    continue
                answer.messages.append(m)
                if _ends(m, seq, wants_ack):
                    return


def _ends(message: Message, seq: int | None, wants_ack: bool) -> bool:
    if message.type in ("NLMSG_DONE", "NLMSG_ERROR"):
        return True
    # A single (non-multipart) answer to a GET is complete in itself, unless an ACK is to follow.
    single = not message.flags & NLM_F_MULTI and message.type.startswith("RTM_NEW")
    return single and not wants_ack and (seq is None or message.seq == seq)


def drop_net_admin() -> None:
    """Remove CAP_NET_ADMIN from this process's effective, permitted and inheritable sets (capset(2)
    directly: a sandbox may ignore a bounding-set drop, as gVisor's did)."""
    import ctypes

    from labkit.uapi import CAP_NET_ADMIN, LINUX_CAPABILITY_VERSION_3, check, libc

    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words
    check(libc.capget(header, data), "capget")
    for i in range(3):
        data[i] &= ~(1 << CAP_NET_ADMIN)
    check(libc.capset(header, data), "capset")
    with open("/proc/self/status") as f:
        status = f.read()
    effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    if effective & (1 << CAP_NET_ADMIN):
        raise LabError("CAP_NET_ADMIN is still effective after capset: the probe cannot run unprivileged here")


def main(argv: list[str]) -> int:
    """argv[0]: JSON {"requests": [[name, request], ...], "quiet": s, "unprivileged": bool};
    prints one JSON list of answers."""
    spec = json.loads(argv[0])
    if spec.get("unprivileged"):
        drop_net_admin()
    probe = Probe(quiet=spec.get("quiet", 0.3))
    answers = []
    try:
        for name, request in spec["requests"]:
            try:
                answers.append(probe.ask(name, request))
            except Exception as exc:  # keep going: one broken request must not hide the others
                answers.append(Answer(request=name, crashed=f"{type(exc).__name__}: {exc}"))
    finally:
        probe.close()
    json.dump([asdict(a) for a in answers], sys.stdout)
    return 0


def ask(stack: Any, requests: dict[str, dict[str, Any]], *, unprivileged: bool = False, quiet: float = 0.3) -> dict[str, Answer]:
    """Run the probe inside `stack` (through its `run`) and return each request's answer by name.

    `unprivileged` drops CAP_NET_ADMIN in the probe first, as a container without it runs.
    """
    spec = json.dumps({"requests": list(requests.items()), "quiet": quiet, "unprivileged": unprivileged})
    argv = [sys.executable, "-m", "labkit.rtnetlink.probe", spec]
    done = stack.run(argv, timeout=30 + len(requests) * 4)
    if done.returncode != 0:
        raise LabError(f"labkit.rtnetlink.probe in {stack.id} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    try:
        return {a.request: a for a in answers_from_json(done.stdout)}
    except (ValueError, TypeError, KeyError) as exc:
        raise LabError(f"labkit.rtnetlink.probe in {stack.id} printed no answers ({exc}): {done.stdout[:300]!r}") from exc


def answers_from_json(text: str) -> list[Answer]:
    out = []
    for item in json.loads(text):
        messages = [Message(**m) for m in item.pop("messages")]
        strays = [Message(**m) for m in item.pop("strays", [])]
        out.append(Answer(messages=messages, strays=strays, **item))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
