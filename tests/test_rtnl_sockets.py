"""labkit.rtnetlink.sockets without a stack: how errors, dumps and socket steps are read and compared."""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

import pytest

from labkit.net.nlmsg import NLMSG_HDR
from labkit.rtnetlink import probe, sockets
from labkit.stacks.agent import SocketCallError


def message(type_: str, seq: int, pid: int, flags: tuple[str, ...] = ("MULTI",), **spec: Any) -> bytes:
    return probe.encode({"type": type_, "flags": list(flags), "pid": pid, **spec}, seq)


def done(seq: int, pid: int, flags: int = sockets.NLM_F_MULTI, error: int = 0) -> bytes:
    return NLMSG_HDR.pack(20, sockets.NLMSG_DONE, flags, seq, pid) + struct.pack("=i", -error)


def address(ip: str, seq: int = 7, pid: int = 99) -> bytes:
    return message(
        "RTM_NEWADDR", seq, pid, fields={"family": 2, "prefixlen": 32, "index": 1}, attrs=[["IFA_LOCAL", ip], ["IFA_ADDRESS", ip]]
    )


def datagram(*parts: bytes, flags: tuple[str, ...] = ()) -> sockets.Datagram:
    data = b"".join(parts)
    return sockets.Datagram(len(data), data, list(flags))


# -- errors -----------------------------------------------------------------------------------


def error(errno_: int, quoted: bytes, flags: int = 0, tlvs: bytes = b"") -> bytes:
    body = struct.pack("=i", -errno_) + quoted + tlvs
    return NLMSG_HDR.pack(16 + len(body), sockets.NLMSG_ERROR, flags, 5, 99) + body


def tlv(type_: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), type_) + value
    return raw + bytes(-len(raw) % 4)


REQUEST = sockets.refused_request(5)


def test_an_error_quoting_the_whole_request_without_attributes():
    assert sockets.error_shape(error(34, REQUEST), len(REQUEST)) == {"errno": 34, "flags": [], "quoted": "request", "tlvs": []}


def test_a_capped_error_quotes_only_the_header():
    shape = sockets.error_shape(error(34, REQUEST[:16], sockets.NLM_F_CAPPED), len(REQUEST))
    assert shape["quoted"] == "header" and shape["flags"] == ["CAPPED"]


def test_extended_ack_attributes_are_named_and_the_offset_read():
    tlvs = tlv(1, b"Attribute failed policy validation\0") + tlv(2, struct.pack("=I", 32)) + tlv(4, b"\0" * 8)
    shape = sockets.error_shape(error(34, REQUEST, sockets.NLM_F_ACK_TLVS, tlvs), len(REQUEST))
    assert shape == {"errno": 34, "flags": ["ACK_TLVS"], "quoted": "request", "tlvs": ["MSG", "OFFS", "POLICY"], "offset": 32}


def test_attributes_after_a_capped_quote():
    shape = sockets.error_shape(
        error(22, REQUEST[:16], sockets.NLM_F_ACK_TLVS | sockets.NLM_F_CAPPED, tlv(1, b"no\0")), len(REQUEST)
    )
    assert shape["quoted"] == "header" and shape["tlvs"] == ["MSG"]


def test_a_zero_length_attribute_is_malformed_not_a_loop():
    shape = sockets.error_shape(error(22, REQUEST[:16], sockets.NLM_F_ACK_TLVS | sockets.NLM_F_CAPPED, bytes(8)), len(REQUEST))
    assert shape["tlvs"] == ["malformed"]


def test_something_other_than_an_error_says_what_it_was():
    assert sockets.error_shape(done(5, 99), 32) == {"message": "NLMSG_DONE"}


# -- dumps ------------------------------------------------------------------------------------


def good_dump() -> list[sockets.Datagram]:
    return [datagram(address("198.19.200.1"), address("198.19.200.2")), datagram(address("198.19.200.3"), done(7, 99))]


def test_a_well_framed_dump_has_no_faults():
    assert sockets.dump_faults(good_dump(), "end", 7, 99, 4096) == []


@pytest.mark.parametrize(
    "reads, ended, fault",
    [
        ([datagram(address("198.19.200.1"))], "TIMEOUT", "the dump did not end (TIMEOUT)"),
        ([datagram(address("198.19.200.1"), flags=("MSG_TRUNC",))], "TIMEOUT", "read 1 was cut"),
        ([datagram(message("RTM_NEWADDR", 7, 99, (), fields={"family": 2}), done(7, 99))], "end", "RTM_NEWADDR lacks NLM_F_MULTI"),
        ([datagram(address("198.19.200.1", seq=8), done(7, 99))], "end", "carries seq 8, not 7"),
        ([datagram(address("198.19.200.1", pid=0), done(7, 99))], "end", "carries pid 0, not the reader's port 99"),
        ([datagram(done(7, 99)), datagram(done(7, 99))], "end", "2 NLMSG_DONE"),
        ([datagram(done(7, 99), address("198.19.200.1"))], "end", "NLMSG_DONE is followed by 1 messages"),
    ],
    ids=["no-end", "cut", "no-multi", "seq", "pid", "two-done", "after-done"],
)
def test_dump_faults(reads, ended, fault):
    assert any(fault in f for f in sockets.dump_faults(reads, ended, 7, 99, 4096)), sockets.dump_faults(reads, ended, 7, 99, 4096)


def test_records_are_counted_and_a_duplicate_or_a_gap_is_a_difference():
    kernel = sockets.dumped_records(good_dump())
    stack = sockets.dumped_records([datagram(address("198.19.200.1"), address("198.19.200.1"), done(7, 99))])
    assert kernel == Counter({"address 198.19.200.1/32": 1, "address 198.19.200.2/32": 1, "address 198.19.200.3/32": 1})
    found = {(d.what, d.kernel, d.stack) for d in sockets.record_differences(kernel, stack, "dump")}
    assert found == {("address 198.19.200.1/32", 1, 2), ("address 198.19.200.2/32", 1, 0), ("address 198.19.200.3/32", 1, 0)}


def test_records_can_be_limited_to_those_asked_about():
    kept = sockets.dumped_records(good_dump(), keep=lambda m: m.attr("IFA_ADDRESS") == "198.19.200.2")
    assert list(kept) == ["address 198.19.200.2/32"]


def test_many_record_differences_are_cut_short():
    kernel = Counter(f"address 198.19.200.{i}/32" for i in range(1, 40))
    out = sockets.record_differences(kernel, Counter(), "dump")
    assert len(out) == 11 and out[-1].what == "and 29 more records"


def test_a_route_is_keyed_by_table_destination_and_gateway():
    raw = message(
        "RTM_NEWROUTE",
        7,
        99,
        fields={"family": 2, "dst_len": 30, "table": 254},
        attrs=[["RTA_DST", "198.19.128.0"], ["RTA_GATEWAY", "198.18.0.1"]],
    )
    (m,) = probe.decode(raw)
    assert sockets.record_key(m) == "route table 254 198.19.128.0/30 via 198.18.0.1"


def test_an_interrupted_dump_is_seen_on_any_message():
    flagged = message("RTM_NEWADDR", 7, 99, ("MULTI", "DUMP_INTR"), fields={"family": 2})
    assert sockets.DumpRun([datagram(flagged, done(7, 99))], "end", 99, 7, 4096).interrupted
    assert not sockets.DumpRun(good_dump(), "end", 99, 7, 4096).interrupted


# -- socket steps, through a stand-in for the agent -------------------------------------------


class FakeSocket:
    """Answers as the agent does: options it knows, a queue of datagrams, errnos as SocketCallError."""

    def __init__(self, agent: FakeAgent) -> None:
        self.agent, self.options, self.closed, self.queue = agent, {}, False, list(agent.queued)
        self.sent: list[bytes] = []

    def setsockopt(self, name: str, value: Any) -> None:
        if name in self.agent.refuse:
            raise SocketCallError("setsockopt", "ENOPROTOOPT", "")
        self.options[name] = value

    def getsockopt(self, name: str) -> Any:
        if name in self.agent.refuse:
            raise SocketCallError("getsockopt", "ENOPROTOOPT", "")
        return self.options.get(name, 0) * 2 if name == "SO_RCVBUF" else self.options.get(name, 0)

    def bind_netlink(self, pid: int = 0, groups: int = 0) -> tuple[int, int]:
        return pid or 1234, groups

    def send(self, data: bytes, flags: tuple[str, ...] = (), timeout: float = 3.0) -> int:
        self.sent.append(data)
        return len(data)

    def recvmsg(self, size: int = 65536, flags: tuple[str, ...] = (), timeout: float = 3.0) -> dict[str, Any]:
        if not self.queue:
            raise SocketCallError("recv", "EAGAIN" if "MSG_DONTWAIT" in flags else "TIMEOUT", "")
        data = self.queue[0] if "MSG_PEEK" in flags else self.queue.pop(0)
        cut = len(data) > size
        return {
            "data": data[:size].hex(),
            "len": len(data) if "MSG_TRUNC" in flags else min(len(data), size),
            "msg_flags": ["MSG_TRUNC"] if cut else [],
            "ancillary": [],
            "peer": [0, 0],
        }

    def close(self) -> None:
        self.closed = True


class FakeAgent:
    def __init__(self, refuse: tuple[str, ...] = (), queued: tuple[bytes, ...] = ()) -> None:
        self.refuse, self.queued, self.pid = refuse, queued, 1234
        self.sockets: list[FakeSocket] = []

    def socket(self, family: str, type: str = "stream", protocol: str = "") -> FakeSocket:
        self.sockets.append(FakeSocket(self))
        return self.sockets[-1]


def test_an_option_set_and_read_back_and_the_socket_closed():
    agent = FakeAgent()
    out = sockets.option_outcome(agent, sockets.OPTION_BY_NAME["SO_RCVBUF"])
    assert out == {"set 1048576": "ok", "get SO_RCVBUF": 2 << 20}
    assert all(s.closed for s in agent.sockets)


def test_a_refused_option_is_its_errno_and_compares_as_a_difference():
    kernel = sockets.option_outcome(FakeAgent(), sockets.OPTION_BY_NAME["NETLINK_PKTINFO"])
    stack = sockets.option_outcome(FakeAgent(refuse=("NETLINK_PKTINFO",)), sockets.OPTION_BY_NAME["NETLINK_PKTINFO"])
    assert stack == {"set 1": "errno ENOPROTOOPT", "get NETLINK_PKTINFO": "errno ENOPROTOOPT"}
    found = sockets.compare(kernel, stack, "PKTINFO")
    assert [(d.what, d.kernel, d.stack) for d in found] == [
        ("set 1", "ok", "errno ENOPROTOOPT"),
        ("get NETLINK_PKTINFO", 1, "errno ENOPROTOOPT"),
    ]


def test_steps_before_an_option_are_part_of_its_outcome():
    out = sockets.option_outcome(FakeAgent(), sockets.OPTION_BY_NAME["NETLINK_DROP_MEMBERSHIP"])
    assert list(out)[:3] == ["bind groups 0x0", "set NETLINK_ADD_MEMBERSHIP 1", "set NETLINK_ADD_MEMBERSHIP 5"]


def test_compare_names_a_step_only_one_side_took():
    (d,) = sockets.compare({"a": 1}, {"a": 1, "b": "errno EPERM"}, "x")
    assert (d.what, d.kernel, d.stack) == ("b", None, "errno EPERM")


def test_reading_an_answer_stops_at_its_end_and_at_a_silent_socket():
    agent = FakeAgent(queued=(address("198.19.200.1"), done(7, 99), address("198.19.200.9", seq=8)))
    sock = agent.socket("netlink")
    reads, ended = sockets.read_answer(sock, 7, 4096)
    assert ended == "end" and len(reads) == 2 and len(sock.queue) == 1
    reads, ended = sockets.read_answer(sock, 9, 4096)
    assert ended == "TIMEOUT" and len(reads) == 1


def test_reading_part_of_an_answer_then_the_rest():
    agent = FakeAgent(queued=(address("198.19.200.1"), address("198.19.200.2"), done(7, 99)))
    sock = agent.socket("netlink")
    reads, ended = sockets.read_answer(sock, 7, 4096, max_reads=1)
    assert ended == "more"
    reads, ended = sockets.read_answer(sock, 7, 4096, reads=reads)
    assert ended == "end" and len(reads) == 3


def test_a_short_buffer_outcome_reads_the_cut_and_the_next_answer():
    answers = tuple(message("RTM_NEWLINK", seq, 99, (), fields={"family": 0, "index": 1}) for seq in (64, 65, 66))
    out = sockets.short_buffer_outcome(FakeAgent(queued=answers))
    assert out == {
        "a 20-byte read returns": 20,
        "a 20-byte read says MSG_TRUNC": True,
        "with MSG_TRUNC asked, the real length": True,
        "the next read answers seq": [66],
        "then nothing is queued": "EAGAIN",
    }


def test_a_notification_names_its_group_and_namespace_id():
    d = datagram(address("198.19.99.5", seq=0, pid=0))
    d.ancillary = [(sockets.SOL_NETLINK, sockets.NETLINK_PKTINFO, struct.pack("=I", 5))]
    assert sockets.notification_summary(d) == [["RTM_NEWADDR 198.19.99.5"], 5, None]
