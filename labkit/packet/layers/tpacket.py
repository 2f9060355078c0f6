"""`struct tpacket_auxdata`: what AF_PACKET says about a frame beyond its bytes.

The Wire asks for it on every frame because veth hands partially checksummed frames across; a
checksum check must know whether the kernel left the checksum for "the device" to finish.
"""

from __future__ import annotations

from scapy.fields import FlagsField, LEIntField, LEShortField
from scapy.packet import Packet

TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_CSUM_VALID = 1 << 7

_STATUS_FLAGS = [
    "user",
    "copy",
    "losing",
    "csumnotready",
    "vlan_valid",
    "blk_tmo",
    "vlan_tpid_valid",
    "csum_valid",
    "gso_tcp",
]


class TPacketAuxdata(Packet):
    """PACKET_AUXDATA control message (host byte order; the lab runs on little-endian x86/arm64)."""

    name = "tpacket_auxdata"
    fields_desc = [
        FlagsField("tp_status", 0, -32, _STATUS_FLAGS),
        LEIntField("tp_len", 0),
        LEIntField("tp_snaplen", 0),
        LEShortField("tp_mac", 0),
        LEShortField("tp_net", 0),
        LEShortField("tp_vlan_tci", 0),
        LEShortField("tp_vlan_tpid", 0),
    ]

    @property
    def checksum_partial(self) -> bool:
        return bool(int(self.tp_status) & TP_STATUS_CSUMNOTREADY)
