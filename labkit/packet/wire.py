"""The Wire: the lab's end of a veth, where frames are injected and what came back is judged.

Modelled on packetimpact's testbench: send, then `expect` a template within a timeout; on a
timeout the error names the frames that came closest and the field that differed. The Wire also
plays the peer's neighbour protocol (ARP/NDP replies for addresses it is told to own), so a stack
can resolve the peer without the peer's kernel holding an address and answering on its own.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from scapy.layers.inet import IP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from labkit.errors import ExpectTimeout, LabError, LabInputError, UnexpectedFrame
from labkit.lifecycle import janitor
from labkit.net.addressing import lab_address
from labkit.net.netns import NetNS
from labkit.packet import bpf
from labkit.packet.capture import Capture
from labkit.packet.frames import READ_BATCH, Frame, open_packet_socket, read_frames
from labkit.packet.match import Verdict, compare, describe


@dataclass(frozen=True)
class Expectation:
    """One thing a check looked for on the wire and what came of it."""

    kind: str  # "expect", "expect_none" or "listen"
    template: str  # as the check wrote it (only the fields it set)
    timeout: float
    started: float  # wall clock, as the frames' timestamps
    outcome: str  # "matched", "timeout", "absent", "present", or "N frame(s)" for listen
    frame: int | None  # index in `Wire.frames` (and the pcap) of the frame that matched or came
    closest: str | None = None  # on a timeout: the field in which the nearest frame differed
    # On a timeout: that nearest frame's index, as `frame` (so a report can point at it in the pcap).
    closest_frame: int | None = None


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
        self.expectations: list[Expectation] = []  # what this check looked for, and what answered it
        self._cursor = 0
        self._since = 0.0  # frames stamped before this belong to an earlier check
        self._neighbours: dict[str, str] = {}
        self._tx = open_packet_socket(ns, ifname, bpf.DROP_ALL)
        self._rx: socket.socket | None = None
        if record:
            try:
                self._rx = open_packet_socket(ns, ifname, record=True)
            except BaseException:
                self._tx.close()
                raise
        janitor.track(self)

    def __repr__(self) -> str:
        return f"Wire({self.ns.name}:{self.ifname})"

    @property
    def since(self) -> float:
        """When the current window began (the last `forget`; 0.0 before any): a capture beside
        the Wire keeps the same window."""
        return self._since

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

    def owned(self) -> dict[str, str]:
        """The addresses the Wire answers for, each with the MAC it answers with."""
        return dict(self._neighbours)

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
            if ns is not None and ip6 is not None and ns.tgt in self._neighbours and ip6.src != "::":
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
        for frame in read_frames(self._rx):
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
        indices: list[int] = []  # each near frame's index in `frames`
        for frame in self._incoming(timeout):
            verdict = compare(template, frame.packet)
            if verdict.matched:
                self._log("expect", template, timeout, started, "matched", self._cursor - 1)
                return frame
            near.append((verdict, frame))
            indices.append(self._cursor - 1)
        if near:
            best = max(range(len(near)), key=lambda i: near[i][0].score)  # the first of the best, as _explain
            self._log("expect", template, timeout, started, "timeout", None, near[best][0].diff, indices[best])
        else:
            self._log("expect", template, timeout, started, "timeout", None)
        raise ExpectTimeout(self._explain(template, timeout, near, started))

    def expect_none(self, template: Packet, timeout: float = 0.5) -> None:
        """Fail if a frame matching `template` arrives within `timeout` (which is always waited out)."""
        started = time.time()
        for frame in self._incoming(timeout):
            if compare(template, frame.packet).matched:
                self._log("expect_none", template, timeout, started, "present", self._cursor - 1)
                raise UnexpectedFrame(
                    f"{self}: got a frame matching {describe(template)} that must not come: {frame.packet.summary()}"
                )
        self._log("expect_none", template, timeout, started, "absent", None)

    def listen(self, seconds: float) -> list[Frame]:
        """Watch the wire for `seconds`, always waited out: the incoming frames that came meanwhile
        (consumed, and kept in `frames` for the pcap), while the Wire goes on answering for its
        neighbours. For "watch for this long", where no template fits."""
        started = time.time()
        first = self._cursor
        heard = list(self._incoming(seconds))
        self._log("listen", None, seconds, started, f"{len(heard)} frame(s)", first if heard else None)
        return heard

    def _log(
        self,
        kind: str,
        template: Packet | None,
        timeout: float,
        started: float,
        outcome: str,
        frame: int | None,
        diff: str | None = None,
        closest_frame: int | None = None,
    ) -> None:
        what = describe(template) if template is not None else "any frame"
        self.expectations.append(Expectation(kind, what, timeout, started, outcome, frame, diff, closest_frame))

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
        self.expectations.clear()
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

    def write_expectations(self, path: str | os.PathLike[str]) -> Path:
        """What each expect looked for and which frame answered it (`frame`: its index in the pcap
        that `write_pcap` writes, from 0; on a timeout `closest_frame`, the nearest miss), as JSON:
        the evidence that goes with the pcap."""
        path = Path(path)
        path.write_text(json.dumps([asdict(e) for e in self.expectations], indent=1))
        return path

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
    """Addresses a frame may carry that are not a destination anywhere: unspecified, broadcast,
    link-local multicast (224.0.0.0/24, ff02::/16), link-local unicast."""
    a = str(addr).lower()
    return a in ("0.0.0.0", "255.255.255.255", "::") or a.startswith(("ff02:", "fe80:", "224.0.0."))
