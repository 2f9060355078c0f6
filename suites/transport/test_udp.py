"""UDP through the stack's sockets: addressing, empty datagrams, and ICMP errors reaching the socket."""

import random

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6TimeExceeded, IPv6
from scapy.packet import Packet

from labkit.net.plan import FAMILIES
from labkit.packet.checksum import checksum_errors
from labkit.packet.testbench import UdpFlow
from labkit.stacks.agent import SocketCallError

from .support import error_quoting

pytestmark = [pytest.mark.needs("udp", "agent"), pytest.mark.varies_with()]
BOTH = pytest.mark.parametrize("family", FAMILIES)

RECVERR = {"ipv4": "IP_RECVERR", "ipv6": "IPV6_RECVERR"}
# (type, code) of port unreachable, per family
PORT_UNREACHABLE = {"ipv4": (3, 3), "ipv6": (1, 4)}
MULTICAST_SOURCE = {"ipv4": "224.0.0.1", "ipv6": "ff02::1"}


def icmp_error(ends, offending: Packet, kind: str) -> Packet:
    """The Wire's ICMP error about the stack's datagram `offending`: "port" (port unreachable)
    or "ttl" (time / hop limit exceeded in transit)."""
    if kind == "port":
        return error_quoting(ends, offending, ICMP(type=3, code=3), ICMPv6DestUnreach(code=4))
    return error_quoting(ends, offending, ICMP(type=11, code=0), ICMPv6TimeExceeded(code=0))


def connected_socket(agent, wire, ends, **sockopts):
    """A UDP socket of the agent's connected to a port of the Wire's, and the datagram it sent
    there as the Wire saw it."""
    sock = agent.socket(ends.family, "dgram")
    for name, value in sockopts.items():
        sock.setsockopt(name, value)
    peer_port = random.randint(20000, 60000)
    sock.connect(ends.peer, peer_port)
    flow = UdpFlow(wire, ends, port=sock.port, local_port=peer_port)
    sock.send(b"probe")
    return sock, flow, flow.expect(b"probe", timeout=2)


@BOTH
def test_a_socket_bound_to_the_any_address_receives_and_replies_from_the_stacks_address(agent, wire, ends):
    """A socket bound to 0.0.0.0 / :: takes a datagram sent to any of the stack's addresses, and
    its reply leaves from the address the datagram was sent to (RFC 1122 4.1.3.5)."""
    sock = agent.socket(ends.family, "dgram")
    addr, port = sock.bind("", 0)
    assert addr in ("0.0.0.0", "::"), f"bound to {addr}; want the any address"
    flow = UdpFlow(wire, ends, port=port)

    flow.send(b"to-any")
    data, peer = sock.recvfrom(100)
    assert data == b"to-any", f"the socket read {data!r}; the Wire sent b'to-any'"
    assert peer == [ends.peer, flow.local_port], (
        f"the datagram came from {peer}; the Wire sent it from {[ends.peer, flow.local_port]}"
    )

    sock.sendto(b"reply", ends.peer, flow.local_port)
    got = flow.expect(b"reply", timeout=2)  # the template asks for src = the stack's address
    ip = got[IP] if ends.version == 4 else got[IPv6]
    assert ip.src == ends.stack, f"the reply left from {ip.src}; want {ends.stack}"


@BOTH
def test_sendto_leaves_with_the_sockets_port_and_a_valid_checksum(agent, wire, ends):
    """An unbound socket's sendto picks an ephemeral port, and the datagram carries it, the
    destination port asked for, its length and a checksum that verifies (RFC 768; on IPv6 the
    checksum is mandatory, RFC 8200 8.1)."""
    sock = agent.socket(ends.family, "dgram")
    peer_port = random.randint(20000, 60000)
    payload = bytes(range(64)) + b"odd"  # an odd length: the checksum pads it

    sent = sock.sendto(payload, ends.peer, peer_port)
    assert sent == len(payload), f"sendto sent {sent} of {len(payload)} bytes"
    port = sock.port
    assert port != 0, "the socket has no port after sendto"
    got = UdpFlow(wire, ends, port=port, local_port=peer_port).expect(payload, timeout=2)
    assert got[UDP].len == 8 + len(payload), f"UDP length {got[UDP].len}; want {8 + len(payload)}"
    assert got[UDP].chksum != 0, "the datagram carries no checksum"
    assert checksum_errors(got) == [], f"bad checksums in the datagram: {checksum_errors(got)}"


@BOTH
def test_an_empty_datagram_is_sent_and_delivered(agent, wire, ends):
    """A UDP datagram may carry no data at all (RFC 768: length 8); sending one is not a no-op,
    and receiving one gives a read of zero bytes, not nothing."""
    sock = agent.socket(ends.family, "dgram")
    _, port = sock.bind("", 0)
    flow = UdpFlow(wire, ends, port=port)

    sock.sendto(b"", ends.peer, flow.local_port)
    try:
        got = flow.expect(timeout=2)
    except AssertionError as exc:
        raise AssertionError(f"the empty datagram the socket sent never reached the Wire:\n{exc}") from None
    assert got[UDP].len == 8, f"the empty datagram left with UDP length {got[UDP].len}; want 8"
    assert checksum_errors(got) == [], f"bad checksums in the empty datagram: {checksum_errors(got)}"

    flow.send(b"")
    data, peer = sock.recvfrom(100)
    assert (data, peer) == (b"", [ends.peer, flow.local_port]), f"the socket read {data!r} from {peer}; want b'' from the Wire"


@BOTH
def test_a_datagram_from_a_multicast_source_is_discarded(agent, wire, ends):
    """A multicast address is never a source (RFC 1122 3.2.1.3, RFC 4291 2.7): such a datagram is
    dropped, not delivered to the socket it is addressed to."""
    sock = agent.socket(ends.family, "dgram")
    _, port = sock.bind("", 0)
    flow = UdpFlow(wire, ends, port=port)
    bad = flow.datagram(b"from-multicast")
    bad[IP if ends.version == 4 else IPv6].src = MULTICAST_SOURCE[ends.family]
    # Wire.send refuses addresses outside the lab's ranges; a multicast source of the link's
    # own scope is not a destination anywhere, so the frame goes as bytes.
    wire.send(bytes(wire.ether() / bad))
    flow.send(b"from-peer")

    data, peer = sock.recvfrom(100)
    assert data == b"from-peer", (
        f"the socket read {data!r} from {peer}: a datagram from multicast {MULTICAST_SOURCE[ends.family]} was delivered"
    )
    left = sock.poll(("POLLIN",), timeout=0.3)
    if "POLLIN" in left:
        data, peer = sock.recvfrom(100, flags=("MSG_DONTWAIT",))
        raise AssertionError(f"the socket also read {data!r} from {peer}: a datagram from a multicast source was delivered")


@BOTH
@pytest.mark.parametrize("call", ["recv", "send"])
def test_port_unreachable_fails_the_next_call_on_a_connected_socket(agent, wire, ends, call):
    """RFC 1122 4.1.3.3: UDP passes ICMP errors up; Linux reports port unreachable on a
    connected socket as ECONNREFUSED on its next call, once, then the socket works again."""
    sock, flow, probe = connected_socket(agent, wire, ends)
    wire.send(icmp_error(ends, probe, "port"))

    sock.poll(("POLLERR",), timeout=2)  # the error is taken in asynchronously: wait for it (bounded)
    try:
        if call == "recv":
            got = sock.recv(100, timeout=2)
            outcome = f"read {got!r}"
        else:
            sock.send(b"again")
            outcome = "sent a datagram"
    except SocketCallError as exc:
        assert exc.errno == "ECONNREFUSED", f"{call} after port unreachable failed with {exc.errno}; want ECONNREFUSED"
    else:
        raise AssertionError(f"{call} after port unreachable {outcome}; want ECONNREFUSED")

    assert sock.getsockopt("SO_ERROR") == 0, "the error is still pending after it was reported"
    sock.send(b"after")
    flow.expect(b"after", timeout=2)


@BOTH
def test_port_unreachable_is_queued_with_its_origin_on_the_error_queue(agent, wire, ends):
    """With IP_RECVERR / IPV6_RECVERR the socket's error queue holds the ICMP error itself: errno,
    origin, type, code and the address of the node that sent it, SO_EE_OFFENDER (ip(7), ipv6(7))."""
    sock, _, probe = connected_socket(agent, wire, ends, **{RECVERR[ends.family]: 1})
    error = icmp_error(ends, probe, "port")
    router = ends.host(254)  # a filter on the path refusing it: the offender is not the peer
    error[IP if ends.version == 4 else IPv6].src = router
    wire.send(error)

    events = sock.poll(("POLLERR",), timeout=2)
    assert "POLLERR" in events, f"after port unreachable the socket polls {sorted(events)}; want POLLERR (its error queue holds it)"
    errors = sock.errors()
    icmp_type, code = PORT_UNREACHABLE[ends.family]
    want = {
        "errno": "ECONNREFUSED",
        "origin": "icmp" if ends.version == 4 else "icmp6",
        "type": icmp_type,
        "code": code,
        "offender": router,
    }
    assert len(errors) == 1, f"the error queue gave {errors}; want one error {want}"
    got = {key: errors[0][key] for key in want}
    assert got == want, f"the error queue gave {got}; want {want}"


@BOTH
def test_time_exceeded_does_not_fail_a_connected_socket(agent, wire, ends):
    """Time (hop limit) exceeded in transit is a soft error (RFC 1122 4.2.3.9 spirit, Linux's
    udp(7)): without IP_RECVERR it is not reported, and the socket's next read gets the datagram."""
    sock, flow, probe = connected_socket(agent, wire, ends)
    wire.send(icmp_error(ends, probe, "ttl"))
    flow.send(b"still-here")

    try:
        got = sock.recv(100, timeout=2)
    except SocketCallError as exc:
        raise AssertionError(
            f"after time exceeded the read failed with {exc.errno}; want the datagram the Wire sent next"
        ) from None
    assert got == b"still-here", f"the read gave {got!r}; want b'still-here'"
    assert sock.getsockopt("SO_ERROR") == 0, "time exceeded left an error pending on the socket"


@BOTH
def test_port_unreachable_does_not_fail_an_unconnected_socket(agent, wire, ends):
    """An unconnected socket may talk to many peers, so one peer's port unreachable is not
    reported to it (Linux, without IP_RECVERR): its next read gets the datagram that follows."""
    sock = agent.socket(ends.family, "dgram")
    _, port = sock.bind("", 0)
    flow = UdpFlow(wire, ends, port=port)
    sock.sendto(b"probe", ends.peer, flow.local_port)
    probe = flow.expect(b"probe", timeout=2)
    wire.send(icmp_error(ends, probe, "port"))
    flow.send(b"still-here")

    try:
        got = sock.recv(100, timeout=2)
    except SocketCallError as exc:
        raise AssertionError(f"after port unreachable the unconnected socket's read failed with {exc.errno}") from None
    assert got == b"still-here", f"the read gave {got!r}; want b'still-here'"
    assert sock.getsockopt("SO_ERROR") == 0, "port unreachable left an error pending on the unconnected socket"


@pytest.mark.parametrize("family", ["ipv4"])
def test_a_broadcast_reaches_sockets_bound_to_the_any_address_only(agent, wire, ends):
    """A datagram to the limited (255.255.255.255) or the subnet's broadcast address goes to a
    socket bound to the any address, not to one bound to the stack's unicast address, which
    gets the unicast datagrams for the port (RFC 1122 3.3.6, 4.1.3.5)."""
    anywhere = agent.socket(ends.family, "dgram")
    anywhere.setsockopt("SO_REUSEADDR", 1)
    _, port = anywhere.bind("", 0)
    unicast = agent.socket(ends.family, "dgram")
    unicast.setsockopt("SO_REUSEADDR", 1)
    unicast.bind(ends.stack, port)
    flow = UdpFlow(wire, ends, port=port)
    broadcasts = {"255.255.255.255": b"limited", str(ends.network.broadcast_address): b"directed"}

    for dst, payload in broadcasts.items():
        datagram = flow.datagram(payload)
        datagram[IP].dst = dst
        wire.send(wire.ether(dst="ff:ff:ff:ff:ff:ff") / datagram)
    flow.send(b"unicast")

    first = unicast.recv(100)
    assert first == b"unicast", f"the socket bound to {ends.stack} read {first!r} first; want b'unicast' (no broadcast)"
    got = [anywhere.recv(100) for _ in broadcasts]
    assert got == list(broadcasts.values()), (
        f"the socket bound to 0.0.0.0 read {got}; want the broadcasts {list(broadcasts.values())}"
    )
    assert "POLLIN" not in anywhere.poll(("POLLIN",), timeout=0.3), "the unicast datagram reached the socket bound to 0.0.0.0 too"
