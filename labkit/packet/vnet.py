"""A PACKET_VNET_HDR socket on a lab interface: frames with their virtio_net_hdr, both ways.

Reading one on the sandbox end of a veth shows the offload requests a stack hands the kernel
(GSO super-frames, partial checksums) before any device acts on them; sending through one is how
the lab hands a stack a super-frame of its own.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterator

from labkit.errors import LabInputError
from labkit.lifecycle import janitor
from labkit.net.netns import NetNS
from labkit.packet.layers.virtio_net import HEADER_FORMS, VirtioNetHdr
from labkit.uapi import ETH_P_ALL, PACKET_OUTGOING, PACKET_VNET_HDR, PACKET_VNET_HDR_SZ, SO_RCVBUFFORCE, SOL_PACKET


class VnetSocket:
    """AF_PACKET on `ifname` inside `ns`, with a `hdr_size`-byte virtio_net_hdr (10 or 12)."""

    def __init__(self, ns: NetNS, ifname: str, hdr_size: int = 10, rcvbuf: int = 16 << 20) -> None:
        if hdr_size not in HEADER_FORMS:
            raise LabInputError(f"bad virtio_net_hdr size {hdr_size}; allowed: 10, 12")
        self.hdr_size = hdr_size
        self.layer = HEADER_FORMS[hdr_size]
        self.sock = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            if hdr_size != 10:
                self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR_SZ, struct.pack("i", hdr_size))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # root may exceed rmem_max
            self.sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            self.sock.close()
            raise
        janitor.track(self)

    def send(self, pkt: VirtioNetHdr | bytes) -> int:
        """Send a header and frame; the kernel's refusal (EINVAL, ...) comes back as OSError."""
        return self.sock.send(bytes(pkt))

    def read(self, timeout: float, outgoing: bool | None = None) -> Iterator[tuple[bool, VirtioNetHdr]]:
        """Frames until `timeout` passes with nothing new: (outgoing?, header / Ether / ...)."""
        while select.select([self.sock], [], [], timeout)[0]:
            while True:
                try:
                    data, addr = self.sock.recvfrom(256 << 10, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                out = addr[2] == PACKET_OUTGOING
                if outgoing is None or out == outgoing:
                    yield out, self.layer(data)

    def collect(self, timeout: float, until: float, outgoing: bool | None = None) -> list[tuple[bool, VirtioNetHdr]]:
        """(outgoing?, frame) read until `until` seconds have passed, or `timeout` without a frame."""
        end = time.monotonic() + until
        got = []
        for item in self.read(timeout, outgoing):
            got.append(item)
            if time.monotonic() > end:
                break
        return got

    def close(self) -> None:
        janitor.untrack(self)
        self.sock.close()

    def __enter__(self) -> VnetSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
