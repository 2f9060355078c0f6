"""A TCP connection played by hand from the Wire, with the stack under test at the far end.

The lab is the peer: it sends each segment itself and expects each of the stack's segments
against a template. The connection keeps what a real peer keeps, so a check writes what it
means ("send 100 bytes", "expect the ACK of them") instead of sequence arithmetic: the next
sequence number each way, the stack's window, and the options both SYNs agreed on (MSS, window
scale, SACK-permitted, timestamps). A template given to `expect` is relative to that state:
ports and addresses are the connection's, `seq` defaults to the next byte the stack owes and
`ack`, when the template's flags include ACK, to the next byte the lab sends. Whatever the check
sets itself wins; fields it leaves out of the template stay don't-care.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.packet import Packet, Raw

from labkit.errors import ExpectTimeout, LabError, LabInputError
from labkit.net.plan import Endpoints
from labkit.packet.wire import Wire

MOD = 1 << 32
LINUX_SYN_OPTIONS = ("MSS", "SAckOK", "Timestamp", "WScale")  # what Linux's SYN carries


def seq_add(seq: int, n: int) -> int:
    return (seq + n) % MOD


def seq_after(a: int, b: int) -> bool:
    """`a` comes after `b` in sequence space (RFC 1982 arithmetic: the numbers wrap at 2**32)."""
    return 0 < (a - b) % MOD < MOD // 2


def payload_length(pkt: Packet) -> int:
    """The TCP payload's length from the IP header (Ethernet padding is not payload); for a
    segment the lab built and has not turned into bytes yet, its payload as it is."""
    tcp = pkt[TCP]
    ip = tcp.underlayer
    if getattr(ip, "len" if isinstance(ip, IP) else "plen", None) is None or tcp.dataofs is None:
        return len(bytes(tcp.payload))
    if isinstance(ip, IP):
        return int(ip.len) - int(ip.ihl) * 4 - int(tcp.dataofs) * 4
    return int(ip.plen) - int(tcp.dataofs) * 4  # the lab sends and expects no extension headers


def options_of(tcp: Packet) -> dict[str, Any]:
    return {name: value for name, value in tcp.options}


@dataclass
class Negotiated:
    """What the two SYNs agreed on. `mss` is the stack's announcement (what the lab may send);
    `send_shift`/`recv_shift` are the window scales, set only when both sides offered one."""

    mss: int | None = None
    send_shift: int = 0  # applies to the windows the stack announces
    recv_shift: int = 0  # applies to the windows the lab announces
    window_scaling: bool = False
    sack_permitted: bool = False
    timestamps: bool = False


class TcpConnection:
    """One connection between the Wire (the peer's address, `local_port`) and the stack
    (`ends.stack`, `port`). `port` None: the stack opens it, `accept()` learns the port.

        conn = TcpConnection(wire, plan.endpoints("ipv6"), port=sink.port)
        conn.connect()
        conn.send(b"hello")
        conn.expect(flags="A")          # the stack acknowledges the 5 bytes
        conn.close()
    """

    def __init__(
        self,
        wire: Wire,
        ends: Endpoints,
        *,
        port: int | None,
        local_port: int | None = None,
        isn: int | None = None,
        window: int = 65535,
        mss: int = 1460,
        options: tuple[str, ...] = LINUX_SYN_OPTIONS,
        wscale: int = 7,
    ) -> None:
        unknown = set(options) - set(LINUX_SYN_OPTIONS)
        if unknown:
            raise LabInputError(f"unknown SYN option(s) {sorted(unknown)}; allowed: {', '.join(LINUX_SYN_OPTIONS)}")
        self.wire, self.ends = wire, ends
        self.port = port
        self.local_port = local_port or random.randint(20000, 60000)
        self.iss = random.randrange(MOD) if isn is None else isn
        self.snd_nxt = self.iss  # the next sequence number the lab sends
        self.snd_una = self.iss  # the oldest the stack has not acknowledged
        self.rcv_nxt: int | None = None  # the next the stack owes; known from its SYN
        self.window = window  # what the lab announces (bytes, before scaling)
        self.mss, self.syn_options, self.wscale = mss, options, wscale
        self.their_window: int | None = None  # what the stack announced, scaled
        self.negotiated = Negotiated()
        self.ts_recent = 0  # the stack's latest TSval, echoed in the lab's TSecr
        self.fin_received = False  # the stack's FIN came, in order: its stream has ended
        self._clock = random.randrange(1 << 30)

    def __repr__(self) -> str:
        rcv = "?" if self.rcv_nxt is None else self.rcv_nxt
        return (
            f"TCP [{self.ends.peer}]:{self.local_port} > [{self.ends.stack}]:{self.port} "
            f"(snd_nxt={self.snd_nxt}, snd_una={self.snd_una}, rcv_nxt={rcv})"
        )

    # -- opening ---------------------------------------------------------------------------------

    def connect(self, timeout: float = 3.0) -> Packet:
        """Active open: SYN, the stack's SYN-ACK (acknowledging the SYN), ACK. Returns the SYN-ACK."""
        self.send(flags="S")
        syn_ack = self.expect(flags="SA", timeout=timeout)
        self.send(flags="A")
        return syn_ack

    def accept(self, timeout: float = 3.0) -> Packet:
        """Passive open, the stack connecting to the lab's `local_port`: its SYN, the lab's
        SYN-ACK, its ACK. Returns the SYN."""
        syn = self.expect(flags="S", timeout=timeout)
        self.send(flags="SA")
        self.expect(flags="A", timeout=timeout)
        return syn

    # -- sending ---------------------------------------------------------------------------------

    def segment(self, data: bytes = b"", flags: str | None = None, **fields: Any) -> Packet:
        """The next segment as the connection would send it (nothing sent, no state changed):
        for a check that spoils it first, or sends it another way (then `advance`)."""
        if self.port is None:
            raise LabError(f"{self!r}: the stack's port is not known yet (accept() first)")
        flags = flags or ("PA" if data else "A")
        tcp: dict[str, Any] = {"sport": self.local_port, "dport": self.port, "seq": self.snd_nxt, "flags": flags}
        if "A" in flags:
            if self.rcv_nxt is None:
                raise LabError(f"{self!r}: nothing to acknowledge yet (no SYN from the stack)")
            tcp["ack"] = self.rcv_nxt
        tcp["window"] = self._window_field("S" in flags)
        tcp["options"] = self._options(syn="S" in flags)
        tcp.update(fields)
        pkt = self.ends.to_stack() / TCP(**tcp)
        return pkt / Raw(data) if data else pkt

    def send(self, data: bytes = b"", flags: str | None = None, **fields: Any) -> Packet:
        """Send the next segment (`flags` default: PA with data, A without) and count it sent."""
        seg = self.segment(data, flags, **fields)
        self.wire.send(seg)
        self.advance(seg)
        return seg

    def advance(self, seg: Packet) -> None:
        """Count `seg` as sent, if it is the next one (what `send` does after sending)."""
        tcp = seg[TCP]
        if int(tcp.seq) == self.snd_nxt:
            self.snd_nxt = seq_add(self.snd_nxt, payload_length(seg) + _syn_fin(tcp))

    def _may_offer(self, option: str) -> bool:
        """In a SYN anything the connection offers; in a SYN-ACK (passive open) window scale,
        SACK-permitted and timestamps only if the stack's SYN offered them (RFC 7323, RFC 2018)."""
        if self.rcv_nxt is None or option == "MSS":
            return True
        n = self.negotiated
        return {"WScale": n.window_scaling, "SAckOK": n.sack_permitted, "Timestamp": n.timestamps}[option]

    def _window_field(self, syn: bool) -> int:
        if syn or not self.negotiated.window_scaling:
            return min(self.window, 0xFFFF)
        return min(self.window >> self.negotiated.recv_shift, 0xFFFF)

    def _options(self, syn: bool) -> list[tuple[str, Any]]:
        self._clock += 1
        if syn:
            values = {"MSS": self.mss, "SAckOK": b"", "Timestamp": (self._clock, self.ts_recent), "WScale": self.wscale}
            return [(name, values[name]) for name in self.syn_options if self._may_offer(name)]
        if self.negotiated.timestamps:
            return [("NOP", None), ("NOP", None), ("Timestamp", (self._clock, self.ts_recent))]
        return []

    # -- receiving -------------------------------------------------------------------------------

    def template(self, flags: str | None = None, payload: bytes | None = None, **fields: Any) -> Packet:
        """What `expect` looks for: the stack's segment of this connection, relative to its state.
        A field given as None is don't-care, the connection's default for it included."""
        tcp: dict[str, Any] = {"dport": self.local_port}
        if self.port is not None:
            tcp["sport"] = self.port
        if flags is not None:
            tcp["flags"] = flags
            if "A" in flags:
                tcp["ack"] = self.snd_nxt
        if self.rcv_nxt is not None and not (flags and "S" in flags):
            tcp["seq"] = self.rcv_nxt
        for name, value in fields.items():  # None: don't care, also about a default
            if value is None:
                tcp.pop(name, None)
            else:
                tcp[name] = value
        tmpl = self.ends.from_stack() / TCP(**tcp)
        return tmpl / Raw(payload) if payload is not None else tmpl

    def expect(self, flags: str | None = None, payload: bytes | None = None, timeout: float = 1.0, **fields: Any) -> Packet:
        """The stack's next segment matching the template (see `template`), taken into the state."""
        tmpl = self.template(flags, payload, **fields)
        try:
            got = self.wire.expect(tmpl, timeout=timeout)
        except ExpectTimeout as exc:
            raise ExpectTimeout(f"{self!r}:\n{exc}") from None
        self.receive_segment(got)
        return got

    def receive_segment(self, pkt: Packet) -> None:
        """Take a segment of the stack's into the state (what `expect` does with what matched)."""
        tcp = pkt[TCP]
        flags = int(tcp.flags)
        opts = options_of(tcp)
        if flags & 0x02:  # SYN: the stack's ISN and its half of the options
            self.port = int(tcp.sport)
            self.rcv_nxt = int(tcp.seq)
            self._agree(opts)
        if self.rcv_nxt is not None and int(tcp.seq) == self.rcv_nxt:
            self.rcv_nxt = seq_add(self.rcv_nxt, payload_length(pkt) + _syn_fin(tcp))
            self.fin_received = self.fin_received or bool(flags & 0x01)
        if flags & 0x10 and seq_after(int(tcp.ack), self.snd_una):  # an old or repeated ACK moves nothing back
            self.snd_una = int(tcp.ack)
        shift = 0 if flags & 0x02 else self.negotiated.send_shift
        self.their_window = int(tcp.window) << shift
        if "Timestamp" in opts and (flags & 0x02 or seq_after(int(opts["Timestamp"][0]) + 1, self.ts_recent)):
            self.ts_recent = int(opts["Timestamp"][0])  # RFC 7323: only a newer (or equal) TSval is echoed

    def _agree(self, theirs: dict[str, Any]) -> None:
        ours = set(self.syn_options)
        n = self.negotiated
        n.mss = theirs.get("MSS")
        n.window_scaling = "WScale" in theirs and "WScale" in ours
        n.send_shift = min(int(theirs["WScale"]), 14) if n.window_scaling else 0  # RFC 7323: 14 at most
        n.recv_shift = self.wscale if n.window_scaling else 0
        n.sack_permitted = "SAckOK" in theirs and "SAckOK" in ours
        n.timestamps = "Timestamp" in theirs and "Timestamp" in ours

    def receive(self, size: int, timeout: float = 3.0) -> bytes:
        """The next `size` bytes the stack sends, in order, each segment acknowledged."""
        deadline = time.monotonic() + timeout
        data = b""
        while len(data) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExpectTimeout(f"{self!r}: {len(data)} of {size} bytes came within {timeout:g}s")
            seg = self.expect(timeout=left)
            chunk = bytes(seg[TCP].payload)[: payload_length(seg)]
            if chunk:
                data += chunk
                self.send(flags="A")
        return data

    # -- closing ---------------------------------------------------------------------------------

    def close(self, timeout: float = 3.0) -> Packet:
        """Send FIN and expect the stack to acknowledge it; returns that acknowledgement. If the
        stack closes its side too (within `timeout`), its FIN is acknowledged, so nothing it
        retransmits reaches a later check's capture. If its FIN came before ours, ours acknowledges
        it and the stack has nothing left to send: nothing more is waited for."""
        closed_first = self.fin_received
        self.send(flags="FA")
        acked = self.expect(ack=self.snd_nxt, timeout=timeout)
        if closed_first:
            return acked
        deadline = time.monotonic() + timeout
        last = acked
        while not int(last[TCP].flags) & 0x01 and (left := deadline - time.monotonic()) > 0:
            try:
                last = self.expect(timeout=left)  # the stack's next segment: data still on its way, or its FIN
            except ExpectTimeout:
                return acked  # the stack keeps its side open: that is its right
        self.send(flags="A")
        return acked

    def reset(self) -> Packet:
        """Abort: a RST at the next sequence number (nothing is expected back)."""
        return self.send(flags="R")


def _syn_fin(tcp: Packet) -> int:
    return (1 if int(tcp.flags) & 0x02 else 0) + (1 if int(tcp.flags) & 0x01 else 0)
