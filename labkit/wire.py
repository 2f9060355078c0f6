"""The Wire: the lab's end of a veth, where frames are injected and what came back is judged.

Modelled on packetimpact's testbench: send, then `expect` a template within a timeout; on a
timeout the error names the frames that came closest and the field that differed. The Wire also
plays the peer's neighbour protocol (ARP/NDP replies for addresses it is told to own), so a stack
can resolve the peer without the peer's kernel holding an address and answering on its own.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import IP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from . import bpf, janitor
from .addressing import lab_address
from .errors import LabError, LabInputError
from .layers import TPacketAuxdata
from .match import Verdict, compare, describe
from .netns import NetNS

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
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


class ExpectTimeout(AssertionError):
    """No frame matched; the message carries the nearest candidates and the differing field."""


class UnexpectedFrame(AssertionError):
    """A frame matched a template that must not be matched."""


def _open_packet_socket(ns: NetNS, ifname: str, program: tuple[int, bytes] | None = None, record: bool = False) -> socket.socket:
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


def _read_frames(sock: socket.socket) -> Iterator[Frame]:
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


class Capture:
    """A kernel-filtered view of a Wire: only frames passing the BPF program are queued here.

    While a Capture waits it keeps its Wire reading too, so the Wire goes on answering the
    stack's ARP/NDP and recording the pcap.
    """

    def __init__(self, wire: Wire, expr: str) -> None:
        self.expr = expr
        self.wire = wire
        self._sock = _open_packet_socket(wire.ns, wire.ifname, bpf.program(expr), record=True)
        self._passed = 0
        janitor.track(self)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[Frame]:
        return list(_read_frames(self._sock))

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
                for _ in _read_frames(self._sock):
                    pass
        return got

    def close(self) -> None:
        janitor.untrack(self)
        self._sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Wire:
    """The lab's side of one veth: inject, record, expect.

    `mac` is this end's address (frames the Wire sends come from it); `far_mac` the stack's.
    """

    def __init__(self, ns: NetNS, ifname: str, *, mac: str, far_mac: str | None = None, record: bool = True) -> None:
        self.ns = ns
        self.ifname = ifname
        self.mac = mac
        self.far_mac = far_mac
        self.frames: list[Frame] = []
        self._cursor = 0
        self._since = 0.0  # frames stamped before this belong to an earlier check
        self._neighbours: dict[str, str] = {}
        self._tx = _open_packet_socket(ns, ifname, bpf.DROP_ALL)
        self._rx: socket.socket | None = None
        if record:
            try:
                self._rx = _open_packet_socket(ns, ifname, record=True)
            except BaseException:
                self._tx.close()
                raise
        janitor.track(self)

    def __repr__(self) -> str:
        return f"Wire({self.ns.name}:{self.ifname})"

    # -- sending ------------------------------------------------------------------------------

    def ether(self, dst: str | None = None) -> Ether:
        """An Ethernet header from this end to the stack (or to `dst`)."""
        return Ether(src=self.mac, dst=dst or self.far_mac or "ff:ff:ff:ff:ff:ff")

    def frame(self, pkt: Packet | bytes) -> bytes:
        """The bytes that `send` would put on the wire; checks IP addresses against the lab policy."""
        if isinstance(pkt, (bytes, bytearray, memoryview)):
            return bytes(pkt)
        if not isinstance(pkt, Ether):
            pkt = self.ether() / pkt
        for layer_type in (IP, IPv6):
            ip = pkt.getlayer(layer_type)
            if ip is None:
                continue
            for attr in ("src", "dst"):
                if attr not in ip.fields:
                    raise LabInputError(
                        f"{layer_type.__name__}.{attr} must be set explicitly (scapy would look it up in the root namespace)"
                    )
                value = ip.fields[attr]
                if not _policy_exempt(value):
                    lab_address(value)
        return bytes(pkt)

    def send(self, *pkts: Packet | bytes) -> None:
        for p in pkts:
            self._tx.send(self.frame(p))

    def inject(self, frames: Iterable[bytes], timeout: float = 30.0) -> int:
        """Send prebuilt frames as fast as the socket takes them; returns how many were sent.

        The fast path for rate tests: no per-frame checks, the caller builds the bytes once.
        Bounded: if the link stays congested past `timeout`, the error says how far it got.
        """
        send = self._tx.send
        deadline = time.monotonic() + timeout
        n = 0
        for data in frames:
            while True:
                try:
                    send(data)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        raise
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LabError(f"{self}: link congested, {n} frames sent before the {timeout:g}s limit") from None
                    select.select([], [self._tx], [], min(left, 0.1))
            n += 1
        return n

    # -- neighbour protocol -------------------------------------------------------------------

    def own(self, address: str, mac: str | None = None) -> None:
        """Answer ARP who-has / NDP neighbour solicitations for `address` with `mac` (this end's by
        default; another MAC lets a check see which answer the stack really uses)."""
        self._neighbours[str(lab_address(address))] = mac or self.mac

    def disown_all(self) -> None:
        self._neighbours.clear()

    def _answer_neighbours(self, frame: Frame) -> None:
        if not self._neighbours or frame.outgoing or len(frame.data) < 14:
            return
        etype = frame.data[12:14]
        if etype == b"\x08\x06":
            arp = frame.packet.getlayer(ARP)
            if arp is not None and arp.op == 1 and arp.pdst in self._neighbours:
                mac = self._neighbours[arp.pdst]
                self._tx.send(
                    bytes(Ether(src=mac, dst=arp.hwsrc) / ARP(op=2, hwsrc=mac, psrc=arp.pdst, hwdst=arp.hwsrc, pdst=arp.psrc))
                )
        elif etype == b"\x86\xdd" and len(frame.data) > 54 and frame.data[20] == 58 and frame.data[54] == 135:
            ns = frame.packet.getlayer(ICMPv6ND_NS)
            ip6 = frame.packet.getlayer(IPv6)
            if ns is not None and ns.tgt in self._neighbours and ip6.src != "::":
                mac = self._neighbours[ns.tgt]
                self._tx.send(
                    bytes(
                        Ether(src=mac, dst=frame.packet.src)
                        / IPv6(src=ns.tgt, dst=ip6.src, hlim=255)
                        / ICMPv6ND_NA(tgt=ns.tgt, R=0, S=1, O=1)
                        / ICMPv6NDOptDstLLAddr(lladdr=mac)
                    )
                )

    # -- receiving ----------------------------------------------------------------------------

    def _pull(self, timeout: float) -> int:
        """Read what is queued, waiting up to `timeout` for the first frame; returns how many came."""
        if self._rx is None:
            raise LabError("this Wire was made with record=False and cannot receive")
        if timeout > 0 and not select.select([self._rx], [], [], timeout)[0]:
            return 0
        n = 0
        for frame in _read_frames(self._rx):
            n += 1
            if frame.ts < self._since:
                continue  # recorded for an earlier check (see forget)
            self.frames.append(frame)
            self._answer_neighbours(frame)
        return n

    def _incoming(self, timeout: float) -> Iterator[Frame]:
        """Unconsumed incoming frames, waiting for more until `timeout`; each is consumed as yielded."""
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.frames):
                frame = self.frames[self._cursor]
                self._cursor += 1
                if not frame.outgoing:
                    yield frame
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._pull(left)

    def expect(self, template: Packet, timeout: float = 1.0) -> Packet:
        """The first new incoming frame that matches `template`; frames before it are consumed."""
        return self.expect_frame(template, timeout).packet

    def expect_frame(self, template: Packet, timeout: float = 1.0) -> Frame:
        """Like `expect`, but the Frame: kernel timestamp and auxdata (checksum state) included."""
        started = time.time()
        near: list[tuple[Verdict, Frame]] = []
        for frame in self._incoming(timeout):
            verdict = compare(template, frame.packet)
            if verdict.matched:
                return frame
            near.append((verdict, frame))
        raise ExpectTimeout(self._explain(template, timeout, near, started))

    def expect_none(self, template: Packet, timeout: float = 0.5) -> None:
        """Fail if a frame matching `template` arrives within `timeout` (which is always waited out)."""
        for frame in self._incoming(timeout):
            if compare(template, frame.packet).matched:
                raise UnexpectedFrame(
                    f"{self}: got a frame matching {describe(template)} that must not come: {frame.packet.summary()}"
                )

    def send_and_expect(self, pkt: Packet | bytes, template: Packet, timeout: float = 1.0) -> Packet:
        self.drain()
        self.send(pkt)
        return self.expect(template, timeout)

    def drain(self) -> list[Frame]:
        """Consume and return everything that arrived so far (incoming and outgoing)."""
        if self._rx is not None:
            self._pull(0)
        taken = self.frames[self._cursor :]
        self._cursor = len(self.frames)
        return taken

    def forget(self) -> None:
        """Drop everything recorded so far: the next check on a reused testbed starts a new pcap.

        Reads the socket dry (one pull takes at most READ_BATCH frames); a frame that the kernel
        stamped before this call but that comes later is dropped by `_pull` as well.
        """
        self._since = time.time()
        if self._rx is not None:
            while self._pull(0) == READ_BATCH:
                pass
        self.frames.clear()
        self._cursor = 0

    def capture(self, expr: str) -> Capture:
        """A separate, kernel-filtered capture on this wire (e.g. to count matches at line rate)."""
        return Capture(self, expr)

    def _explain(self, template: Packet, timeout: float, near: list[tuple[Verdict, Frame]], started: float) -> str:
        head = f"{self}: no frame matched {describe(template)} within {timeout:g}s"
        if not near:
            return head + "; no incoming frame arrived at all"
        best = sorted(near, key=lambda vf: -vf[0].score)[:3]
        lines = [head + f"; {len(near)} incoming frame(s) seen, closest:"]
        for verdict, frame in best:
            lines.append(f"  {frame.ts - started:+.3f}s {frame.packet.summary()}  -- {verdict.diff}")
        return "\n".join(lines)

    # -- evidence -----------------------------------------------------------------------------

    def write_pcap(self, path: str | os.PathLike[str]) -> Path:
        """Everything seen on this end so far, both directions, as a pcap file."""
        from scapy.utils import RawPcapWriter

        if self._rx is not None:
            self._pull(0)
        path = Path(path)
        with RawPcapWriter(str(path), linktype=1, sync=False) as w:
            w.write_header(None)  # a valid file even when nothing was seen
            for f in self.frames:
                sec = int(f.ts)
                w.write_packet(f.data, sec=sec, usec=int((f.ts - sec) * 1e6))
        return path

    def close(self) -> None:
        janitor.untrack(self)
        self._tx.close()
        if self._rx is not None:
            self._rx.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _policy_exempt(addr: str) -> bool:
    """Addresses a frame may carry that are not a destination anywhere: unspecified, broadcast, link-local multicast."""
    a = str(addr).lower()
    return a in ("0.0.0.0", "255.255.255.255", "::") or a.startswith("ff02:") or a.startswith("fe80:")
