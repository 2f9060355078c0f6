"""UDP flows and ICMP echo from the Wire, the same call for IPv4 and IPv6.

A check names the family once (`plan.endpoints(family)`); the flow builds the right headers
(ICMP or ICMPv6, addresses of that family) and the templates for the stack's answers, so no
check repeats `IP if family == "ipv4" else IPv6`.
"""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from scapy.layers.inet import ICMP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest
from scapy.packet import Packet, Raw

from labkit.errors import ExpectTimeout
from labkit.net.plan import Endpoints
from labkit.packet.frames import Frame
from labkit.packet.wire import Wire

if TYPE_CHECKING:
    from labkit.stacks.service import Service


def _with(pkt: Packet, payload: bytes | None) -> Packet:
    return pkt / Raw(payload) if payload is not None else pkt


class UdpFlow:
    """Datagrams between the Wire (`local_port`) and a port of the stack's."""

    def __init__(self, wire: Wire, ends: Endpoints, *, port: int, local_port: int | None = None) -> None:
        self.wire, self.ends, self.port = wire, ends, port
        self.local_port = local_port or random.randint(20000, 60000)

    def datagram(self, payload: bytes = b"", **udp: Any) -> Packet:
        """The datagram to the stack (fields of the UDP header override, e.g. chksum=0)."""
        return _with(self.ends.to_stack() / UDP(**{"sport": self.local_port, "dport": self.port, **udp}), payload)

    def send(self, payload: bytes = b"", **udp: Any) -> Packet:
        pkt = self.datagram(payload, **udp)
        self.wire.send(pkt)
        return pkt

    def reply(self, payload: bytes | None = None) -> Packet:
        """A template for the stack's datagram back to this flow."""
        return _with(self.ends.from_stack() / UDP(sport=self.port, dport=self.local_port), payload)

    def expect(self, payload: bytes | None = None, timeout: float = 1.0) -> Packet:
        return self.wire.expect(self.reply(payload), timeout=timeout)

    def expect_frame(self, payload: bytes | None = None, timeout: float = 1.0) -> Frame:
        """The reply as a Frame: with the kernel's checksum state (partial or not)."""
        return self.wire.expect_frame(self.reply(payload), timeout=timeout)


class IcmpEcho:
    """Echo requests from the Wire and the stack's replies (ICMP or ICMPv6 by the family)."""

    def __init__(self, wire: Wire, ends: Endpoints, ident: int | None = None) -> None:
        self.wire, self.ends = wire, ends
        self.ident = random.randint(1, 0xFFFF) if ident is None else ident

    def request(self, seq: int, payload: bytes = b"", dst: str | None = None) -> Packet:
        ip = self.ends.to_stack(**({"dst": dst} if dst else {}))
        if self.ends.version == 4:
            return _with(ip / ICMP(type="echo-request", id=self.ident, seq=seq), payload or None)
        return ip / ICMPv6EchoRequest(id=self.ident, seq=seq, data=payload)

    def send(self, seq: int, payload: bytes = b"", dst: str | None = None) -> Packet:
        pkt = self.request(seq, payload, dst)
        self.wire.send(pkt)
        return pkt

    def reply(self, seq: int, payload: bytes | None = None, src: str | None = None) -> Packet:
        """A template for the reply to request `seq` (from `src`: the stack's address by default)."""
        ip = self.ends.from_stack(**({"src": src} if src else {}))
        if self.ends.version == 4:
            return _with(ip / ICMP(type="echo-reply", id=self.ident, seq=seq), payload)
        if payload is not None:
            return ip / ICMPv6EchoReply(id=self.ident, seq=seq, data=payload)
        return ip / ICMPv6EchoReply(id=self.ident, seq=seq)

    def expect_reply(self, seq: int, payload: bytes | None = None, timeout: float = 1.0, src: str | None = None) -> Packet:
        return self.wire.expect(self.reply(seq, payload, src), timeout=timeout)

    def ping(self, seq: int, payload: bytes = b"", timeout: float = 1.0) -> Packet:
        """Request and the reply to it."""
        self.send(seq, payload)
        return self.expect_reply(seq, payload or None, timeout)


RECORD = struct.Struct("!HI")  # a flow's source port and the datagram's number: the payload


class NumberedFlows:
    """Many UDP flows (one source port each) of numbered datagrams, for dispatch checks: every
    datagram must arrive, each flow's in the order sent. Frames are built once, as bytes, for
    `Wire.inject`; what a service reports is taken in with `arrived`."""

    def __init__(self, wire: Wire, ends: Endpoints, port: int, flows: int = 64, per_flow: int = 8, ports: Sequence[int] = ()) -> None:
        self.ends, self.port, self.per_flow = ends, port, per_flow
        self.ports = list(ports) or random.sample(range(20000, 60000), flows)
        head = wire.ether()
        self._frames = {
            (p, n): bytes(head / ends.to_stack() / UDP(sport=p, dport=port) / RECORD.pack(p, n))
            for p in self.ports
            for n in range(per_flow)
        }
        self.got: dict[int, list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self._frames)

    def frames(self, numbers: Iterable[int] | None = None, ports: Sequence[int] | None = None) -> list[bytes]:
        """Frames of datagrams `numbers` (default: all) of flows `ports`, interleaved across flows."""
        nums = range(self.per_flow) if numbers is None else numbers
        return [self._frames[(p, n)] for n in nums for p in (ports if ports is not None else self.ports)]

    def arrived(self, payload: bytes) -> None:
        port, n = RECORD.unpack(payload[: RECORD.size])
        self.got[port].append(n)

    def collect(self, service: Service, count: int, timeout: float = 5.0) -> int:
        """Take in the next `count` datagrams the service reports (fewer if they stop coming
        for `timeout`); returns how many came."""
        came = 0
        while came < count:
            try:
                event = service.wait_for(lambda e: e["event"] == "datagram", timeout=timeout)
            except ExpectTimeout:
                break
            self.arrived(bytes.fromhex(event["data"]))
            came += 1
        return came

    def lost(self, ports: Iterable[int] | None = None) -> dict[int, list[int]]:
        """Per flow, the numbers that never arrived."""
        out = {}
        for p in self.ports if ports is None else ports:
            missing = sorted(set(range(self.per_flow)) - set(self.got.get(p, [])))
            if missing:
                out[p] = missing
        return out

    def disordered(self) -> dict[int, list[int]]:
        """Per flow that arrived out of order, the numbers in the order they arrived."""
        return {p: seq for p, seq in self.got.items() if seq != sorted(seq)}
