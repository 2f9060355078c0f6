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

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether

from labkit.errors import ExpectTimeout
from labkit.net import layouts
from labkit.net.plan import AddressPlan
from labkit.packet.checksum import checksum_errors
from labkit.uapi import PACKET_FANOUT, PACKET_FANOUT_FLAG_DEFRAG, PACKET_FANOUT_HASH, PACKET_FANOUT_LB, SOL_PACKET

FLOWS = 64
PER_FLOW = 8
FRAGMENTED = 16  # datagrams of 3000 bytes, each cut into three fragments


def flow_frames(wire, plan, family: str, dport: int) -> tuple[list[bytes], dict[int, list[int]]]:
    """FLOWS flows (source ports) of PER_FLOW numbered datagrams, interleaved across flows."""
    peer, me, ip = (plan.peer4, plan.stack4, IP) if family == "ipv4" else (plan.peer6, plan.stack6, IPv6)
    ports = random.sample(range(20000, 60000), FLOWS)
    frames = []
    for n in range(PER_FLOW):
        for port in ports:
            frames.append(bytes(wire.ether() / ip(src=peer, dst=me) / UDP(sport=port, dport=dport) / struct.pack("!HI", port, n)))
    return frames, {port: list(range(PER_FLOW)) for port in ports}


def received_sequences(sink, expected: int, timeout: float = 15, got=None) -> dict[int, list[int]]:
    got = defaultdict(list) if got is None else got
    count = 0
    try:
        while count < expected:
            event = sink.wait_for(lambda e: e["event"] == "datagram", timeout=timeout)
            port, n = struct.unpack("!HI", bytes.fromhex(event["data"]))
            got[port].append(n)
            count += 1
    except ExpectTimeout:
        pass
    return got


ROUND = 16  # frames in flight at once: two consecutive datagrams of each of 8 flows


def lost_and_disordered(sent, got) -> tuple[dict, dict]:
    missing = {p: sorted(set(want) - set(got.get(p, []))) for p, want in sent.items() if set(want) - set(got.get(p, []))}
    disordered = {p: seq for p, seq in got.items() if seq != sorted(seq)}
    return missing, disordered


@pytest.mark.needs("udp", "services")
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_many_flows_arrive_complete_and_in_order(stack, wire, plan, family):
    """Paced in rounds of ROUND frames, each round two datagrams of each of 8 flows (so each
    flow has two in flight at once), the next round once the service has this one."""
    if not stack.can(family):
        pytest.skip(f"{stack.id} lacks {family}")
    sink = stack.service("udp-sink")
    frames, sent = flow_frames(wire, plan, family, sink.port)
    stack.channel_counts()  # read (and so reset) the per-channel counters
    by_flow = [frames[i::FLOWS] for i in range(FLOWS)]  # frames of one flow, in sequence
    got: dict[int, list[int]] = defaultdict(list)
    for first in range(0, FLOWS, ROUND // 2):
        flows = by_flow[first : first + ROUND // 2]
        for n in range(0, PER_FLOW, 2):
            wire.inject([f[n] for f in flows] + [f[n + 1] for f in flows])
            received_sequences(sink, ROUND, timeout=5, got=got)
    missing, disordered = lost_and_disordered(sent, got)
    assert not missing, (
        f"{sum(map(len, missing.values()))} of {len(frames)} datagrams lost, e.g. flow {next(iter(missing))}: {next(iter(missing.values()))}"
    )
    assert not disordered, f"{len(disordered)} flows delivered out of order, e.g. {next(iter(disordered.items()))}"
    _assert_several_channels_busy(stack, f"{FLOWS} flows")


def _assert_several_channels_busy(stack, what: str) -> None:
    channels = stack.options.get("channels", 1)
    if channels > 1:
        counts = stack.channel_counts()
        busy = [fd for fd, n in counts.items() if n > 0]
        assert len(busy) > 1, f"{channels} channels, yet only {len(busy)} carried the {what} (frames per channel fd: {counts})"


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
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_many_tcp_flows_arrive_complete_and_in_order(testbed, stack, wire, plan, family):
    """FLOWS connections from a kernel peer to an echo service, each PER_FLOW numbered records
    written one per segment (TCP_NODELAY), paced like the UDP check: two records of each of 8
    flows in flight, then their echoes. Each flow's echo must be its records, all and in order,
    and with several channels more than one must have carried the segments. (TCP repairs
    reordering below it, so unlike the UDP check this one does not see a reordering channel:
    receivers coalesce their SACKs, so not even the ACKs reliably show it.)"""
    if not stack.can(family):
        pytest.skip(f"{stack.id} lacks {family}")
    echo = stack.service("tcp-echo")
    me = plan.stack4 if family == "ipv4" else plan.stack6
    af = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    conns: list[socket.socket] = []
    try:
        for _ in range(FLOWS):
            conn = testbed.peer_end.ns.socket(af, socket.SOCK_STREAM)
            conns.append(conn)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(3)
            try:
                conn.connect((me, echo.port))
            except TimeoutError:
                raise AssertionError(_unanswered_connect(wire, conn, me, echo.port, len(conns))) from None
        stack.channel_counts()
        echoed: dict[int, bytes] = defaultdict(bytes)
        record = struct.Struct("!HI")
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
    _assert_several_channels_busy(stack, f"{FLOWS} TCP flows")


@pytest.mark.needs("udp", "services")
def test_a_burst_within_the_kernels_backlog_is_absorbed(stack, wire, plan):
    """All FLOWS x PER_FLOW datagrams at once (512, half of Linux's default netdev_max_backlog)."""
    sink = stack.service("udp-sink")
    frames, sent = flow_frames(wire, plan, "ipv4", sink.port)
    stack.channel_counts()
    wire.inject(frames)
    got = received_sequences(sink, len(frames), timeout=5)
    missing, _ = lost_and_disordered(sent, got)
    lost = sum(map(len, missing.values()))
    drops = {fd: n for fd, n in stack.channel_drops().items() if n}
    assert not lost, f"{lost} of {len(frames)} datagrams of a burst lost" + (
        f"; the kernel dropped {sum(drops.values())} at the stack's AF_PACKET channels (PACKET_STATISTICS, by fd: {drops})"
        if drops
        else ""
    )


@pytest.mark.needs("udp", "services")
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_fragmented_datagrams_are_reassembled(stack, wire, plan, family):
    if not stack.can(family):
        pytest.skip(f"{stack.id} lacks {family}")
    sink = stack.service("udp-sink")
    peer, me = (plan.peer4, plan.stack4) if family == "ipv4" else (plan.peer6, plan.stack6)
    stack.channel_counts()
    bad = {}
    for i in range(FRAGMENTED):  # one datagram at a time: a loss is the reassembly's, not a burst's
        port = 30000 + i
        payload = struct.pack("!HI", port, 0) + random.randbytes(3000)
        if family == "ipv4":
            pieces = fragment(IP(src=peer, dst=me, id=0x100 + i) / UDP(sport=port, dport=sink.port) / payload, fragsize=1200)
        else:
            pieces = fragment6(
                IPv6(src=peer, dst=me) / IPv6ExtHdrFragment(id=0x100 + i) / UDP(sport=port, dport=sink.port) / payload, 1280
            )
        wire.send(*[wire.ether() / p for p in pieces])
        try:
            event = sink.wait_for(lambda e: e["event"] == "datagram", timeout=3)
        except ExpectTimeout:
            bad[port] = "never delivered"
            continue
        if (event["peer"][1], event["len"]) != (port, len(payload)):
            bad[port] = f"delivered as {event['len']} bytes from port {event['peer'][1]}"
    drops = {fd: n for fd, n in stack.channel_drops().items() if n}
    assert not bad, f"{len(bad)} of {FRAGMENTED} fragmented datagrams not delivered whole: {bad}" + (
        f"; AF_PACKET channel drops by fd: {drops}" if drops else ""
    )


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
            ports = random.sample(range(20000, 60000), FLOWS // 2)
            wire.inject(
                [
                    bytes(wire.ether() / IP(src=plan.peer4, dst=addr) / UDP(sport=p, dport=echo.port) / struct.pack("!HI", p, 0))
                    for p in ports
                ]
            )
            got = received_sequences(echo, len(ports), timeout=5)
            if missing := set(ports) - set(got):
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


def _flows_by_socket(kernel_link, socks: list[socket.socket], expected: int) -> tuple[dict[int, set[int]], dict]:
    """Inject FLOWS flows from the far end; which of `socks` (by index) saw each flow (source
    port). Reads until `expected` frames of them arrived in all, or the sockets stay quiet 0.5 s."""
    from labkit.packet.wire import Wire

    plan, near, far = kernel_link
    with Wire(far.ns.netns, far.name, mac=far.mac, far_mac=near.mac, record=False) as w:
        frames, sent = flow_frames(w, plan, "ipv4", 9)
        w.inject(frames)
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
    return where, sent


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
    socks = [_fanout_socket(near.ns.netns, near.name, ids[i // 2], PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) for i in range(4)]
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
