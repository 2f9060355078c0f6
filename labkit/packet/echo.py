"""Does an address answer? An echo request to it, and one to an address known to answer.

Silence alone says nothing (the stack may be deaf), so the stack's own address is asked too,
after it: once its reply is in, the stack was listening. The two requests are of different flows
(a fanout hash over addresses may put them on different channels of a stack), so the first one's
reply may trail the second's; it is waited for a bounded `grace` more.
"""

from __future__ import annotations

from typing import Literal

from labkit.errors import ExpectTimeout, UnexpectedFrame
from labkit.net.plan import Endpoints
from labkit.packet.match import compare
from labkit.packet.testbench import IcmpEcho
from labkit.packet.wire import Wire

Outcome = Literal["answered", "silent", "deaf"]


def echo_outcome(wire: Wire, ends: Endpoints, address: str, timeout: float = 3.0, grace: float = 1.0) -> Outcome:
    """ "answered" or "silent" for an echo from the peer to `address`; "deaf" if the stack's own
    address (`ends.stack`) did not answer either (then the silence is not the address's)."""
    echo = IcmpEcho(wire, ends)
    echo.send(1, dst=address)
    echo.send(2)
    try:
        echo.expect_reply(2, timeout=timeout)
    except ExpectTimeout:
        return "deaf"
    wanted = echo.reply(1, src=address)
    if any(not f.outgoing and compare(wanted, f.packet).matched for f in wire.frames):
        return "answered"
    try:
        wire.expect_none(wanted, timeout=grace)
    except UnexpectedFrame:
        return "answered"
    return "silent"
