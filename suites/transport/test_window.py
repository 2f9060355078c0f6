"""Flow control: the window the stack announces for what its application has not read, and what
it sends into the window the Wire announces (RFC 9293 3.8.6, RFC 1122 4.2.2.16-17, 4.2.3.3-4).

The Wire's windows go on the wire unscaled where a check sets them (`NO_SCALE`: its SYN offers
no window scale), so a window of 11 means 11 bytes.
"""

from __future__ import annotations

import itertools
import time

import pytest
from scapy.layers.inet import TCP

from labkit.errors import ExpectTimeout, UnexpectedFrame
from labkit.net.plan import FAMILIES
from labkit.packet.testbench import TcpConnection
from labkit.packet.testbench.tcp import payload_length, seq_add, seq_after
from labkit.stacks.agent import AgentSocket

from .support import SAMPLE, data_of, warm_up

pytestmark = [pytest.mark.needs("tcp", "agent"), pytest.mark.varies_with(), pytest.mark.parametrize("family", FAMILIES)]

NO_SCALE = ("MSS", "SAckOK", "Timestamp")
SMALL_RCVBUF = 4096  # asked for; the stack reports what it made of it (Linux doubles it)


def announce_window(tcp: TcpConnection, window: int) -> None:
    """Announce `window` on a segment that carries a byte of data, and wait for its ACK: the
    stack has taken the window in (a data segment's new sequence number makes it a valid window
    update, RFC 9293 3.10.7.4) before the check goes on."""
    tcp.window = window
    tcp.send(b"z")
    tcp.expect(flags="A", ack=tcp.snd_nxt, timeout=2.0)


def fill_receive_window(tcp: TcpConnection, limit: int, chunk: int = 512) -> tuple[int, list[int]]:
    """Send data the agent does not read, as much as the stack's window allows, until it announces
    a zero window or `limit` bytes went in. Returns (bytes it acknowledged, the windows it announced)."""
    sent, windows = 0, []
    while sent < limit and tcp.their_window:
        size = min(chunk, tcp.their_window)
        before = tcp.snd_nxt
        tcp.send(b"w" * size)
        ack = tcp.expect(flags="A", ack=None, timeout=2.0)
        assert int(ack[TCP].ack) == tcp.snd_nxt, (
            f"the stack dropped {size} bytes its window of {windows[-1] if windows else '?'} had room for: "
            f"it acknowledges {int(ack[TCP].ack) - before} of them"
        )
        sent += size
        windows.append(tcp.their_window)
    return sent, windows


def closed_window(accepted) -> tuple[TcpConnection, AgentSocket, int]:
    """A connection whose receive window the Wire has filled (the agent reads nothing): the
    Wire's connection, the agent's socket, the bytes the stack took."""
    tcp, sock = accepted(listen={"SO_RCVBUF": SMALL_RCVBUF})
    sent, windows = fill_receive_window(tcp, limit=4 * sock.getsockopt("SO_RCVBUF"))
    assert windows and windows[-1] == 0, f"the window never closed: {windows}"
    return tcp, sock, sent


def test_unread_data_closes_the_receive_window(accepted):
    """RFC 9293 3.8.6: the window offers no more than the receive buffer can hold; an application
    that does not read fills it, and the stack says so with a window of 0."""
    tcp, sock = accepted(listen={"SO_RCVBUF": SMALL_RCVBUF})
    rcvbuf = sock.getsockopt("SO_RCVBUF")

    sent, windows = fill_receive_window(tcp, limit=4 * rcvbuf)

    assert windows and windows[-1] == 0, (
        f"after {sent} unread bytes the stack still announces a window of {windows[-1] if windows else None} "
        f"(SO_RCVBUF {rcvbuf}); windows it announced: {windows}"
    )
    assert sent <= rcvbuf, f"the stack took {sent} bytes before closing its window, more than its SO_RCVBUF of {rcvbuf}"
    got = sock.recv_exactly(sent, timeout=2.0)
    assert got == b"w" * sent, f"the agent read {len(got)} bytes after the window closed; the stack acknowledged {sent}"


def test_announced_window_follows_so_rcvbuf(accepted):
    """The window offered in the SYN-ACK comes from the listener's receive buffer: a small
    SO_RCVBUF set before listen() gives a window no larger than the buffer, the default one more."""
    small, small_sock = accepted(listen={"SO_RCVBUF": SMALL_RCVBUF})
    rcvbuf = small_sock.getsockopt("SO_RCVBUF")
    default, _ = accepted()

    assert small.their_window is not None and 0 < small.their_window <= rcvbuf, (
        f"with SO_RCVBUF {rcvbuf} the SYN-ACK offers a window of {small.their_window}"
    )
    assert default.their_window is not None and default.their_window > rcvbuf, (
        f"with the default receive buffer the SYN-ACK offers a window of {default.their_window}, "
        f"no more than the {rcvbuf} bytes of the small buffer"
    )


def test_reading_reopens_a_closed_window(accepted):
    """RFC 9293 3.8.6.2.2 / RFC 1122 4.2.3.3: once the application makes room, the receiver sends
    a window update on its own; otherwise a sender stopped by the zero window would learn of the
    room only from its next probe, after a backed-off timeout."""
    tcp, sock, sent = closed_window(accepted)

    sock.recv_exactly(sent, timeout=2.0)
    try:
        update = tcp.expect(flags="A", timeout=1.0)
    except ExpectTimeout:
        pytest.fail(f"the agent read all {sent} bytes, but no window update came within 1 s")
    assert tcp.their_window, f"the stack's update after the read still announces window {int(update[TCP].window)}"


def test_probe_of_a_zero_window_is_answered(accepted):
    """RFC 9293 3.8.6.1 / 3.10.7.4: a zero-window probe one byte behind (what Linux sends) is
    not acceptable, so the receiver answers it with an ACK that repeats its state: the next byte
    it expects, and the window still 0. That answer is what keeps a probing peer's connection up."""
    tcp, _, _ = closed_window(accepted)
    tcp.wire.send(tcp.segment(seq=seq_add(tcp.snd_nxt, -1)))
    try:
        answer = tcp.expect(flags="A", ack=None, timeout=2.0)
    except ExpectTimeout:
        pytest.fail("a zero-window probe (seq one byte behind, no data) got no ACK within 2 s")
    assert (int(answer[TCP].ack), int(answer[TCP].window)) == (tcp.snd_nxt, 0), (
        f"the stack answers the probe with ack {int(answer[TCP].ack)}, window {answer[TCP].window}; "
        f"want ack {tcp.snd_nxt} (RCV.NXT) and window 0, as nothing was read"
    )


def test_data_sent_into_a_zero_window_is_acknowledged_not_taken(accepted):
    """RFC 9293 3.10.7.4: with the receive window at 0 a segment carrying new data is not
    acceptable: it is not delivered, and the receiver answers with an ACK of its state (as it
    answers a probe that carries one byte of new data, RFC 9293 3.8.6.1)."""
    tcp, sock, sent = closed_window(accepted)
    tcp.wire.send(tcp.segment(b"p"))  # not counted as sent: the stack must not take it
    try:
        answer = tcp.expect(flags="A", ack=None, timeout=2.0)
    except ExpectTimeout:
        pytest.fail("a byte sent into the zero window got no ACK within 2 s")
    assert (int(answer[TCP].ack), int(answer[TCP].window)) == (tcp.snd_nxt, 0), (
        f"the stack answers the byte sent into its closed window with ack {int(answer[TCP].ack)}, window {answer[TCP].window}; "
        f"want ack {tcp.snd_nxt} (the byte not taken) and window 0"
    )
    got = sock.recv_exactly(sent, timeout=2.0)
    assert got == b"w" * sent, "the agent read other data than the stack acknowledged"
    assert "POLLIN" not in sock.poll(timeout=0.2), "the byte sent into the zero window was delivered to the agent"


def test_zero_window_is_probed_while_data_waits(accepted):
    """RFC 9293 3.8.6.1 / RFC 1122 4.2.2.17: facing a zero window, the sender probes it (with no
    data, one byte behind, as Linux does, or with one byte of new data) once it has data to send,
    not before; when the window opens the data follows."""
    tcp, sock = accepted()
    warm_up(tcp, sock)
    announce_window(tcp, 0)
    una = tcp.rcv_nxt

    probe_tmpl = tcp.template(seq=seq_add(una, -1))
    tcp.wire.expect_none(probe_tmpl, timeout=0.5)  # nothing to send, nothing to probe
    sock.send(SAMPLE)
    for n in (1, 2):
        try:
            probe = tcp.expect(seq=None, timeout=2.0)
        except ExpectTimeout:
            pytest.fail(f"no zero-window probe {n} within 2 s of the write")
        seq, size = int(probe[TCP].seq), payload_length(probe)
        assert (seq, size) in ((seq_add(una, -1), 0), (una, 1)), (
            f"probe {n}: seq {seq} with {size} bytes; want a probe at {seq_add(una, -1)} with none or at {una} with one byte"
        )
        tcp.rcv_nxt = una
        tcp.send(flags="A")  # the window stays shut

    tcp.window = 65535
    tcp.send(flags="A")
    got = tcp.receive(len(SAMPLE), timeout=2.0)
    assert got == SAMPLE, f"after the window opened the stack sent {got!r}"


def test_zero_window_probes_back_off(accepted, wire):
    """RFC 1122 4.2.2.17 and RFC 9293 3.8.6.1: probes of a window that stays shut are sent with
    exponential backoff (the retransmission timer's), and a receiver that answers them keeps the
    connection alive; when the window opens the data follows."""
    tcp, sock = accepted()
    warm_up(tcp, sock)
    announce_window(tcp, 0)
    una = tcp.rcv_nxt

    sock.send(SAMPLE)
    times = []
    for n in range(1, 4):
        try:
            frame = wire.expect_frame(tcp.template(flags="A", seq=None), timeout=3.0)
        except ExpectTimeout:
            pytest.fail(f"probe {n} did not come within 3 s; probes so far at {[round(t - times[0], 3) for t in times]}")
        times.append(frame.ts)
        tcp.send(flags="A")  # answered, window still 0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for before, after in itertools.pairwise(gaps):
        assert after >= 1.5 * before, f"probe intervals {[round(g, 3) for g in gaps]} s do not back off (each about twice the last)"

    tcp.rcv_nxt = una
    tcp.window = 65535
    tcp.send(flags="A")
    assert tcp.receive(len(SAMPLE), timeout=2.0) == SAMPLE


def test_user_timeout_ends_zero_window_probing(accepted, wire):
    """RFC 5482 / tcp(7) TCP_USER_TIMEOUT: probing a window that stays shut goes on as long as
    the receiver answers (RFC 1122 4.2.2.17), unless the application set a user timeout: then the
    connection is given up when it passes, the application's next call fails with ETIMEDOUT, and
    a later segment from the peer finds no connection (RST)."""
    user_timeout = 1.0
    tcp, sock = accepted()
    warm_up(tcp, sock)
    sock.setsockopt("TCP_USER_TIMEOUT", int(user_timeout * 1000))
    announce_window(tcp, 0)
    assert sock.recv(1) == b"z"
    una = tcp.rcv_nxt

    sock.send(SAMPLE)
    started = time.time()
    outcome = sock.begin_recv(timeout=user_timeout + 2.5)
    probes = []
    deadline = time.monotonic() + user_timeout + 1.5
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = wire.expect_frame(tcp.template(seq=None, ack=None), timeout=left)
        except ExpectTimeout:
            break
        probes.append(round(frame.ts - started, 3))
        tcp.rcv_nxt = una
        tcp.send(flags="A")  # the window stays shut, every probe is answered
    assert probes, "no zero-window probe came at all"
    errno = outcome.errno()
    assert errno == "ETIMEDOUT", (
        f"with TCP_USER_TIMEOUT {user_timeout:g} s and the window shut, the agent's recv "
        f"(bounded at {user_timeout + 2.5:g} s) ended with {errno or 'data'}; probes at {probes} s"
    )
    tcp.rcv_nxt = una
    tcp.send(flags="A")
    try:
        tcp.expect(flags="R", seq=None, ack=None, timeout=1.0)
    except ExpectTimeout:
        pytest.fail(f"the connection timed out (ETIMEDOUT), yet a segment from the peer got no RST; probes at {probes} s")


def test_sender_respects_a_shrunk_window(accepted, wire):
    """RFC 1122 4.2.2.16: a receiver may shrink its window (move the right edge left); the sender
    must cope and send nothing beyond the new edge, and send the rest once the window reopens."""
    tcp, sock = accepted(window=4000, options=NO_SCALE)
    sock.setsockopt("TCP_NODELAY", 1)
    una = tcp.rcv_nxt
    sock.send(b"a" * 1000)
    got = tcp.expect(timeout=2.0)
    assert data_of(got) == b"a" * 1000, f"the stack's first 1000 bytes came as {payload_length(got)} bytes"
    # Shrink: the right edge goes from una+4000 to una+1500 (a new sequence number makes the
    # pure ACK a valid window update: a byte of data first).
    tcp.send(b"x", ack=una)
    tcp.expect(flags="A", timeout=2.0)
    tcp.window = 1500
    tcp.send(flags="A", ack=una)
    edge = seq_add(una, 1500)

    sock.send(b"b" * 3000)
    beyond = []
    for frame in wire.listen(0.5):
        seg = frame.packet.getlayer(TCP)
        if seg is None or int(seg.dport) != tcp.local_port or not payload_length(frame.packet):
            continue
        end = seq_add(int(seg.seq), payload_length(frame.packet))
        if seq_after(end, edge):
            beyond.append((int(seg.seq) - una) % (1 << 32) + payload_length(frame.packet))
        if int(seg.seq) == tcp.rcv_nxt:
            tcp.receive_segment(frame.packet)
    assert not beyond, f"after the window shrank to end at byte 1500, the stack sent up to byte(s) {beyond}"

    tcp.window = 65535
    tcp.send(flags="A")
    rest = 4000 - ((tcp.rcv_nxt - una) % (1 << 32))
    tcp.receive(rest, timeout=3.0)


def test_sender_fills_but_does_not_overrun_a_small_window(accepted):
    """RFC 9293 3.8.6: the sender sends no byte beyond the window the receiver offered; a write
    larger than the window goes out in window-sized parts as the window reopens."""
    tcp, sock = accepted(window=len(SAMPLE) - 1, options=NO_SCALE)
    sock.setsockopt("TCP_NODELAY", 1)

    sock.send(SAMPLE)
    first = tcp.expect(timeout=2.0)
    assert data_of(first) == SAMPLE[:-1], f"into a window of {len(SAMPLE) - 1} bytes the stack sent {data_of(first)!r}"
    tcp.send(flags="A")
    last = tcp.expect(timeout=2.0)
    assert data_of(last) == SAMPLE[-1:], f"after the ACK the stack sent {data_of(last)!r}; want the last byte"


@pytest.mark.parametrize("spare", [0, 1], ids=["window-equal", "window-larger"])
def test_ack_rides_on_the_next_data_segment(accepted, spare):
    """RFC 9293 3.8.6.3 / RFC 1122 4.2.3.2: data the stack sends carries the acknowledgement of
    what it received; when a segment frees the window for queued data, that data acknowledges it
    and no separate ACK goes first."""
    tcp, sock = accepted(window=len(SAMPLE) + spare, options=NO_SCALE)
    sock.setsockopt("TCP_NODELAY", 1)
    sock.send(SAMPLE)
    tcp.expect(payload=SAMPLE, timeout=2.0)
    sock.send(SAMPLE)  # waits: the window is full

    tcp.wire.drain()
    tcp.send(SAMPLE)  # acknowledges the first segment and carries data
    first = tcp.expect(seq=None, ack=None, timeout=2.0)
    assert data_of(first) == SAMPLE and int(first[TCP].ack) == tcp.snd_nxt, (
        f"the stack's first segment after the peer's data: {payload_length(first)} bytes, ack {int(first[TCP].ack)}; "
        f"want the queued {len(SAMPLE)} bytes carrying ack {tcp.snd_nxt}"
    )


def test_window_with_the_top_bit_set_is_large_not_negative(accepted):
    """RFC 9293 3.1: the window field is an unsigned 16-bit number; 0x8000 offers 32768 bytes."""
    tcp, sock = accepted(window=0x8000, options=NO_SCALE)
    sock.setsockopt("TCP_NODELAY", 1)
    sock.send(b"m" * 2000)
    assert tcp.receive(2000, timeout=2.0) == b"m" * 2000


def test_cork_sends_only_full_segments_until_uncorked(accepted, wire):
    """TCP_CORK (tcp(7)): corked small writes are coalesced and leave only as full segments of
    the peer's MSS (RFC 9293 3.7.1: never larger); uncorking sends the partial rest at once."""
    mss = 1000
    tcp, sock = accepted(mss=mss, options=("MSS",))  # no timestamps: a full segment is the MSS
    announce_window(tcp, 0)  # the writes queue up behind a closed window, whatever the timing
    assert sock.recv(1) == b"z"
    sock.setsockopt("TCP_CORK", 1)
    stream = b"c" * 300 + b"d" * 1000
    for piece in (stream[:100], stream[100:200], stream[200:300], stream[300:]):
        sock.send(piece)

    tcp.window = 65535
    tcp.send(flags="A")
    first = tcp.expect(timeout=2.0)
    assert data_of(first) == stream[:mss], (
        f"with the window open the corked stack sent a segment of {payload_length(first)} bytes; "
        f"want one full segment of the MSS, {mss}, coalescing the small writes"
    )
    tcp.send(flags="A")
    try:
        wire.expect_none(tcp.template(), timeout=0.1)
    except UnexpectedFrame as exc:
        pytest.fail(f"the partial rest left while the socket was still corked: {exc}")
    sock.setsockopt("TCP_CORK", 0)
    rest = tcp.expect(timeout=1.0)
    assert data_of(rest) == stream[mss:], (
        f"on uncork the stack sent {payload_length(rest)} bytes; want the {len(stream) - mss} held"
    )


def test_nagle_holds_a_small_write_until_the_ack(accepted, wire):
    """RFC 1122 4.2.3.4 (Nagle): while a small segment is unacknowledged, a further small write
    waits; the ACK releases it."""
    tcp, sock = accepted()
    sock.send(b"n" * 10)
    tcp.expect(payload=b"n" * 10, timeout=2.0)
    sock.send(b"m" * 10)
    try:
        wire.expect_none(tcp.template(), timeout=0.15)
    except UnexpectedFrame as exc:
        pytest.fail(f"with Nagle on, the second small write left before the first was acknowledged: {exc}")
    tcp.send(flags="A")
    released = tcp.expect(timeout=1.0)
    assert data_of(released) == b"m" * 10


def test_nodelay_sends_a_small_write_at_once(accepted):
    """TCP_NODELAY (tcp(7)) turns Nagle off: the second small write leaves without waiting for the
    ACK of the first."""
    tcp, sock = accepted()
    sock.setsockopt("TCP_NODELAY", 1)
    sock.send(b"n" * 10)
    tcp.expect(payload=b"n" * 10, timeout=2.0)
    sock.send(b"m" * 10)
    try:
        tcp.expect(payload=b"m" * 10, timeout=1.0)
    except ExpectTimeout:
        pytest.fail("with TCP_NODELAY the second small write waited for the ACK of the first")
