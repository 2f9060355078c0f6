"""The IP layer around the transports: TTL and hop limit, IPv4 identification, IPv4 options, IPv6
extension headers, and the ICMP errors about headers the stack cannot process.

The Wire builds each header itself, well-formed or not; a UDP socket of the agent's, bound in the
stack, shows whether the datagram behind the header reached the application, and the Wire sees
what the stack answered (ICMP parameter problem, destination unreachable) or sent of its own.
"""

from __future__ import annotations

import random
import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6ParamProblem,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.packet import Packet, Raw

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES, Endpoints
from labkit.packet.testbench import IcmpEcho, TcpConnection
from labkit.packet.wire import Wire
from labkit.stacks.agent import AgentSocket, SocketAgent, SocketCallError

from .support import arrived, error_fields, pointer_of, receiver

pytestmark = [pytest.mark.needs("udp", "agent"), pytest.mark.varies_with()]
BOTH = pytest.mark.parametrize("family", FAMILIES)
IPV4_ONLY = pytest.mark.parametrize("family", ["ipv4"])
IPV6_ONLY = pytest.mark.parametrize("family", ["ipv6"])

WAIT = 2.0  # for what must come
QUIET = 0.7  # for what must not come (always waited out)
HOPS_OPTION = {"ipv4": "IP_TTL", "ipv6": "IPV6_UNICAST_HOPS"}
IP_PMTUDISC_DONT = 0  # IP_MTU_DISCOVER: never set DF
PAYLOAD = b"labkit ip layer check"


# -- helpers ----------------------------------------------------------------------------------------


def show(data: bytes | None) -> str:
    return "nothing" if data is None else repr(data[:40])


def hops(ends: Endpoints, pkt: Packet) -> int:
    """The TTL (IPv4) or hop limit (IPv6) the packet left the stack with."""
    ip = pkt[ends.ip]
    return int(ip.ttl if ends.version == 4 else ip.hlim)


def expect_error(wire: Wire, template: Packet, what: str) -> Packet:
    try:
        return wire.expect(template, timeout=WAIT)
    except ExpectTimeout as exc:
        raise AssertionError(f"no {what} came:\n{exc}") from None


def quotes(ends: Endpoints, pkt: Packet, sent: Packet) -> None:
    quote, want = error_fields(ends, pkt)[3], bytes(sent[ends.ip])
    assert quote and want.startswith(quote[: len(want)]), (
        f"the error quotes {quote[:48].hex()}, want the packet that caused it: {want[:48].hex()}"
    )


# -- TTL and hop limit -----------------------------------------------------------------------------


def first_packet(agent: SocketAgent, wire: Wire, ends: Endpoints, transport: str, options: dict[str, int]) -> Packet:
    """The first packet an agent socket with `options` sends to the peer: a UDP datagram, or the
    SYN of a connect."""
    if transport == "udp":
        sock = agent.socket(ends.family, "dgram")
        for name, value in options.items():
            sock.setsockopt(name, value)
        port = random.randint(20000, 60000)
        sock.sendto(PAYLOAD, ends.peer, port)
        return wire.expect(ends.from_stack() / UDP(dport=port) / Raw(PAYLOAD), timeout=WAIT)
    sock = agent.socket(ends.family, "stream")
    for name, value in options.items():
        sock.setsockopt(name, value)
    conn = TcpConnection(wire, ends, port=None)
    pending = sock.begin_connect(ends.peer, conn.local_port)
    syn = conn.accept()
    pending.result()
    return syn


@BOTH
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_outgoing_packets_carry_ttl_64_by_default(agent, wire, ends, transport):
    """RFC 1700 / RFC 8200: the default TTL (hop limit) is 64 on Linux and netstack alike."""
    pkt = first_packet(agent, wire, ends, transport, {})
    assert hops(ends, pkt) == 64, f"the {transport} packet left with TTL/hop limit {hops(ends, pkt)}, want the default 64"


@BOTH
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_socket_ttl_is_honoured_on_the_wire(agent, wire, ends, transport):
    """IP_TTL / IPV6_UNICAST_HOPS set on a socket is the TTL (hop limit) of what it sends."""
    pkt = first_packet(agent, wire, ends, transport, {HOPS_OPTION[ends.family]: 7})
    assert hops(ends, pkt) == 7, f"{HOPS_OPTION[ends.family]}=7 was set, the {transport} packet left with {hops(ends, pkt)}"


@BOTH
@pytest.mark.parametrize("ttl", [0, 1])
def test_datagram_arriving_with_ttl_below_2_is_delivered(agent, wire, ends, ttl):
    """RFC 1122 3.2.1.7: a host MUST NOT discard a datagram just because it arrived with a TTL
    below 2; the TTL only limits forwarding (the same holds for the IPv6 hop limit)."""
    sock = receiver(agent, ends)
    field = {"ttl": ttl} if ends.version == 4 else {"hlim": ttl}

    wire.send(ends.to_stack(**field) / UDP(sport=40010, dport=sock.port) / Raw(PAYLOAD))

    got = arrived(sock, WAIT)
    assert got == PAYLOAD, f"a datagram that arrived with TTL/hop limit {ttl}: the socket got {show(got)}"


# -- IPv4 identification -------------------------------------------------------------------------


def no_df(sock: AgentSocket) -> None:
    """IP_PMTUDISC_DONT, so the datagrams are not atomic (RFC 6864) and their IDs matter. A stack
    that refuses the option is judged by what it sends: the check asserts DF is clear."""
    try:
        sock.setsockopt("IP_MTU_DISCOVER", IP_PMTUDISC_DONT)
    except SocketCallError:
        pass


@IPV4_ONLY
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ipv4_packets_leave_with_df_set_for_path_mtu_discovery(agent, wire, ends, transport):
    """RFC 1191: path MTU discovery sends every datagram with DF set, so a router that cannot
    forward it says so instead of fragmenting; Linux does it by default (IP_PMTUDISC_WANT on
    every socket, net.ipv4.ip_no_pmtu_disc = 0)."""
    pkt = first_packet(agent, wire, ends, transport, {})
    assert pkt[IP].flags.DF, f"the {transport} packet left with flags {pkt[IP].flags} (DF clear): no path MTU discovery"


@IPV4_ONLY
def test_ipv4_ids_do_not_repeat_towards_one_destination(agent, wire, ends):
    """RFC 6864 4.2: the ID of a non-atomic datagram (DF clear) must be unique per source,
    destination and protocol for its lifetime; datagrams of two sockets to the same host share
    that space, so 40 of them interleaved carry 40 different IDs."""
    socks = [agent.socket("ipv4", "dgram") for _ in range(2)]
    for sock in socks:
        no_df(sock)
    port = random.randint(20000, 60000)

    ids: list[int] = []
    for n in range(20):
        for i, sock in enumerate(socks):
            data = b"%d/%d" % (i, n)
            sock.sendto(data, ends.peer, port)
            pkt = wire.expect(ends.from_stack() / UDP(dport=port) / Raw(data), timeout=WAIT)
            assert not pkt[IP].flags.DF, f"datagram {data!r} left with DF set although IP_MTU_DISCOVER is IP_PMTUDISC_DONT"
            ids.append(int(pkt[IP].id))

    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"IDs repeated among {len(ids)} non-atomic datagrams to {ends.peer}: {repeated} (all: {ids})"


@IPV4_ONLY
@pytest.mark.needs("tcp", "agent")
def test_retransmitted_segment_gets_a_new_ipv4_id(accepted, wire):
    """RFC 6864 4.2: a non-atomic datagram's ID must not be reused, not even for a copy of an
    earlier datagram: a retransmitted segment (DF clear) carries a new ID."""
    conn, sock = accepted()
    no_df(sock)
    sock.setsockopt("TCP_NODELAY", 1)

    sock.send(PAYLOAD)
    first = conn.expect(payload=PAYLOAD, timeout=WAIT)
    again = wire.expect(conn.template(payload=PAYLOAD, seq=int(first[TCP].seq)), timeout=3.0)  # not acknowledged: retransmitted

    for name, pkt in (("original", first), ("retransmission", again)):
        assert not pkt[IP].flags.DF, f"the {name} left with DF set although IP_MTU_DISCOVER is IP_PMTUDISC_DONT"
    assert first[IP].id != again[IP].id, f"the retransmitted segment reuses the original's IPv4 ID {first[IP].id}"
    conn.send(flags="A")


@BOTH
def test_fragmented_datagrams_get_distinct_identifications(agent, wire, ends):
    """Datagrams larger than the MTU leave in fragments that share one identification, and two
    datagrams in a row have two (RFC 791; RFC 8200 4.5: different from any other fragmented
    packet sent recently with the same addresses)."""
    sock = agent.socket(ends.family, "dgram")
    port = random.randint(20000, 60000)
    for n in range(2):
        sock.sendto(bytes([n]) * 3000, ends.peer, port)

    pieces: dict[int, list[tuple[int, int, bool]]] = {}
    lasts = 0
    deadline = time.monotonic() + WAIT
    while lasts < 2 and (left := deadline - time.monotonic()) > 0:
        try:
            if ends.version == 4:
                pkt = wire.expect(ends.from_stack(proto=17), timeout=left)
                ip = pkt[IP]
                ident, offset, more = int(ip.id), int(ip.frag) * 8, bool(ip.flags.MF)
                size = int(ip.len) - int(ip.ihl) * 4
            else:
                pkt = wire.expect(ends.from_stack() / IPv6ExtHdrFragment(nh=17), timeout=left)
                frag = pkt[IPv6ExtHdrFragment]
                ident, offset, more = int(frag.id), int(frag.offset) * 8, bool(frag.m)
                size = int(pkt[IPv6].plen) - 8
        except ExpectTimeout:
            break
        pieces.setdefault(ident, []).append((offset, size, more))
        lasts += not more
    sizes = {ident: sum(size for _off, size, _more in got) for ident, got in pieces.items()}

    assert len(pieces) == 2, f"two 3000-byte datagrams left as fragments with {len(pieces)} identification(s): {pieces}"
    whole = [ident for ident, total in sizes.items() if total == 3008]
    assert len(whole) == 2, f"the fragments of each identification should add up to 3008 bytes (UDP header and data): {sizes}"


# -- IPv4 options -----------------------------------------------------------------------------


def with_options(ends: Endpoints, options: bytes, dport: int, payload: bytes = PAYLOAD) -> Packet:
    return ends.to_stack(options=[IPOption(options)]) / UDP(sport=40011, dport=dport) / Raw(payload)


@IPV4_ONLY
@pytest.mark.parametrize(
    "options",
    [
        pytest.param(b"\x01\x01\x01\x00", id="nop-eol"),
        pytest.param(b"\x07\x07\x04" + bytes(4) + b"\x00", id="record-route"),
        pytest.param(b"\x44\x0c\x05\x00" + bytes(8), id="timestamp"),
        pytest.param(b"\x0a\x04\x09\x00", id="unknown"),
    ],
)
def test_datagram_with_ipv4_options_is_delivered(agent, wire, ends, options):
    """RFC 1122 3.2.1.8: a host processes the options it knows (record route, timestamp) and
    ignores those it does not; the datagram behind them is delivered either way."""
    sock = receiver(agent, ends)

    wire.send(with_options(ends, options, sock.port))

    got = arrived(sock, WAIT)
    assert got == PAYLOAD, f"a datagram with the options {options.hex()}: the socket got {show(got)}"


@IPV4_ONLY
@pytest.mark.needs("icmp", "agent")
@pytest.mark.parametrize(
    "options, pointer",
    [
        pytest.param(b"\x01\x01\x01\x44", 23, id="type-without-length"),
        pytest.param(b"\x44\x00\x09\x00\x01\x02\x03\x04", 20, id="length-0"),
        pytest.param(b"\x44\x09\x09\x00\x01\x02\x03\x04", 20, id="length-past-header"),
        pytest.param(b"\x44\x08\x04\x00" + bytes(4), 22, id="timestamp-pointer-4"),
        pytest.param(b"\x07\x07\x03" + bytes(4) + b"\x00", 22, id="record-route-pointer-3"),
        pytest.param((b"\x07\x07\x08\x01\x02\x03\x04") * 2 + b"\x00\x00", 27, id="record-route-twice"),
        pytest.param(b"\x44\x0c\x0d\xf1" + bytes(8), 23, id="timestamp-overflow-full"),
    ],
)
def test_malformed_ipv4_option_gets_parameter_problem(agent, wire, ends, options, pointer):
    """RFC 1122 3.2.2.5 / RFC 792: a datagram whose options cannot be parsed is discarded with a
    Parameter Problem whose pointer is the octet where the error lies (as Linux counts it)."""
    sock = receiver(agent, ends)
    sent = with_options(ends, options, sock.port)

    wire.send(sent)

    pkt = expect_error(wire, ends.from_stack() / ICMP(type=12, code=0), f"parameter problem for the options {options.hex()}")
    assert pointer_of(ends, pkt) == pointer, f"the parameter problem points at octet {pointer_of(ends, pkt)}, want {pointer}"
    quotes(ends, pkt, sent)
    got = arrived(sock, 0)
    assert got is None, f"the datagram with malformed options was delivered as well: {show(got)}"


@IPV4_ONLY
@pytest.mark.needs("icmp", "agent")
def test_echo_reply_carries_the_recorded_route(wire, ends):
    """RFC 791 (record route) and RFC 1122 3.2.2.6: an echo reply returns the request's record
    route option, in which the stack entered its own address in the free slot."""
    echo = IcmpEcho(wire, ends)
    seq = random.randrange(1, 0xFFFF)
    request = echo.request(seq, PAYLOAD)
    request[IP].options = [IPOption(b"\x07\x07\x04" + bytes(4) + b"\x00")]  # one free slot, then EOL

    wire.send(request)

    reply = echo.expect_reply(seq, PAYLOAD, timeout=WAIT)
    raw = bytes(reply[IP])
    options = raw[20 : reply[IP].ihl * 4]
    want = b"\x07\x07\x08" + socket.inet_aton(ends.stack)
    assert options[: len(want)] == want, (
        f"the echo reply's options are {options.hex()}, want record route 07 07 08 with {ends.stack} recorded ({want.hex()})"
    )


# -- an unknown upper-layer protocol --------------------------------------------------------------

EXPERIMENTAL = 253  # RFC 3692: for experimentation, so no stack implements it


@BOTH
@pytest.mark.needs("icmp", "agent")
def test_unknown_protocol_is_refused(wire, ends):
    """RFC 1122 3.2.2.1: an IPv4 datagram for a protocol the host lacks gets Destination
    Unreachable, protocol unreachable (3/2). RFC 8200 4 / RFC 4443 3.4: in IPv6 an unrecognized
    Next Header gets Parameter Problem code 1 pointing at that field (offset 6)."""
    if ends.version == 4:
        sent = ends.to_stack(proto=EXPERIMENTAL) / Raw(PAYLOAD)
        template = ends.from_stack() / ICMP(type=3, code=2)
    else:
        sent = ends.to_stack(nh=EXPERIMENTAL) / Raw(PAYLOAD)
        template = ends.from_stack() / ICMPv6ParamProblem(code=1)

    wire.send(sent)

    pkt = expect_error(wire, template, f"error for protocol {EXPERIMENTAL}")
    if ends.version == 6:
        assert pointer_of(ends, pkt) == 6, f"the parameter problem points at {pointer_of(ends, pkt)}, want 6 (Next Header)"
    quotes(ends, pkt, sent)


# -- IPv6 extension headers ------------------------------------------------------------------------

OPTION_HEADERS = {"hop-by-hop": IPv6ExtHdrHopByHop, "destination": IPv6ExtHdrDestOpt}
ALL_NODES = "ff02::1"


def through_header(ends: Endpoints, header: Packet, dport: int, dst: str | None = None) -> Packet:
    ip = ends.to_stack(**({"dst": dst} if dst else {}))
    return ip / header / UDP(sport=40012, dport=dport) / Raw(PAYLOAD)


@IPV6_ONLY
@pytest.mark.parametrize("header", list(OPTION_HEADERS))
def test_padding_options_are_skipped(agent, wire, ends, header):
    """RFC 8200 4.2: a hop-by-hop or destination options header holding only padding (PadN) is
    processed and the payload behind it delivered."""
    sock = receiver(agent, ends)

    wire.send(through_header(ends, OPTION_HEADERS[header](nh=17, options=[PadN(optdata=bytes(4))]), sock.port))

    got = arrived(sock, WAIT)
    assert got == PAYLOAD, f"a datagram behind a {header} options header with PadN: the socket got {show(got)}"


ACTIONS = {
    # the two high bits of an unknown option's type: (delivered, ICMP to unicast, ICMP to multicast)
    0b00: (True, False, False),  # skip over it
    0b01: (False, False, False),  # discard silently
    0b10: (False, True, True),  # discard, Parameter Problem code 2 even if the destination was multicast
    0b11: (False, True, False),  # discard, Parameter Problem code 2 only if the destination was not multicast
}


@IPV6_ONLY
@pytest.mark.needs("icmp", "agent")
@pytest.mark.parametrize("header", list(OPTION_HEADERS))
@pytest.mark.parametrize("action", list(ACTIONS), ids=lambda a: f"{a:02b}")
@pytest.mark.parametrize("multicast", [False, True], ids=["unicast", "multicast"])
def test_unknown_option_honours_its_action_bits(agent, wire, ends, header, action, multicast):
    """RFC 8200 4.2: the two high-order bits of an unrecognized option's type say what to do with
    the packet; the Parameter Problem (code 2) points at the option's type octet (42: the IPv6
    header and the two octets of the extension header's own)."""
    delivered, icmp_unicast, icmp_multicast = ACTIONS[action]
    want_icmp = icmp_multicast if multicast else icmp_unicast
    sock = receiver(agent, ends)
    option = HBHOptUnknown(otype=(action << 6) | 0x1E, optdata=bytes(4))
    sent = through_header(ends, OPTION_HEADERS[header](nh=17, options=[option]), sock.port, ALL_NODES if multicast else None)
    problem = IPv6(dst=ends.peer) / ICMPv6ParamProblem(code=2)  # to a multicast packet the source is the stack's choice

    wire.send(sent)

    where = f"{header} option of type {option.otype:#04x} to {sent[IPv6].dst}"
    got = arrived(sock, WAIT if delivered else QUIET)
    if delivered:
        assert got == PAYLOAD, f"{where}: the socket got {show(got)}, want the datagram (action 00: skip the option)"
    else:
        assert got is None, f"{where}: the datagram was delivered ({show(got)}); action {action:02b} discards it"
    if want_icmp:
        pkt = expect_error(wire, problem, f"parameter problem (code 2) for the {where}")
        assert pointer_of(ends, pkt) == 42, f"the parameter problem points at {pointer_of(ends, pkt)}, want 42 (the option type)"
        quotes(ends, pkt, sent)
    else:
        wire.expect_none(problem, timeout=QUIET)


@IPV6_ONLY
@pytest.mark.needs("icmp", "agent")
def test_routing_header_type_0_is_refused(agent, wire, ends):
    """RFC 5095: type 0 routing headers are deprecated and processed as an unrecognized type:
    with segments left they get a Parameter Problem, code 0, pointing at the Routing Type field
    (offset 42), and the packet is discarded (RFC 8200 4.4)."""
    sock = receiver(agent, ends)
    sent = through_header(ends, IPv6ExtHdrRouting(nh=17, type=0, segleft=1, addresses=[ends.host(9)]), sock.port)

    wire.send(sent)

    pkt = expect_error(wire, ends.from_stack() / ICMPv6ParamProblem(code=0), "parameter problem for a type 0 routing header")
    assert pointer_of(ends, pkt) == 42, f"the parameter problem points at {pointer_of(ends, pkt)}, want 42 (Routing Type)"
    quotes(ends, pkt, sent)
    got = arrived(sock, 0)
    assert got is None, f"the datagram behind the type 0 routing header was delivered: {show(got)}"


@IPV6_ONLY
def test_routing_header_without_segments_left_is_ignored(agent, wire, ends):
    """RFC 8200 4.4: a routing header of an unrecognized type with Segments Left 0 is ignored and
    the next header processed: the datagram is delivered."""
    sock = receiver(agent, ends)

    wire.send(through_header(ends, IPv6ExtHdrRouting(nh=17, type=0, segleft=0, addresses=[ends.host(9)]), sock.port))

    got = arrived(sock, WAIT)
    assert got == PAYLOAD, f"a datagram behind a type 0 routing header with no segments left: the socket got {show(got)}"


@IPV6_ONLY
@pytest.mark.needs("icmp", "agent")
def test_hop_by_hop_header_not_first_is_refused(agent, wire, ends):
    """RFC 8200 4.1: a hop-by-hop options header may only follow the IPv6 header itself. Found
    after another extension header, next header 0 is an unrecognized Next Header: Parameter
    Problem code 1 pointing at the field that named it (offset 40, the destination options
    header's Next Header)."""
    sock = receiver(agent, ends)
    late = IPv6ExtHdrDestOpt(nh=0, options=[PadN(optdata=bytes(4))]) / IPv6ExtHdrHopByHop(nh=17, options=[PadN(optdata=bytes(4))])
    sent = through_header(ends, late, sock.port)

    wire.send(sent)

    pkt = expect_error(wire, ends.from_stack() / ICMPv6ParamProblem(code=1), "parameter problem for a hop-by-hop header in second place")
    assert pointer_of(ends, pkt) == 40, f"the parameter problem points at {pointer_of(ends, pkt)}, want 40 (the Next Header naming it)"
    quotes(ends, pkt, sent)
    got = arrived(sock, 0)
    assert got is None, f"the datagram behind the misplaced hop-by-hop header was delivered: {show(got)}"

