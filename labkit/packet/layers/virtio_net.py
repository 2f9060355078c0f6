"""`struct virtio_net_hdr`: the header a PACKET_VNET_HDR socket puts before every frame.

It is how an fd-based link endpoint and the kernel tell each other about segmentation offload:
a sender hands over one TCP "super-frame" with `gso_size` (the MSS) and lets the device cut it;
with NEEDS_CSUM it leaves the checksum to the device too, starting at `csum_start` and stored at
`csum_start + csum_offset`. The 12-byte form (PACKET_VNET_HDR_SZ=12, virtio's mergeable
buffers) adds `num_buffers`. Fields are little-endian (virtio 1.0; the lab runs on LE hosts).
"""

from __future__ import annotations

from scapy.fields import ByteEnumField, FlagsField, LEShortField
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80
TCP_CSUM_OFFSET = 16  # the checksum's place in a TCP header
UDP_CSUM_OFFSET = 6

GSO_TYPES = {
    GSO_NONE: "none",
    GSO_TCPV4: "tcpv4",
    GSO_UDP: "udp",
    GSO_TCPV6: "tcpv6",
    GSO_UDP_L4: "udp_l4",
    GSO_ECN | GSO_TCPV4: "tcpv4_ecn",
    GSO_ECN | GSO_TCPV6: "tcpv6_ecn",
}


class VirtioNetHdr(Packet):
    """The 10-byte form (PACKET_VNET_HDR)."""

    name = "virtio_net_hdr"
    fields_desc = [
        FlagsField("flags", 0, 8, ["needs_csum", "data_valid", "rsc_info"]),
        ByteEnumField("gso_type", GSO_NONE, GSO_TYPES),
        LEShortField("hdr_len", 0),
        LEShortField("gso_size", 0),
        LEShortField("csum_start", 0),
        LEShortField("csum_offset", 0),
    ]

    @property
    def needs_csum(self) -> bool:
        return bool(int(self.flags) & F_NEEDS_CSUM)

    @property
    def is_gso(self) -> bool:
        return (self.gso_type & ~GSO_ECN) != GSO_NONE


class VirtioNetHdrMrgRxbuf(VirtioNetHdr):
    """The 12-byte form (PACKET_VNET_HDR_SZ = 12): `num_buffers` follows."""

    name = "virtio_net_hdr_mrg_rxbuf"
    fields_desc = [*VirtioNetHdr.fields_desc, LEShortField("num_buffers", 0)]


bind_layers(VirtioNetHdr, Ether)
bind_layers(VirtioNetHdrMrgRxbuf, Ether)

HEADER_FORMS: dict[int, type[VirtioNetHdr]] = {10: VirtioNetHdr, 12: VirtioNetHdrMrgRxbuf}
