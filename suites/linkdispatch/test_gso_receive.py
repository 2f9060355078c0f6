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
from scapy.layers.l2 import Ether

from labkit.net.plan import FAMILIES
from labkit.packet.checksum import leave_to_device
from labkit.packet.layers.virtio_net import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, TCP_CSUM_OFFSET, VirtioNetHdr
from labkit.packet.testbench import TcpConnection
from labkit.packet.vnet import VnetSocket

SEGMENTS = 4


@pytest.mark.needs("tcp", "services")
@pytest.mark.parametrize("family", FAMILIES)
def test_gso_superframe_reaches_the_service_intact(testbed, stack, wire, ends):
    sink = stack.service("tcp-sink")
    conn = TcpConnection(wire, ends, port=sink.port, options=("MSS",))
    conn.connect()

    mss = min(1460, conn.negotiated.mss or 536) - (20 if ends.version == 6 else 0)
    payload = random.randbytes(SEGMENTS * mss + 100)
    assert len(payload) <= (conn.their_window or 0), f"the stack's window ({conn.their_window}) cannot take one super-frame"
    superframe = conn.segment(payload)
    headers = len(ends.ip())
    vnet = VirtioNetHdr(
        flags=F_NEEDS_CSUM,
        gso_type=GSO_TCPV4 if ends.version == 4 else GSO_TCPV6,
        hdr_len=14 + headers + 20,
        gso_size=mss,
        csum_start=14 + headers,
        csum_offset=TCP_CSUM_OFFSET,
    )
    with VnetSocket(testbed.peer_end.ns.netns, testbed.peer_end.name) as writer:
        writer.send(vnet / leave_to_device(Ether(src=wire.mac, dst=stack.mac) / superframe))
    conn.advance(superframe)

    try:
        conn.expect(ack=conn.snd_nxt, timeout=3)
    except AssertionError as exc:
        raise AssertionError(f"{stack.id} never acknowledged the {len(payload)}-byte super-frame:\n{exc}") from None
    conn.close()
    closed = sink.wait_for(lambda e: e["event"] == "closed", timeout=3)
    assert (closed["len"], closed["sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest()), (
        f"the service got {closed['len']} bytes (sha {closed['sha256'][:12]}), {len(payload)} were sent"
    )
