"""Reassembly of fragmented datagrams (RFC 791 section 3.2, RFC 8200 section 4.5, RFC 5722), and
the ICMP errors a stack owes about fragments it cannot use.

The Wire cuts each datagram itself (so a check controls every offset, flag and identification,
including the ones no honest sender uses), and a UDP socket of the agent's, bound in the stack,
shows what reassembly handed to the application: the whole datagram, once, or nothing.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import pytest
from scapy.layers.inet import ICMP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ParamProblem, ICMPv6TimeExceeded, IPv6ExtHdrFragment
from scapy.packet import Packet, Raw

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES, Endpoints
from labkit.packet.testbench import IcmpEcho
from labkit.packet.wire import Wire
from labkit.stacks.agent import AgentSocket

from .support import arrived, error_fields, pointer_of, receiver

pytestmark = [pytest.mark.needs("udp", "agent"), pytest.mark.varies_with()]
BOTH = pytest.mark.parametrize("family", FAMILIES)
IPV6_ONLY = pytest.mark.parametrize("family", ["ipv6"])  # IPv4 has no such rule

UDP_PROTO, TCP_PROTO, ICMP_PROTO, ICMPV6_PROTO = 17, 6, 1, 58
WAIT = 2.0  # for what must come
QUIET = 0.7  # for what must not come (always waited out)

# netstack's reassembly timeouts are constants no sysctl reaches (runsc has none):
NETSTACK_TIMEOUTS = (
    "netstack's reassembly timeout is a constant no sysctl shortens: ipv4.ReassembleTimeout = 30 s "
    "(pkg/tcpip/network/ipv4/ipv4.go), ipv6.ReassembleTimeout = 60 s (pkg/tcpip/network/ipv6/ipv6.go)"
)
TIMEOUT_SYSCTL = {"ipv4": "net.ipv4.ipfrag_time", "ipv6": "net.ipv6.ip6frag_time"}
# Piece = (offset in bytes, size in bytes, more fragments follow)
Piece = tuple[int, int, bool]


# -- building fragments ---------------------------------------------------------------------------


def ip_payload(ends: Endpoints, packet: Packet) -> bytes:
    """The bytes after the IP header of `ends.to_stack() / packet`: checksums filled in with the
    pseudo-header of the real addresses, ready to be cut."""
    return bytes(ends.to_stack() / packet)[20 if ends.version == 4 else 40 :]


def fragments(ends: Endpoints, data: bytes, pieces: Sequence[Piece], ident: int, proto: int = UDP_PROTO) -> list[Packet]:
    """Fragments of the IP payload `data`, one per piece, in the order given."""
    out = []
    for offset, size, more in pieces:
        assert offset % 8 == 0, f"piece at {offset}: offsets are in units of 8 bytes"
        chunk = Raw(data[offset : offset + size])
        if ends.version == 4:
            out.append(ends.to_stack(id=ident & 0xFFFF, flags="MF" if more else 0, frag=offset // 8, proto=proto) / chunk)
        else:
            out.append(ends.to_stack() / IPv6ExtHdrFragment(nh=proto, offset=offset // 8, m=int(more), id=ident) / chunk)
    return out


def even_pieces(total: int, size: int) -> list[Piece]:
    """`total` bytes in pieces of `size` (a multiple of 8), the last one shorter."""
    return [(off, min(size, total - off), off + size < total) for off in range(0, total, size)]


FRESH = random.SystemRandom()  # not reseeded per test (pytest-randomly reseeds `random`)


def new_ident() -> int:
    """A fresh identification: reassembly queues a check leaves behind (waiting for their
    timeout) must not take in another check's fragments."""
    return FRESH.randrange(1, 1 << 16)


# -- the application side -------------------------------------------------------------------------


def still_receives(wire: Wire, ends: Endpoints, sock: AgentSocket) -> None:
    """An unfragmented datagram to the same socket arrives: what did not arrive before was the
    stack's decision about the fragments, not a socket that receives nothing."""
    control = b"control datagram, unfragmented"
    wire.send(ends.to_stack() / UDP(sport=40000, dport=sock.port) / Raw(control))
    got = arrived(sock, WAIT)
    assert got == control, f"an unfragmented datagram sent afterwards did not arrive either (got {got!r}): the socket receives nothing"


def show(data: bytes | None) -> str:
    return "nothing" if data is None else f"{len(data)} bytes"


# -- ICMP errors --------------------------------------------------------------------------------


def time_exceeded(ends: Endpoints) -> Packet:
    """Template: fragment reassembly time exceeded (ICMP 11/1, ICMPv6 3/1)."""
    if ends.version == 4:
        return ends.from_stack() / ICMP(type=11, code=1)
    return ends.from_stack() / ICMPv6TimeExceeded(code=1)


def parameter_problem(wire: Wire, ends: Endpoints, code: int, about: str) -> tuple[int, bytes]:
    """The stack's ICMPv6 parameter problem with `code`: (its pointer, the packet it quotes);
    `about` says what it was owed for, should none come."""
    try:
        pkt = wire.expect(ends.from_stack() / ICMPv6ParamProblem(code=code), timeout=WAIT)
    except ExpectTimeout as exc:
        raise AssertionError(f"no parameter problem {about}:\n{exc}") from None
    return pointer_of(ends, pkt), error_fields(ends, pkt)[3]


def shorten_reassembly_timeout(stack, ends: Endpoints) -> None:
    if not stack.can("sysctl"):
        pytest.skip(f"{stack.id}: {NETSTACK_TIMEOUTS}; the check does not wait that long")
    stack.sysctl(TIMEOUT_SYSCTL[ends.family], 1)


# -- reassembly -------------------------------------------------------------------------------------

DATA = random.Random(14).randbytes(2992)  # with the UDP header: 3000 bytes
THIRDS: list[Piece] = [(0, 1000, True), (1000, 1000, True), (2000, 1000, False)]
FIRST: Piece = (0, 16, True)  # the UDP header and 8 bytes of a 32-byte datagram
LAST: Piece = (24, 8, False)  # with FIRST, bytes 16-23 missing


def send_udp_in_pieces(wire: Wire, ends: Endpoints, sock: AgentSocket, pieces: Sequence[Piece], payload: bytes = DATA) -> int:
    ident = new_ident()
    data = ip_payload(ends, UDP(sport=40001, dport=sock.port) / Raw(payload))
    wire.send(*fragments(ends, data, pieces, ident))
    return ident


@BOTH
def test_fragments_in_order_are_reassembled(agent, wire, ends):
    sock = receiver(agent, ends)

    send_udp_in_pieces(wire, ends, sock, THIRDS)

    got = arrived(sock, WAIT)
    assert got == DATA, f"three fragments of a {len(DATA)}-byte datagram, in order: the socket got {show(got)}, want the datagram whole"


@BOTH
def test_fragments_out_of_order_are_reassembled(agent, wire, ends):
    sock = receiver(agent, ends)

    send_udp_in_pieces(wire, ends, sock, [THIRDS[2], THIRDS[0], THIRDS[1]])

    got = arrived(sock, WAIT)
    assert got == DATA, f"fragments sent last, first, middle: the socket got {show(got)}, want the {len(DATA)}-byte datagram whole"


@BOTH
def test_duplicate_fragment_is_ignored(agent, wire, ends):
    sock = receiver(agent, ends)

    send_udp_in_pieces(wire, ends, sock, [THIRDS[0], THIRDS[1], THIRDS[1], THIRDS[2]])

    got = arrived(sock, WAIT)
    assert got == DATA, f"with the middle fragment sent twice the socket got {show(got)}, want the {len(DATA)}-byte datagram whole"
    again = arrived(sock, QUIET)
    assert again is None, f"the datagram was delivered twice (then {show(again)}): a duplicate fragment must not make a second one"


@BOTH
def test_fragment_inside_data_already_received_is_ignored(agent, wire, ends):
    """A fragment wholly inside what the queue holds (bytes 512-767 after 0-1999, same bytes)
    carries nothing new; Linux drops it as a duplicate and keeps the queue."""
    sock = receiver(agent, ends)

    send_udp_in_pieces(wire, ends, sock, [THIRDS[0], THIRDS[1], (512, 256, True), THIRDS[2]])

    got = arrived(sock, WAIT)
    assert got == DATA, f"with a fragment inside data already received the socket got {show(got)}, want the datagram whole"


@BOTH
def test_overlapping_fragment_discards_the_datagram(agent, wire, ends):
    """RFC 5722 (IPv6): a datagram with overlapping fragments is silently discarded whole. Linux
    does the same for IPv4 (since 4.19, against the FragmentSmack attacks): a fragment that
    overlaps part of a queued one kills the queue."""
    sock = receiver(agent, ends)

    # 1000-1999 overlaps 1512-2511 at its end; every byte is the datagram's own, so a stack that
    # merged them (whichever copy wins) would rebuild the exact datagram and deliver it.
    send_udp_in_pieces(wire, ends, sock, [(0, 1000, True), (1512, 1000, True), (1000, 1000, True), (2000, 1000, False)])

    got = arrived(sock, QUIET)
    assert got is None, f"a datagram with overlapping fragments was delivered ({show(got)}); it must be discarded whole"
    still_receives(wire, ends, sock)


@BOTH
def test_reassembly_beyond_65535_bytes_is_dropped(agent, wire, ends):
    """The reassembled datagram would be longer than the 16-bit length fields allow (IPv4 total
    length, IPv6 payload length): it is dropped, never handed up truncated or wrapped."""
    sock = receiver(agent, ends)
    size = 65536 + 100 - (20 if ends.version == 4 else 0)  # IPv4: 65636 bytes with the header
    # A UDP header whose length field is what the real length wraps to (80 / 100), checksum 0: a
    # stack that reassembled the whole would hand up its first bytes as a datagram.
    data = struct.pack("!HHHH", 40002, sock.port, size & 0xFFFF, 0) + bytes(size - 8)
    frames = fragments(ends, data, even_pieces(size, 1448), new_ident())

    wire.send(*frames)

    got = arrived(sock, QUIET)
    assert got is None, f"{len(frames)} fragments of a {size}-byte IP payload made a datagram ({show(got)}); it must be dropped"
    still_receives(wire, ends, sock)


@BOTH
@pytest.mark.needs("icmp", "agent")
def test_fragmented_echo_request_is_answered_whole(wire, ends):
    """ICMP is reassembled like any protocol (packetimpact's ipv4/ipv6_fragment_icmp_error):
    an echo request in two fragments, last one first, is answered with the whole payload."""
    echo = IcmpEcho(wire, ends)
    payload = bytes(range(256)) * 4
    seq = FRESH.randrange(1, 0xFFFF)
    data = ip_payload(ends, echo.request(seq, payload)[ends.ip].payload)
    proto = ICMP_PROTO if ends.version == 4 else ICMPV6_PROTO

    wire.send(*fragments(ends, data, [(512, len(data) - 512, False), (0, 512, True)], new_ident(), proto))

    echo.expect_reply(seq, payload, timeout=WAIT)


@IPV6_ONLY
def test_atomic_fragment_is_delivered_on_its_own(agent, wire, ends):
    """RFC 6946: a fragment header with offset 0 and M=0 (an "atomic fragment") holds the whole
    datagram; it is processed in isolation, never queued with other fragments, not even with a
    pending fragment of the same identification (which it would overlap)."""
    sock = receiver(agent, ends)
    ident = new_ident()
    other = ip_payload(ends, UDP(sport=40008, dport=sock.port) / Raw(bytes(24)))
    atomic = ip_payload(ends, UDP(sport=40001, dport=sock.port) / Raw(DATA[:200]))

    wire.send(*fragments(ends, other, [FIRST], ident), *fragments(ends, atomic, [(0, len(atomic), False)], ident))

    got = arrived(sock, WAIT)
    assert got == DATA[:200], f"an atomic fragment of a 200-byte datagram: the socket got {show(got)}"


# -- reassembly timeout --------------------------------------------------------------------------


@BOTH
@pytest.mark.needs("icmp", "agent")
@pytest.mark.changes("sysctls")
@pytest.mark.parametrize("pieces", [[FIRST], [FIRST, LAST]], ids=["first-only", "with-a-gap"])
def test_incomplete_datagram_times_out_with_time_exceeded(stack, agent, wire, ends, pieces):
    """RFC 792 / RFC 8200 section 4.5: when reassembly is abandoned and the first fragment had
    come, the source gets Time Exceeded code 1 (fragment reassembly) quoting that fragment."""
    shorten_reassembly_timeout(stack, ends)
    sock = receiver(agent, ends)
    data = ip_payload(ends, UDP(sport=40003, dport=sock.port) / Raw(bytes(24)))
    frames = fragments(ends, data, pieces, new_ident())

    wire.send(*frames)

    try:
        pkt = wire.expect(time_exceeded(ends), timeout=3.0)
    except ExpectTimeout as exc:
        raise AssertionError(f"no time exceeded (reassembly) within 3 s of the fragments {pieces}, reassembly timeout 1 s:\n{exc}") from None
    _type, _code, _unused, quote = error_fields(ends, pkt)
    first = bytes(frames[0])
    assert quote[: len(first)] == first, f"the time exceeded quotes {quote[:48].hex()}, want the first fragment {first[:48].hex()}"
    got = arrived(sock, 0)
    assert got is None, f"half a datagram was delivered: {show(got)}"


@BOTH
@pytest.mark.needs("icmp", "agent")
@pytest.mark.changes("sysctls")
def test_incomplete_datagram_without_first_fragment_times_out_silently(stack, agent, wire, ends):
    """Without the first fragment there is nothing to quote (no transport header to tell the
    sender which flow lost it): RFC 792 and RFC 8200 4.5 send no Time Exceeded then."""
    shorten_reassembly_timeout(stack, ends)
    sock = receiver(agent, ends)
    data = ip_payload(ends, UDP(sport=40004, dport=sock.port) / Raw(bytes(24)))

    wire.send(*fragments(ends, data, [LAST], new_ident()))

    wire.expect_none(time_exceeded(ends), timeout=2.5)


# -- IPv6: fragments the stack answers with a parameter problem ----------------------------------


@pytest.mark.needs("icmp", "agent")
@IPV6_ONLY
def test_non_final_fragment_not_a_multiple_of_8_gets_parameter_problem(agent, wire, ends):
    """RFC 8200 section 4.5: a fragment with M=1 whose length is not a multiple of 8 is discarded
    with a Parameter Problem, code 0, pointing at the Payload Length field (offset 4)."""
    sock = receiver(agent, ends)
    data = ip_payload(ends, UDP(sport=40005, dport=sock.port) / Raw(bytes(24)))
    first = fragments(ends, data, [(0, 17, True)], new_ident())[0]

    wire.send(first)

    pointer, quote = parameter_problem(wire, ends, 0, "for a 17-byte fragment with M=1")
    assert pointer == 4, f"the parameter problem points at {pointer}, want 4 (Payload Length)"
    sent = bytes(first)
    assert quote[: len(sent)] == sent, f"the parameter problem quotes {quote[:48].hex()}, want the fragment {sent[:48].hex()}"


@pytest.mark.needs("icmp", "agent")
@IPV6_ONLY
def test_fragment_reaching_past_65535_bytes_gets_parameter_problem(agent, wire, ends):
    """RFC 8200 section 4.5: a fragment whose offset plus length exceeds 65535 is discarded with
    a Parameter Problem, code 0, pointing at the Fragment Offset field (offset 42: the IPv6
    header, then byte 2 of the fragment header)."""
    sock = receiver(agent, ends)
    data = ip_payload(ends, UDP(sport=40006, dport=sock.port) / Raw(bytes(25)))  # 33 bytes
    first, last = fragments(ends, data, [(0, 16, True), (16, 17, False)], new_ident())
    last[IPv6ExtHdrFragment].offset = 65520 // 8  # the last 17 bytes at 65520: ends at 65537

    wire.send(first, last)

    pointer, quote = parameter_problem(wire, ends, 0, "for a fragment ending at byte 65537")
    assert pointer == 42, f"the parameter problem points at {pointer}, want 42 (Fragment Offset)"
    sent = bytes(last)
    assert quote[: len(sent)] == sent, f"the parameter problem quotes {quote[:48].hex()}, want the offending fragment {sent[:48].hex()}"
    got = arrived(sock, 0)
    assert got is None, f"something was delivered: {show(got)}"


@pytest.mark.needs("icmp", "agent")
@IPV6_ONLY
def test_first_fragment_without_the_upper_layer_header_gets_parameter_problem(wire, ends):
    """RFC 7112 / RFC 8200 section 4.5: a first fragment must hold the whole header chain up to
    the upper-layer header. One that holds 8 bytes of a 20-byte TCP header is discarded with a
    Parameter Problem, code 3 (incomplete header chain), pointer 0."""
    data = ip_payload(ends, TCP(sport=40007, dport=9, flags="S"))
    first, rest = fragments(ends, data, [(0, 8, True), (8, len(data) - 8, False)], new_ident(), TCP_PROTO)

    wire.send(first, rest)

    pointer, quote = parameter_problem(wire, ends, 3, "(code 3) for a first fragment with 8 bytes of the TCP header")
    assert pointer == 0, f"the parameter problem points at {pointer}, want 0"
    sent = bytes(first)
    assert quote[: len(sent)] == sent, f"the parameter problem quotes {quote[:48].hex()}, want the first fragment {sent[:48].hex()}"
