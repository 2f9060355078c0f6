"""The listen queue: what a listener does with handshakes and connections nobody accepts yet.

A listener keeps two queues: handshakes in progress (SYN-RECEIVED, the SYN queue) and
connections complete but not accepted (the accept queue). listen(2)'s backlog bounds the accept
queue, and Linux lets it hold backlog + 1 connections; what the stack does past those bounds
(ignore a SYN, ignore a final ACK, answer with a SYN cookie) is what a client sees.
"""

import pytest
from scapy.layers.inet import TCP

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES
from labkit.packet.testbench import TcpConnection
from labkit.stacks.agent import SocketCallError

pytestmark = [pytest.mark.needs("tcp", "agent"), pytest.mark.varies_with(), pytest.mark.parametrize("family", FAMILIES)]

SYN_ACK_RTO = 1.0  # the first SYN-ACK retransmission: Linux's TCP_TIMEOUT_INIT, netstack's initial RTO
SLACK = 1.5  # on top of it, for a loaded machine


def established(wire, ends, port: int, data: bytes = b"q") -> TcpConnection:
    """A connection the Wire opens and sends `data` on; the stack's ACK of the data shows it is
    established on the stack's side, so it sits in the accept queue."""
    conn = TcpConnection(wire, ends, port=port)
    conn.connect(timeout=2)
    conn.send(data)
    conn.expect(flags="A", timeout=2)
    return conn


def half_open(wire, ends, port: int) -> TcpConnection:
    """A connection the Wire opens up to the stack's SYN-ACK and leaves there (SYN-RECEIVED)."""
    conn = TcpConnection(wire, ends, port=port)
    conn.send(flags="S")
    conn.expect(flags="SA", timeout=2)
    return conn


def syn_acks(wire, conn: TcpConnection) -> int:
    """How many SYN-ACKs for `conn` the Wire has seen so far, each one counted (also those an
    expect consumed on its way to another frame)."""
    count = 0
    for frame in wire.frames:
        tcp = frame.packet.getlayer(TCP)
        if not frame.outgoing and tcp is not None and int(tcp.dport) == conn.local_port and int(tcp.flags) & 0x12 == 0x12:
            count += 1
    return count


def test_a_syn_is_ignored_while_the_accept_queue_is_full(agent, wire, ends):
    """A SYN that finds the accept queue full is dropped without an answer (no RST: the client
    retries), and answered once the application accepts."""
    backlog = 1
    listener = agent.listener(ends.family, backlog=backlog)
    for n in range(backlog + 1):  # what Linux's accept queue holds: backlog + 1
        try:
            established(wire, ends, listener.port)
        except ExpectTimeout as exc:
            raise AssertionError(
                f"connection {n + 1} of the backlog + 1 = {backlog + 1} the accept queue holds (listen({backlog})) "
                f"was not established:\n{exc}"
            ) from None

    late = TcpConnection(wire, ends, port=listener.port)
    syn = late.send(flags="S")
    try:
        wire.expect_none(late.template(), timeout=1.0)
    except AssertionError as exc:
        raise AssertionError(f"a SYN with {backlog + 1} connections waiting on listen({backlog}) was answered: {exc}") from None

    listener.accept()
    wire.send(syn)  # the client's retransmission
    late.expect(flags="SA", timeout=2)


def test_the_final_ack_is_dropped_while_the_accept_queue_is_full(agent, wire, ends):
    """A handshake whose final ACK finds the accept queue full stays in SYN-RECEIVED: the ACK
    is ignored (Linux's tcp_abort_on_overflow=0, no RST), the SYN-ACK retransmitted, and the
    ACK that answers it, once there is room, completes the connection."""
    backlog = 2
    listener = agent.listener(ends.family, backlog=backlog)
    for _ in range(backlog):
        established(wire, ends, listener.port)
    waiting = half_open(wire, ends, listener.port)
    isn = waiting.rcv_nxt - 1
    last = half_open(wire, ends, listener.port)  # fills the queue's last place (backlog + 1)
    last.send(flags="A")
    last.send(b"q")
    last.expect(flags="A", timeout=2)

    waiting.send(flags="A")
    try:
        again = waiting.expect(seq=None, timeout=SYN_ACK_RTO + SLACK)
    except ExpectTimeout as exc:
        raise AssertionError(
            f"after the final ACK met a full accept queue, the stack sent nothing (want its SYN-ACK again):\n{exc}"
        ) from None
    got = f"{again[TCP].flags} seq={again[TCP].seq}"
    assert again[TCP].flags == "SA" and again[TCP].seq == isn, (
        f"the final ACK met a full accept queue and the stack answered {got}; want the SYN-ACK (seq={isn}) again, the ACK ignored"
    )

    listener.accept()
    waiting.send(flags="A")  # the answer to the retransmitted SYN-ACK
    waiting.send(b"w")
    waiting.expect(flags="A", timeout=2)


def test_a_listener_keeps_backlog_plus_one_handshakes_before_using_cookies(agent, wire, ends):
    """Linux keeps backlog + 1 handshakes in SYN-RECEIVED, retransmitting their SYN-ACKs; a SYN
    past them is answered with a SYN cookie (RFC 4987 3.6), which keeps no state and so is never
    retransmitted."""
    backlog = 1
    listener = agent.listener(ends.family, backlog=backlog)
    kept = [half_open(wire, ends, listener.port) for _ in range(backlog + 1)]
    cookie = half_open(wire, ends, listener.port)

    try:
        kept[-1].expect(flags="SA", seq=kept[-1].rcv_nxt - 1, timeout=SYN_ACK_RTO + SLACK)
        wire.expect_none(cookie.template(flags="SA"), timeout=0.5)
    except AssertionError:
        pass  # judged below on every SYN-ACK seen
    counts = [syn_acks(wire, conn) for conn in kept]
    assert all(n >= 2 for n in counts), (
        f"of the {backlog + 1} handshakes listen({backlog}) keeps, SYN-ACKs were sent {counts} times within "
        f"{SYN_ACK_RTO + SLACK:g}s; want each retransmitted (kept in SYN-RECEIVED)"
    )
    cookies = syn_acks(wire, cookie)
    assert cookies == 1, f"the SYN past {backlog + 1} handshakes got {cookies} SYN-ACK(s); want 1 and no retransmission (a cookie)"


def test_a_syn_cookie_completes_the_connection_from_the_final_ack_alone(agent, wire, ends):
    """With the SYN queue full, the next SYN still gets a SYN-ACK whose sequence number is a
    cookie (RFC 4987 3.6), not retransmitted since the stack keeps nothing; the final ACK alone
    then makes the connection, with the data it carries."""
    backlog = 1
    listener = agent.listener(ends.family, backlog=backlog)
    first = half_open(wire, ends, listener.port)
    for _ in range(backlog):  # Linux keeps backlog + 1 handshakes; netstack backlog
        half_open(wire, ends, listener.port)
    late = TcpConnection(wire, ends, port=listener.port)
    late.send(flags="S")
    try:
        late.expect(flags="SA", timeout=2)
    except ExpectTimeout as exc:
        raise AssertionError(f"a SYN over a full SYN queue got no SYN-ACK (want one carrying a cookie):\n{exc}") from None

    try:
        first.expect(flags="SA", seq=first.rcv_nxt - 1, timeout=SYN_ACK_RTO + SLACK)
    except ExpectTimeout as exc:
        raise AssertionError(f"the stack never retransmitted the SYN-ACK of the first handshake it keeps:\n{exc}") from None
    wire.expect_none(late.template(flags="SA"), timeout=0.5)
    assert syn_acks(wire, late) == 1, (
        f"the SYN-ACK over a full SYN queue was sent {syn_acks(wire, late)} times; a cookie is sent once"
    )

    late.send(flags="A")
    late.send(b"cookie")
    late.expect(flags="A", timeout=2)
    conn = listener.accept()
    assert conn.getpeername() == (ends.peer, late.local_port)
    got = conn.recv(100)
    assert got == b"cookie", f"the connection made from the cookie read {got!r}; the Wire sent b'cookie'"


def test_a_connection_reset_before_accept_is_accepted_and_reports_the_reset(agent, wire, ends):
    """A connection the peer resets while it waits in the accept queue is still handed out by
    accept (Linux keeps it there): what arrived before the RST is read, then ECONNRESET, and a
    write after that fails with EPIPE."""
    listener = agent.listener(ends.family)
    conn = established(wire, ends, listener.port, b"before")
    conn.reset()

    sock = listener.accept()
    got = sock.recv(100)
    assert got == b"before", f"the accepted connection read {got!r}; the Wire sent b'before' before its RST"
    try:
        more = sock.recv(100, timeout=2)
    except SocketCallError as exc:
        assert exc.errno == "ECONNRESET", f"the read after the data failed with {exc.errno}; want ECONNRESET (the Wire reset it)"
    else:
        raise AssertionError(f"the read after the data gave {more!r}; want ECONNRESET (the Wire reset the connection)")
    try:
        sock.send(b"x")
    except SocketCallError as exc:
        assert exc.errno == "EPIPE", f"a write on the reset connection failed with {exc.errno}; want EPIPE"
    else:
        raise AssertionError("a write on the reset connection succeeded; want EPIPE")


def test_closing_a_listener_resets_the_connections_it_never_accepted(agent, wire, ends):
    """Closing a listener aborts the connections still in its accept queue: each peer gets a
    RST (RFC 9293 3.10.4 ABORT), not a silent drop nor a FIN."""
    listener = agent.listener(ends.family)
    conn = established(wire, ends, listener.port)
    listener.close()
    try:
        conn.expect(flags="RA", timeout=2)
    except ExpectTimeout as exc:
        raise AssertionError(f"closing the listener sent no RST to the connection it never accepted:\n{exc}") from None
