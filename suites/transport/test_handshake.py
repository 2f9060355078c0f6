"""The three-way handshake: what each side offers, what is agreed, and that what was agreed is
then used (MSS, window scale, SACK, timestamps); the open in its rarer forms (active, with data
on the SYN, simultaneous) and a SYN nobody listens for."""

import pytest
from scapy.layers.inet import TCP
from scapy.packet import Packet

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES
from labkit.packet.testbench import TcpConnection
from labkit.packet.testbench.tcp import options_of, payload_length, seq_add
from labkit.packet.vnet import VnetSocket

pytestmark = [pytest.mark.needs("tcp", "agent"), pytest.mark.varies_with(), pytest.mark.parametrize("family", FAMILIES)]

MTU = 1500  # the standard topology's
NO_TIMESTAMPS = ("MSS", "SAckOK", "WScale")
NO_SACK = ("MSS", "Timestamp", "WScale")


def link_mss(ends) -> int:
    return MTU - (20 if ends.version == 4 else 40) - 20


def stack_segments(wire, ends, conn: TcpConnection) -> list[Packet]:
    """Every segment of `conn` the stack sent so far (the wire's record, both handshake and after)."""
    got = []
    for frame in wire.frames:
        pkt = frame.packet
        if frame.outgoing or ends.ip not in pkt or TCP not in pkt:
            continue
        tcp = pkt[TCP]
        if int(tcp.sport) == conn.port and int(tcp.dport) == conn.local_port:
            got.append(pkt)
    return got


def test_syn_ack_answers_every_option_the_syn_offered(agent, wire, ends):
    """RFC 9293 3.7.1, RFC 7323, RFC 2018: a listener announces the MSS its link allows and
    answers each extension the SYN offered, echoing the SYN's TSval."""
    listener = agent.listener(ends.family)
    conn = TcpConnection(wire, ends, port=listener.port)

    syn = conn.send(flags="S")
    syn_ack = conn.expect(flags="SA")

    got = options_of(syn_ack[TCP])
    want_mss = link_mss(ends)
    assert got.get("MSS") == want_mss, f"SYN-ACK announces MSS {got.get('MSS')}; want {want_mss} for the link's MTU of {MTU}"
    missing = [name for name in ("WScale", "SAckOK", "Timestamp") if name not in got]
    assert not missing, f"SYN-ACK leaves out {missing} the SYN offered; it carries {sorted(got)}"
    sent_tsval = options_of(syn[TCP])["Timestamp"][0]
    assert got["Timestamp"][1] == sent_tsval, f"SYN-ACK's TSecr {got['Timestamp'][1]} does not echo the SYN's TSval {sent_tsval}"
    conn.send(flags="A")
    assert listener.accept().getpeername() == (ends.peer, conn.local_port)


def test_syn_to_a_closed_port_is_reset(agent, wire, ends):
    """RFC 9293 3.10.7.1: nobody listens, so the SYN is refused with an RST."""
    closed = agent.listener(ends.family)
    port = closed.port
    closed.close()  # a port the stack surely does not listen on
    conn = TcpConnection(wire, ends, port=port)

    conn.send(flags="S")

    # RFC 9293 3.10.7.1: a SYN to a closed port gets <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    conn.expect(flags="RA", seq=0, ack=conn.snd_nxt)


def test_active_open_syn_offers_every_option(agent, wire, ends):
    """RFC 9293 3.7.1 (MSS from the link), RFC 7323 (window scale, timestamps), RFC 2018 (SACK):
    a stack that can use an extension offers it in its own SYN, since the peer may only answer."""
    sock = agent.socket(ends.family, "stream")
    conn = TcpConnection(wire, ends, port=None)
    pending = sock.begin_connect(ends.peer, conn.local_port)

    syn = conn.accept()
    pending.result()

    got = options_of(syn[TCP])
    assert got.get("MSS") == link_mss(ends), (
        f"the SYN announces MSS {got.get('MSS')}; want {link_mss(ends)} for the link's MTU of {MTU}"
    )
    missing = [name for name in ("WScale", "SAckOK", "Timestamp") if name not in got]
    assert not missing, f"the stack's SYN does not offer {missing}; it carries {sorted(got)}"
    assert got["Timestamp"][1] == 0, f"the SYN's TSecr is {got['Timestamp'][1]}; RFC 7323 3.2: 0, nothing to echo yet"
    assert int(syn[TCP].window) > 0, "the SYN announces a zero window"


def test_segments_never_exceed_the_mss_the_peer_announced(accepted, wire, ends):
    """RFC 9293 3.7.1 (MUST-14 family): the data of a segment is at most the peer's MSS less the
    TCP options it carries, however much the application writes. A GSO super-frame counts as
    the segments a device cuts it into (its gso_size, read from the virtio_net_hdr)."""
    conn, sock = accepted(mss=536)
    data = bytes(range(256)) * 16  # 4096 bytes

    with VnetSocket(wire.ns, wire.ifname) as seen:
        assert sock.send(data) == len(data)
        got = conn.receive(len(data))
        frames = [frame for out, frame in seen.read(0.05, outgoing=False)]

    assert got == data, "the data the stack sent differs from what the agent wrote"
    sizes = []  # (payload of each segment on the link, TCP option bytes)
    for frame in frames:
        if TCP not in frame or int(frame[TCP].sport) != conn.port or int(frame[TCP].dport) != conn.local_port:
            continue
        options = int(frame[TCP].dataofs) * 4 - 20
        length = payload_length(frame)
        if length and frame.is_gso:
            sizes.append((min(int(frame.gso_size), length), options))
        elif length:
            sizes.append((length, options))
    assert sizes, "the link carried none of the stack's data segments (the virtio_net_hdr socket saw none)"
    oversized = [(n, opt) for n, opt in sizes if n + opt > 536]
    assert not oversized, (
        f"{len(oversized)} of {len(sizes)} data segments carry more than the MSS of 536 the Wire announced "
        f"(payload or gso_size, option bytes): {oversized[:5]}"
    )


def fill(conn: TcpConnection, data: bytes) -> None:
    """Send `data` in order, in segments as large as the stack's MSS allows (timestamps included)."""
    chunk = (conn.negotiated.mss or 536) - (12 if conn.negotiated.timestamps else 0)
    for off in range(0, len(data), chunk):
        conn.send(data[off : off + chunk])


def acknowledged(conn: TcpConnection, wire, ends, upto: int, what: str) -> None:
    """Wait for the stack's ACK of everything up to `upto`; if it does not come, fail saying how
    far the stack did acknowledge and what window it announced last."""
    try:
        conn.expect(flags="A", ack=upto, timeout=3.0)
        return
    except ExpectTimeout:
        pass
    acks = [p[TCP] for p in stack_segments(wire, ends, conn) if int(p[TCP].flags) & 0x10]
    last = acks[-1] if acks else None
    short = (
        "no ACK at all"
        if last is None
        else f"its last ACK stops {(upto - int(last.ack) + (1 << 31)) % (1 << 32) - (1 << 31)} bytes short"
    )
    window = "" if last is None else f", announcing window field {last.window}"
    pytest.fail(f"the stack did not acknowledge {what}: {short}{window}")


def test_window_scale_is_applied_to_the_window_the_stack_announces(accepted, wire, ends):
    """RFC 7323 2.3: once both SYNs carried a window scale, every window field the stack sends is
    its window shifted right by its scale, and the peer may send all of window << scale bytes
    (RFC 9293 3.8.6: the right edge, once announced, is not moved back)."""
    conn, sock = accepted()
    shift = conn.negotiated.send_shift
    assert conn.negotiated.window_scaling, "the SYN-ACK did not agree to window scaling the SYN offered"

    sock.send(b"!")  # a segment of the stack's after the handshake: its first scaled window
    seg = conn.expect(flags="PA", payload=b"!")
    conn.send(flags="A")
    window = int(seg[TCP].window) << shift
    assert window > int(seg[TCP].window), f"window field {seg[TCP].window} with scale {shift}: no scaling in effect"
    data = bytes(i % 251 for i in range(window))

    fill(conn, data)

    acknowledged(conn, wire, ends, conn.snd_nxt, f"the {window} bytes of the window it announced ({seg[TCP].window} << {shift})")
    got = sock.recv_exactly(window)
    assert got == data, f"the agent read {len(got)} bytes; want the {window} bytes of the announced window, as sent"


def test_syn_ack_window_is_not_scaled(agent, wire, ends):
    """RFC 7323 2.2: the window field of a SYN or SYN-ACK is never scaled. The window the stack
    offers there is its real initial window: the peer may fill it at once, with the data that
    follows its ACK, before the stack has announced anything else."""
    listener = agent.listener(ends.family)
    conn = TcpConnection(wire, ends, port=listener.port)
    syn_ack = conn.connect()
    first = int(syn_ack[TCP].window)
    assert first >= link_mss(ends), (
        f"the SYN-ACK's window field is {first}: less than one segment, as if scaled by {conn.negotiated.send_shift}"
    )
    data = bytes(i % 253 for i in range(first))

    fill(conn, data)

    acknowledged(conn, wire, ends, conn.snd_nxt, f"the {first} bytes the SYN-ACK's window offered")
    sock = listener.accept()
    assert sock.recv_exactly(first) == data


def test_sack_blocks_report_data_received_out_of_order(accepted):
    """RFC 2018: with SACK permitted by both SYNs, the ACK for data beyond a hole carries a SACK
    block naming exactly that data."""
    conn, sock = accepted()
    assert conn.negotiated.sack_permitted, "the SYN-ACK did not permit SACK the SYN offered"

    hole = conn.snd_nxt
    island = seq_add(hole, 100)
    conn.wire.send(conn.segment(b"b" * 100, seq=island))
    ack = conn.expect(flags="A", ack=hole)

    blocks = options_of(ack[TCP]).get("SAck")
    assert blocks and tuple(blocks[:2]) == (island, seq_add(island, 100)), (
        f"the duplicate ACK carries SACK blocks {blocks}; want ({island}, {seq_add(island, 100)}) for the 100 bytes past the hole"
    )
    conn.send(b"a" * 100)
    conn.advance(conn.segment(b"b" * 100))
    conn.expect(flags="A", ack=conn.snd_nxt)
    assert sock.recv_exactly(200) == b"a" * 100 + b"b" * 100


def test_no_sack_blocks_unless_the_syn_permitted_them(accepted):
    """RFC 2018: SACK options may be sent only if both SYNs carried SACK-permitted."""
    conn, _sock = accepted(options=NO_SACK)
    island = seq_add(conn.snd_nxt, 100)

    conn.wire.send(conn.segment(b"b" * 100, seq=island))
    ack = conn.expect(flags="A")

    got = options_of(ack[TCP])
    assert "SAck" not in got, f"the stack sends SACK blocks {got['SAck']} though the Wire's SYN did not permit SACK"


def test_every_segment_echoes_the_peers_latest_timestamp(accepted, wire, ends):
    """RFC 7323 3.2 and 4.3: once both SYNs carried timestamps, every segment the stack sends
    carries TSopt, and its TSecr echoes the TSval of the Wire's latest in-sequence segment."""
    conn, sock = accepted()
    assert conn.negotiated.timestamps, "the SYN-ACK did not agree to the timestamps the SYN offered"

    for n in range(3):
        sent = conn.send(b"ping")
        tsval = options_of(sent[TCP])["Timestamp"][0]
        acked = conn.expect(ack=conn.snd_nxt, timeout=2.0)  # a pure ACK or data: whatever acknowledges it
        ts = options_of(acked[TCP]).get("Timestamp")
        assert ts and ts[1] == tsval, f"round {n}: the stack acknowledges data of TSval {tsval} with TS {ts}"
        assert sock.recv(4) == b"ping"
        sock.send(b"pong")
        if payload_length(acked) == 0:
            conn.expect(flags="PA", payload=b"pong")
        conn.send(flags="A")

    segments = stack_segments(wire, ends, conn)
    bare = [p[TCP].summary() for p in segments if "Timestamp" not in options_of(p[TCP])]
    assert not bare, f"{len(bare)} of the stack's {len(segments)} segments carry no timestamp: {bare[:3]}"
    # TSecr echoes the latest TSval the Wire sent before each segment; no segment echoes one from the future.
    sent_tsvals = [options_of(f.packet[TCP])["Timestamp"][0] for f in wire.frames if f.outgoing and TCP in f.packet]
    wrong = [p[TCP].summary() for p in segments[1:] if options_of(p[TCP])["Timestamp"][1] not in sent_tsvals]
    assert not wrong, f"segments echo a TSval the Wire never sent: {wrong[:3]}"


def test_no_timestamps_unless_the_syn_offered_them(accepted, wire, ends):
    """RFC 7323 3.2: a stack whose peer's SYN carried no TSopt sends none on the connection."""
    conn, sock = accepted(options=NO_TIMESTAMPS)

    conn.send(b"ping")
    assert sock.recv(4) == b"ping"
    sock.send(b"pong")
    conn.receive(4)

    segments = stack_segments(wire, ends, conn)
    stamped = [p[TCP].summary() for p in segments if "Timestamp" in options_of(p[TCP])]
    assert not stamped, (
        f"{len(stamped)} of the stack's {len(segments)} segments carry TSopt the Wire's SYN did not offer: {stamped[:3]}"
    )


def test_data_on_a_syn_is_not_acknowledged_before_the_handshake(agent, wire, ends):
    """RFC 9293 3.10.7.2 lets a listener queue data that comes with the SYN; Linux (without a
    TCP Fast Open cookie) acknowledges only the SYN and drops the data, so the peer sends it
    again after the handshake, and the application reads it once."""
    listener = agent.listener(ends.family)
    conn = TcpConnection(wire, ends, port=listener.port)

    conn.send(b"early", flags="S")
    syn_ack = conn.expect(flags="SA", ack=None)
    acked = (int(syn_ack[TCP].ack) - conn.iss) % (1 << 32)
    assert acked == 1, f"the SYN-ACK acknowledges {acked} sequence numbers of the SYN; want 1 (the SYN only, not its 5 bytes)"

    conn.snd_nxt = seq_add(conn.iss, 1)
    conn.send(flags="A")
    sock = listener.accept()
    conn.send(b"early")
    conn.expect(flags="A")
    got = sock.recv_exactly(5) + sock.recv_now()
    assert got == b"early", f"the agent read {got!r}; want the SYN's data once, as sent again after the handshake"


def test_simultaneous_open_establishes(agent, wire, ends):
    """RFC 9293 3.5 (figure 7): a SYN answered by a SYN (crossed SYNs) moves SYN-SENT to
    SYN-RECEIVED; the stack answers <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK> and the peer's ACK
    establishes the connection."""
    sock = agent.socket(ends.family, "stream")
    conn = TcpConnection(wire, ends, port=None)
    pending = sock.begin_connect(ends.peer, conn.local_port)
    syn = conn.expect(flags="S")

    conn.send(flags="S")  # the Wire's own SYN, acknowledging nothing
    syn_ack = conn.expect(flags="SA", seq=int(syn[TCP].seq))
    assert int(syn_ack[TCP].ack) == conn.snd_nxt
    conn.send(flags="A")
    pending.result()

    conn.send(b"ping")
    conn.expect(flags="A")
    assert sock.recv(4) == b"ping"
    sock.send(b"pong")
    assert conn.receive(4) == b"pong"


def test_the_handshakes_ack_opens_the_window_its_syn_closed(agent, wire, ends):
    """RFC 9293 3.10.7.4: the window of the ACK that completes the handshake replaces the SYN's
    (SND.WND is set from every acceptable ACK), and the window field is unsigned: a SYN with a
    zero window followed by an ACK with window 0x8000 lets the stack send at once."""
    listener = agent.listener(ends.family)
    conn = TcpConnection(wire, ends, port=listener.port, window=0)
    conn.send(flags="S")
    conn.expect(flags="SA")
    conn.send(flags="A", window=0x8000)
    sock = listener.accept()

    sock.send(b"sample data")

    try:
        conn.expect(flags="PA", payload=b"sample data", timeout=2.0)
    except ExpectTimeout as exc:
        raise AssertionError(f"the stack did not send into the window of 0x8000 the handshake's ACK opened:\n{exc}") from None
