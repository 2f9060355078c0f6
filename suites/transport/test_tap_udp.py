"""UDP from the container to the outside, as a tap stack carries it: each flow through a socket
of the host namespace, replies back to the container.

The Wire plays the container (`guest`) and sends to a lab service in the outside namespace; the
service's events show what arrived there and from where (the host's address, a port of the
host's), the Wire what came back. What a router in the stack's place would do is the measure:
deliver what is valid and whole, drop what is corrupted, pass on what the outside answers.
"""

from __future__ import annotations

import hashlib
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
from scapy.layers.inet import ICMP, IP, UDP, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6, IPv6ExtHdrFragment
from scapy.packet import Packet, Raw

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES, AddressPlan
from labkit.packet.checksum import checksum_errors
from labkit.packet.testbench import IcmpEcho, UdpFlow
from labkit.packet.testbench.guest import Guest
from labkit.packet.wire import Wire
from labkit.stacks import Stack
from labkit.stacks.service import Service
from labkit.testbed.outside import Outside

pytestmark = [pytest.mark.needs("outside"), pytest.mark.varies_with()]
BOTH = pytest.mark.parametrize("family", FAMILIES)

WAIT = 3.0  # for what must come: a datagram crosses the stack and the host's socket
QUIET = 1.5  # for what must not come (always waited out)
HEADERS = {"ipv4": 20 + 8, "ipv6": 40 + 8}  # IP + UDP header: what the MTU leaves for the payload
MAX_PAYLOAD = {"ipv4": 65535 - 28, "ipv6": 65535 - 8}  # the largest UDP datagram of each version
FRESH = random.SystemRandom()  # ports not reseeded per check: a stack may keep a flow of an earlier check


# -- helpers --------------------------------------------------------------------------------------


def flow_to(wire: Wire, guest: Guest, port: int, local_port: int | None = None) -> UdpFlow:
    """A UDP flow from the guest's address to `port` of the outside (and its replies back)."""
    ends = replace(guest.ends, peer=guest.address, stack=guest.outside)
    return UdpFlow(wire, ends, port=port, local_port=local_port or FRESH.randrange(20000, 60000))


def pattern(size: int, seed: int = 0) -> bytes:
    """A payload of `size` bytes no stack would make up by itself."""
    return bytes((i * 13 + seed + 5) & 0xFF for i in range(size))


def echo_service(outside: Outside) -> Service:
    return outside.service("udp-echo", family="any")


def arrival(service: Service, timeout: float = WAIT) -> dict | None:
    """The next datagram the outside service reports, or None if none comes within `timeout`."""
    try:
        return service.wait_for(lambda e: e["event"] == "datagram", timeout=timeout)
    except ExpectTimeout:
        return None


def carries(event: dict, data: bytes) -> bool:
    """Whether a service's datagram event is `data` (reported whole, or by digest if large)."""
    if event["len"] != len(data):
        return False
    return bytes.fromhex(event["data"]) == data if "data" in event else event["sha256"] == hashlib.sha256(data).hexdigest()


def mtu_payload(plan: AddressPlan, family: str) -> int:
    """The largest UDP payload that fits the container's MTU in one frame."""
    return plan.mtu - HEADERS[family]


def cut(ends_ip: Packet, datagram: bytes, piece: int, ident: int) -> list[Packet]:
    """The UDP `datagram` (header included) as IP fragments of at most `piece` bytes of it each
    (a multiple of 8), with the IP header `ends_ip`, as a sender fragments (RFC 791, RFC 8200)."""
    assert piece % 8 == 0, f"fragments of {piece} bytes: offsets are in units of 8"
    out: list[Packet] = []
    for offset in range(0, len(datagram), piece):
        chunk, more = datagram[offset : offset + piece], offset + piece < len(datagram)
        if isinstance(ends_ip, IP):
            out.append(ends_ip.copy() / Raw(chunk))
            out[-1][IP].setfieldval("proto", 17)
            out[-1][IP].setfieldval("id", ident)
            out[-1][IP].setfieldval("flags", "MF" if more else 0)
            out[-1][IP].setfieldval("frag", offset // 8)
        else:
            out.append(ends_ip.copy() / IPv6ExtHdrFragment(nh=17, offset=offset // 8, m=int(more), id=ident) / Raw(chunk))
    return out


def datagram_bytes(guest: Guest, flow: UdpFlow, payload: bytes) -> bytes:
    """The UDP header and payload of `flow`'s datagram, its checksum computed over the real addresses."""
    pkt = flow.datagram(payload)
    built = pkt.__class__(bytes(pkt))
    return bytes(built[UDP])


@dataclass
class Reassembled:
    """A datagram the stack sent back, put together from the frames that carried it."""

    frames: list[Packet]
    udp: Packet  # the whole datagram under an IP header of its addresses, checksum as sent

    @property
    def payload(self) -> bytes:
        return bytes(self.udp[UDP].payload)


def _piece(pkt: Packet) -> tuple[int, bytes, bool] | None:
    """(offset, bytes, more follow) of the UDP datagram this frame carries, or None if it is not one."""
    if pkt.haslayer(IPv6):
        ip6 = pkt[IPv6]
        frag = pkt.getlayer(IPv6ExtHdrFragment)
        if frag is not None and frag.nh == 17:
            return frag.offset * 8, bytes(frag.payload)[: ip6.plen - 8], bool(frag.m)
        if ip6.nh == 17:
            return 0, bytes(ip6.payload)[: ip6.plen], False
        return None
    ip = pkt.getlayer(IP)
    if ip is None or ip.proto != 17:
        return None
    return ip.frag * 8, bytes(ip.payload)[: ip.len - ip.ihl * 4], bool(ip.flags.MF)


def expect_datagram(wire: Wire, guest: Guest, src_port: int, timeout: float = WAIT) -> Reassembled:
    """The next datagram from the outside service to the guest, reassembled if the stack sent it
    in fragments (ExpectTimeout if it does not come whole within `timeout`)."""
    template = guest.ends.ip(src=guest.outside, dst=guest.address)
    pieces: dict[int, tuple[bytes, bool]] = {}
    frames: list[Packet] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ExpectTimeout(f"the datagram from {guest.outside} port {src_port} did not come whole: {len(frames)} piece(s)")
        pkt = wire.expect(template, timeout=left)
        piece = _piece(pkt)
        if piece is None:
            continue
        offset, data, more = piece
        if offset == 0 and UDP(data[:8]).sport != src_port:
            continue
        pieces[offset] = (data, more)
        frames.append(pkt)
        whole = _whole(pieces)
        if whole is not None:
            built = guest.ends.ip(src=guest.outside, dst=guest.address) / UDP(whole)
            return Reassembled(frames, built.__class__(bytes(built)))


def _whole(pieces: dict[int, tuple[bytes, bool]]) -> bytes | None:
    data, at = b"", 0
    for offset in sorted(pieces):
        if offset != at:
            return None
        chunk, more = pieces[offset]
        data, at = data + chunk, at + len(chunk)
        if not more:
            return data
    return None


def tap_max_mtu(wire: Wire) -> int:
    """The largest MTU the container's side of the tap (where the Wire sits) takes: 65521."""
    with wire.ns.iproute() as ipr:
        return int(ipr.get_links(ifname=wire.ifname)[0].get_attr("IFLA_MAX_MTU"))


@contextmanager
def tap_mtu(wire: Wire, mtu: int) -> Iterator[None]:
    """The container's side of the tap at `mtu` for a while, so the Wire can send a frame larger
    than the stack's MTU (a packet socket sends nothing larger than its device's MTU)."""
    with wire.ns.iproute() as ipr:
        index = ipr.link_lookup(ifname=wire.ifname)[0]
        was = ipr.get_links(index)[0].get_attr("IFLA_MTU")
        ipr.link("set", index=index, mtu=mtu)
    try:
        yield
    finally:
        with wire.ns.iproute() as ipr:
            ipr.link("set", index=index, mtu=was)


# -- delivery and the reply -----------------------------------------------------------------------


@BOTH
def test_datagram_reaches_the_outside_from_the_host_and_the_reply_comes_back(wire, outside, guest, family):
    echo = echo_service(outside)
    flow = flow_to(wire, guest, echo.port)
    payload = b"labkit-outbound-udp-\x00\x01\xfe\xff"
    flow.send(payload)
    got = arrival(echo)
    assert got is not None, f"the outside service got no datagram within {WAIT:g}s"
    assert carries(got, payload), f"the outside service got {got}, want the {len(payload)} bytes sent"
    assert got["peer"][0] == guest.host, f"the datagram reached the outside from {got['peer']}, want the host's {guest.host}"
    try:
        reply = expect_datagram(wire, guest, echo.port)
    except ExpectTimeout as exc:
        pytest.fail(f"the outside's reply never reached the container: {exc}")
    assert reply.payload == payload, f"the reply carries {reply.payload!r}, want {payload!r}"
    assert checksum_errors(reply.frames[0]) == [], f"bad checksums in the reply: {checksum_errors(reply.frames[0])}"


@BOTH
def test_the_reply_keeps_a_udp_checksum(wire, outside, guest, family):
    """The outside's kernel sums every datagram it sends, and a router passes the sum on; a stack
    that writes the reply anew should sum it too, even where IPv4 allows none (RFC 768)."""
    echo = echo_service(outside)
    flow_to(wire, guest, echo.port).send(b"sum me")
    try:
        reply = expect_datagram(wire, guest, echo.port)
    except ExpectTimeout as exc:
        pytest.fail(f"the outside's reply never reached the container: {exc}")
    sent = reply.frames[0][UDP].chksum
    assert sent != 0, "the reply reached the container with UDP checksum 0 (none)"
    assert checksum_errors(reply.frames[0]) == [], f"bad checksums in the reply: {checksum_errors(reply.frames[0])}"


@BOTH
@pytest.mark.varies_with("mtu")
@pytest.mark.parametrize("size", [1, 1000, "mtu"])
def test_datagrams_up_to_the_mtu_cross_whole_both_ways(wire, outside, guest, plan, family, size):
    """Up to the payload that fills the container's MTU: one frame each way across the tap."""
    length = mtu_payload(plan, family) if size == "mtu" else int(size)
    payload = pattern(length)
    echo = echo_service(outside)
    flow = flow_to(wire, guest, echo.port)
    flow.send(payload)
    got = arrival(echo)
    assert got is not None, f"a datagram of {length} bytes never reached the outside"
    assert carries(got, payload), f"the outside got {got['len']} bytes, want the {length} sent"
    try:
        reply = expect_datagram(wire, guest, echo.port)
    except ExpectTimeout as exc:
        pytest.fail(f"the reply of {length} bytes never reached the container: {exc}")
    assert reply.payload == payload, f"the reply carries {len(reply.payload)} bytes, want the {length} sent back"
    assert len(reply.frames) == 1, f"a reply of {length} bytes, within the MTU, came in {len(reply.frames)} fragments"
    assert checksum_errors(reply.frames[0]) == [], f"bad checksums in the reply: {checksum_errors(reply.frames[0])}"


@BOTH
@pytest.mark.varies_with("mtu")
def test_a_datagram_in_fragments_is_reassembled_and_passed_on(wire, outside, guest, plan, family):
    """Larger than the MTU, so the Wire sends it as IP fragments: the stack must put it together
    before its socket sends it on, whole."""
    length = min(plan.mtu + 1000 - HEADERS[family], MAX_PAYLOAD[family])
    payload = pattern(length, seed=1)
    echo = echo_service(outside)
    flow = flow_to(wire, guest, echo.port)
    piece = (plan.mtu - (20 if family == "ipv4" else 48)) // 8 * 8
    datagram = datagram_bytes(guest, flow, payload)
    wire.send(*cut(guest.ip(guest.outside), datagram, piece, FRESH.randrange(1, 0xFFFF)))
    got = arrival(echo)
    assert got is not None, f"a datagram of {length} bytes in fragments of {piece} never reached the outside"
    assert carries(got, payload), f"the outside got {got['len']} bytes, want the {length} sent in fragments"


@BOTH
@pytest.mark.varies_with("mtu")
def test_a_reply_larger_than_the_mtu_comes_whole_in_packets_the_mtu_allows(wire, outside, guest, plan, family):
    """The outside answers a small datagram with one larger than the container's MTU: the stack,
    whose socket got it whole, must send it on in fragments no larger than the MTU."""
    length = min(plan.mtu + 1000 - HEADERS[family], MAX_PAYLOAD[family])
    payload = pattern(length, seed=4)
    with outside.socket(socket.AF_INET if family == "ipv4" else socket.AF_INET6, socket.SOCK_DGRAM) as server:
        server.settimeout(WAIT)
        server.bind((guest.outside, 0))
        flow = flow_to(wire, guest, server.getsockname()[1])
        flow.send(b"send me a lot")
        try:
            _, host = server.recvfrom(100)
        except TimeoutError:
            pytest.fail(f"the request never reached the outside within {WAIT:g}s")
        server.sendto(payload, host)
    try:
        reply = expect_datagram(wire, guest, flow.port)
    except ExpectTimeout as exc:
        pytest.fail(f"the reply of {length} bytes never reached the container whole: {exc}")
    sizes = [len(f[IP if family == "ipv4" else IPv6]) for f in reply.frames]
    assert max(sizes) <= plan.mtu, f"the reply came in packets of {sizes} bytes; the container's MTU is {plan.mtu}"
    assert reply.payload == payload, f"the reply carries {len(reply.payload)} bytes, want the {length} sent"
    assert checksum_errors(reply.udp) == [], f"bad checksums in the reassembled reply: {checksum_errors(reply.udp)}"


# -- checksums ------------------------------------------------------------------------------------


@BOTH
def test_a_datagram_with_a_bad_checksum_is_dropped(wire, outside, guest, family):
    """A router passes it on as it is and the destination drops it; a stack that re-sends the
    payload from a socket of its own must check it first, or it makes it valid. A well-formed
    datagram of the same flow follows it: the stack reads the tap in order and sends a flow on from
    one host socket, so once that one is in, the corrupted one would have come before it."""
    echo = echo_service(outside)
    flow = flow_to(wire, guest, echo.port)
    good = flow.datagram(b"corrupted")
    good = good.__class__(bytes(good))
    flow.send(b"corrupted", chksum=(good[UDP].chksum + 1) & 0xFFFF or 1)
    flow.send(b"well-formed")
    try:
        after = echo.wait_for(lambda e: e["event"] == "datagram" and carries(e, b"well-formed"), timeout=WAIT)
    except ExpectTimeout:
        after = None
    before = [e for e in echo.events if e["event"] == "datagram" and not carries(e, b"well-formed")]
    assert not before, f"a datagram with a bad UDP checksum reached the outside: {before[0]}"
    assert after is not None, f"the well-formed datagram after it did not arrive either within {WAIT:g}s"


def test_an_ipv4_datagram_without_a_checksum_is_delivered(wire, outside, guest):
    """Checksum 0 means "none" on IPv4 (RFC 768): valid, and delivered."""
    echo = echo_service(outside)
    flow = flow_to(wire, guest, echo.port)
    flow.send(b"no-checksum", chksum=0)
    got = arrival(echo)
    assert got is not None, "a datagram with checksum 0 (none, valid on IPv4) never reached the outside"
    assert carries(got, b"no-checksum"), f"the outside got {got}"


@pytest.mark.parametrize("family", ["ipv6"])
def test_an_ipv6_datagram_without_a_checksum_is_dropped(wire, outside, guest, family):
    """IPv6 has no "no checksum" (RFC 8200 8.1): a UDP checksum of 0 is invalid and dropped."""
    echo = echo_service(outside)
    flow = flow_to(wire, guest, echo.port)
    flow.send(b"no-checksum", chksum=0)
    got = arrival(echo, QUIET)
    assert got is None, f"an IPv6 datagram with checksum 0 reached the outside: {got}"


# -- flows and ports ------------------------------------------------------------------------------


@BOTH
def test_each_flow_keeps_its_host_port(wire, outside, guest, family):
    """Datagrams of one guest port leave the host from one port (the outside's replies find their
    way back by it); another guest port is another flow, from another host port."""
    echo = echo_service(outside)
    first, second = FRESH.sample(range(20000, 60000), 2)
    seen = {}
    for port, n in ((first, 1), (first, 2), (second, 3)):
        flow_to(wire, guest, echo.port, port).send(f"datagram {n}".encode())
        got = arrival(echo)
        assert got is not None, f"datagram {n} (from guest port {port}) never reached the outside"
        seen[n] = tuple(got["peer"])
    assert seen[1] == seen[2], f"two datagrams from guest port {first} left the host from {seen[1]} and {seen[2]}"
    assert seen[3] != seen[1], f"guest ports {first} and {second} left the host from the same {seen[1]}"


@BOTH
def test_a_datagram_to_a_closed_outside_port_gets_port_unreachable(wire, outside, guest, family, record_property):
    """The outside's kernel answers it with port unreachable; a router in the stack's place passes
    that on to the container, quoting the datagram as the container sent it."""
    port = closed_port(outside)
    watch = outside.watch()
    flow = flow_to(wire, guest, port)
    flow.send(b"anyone there?")
    ip = guest.ends.ip(src=guest.outside, dst=guest.address)
    error = ip / ICMP(type=3, code=3) if family == "ipv4" else ip / ICMPv6DestUnreach(code=4)
    try:
        got = wire.expect(error, timeout=WAIT)
    except ExpectTimeout:
        sent = [f.packet.summary() for f in watch.drain() if f.outgoing and is_port_unreachable(f.packet)]
        pytest.fail(
            f"a datagram to closed port {port} of {guest.outside} got no port unreachable within {WAIT:g}s; "
            f"the outside's kernel sent the host {len(sent)}" + (f": {sent[0]}" if sent else "")
        )
    record_property("port unreachable", got.summary())
    quoted = got.getlayer(UDPerror)
    want = (guest.address, guest.outside, flow.local_port, port)
    said = (quoted.underlayer.src, quoted.underlayer.dst, quoted.sport, quoted.dport) if quoted is not None else None
    assert said == want, f"the port unreachable quotes {said}, want the datagram as sent {want}"


# -- what the MTU and fragments must not break ----------------------------------------------------


@pytest.mark.changes("links")
@pytest.mark.varies_with("mtu")
def test_a_datagram_over_the_mtu_with_df_is_not_delivered_whole(wire, outside, guest, stack, plan, record_property):
    """A router does not forward a packet larger than its link's MTU that may not be fragmented:
    it drops it, saying so with fragmentation needed (RFC 1191). What the stack says is recorded."""
    total = min(plan.mtu + 200, tap_max_mtu(wire), 65535)
    if total <= plan.mtu:
        pytest.skip(f"the tap takes no frame larger than the MTU of {plan.mtu}")
    payload = pattern(total - HEADERS["ipv4"], seed=2)
    echo = echo_service(outside)
    flow = flow_to(wire, guest, echo.port)
    big = flow.datagram(payload)
    big[IP].flags = "DF"
    with tap_mtu(wire, total):
        wire.send(big)
        got = arrival(echo, QUIET)
    heard = [f.packet.summary() for f in wire.drain() if not f.outgoing and f.packet.haslayer(ICMP)]
    record_property("icmp", "; ".join(heard) or "none")
    assert got is None or not carries(got, payload), (
        f"a {total}-byte packet with DF, over the MTU of {plan.mtu}, reached the outside whole"
    )
    flow.send(b"within the mtu")
    after = arrival(echo)
    assert after is not None and carries(after, b"within the mtu"), (
        f"a datagram within the MTU sent after it did not arrive: {after}"
    )


@BOTH
def test_a_lone_last_fragment_leaves_the_stack_working(wire, outside, guest, stack, family):
    """A last fragment (offset 1024, no more to come) whose first ones never come can make no
    datagram; a stack must keep it until its reassembly timeout, or drop it, and carry on."""
    echo = echo_service(outside)
    head = guest.ip(guest.outside)
    ident = FRESH.randrange(1, 0xFFFF)
    if family == "ipv4":
        lone = head / Raw(pattern(64, seed=3))
        lone[IP].setfieldval("proto", 17)
        lone[IP].setfieldval("id", ident)
        lone[IP].setfieldval("frag", 1024 // 8)
    else:
        lone = head / IPv6ExtHdrFragment(nh=17, offset=1024 // 8, m=0, id=ident) / Raw(pattern(64, seed=3))
    wire.send(lone)
    ping = IcmpEcho(wire, replace(guest.ends, peer=guest.address), 0x2C1)
    try:
        ping.send(1, b"still there?", dst=guest.outside)
        ping.expect_reply(1, timeout=WAIT, src=guest.outside)
    except ExpectTimeout:
        pytest.fail(f"after a lone last fragment the stack answered no echo; {how_it_is(stack)}")
    except OSError as exc:  # the tap is gone with the stack's end of it
        pytest.fail(f"after a lone last fragment the tap failed ({exc.strerror}); {how_it_is(stack)}")
    assert stack.healthy(), f"after a lone last fragment the stack is not healthy; {how_it_is(stack)}"
    got = arrival(echo, 0.1)
    assert got is None, f"a lone last fragment reached the outside as a datagram: {got}"


def how_it_is(stack: Stack, wait: float = 3.0) -> str:
    """Whether the stack's process still runs, and how it ended if not (the evidence of a crash):
    waits up to `wait` for a process whose tap already failed to finish dying."""
    ended = stack.ended(wait)
    return f"its process {ended}" if ended is not None else f"its process still runs; healthy: {stack.healthy()}"


def is_port_unreachable(pkt: Packet) -> bool:
    if pkt.haslayer(ICMPv6DestUnreach):
        return pkt[ICMPv6DestUnreach].code == 4
    return bool(pkt.haslayer(ICMP)) and (pkt[ICMP].type, pkt[ICMP].code) == (3, 3)


def closed_port(outside: Outside) -> int:
    """A UDP port of the outside's that nobody listens on (one a service had, and closed)."""
    sink = outside.service("udp-sink", family="any")
    sink.close()
    return sink.port
