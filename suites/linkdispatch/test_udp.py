"""UDP: a datagram from the wire reaches a service inside the stack, and the reply is well formed."""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from labkit.checksum import checksum_errors

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
    assert not frame.checksum_partial, "reply left CHECKSUM_PARTIAL for a device to finish; its checksum is not final"
    assert frame.packet[UDP].chksum != 0, "UDP reply carries no checksum"
    assert checksum_errors(frame.packet) == [], f"bad checksums in the reply: {checksum_errors(frame.packet)}"
