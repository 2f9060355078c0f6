"""A kernel-filtered view of a Wire: a BPF program as the template, the kernel's counter as the verdict."""

from __future__ import annotations

import select
import struct
import time
from typing import TYPE_CHECKING

from labkit.lifecycle import janitor
from labkit.packet import bpf
from labkit.packet.frames import Frame, open_packet_socket, read_frames
from labkit.uapi import PACKET_STATISTICS, SOL_PACKET

if TYPE_CHECKING:
    from labkit.packet.wire import Wire


class Capture:
    """A kernel-filtered view of a Wire: only frames passing the BPF program are queued here.

    While a Capture waits it keeps its Wire reading too, so the Wire goes on answering the
    stack's ARP/NDP and recording the pcap.
    """

    def __init__(self, wire: Wire, expr: str) -> None:
        self.expr = expr
        self.wire = wire
        self._sock = open_packet_socket(wire.ns, wire.ifname, bpf.program(expr), record=True)
        self._passed = 0
        janitor.track(self)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[Frame]:
        return list(read_frames(self._sock))

    def wait(self, timeout: float) -> list[Frame]:
        """Block (bounded) until at least one frame is queued, then return all that are."""
        deadline = time.monotonic() + timeout
        watch = [self._sock] + ([self.wire._rx] if self.wire._rx is not None else [])
        while (left := deadline - time.monotonic()) > 0:
            ready = select.select(watch, [], [], left)[0]
            if self.wire._rx in ready:
                self.wire._pull(0)
            if self._sock in ready:
                return self.read()
        return []

    def count(self) -> int:
        """Frames that passed the filter since the capture opened, queued or dropped.

        The kernel counts them (PACKET_STATISTICS), so verifying a flood costs no per-frame work
        in Python: the BPF program is the template, the counter is the verdict.
        """
        packets, _drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self._passed += packets
        return self._passed

    def wait_count(self, n: int, timeout: float) -> int:
        """Wait (bounded) until `n` frames have passed the filter; returns the count reached.

        Each wakeup is a queued frame; queued frames are discarded, only the count matters.
        """
        deadline = time.monotonic() + timeout
        while (got := self.count()) < n and (left := deadline - time.monotonic()) > 0:
            if select.select([self._sock], [], [], left)[0]:
                for _ in read_frames(self._sock):
                    pass
        return got

    def close(self) -> None:
        janitor.untrack(self)
        self._sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
