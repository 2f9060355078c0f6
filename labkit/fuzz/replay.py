"""Frames as the fuzzer sent them, a reproducer file of them, and replaying one on a fresh stack.

A reproducer is a pcap of the frames in the order they went out. Most go through the Wire's
socket as plain Ethernet frames (link type 1). A GSO super-frame goes through a PACKET_VNET_HDR
socket, so its virtio_net_hdr is part of what was sent; a reproducer holding one is written with
link type USER0 (147) and every record starting with a 10-byte virtio_net_hdr (all zeroes for a
plain frame: no offload), which `labkit replay` sends the same way.
"""

from __future__ import annotations

import errno
import gzip
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scapy.layers.inet import IP, IPerror
from scapy.layers.inet6 import IPerror6, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import NoPayload, Packet

from labkit.errors import LabInputError
from labkit.fuzz.oracle import Liveness, Verdict
from labkit.fuzz.target import is_lab_address
from labkit.packet import pcapfile
from labkit.packet.layers.virtio_net import VirtioNetHdr
from labkit.packet.vnet import VnetSocket
from labkit.testbed import Testbed

LINKTYPE_VNET = 147  # LINKTYPE_USER0, the lab's convention: virtio_net_hdr (10 bytes) + Ethernet
VNET_HDR = 10
PLAIN_HDR = bytes(VNET_HDR)  # GSO_NONE, no checksum request: the kernel takes the frame as it is
SEND_LIMIT = 5.0  # seconds one frame may wait for room on a congested link


@dataclass(frozen=True)
class Sent:
    """One frame as it went out: through the Wire (`vnet` False) or, with its virtio_net_hdr in
    front, through a PACKET_VNET_HDR socket on the Wire's end."""

    frame: bytes
    vnet: bool = False
    kind: str = ""


class Injector:
    """Sends fuzzed frames from a testbed's Wire end; what the kernel refuses (a frame longer
    than the MTU, a virtio_net_hdr that fails its checks) is counted by errno, not raised."""

    def __init__(self, bed: Testbed) -> None:
        assert bed.wire is not None
        self.wire = bed.wire
        self._vnet: VnetSocket | None = None
        self.refused: Counter[str] = Counter()
        self.sent = 0

    def send(self, frames: Iterable[Sent]) -> None:
        for item in frames:
            try:
                if item.vnet:
                    if self._vnet is None:
                        self._vnet = VnetSocket(self.wire.ns, self.wire.ifname, rcvbuf=1 << 16)
                    self._vnet.send(item.frame)
                else:
                    self.wire.inject([item.frame], timeout=SEND_LIMIT)
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                self.refused[f"{item.kind.split('.')[0] or 'frame'}: {name}"] += 1
                continue
            self.sent += 1

    def close(self) -> None:
        if self._vnet is not None:
            self._vnet.close()
            self._vnet = None


def write_reproducer(frames: Sequence[Sent]) -> bytes:
    """The pcap of `frames` (see the module's docstring for the link type)."""
    now = time.time()
    if any(f.vnet for f in frames):
        records = [(now + i * 1e-3, f.frame if f.vnet else PLAIN_HDR + f.frame) for i, f in enumerate(frames)]
        return pcapfile.write(records, linktype=LINKTYPE_VNET)
    return pcapfile.write([(now + i * 1e-3, f.frame) for i, f in enumerate(frames)])


def read_reproducer(data: bytes, name: str = "the file") -> list[Sent]:
    """The frames of a reproducer pcap (gzipped or not), each checked against the lab's address
    policy; raises LabInputError naming what is wrong with it."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise LabInputError(f"{name}: a broken gzip file ({exc}); allowed: a pcap, or a pcap.gz") from None
    try:
        records = pcapfile.read(data)
    except ValueError as exc:
        raise LabInputError(f"{name}: {exc}; allowed: a pcap written by the robustness suite or any Ethernet pcap") from None
    kind = pcapfile.linktype(data)
    if kind == pcapfile.LINKTYPE_ETHERNET:
        frames = [Sent(frame) for _, frame in records]
    elif kind == LINKTYPE_VNET:
        if any(len(frame) < VNET_HDR for _, frame in records):
            raise LabInputError(f"{name}: a record is shorter than its {VNET_HDR}-byte virtio_net_hdr")
        frames = [Sent(frame[VNET_HDR:]) if frame[:VNET_HDR] == PLAIN_HDR else Sent(frame, vnet=True) for _, frame in records]
    else:
        raise LabInputError(f"{name}: link type {kind}; allowed: 1 (Ethernet) or {LINKTYPE_VNET} (virtio_net_hdr + Ethernet)")
    for number, sent in enumerate(frames):
        for address in addresses_in(sent):
            if not is_lab_address(address):
                raise LabInputError(
                    f"{name}: frame {number} carries {address}, not a lab address; allowed: 198.18.0.0/15, 2001:db8::/32 "
                    "(and broadcast, link-scope multicast, the unspecified address)"
                )
    return frames


def addresses_in(sent: Sent) -> list[str]:
    """Every IP address a frame carries where scapy finds one: IP and IPv6 headers (also those an
    ICMP error quotes), ARP's sender and target."""
    layer: Packet = VirtioNetHdr(sent.frame) if sent.vnet else Ether(sent.frame)
    found = []
    while layer is not None and not isinstance(layer, NoPayload):
        for field in ("src", "dst", "psrc", "pdst"):
            if isinstance(layer, (IP, IPv6, IPerror, IPerror6, ARP)) and field in layer.fields:
                value = layer.getfieldval(field)
                if isinstance(value, str) and ("." in value or ":" in value):
                    found.append(value)
        layer = layer.payload
    return found


def replay(
    bed: Testbed, frames: Sequence[Sent], liveness: Liveness | None = None, injector: Injector | None = None
) -> tuple[Verdict, Verdict]:
    """Look at the stack, send `frames`, look again: (before, after). A stack that is not alive
    before is no evidence either way; the caller says so. `injector` (one of `bed`'s) counts
    what was sent and what the lab's kernel refused, for a caller that reports it."""
    probe = liveness or Liveness(bed).start()
    before = probe.check()
    if not before.alive:
        return before, before
    injector = injector or Injector(bed)
    try:
        injector.send(frames)
    finally:
        injector.close()
    return before, probe.check()
