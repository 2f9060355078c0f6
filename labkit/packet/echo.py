"""Does an address answer? An echo request to it, and one to an address known to answer.

Silence alone says nothing (the stack may be deaf), so the known address is asked too, after
it: once its reply is in, the stack was listening. The two requests are of different flows (a
fanout hash over addresses may put them on different channels of a stack), so the first one's
reply may trail the second's; it is waited for a bounded `grace` more.
"""

from __future__ import annotations

import random
from typing import Literal

from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from labkit.errors import UnexpectedFrame
from labkit.packet.match import compare
from labkit.packet.wire import Wire

Outcome = Literal["answered", "silent", "deaf"]


def echo_request(src: str, dst: str, ident: int, seq: int):
    if ":" in dst:
        return IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=ident, seq=seq)
    return IP(src=src, dst=dst) / ICMP(id=ident, seq=seq)


def echo_reply(src: str, ident: int, seq: int):
    if ":" in src:
        return IPv6(src=src) / ICMPv6EchoReply(id=ident, seq=seq)
    return IP(src=src) / ICMP(type="echo-reply", id=ident, seq=seq)


def echo_outcome(wire: Wire, peer: str, address: str, control: str, timeout: float = 3.0, grace: float = 1.0) -> Outcome:
    """ "answered" or "silent" for an echo from `peer` to `address`; "deaf" if `control` did not
    answer either (then the silence is not the address's)."""
    ident = random.randint(1, 0xFFFF)
    wire.send(echo_request(peer, address, ident, 1))
    wire.send(echo_request(peer, control, ident, 2))
    try:
        wire.expect(echo_reply(control, ident, 2), timeout=timeout)
    except AssertionError:
        return "deaf"
    wanted = echo_reply(address, ident, 1)
    if any(not f.outgoing and compare(wanted, f.packet).matched for f in wire.frames):
        return "answered"
    try:
        wire.expect_none(wanted, timeout=grace)
    except UnexpectedFrame:
        return "answered"
    return "silent"
