"""What several transport check modules do the same way, kept in one place.

- TCP through a connection the Wire plays: the data a segment carries (`data_of`) and the
  exchange that settles the stack's RTT and RTO before a timer or window is measured (`warm_up`).
- UDP through the agent: a bound socket (`receiver`) and whether a datagram reached it (`arrived`).
- ICMP errors: an IP datagram's own bytes, as an error quotes them (`ip_datagram`), an error the
  Wire sends about a datagram of the stack's (`error_quoting`), and the fields of one the stack
  sent (`error_fields`, `pointer_of`).

Reading a stream socket exactly (`AgentSocket.recv_exactly`, `recv_now`) is the agent's own.
"""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

from labkit.net.plan import Endpoints
from labkit.packet.testbench import TcpConnection
from labkit.packet.testbench.tcp import payload_length
from labkit.stacks.agent import AgentSocket, SocketAgent, SocketCallError

SAMPLE = b"Sample Data"

# -- TCP --------------------------------------------------------------------------------------------


def data_of(pkt: Packet) -> bytes:
    """The data a TCP segment carries, without link padding."""
    return bytes(pkt[TCP].payload)[: payload_length(pkt)]


def warm_up(tcp: TcpConnection, sock: AgentSocket, *, then_ack: bool = False) -> None:
    """Nagle off and one exchange each way: the stack's RTT estimate rests on a data ACK too, not
    only the handshake's (RFC 6298 2.2-2.3), so its RTO sits at the 200 ms floor. `then_ack`: the
    Wire ends with a bare ACK, so its latest segment is one, as a later duplicate ACK will be."""
    sock.setsockopt("TCP_NODELAY", 1)
    sock.send(SAMPLE)
    tcp.expect(payload=SAMPLE, timeout=2.0)
    tcp.send(SAMPLE)
    tcp.expect(flags="A", timeout=2.0)
    assert sock.recv(len(SAMPLE)) == SAMPLE
    if then_ack:
        tcp.send(flags="A")


# -- UDP --------------------------------------------------------------------------------------------


def receiver(agent: SocketAgent, ends: Endpoints) -> AgentSocket:
    """A UDP socket of the agent's, bound to a port of the stack's choosing."""
    sock = agent.socket(ends.family, "dgram")
    sock.bind(port=0)
    return sock


def arrived(sock: AgentSocket, timeout: float) -> bytes | None:
    """The next datagram the socket holds, or None if none came within `timeout` (0: none is
    queued now)."""
    try:
        if timeout == 0:
            return sock.recvfrom(flags=("MSG_DONTWAIT",))[0]
        return sock.recvfrom(timeout=timeout)[0]
    except SocketCallError as exc:
        if exc.errno in ("TIMEOUT", "EAGAIN"):
            return None
        raise


# -- ICMP errors ------------------------------------------------------------------------------------


def ip_datagram(pkt: Packet) -> bytes:
    """The IP datagram in `pkt` as sent: its own bytes, without link padding (what an ICMP error
    about it quotes)."""
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    ip = type(ip)(bytes(ip))  # built: lengths filled in
    size = int(ip.len) if isinstance(ip, IP) else 40 + int(ip.plen)
    return bytes(ip)[:size]


def error_quoting(ends: Endpoints, offending: Packet, icmp: Packet, icmpv6: Packet, limit: int | None = None) -> Packet:
    """The Wire's ICMP error (`icmp` for IPv4, `icmpv6` for IPv6) about the stack's datagram
    `offending`, quoting it whole or its first `limit` bytes."""
    return ends.to_stack() / (icmp if ends.version == 4 else icmpv6) / Raw(ip_datagram(offending)[:limit])


def error_fields(ends: Endpoints, pkt: Packet) -> tuple[int, int, bytes, bytes]:
    """(type, code, the 4 type-specific bytes, the quoted packet) of an ICMP(v6) error."""
    ip = pkt[ends.ip]
    raw = bytes(ip)
    body = raw[ip.ihl * 4 : ip.len] if ends.version == 4 else raw[40 : 40 + ip.plen]
    return body[0], body[1], body[4:8], body[8:]


def pointer_of(ends: Endpoints, pkt: Packet) -> int:
    """A parameter problem's pointer: one byte in ICMP (RFC 792), 32 bits in ICMPv6 (RFC 4443)."""
    rest = error_fields(ends, pkt)[2]
    return rest[0] if ends.version == 4 else int.from_bytes(rest, "big")
