"""ICMP echo over IPv4 and IPv6, neighbour resolution included.

The peer end has no kernel addresses: the stack can reply only after resolving the peer through
the Wire (ARP who-has / NDP neighbour solicitation), which the checks observe on the way.
"""

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether

from labkit.packet.checksum import checksum_errors

PAYLOAD = b"labkit-echo-0123456789abcdef"


@pytest.mark.fresh  # the peer must not be resolved yet
@pytest.mark.needs("icmp", "ipv4", "arp")
def test_echo_ipv4_resolves_peer_and_replies(stack, wire, plan):
    wire.send(IP(src=plan.peer4, dst=plan.stack4) / ICMP(type="echo-request", id=0x1AB, seq=1) / PAYLOAD)
    wire.expect(ARP(op="who-has", pdst=plan.peer4), timeout=2)
    reply = wire.expect(
        Ether(src=stack.mac, dst=wire.mac)
        / IP(src=plan.stack4, dst=plan.peer4)
        / ICMP(type="echo-reply", id=0x1AB, seq=1)
        / PAYLOAD,
        timeout=2,
    )
    assert checksum_errors(reply) == [], f"bad checksums in the echo reply: {checksum_errors(reply)}"


@pytest.mark.fresh
@pytest.mark.needs("icmp", "ipv6", "ndp")
def test_echo_ipv6_resolves_peer_and_replies(stack, wire, plan):
    wire.send(IPv6(src=plan.peer6, dst=plan.stack6) / ICMPv6EchoRequest(id=0x1AB, seq=1, data=PAYLOAD))
    ns = wire.expect(IPv6() / ICMPv6ND_NS(tgt=plan.peer6), timeout=2)
    assert ns[Ether].src == stack.mac
    reply = wire.expect(
        Ether(src=stack.mac, dst=wire.mac) / IPv6(src=plan.stack6, dst=plan.peer6) / ICMPv6EchoReply(id=0x1AB, seq=1, data=PAYLOAD),
        timeout=2,
    )
    assert checksum_errors(reply) == [], f"bad checksums in the echo reply: {checksum_errors(reply)}"
