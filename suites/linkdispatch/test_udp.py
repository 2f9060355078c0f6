"""UDP: a datagram from the wire reaches a service inside the stack, and the reply is well formed."""

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether

from labkit.net.plan import FAMILIES
from labkit.packet.checksum import checksum_errors, finish_partial
from labkit.packet.testbench import UdpFlow

PAYLOAD = b"labkit-udp-\x00\x01\x02\xfe\xff-end"

pytestmark = pytest.mark.varies_with("channels", "tx_checksum")


@pytest.mark.needs("udp", "services")
@pytest.mark.parametrize("family", FAMILIES)
def test_datagram_reaches_service_and_reply_checksum_is_valid(stack, wire, ends):
    echo = stack.service("udp-echo", port=7)
    flow = UdpFlow(wire, ends, port=echo.port, local_port=40007)

    flow.send(PAYLOAD)

    got = echo.wait_for(lambda e: e["event"] == "datagram", timeout=2)
    assert bytes.fromhex(got["data"]) == PAYLOAD, f"service received {got}"
    assert got["peer"] == [ends.peer, 40007], f"service saw the datagram from {got['peer']}"
    frame = flow.expect_frame(PAYLOAD, timeout=2)
    framed = (frame.packet[Ether].src, frame.packet[Ether].dst)
    assert framed == (stack.mac, wire.mac), f"reply framed {framed[0]} -> {framed[1]}, want {stack.mac} -> {wire.mac} (the peer's MAC)"
    # With tx offload the stack leaves the checksum to the device: judge it as the device finishes it.
    reply = finish_partial(frame.packet) if frame.checksum_partial else frame.packet
    assert reply[UDP].chksum != 0, "UDP reply carries no checksum"
    assert checksum_errors(reply) == [], f"bad checksums in the reply (partial={frame.checksum_partial}): {checksum_errors(reply)}"
