"""The netlink protocol around the answers: how a dump ends, what each answer echoes, ACKs,
errors that quote the request, a message without a family byte, and unknown message types."""

from __future__ import annotations

import errno
import struct

import pytest

from labkit.rtnetlink import differ
from labkit.rtnetlink.probe import NLM_F, NLMSG_HDR, raw_message

from .conftest import SUITE

pytestmark = SUITE

DUMPS = {
    "link": {"type": "RTM_GETLINK", "flags": ["REQUEST", "DUMP"], "fields": {"family": 0}},
    "addr": {"type": "RTM_GETADDR", "flags": ["REQUEST", "DUMP"], "fields": {"family": 0}},
    "route": {"type": "RTM_GETROUTE", "flags": ["REQUEST", "DUMP"], "fields": {"family": 0}},
}


def framing_faults(answer) -> list[str]:
    """What is wrong with how a dump's answer is framed and addressed."""
    faults = []
    seq = struct.unpack_from("=I", bytes.fromhex(answer.sent), 8)[0]
    if not answer.messages or answer.messages[-1].type != "NLMSG_DONE":
        faults.append(f"does not end with NLMSG_DONE (last: {answer.messages[-1].type if answer.messages else 'nothing'})")
    faults += [f"{m.type} lacks NLM_F_MULTI" for m in answer.messages if not m.flags & NLM_F["MULTI"]]
    faults += [f"{m.type} carries seq {m.seq}, not {seq}" for m in answer.messages if m.seq != seq]
    faults += [f"{m.type} carries pid {m.pid}, not the requester's {answer.port}" for m in answer.messages if m.pid != answer.port]
    return faults


@pytest.mark.parametrize("dump", list(DUMPS))
def test_dump_is_multipart_ends_with_done_and_echoes_seq_and_pid(rtnl, dump):
    pair = rtnl.ask({dump: DUMPS[dump]})
    assert not framing_faults(pair.kernel[dump]), f"the kernel's own dump: {framing_faults(pair.kernel[dump])}"
    faults = framing_faults(pair.stack[dump])
    rtnl.note(DUMPS[dump]["type"], pair, dump, [differ.Difference(dump, f, "-", "-") for f in faults])
    assert not faults, f"{pair.stack_id}'s {dump} dump: " + "; ".join(faults[:10])


def test_ack_flag_gets_an_ack_after_the_answer(rtnl, plan):
    request = {
        "type": "RTM_GETLINK",
        "flags": ["REQUEST", "ACK"],
        "fields": {"family": 0, "index": {"ifindex_of": plan.stack_ifname}},
    }
    pair = rtnl.ask({"get": request})
    kinds = {side: [m.type for m in answers["get"].messages] for side, answers in (("kernel", pair.kernel), ("stack", pair.stack))}
    assert kinds["kernel"] == ["RTM_NEWLINK", "NLMSG_ERROR"] and pair.kernel["get"].acked, f"the kernel answered {kinds['kernel']}"
    differences = pair.differences("get", only=())
    if kinds["stack"] != kinds["kernel"]:
        differences.append(differ.Difference("get with NLM_F_ACK", "messages", kinds["kernel"], kinds["stack"]))
    rtnl.verdict("RTM_GETLINK", pair, "get", differences, "a GETLINK with NLM_F_ACK")


def test_error_quotes_the_request_header(rtnl):
    request = {"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0, "index": 0x7FFF0000}}
    pair = rtnl.ask({"get": request})

    def quoted(answer):
        length, type_, flags, seq, _pid = NLMSG_HDR.unpack_from(bytes.fromhex(answer.sent))
        want = {"length": length, "type": type_, "flags": flags, "seq": seq}
        err = next((m for m in answer.messages if m.type == "NLMSG_ERROR"), None)
        got = {k: v for k, v in (err.echoed or {}).items() if k != "pid"} if err else None
        return want, got, err.seq if err else None

    want, got, seq = quoted(pair.kernel["get"])
    assert got == want and seq == want["seq"], f"the kernel's error quotes {got} for {want}"
    want, got, seq = quoted(pair.stack["get"])
    differences = pair.differences("get", only=())
    if got != want:
        differences.append(differ.Difference("NLMSG_ERROR", "quoted header", want, got))
    if seq != want["seq"]:
        differences.append(differ.Difference("NLMSG_ERROR", "seq", want["seq"], seq))
    rtnl.verdict("RTM_GETLINK", pair, "get", differences, "an unknown index")


NLM_F_CAPPED = 0x100


def test_error_quotes_the_whole_request_unless_capped(rtnl):
    """Without NETLINK_CAP_ACK an NLMSG_ERROR carries the whole request it refuses; a stack that
    quotes less must say so with NLM_F_CAPPED, or a client reading the quote as the request
    (pyroute2 does) reads past the end."""
    request = {"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0, "index": 0x7FFF0000}}
    pair = rtnl.ask({"get": request})

    def quote(answer) -> tuple[int | None, bool | None]:
        err = next((m for m in answer.messages if m.type == "NLMSG_ERROR"), None)
        if err is None:
            return None, None
        return len(bytes.fromhex(err.raw)) - 20, bool(err.flags & NLM_F_CAPPED)  # after nlmsghdr and the error code

    sent = len(bytes.fromhex(pair.kernel["get"].sent))
    assert quote(pair.kernel["get"]) == (sent, False), f"the kernel's error quotes {quote(pair.kernel['get'])} of {sent} bytes"
    differences = pair.differences("get", only=())
    quoted, capped = quote(pair.stack["get"])
    if (quoted, capped) != (sent, False) and not (capped and quoted is not None and quoted < sent):
        differences.append(
            differ.Difference("NLMSG_ERROR", "bytes of the request quoted, NLM_F_CAPPED", (sent, False), (quoted, capped))
        )
    rtnl.verdict("RTM_GETLINK", pair, "get", differences, "an error's quote of the request")


def test_message_without_family_byte_is_ignored(rtnl):
    """Linux's rtnetlink_rcv_msg drops a request too short to hold the family: no answer."""
    pair = rtnl.ask({"short": {"raw": raw_message(18, NLM_F["REQUEST"] | NLM_F["DUMP"], 77)}})
    assert pair.kernel["short"].silent, f"the kernel answered a message without family: {pair.kernel['short'].messages}"
    differences = pair.differences("short")
    rtnl.verdict("RTM_GETLINK", pair, "short", differences, "a message without family byte")


@pytest.mark.parametrize("type_", [0x7FF0, 1023], ids=["far-past-RTM_MAX", "past-RTM_MAX"])
def test_unknown_message_type_is_refused(rtnl, type_):
    pair = rtnl.ask({"unknown": {"raw": raw_message(type_, NLM_F["REQUEST"], 78, b"\x00" * 16)}})
    assert pair.kernel["unknown"].errno == errno.EOPNOTSUPP, f"the kernel gave errno {pair.kernel['unknown'].errno}"
    differences = pair.differences("unknown")
    rtnl.verdict(f"type {type_}", pair, "unknown", differences, f"message type {type_}")
