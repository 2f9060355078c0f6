"""Fanout: many flows into a stack with one or several channels, and the kernel's fanout itself.

A stack with N channels reads its link through N AF_PACKET sockets in one fanout group; the
kernel hashes each flow to one of them. Every datagram of every flow must arrive, each flow's
datagrams in the order sent, and with several channels more than one must carry traffic: the
kernel's own per-socket counters (PACKET_STATISTICS) say which did. Fragmented datagrams must
be reassembled. On the kernel reference, the lab's own fanout group shows what the stacks rely
on: a flow always lands on the same socket, flows spread over all of them, and a group cannot
be joined with another mode.
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
from dataclasses import replace

import pytest
from scapy.layers.inet import TCP, UDP, fragment
from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether

from labkit.errors import ExpectTimeout
from labkit.net import layouts
from labkit.net.plan import FAMILIES, AddressPlan
from labkit.packet.checksum import checksum_errors
from labkit.packet.testbench import NumberedFlows
from labkit.uapi import PACKET_FANOUT, PACKET_FANOUT_FLAG_DEFRAG, PACKET_FANOUT_HASH, PACKET_FANOUT_LB, SOL_PACKET

FLOWS = 64
PER_FLOW = 8
FRAGMENTED = 16  # datagrams of 3000 bytes, each cut into three fragments
ROUND = 16  # frames in flight at once: two consecutive datagrams of each of 8 flows
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


def _drops(stack, before: dict[int, int]) -> str:
    drops = {fd: n - before.get(fd, 0) for fd, n in stack.channel_drops().items() if n - before.get(fd, 0)}
    return f"; the kernel dropped {sum(drops.values())} at the stack's AF_PACKET channels (PACKET_STATISTICS, by fd: {drops})" if drops else ""


@RECEIVE_PATH
@pytest.mark.needs("udp", "services")
@pytest.mark.parametrize("family", FAMILIES)
def test_many_flows_arrive_complete_and_in_order(stack, wire, ends):
    """Paced in rounds of ROUND frames, each round two datagrams of each of 8 flows (so each
    flow has two in flight at once), the next round once the service has this one."""
    sink = stack.service("udp-sink")
    flows = NumberedFlows(wire, ends, sink.port, FLOWS, PER_FLOW)
    before = stack.channel_counts()
    for first in range(0, FLOWS, ROUND // 2):
        ports = flows.ports[first : first + ROUND // 2]
        for n in range(0, PER_FLOW, 2):
            wire.inject(flows.frames([n, n + 1], ports))
            flows.collect(sink, ROUND, timeout=5)
    lost, disordered = flows.lost(), flows.disordered()
    assert not lost, f"{sum(map(len, lost.values()))} of {len(flows)} datagrams lost, e.g. flow {next(iter(lost.items()))}"
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
def test_a_burst_within_the_kernels_backlog_is_absorbed(stack, wire, plan):
    """All FLOWS x PER_FLOW datagrams at once (512, half of Linux's default netdev_max_backlog)."""
    sink = stack.service("udp-sink")
    flows = NumberedFlows(wire, plan.endpoints("ipv4"), sink.port, FLOWS, PER_FLOW)
    drops = stack.channel_drops()
    wire.inject(flows.frames())
    flows.collect(sink, len(flows), timeout=5)
    lost = sum(map(len, flows.lost().values()))
    assert not lost, f"{lost} of {len(flows)} datagrams of a burst lost" + _drops(stack, drops)


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
@pytest.mark.needs("netns-copy", "af-packet", "udp", "services", "ipv4")
def test_two_sandboxes_on_one_namespace_keep_their_own_fanout_groups(testbed, stack_spec, stack, wire, plan):
    """A second sandbox started on the same namespace (given an address of its own there) must
    join its channels to another group than the first: with the same id and mode the kernel
    would merge both into one group and hash each flow to either sandbox's sockets, so a share of
    each one's traffic would reach the other, which drops it."""
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
        lost = {}
        for who, sandbox, addr in (("first", stack, plan.stack4), ("second", second, second_addr)):
            echo = sandbox.service("udp-echo")
            flows = NumberedFlows(wire, replace(plan.endpoints("ipv4"), stack=addr), echo.port, FLOWS // 2, 1)
            wire.inject(flows.frames())
            flows.collect(echo, len(flows), timeout=5)
            if missing := flows.lost():
                lost[who] = len(missing)
        assert not lost, f"datagrams of {FLOWS // 2} flows each that never reached their sandbox: {lost}"
    finally:
        second.stop()


# -- the kernel's fanout, as the stacks use it ---------------------------------------------------


def _fanout_socket(ns, ifname: str, group: int, mode: int) -> socket.socket:
    s = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
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
