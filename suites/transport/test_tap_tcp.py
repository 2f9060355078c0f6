"""The tap stacks' own TCP facing the container: the Wire, as the container on tap0, opens
connections to the lab's outside services, and libslirp or passt answers them itself (its
handshake, its window, its segments) while its own host socket carries the stream on to the
outside. Through the connection testbench, so each check reads as the container's side of it:
the handshake and its options, the MSS for the tap's MTU, the window, a refused connection, a
large upload and download whose digests match at the service, the FIN in both directions, and
the address the outside sees."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
from scapy.layers.inet import TCP
from scapy.packet import Packet

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES, AddressPlan
from labkit.packet.testbench import TcpConnection
from labkit.packet.testbench.guest import Guest
from labkit.packet.testbench.tcp import options_of, payload_length, seq_add, seq_after
from labkit.packet.wire import Wire
from labkit.services import PATTERN  # what tcp-feed sends, over and over
from labkit.stacks.service import Service

pytestmark = [pytest.mark.needs("outside"), pytest.mark.varies_with(), pytest.mark.parametrize("family", FAMILIES)]

CONNECT_TIMEOUT = 5.0  # the stack answers the SYN once its own connect to the outside is through
TRANSFER = 256 * 1024  # bytes up and down: ~180 segments each way, a few seconds of scapy
TRANSFER_TIMEOUT = 60.0
SEGMENT = 1460  # the most the Wire puts in one segment (its MSS, what fits a 1500-byte frame)
EXTENSIONS = ("WScale", "SAckOK", "Timestamp")  # what a SYN-ACK may offer beyond the MSS
MSS_SLACK = 0.10  # how far below the link's MSS a stack may round the one it announces


def connection(wire: Wire, guest: Guest, port: int) -> TcpConnection:
    """A connection of the Wire's (the container's) to `port` of the outside."""
    return TcpConnection(wire, guest.towards(guest.outside), port=port)


def offered(syn_ack: Packet) -> str:
    """What a SYN-ACK offers, for the evidence: MSS and window, and which extensions it carries."""
    opts = options_of(syn_ack[TCP])
    extras = [f"{name}={opts[name]!r}" for name in EXTENSIONS if name in opts]
    return f"MSS={opts.get('MSS')} window={int(syn_ack[TCP].window)} " + (" ".join(extras) or "no extensions")


def syn_ack_to(conn: TcpConnection) -> Packet:
    """Send the SYN and take the stack's SYN-ACK (acknowledging anything: the check judges it).
    The stack answers once its own connect to the outside is through, hence the longer wait."""
    conn.send(flags="S")
    try:
        return conn.expect(flags="SA", ack=None, timeout=CONNECT_TIMEOUT)
    except ExpectTimeout as exc:
        raise AssertionError(f"no SYN-ACK from {conn.ends.stack} port {conn.port} within {CONNECT_TIMEOUT:g}s:\n{exc}") from None


def open_to(wire: Wire, guest: Guest, service: Service) -> tuple[TcpConnection, Packet]:
    """Connect the Wire to `service` (SYN, the stack's SYN-ACK, ACK); the connection and the SYN-ACK."""
    conn = connection(wire, guest, service.port)
    syn_ack = syn_ack_to(conn)
    conn.send(flags="A")
    return conn, syn_ack


def link_mss(plan: AddressPlan, family: str) -> int:
    """The largest segment a frame of the tap's MTU carries: less the IP and TCP headers."""
    return plan.mtu - (20 if family == "ipv4" else 40) - 20


def upload(conn: TcpConnection, data: bytes, timeout: float) -> None:
    """Send `data` as a sender keeps to the stack's window: segments of at most its MSS (and the
    Wire's), as many as the window it announced last allows, then wait for its ACKs. If no ACK
    moves the window within a second, everything unacknowledged is sent again (go-back-N), so a
    segment the stack dropped costs time, not the transfer."""
    chunk = min(conn.negotiated.mss or 536, SEGMENT) - (12 if conn.negotiated.timestamps else 0)
    start = conn.snd_nxt
    end = seq_add(start, len(data))
    deadline = time.monotonic() + timeout
    while seq_after(end, conn.snd_una):
        window = conn.their_window or 0
        while seq_after(end, conn.snd_nxt):
            sent = (conn.snd_nxt - start) % (1 << 32)
            in_flight = (conn.snd_nxt - conn.snd_una) % (1 << 32)
            n = min(chunk, len(data) - sent, window - in_flight)
            if n <= 0:
                break
            conn.send(data[sent : sent + n])
        left = deadline - time.monotonic()
        if left <= 0:
            acked = (conn.snd_una - start) % (1 << 32)
            raise AssertionError(f"the stack acknowledged {acked} of {len(data)} bytes within {timeout:g}s (window {window})")
        try:
            conn.expect(ack=None, timeout=min(1.0, left))  # any segment of the stack's: its ACKs
        except ExpectTimeout:
            conn.snd_nxt = conn.snd_una  # nothing moved: send it all again from the oldest byte unacknowledged


def download(conn: TcpConnection, size: int, timeout: float) -> tuple[bytes, bool]:
    """Take the stack's stream in order, acknowledging each segment, until `size` bytes and its
    FIN came (or the time is up): the bytes and whether the FIN came. A segment out of order is
    not taken; the stack sends it again."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    fin = False
    while not fin:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            seg = conn.expect(timeout=left)
        except ExpectTimeout:
            break
        length = payload_length(seg)
        data += bytes(seg[TCP].payload)[:length]
        fin = bool(int(seg[TCP].flags) & 0x01)
        if length or fin:
            conn.send(flags="A")
        if len(data) > size:
            break
    return bytes(data), fin


def sink_saw(sink: Service, data: bytes, timeout: float = 10.0) -> None:
    """The outside sink's account of the connection (its "closed" event) matches `data`, and
    the stream ended cleanly there (the Wire's FIN passed on as the end of it, not a reset)."""
    closed = sink.wait_for(lambda e: e["event"] == "closed", timeout)
    want = hashlib.sha256(data).hexdigest()
    assert (closed["len"], closed["sha256"]) == (len(data), want), (
        f"the outside sink received {closed['len']} bytes (sha256 {closed['sha256'][:16]}..., errno {closed.get('errno')}); "
        f"the Wire sent {len(data)} (sha256 {want[:16]}...)"
    )
    assert closed.get("errno") is None, f"the outside sink's read ended with errno {closed['errno']}, not the end of the stream"


def test_syn_gets_a_syn_ack_in_the_outsides_name(wire, guest, outside, record_property, family):
    """RFC 9293 3.5: the stack answers the container's SYN for the outside service, from the
    service's address and port, acknowledging the SYN's sequence number + 1 and announcing an
    MSS (RFC 9293 3.7.1: a SYN-ACK should carry one; libslirp and passt always do). Which of
    window scale, SACK-permitted and timestamps it offers is recorded, not judged: all three
    are the stack's choice."""
    echo = outside.service("tcp-echo")
    conn = connection(wire, guest, echo.port)

    syn_ack = syn_ack_to(conn)

    record_property("syn_ack_offers", offered(syn_ack))
    acked = (int(syn_ack[TCP].ack) - conn.iss) % (1 << 32)
    assert acked == 1, f"the SYN-ACK acknowledges ISN + {acked}; want ISN + 1 (it offers {offered(syn_ack)})"
    assert "MSS" in options_of(syn_ack[TCP]), f"the SYN-ACK announces no MSS (it offers {offered(syn_ack)})"
    conn.send(flags="A")
    echo.wait_for(lambda e: e["event"] == "accepted", CONNECT_TIMEOUT)
    conn.close()


@pytest.mark.varies_with("mtu")
def test_syn_ack_announces_the_mss_of_the_taps_mtu(wire, guest, outside, plan, family, record_property):
    """RFC 9293 3.7.1 (RFC 879): the MSS a stack announces is at most what its link carries, the
    tap's MTU less the IP and TCP headers (40 bytes on IPv4, 60 on IPv6), and it uses that link:
    rounding down (to a page, as passt does) is the stack's choice, but an MSS more than
    MSS_SLACK below the link's wastes the MTU it was given. For MTU 1500 and 65520."""
    echo = outside.service("tcp-echo")
    conn, syn_ack = open_to(wire, guest, echo)

    got = options_of(syn_ack[TCP]).get("MSS")
    most = link_mss(plan, guest.family)
    conn.close()
    record_property("syn_ack_mss", got)
    assert got is not None, f"the SYN-ACK carries no MSS option ({offered(syn_ack)})"
    assert got <= most, f"the SYN-ACK announces MSS {got}, more than the {most} the tap's MTU of {plan.mtu} carries"
    least = int(most * (1 - MSS_SLACK))
    assert got >= least, (
        f"the SYN-ACK announces MSS {got}: less than {least} ({MSS_SLACK:.0%} below the {most} the tap's MTU of {plan.mtu} carries)"
    )


def test_the_window_is_open_and_data_in_it_is_acknowledged(wire, guest, outside, family):
    """RFC 9293 3.8.6: the stack announces a window to send into, and takes data that fits it:
    the Wire sends a window's worth (up to 32 KiB) at once, without waiting, and the stack's
    ACK covers all of it; the sink outside receives it whole."""
    sink = outside.service("tcp-sink")
    conn, syn_ack = open_to(wire, guest, sink)
    window = conn.their_window or 0
    assert window > 0, f"the SYN-ACK announces a zero window ({offered(syn_ack)})"
    chunk = min(conn.negotiated.mss or 536, SEGMENT) - (12 if conn.negotiated.timestamps else 0)
    data = bytes(i % 251 for i in range(min(window, 32 * 1024)))

    for off in range(0, len(data), chunk):
        conn.send(data[off : off + chunk])

    try:
        conn.expect(ack=conn.snd_nxt, timeout=5.0)
    except ExpectTimeout as exc:
        raise AssertionError(
            f"the stack did not acknowledge the {len(data)} bytes of the {window}-byte window it announced:\n{exc}"
        ) from None
    conn.close()
    sink_saw(sink, data)


def test_syn_to_a_closed_outside_port_is_reset(wire, guest, outside, family):
    """RFC 9293 3.10.7.1: a SYN nobody listens for is refused. The stack learns of the refusal
    from its own connect (the outside's kernel resets it) and passes it on as an RST that
    acknowledges the SYN, so the container's connect fails at once with ECONNREFUSED (an RST in
    SYN-SENT counts only if its ACK acknowledges the SYN, RFC 9293 3.10.7.3)."""
    af = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    with outside.socket(af, socket.SOCK_STREAM) as closed:
        closed.bind((guest.outside, 0))  # bound, never listening: the port is taken and refuses
        conn = connection(wire, guest, closed.getsockname()[1])

        conn.send(flags="S")
        try:
            answer = conn.expect(timeout=CONNECT_TIMEOUT)
        except ExpectTimeout as exc:
            raise AssertionError(f"a SYN to a closed outside port got no answer within {CONNECT_TIMEOUT:g}s:\n{exc}") from None

    tcp = answer[TCP]
    flags = tcp.sprintf("%flags%")
    assert int(tcp.flags) & 0x04, f"a SYN to a closed outside port got {flags}; want an RST"
    assert int(tcp.flags) & 0x10, (
        f"the SYN got a bare RST (flags {flags}, seq {int(tcp.seq)}, no ACK bit): a client in SYN-SENT drops it, "
        "so its connect is not refused; want RST+ACK acknowledging the SYN"
    )
    assert int(tcp.ack) == conn.snd_nxt, f"the RST acknowledges {int(tcp.ack)}; want the SYN's ISN + 1 ({conn.snd_nxt})"


def test_a_large_upload_reaches_the_outside_intact(wire, guest, outside, family):
    """The stack's receive side over many windows: 256 KiB sent by the Wire as a well-behaved
    sender arrive at the outside sink whole (its length and SHA-256 match), and the Wire's FIN
    ends it there."""
    sink = outside.service("tcp-sink")
    conn, _ = open_to(wire, guest, sink)
    data = (PATTERN * (TRANSFER // len(PATTERN) + 1))[:TRANSFER]

    upload(conn, data, TRANSFER_TIMEOUT)

    conn.close()
    sink_saw(sink, data)


def test_a_large_download_reaches_the_wire_intact(wire, guest, outside, family):
    """The stack's send side: 256 KiB a service outside sends reach the Wire in order, whole
    (the length and SHA-256 of what the Wire reassembled match the service's), and its FIN
    follows them."""
    feed = outside.service("tcp-feed", bytes=TRANSFER)
    conn, _ = open_to(wire, guest, feed)

    got, fin = download(conn, TRANSFER, TRANSFER_TIMEOUT)

    fed = feed.wait_for(lambda e: e["event"] == "fed", 10.0)
    digest = hashlib.sha256(got).hexdigest()
    assert (len(got), digest) == (fed["len"], fed["sha256"]), (
        f"the Wire reassembled {len(got)} bytes (sha256 {digest[:16]}...); "
        f"the outside sent {fed['len']} (sha256 {fed['sha256'][:16]}..., errno {fed.get('errno')})"
    )
    assert fin, f"the stack sent no FIN after the {len(got)} bytes, though the outside closed its end"
    conn.close()


def test_the_wires_fin_reaches_the_outside(wire, guest, outside, family):
    """RFC 9293 3.6: the container's FIN is the end of its stream: the stack acknowledges it
    and shuts its host socket down for writing, so the service outside reads the end (and then,
    closing its own end, the stack's FIN comes back)."""
    sink = outside.service("tcp-sink")
    conn, _ = open_to(wire, guest, sink)
    conn.send(b"the end")

    conn.send(flags="FA")
    try:
        acked = conn.expect(ack=conn.snd_nxt, timeout=3.0)
    except ExpectTimeout as exc:
        raise AssertionError(f"the stack did not acknowledge the Wire's FIN:\n{exc}") from None

    sink_saw(sink, b"the end", timeout=5.0)
    if not int(acked[TCP].flags) & 0x01:
        try:
            conn.expect(flags="FA", timeout=3.0)
        except ExpectTimeout as exc:
            raise AssertionError(f"the outside closed its end after the FIN, yet no FIN reached the Wire:\n{exc}") from None
    conn.send(flags="A")


def test_the_outside_closing_gives_the_wire_a_fin(wire, guest, outside, family):
    """RFC 9293 3.6: a service outside that sends its data and closes gives the container the
    data and then a FIN; the container's own FIN, when it closes its end later, is acknowledged."""
    feed = outside.service("tcp-feed", bytes=1000)
    conn, _ = open_to(wire, guest, feed)

    got, fin = download(conn, 1000, 10.0)

    assert len(got) == 1000, f"the Wire got {len(got)} bytes before the FIN; want the 1000 the outside sent"
    assert fin, "the outside sent 1000 bytes and closed its end, yet no FIN reached the Wire"
    feed.wait_for(lambda e: e["event"] == "fed", 5.0)
    conn.send(flags="FA")
    try:
        conn.expect(ack=conn.snd_nxt, timeout=3.0)
    except ExpectTimeout as exc:
        raise AssertionError(f"the stack did not acknowledge the Wire's FIN after its own:\n{exc}") from None


def test_the_outside_sees_the_hosts_address(wire, guest, outside, family):
    """The stack connects to the outside from the host namespace's own sockets, so the service
    sees the host's address (not the container's), and what the container sends comes back
    through them: an echo round trip."""
    echo = outside.service("tcp-echo")
    conn, _ = open_to(wire, guest, echo)

    accepted = echo.wait_for(lambda e: e["event"] == "accepted", CONNECT_TIMEOUT)
    conn.send(b"ping")
    echoed = conn.receive(4, timeout=3.0)
    conn.close()

    assert accepted["peer"][0] == guest.host, (
        f"the outside service saw the connection from {accepted['peer'][0]}; want the host's {guest.host}"
    )
    assert echoed == b"ping", f"the echo came back as {echoed!r}; want b'ping'"
