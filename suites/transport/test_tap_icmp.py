"""ICMP echo from the container, as a tap stack carries it: answered by the stack itself for its
gateway address, and for outside hosts passed to the host's ICMP sockets and back.

The Wire plays the container (`guest`); what answers an echo to the outside is the outside
namespace's kernel, reached only through the stack's host namespace. Where an echo gets no
answer, a watch on the outside's uplink says whether the stack sent it out of the host at all.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
)
from scapy.packet import Packet

from labkit.errors import ExpectTimeout, UnexpectedFrame
from labkit.net.plan import FAMILIES, AddressPlan
from labkit.packet.checksum import checksum_errors
from labkit.packet.match import compare
from labkit.packet.testbench import IcmpEcho
from labkit.packet.testbench.guest import Guest
from labkit.packet.wire import Wire
from labkit.testbed.outside import Outside

pytestmark = [pytest.mark.needs("outside"), pytest.mark.varies_with()]
BOTH = pytest.mark.parametrize("family", FAMILIES)
SIZES = pytest.mark.parametrize("size", [0, 56, 1000, "mtu"])

WAIT = 3.0  # for what must come: an outside echo crosses the stack and the host's sockets twice
QUIET = 1.5  # for what must not come (always waited out)
PAYLOAD = b"labkit-outbound-echo-0123456789"
# Routed out of the host by its default route, but nobody has them (the outside does not forward).
UNREACHABLE = {"ipv4": "198.19.2.99", "ipv6": "2001:db8:1:2::99"}
ECHO_HEADERS = {"ipv4": 20 + 8, "ipv6": 40 + 8}  # IP header + echo header: what the MTU leaves for the payload
ICMPV6_ERRORS = (ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, ICMPv6ParamProblem)


# -- helpers --------------------------------------------------------------------------------------


def echo_from(wire: Wire, guest: Guest, ident: int | None = None) -> IcmpEcho:
    """Echo requests from the guest's own address (the testbench's come from the plan's peer)."""
    return IcmpEcho(wire, replace(guest.ends, peer=guest.address), ident)


def pattern(size: int) -> bytes:
    """A payload of `size` bytes no stack would make up by itself."""
    return bytes((i * 7 + 3) & 0xFF for i in range(size))


def echo_fields(reply: Packet) -> tuple[int, int, bytes]:
    """(id, seq, payload) of an echo reply, ICMP or ICMPv6 (Ethernet padding left out)."""
    if reply.haslayer(ICMPv6EchoReply):
        layer = reply[ICMPv6EchoReply]
        return layer.id, layer.seq, bytes(layer.data)
    icmp, ip = reply[ICMP], reply[IP]
    return icmp.id, icmp.seq, bytes(icmp.payload)[: ip.len - ip.ihl * 4 - 8]


def went_out(watch: Wire, dst: str) -> str:
    """What the outside's uplink saw of echo requests to `dst`: evidence of where a lost echo went."""
    seen = [f.packet.summary() for f in watch.drain() if not f.outgoing and is_echo_request_to(f.packet, dst)]
    return f"the outside's uplink saw {len(seen)} echo request(s) to {dst}" + (f": {seen[0]}" if seen else "")


def is_echo_request_to(pkt: Packet, dst: str) -> bool:
    if pkt.haslayer(ICMPv6EchoRequest):
        return pkt[IPv6].dst == dst
    return bool(pkt.haslayer(ICMP)) and pkt[ICMP].type == 8 and pkt[IP].dst == dst


def is_echo_reply(pkt: Packet, ident: int) -> bool:
    layer = pkt.getlayer(ICMPv6EchoReply)
    if layer is not None:
        return layer.id == ident
    icmp = pkt.getlayer(ICMP)
    return icmp is not None and icmp.type == 0 and icmp.id == ident


def is_icmp_error(pkt: Packet) -> bool:
    if pkt.haslayer(IPv6):
        return any(pkt.haslayer(error) for error in ICMPV6_ERRORS)
    icmp = pkt.getlayer(ICMP)
    return icmp is not None and icmp.type in (3, 4, 5, 11, 12)


def with_bad_checksum(request: Packet) -> Packet:
    """`request`, built, with its ICMP checksum off by one."""
    built = request.__class__(bytes(request))
    if built.haslayer(ICMPv6EchoRequest):
        built[ICMPv6EchoRequest].cksum = (built[ICMPv6EchoRequest].cksum + 1) & 0xFFFF
    else:
        built[ICMP].chksum = (built[ICMP].chksum + 1) & 0xFFFF
    return built


# -- what each check does, to the gateway or to the outside ---------------------------------------


def echo_is_answered(wire: Wire, outside: Outside, guest: Guest, dst: str, ident: int) -> None:
    echo = echo_from(wire, guest, ident)
    watch = outside.watch()
    echo.send(7, PAYLOAD, dst=dst)
    try:
        reply = echo.expect_reply(7, timeout=WAIT, src=dst)
    except ExpectTimeout:
        pytest.fail(f"an echo to {dst} got no reply within {WAIT:g}s; {went_out(watch, dst)}")
    assert echo_fields(reply) == (ident, 7, PAYLOAD), f"the reply carries {echo_fields(reply)}, want {(ident, 7, PAYLOAD)}"
    assert checksum_errors(reply) == [], f"bad checksums in the echo reply from {dst}: {checksum_errors(reply)}"


def payload_comes_back_whole(wire: Wire, guest: Guest, plan: AddressPlan, dst: str, size: int | str) -> None:
    length = plan.mtu - ECHO_HEADERS[guest.family] if size == "mtu" else int(size)
    data = pattern(length)
    echo = echo_from(wire, guest)
    echo.send(3, data, dst=dst)
    try:
        reply = echo.expect_reply(3, timeout=WAIT, src=dst)
    except ExpectTimeout:
        pytest.fail(f"an echo of {length} payload bytes to {dst} got no reply within {WAIT:g}s")
    got = echo_fields(reply)[2]
    assert got == data, f"the reply to {length} payload bytes carries {len(got)} bytes" + (
        ", not the ones sent" if len(got) == length else ""
    )
    assert checksum_errors(reply) == [], f"bad checksums in the reply to {length} payload bytes: {checksum_errors(reply)}"


def sequence_is_kept(wire: Wire, guest: Guest, dst: str, ident: int, count: int = 5) -> None:
    """`count` echoes sent back to back, before any reply: each reply carries its request's id,
    sequence number and payload."""
    echo = echo_from(wire, guest, ident)
    for seq in range(1, count + 1):
        echo.send(seq, PAYLOAD + bytes([seq]), dst=dst)
    ip = guest.ends.ip(src=dst, dst=guest.address)
    any_reply = ip / ICMP(type="echo-reply", id=ident) if guest.family == "ipv4" else ip / ICMPv6EchoReply(id=ident)
    got: list[tuple[int, int, bytes]] = []
    for _ in range(count):
        try:
            got.append(echo_fields(wire.expect(any_reply, timeout=WAIT)))
        except ExpectTimeout:
            break
    seqs = [seq for _, seq, _ in got]
    assert sorted(seqs) == list(range(1, count + 1)), f"{count} echoes to {dst} in a row got replies to seq {seqs}"
    wrong = [(seq, data) for _, seq, data in got if data != PAYLOAD + bytes([seq])]
    assert not wrong, f"replies carry another echo's payload: {wrong}"


def bad_checksum_is_ignored(wire: Wire, outside: Outside, guest: Guest, dst: str, ident: int, in_order: bool = False) -> None:
    """A corrupted echo, then the same echo well formed: only the second may be answered.
    `in_order`: the stack answers `dst` itself, reading the tap in order, so once the second is
    answered an answer to the first would be in already, and no silence is waited out. (An echo
    to the outside goes out through a host socket, libslirp's a socket of its own for each, so
    the two answers may come back in either order: the first gets its QUIET.)"""
    echo = echo_from(wire, guest, ident)
    watch = outside.watch()
    wire.send(with_bad_checksum(echo.request(9, PAYLOAD, dst=dst)))
    if in_order:
        echo.send(10, PAYLOAD, dst=dst)
        try:
            answered = echo.expect_reply(10, timeout=WAIT, src=dst)
        except ExpectTimeout:
            answered = None
        corrupted = echo.reply(9, src=dst)
        if any(not f.outgoing and compare(corrupted, f.packet).matched for f in wire.frames):
            pytest.fail(f"an echo to {dst} with a bad ICMP checksum was answered; {went_out(watch, dst)}")
        if answered is None:
            pytest.fail(f"a well-formed echo to {dst}, after the corrupted one, got no reply either; {went_out(watch, dst)}")
        return
    try:
        wire.expect_none(echo.reply(9, src=dst), timeout=QUIET)
    except UnexpectedFrame:
        pytest.fail(f"an echo to {dst} with a bad ICMP checksum was answered; {went_out(watch, dst)}")
    # The same echo, well formed, is answered: the silence was the checksum's doing.
    echo.send(10, PAYLOAD, dst=dst)
    try:
        echo.expect_reply(10, timeout=WAIT, src=dst)
    except ExpectTimeout:
        pytest.fail(f"a well-formed echo to {dst}, after the corrupted one, got no reply either; {went_out(watch, dst)}")


# -- the gateway: the stack's own address on the tap ----------------------------------------------


@BOTH
def test_gateway_answers_echo_with_its_id_seq_and_payload(wire, outside, guest, family):
    echo_is_answered(wire, outside, guest, guest.gateway, 0x2B1)


@BOTH
@SIZES
@pytest.mark.varies_with("mtu")
def test_gateway_answers_echo_payloads_of_every_size(wire, guest, plan, family, size):
    """Up to the payload that fills the container's MTU: one frame each way across the tap."""
    payload_comes_back_whole(wire, guest, plan, guest.gateway, size)


@BOTH
def test_gateway_keeps_the_sequence_numbers_of_echoes_in_a_row(wire, guest, family):
    sequence_is_kept(wire, guest, guest.gateway, 0x2B3)


@BOTH
def test_gateway_ignores_an_echo_with_a_bad_checksum(wire, outside, guest, family):
    """A corrupted request is dropped: answered, it would be news of a packet nobody sent."""
    bad_checksum_is_ignored(wire, outside, guest, guest.gateway, 0x2B4, in_order=True)


# -- an outside host: through the host's ICMP sockets ----------------------------------------------


@BOTH
def test_outside_host_answers_echo_with_its_id_seq_and_payload(wire, outside, guest, family):
    echo_is_answered(wire, outside, guest, guest.outside, 0x2B2)


@BOTH
@SIZES
@pytest.mark.varies_with("mtu")
def test_outside_host_answers_echo_payloads_of_every_size(wire, guest, plan, family, size):
    """The host's socket may cut what fills the container's MTU into fragments on the uplink; the
    reply comes back to the container whole, in one frame."""
    payload_comes_back_whole(wire, guest, plan, guest.outside, size)


@BOTH
def test_outside_echoes_in_a_row_keep_their_sequence_numbers(wire, guest, family):
    sequence_is_kept(wire, guest, guest.outside, 0x2B6)


@BOTH
def test_outside_echo_with_a_bad_checksum_gets_no_reply(wire, outside, guest, family):
    """A router passes a corrupted echo on as it is, and its destination drops it; a stack that
    re-sends it through an ICMP socket must check it first, or it makes it valid."""
    bad_checksum_is_ignored(wire, outside, guest, guest.outside, 0x2B7)


@BOTH
def test_echo_to_an_address_nobody_has_gets_no_echo_reply(wire, outside, guest, family, record_property):
    """Routed out of the host, lost beyond it: no echo reply may come back (an unreachable may;
    what came is recorded)."""
    dst = UNREACHABLE[family]
    watch = outside.watch()
    echo = echo_from(wire, guest, ident=0x2B5)
    echo.send(1, PAYLOAD, dst=dst)
    heard = wire.listen(QUIET)
    replies = [f.packet.summary() for f in heard if is_echo_reply(f.packet, 0x2B5)]
    errors = [f.packet.summary() for f in heard if is_icmp_error(f.packet)]
    record_property("icmp errors", "; ".join(errors) or "none")
    record_property("uplink", went_out(watch, dst))
    assert not replies, f"an echo to {dst}, which nobody has, was answered: {replies}"
