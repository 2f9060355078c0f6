"""AF_PACKET sockets as the kernel sees them: /proc/net/packet rows, fanout values, a real socket."""

import os
import select
import socket
import struct

import pytest

from labkit.packet.sockets import Fanout, packet_sockets, parse_proc_net_packet

SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
ETH_P_ALL = 0x0003
FANOUT_HASH = 0
FANOUT_FLAG_DEFRAG = 0x8000

PROC_NET_PACKET = """\
sk               RefCnt Type Proto  Iface R Rmem   User   Inode
ffff9a0b4c1e2000 3      3    0003   2     1 0      0      41234
ffff9a0b4c1e3000 3      2    88cc   17    0 768    0      41299

"""


def test_parse_proc_net_packet():
    assert parse_proc_net_packet(PROC_NET_PACKET) == [
        {"type": 3, "proto": 0x0003, "ifindex": 2, "running": 1, "inode": 41234},
        {"type": 2, "proto": 0x88CC, "ifindex": 17, "running": 0, "inode": 41299},
    ]


def test_parse_proc_net_packet_header_only():
    assert parse_proc_net_packet(PROC_NET_PACKET.splitlines()[0] + "\n") == []


def test_fanout_decode_zero_is_no_fanout():
    assert Fanout.decode(0) is None


@pytest.mark.parametrize("value", [0x80000309, 0x80000309 - (1 << 32)])
def test_fanout_decode_hash_defrag(value):
    assert Fanout.decode(value) == Fanout(0x309, "hash", frozenset({"defrag"}))


def test_fanout_decode_type_and_several_flags():
    # lb (1) with rollover (0x1000) and ignore_outgoing (0x4000), group 7
    assert Fanout.decode(7 | ((1 | 0x1000 | 0x4000) << 16)) == Fanout(7, "lb", frozenset({"rollover", "ignore_outgoing"}))
    assert Fanout.decode(1 | (9 << 16)) == Fanout(1, "type9", frozenset())


def packet_socket_on_lo():
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind(("lo", ETH_P_ALL))
    return s


@pytest.fixture
def sockets():
    opened = []

    def make():
        s = packet_socket_on_lo()
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def find(fd):
    found = [p for p in packet_sockets(os.getpid()) if p.fd == fd]
    assert len(found) == 1, f"fd {fd} not reported once: {found}"
    return found[0]


def test_reports_fanout_and_vnet_hdr_of_own_socket(sockets):
    s = sockets()
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    group = 0x309
    s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", group | ((FANOUT_HASH | FANOUT_FLAG_DEFRAG) << 16)))
    p = find(s.fileno())
    assert p.fanout == Fanout(group, "hash", frozenset({"defrag"}))
    assert p.vnet_hdr is True
    assert p.type == socket.SOCK_RAW
    assert p.protocol == ETH_P_ALL
    assert p.ifindex == socket.if_nametoindex("lo")
    assert p.running is True
    assert p.inode == os.fstat(s.fileno()).st_ino
    assert p.rcvbuf is not None and p.rcvbuf > 0
    assert p.sndbuf is not None and p.sndbuf > 0


def test_socket_without_fanout(sockets):
    s = sockets()
    p = find(s.fileno())
    assert p.fanout is None
    assert p.vnet_hdr is False


def test_closed_socket_is_not_reported(sockets):
    s = sockets()
    fd = s.fileno()
    s.close()
    assert [p for p in packet_sockets(os.getpid()) if p.fd == fd] == []


PACKET_RX_RING = 5


def test_reports_rx_ring_and_its_capacity(sockets):
    from labkit.packet.sockets import Ring, queue_capacity

    s = sockets()
    s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIII", 1 << 16, 2, 2048, 64))  # tpacket_req, TPACKET_V1
    p = find(s.fileno())
    assert p.rx_ring == Ring(block_size=1 << 16, block_nr=2, frame_size=2048, frame_nr=64)
    assert p.queued == 0
    assert queue_capacity(p, 60, 832) == (64, str(p.rx_ring))


def test_capacity_without_ring_is_rcvbuf_over_truesize(sockets):
    from labkit.packet.sockets import queue_capacity

    p = find(sockets().fileno())
    assert p.rx_ring is None
    assert p.rcvbuf is not None
    assert queue_capacity(p, 60, 832) == (p.rcvbuf // 832, f"rcvbuf {p.rcvbuf} / truesize 832")


def test_netdev_max_backlog_is_read():
    from labkit.packet.sockets import backlog_drops, netdev_max_backlog

    assert netdev_max_backlog() > 0
    assert backlog_drops() >= 0


@pytest.mark.parametrize("version", [1, 2], ids=["tpacket-v2", "tpacket-v3"])
def test_queue_capacity_is_what_the_kernel_queues_unread(version):
    """A ring socket on a lab veth, never read, takes in exactly as many frames of a burst as
    queue_capacity says; truesize_of measures what a frame costs a socket without a ring."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from labkit.net.plan import AddressPlan
    from labkit.packet import bpf
    from labkit.packet.sockets import queue_capacity, truesize_of
    from labkit.packet.wire import Wire

    plan = AddressPlan()
    topo, near, far = plan.build()
    other = "02:00:00:00:00:99"
    with topo, Wire(far.ns.netns, far.name, mac=far.mac, far_mac=near.mac, record=False) as wire:
        frame = bytes(Ether(src=far.mac, dst=other) / IP(src=plan.peer4, dst=plan.stack4) / UDP(sport=9, dport=9) / b"x")
        sizes = truesize_of(near.ns.socket, near.name, bpf.program(f"ether dst {other}"), wire.send, [frame] * 3)
        assert len(set(sizes)) == 1 and sizes[0] > len(frame), sizes
        # Bound first, so the kernel hands each frame to the ring socket before this one: once
        # this one has seen the last frame, so has the ring socket.
        seen = near.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s = near.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        with seen, s:
            bpf.attach_raw(seen, *bpf.program(f"ether dst {other}"))
            seen.bind((near.name, ETH_P_ALL))
            s.setsockopt(SOL_PACKET, 10, version)  # PACKET_VERSION
            fields = (4096, 2, 2048, 4) + ((60000, 0, 0) if version == 2 else ())  # tpacket_req(3)
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack(f"{len(fields)}I", *fields))
            s.bind((near.name, ETH_P_ALL))
            capacity, _how = queue_capacity(find(s.fileno()), len(frame), sizes[0])
            sent = capacity + 20
            got = 0
            for _ in range(sent):
                wire.send(frame)
                if select.select([seen], [], [], 2)[0]:  # one at a time: the default buffer holds one
                    seen.recv(2048)
                    got += 1
            packets, drops = struct.unpack_from("II", s.getsockopt(SOL_PACKET, 6, 12))  # PACKET_STATISTICS
    assert got == sent
    assert (packets - drops, packets) == (capacity, sent)
