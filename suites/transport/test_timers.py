"""Loss and timers: retransmission and its backoff, the FIN's, FIN-WAIT-2's end, the user
timeout, PAWS, and loss recovery from duplicate ACKs and SACK (RFC 6298, RFC 9293, RFC 5482,
RFC 7323, RFC 5681, RFC 2018/6675).

Timers are measured on the wire with the kernel's frame timestamps. Every check ends within a
few seconds: the stack's round trip on the veth is tiny, so its RTO sits at the floor (200 ms on
Linux and in netstack), and TCP_USER_TIMEOUT / TCP_LINGER2 shorten the long timers.
"""

from __future__ import annotations

import itertools
import time

import pytest
from scapy.layers.inet import TCP

from labkit.errors import ExpectTimeout, UnexpectedFrame
from labkit.net.plan import FAMILIES
from labkit.packet.testbench import TcpConnection
from labkit.packet.testbench.tcp import options_of, payload_length, seq_add
from labkit.stacks.agent import AgentSocket

from .support import SAMPLE, warm_up

pytestmark = [pytest.mark.needs("tcp", "agent"), pytest.mark.varies_with(), pytest.mark.parametrize("family", FAMILIES)]

NO_SACK = ("MSS", "Timestamp")  # Reno: loss is told by duplicate ACKs alone
PIECE = 500  # one write, one segment: well under any MSS, so no stack coalesces or hands GSO frames
TCP_CA_LOSS = 4  # tcp_info's ca_state after a retransmission timeout (linux/tcp.h)


def copies(wire, tcp: TcpConnection, seq: int, count: int, timeout: float, **fields) -> list[float]:
    """The kernel timestamps of the first `count` segments at `seq` (the original and its
    retransmissions), none acknowledged."""
    times: list[float] = []
    for n in range(count):
        try:
            frame = wire.expect_frame(tcp.template(seq=seq, **fields), timeout=timeout)
        except ExpectTimeout:
            gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
            pytest.fail(f"copy {n + 1} of the segment at {seq} did not come within {timeout:g} s; gaps so far {gaps} s")
        times.append(frame.ts)
    return times


def test_retransmissions_back_off_exponentially(accepted, wire):
    """RFC 6298 5.4-5.5: unacknowledged data is retransmitted when the RTO expires, the same
    bytes again, and the RTO doubles each time (exponential backoff). Without SACK, so no tail
    loss probe (RFC 8985 7, which needs SACK) comes between the timeouts."""
    tcp, sock = accepted(options=NO_SACK)
    warm_up(tcp, sock, then_ack=True)
    sock.setsockopt("TCP_USER_TIMEOUT", 3000)  # the connection ends on its own after the check
    seq = tcp.rcv_nxt
    sock.send(SAMPLE)

    times = copies(wire, tcp, seq, 4, timeout=2.0, payload=SAMPLE)

    gaps = [b - a for a, b in itertools.pairwise(times)]
    shown = [round(g, 3) for g in gaps]
    for before, after in itertools.pairwise(gaps):
        assert after >= 1.5 * before, f"retransmissions came {shown} s apart; each gap should be about twice the one before"


def test_tcp_info_shows_loss_recovery_after_a_timeout(accepted, wire):
    """tcp(7) TCP_INFO: an open connection reports a measured RTT and RTO, state Open; after a
    retransmission timeout it is in Loss recovery with a congestion window of 1 (RFC 5681 3.1).
    Without SACK, so the first retransmission is the timeout's, not a tail loss probe."""
    tcp, sock = accepted(options=NO_SACK)
    warm_up(tcp, sock, then_ack=True)
    before = sock.tcp_info()
    assert before["ca_state"] == 0, f"an idle, loss-free connection reports ca_state {before['ca_state']}; want 0 (Open)"
    assert before["rtt"] > 0 and before["rto"] > 0 and before["snd_cwnd"] > 0, (
        f"tcp_info after an exchange: rtt {before['rtt']} us, rto {before['rto']} us, snd_cwnd {before['snd_cwnd']}"
    )
    sock.setsockopt("TCP_USER_TIMEOUT", 3000)
    seq = tcp.rcv_nxt
    sock.send(SAMPLE)
    copies(wire, tcp, seq, 2, timeout=2.0, payload=SAMPLE)

    after = sock.tcp_info()
    assert (after["ca_state"], after["snd_cwnd"]) == (TCP_CA_LOSS, 1), (
        f"after a retransmission timeout tcp_info says ca_state {after['ca_state']}, snd_cwnd {after['snd_cwnd']}; "
        f"want {TCP_CA_LOSS} (Loss) and 1"
    )


def test_tcp_info_counts_retransmissions(accepted, wire):
    """tcp(7) TCP_INFO: tcpi_retransmits counts the timeouts of the data now outstanding and
    tcpi_total_retrans every segment retransmitted on the connection."""
    tcp, sock = accepted(options=NO_SACK)
    warm_up(tcp, sock, then_ack=True)
    assert sock.tcp_info()["total_retrans"] == 0
    sock.setsockopt("TCP_USER_TIMEOUT", 3000)
    seq = tcp.rcv_nxt
    sock.send(SAMPLE)
    copies(wire, tcp, seq, 3, timeout=2.0, payload=SAMPLE)

    info = sock.tcp_info()
    assert info["retransmits"] >= 2 and info["total_retrans"] >= 2, (
        f"after two retransmissions by timeout tcp_info counts retransmits {info['retransmits']}, total_retrans {info['total_retrans']}"
    )


@pytest.mark.parametrize("peer_fin", [False, True], ids=["fin-wait-1", "closing"])
def test_fin_is_retransmitted_until_acknowledged(accepted, peer_fin):
    """RFC 9293 3.10.4 / 3.8.1: the FIN occupies a sequence number and is retransmitted like data
    until acknowledged, in FIN-WAIT-1 and, after the peer's own FIN crossed it, in CLOSING (where
    the peer's FIN is acknowledged at once)."""
    tcp, sock = accepted()
    warm_up(tcp, sock, then_ack=True)
    sock.shutdown("wr")
    fin = tcp.expect(flags="FA", timeout=2.0)
    fin_seq = int(fin[TCP].seq)
    tcp.rcv_nxt = fin_seq  # the Wire acknowledges everything but the FIN
    if peer_fin:
        tcp.send(flags="FA")
        tcp.expect(flags="A", seq=seq_add(fin_seq, 1), timeout=2.0)
    else:
        tcp.send(flags="A")
    try:
        tcp.expect(flags="FA", seq=fin_seq, timeout=2.0)
    except ExpectTimeout:
        pytest.fail("the stack's FIN, never acknowledged, was not sent again within 2 s")
    tcp.rcv_nxt = seq_add(fin_seq, 1)
    tcp.send(flags="A")


def test_fin_wait_2_ends_after_tcp_linger2(accepted):
    """tcp(7) TCP_LINGER2: an orphaned connection whose FIN was acknowledged waits in FIN-WAIT-2
    for the peer's FIN at most this long (RFC 9293 leaves FIN-WAIT-2 open-ended; Linux bounds it);
    before it ends the stack ignores a bare ACK, after it the connection is gone and the same ACK
    gets a RST."""
    linger = 1.0
    tcp, sock = accepted()
    warm_up(tcp, sock, then_ack=True)
    sock.setsockopt("TCP_LINGER2", int(linger))
    sock.close()
    tcp.expect(flags="FA", timeout=2.0)
    tcp.send(flags="A")  # FIN acknowledged: FIN-WAIT-2
    entered = time.monotonic()

    answered = None
    while (since := time.monotonic() - entered) < linger + 2.0:
        tcp.send(flags="A")
        try:
            tcp.expect(flags="R", seq=None, ack=None, timeout=0.25)
        except ExpectTimeout:
            continue
        answered = since
        break
    assert answered is not None, f"the ACK still got no RST {linger + 2:g} s into FIN-WAIT-2 with TCP_LINGER2 {linger:g} s"
    assert answered >= 0.5 * linger, f"FIN-WAIT-2 ended after {answered:.2f} s, long before TCP_LINGER2's {linger:g} s"


def test_user_timeout_aborts_unacknowledged_data(accepted, wire):
    """RFC 5482 / tcp(7) TCP_USER_TIMEOUT: when sent data stays unacknowledged longer than the
    user timeout, the connection is aborted: retransmissions stop, the application gets
    ETIMEDOUT, and a later segment from the peer finds no connection (RST)."""
    user_timeout = 1.0
    tcp, sock = accepted()
    warm_up(tcp, sock, then_ack=True)
    sock.setsockopt("TCP_USER_TIMEOUT", int(user_timeout * 1000))
    seq = tcp.rcv_nxt
    sock.send(SAMPLE)
    started = time.time()
    outcome = sock.begin_recv(timeout=user_timeout + 3.0)

    copies_at = []
    deadline = time.monotonic() + user_timeout + 1.5
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = wire.expect_frame(tcp.template(seq=seq, payload=SAMPLE), timeout=left)
        except ExpectTimeout:
            break
        copies_at.append(round(frame.ts - started, 3))
    assert len(copies_at) >= 2, f"the data was sent and retransmitted {len(copies_at) - 1} times before the abort: at {copies_at} s"
    late = [t for t in copies_at if t > user_timeout + 0.5]
    assert not late, f"retransmissions went on at {late} s, past the user timeout of {user_timeout:g} s"
    errno = outcome.errno()
    assert errno == "ETIMEDOUT", (
        f"after the user timeout the agent's recv ended with {errno or 'data'}; copies sent at {copies_at} s"
    )
    tcp.send(flags="A")
    try:
        tcp.expect(flags="R", seq=None, ack=None, timeout=1.0)
    except ExpectTimeout:
        pytest.fail("the connection timed out (ETIMEDOUT), yet a segment from the peer got no RST")


def test_paws_drops_a_segment_with_an_old_timestamp(accepted):
    """RFC 7323 5.3 (PAWS): a segment whose TSval is older than the last one accepted is a
    duplicate from an earlier wrap; it is dropped (its data not delivered) and acknowledged."""
    tcp, sock = accepted()
    assert tcp.negotiated.timestamps, "the stack did not agree to timestamps (its SYN-ACK carries no Timestamp option)"
    accepted_tsval = int(options_of(tcp.send(b"a")[TCP])["Timestamp"][0])
    tcp.expect(flags="A", timeout=2.0)
    old_tsval = (accepted_tsval - 1000) % (1 << 32)
    old = tcp.segment(b"b", options=[("NOP", None), ("NOP", None), ("Timestamp", (old_tsval, tcp.ts_recent))])
    tcp.wire.send(old)  # not counted as sent: PAWS must drop it
    try:
        answer = tcp.expect(flags="A", ack=None, timeout=2.0)
    except ExpectTimeout:
        pytest.fail("a segment with an old TSval got no ACK within 2 s")
    assert int(answer[TCP].ack) == tcp.snd_nxt, (
        f"the stack took the byte of a segment whose TSval is 1000 behind the last one: it acknowledges up to "
        f"{(int(answer[TCP].ack) - tcp.snd_nxt) % (1 << 32)} byte(s) past it"
    )
    assert sock.recv(10) == b"a"
    assert "POLLIN" not in sock.poll(timeout=0.2), "the data of the segment with the old TSval was delivered"
    tcp.send(b"c")  # a current TSval: accepted
    tcp.expect(flags="A", timeout=2.0)
    assert sock.recv(10) == b"c"


def send_pieces(tcp: TcpConnection, sock: AgentSocket, wire, count: int) -> list[tuple[int, int, float]]:
    """`count` writes of PIECE bytes; the segments they left in as (seq, length, time), none
    acknowledged."""
    segs: list[tuple[int, int, float]] = []
    sock.send_each([bytes([0x41 + n]) * PIECE for n in range(count)])  # one call: the RTO runs from the first
    total = count * PIECE
    deadline = time.monotonic() + 3.0
    got = 0
    while got < total and (left := deadline - time.monotonic()) > 0:
        frame = wire.expect_frame(tcp.template(), timeout=left)
        size = payload_length(frame.packet)
        segs.append((int(frame.packet[TCP].seq), size, frame.ts))
        tcp.receive_segment(frame.packet)
        got += size
    assert got == total, f"{got} of {total} bytes came"
    return segs


def test_three_duplicate_acks_trigger_fast_retransmit(accepted, wire):
    """RFC 5681 3.2: the third duplicate ACK tells the sender a segment is lost: it retransmits
    it at once (fast retransmit), without waiting for the RTO."""
    tcp, sock = accepted(options=NO_SACK)
    warm_up(tcp, sock, then_ack=True)
    rto = sock.tcp_info()["rto"] / 1e6
    segs = send_pieces(tcp, sock, wire, 6)
    assert len(segs) >= 5, f"the 6 writes left as {len(segs)} segments; the check needs at least 5"
    lost_seq = segs[0][0]

    ahead = tcp.rcv_nxt
    tcp.rcv_nxt = lost_seq  # segment 1 lost: every later one gets a duplicate ACK
    tcp.send(flags="A")
    tcp.send(flags="A")
    try:
        wire.expect_none(tcp.template(seq=lost_seq), timeout=0.05)
    except UnexpectedFrame:
        pytest.fail("the segment was retransmitted after only two duplicate ACKs")
    third = time.time()
    tcp.send(flags="A")
    try:
        frame = wire.expect_frame(tcp.template(seq=lost_seq), timeout=2.0)
    except ExpectTimeout:
        pytest.fail("after three duplicate ACKs the lost segment was not retransmitted within 2 s")
    delay = frame.ts - third
    assert delay < rto / 2, (
        f"the lost segment was retransmitted {delay:.3f} s after the third duplicate ACK ({frame.ts - segs[0][2]:.3f} s after it "
        f"was sent), with an RTO of {rto:.3f} s: by the timer, not by fast retransmit"
    )
    tcp.rcv_nxt = ahead
    tcp.send(flags="A")


def test_sack_lets_the_stack_retransmit_only_the_holes(accepted, wire):
    """RFC 2018 / RFC 6675, with RACK's loss detection (RFC 8985): told by SACK blocks which
    segments arrived, the sender retransmits the segments missing between them, both holes
    without waiting for the first to be filled, and none the peer has reported (a tail loss
    probe of the last segment sent before the SACK that covers it is allowed, RFC 8985 7)."""
    tcp, sock = accepted()
    assert tcp.negotiated.sack_permitted, "the stack did not agree to SACK (its SYN-ACK carries no SAckOK)"
    warm_up(tcp, sock, then_ack=True)
    segs = send_pieces(tcp, sock, wire, 8)
    assert len(segs) >= 7, f"the 8 writes left as {len(segs)} segments; the check needs at least 7"
    end = tcp.rcv_nxt
    base = segs[0][0]
    lost = {segs[1][0], segs[3][0]}

    def offset(seq: int) -> int:
        return (seq - base) % (1 << 32)

    tcp.rcv_nxt = segs[1][0]
    tcp.send(flags="A")  # the first segment arrived, the second did not
    covered = {segs[0][0]: time.time()}  # seq of a segment -> when the Wire (S)ACKed it
    blocks: list[tuple[int, int]] = []
    for seq, size, _ in segs[2:]:
        if seq in lost:
            continue
        edge = seq_add(seq, size)
        if blocks and blocks[0][1] == seq:
            blocks[0] = (blocks[0][0], edge)
        else:
            blocks.insert(0, (seq, edge))
        sack = [("NOP", None), ("NOP", None), ("SAck", tuple(x for block in blocks[:3] for x in block))]
        tcp.send(flags="A", options=list(tcp.segment(flags="A")[TCP].options) + sack)
        covered[seq] = time.time()

    missing = set(lost)
    deadline = time.monotonic() + 2.0
    while missing and (left := deadline - time.monotonic()) > 0:
        try:
            frame = wire.expect_frame(tcp.template(seq=None), timeout=left)
        except ExpectTimeout:
            break
        missing.discard(int(frame.packet[TCP].seq))
    assert not missing, (
        f"the SACK blocks showed bytes {sorted(offset(s) for s in lost)} missing; without a further ACK the stack "
        f"did not retransmit {sorted(offset(s) for s in missing)} within 2 s"
    )
    tcp.rcv_nxt = end
    tcp.send(flags="A")
    wire.listen(0.3)

    wrong = []
    for frame in wire.frames:
        seg = frame.packet.getlayer(TCP) if not frame.outgoing else None
        if seg is None or int(seg.dport) != tcp.local_port or not payload_length(frame.packet):
            continue
        seq = int(seg.seq)
        if seq in covered and frame.ts > covered[seq]:
            wrong.append(offset(seq))
    assert not wrong, f"the stack retransmitted data at offset(s) {sorted(set(wrong))} after the Wire had (S)ACKed it"


def test_tail_loss_probe_resends_the_last_segment(accepted, wire):
    """RFC 8985 7 (RACK-TLP): when a whole flight goes unacknowledged the sender does not wait for
    the RTO: after a probe timeout of about two round trips it retransmits the last segment, so
    the receiver's (S)ACK tells what of the tail was lost."""
    tcp, sock = accepted()
    assert tcp.negotiated.sack_permitted, "the stack did not agree to SACK (its SYN-ACK carries no SAckOK)"
    warm_up(tcp, sock, then_ack=True)
    rto = sock.tcp_info()["rto"] / 1e6
    segs = send_pieces(tcp, sock, wire, 4)
    last_seq, _, last_sent = segs[-1]
    try:
        frame = wire.expect_frame(tcp.template(seq=None), timeout=2.0)
    except ExpectTimeout:
        pytest.fail("nothing of the unacknowledged flight was sent again within 2 s")
    got = int(frame.packet[TCP].seq)
    offsets = {seq: (seq - segs[0][0]) % (1 << 32) for seq, _, _ in segs}
    assert got == last_seq, (
        f"the first retransmission is of byte {offsets.get(got, got)}; want the last segment's, byte {offsets[last_seq]}"
    )
    delay = frame.ts - last_sent
    assert delay < rto, f"the probe came {delay:.3f} s after the last segment, no sooner than the RTO of {rto:.3f} s"
