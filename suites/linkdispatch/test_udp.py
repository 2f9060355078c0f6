"""UDP: a datagram from the wire reaches a service inside the stack, and the reply is well formed."""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from labkit.packet.checksum import checksum_errors, finish_partial

PAYLOAD = b"labkit-udp-\x00\x01\x02\xfe\xff-end"


@pytest.mark.needs("udp", "services")
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_datagram_reaches_service_and_reply_checksum_is_valid(stack, wire, plan, family):
    if not stack.can(family):
        pytest.skip(f"{stack.id} lacks {family}")
    ip = IP if family == "ipv4" else IPv6
    peer, me = (plan.peer4, plan.stack4) if family == "ipv4" else (plan.peer6, plan.stack6)
    echo = stack.service("udp-echo", port=7)

    wire.send(ip(src=peer, dst=me) / UDP(sport=40007, dport=echo.port) / PAYLOAD)

    got = echo.wait_for(lambda e: e["event"] == "datagram", timeout=2)
    assert bytes.fromhex(got["data"]) == PAYLOAD, f"service received {got}"
    assert got["peer"] == [peer, 40007], f"service saw the datagram from {got['peer']}"
    frame = wire.expect_frame(
        Ether(src=stack.mac, dst=wire.mac) / ip(src=me, dst=peer) / UDP(sport=echo.port, dport=40007) / PAYLOAD, timeout=2
    )
    # With tx offload the stack leaves the checksum to the device: judge it as the device finishes it.
    reply = finish_partial(frame.packet) if frame.checksum_partial else frame.packet
    assert reply[UDP].chksum != 0, "UDP reply carries no checksum"
    assert checksum_errors(reply) == [], f"bad checksums in the reply (partial={frame.checksum_partial}): {checksum_errors(reply)}"
