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

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.packet import Packet

from labkit.net.plan import FAMILIES
from labkit.packet.checksum import checksum_errors, finish_partial
from labkit.packet.match import compare
from labkit.packet.testbench import IcmpEcho, TcpConnection, UdpFlow

pytestmark = pytest.mark.varies_with("channels", "tx_checksum", "rx_checksum", "gso", "software_gso")
FAMILY = pytest.mark.parametrize("family", FAMILIES)


def wrong(value: int) -> int:
    return (value + 0x1111) & 0xFFFF or 1


def spoiled(pkt: Packet, layer: type[Packet], value: int | None = None) -> Packet:
    """`pkt` as built, the checksum of `layer` set to `value` (default: a wrong one), all others right."""
    built = pkt.__class__(bytes(pkt))
    field = "cksum" if "cksum" in built[layer].fields else "chksum"
    setattr(built[layer], field, wrong(getattr(built[layer], field)) if value is None else value)
    return built


def delivered(service, payload: bytes) -> list[dict]:
    return [e for e in service.events if e["event"] == "datagram" and bytes.fromhex(e.get("data", "")) == payload]


def seen(wire, template) -> list:
    wire.drain()  # read what is queued; everything stays in wire.frames
    return [f.packet for f in wire.frames if not f.outgoing and compare(template, f.packet).matched]


def bad_then_good(service, flow: UdpFlow, bad: Packet, what: str) -> None:
    """Send `bad` (payload b"bad") then a good datagram of the same flow; only the good one may arrive."""
    flow.wire.send(bad)
    flow.send(b"good")
    service.wait_for(lambda e: e["event"] == "datagram" and bytes.fromhex(e.get("data", "")) == b"good", timeout=3)
    assert not delivered(service, b"bad"), f"{what} was delivered to the service"
    assert not seen(flow.wire, UDP() / b"bad"), f"{what} was echoed back"


@pytest.mark.needs("udp", "services")
@FAMILY
def test_udp_with_a_wrong_checksum_is_dropped(stack, wire, ends):
    echo = stack.service("udp-echo")
    flow = UdpFlow(wire, ends, port=echo.port, local_port=40123)
    bad_then_good(echo, flow, spoiled(flow.datagram(b"bad"), UDP), "a UDP datagram with a wrong checksum")


@pytest.mark.needs("udp", "services", "ipv4")
def test_udp_without_checksum_is_accepted_on_ipv4(stack, wire, plan):
    echo = stack.service("udp-echo")
    flow = UdpFlow(wire, plan.endpoints("ipv4"), port=echo.port, local_port=40123)
    wire.send(spoiled(flow.datagram(b"labkit-csum"), UDP, 0))
    got = echo.wait_for(lambda e: e["event"] == "datagram", timeout=2)
    assert bytes.fromhex(got["data"]) == b"labkit-csum"


@pytest.mark.needs("udp", "services", "ipv6")
def test_udp_without_checksum_is_dropped_on_ipv6(stack, wire, plan):
    echo = stack.service("udp-echo")
    flow = UdpFlow(wire, plan.endpoints("ipv6"), port=echo.port, local_port=40123)
    bad_then_good(echo, flow, spoiled(flow.datagram(b"bad"), UDP, 0), "an IPv6 UDP datagram with checksum 0")


@pytest.mark.needs("udp", "services")
@FAMILY
def test_udp_checksum_that_computes_to_zero_is_sent_as_ffff(stack, wire, ends):
    echo = stack.service("udp-echo")
    flow = UdpFlow(wire, ends, port=echo.port, local_port=40124)
    # Two trailing bytes chosen so the datagram's checksum computes to 0; the echo's too, since
    # swapping addresses and ports leaves the sum unchanged. With those bytes at 0 the checksum
    # is the complement of the sum, so putting it there makes the sum 0xFFFF.
    prefix = b"labkit-zero\x00"
    fill = ends.ip(bytes(flow.datagram(prefix + b"\x00\x00")))[UDP].chksum
    payload = prefix + fill.to_bytes(2, "big")
    datagram = flow.datagram(payload, chksum=0xFFFF)
    assert checksum_errors(ends.ip(bytes(datagram))) == [], "the lab built a wrong datagram"
    wire.send(datagram)
    frame = flow.expect_frame(payload, timeout=2)
    reply = finish_partial(frame.packet) if frame.checksum_partial else frame.packet
    assert reply[UDP].chksum == 0xFFFF, (
        f"the reply's checksum computes to 0 and must be sent as 0xFFFF; got {reply[UDP].chksum:#06x} (partial={frame.checksum_partial})"
    )


def _echo_with_a_wrong_checksum_is_not_answered(wire, ends, layer: type[Packet], what: str) -> None:
    ping = IcmpEcho(wire, ends)
    wire.send(spoiled(ping.request(1, b"labkit"), layer))
    ping.send(2, b"labkit")
    ping.expect_reply(2, timeout=3)
    answered = seen(wire, ping.reply(1))
    assert not answered, f"an echo request with a wrong {what} checksum was answered: {answered[0].summary()}"


@pytest.mark.needs("icmp", "ipv4")
@pytest.mark.parametrize("broken", ["IP", "ICMP"])
def test_icmp_echo_with_a_wrong_checksum_is_not_answered(stack, wire, plan, broken):
    _echo_with_a_wrong_checksum_is_not_answered(wire, plan.endpoints("ipv4"), IP if broken == "IP" else ICMP, broken)


@pytest.mark.needs("icmp", "ipv6")
def test_icmpv6_echo_with_a_wrong_checksum_is_not_answered(stack, wire, plan):
    _echo_with_a_wrong_checksum_is_not_answered(wire, plan.endpoints("ipv6"), ICMPv6EchoRequest, "ICMPv6")


@pytest.mark.needs("tcp", "services")
@FAMILY
def test_tcp_syn_with_a_wrong_checksum_is_not_answered(stack, wire, ends):
    """Both SYNs are of one flow, so a stack with several channels reads them on the same one,
    in order; they differ in their sequence number. The first SYN-ACK tells which one the stack
    took: it acknowledges the good one's only if the bad one was dropped."""
    sink = stack.service("tcp-sink")
    conn = TcpConnection(wire, ends, port=sink.port, isn=5000, options=())
    wire.send(spoiled(conn.segment(flags="S", seq=1000), TCP))
    conn.send(flags="S")
    syn_ack = conn.expect(flags="SA", ack=None, timeout=3)
    conn.reset()
    assert syn_ack[TCP].ack == 5001, (
        f"a SYN with a wrong checksum was answered: {syn_ack.summary()} acknowledges seq {syn_ack[TCP].ack - 1}"
    )
