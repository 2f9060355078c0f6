"""The transport suite: TCP, UDP, ICMP and IP as the stack's sockets see them and the wire shows them.

Every check has two sides. The socket agent inside the stack (`agent`, labkit.agent) is the
application: it listens, connects, sets options, reads and writes. The Wire is the peer: it
plays the other end frame by frame with the testbench (`TcpConnection`, `UdpFlow`), so a check
can send what no well-behaved peer sends and see exactly what the stack answers. Both sides are
asserted: what the application got, and what went over the wire.

Every check of a stack whose applications sit on top of it (the kernel, gVisor) needs the
`agent` capability, also one that only sends from the Wire. A tap stack (slirp4netns, pasta) is
the far side of a container's own kernel: no application holds its sockets, it holds them itself
on the host's side. Its own TCP, UDP and ICMP face the Wire on tap0 and are checked there, with
the container played by the Wire (`guest`) and the lab's outside namespace behind the stack
(`outside`): the `test_tap_*.py` modules, which need the `outside` capability instead.

The checks depend on none of the link options (channels, GSO, checksum offload, qdisc: the
linkdispatch suite covers those): each module says `pytestmark = pytest.mark.varies_with()`, so
they run on each stack's default variant; a check whose outcome does depend on one names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from labkit.net.plan import Endpoints
from labkit.packet.testbench import TcpConnection
from labkit.packet.wire import Wire
from labkit.stacks.agent import AgentSocket, SocketAgent

Pair = tuple[TcpConnection, AgentSocket]


@pytest.fixture
def accepted(agent: SocketAgent, wire: Wire, ends: Endpoints) -> Callable[..., Pair]:
    """`accepted(**conn)`: the Wire opens a connection to a listener of the agent's and the
    agent accepts it. Returns (the Wire's TcpConnection, the agent's accepted socket);
    `conn` are TcpConnection's options (window, mss, options, wscale), `listen` the listener's
    socket options (SO_RCVBUF=...), set before it listens."""

    def make(listen: dict[str, int] | None = None, **conn: Any) -> Pair:
        listener = agent.listener(ends.family, **(listen or {}))
        tcp = TcpConnection(wire, ends, port=listener.port, **conn)
        tcp.connect()
        return tcp, listener.accept()

    return make


@pytest.fixture
def connected(agent: SocketAgent, wire: Wire, ends: Endpoints) -> Callable[..., Pair]:
    """`connected(**conn)`: the agent connects to the Wire, which answers as a listening peer.
    Returns (the Wire's TcpConnection, the agent's connected socket); `sockopts` are set on the
    agent's socket before it connects."""

    def make(sockopts: dict[str, int] | None = None, port: int = 0, **conn: Any) -> Pair:
        sock = agent.socket(ends.family, "stream")
        for name, value in (sockopts or {}).items():
            sock.setsockopt(name, value)
        tcp = TcpConnection(wire, ends, port=None, local_port=port or None, **conn)
        pending = sock.begin_connect(ends.peer, tcp.local_port)
        tcp.accept()
        pending.result()
        return tcp, sock

    return make
