"""Fanout: many flows into a stack with one or several channels, and the kernel's fanout itself.

A stack with N channels reads its link through N AF_PACKET sockets in one fanout group; the
kernel hashes each flow to one of them. Every datagram of every flow must arrive, each flow's
datagrams in the order sent, and with several channels more than one must carry traffic: the
kernel's own per-socket counters (PACKET_STATISTICS) say which did. Fragmented datagrams must
be reassembled. On the kernel reference, the lab's own fanout group shows what the stacks rely
on: a flow always lands on the same socket, flows spread over all of them, and a group cannot
be joined with another mode.

A verdict must not depend on how fast the stack is scheduled. So the lab never puts more frames
on the link at once than the stack's receive path holds while the stack reads none of them (its
link queue, `_link_queue`: the kernel's input backlog, the smallest of the stack's AF_PACKET
channels, the service's socket buffer, each measured or read in the same run), and paces the
rest in rounds, each sent once the service has the one before. How large a burst a stack absorbs
beyond its queue, by reading while it comes, is a capacity figure: benchmarks/bench_burst.py.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import select
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from scapy.layers.inet import TCP, UDP, fragment
from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether

from labkit.errors import ExpectTimeout
from labkit.net import layouts
from labkit.net.plan import FAMILIES, AddressPlan
from labkit.packet import bpf
from labkit.packet.checksum import checksum_errors
from labkit.packet.sockets import backlog_drops, netdev_max_backlog, queue_capacity, truesize_of
from labkit.packet.testbench import NumberedFlows
from labkit.packet.wire import Wire
from labkit.uapi import (
    PACKET_FANOUT,
    PACKET_FANOUT_FLAG_DEFRAG,
    PACKET_FANOUT_HASH,
    PACKET_FANOUT_LB,
    SO_RCVBUFFORCE,
    SOL_PACKET,
)

FLOWS = 64
PER_FLOW = 8
FRAGMENTED = 16  # datagrams of 3000 bytes, each cut into three fragments
ROUND = 16  # frames in flight at once: two consecutive datagrams of each of 8 flows
# Frames the kernel or the stack may put in a queue while a check uses it (router and neighbour
# solicitations, MLD reports): a check leaves this much of the link queue free.
HEADROOM = 4
SINK_RCVBUF = 4 << 20  # the receive buffer the UDP services ask for (the kernel doubles it)
OTHER_HOST = "02:00:00:00:00:99"  # calibration frames carry this destination: no stack takes them
# What reaches a stack's channels, and in which order, depends on how many there are and on how
# each reads (a virtio_net_hdr with GSO, checksum verification); the replies' path on the rest.
RECEIVE_PATH = pytest.mark.varies_with("channels", "gso", "rx_checksum")


def _busy_channels(stack, before: dict[int, int], what: str) -> None:
    channels = stack.options.get("channels", 1)
    if channels > 1:
        after = stack.channel_counts()
        counts = {fd: n - before.get(fd, 0) for fd, n in after.items()}
        busy = [fd for fd, n in counts.items() if n > 0]
        assert len(busy) > 1, f"{channels} channels, yet only {len(busy)} carried the {what} (frames per channel fd: {counts})"


@dataclass(frozen=True)
class LinkQueue:
    """How many frames a stack's receive path holds while the stack reads none of them: the
    smallest of the queues a frame passes (`bounds`, each named with what sizes it), less
    HEADROOM. A flow may hash to any one channel, so each channel is a bound on its own."""

    frames: int
    bounds: dict[str, int]

    def __str__(self) -> str:
        return f"link queue {self.frames} frames (the smallest of: {'; '.join(f'{k} = {v}' for k, v in self.bounds.items())}; less {HEADROOM} headroom)"


def _link_queue(stack, frame_len: int, truesize: int) -> LinkQueue:
    """The frames of `frame_len` bytes (each costing `truesize` of a socket buffer) that `stack`'s
    receive path holds unread: the per-CPU input backlog of its veth (for the kernel reference,
    the whole of it), each AF_PACKET channel (an RX ring's slots, or rcvbuf / truesize), and the
    service's socket buffer."""
    bounds = {"netdev_max_backlog": netdev_max_backlog(stack.link.ns.netns)}
    for sock in stack.link_sockets():
        frames, how = queue_capacity(sock, frame_len, truesize)
        bounds[f"channel fd {sock.fd} ({how})"] = frames
    bounds[f"service socket ({SINK_RCVBUF} bytes / truesize {truesize})"] = SINK_RCVBUF // truesize
    return LinkQueue(min(bounds.values()) - HEADROOM, bounds)


@pytest.fixture(scope="module")
def frame_cost(kernel_link) -> Callable[[bytes], int]:
    """What a frame like the given one costs a packet socket's receive buffer (its skb truesize),
    measured on the module's own kernel veth: the frame, addressed to another host, injected at
    one end and queued on a lab socket at the other. Once per frame length and module."""
    _plan, near, far = kernel_link
    cache: dict[int, int] = {}

    def cost(frame: bytes) -> int:
        if len(frame) not in cache:
            probe = bytes.fromhex(OTHER_HOST.replace(":", "")) + frame[6:]
            with Wire(far.ns.netns, far.name, mac=far.mac, far_mac=near.mac, record=False) as w:
                sizes = truesize_of(near.ns.socket, near.name, bpf.program(f"ether dst {OTHER_HOST}"), w.send, [probe] * 4)
            cache[len(frame)] = max(sizes)
        return cache[len(frame)]

    return cost


def _drops(stack, before: dict[int, int]) -> str:
    drops = {fd: n - before.get(fd, 0) for fd, n in stack.channel_drops().items() if n - before.get(fd, 0)}
    return f"; the kernel dropped {sum(drops.values())} at the stack's AF_PACKET channels (PACKET_STATISTICS, by fd: {drops})" if drops else ""


@RECEIVE_PATH
@pytest.mark.needs("udp", "services")
@pytest.mark.parametrize("family", FAMILIES)
def test_many_flows_arrive_complete_and_in_order(stack, wire, ends, frame_cost):
    """Paced in rounds of ROUND frames (fewer if the link queue holds fewer), each round two
    datagrams of each of ROUND / 2 flows (so each flow has two in flight at once), the next
    round once the service has this one: no round can overrun the queue, however slowly the
    stack reads."""
    sink = stack.service("udp-sink", rcvbuf=SINK_RCVBUF)
    flows = NumberedFlows(wire, ends, sink.port, FLOWS, PER_FLOW)
    frame = flows.frames([0])[0]
    queue = _link_queue(stack, len(frame), frame_cost(frame))
    pace = min(ROUND, queue.frames) // 2  # flows per round
    assert pace >= 1, f"the stack's receive path holds too few frames for two datagrams at once: {queue}"
    before = stack.channel_counts()
    for first in range(0, FLOWS, pace):
        ports = flows.ports[first : first + pace]
        for n in range(0, PER_FLOW, 2):
            wire.inject(flows.frames([n, n + 1], ports))
            flows.collect(sink, 2 * len(ports), timeout=5)
    lost, disordered = flows.lost(), flows.disordered()
    assert not lost, (
        f"{sum(map(len, lost.values()))} of {len(flows)} datagrams lost in rounds of {2 * pace}, e.g. flow "
        f"{next(iter(lost.items()))}; {queue}"
    )
    assert not disordered, f"{len(disordered)} flows delivered out of order, e.g. {next(iter(disordered.items()))}"
    _busy_channels(stack, before, f"{FLOWS} flows")


def _read_exactly(conn: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(size - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _unanswered_connect(wire, conn: socket.socket, me: str, port: int, nth: int) -> str:
    wire.drain()
    mine = conn.getsockname()[1]
    replies = [f.packet for f in wire.frames if not f.outgoing and f.packet.haslayer(TCP) and f.packet[TCP].dport == mine]
    seen = "; ".join(
        f"{p[TCP].sprintf('%TCP.flags%')} chksum={p[TCP].chksum:#06x} {checksum_errors(p) or 'valid'}" for p in replies[:3]
    )
    return f"connection {nth} of {FLOWS} to [{me}]:{port} was not accepted within 3 s; the stack sent it: {seen or 'nothing'}"


@pytest.mark.needs("tcp", "services")
@pytest.mark.layout.with_args(layouts.kernel_peer)
@pytest.mark.parametrize("family", FAMILIES)
def test_many_tcp_flows_arrive_complete_and_in_order(testbed, stack, wire, ends):
    """FLOWS connections from a kernel peer to an echo service, each PER_FLOW numbered records
    written one per segment (TCP_NODELAY), paced like the UDP check: two records of each of 8
    flows in flight, then their echoes. Each flow's echo must be its records, all and in order,
    and with several channels more than one must have carried the segments. (TCP repairs
    reordering below it, so unlike the UDP check this one does not see a reordering channel:
    receivers coalesce their SACKs, so not even the ACKs reliably show it.)"""
    echo = stack.service("tcp-echo")
    conns: list[socket.socket] = []
    record = struct.Struct("!HI")
    try:
        for _ in range(FLOWS):
            conn = testbed.peer_end.ns.socket(ends.af, socket.SOCK_STREAM)
            conns.append(conn)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(3)
            try:
                conn.connect((ends.stack, echo.port))
            except TimeoutError:
                raise AssertionError(_unanswered_connect(wire, conn, ends.stack, echo.port, len(conns))) from None
        before = stack.channel_counts()
        echoed: dict[int, bytes] = defaultdict(bytes)
        for first in range(0, FLOWS, ROUND // 2):
            group = conns[first : first + ROUND // 2]
            for n in range(0, PER_FLOW, 2):
                for k in (n, n + 1):
                    for conn in group:
                        conn.sendall(record.pack(conn.getsockname()[1], k))
                deadline = time.monotonic() + 5
                for conn in group:
                    echoed[conn.getsockname()[1]] += _read_exactly(conn, 2 * record.size, deadline)
        want = {c.getsockname()[1]: b"".join(record.pack(c.getsockname()[1], k) for k in range(PER_FLOW)) for c in conns}
    finally:
        for conn in conns:
            conn.close()
    wrong = {
        port: [record.unpack_from(got, i)[1] for i in range(0, len(got) - 5, record.size)]
        for port, got in echoed.items()
        if got != want[port]
    }
    assert not wrong, f"{len(wrong)} of {FLOWS} TCP flows not echoed whole and in order, e.g. flow {next(iter(wrong.items()))}"
    _busy_channels(stack, before, f"{FLOWS} TCP flows")


@RECEIVE_PATH
@pytest.mark.needs("udp", "services")
def test_a_burst_within_the_kernels_backlog_is_absorbed(stack, wire, plan, frame_cost):
    """A burst of numbered datagrams of many flows, all at once, as large as the stack's link
    queue holds if the stack read nothing while it came (up to FLOWS x PER_FLOW: 512 frames on
    the kernel reference, whose queue is its input backlog; 28 on gVisor, whose channels are RX
    rings of 32 frames), must be delivered whole, and the kernel must count no drop at
    the stack's AF_PACKET channels (PACKET_STATISTICS). What a stack absorbs beyond its queue
    depends on how fast it is scheduled, so it is no verdict here (benchmarks/bench_burst.py)."""
    sink = stack.service("udp-sink", rcvbuf=SINK_RCVBUF)
    ends = plan.endpoints("ipv4")
    frame = NumberedFlows(wire, ends, sink.port, 1, 1).frames()[0]
    queue = _link_queue(stack, len(frame), frame_cost(frame))
    n_flows = min(FLOWS, queue.frames // 2)  # at least two datagrams of each flow
    assert n_flows >= 1, f"the stack's receive path holds fewer than 2 frames: {queue}"
    flows = NumberedFlows(wire, ends, sink.port, n_flows, min(PER_FLOW, queue.frames // n_flows))
    drops, counts, backlog = stack.channel_drops(), stack.channel_counts(), backlog_drops()
    wire.inject(flows.frames())
    flows.collect(sink, len(flows), timeout=5)
    lost = sum(map(len, flows.lost().values()))
    dropped = {fd: n - drops.get(fd, 0) for fd, n in stack.channel_drops().items() if n - drops.get(fd, 0)}
    if lost or dropped:
        took = sum(n - counts.get(fd, 0) for fd, n in stack.channel_counts().items())
        where = (
            f"{sum(dropped.values())} dropped by the kernel at the stack's AF_PACKET channels (PACKET_STATISTICS, by fd: "
            f"{dropped}; the channels saw {took} frames meanwhile), {lost - sum(dropped.values())} lost after that"
            if counts
            else f"{lost} lost between the veth and the service (no AF_PACKET channels)"
        )
        raise AssertionError(
            f"{lost} of {len(flows)} datagrams of a burst the link queue holds lost: {where}; input backlog drops on the "
            f"host meanwhile (softnet_stat, every namespace): {backlog_drops() - backlog}; {queue}"
        )


@RECEIVE_PATH
@pytest.mark.needs("udp", "services")
@pytest.mark.parametrize("family", FAMILIES)
def test_fragmented_datagrams_are_reassembled(stack, wire, ends):
    sink = stack.service("udp-sink")
    drops = stack.channel_drops()
    bad = {}
    for i in range(FRAGMENTED):  # one datagram at a time: a loss is the reassembly's, not a burst's
        port = 30000 + i
        payload = struct.pack("!HI", port, 0) + random.randbytes(3000)
        if ends.version == 4:
            pieces = fragment(ends.to_stack(id=0x100 + i) / UDP(sport=port, dport=sink.port) / payload, fragsize=1200)
        else:
            pieces = fragment6(ends.to_stack() / IPv6ExtHdrFragment(id=0x100 + i) / UDP(sport=port, dport=sink.port) / payload, 1280)
        wire.send(*[wire.ether() / p for p in pieces])
        try:
            event = sink.wait_for(lambda e: e["event"] == "datagram", timeout=3)
        except ExpectTimeout:
            bad[port] = "never delivered"
            continue
        if (event["peer"][1], event["len"]) != (port, len(payload)):
            bad[port] = f"delivered as {event['len']} bytes from port {event['peer'][1]}"
    assert not bad, f"{len(bad)} of {FRAGMENTED} fragmented datagrams not delivered whole: {bad}" + _drops(stack, drops)


@pytest.mark.varies_with("channels")
@pytest.mark.fresh  # a second sandbox joins the testbed's link
@pytest.mark.changes("addresses")  # the namespace's kernel keeps the second sandbox's address on the link
@pytest.mark.needs("netns-copy", "af-packet", "udp", "services", "ipv4")
def test_two_sandboxes_on_one_namespace_keep_their_own_fanout_groups(testbed, stack_spec, stack, wire, plan, frame_cost):
    """A second sandbox started on the same namespace (given an address of its own there) must
    join its channels to another group than the first: with the same id and mode the kernel
    would merge both into one group and hash each flow to either sandbox's sockets, so a share of
    each one's traffic would reach the other, which drops it.

    Each sandbox's channels see every frame on the link, the other's too. So the datagrams go to
    a sink (no replies on the link), to the first sandbox and then to the second, in rounds of
    ROUND / 2, each once the sink has the one before: the second's queue may still hold all of
    the first's datagrams when its own rounds come, and both must fit in it."""
    second_addr = str(ipaddress.ip_interface(f"{plan.stack4}/{plan.net4.prefixlen}").ip + 1)
    end = testbed.stack_end
    with end.ns.iproute() as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=end.name)[0], address=second_addr, prefixlen=plan.net4.prefixlen)
    second = stack_spec.create()
    try:
        second.start(testbed.topology, end)
        groups = {
            who: {s.fanout.group for s in sandbox.link_sockets() if s.fanout}
            for who, sandbox in (("first", stack), ("second", second))
        }
        assert groups["first"] and groups["second"], f"a sandbox has no channel in a fanout group: {groups}"
        assert not groups["first"] & groups["second"], f"both sandboxes joined fanout group(s) {groups['first'] & groups['second']}"
        sinks = {who: sandbox.service("udp-sink", rcvbuf=SINK_RCVBUF) for who, sandbox in (("first", stack), ("second", second))}
        ends = {"first": plan.endpoints("ipv4"), "second": replace(plan.endpoints("ipv4"), stack=second_addr)}
        frame = NumberedFlows(wire, ends["first"], sinks["first"].port, 1, 1).frames()[0]
        queues = [_link_queue(sandbox, len(frame), frame_cost(frame)) for sandbox in (stack, second)]
        per_round = ROUND // 2
        n_flows = min(FLOWS // 4, min(q.frames for q in queues) - per_round)
        assert n_flows >= per_round, f"the sandboxes' receive paths hold too few frames for {per_round} more than a round: {queues}"
        lost = {}
        for who in ("first", "second"):
            flows = NumberedFlows(wire, ends[who], sinks[who].port, n_flows, 1)
            for first in range(0, n_flows, per_round):
                wire.inject(flows.frames(ports=flows.ports[first : first + per_round]))
                flows.collect(sinks[who], len(flows.ports[first : first + per_round]), timeout=5)
            if missing := flows.lost():
                lost[who] = len(missing)
        assert not lost, f"datagrams of {n_flows} flows each that never reached their sandbox: {lost}; {queues[0]}; {queues[1]}"
    finally:
        second.stop()


# -- the kernel's fanout, as the stacks use it ---------------------------------------------------


def _fanout_socket(ns, ifname: str, group: int, mode: int) -> socket.socket:
    """A member of a fanout group whose queue holds every frame these checks send (FLOWS x
    PER_FLOW to each group, about 1 KiB of buffer each), though it is read only afterwards."""
    s = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    s.bind((ifname, 0x0003))
    s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", group | (mode << 16)))
    return s


@pytest.fixture(scope="module")
def kernel_link():
    plan = AddressPlan()
    topo, near, far = plan.build()
    with topo:
        yield plan, near, far


def _flows_by_socket(kernel_link, socks: list[socket.socket], expected: int) -> tuple[dict[int, set[int]], list[int]]:
    """Inject FLOWS flows from the far end; which of `socks` (by index) saw each flow (source
    port). Reads until `expected` frames of them arrived in all, or the sockets stay quiet 0.5 s."""
    from labkit.packet.wire import Wire

    plan, near, far = kernel_link
    with Wire(far.ns.netns, far.name, mac=far.mac, far_mac=near.mac, record=False) as w:
        flows = NumberedFlows(w, plan.endpoints("ipv4"), 9, FLOWS, PER_FLOW)
        w.inject(flows.frames())
    where: dict[int, set[int]] = defaultdict(set)
    index = {s.fileno(): i for i, s in enumerate(socks)}
    seen = 0
    while seen < expected:
        ready, _, _ = select.select(socks, [], [], 0.5)
        if not ready:
            break
        for s in ready:
            pkt = Ether(s.recv(2048))
            if pkt.haslayer(UDP) and pkt[UDP].dport == 9:
                where[pkt[UDP].sport].add(index[s.fileno()])
                seen += 1
    return where, flows.ports


def test_kernel_fanout_keeps_each_flow_on_one_socket_and_spreads_flows(kernel_link):
    _plan, near, _far = kernel_link
    group = random.randint(1, 0xFFFF)
    socks = [_fanout_socket(near.ns.netns, near.name, group, PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) for _ in range(4)]
    try:
        where, sent = _flows_by_socket(kernel_link, socks, expected=FLOWS * PER_FLOW)
    finally:
        for s in socks:
            s.close()
    assert set(where) == set(sent), f"{len(set(sent) - set(where))} flows never reached the group"
    split = {p: sorted(i) for p, i in where.items() if len(i) > 1}
    assert not split, f"{len(split)} flows were split across sockets, e.g. {next(iter(split.items()))}"
    used = {i for s in where.values() for i in s}
    assert used == {0, 1, 2, 3}, f"{FLOWS} flows reached only sockets {sorted(used)} of 4"


@pytest.mark.parametrize("same_id", [False, True], ids=["own-ids", "shared-id"])
def test_kernel_gives_each_group_every_frame_but_merges_a_shared_id(kernel_link, same_id):
    """Two sandboxes of two channels each on one device. With their own group ids each group gets
    every frame; with one id (and mode) the kernel makes them one group and hashes each flow to a
    single socket of either, which is why a stack must pick an id no other one on the namespace uses."""
    _plan, near, _far = kernel_link
    first = random.randint(1, 0x7FFF)
    ids = (first, first if same_id else first + 0x8000)
    mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
    socks = [_fanout_socket(near.ns.netns, near.name, ids[i // 2], mode) for i in range(4)]
    try:
        # Every frame reaches one socket of each group: two groups, or one merged group.
        where, sent = _flows_by_socket(kernel_link, socks, expected=FLOWS * PER_FLOW * (1 if same_id else 2))
    finally:
        for s in socks:
            s.close()
    sandboxes = {p: {"first" if i < 2 else "second" for i in seen_by} for p, seen_by in where.items()}
    both = [p for p, who in sandboxes.items() if len(who) == 2]
    if same_id:
        assert len(where) == len(sent) and not both, f"one shared id: {len(both)} of {FLOWS} flows reached both sandboxes"
        reached = {who for whos in sandboxes.values() for who in whos}
        assert reached == {"first", "second"}, f"one shared id, yet all flows went to the {reached} sandbox"
    else:
        assert len(both) == len(sent), f"own ids: only {len(both)} of {FLOWS} flows reached both sandboxes' groups"


def test_kernel_refuses_to_join_a_group_with_another_mode(kernel_link):
    _plan, near, _far = kernel_link
    group = random.randint(1, 0xFFFF)
    first = _fanout_socket(near.ns.netns, near.name, group, PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG)
    try:
        with pytest.raises(OSError) as refused:
            _fanout_socket(near.ns.netns, near.name, group, PACKET_FANOUT_LB).close()
        assert refused.value.errno == errno.EINVAL, f"joining with another mode gave {refused.value}"
    finally:
        first.close()
