"""The testbench: flows and connections the Wire plays against the stack, v4 and v6 behind one call.

`TcpConnection` (active and passive open, seq/ack/window and negotiated options tracked, send,
expect relative to the state), `UdpFlow`, `IcmpEcho`, and `NumberedFlows` for many-flow dispatch
checks. Each takes `plan.endpoints(family)`. `Guest` is the container the Wire plays in front of
a tap stack (`guest.towards(remote)` are the endpoints of its flows).
"""

from labkit.packet.testbench.flows import IcmpEcho, NumberedFlows, UdpFlow
from labkit.packet.testbench.guest import Guest, announce
from labkit.packet.testbench.tcp import Negotiated, TcpConnection

__all__ = ["Guest", "IcmpEcho", "Negotiated", "NumberedFlows", "TcpConnection", "UdpFlow", "announce"]
