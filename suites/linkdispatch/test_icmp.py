"""ICMP echo over IPv4 and IPv6, neighbour resolution included.

The peer end has no kernel addresses: the stack can reply only after resolving the peer through
the Wire (ARP who-has / NDP neighbour solicitation), which the checks observe on the way.
"""

import pytest
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether

from labkit.net.plan import FAMILIES
from labkit.packet.checksum import checksum_errors
from labkit.packet.testbench import IcmpEcho

PAYLOAD = b"labkit-echo-0123456789abcdef"

pytestmark = pytest.mark.varies_with("channels", "tx_checksum")


def resolution(ends):
    """What the stack asks before it can answer the peer: ARP who-has, or an NDP solicitation."""
    return ARP(op="who-has", pdst=ends.peer) if ends.version == 4 else IPv6() / ICMPv6ND_NS(tgt=ends.peer)


@pytest.mark.fresh  # the peer must not be resolved yet
@pytest.mark.needs("icmp")
@pytest.mark.parametrize("family", FAMILIES)
def test_echo_resolves_peer_and_replies(stack, wire, ends):
    if not stack.can("arp" if ends.version == 4 else "ndp"):
        pytest.skip(f"{stack.id} lacks capabilities: {'arp' if ends.version == 4 else 'ndp'}")
    echo = IcmpEcho(wire, ends, ident=0x1AB)
    echo.send(1, PAYLOAD)
    asked = wire.expect(resolution(ends), timeout=2)
    assert asked[Ether].src == stack.mac, f"the solicitation came from {asked[Ether].src}, the stack's MAC is {stack.mac}"
    reply = wire.expect(Ether(src=stack.mac, dst=wire.mac) / echo.reply(1, PAYLOAD), timeout=2)
    assert checksum_errors(reply) == [], f"bad checksums in the echo reply: {checksum_errors(reply)}"
