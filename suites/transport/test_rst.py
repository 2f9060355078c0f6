"""Resets and unacceptable segments: which RST ends a connection in each state, which gets a
challenge ACK instead (RFC 5961), what an out-of-window or unacceptable segment earns, and when
the stack itself resets (close with unread data, SO_LINGER 0, a listener closed with a queue)."""

import pytest
from scapy.layers.inet import TCP

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES
from labkit.packet.testbench import TcpConnection
from labkit.packet.testbench.tcp import seq_add
from labkit.stacks.agent import SocketCallError

pytestmark = [pytest.mark.needs("tcp", "agent"), pytest.mark.varies_with(), pytest.mark.parametrize("family", FAMILIES)]

QUIET = 0.5  # how long "nothing comes" is watched


def flags_of(seg) -> str:
    return str(seg[TCP].flags)


def errno_of(call, *args, **kwargs) -> str | None:
    try:
        call(*args, **kwargs)
    except SocketCallError as exc:
        return exc.errno
    return None


def still_works(conn: TcpConnection, sock) -> None:
    """The connection carries data both ways, from where both sides left it."""
    conn.send(b"still here")
    try:
        got = sock.recv_exactly(10)
    except SocketCallError as exc:
        raise AssertionError(f"the connection is gone: the agent's recv got {exc.errno}") from None
    assert got == b"still here", f"the agent read {got!r} after the segment; want only b'still here'"
    sock.send(b"and here")
    assert conn.receive(8) == b"and here"


def expect_only_ack(conn: TcpConnection, what: str, timeout: float = 1.0):
    """The stack's next segment on `conn` must be an ACK of where things stand (seq = what it
    sent last, ack = what the Wire sent last, nothing else)."""
    try:
        seg = conn.expect(timeout=timeout)
    except ExpectTimeout as exc:
        raise AssertionError(f"{what}: the stack sent no ACK\n{exc}") from None
    tcp = seg[TCP]
    if flags_of(seg) == "A" and int(tcp.ack) != conn.snd_nxt:
        moved = (int(tcp.ack) - conn.snd_nxt + (1 << 31)) % (1 << 32) - (1 << 31)
        raise AssertionError(f"{what}: the stack's ACK moved {moved:+d} from {conn.snd_nxt}: it took data it should have dropped")
    assert flags_of(seg) == "A", (
        f"{what}: the stack answered {flags_of(seg)} seq={tcp.seq} ack={tcp.ack}; want a bare ACK seq={conn.rcv_nxt} ack={conn.snd_nxt}"
    )
    return seg


def next_segment(conn: TcpConnection, what: str, timeout: float = 2.0):
    """The stack's next segment on `conn`, whatever it is; failing, saying `what` sent nothing."""
    try:
        return conn.expect(timeout=timeout)
    except ExpectTimeout as exc:
        raise AssertionError(f"{what} sent nothing within {timeout:g}s; want an RST\n{exc}") from None


def expect_nothing(conn: TcpConnection, what: str, timeout: float = QUIET) -> None:
    try:
        seg = conn.wire.expect(conn.template(seq=None), timeout=timeout)
    except ExpectTimeout:
        return
    raise AssertionError(f"{what}: the stack answered {seg[TCP].summary()} (seq={seg[TCP].seq} ack={seg[TCP].ack}); want no answer")


def connect_in_progress(sock, addr: str, port: int) -> None:
    """A non-blocking connect, which must answer EINPROGRESS: the SYN is on its way."""
    try:
        sock.connect(addr, port)
    except SocketCallError as exc:
        # labkit.agent names connect's EINPROGRESS "EAGAIN" (Python raises it as BlockingIOError);
        # its message keeps the kernel's words.
        if exc.errno == "EINPROGRESS" or "in progress" in exc.message:
            return
        raise
    raise AssertionError("a non-blocking connect completed at once; want EINPROGRESS")


# -- SYN-SENT ---------------------------------------------------------------------------------


def test_rst_acking_the_syn_refuses_the_connect(agent, wire, ends):
    """RFC 9293 3.10.7.3: in SYN-SENT an RST whose ACK acknowledges the SYN is acceptable: the
    connection is refused (connect fails with ECONNREFUSED)."""
    sock = agent.socket(ends.family, "stream")
    conn = TcpConnection(wire, ends, port=None)
    pending = sock.begin_connect(ends.peer, conn.local_port)
    conn.expect(flags="S")

    conn.send(flags="RA")

    assert pending.errno() == "ECONNREFUSED", f"connect ended with {pending.errno() or 'success'}; want ECONNREFUSED"


def test_rst_with_a_wrong_ack_in_syn_sent_is_ignored(agent, wire, ends):
    """RFC 9293 3.10.7.3 and RFC 5961 3.2: in SYN-SENT an RST whose ACK does not acknowledge the
    SYN is dropped; the handshake then completes as if it never came."""
    sock = agent.socket(ends.family, "stream")
    conn = TcpConnection(wire, ends, port=None)
    pending = sock.begin_connect(ends.peer, conn.local_port)
    conn.expect(flags="S")

    conn.send(flags="RA", ack=seq_add(conn.rcv_nxt, 1))  # acknowledges one byte never sent
    conn.send(flags="SA")
    conn.expect(flags="A")

    assert pending.errno() is None, f"connect failed with {pending.errno()} after an RST that acknowledged nothing sent"


def test_send_and_recv_in_syn_sent_would_block(agent, wire, ends):
    """A non-blocking socket still in SYN-SENT has nothing to read and cannot send yet (EAGAIN,
    not an error that ends it): once the handshake completes both work."""
    sock = agent.socket(ends.family, "stream")
    sock.setblocking(False)
    conn = TcpConnection(wire, ends, port=None)
    connect_in_progress(sock, ends.peer, conn.local_port)
    conn.expect(flags="S")

    assert errno_of(sock.recv, 100) == "EAGAIN", "recv in SYN-SENT did not say EAGAIN"
    assert errno_of(sock.send, b"early") == "EAGAIN", "send in SYN-SENT did not say EAGAIN"

    conn.send(flags="SA")
    conn.expect(flags="A")
    assert sock.poll(("POLLOUT",), timeout=2.0) & {"POLLOUT"}, "the socket is not writable after the handshake"
    sock.send(b"late")
    assert conn.receive(4) == b"late"
    conn.send(b"back")
    conn.expect(flags="A")
    assert sock.poll(("POLLIN",), timeout=2.0) & {"POLLIN"}
    assert sock.recv(4) == b"back"


def test_rst_in_syn_sent_fails_a_blocked_recv(agent, wire, ends):
    """A recv waiting on a socket in SYN-SENT ends with ECONNREFUSED when the peer refuses."""
    sock = agent.socket(ends.family, "stream")
    sock.setblocking(False)
    conn = TcpConnection(wire, ends, port=None)
    connect_in_progress(sock, ends.peer, conn.local_port)
    conn.expect(flags="S")
    sock.setblocking(True)
    pending = sock.begin_recv(100, timeout=3.0)

    conn.send(flags="RA")

    assert pending.errno() == "ECONNREFUSED", f"the blocked recv ended with {pending.errno() or 'data'}; want ECONNREFUSED"


# -- SYN-RECEIVED -----------------------------------------------------------------------------


def test_rst_in_syn_received_drops_the_embryonic_connection(agent, wire, ends):
    """RFC 9293 3.10.7.4: an acceptable RST in SYN-RECEIVED (passive open) removes the
    connection: the ACK that would have completed it is answered with RST, nothing is accepted."""
    listener = agent.listener(ends.family)
    conn = TcpConnection(wire, ends, port=listener.port)
    conn.send(flags="S")
    conn.expect(flags="SA")

    conn.send(flags="R")
    conn.send(flags="A")

    try:
        conn.expect(flags="R", seq=conn.rcv_nxt, timeout=1.0)
    except ExpectTimeout as exc:
        raise AssertionError(
            f"the ACK after the RST was not answered with RST: the embryonic connection survived?\n{exc}"
        ) from None
    assert errno_of(listener.accept, timeout=0.3) == "TIMEOUT", "the listener accepted a connection the peer had reset"


@pytest.mark.parametrize("offset", [0, 2], ids=["acks-nothing", "acks-too-much"])
def test_unacceptable_ack_in_syn_received_is_reset(agent, wire, ends, offset):
    """RFC 9293 3.10.7.4: in SYN-RECEIVED an ACK outside SND.UNA < SEG.ACK =< SND.NXT gets
    <SEQ=SEG.ACK><CTL=RST> and establishes nothing; the SYN-ACK still stands for the right ACK."""
    listener = agent.listener(ends.family)
    conn = TcpConnection(wire, ends, port=listener.port)
    conn.send(flags="S")
    syn_ack = conn.expect(flags="SA")
    bad = seq_add(int(syn_ack[TCP].seq), offset)

    conn.wire.send(conn.segment(flags="A", ack=bad))

    try:
        conn.expect(flags="R", seq=bad, ack=None, timeout=1.0)
    except ExpectTimeout as exc:
        raise AssertionError(f"an ACK of {offset} for a SYN-ACK (want 1) got no RST <SEQ=SEG.ACK>\n{exc}") from None
    assert errno_of(listener.accept, timeout=0.3) == "TIMEOUT", "the listener accepted a connection from an unacceptable ACK"


# -- ESTABLISHED: RST -------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["recv", "send"])
def test_rst_at_rcv_nxt_resets_the_connection(accepted, call):
    """RFC 9293 3.10.7.4 / RFC 5961 3.2: an RST whose sequence number is exactly RCV.NXT resets
    an established connection; the application's next call fails with ECONNRESET."""
    conn, sock = accepted()

    conn.send(flags="R")

    if call == "recv":
        got = errno_of(sock.recv, 100, timeout=2.0)
    else:
        events = sock.poll(("POLLRDHUP",), timeout=2.0)  # only the reset wakes it: a live socket is writable at once
        assert events & {"POLLERR", "POLLHUP"}, f"after the RST the socket polls {sorted(events)}; want POLLERR/POLLHUP"
        got = errno_of(sock.send, b"after the reset")
    assert got == "ECONNRESET", f"{call} after the RST ended with {got or 'success'}; want ECONNRESET"
    expect_nothing(conn, "after the RST")


def test_rst_in_the_window_but_not_at_rcv_nxt_gets_a_challenge_ack(accepted):
    """RFC 5961 3.2: an RST inside the window but not at RCV.NXT does not reset; the stack sends a
    challenge ACK (so a true peer answers with an exact RST) and the connection lives on."""
    conn, sock = accepted()

    conn.send(flags="R", seq=seq_add(conn.snd_nxt, 1000))

    try:
        expect_only_ack(conn, "an in-window RST 1000 bytes past RCV.NXT")
    except AssertionError as exc:
        after = errno_of(sock.recv, 1, flags=("MSG_DONTWAIT",))
        raise AssertionError(f"{exc}\nthe agent's recv then ends with {after or 'data'}") from None
    still_works(conn, sock)


def test_rst_outside_the_window_is_ignored(accepted):
    """RFC 9293 3.10.7.4 / RFC 5961 3.2: an RST outside the receive window is silently dropped:
    no answer (Linux sends no challenge ACK for it), and the connection lives on."""
    conn, sock = accepted()
    beyond = seq_add(conn.snd_nxt, (conn.their_window or 0xFFFF) + 1000)

    conn.send(flags="R", seq=beyond)

    expect_nothing(conn, "an RST beyond the window")
    still_works(conn, sock)


def test_syn_in_an_established_connection_gets_a_challenge_ack(accepted):
    """RFC 5961 4.2: a SYN on an established connection, wherever its sequence number, is answered
    with a challenge ACK and does not reset the connection."""
    conn, sock = accepted()

    conn.wire.send(conn.segment(flags="S"))

    expect_only_ack(conn, "a SYN at RCV.NXT")
    still_works(conn, sock)


# -- ESTABLISHED: unacceptable segments -------------------------------------------------------


def test_data_beyond_the_window_gets_an_ack_and_is_dropped(accepted):
    """RFC 9293 3.10.7.4: a segment whose data lies beyond the receive window is not acceptable:
    the stack answers with an ACK of where it stands and keeps none of the data."""
    conn, sock = accepted()
    beyond = seq_add(conn.snd_nxt, (conn.their_window or 0xFFFF) + 100)

    conn.wire.send(conn.segment(b"out of window", seq=beyond))

    expect_only_ack(conn, "data beyond the window")
    assert sock.recv_now() == b"", "the agent could read data that was sent beyond the window"
    still_works(conn, sock)


def test_old_data_is_acknowledged_and_not_delivered_again(accepted):
    """RFC 9293 3.10.7.4: a segment wholly before RCV.NXT (a duplicate, here with other bytes) is
    not acceptable: it is answered with an ACK and nothing of it reaches the application."""
    conn, sock = accepted()
    conn.send(b"good")
    conn.expect(flags="A")

    conn.wire.send(conn.segment(b"evil", seq=seq_add(conn.snd_nxt, -4)))

    expect_only_ack(conn, "data before RCV.NXT")
    conn.send(b"more")
    conn.expect(flags="A")
    got = sock.recv_exactly(8) + sock.recv_now()
    assert got == b"goodmore", f"the agent read {got!r}; want b'goodmore' (the old segment's bytes never delivered)"


def test_data_with_an_ack_of_unsent_data_gets_an_ack_and_is_dropped(accepted):
    """RFC 9293 3.10.7.4: a segment whose ACK acknowledges data never sent (SEG.ACK > SND.NXT)
    is answered with an ACK and dropped, data and all."""
    conn, sock = accepted()

    conn.wire.send(conn.segment(b"acks the future", ack=seq_add(conn.rcv_nxt, 1000)))

    expect_only_ack(conn, "data acknowledging 1000 bytes never sent")
    assert sock.recv_now() == b"", "the agent could read the data of a segment with an unacceptable ACK"
    still_works(conn, sock)


def test_data_beyond_the_right_edge_is_not_delivered(accepted, wire, ends):
    """RFC 9293 3.3.2/3.10.7.4: the window is what the receiver takes; a byte just past its right
    edge is not acceptable, even once everything before it has come: the application gets
    exactly the window's bytes."""
    conn, sock = accepted(listen={"SO_RCVBUF": 8192})
    sock.send(b"!")
    seg = conn.expect(flags="PA", payload=b"!")
    conn.send(flags="A")
    edge = seq_add(conn.snd_nxt, int(seg[TCP].window) << conn.negotiated.send_shift)
    window = (edge - conn.snd_nxt) % (1 << 32)

    conn.wire.send(conn.segment(b"X", seq=edge))
    expect_only_ack(conn, "a byte past the right edge")
    data = bytes(i % 251 for i in range(window))
    chunk = (conn.negotiated.mss or 536) - 12
    for off in range(0, window, chunk):
        conn.send(data[off : off + chunk])

    try:
        conn.expect(flags="A", ack=edge, timeout=3.0)
    except ExpectTimeout:
        acks = [f.packet[TCP] for f in conn.wire.frames if not f.outgoing and TCP in f.packet and f.packet[TCP].sport == conn.port]
        last = (int(acks[-1].ack) - edge + (1 << 31)) % (1 << 32) - (1 << 31)  # the dup ACK at least came
        if last == 1:
            raise AssertionError(
                f"the stack acknowledged the byte past the right edge of its {window}-byte window: it kept it"
            ) from None
        raise AssertionError(
            f"the stack did not acknowledge exactly the {window} bytes of its window (last ACK at edge{last:+d})"
        ) from None
    got = sock.recv_exactly(window) + sock.recv_now()
    assert len(got) == window and got == data, f"the agent read {len(got)} bytes; want the window's {window}, not the byte past it"


# -- closing ----------------------------------------------------------------------------------


def test_close_with_unread_data_sends_rst(accepted):
    """RFC 2525 2.17 (and Linux): closing a socket whose receive queue holds unread data aborts
    the connection with an RST instead of a FIN, so the peer learns that data was lost."""
    conn, sock = accepted()
    conn.send(b"never read")
    conn.expect(flags="A")

    sock.close()

    seg = next_segment(conn, "close() with unread data")
    assert "R" in flags_of(seg) and "F" not in flags_of(seg), f"close() with unread data sent {flags_of(seg)}; want an RST, no FIN"


def test_linger_zero_close_sends_rst(accepted):
    """SO_LINGER {on, 0 s}: close() aborts (RFC 9293 3.10.5 ABORT): an RST, no FIN."""
    conn, sock = accepted()
    sock.setsockopt("SO_LINGER", [1, 0])

    sock.close()

    seg = next_segment(conn, "close() with SO_LINGER 0")
    assert "R" in flags_of(seg) and "F" not in flags_of(seg), f"close() with SO_LINGER 0 sent {flags_of(seg)}; want an RST, no FIN"


def passive_close(conn: TcpConnection) -> None:
    """The Wire closes first; the stack acknowledges the FIN and is in CLOSE-WAIT."""
    conn.send(flags="FA")
    conn.expect(flags="A")


def test_close_wait_answers_data_beyond_the_window_with_an_ack(accepted):
    """RFC 9293 3.10.7.4 holds in CLOSE-WAIT too: an unacceptable segment gets an ACK and changes
    nothing; the stack's own FIN follows when the application closes."""
    conn, sock = accepted()
    passive_close(conn)
    beyond = seq_add(conn.snd_nxt, (conn.their_window or 0xFFFF) + 100)

    conn.wire.send(conn.segment(b"late data", seq=beyond))

    expect_only_ack(conn, "data beyond the window in CLOSE-WAIT")
    sock.close()
    conn.expect(flags="FA")
    conn.send(flags="A")


def test_close_wait_answers_an_ack_of_unsent_data_with_an_ack(accepted):
    """RFC 9293 3.10.7.4 (and RFC 5961 5.2): in CLOSE-WAIT an ACK of data never sent is answered
    with an ACK and dropped; the connection stays in CLOSE-WAIT."""
    conn, sock = accepted()
    passive_close(conn)

    conn.wire.send(conn.segment(b"late data", ack=seq_add(conn.rcv_nxt, 1000)))

    expect_only_ack(conn, "an ACK of unsent data in CLOSE-WAIT")
    sock.close()
    conn.expect(flags="FA")
    conn.send(flags="A")


def active_close(conn: TcpConnection, sock) -> None:
    """The agent closes first; the Wire acknowledges its FIN (the stack is in FIN-WAIT-2)."""
    sock.close()
    conn.expect(flags="FA")
    conn.send(flags="A")
    conn.send(flags="A")


def old_syn(conn: TcpConnection) -> TcpConnection:
    """A new connection on the same 4-tuple whose SYN lies before the old RCV.NXT and carries no
    timestamp: a FIN-WAIT-2 or TIME-WAIT connection still there answers it with an ACK, not a
    SYN-ACK (it is neither newer in sequence nor in time)."""
    return TcpConnection(
        conn.wire,
        conn.ends,
        port=conn.port,
        local_port=conn.local_port,
        isn=seq_add(conn.iss, -100_000),
        options=("MSS", "SAckOK", "WScale"),
    )


def test_rst_in_fin_wait_2_ends_the_connection(accepted):
    """RFC 9293 3.10.7.4: an RST at RCV.NXT in FIN-WAIT-2 ends the connection: the 4-tuple is
    free again, and an old SYN on it opens a new connection (a SYN-ACK, not an ACK)."""
    conn, sock = accepted()
    active_close(conn, sock)
    again = old_syn(conn)
    again.wire.send(again.segment(flags="S"))
    before = again.expect(seq=None, ack=None, timeout=1.0)
    assert flags_of(before) == "A", f"FIN-WAIT-2 answered an old SYN with {flags_of(before)}; want its ACK (the premise)"

    conn.send(flags="R")

    again.send(flags="S")
    seg = again.expect(ack=again.snd_nxt, seq=None, timeout=1.0)
    assert flags_of(seg) == "SA", f"a new SYN after the RST got {flags_of(seg)}; want SA: the FIN-WAIT-2 connection should be gone"


def time_wait(conn: TcpConnection, sock) -> None:
    """The agent closes first, the Wire then: the stack acknowledges the Wire's FIN in TIME-WAIT."""
    active_close(conn, sock)
    conn.send(flags="FA")
    conn.expect(flags="A")


def test_time_wait_answers_an_old_syn_with_an_ack(accepted):
    """RFC 9293 3.10.7.4: in TIME-WAIT a SYN before RCV.NXT (and without a newer timestamp) is
    not acceptable and is answered with an ACK of where the old connection stood."""
    conn, sock = accepted()
    time_wait(conn, sock)

    again = old_syn(conn)
    again.wire.send(again.segment(flags="S"))

    try:
        seg = again.expect(seq=None, ack=None, timeout=1.0)
    except ExpectTimeout as exc:
        raise AssertionError(f"TIME-WAIT did not answer an old SYN on its 4-tuple\n{exc}") from None
    assert flags_of(seg) == "A" and int(seg[TCP].ack) == conn.snd_nxt, (
        f"TIME-WAIT answered an old SYN with {flags_of(seg)} ack={seg[TCP].ack}; want an ACK of the old connection's {conn.snd_nxt}"
    )


def test_rst_in_time_wait_ends_it(accepted):
    """RFC 1337 lets TIME-WAIT ignore an RST; Linux (net.ipv4.tcp_rfc1337 = 0, its default) lets
    an RST at RCV.NXT end TIME-WAIT at once: a duplicate ACK, which TIME-WAIT swallowed, is then
    answered with RST (RFC 9293 3.10.7.1: nothing is there any more)."""
    conn, sock = accepted()
    time_wait(conn, sock)
    conn.wire.send(conn.segment(flags="A"))
    expect_nothing(conn, "a duplicate ACK in TIME-WAIT (the premise)")

    conn.send(flags="R")
    conn.wire.send(conn.segment(flags="A"))

    try:
        conn.expect(flags="R", seq=conn.rcv_nxt, timeout=1.0)
    except ExpectTimeout as exc:
        raise AssertionError(f"an ACK after the RST got no RST: TIME-WAIT outlived the RST\n{exc}") from None
