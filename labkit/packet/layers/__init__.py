"""The lab's own headers as scapy layers (declarative, dissectable, printable)."""

from labkit.packet.layers.tpacket import TP_STATUS_CSUM_VALID, TP_STATUS_CSUMNOTREADY, TPacketAuxdata

__all__ = ["TP_STATUS_CSUMNOTREADY", "TP_STATUS_CSUM_VALID", "TPacketAuxdata"]
