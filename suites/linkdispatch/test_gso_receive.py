"""Segmentation offload on the receiving side: a GSO super-frame from the wire, into a connection.

The lab opens a TCP connection to a sink inside the stack from the Wire, then hands the veth one
super-frame through its own PACKET_VNET_HDR socket: several MSS of payload, gso_size = MSS,
NEEDS_CSUM with csum_start/csum_offset at the TCP checksum and the pseudo-header sum in it, as a
sender using offloads writes it. The sink must receive exactly those bytes.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from labkit.packet.checksum import leave_to_device
from labkit.packet.layers.virtio_net import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, TCP_CSUM_OFFSET, VirtioNetHdr
from labkit.packet.vnet import VnetSocket

SEGMENTS = 4


def _mss(tcp: TCP) -> int | None:
    return next((v for k, v in tcp.options if k == "MSS"), None)


@pytest.mark.needs("tcp", "services")
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_gso_superframe_reaches_the_service_intact(testbed, stack, wire, plan, family):
    ip = IP if family == "ipv4" else IPv6
    peer, me = (plan.peer4, plan.stack4) if family == "ipv4" else (plan.peer6, plan.stack6)
    sink = stack.service("tcp-sink")
    sport, isn = random.randint(20000, 60000), random.randint(0, 2**31)

    wire.send(ip(src=peer, dst=me) / TCP(sport=sport, dport=sink.port, flags="S", seq=isn, window=65535, options=[("MSS", 1460)]))
    syn_ack = wire.expect(ip(src=me, dst=peer) / TCP(sport=sink.port, dport=sport, flags="SA", ack=isn + 1), timeout=3)
    theirs = syn_ack[TCP].seq + 1
    wire.send(ip(src=peer, dst=me) / TCP(sport=sport, dport=sink.port, flags="A", seq=isn + 1, ack=theirs, window=65535))

    mss = min(1460, _mss(syn_ack[TCP]) or 536) - (20 if family == "ipv6" else 0)
    payload = bytes(random.getrandbits(8) for _ in range(SEGMENTS * mss + 100))
    assert len(payload) <= syn_ack[TCP].window, f"the stack's window ({syn_ack[TCP].window}) cannot take one super-frame"
    frame = leave_to_device(
        Ether(src=wire.mac, dst=stack.mac)
        / ip(src=peer, dst=me)
        / TCP(sport=sport, dport=sink.port, flags="PA", seq=isn + 1, ack=theirs, window=65535)
        / payload
    )
    ip_len = len(ip())
    header = VirtioNetHdr(
        flags=F_NEEDS_CSUM,
        gso_type=GSO_TCPV4 if family == "ipv4" else GSO_TCPV6,
        hdr_len=14 + ip_len + 20,
        gso_size=mss,
        csum_start=14 + ip_len,
        csum_offset=TCP_CSUM_OFFSET,
    )
    with VnetSocket(testbed.peer_end.ns.netns, testbed.peer_end.name) as writer:
        writer.send(header / frame)

    end = isn + 1 + len(payload)
    try:
        wire.expect(ip(src=me) / TCP(sport=sink.port, dport=sport, ack=end), timeout=3)
    except AssertionError as exc:
        raise AssertionError(f"{stack.id} never acknowledged the {len(payload)}-byte super-frame:\n{exc}") from None
    wire.send(ip(src=peer, dst=me) / TCP(sport=sport, dport=sink.port, flags="FA", seq=end, ack=theirs, window=65535))
    closed = sink.wait_for(lambda e: e["event"] == "closed", timeout=3)
    assert (closed["len"], closed["sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest()), (
        f"the service got {closed['len']} bytes (sha {closed['sha256'][:12]}), {len(payload)} were sent"
    )
