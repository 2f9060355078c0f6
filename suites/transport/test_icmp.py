"""ICMP as the stack's sockets see it: echo ("ping") sockets, the errors the stack sends, and
path MTU learnt from the errors it receives."""

import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6PacketTooBig
from scapy.packet import Packet, Raw

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES
from labkit.packet.checksum import checksum_errors
from labkit.packet.testbench import TcpConnection, UdpFlow
from labkit.stacks.agent import SocketCallError

from .support import error_quoting, ip_datagram

pytestmark = [pytest.mark.needs("icmp", "agent"), pytest.mark.varies_with(), pytest.mark.parametrize("family", FAMILIES)]

ECHO = {"ipv4": (8, 0), "ipv6": (128, 129)}  # (request, reply) types
PROTOCOL = {"ipv4": "icmp", "ipv6": "icmpv6"}
PATH_MTU = 1300  # what the Wire's error announces: below the link's 1500, above IPv6's 1280 minimum
MTU_OPTIONS = {"ipv4": ("IP_MTU_DISCOVER", "IP_MTU"), "ipv6": ("IPV6_MTU_DISCOVER", "IPV6_MTU")}
PMTUDISC_DO = 2  # IP_PMTUDISC_DO, IPV6_PMTUDISC_DO: never fragment locally, DF set (IPv4)


def echo_message(kind: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP / ICMPv6 echo message as a ping socket reads and writes it (no IP header)."""
    return struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload


@pytest.mark.changes("sysctls")
def test_an_echo_socket_sends_requests_and_delivers_replies(stack, agent, wire, ends):
    """An unprivileged ICMP echo socket (SOCK_DGRAM, IPPROTO_ICMP / ICMPV6, Linux's "ping
    socket") sends the echo request it is given with its own identifier and checksum filled
    in, and delivers the echo reply that answers it (RFC 792, RFC 4443 4.1-4.2)."""
    if stack.can("sysctl"):
        stack.sysctl("net.ipv4.ping_group_range", "0 2147483647")  # Linux allows no group by default
    request_type, reply_type = ECHO[ends.family]
    sock = agent.socket(ends.family, "dgram", PROTOCOL[ends.family])
    seq, payload = random.randint(1, 0xFFFF), b"labkit-ping-0123456789"

    sock.sendto(echo_message(request_type, 0, seq, payload), ends.peer, 0)
    ident = sock.port  # a ping socket's "port" is its echo identifier
    if ends.version == 4:
        template = ends.from_stack() / ICMP(type="echo-request", id=ident, seq=seq) / Raw(payload)
    else:
        template = ends.from_stack() / ICMPv6EchoRequest(id=ident, seq=seq, data=payload)
    request = wire.expect(template, timeout=2)
    assert checksum_errors(request) == [], f"bad checksums in the echo request: {checksum_errors(request)}"

    if ends.version == 4:
        reply = ends.to_stack() / ICMP(type="echo-reply", id=ident, seq=seq) / Raw(payload)
    else:
        reply = ends.to_stack() / ICMPv6EchoReply(id=ident, seq=seq, data=payload)
    wire.send(reply)
    try:
        data, peer = sock.recvfrom(200, timeout=2)
    except SocketCallError as exc:
        raise AssertionError(f"the echo socket delivered no reply ({exc.errno}); the Wire answered its request") from None
    assert peer[0] == ends.peer, f"the reply came from {peer[0]}; the Wire sent it from {ends.peer}"
    got_type, _, _, got_ident, got_seq = struct.unpack("!BBHHH", data[:8])
    assert (got_type, got_ident, got_seq, data[8:]) == (reply_type, ident, seq, payload), (
        f"the echo socket read type {got_type} id {got_ident} seq {got_seq} data {data[8:]!r}; "
        f"want the reply: type {reply_type} id {ident} seq {seq} data {payload!r}"
    )


def test_a_datagram_to_a_closed_port_gets_port_unreachable(agent, wire, ends):
    """A UDP datagram for a port nobody listens on is answered with destination unreachable /
    port unreachable (RFC 1122 4.1.3.1, RFC 4443 3.1) quoting as much of it as fits (at least
    the IP header and 8 bytes, RFC 792; as much as fits in 1280 bytes, RFC 4443 2.4(c))."""
    closed = agent.socket(ends.family, "dgram")
    _, port = closed.bind("", 0)
    closed.close()  # a port the stack surely does not listen on
    sent = UdpFlow(wire, ends, port=port).send(b"nobody-listens-" + bytes(range(48)))
    original = ip_datagram(sent)

    if ends.version == 4:
        template = ends.from_stack() / ICMP(type=3, code=3)
        header = 20
    else:
        template = ends.from_stack() / ICMPv6DestUnreach(code=4)
        header = 40
    try:
        error = wire.expect(template, timeout=2)
    except AssertionError as exc:
        raise AssertionError(f"a datagram to closed port {port} got no port unreachable:\n{exc}") from None
    assert checksum_errors(error) == [], f"bad checksums in the port unreachable: {checksum_errors(error)}"
    whole = ip_datagram(error)
    quote = whole[header + 8 :]
    assert len(quote) >= header + 8, f"the error quotes {len(quote)} bytes; want at least the IP header and 8 bytes"
    assert quote == original[: len(quote)], (
        f"the error quotes {quote[: header + 8].hex()}...; the datagram began {original[: header + 8].hex()}"
    )
    assert len(quote) == len(original), f"the error quotes {len(quote)} of the datagram's {len(original)} bytes; all of it fits"


def too_big(ends, offending: Packet) -> Packet:
    """The Wire's fragmentation needed (IPv4, RFC 1191) / packet too big (IPv6, RFC 8201) for the
    stack's datagram `offending`, announcing PATH_MTU; quoting as much as an error may carry
    (576 bytes in all for IPv4, RFC 1812 4.3.2.3; 1280 for IPv6, RFC 4443 2.4(c))."""
    limit = 576 - 28 if ends.version == 4 else 1280 - 48
    return error_quoting(ends, offending, ICMP(type=3, code=4, nexthopmtu=PATH_MTU), ICMPv6PacketTooBig(mtu=PATH_MTU), limit)


def udp_towards_a_smaller_path(agent, wire, ends):
    """A UDP socket of the agent's with PMTUDISC_DO, connected to the Wire, whose first datagram
    the Wire has answered with a too-big error: (socket, flow, the MTU option's name)."""
    discover, mtu_option = MTU_OPTIONS[ends.family]
    sock = agent.socket(ends.family, "dgram")
    sock.setsockopt(discover, PMTUDISC_DO)
    peer_port = random.randint(20000, 60000)
    sock.connect(ends.peer, peer_port)
    flow = UdpFlow(wire, ends, port=sock.port, local_port=peer_port)
    sock.send(b"x" * 1400)  # fits the link (1500), not the path the Wire is about to announce
    probe = flow.expect(timeout=2)
    if ends.version == 4:
        assert probe[IP].flags.DF, "with IP_PMTUDISC_DO the datagram left without DF"
    wire.send(too_big(ends, probe))
    # Taken in asynchronously; on a connected socket Linux raises EMSGSIZE for it: wait for that
    # (bounded), then clear it, so what follows speaks for the path MTU alone.
    sock.poll(("POLLERR",), timeout=2)
    sock.getsockopt("SO_ERROR")
    return sock, flow, mtu_option


@pytest.mark.changes("routes")  # the path MTU stays cached for the peer (Linux: 10 minutes)
def test_a_too_big_error_refuses_larger_datagrams_on_a_connected_udp_socket(agent, wire, ends):
    """A too-big error from the path lowers the path MTU towards that destination (RFC 1191,
    RFC 8201): under PMTUDISC_DO a datagram that no longer fits is refused with EMSGSIZE (ip(7),
    ipv6(7)), and one that fits still leaves whole."""
    sock, flow, _ = udp_towards_a_smaller_path(agent, wire, ends)
    header = 20 + 8 if ends.version == 4 else 40 + 8
    try:
        sock.send(b"x" * (PATH_MTU - header + 1))
    except SocketCallError as exc:
        assert exc.errno == "EMSGSIZE", f"a datagram one byte over the path MTU failed with {exc.errno}; want EMSGSIZE"
    else:
        leaked = flow.expect(timeout=2)
        raise AssertionError(
            f"a datagram one byte over the announced path MTU of {PATH_MTU} was sent ({len(ip_datagram(leaked))} bytes "
            "on the wire); want EMSGSIZE under PMTUDISC_DO"
        )
    fits = b"y" * (PATH_MTU - header)
    sock.send(fits)
    flow.expect(fits, timeout=2)


@pytest.mark.changes("routes")
def test_a_connected_udp_socket_reports_the_path_mtu(agent, wire, ends):
    """IP_MTU / IPV6_MTU on a connected socket give the path MTU the stack knows for its peer
    (ip(7), ipv6(7)): the link's MTU at first, then what a too-big error announced."""
    mtu_option = MTU_OPTIONS[ends.family][1]
    probe = agent.socket(ends.family, "dgram")
    probe.connect(ends.peer, 9)
    try:
        before = probe.getsockopt(mtu_option)
    except SocketCallError as exc:
        raise AssertionError(f"{mtu_option} on a connected socket failed with {exc.errno}; want the path MTU") from None
    assert before == 1500, f"{mtu_option} is {before} before any error; want the link's MTU, 1500"
    sock, _, _ = udp_towards_a_smaller_path(agent, wire, ends)
    after = sock.getsockopt(mtu_option)
    assert after == PATH_MTU, f"{mtu_option} is {after} after the error announced {PATH_MTU}"


@pytest.mark.changes("routes")
@pytest.mark.varies_with("gso")
def test_a_too_big_error_shrinks_the_tcp_segments_that_follow(stack, accepted, wire, ends):
    """A too-big error about a TCP segment lowers the connection's segment size at once (RFC 1191
    6.4, RFC 8201 5.2, RFC 9293 3.7.3): the bytes it carried are sent again in segments that fit
    the announced MTU."""
    if stack.options.get("gso"):
        pytest.skip(f"{stack.id} hands the link GSO super-frames: the Wire cannot tell the segment size inside one")
    conn, sock = accepted()
    sock.send(b"a" * 4000)
    first = conn.expect(timeout=2)
    start = int(first[TCP].seq)
    wire.send(too_big(ends, first))

    try:
        again = conn.expect(seq=start, timeout=2)
    except ExpectTimeout as exc:
        raise AssertionError(
            f"after the too-big error the stack did not send the first bytes (seq {start}) again:\n{exc}"
        ) from None
    size = len(ip_datagram(again))
    assert size <= PATH_MTU, (
        f"the first bytes were sent again in a {size}-byte packet after the path announced an MTU of {PATH_MTU}"
    )


# (ICMP code, ICMPv6 code, the errno connect ends with) of destination unreachable
UNREACHABLE = {"host": (1, 3, "EHOSTUNREACH"), "network": (0, 0, "ENETUNREACH")}


@pytest.mark.parametrize("unreachable", list(UNREACHABLE))
def test_destination_unreachable_fails_a_tcp_connect(agent, wire, ends, unreachable):
    """A host / network unreachable about the SYN ends a connect in SYN-SENT at once with
    EHOSTUNREACH / ENETUNREACH (Linux aborts a connection in SYN-SENT on it; RFC 1122 4.2.3.9
    allows it) and forgets the connection: a late SYN-ACK for it gets an RST."""
    code4, code6, want = UNREACHABLE[unreachable]
    sock = agent.socket(ends.family, "stream")
    conn = TcpConnection(wire, ends, port=None)
    pending = sock.begin_connect(ends.peer, conn.local_port, timeout=3)
    syn = conn.expect(flags="S", timeout=2)
    wire.send(error_quoting(ends, syn, ICMP(type=3, code=code4), ICMPv6DestUnreach(code=code6)))

    got = pending.errno()
    assert got == want, f"connect ended with {got or 'success'} after {unreachable} unreachable; want {want}"
    conn.send(flags="SA")  # the answer, too late
    try:
        conn.expect(flags="R", timeout=2)
    except ExpectTimeout as exc:
        raise AssertionError(f"a SYN-ACK for the failed connect got no RST: the stack kept the connection:\n{exc}") from None
