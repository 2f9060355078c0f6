"""The ethtool knobs the lab needs on a veth end: tx checksumming, and TSO (for a mutant).

veth passes CHECKSUM_PARTIAL packets to its peer, so a raw socket on the other end sees
unfinished TCP/UDP checksums unless the sending side computes them in software.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from labkit.net.netns import NetNS
from labkit.uapi import ETHTOOL_GTXCSUM, ETHTOOL_STSO, ETHTOOL_STXCSUM, SIOCETHTOOL


def _ethtool_value(ns: NetNS, ifname: str, cmd: int, value: int = 0) -> int:
    # struct ethtool_value {__u32 cmd; __u32 data;}, pointed to from a struct ifreq (40 bytes).
    data = ctypes.create_string_buffer(struct.pack("II", cmd, value), 8)
    ifreq = struct.pack("16sP16x", ifname.encode(), ctypes.addressof(data))
    with ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    return struct.unpack("II", data.raw)[1]


def set_tx_checksum(ns: NetNS, ifname: str, on: bool) -> None:
    _ethtool_value(ns, ifname, ETHTOOL_STXCSUM, int(on))


def tx_checksum(ns: NetNS, ifname: str) -> bool:
    return bool(_ethtool_value(ns, ifname, ETHTOOL_GTXCSUM))


def set_tso(ns: NetNS, ifname: str, on: bool) -> None:
    _ethtool_value(ns, ifname, ETHTOOL_STSO, int(on))
