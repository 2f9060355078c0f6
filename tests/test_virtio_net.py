"""The virtio_net_hdr scapy layer: both forms, byte for byte, and the Ethernet frame behind it."""

import struct

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from labkit.packet.layers.virtio_net import GSO_ECN, GSO_TCPV4, GSO_TCPV6, VirtioNetHdr, VirtioNetHdrMrgRxbuf


def test_ten_byte_form_is_little_endian_in_kernel_order():
    h = VirtioNetHdr(flags=1, gso_type=GSO_TCPV6, hdr_len=86, gso_size=1428, csum_start=54, csum_offset=16)
    assert bytes(h) == struct.pack("<BBHHHH", 1, 4, 86, 1428, 54, 16)
    assert h.needs_csum and h.is_gso


def test_twelve_byte_form_adds_num_buffers():
    h = VirtioNetHdrMrgRxbuf(gso_type=GSO_TCPV4, gso_size=1448, num_buffers=3)
    assert len(bytes(h)) == 12 and bytes(h)[10:] == b"\x03\x00"


def test_parse_gives_the_frame_behind_the_header():
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.0.1", dst="198.18.0.2") / TCP()
    parsed = VirtioNetHdr(struct.pack("<BBHHHH", 0, GSO_ECN | GSO_TCPV4, 0, 1448, 0, 0) + bytes(frame))
    assert parsed.is_gso and not parsed.needs_csum
    assert parsed[Ether].dst == "02:00:00:00:00:02" and parsed[TCP].dport == 80
    assert not VirtioNetHdr(bytes(VirtioNetHdr()) + bytes(frame)).is_gso
