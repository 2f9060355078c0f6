"""ICMP echo over IPv4 and IPv6, neighbour resolution included.

The peer end has no kernel addresses: the stack can reply only after resolving the peer through
the Wire (ARP who-has / NDP neighbour solicitation), which the checks observe on the way.
"""

import pytest
from scapy.layers.l2 import Ether

from labkit.net.plan import FAMILIES
from labkit.packet.checksum import checksum_errors
from labkit.packet.testbench import IcmpEcho
from labkit.packet.testbench.neighbours import protocol, solicitation

PAYLOAD = b"labkit-echo-0123456789abcdef"

pytestmark = pytest.mark.varies_with("channels", "tx_checksum")


@pytest.mark.fresh  # the peer must not be resolved yet
@pytest.mark.needs("icmp")
@pytest.mark.parametrize("family", FAMILIES)
def test_echo_resolves_peer_and_replies(stack, wire, ends):
    if not stack.can(protocol(ends.peer)):
        pytest.skip(f"{stack.id} lacks capabilities: {protocol(ends.peer)}")
    echo = IcmpEcho(wire, ends, ident=0x1AB)
    echo.send(1, PAYLOAD)
    asked = wire.expect(solicitation(ends.peer), timeout=2)
    assert asked[Ether].src == stack.mac, f"the solicitation came from {asked[Ether].src}, the stack's MAC is {stack.mac}"
    reply = wire.expect(Ether(src=stack.mac, dst=wire.mac) / echo.reply(1, PAYLOAD), timeout=2)
    assert checksum_errors(reply) == [], f"bad checksums in the echo reply: {checksum_errors(reply)}"
