"""Checksums, for every offload setting a stack has: what it sends is right, what is wrong is dropped.

Frames with a wrong IPv4 header, ICMP, UDP or TCP checksum must be neither delivered nor
answered. Each check sends the bad frame, then a good one of the same flow that differs in a
field it can tell apart (payload or sequence number), waits for the good one's answer and then
looks at everything that came: being of one flow, the two reach even a stack with several
channels on the same one, in order, so an answer to the bad one would be there already. The
verdict does not depend on a timeout, and silence cannot come from a deaf stack.

UDP's "no checksum" (0) is allowed on IPv4 and forbidden on IPv6, and a UDP checksum that
computes to 0 must be sent as 0xFFFF. Frames the stack leaves CHECKSUM_PARTIAL are judged as the
device would finish them.
"""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from labkit.packet.checksum import checksum_errors, finish_partial
from labkit.packet.match import compare

FAMILIES = pytest.mark.parametrize("family", ["ipv4", "ipv6"])


def addresses(plan, family):
    return (plan.peer4, plan.stack4, IP) if family == "ipv4" else (plan.peer6, plan.stack6, IPv6)


def wrong(value: int) -> int:
    return (value + 0x1111) & 0xFFFF or 1


def with_checksum(pkt, layer, value):
    """`pkt` as bytes, the checksum of `layer` set to `value` (all others computed)."""
    built = pkt.__class__(bytes(pkt))
    built[layer].chksum = value
    return built


def udp_datagram(plan, family, port, payload=b"labkit-csum"):
    peer, me, ip = addresses(plan, family)
    return ip(src=peer, dst=me) / UDP(sport=40123, dport=port) / payload


def delivered(service, payload: bytes) -> list[dict]:
    return [e for e in service.events if e["event"] == "datagram" and bytes.fromhex(e.get("data", "")) == payload]


def seen(wire, template) -> list:
    wire.drain()  # read what is queued; everything stays in wire.frames
    return [f.packet for f in wire.frames if not f.outgoing and compare(template, f.packet).matched]


def bad_then_good(service, wire, bad, good, what: str) -> None:
    """Send `bad` then `good` (payloads b"bad" and b"good"); only the good one may arrive."""
    wire.send(bad)
    wire.send(good)
    service.wait_for(lambda e: e["event"] == "datagram" and bytes.fromhex(e.get("data", "")) == b"good", timeout=3)
    assert not delivered(service, b"bad"), f"{what} was delivered to the service"
    assert not seen(wire, UDP() / b"bad"), f"{what} was echoed back"


@pytest.mark.needs("udp", "services")
@FAMILIES
def test_udp_with_a_wrong_checksum_is_dropped(stack, wire, plan, family):
    echo = stack.service("udp-echo")
    bad = udp_datagram(plan, family, echo.port, b"bad")
    bad = with_checksum(bad, UDP, wrong(bad.__class__(bytes(bad))[UDP].chksum))
    bad_then_good(echo, wire, bad, udp_datagram(plan, family, echo.port, b"good"), "a UDP datagram with a wrong checksum")


@pytest.mark.needs("udp", "services", "ipv4")
def test_udp_without_checksum_is_accepted_on_ipv4(stack, wire, plan):
    echo = stack.service("udp-echo")
    wire.send(with_checksum(udp_datagram(plan, "ipv4", echo.port), UDP, 0))
    got = echo.wait_for(lambda e: e["event"] == "datagram", timeout=2)
    assert bytes.fromhex(got["data"]) == b"labkit-csum"


@pytest.mark.needs("udp", "services", "ipv6")
def test_udp_without_checksum_is_dropped_on_ipv6(stack, wire, plan):
    echo = stack.service("udp-echo")
    bad = with_checksum(udp_datagram(plan, "ipv6", echo.port, b"bad"), UDP, 0)
    bad_then_good(echo, wire, bad, udp_datagram(plan, "ipv6", echo.port, b"good"), "an IPv6 UDP datagram with checksum 0")


@pytest.mark.needs("udp", "services")
@FAMILIES
def test_udp_checksum_that_computes_to_zero_is_sent_as_ffff(stack, wire, plan, family):
    echo = stack.service("udp-echo")
    peer, me, ip = addresses(plan, family)
    # Two trailing bytes chosen so the datagram's checksum computes to 0; the echo's too, since
    # swapping addresses and ports leaves the sum unchanged. With those bytes at 0 the checksum
    # is the complement of the sum, so putting it there makes the sum 0xFFFF.
    prefix = b"labkit-zero\x00"
    fill = ip(bytes(ip(src=peer, dst=me) / UDP(sport=40124, dport=echo.port) / (prefix + b"\x00\x00")))[UDP].chksum
    payload = prefix + fill.to_bytes(2, "big")
    datagram = ip(src=peer, dst=me) / UDP(sport=40124, dport=echo.port, chksum=0xFFFF) / payload
    assert checksum_errors(ip(bytes(datagram))) == [], "the lab built a wrong datagram"
    wire.send(datagram)
    frame = wire.expect_frame(ip(src=me, dst=peer) / UDP(sport=echo.port, dport=40124) / payload, timeout=2)
    reply = finish_partial(frame.packet) if frame.checksum_partial else frame.packet
    assert reply[UDP].chksum == 0xFFFF, (
        f"the reply's checksum computes to 0 and must be sent as 0xFFFF; got {reply[UDP].chksum:#06x} (partial={frame.checksum_partial})"
    )


@pytest.mark.needs("icmp", "ipv4")
@pytest.mark.parametrize("broken", ["IP", "ICMP"])
def test_icmp_echo_with_a_wrong_checksum_is_not_answered(stack, wire, plan, broken):
    ident = random.randint(1, 0xFFFF)
    bad = IP(src=plan.peer4, dst=plan.stack4) / ICMP(id=ident, seq=1) / b"labkit"
    layer = IP if broken == "IP" else ICMP
    wire.send(with_checksum(bad, layer, wrong(IP(bytes(bad))[layer].chksum)))
    wire.send(IP(src=plan.peer4, dst=plan.stack4) / ICMP(id=ident, seq=2) / b"labkit")
    wire.expect(ICMP(type="echo-reply", id=ident, seq=2), timeout=3)
    answered = seen(wire, ICMP(type="echo-reply", id=ident, seq=1))
    assert not answered, f"an echo request with a wrong {broken} checksum was answered: {answered[0].summary()}"


@pytest.mark.needs("icmp", "ipv6")
def test_icmpv6_echo_with_a_wrong_checksum_is_not_answered(stack, wire, plan):
    ident = random.randint(1, 0xFFFF)
    built = IPv6(bytes(IPv6(src=plan.peer6, dst=plan.stack6) / ICMPv6EchoRequest(id=ident, seq=1, data=b"labkit")))
    built[ICMPv6EchoRequest].cksum = wrong(built[ICMPv6EchoRequest].cksum)
    wire.send(bytes(wire.ether() / built))
    wire.send(IPv6(src=plan.peer6, dst=plan.stack6) / ICMPv6EchoRequest(id=ident, seq=2, data=b"labkit"))
    wire.expect(ICMPv6EchoReply(id=ident, seq=2), timeout=3)
    answered = seen(wire, ICMPv6EchoReply(id=ident, seq=1))
    assert not answered, f"an ICMPv6 echo request with a wrong checksum was answered: {answered[0].summary()}"


@pytest.mark.needs("tcp", "services")
@FAMILIES
def test_tcp_syn_with_a_wrong_checksum_is_not_answered(stack, wire, plan, family):
    """Both SYNs are of one flow, so a stack with several channels reads them on the same one,
    in order; they differ in their sequence number. The first SYN-ACK tells which one the stack
    took: it acknowledges the good one's only if the bad one was dropped."""
    sink = stack.service("tcp-sink")
    peer, me, ip = addresses(plan, family)
    port = random.randint(20000, 60000)
    bad = ip(src=peer, dst=me) / TCP(sport=port, dport=sink.port, flags="S", seq=1000)
    wire.send(with_checksum(bad, TCP, wrong(ip(bytes(bad))[TCP].chksum)))
    wire.send(ip(src=peer, dst=me) / TCP(sport=port, dport=sink.port, flags="S", seq=5000))
    syn_ack = wire.expect(TCP(sport=sink.port, dport=port, flags="SA"), timeout=3)
    wire.send(ip(src=peer, dst=me) / TCP(sport=port, dport=sink.port, flags="R", seq=syn_ack[TCP].ack))
    assert syn_ack[TCP].ack == 5001, (
        f"a SYN with a wrong checksum was answered: {syn_ack.summary()} acknowledges seq {syn_ack[TCP].ack - 1}"
    )
