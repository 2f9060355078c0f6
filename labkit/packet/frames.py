"""Frames as the lab's packet sockets see them, and the sockets themselves.

Every frame comes with the kernel's receive timestamp and PACKET_AUXDATA: veth hands partially
checksummed frames across, and a checksum verdict must know when the sender left the checksum
for "the device" to finish.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from scapy.layers.l2 import Ether
from scapy.packet import Packet

from labkit.errors import LabError
from labkit.net.netns import NetNS
from labkit.packet import bpf
from labkit.packet.layers import TPacketAuxdata
from labkit.uapi import ETH_P_ALL, PACKET_AUXDATA, PACKET_OUTGOING, SO_RCVBUFFORCE, SO_TIMESTAMPNS, SOL_PACKET

RECORD_BUFFER = 8 << 20
_ANC = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20)


@dataclass
class Frame:
    """One frame seen on the wire, with the kernel's timestamp and auxiliary data."""

    ts: float
    data: bytes
    outgoing: bool
    aux: TPacketAuxdata | None = None
    _packet: Packet | None = field(default=None, repr=False)

    @property
    def packet(self) -> Packet:
        if self._packet is None:
            self._packet = Ether(self.data)
        return self._packet

    @property
    def checksum_partial(self) -> bool:
        """The sender left the L4 checksum for the device to finish (veth CHECKSUM_PARTIAL)."""
        return self.aux is not None and self.aux.checksum_partial


def open_packet_socket(ns: NetNS, ifname: str, program: tuple[int, bytes] | None = None, record: bool = False) -> socket.socket:
    """A packet socket on `ifname`; filter and options are set before bind(), since a
    protocol-0 packet socket receives nothing until bound: no frame slips past the filter."""
    s = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        if program is not None:
            bpf.attach_raw(s, *program)
        if record:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECORD_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        s.bind((ifname, ETH_P_ALL))
    except OSError as exc:
        s.close()
        raise LabError(f"cannot open a packet socket on {ifname!r} in {ns.name}: {exc}") from None
    except BaseException:
        s.close()
        raise
    return s


READ_BATCH = 4096  # frames per read pass, so a flood cannot keep a bounded wait from ending


def read_frames(sock: socket.socket) -> Iterator[Frame]:
    """What is queued on `sock` now (at most READ_BATCH frames), without blocking."""
    for _ in range(READ_BATCH):
        try:
            data, anc, _flags, addr = sock.recvmsg(65536 + 64, _ANC, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        ts = time.time()
        aux = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", payload[:16])
                ts = sec + nsec / 1e9
            elif level == SOL_PACKET and kind == PACKET_AUXDATA:
                aux = TPacketAuxdata(payload)
        yield Frame(ts, data, addr[2] == PACKET_OUTGOING, aux)
