"""Segmentation-offload fuzzing: virtio_net_hdr super-frames for a PACKET_VNET_HDR link.

A stack on an fd-based link with vnet headers (netstack's fdbased endpoint with GSO, QEMU's and
passt's tap paths) trusts the header to cut one large TCP or UDP frame into many: gso_size,
hdr_len and the checksum offsets become loop bounds and write positions.
"""

from __future__ import annotations

from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from labkit.fuzz.l3 import PORTS
from labkit.fuzz.l4 import _ip
from labkit.fuzz.target import Fuzzed, Live, Target, destinations4, destinations6, sources4, sources6
from labkit.packet.checksum import leave_to_device
from labkit.packet.layers.virtio_net import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_TYPES,
    GSO_UDP,
    GSO_UDP_L4,
    TCP_CSUM_OFFSET,
    UDP_CSUM_OFFSET,
    VirtioNetHdr,
)

MAX_PAYLOAD = 16 * 1024


def gso_type_matches(gso_type: int, v6: bool, tcp: bool) -> bool:
    """Does `gso_type` describe a frame of this family and protocol (GSO_NONE describes any)?"""
    base, ecn = gso_type & ~GSO_ECN, gso_type & GSO_ECN
    if base == GSO_NONE:
        return not ecn
    if tcp:
        return base == (GSO_TCPV6 if v6 else GSO_TCPV4)
    return not ecn and (base == GSO_UDP_L4 or (base == GSO_UDP and not v6))


@st.composite
def gso_superframes(draw: st.DrawFn, target: Target, live: Live | None) -> Fuzzed:
    """For a PACKET_VNET_HDR socket (labkit.packet.vnet.VnetSocket): each frame is bytes(VirtioNetHdr(...)/Ether/...):
    GSO TCPv4/TCPv6/UDP_L4 super-frames with gso_size extremes (0, 1, 8, mss, > payload, 0xffff),
    hdr_len and csum_start/csum_offset that lie, payload lengths from 0 to 16 KiB (fill bytes),
    NEEDS_CSUM with offsets past the end, gso types for the wrong family or protocol.

    The kernel refuses some of these (EINVAL); the runner records that, the strategy does not avoid it.
    """
    t = target
    if live is not None:
        v6, tcp, src, dst = live.family == "ipv6", True, live.src, live.dst
        sport, dport, seq, ack = live.sport, live.dport, live.seq, live.ack
    else:
        v6 = draw(st.sampled_from([f for f, ok in ((False, t.has4), (True, t.has6)) if ok]))
        tcp = draw(st.booleans())
        src = draw(sources6(t) if v6 else sources4(t))
        dst = draw(destinations6(t, unicast=True) if v6 else destinations4(t, unicast=True))
        sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
        seq, ack = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    length = draw(st.integers(0, MAX_PAYLOAD))
    data = bytes([draw(st.integers(0, 255))]) * length
    l4 = TCP(sport=sport, dport=dport, seq=seq % 2**32, ack=ack % 2**32, flags="PA") if tcp else UDP(sport=sport, dport=dport)
    frame = Ether(src=t.wire_mac, dst=t.stack_mac) / _ip(src, dst) / l4 / Raw(data)
    csum_start = 14 + (40 if v6 else 20)
    headers = csum_start + (20 if tcp else 8)
    right = (GSO_TCPV6 if v6 else GSO_TCPV4) if tcp else GSO_UDP_L4
    gso_type = draw(
        st.sampled_from((right, right, right | GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, 2, 6, 0x7F))
    )
    mss = t.mtu - (headers - 14)
    gso_size = draw(st.one_of(st.sampled_from((mss, 0, 1, 8, length + 1, 0xFFFF)), st.integers(1, 0xFFFF)))
    flaws: set[str] = set()
    if not gso_type_matches(gso_type, v6, tcp):
        flaws.add("gso.type")
    if gso_type & ~GSO_ECN != GSO_NONE and (gso_size < 8 or gso_size >= length):
        flaws.add("gso.size")
    right_offset = TCP_CSUM_OFFSET if tcp else UDP_CSUM_OFFSET
    needs_csum = draw(st.sampled_from((True, True, True, False)))
    start, offset = csum_start, right_offset
    if needs_csum and draw(st.integers(0, 3)) == 1:
        start = draw(st.sampled_from((0, csum_start - 1, csum_start + 1, headers + length, 0xFFFF)))
        offset = draw(st.sampled_from((right_offset, 0, 1, right_offset + 2, 0xFFFF)))
        if (start, offset) != (csum_start, right_offset):
            flaws.add("gso.csum")
    hdr_len = headers
    if draw(st.integers(0, 3)) == 1:
        hdr_len = draw(st.sampled_from((0, 1, headers - 1, headers + 1, headers + length + 1, 0xFFFF)))
        if hdr_len != headers:
            flaws.add("gso.hdr-len")
    wire = leave_to_device(frame) if needs_csum else frame
    vnet = VirtioNetHdr(
        flags=F_NEEDS_CSUM if needs_csum else 0,
        gso_type=gso_type,
        hdr_len=hdr_len,
        gso_size=gso_size,
        csum_start=start if needs_csum else 0,
        csum_offset=offset if needs_csum else 0,
    )
    kind = "gso." + GSO_TYPES.get(gso_type, "unknown")
    return Fuzzed(kind, (bytes(vnet) + bytes(wire),), frozenset(flaws))
