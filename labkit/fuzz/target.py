"""What fuzzed frames are aimed at, what can be wrong with them, and the finishing every strategy shares.

A strategy only decides what to break; this module makes sure the result still obeys the lab's
rules (lab addresses only, frames within the link's MTU, nothing random outside hypothesis's
control) and that every checksum is right *as the receiver will read it*: a frame whose header
length lies still gets a header checksum over the bytes the stack will sum, so it reaches the
code behind the checksum check instead of dying in front of it. A few frames get one checksum
broken on purpose, and say so ("checksum").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from scapy.packet import Packet
from scapy.utils import checksum

LAB4 = IPv4Network("198.18.0.0/15")
LAB6 = IPv6Network("2001:db8::/32")
LINK_MULTICAST6 = IPv6Network("ff02::/16")
BROADCAST4 = "255.255.255.255"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
ALL_NODES6 = "ff02::1"
VLAN_TPIDS = (0x8100, 0x88A8)

FLAW_MEANINGS: dict[str, str] = {
    "eth.short": "the frame ends inside the header its EtherType announces (ARP 8, IPv4 20, IPv6 40, VLAN tag 4 bytes)",
    "eth.vlan": "one 802.1Q tag on a link the stack runs untagged",
    "eth.qinq": "two stacked VLAN tags (802.1ad or double 802.1Q)",
    "eth.length-lies": "an 802.3 length field (<= 1500) that disagrees with the bytes that follow",
    "eth.type-mismatch": "EtherType IPv4/IPv6 over a header whose version nibble says otherwise",
    "eth.unknown-type": "an EtherType the stack does not implement",
    "arp.htype": "ARP hardware type other than Ethernet (1)",
    "arp.ptype": "ARP protocol type other than IPv4 (0x0800)",
    "arp.hwlen": "ARP hardware address length other than 6",
    "arp.plen": "ARP protocol address length other than 4",
    "arp.op": "ARP opcode other than request (1) or reply (2)",
    "arp.short": "fewer bytes than the ARP sizes announce",
    "ipv4.ihl": "IHL below 5, or past the total length or the end of the frame",
    "ipv4.total-length": "IPv4 total length that disagrees with the bytes present",
    "ipv4.options": "an IPv4 option of length 0 or 1, running past the options area, or a route/timestamp pointer below 4",
    "ipv4.frag-overlap": "two fragments of one datagram cover the same bytes",
    "ipv4.frag-tiny": "a non-last fragment with under 8 bytes, or a first fragment too short for the TCP header",
    "ipv4.frag-past-64k": "a fragment ending past byte 65535 of its datagram",
    "ipv4.frag-incomplete": "a fragment train with a hole or without its last fragment",
    "ipv6.payload-length": "IPv6 payload length that disagrees with the bytes present",
    "ipv6.ext-chain": "hop-by-hop not first, a header repeated, or a header running past the end",
    "ipv6.hbh-options": "a hop-by-hop option past its header, with a wrong length, or unknown with a discard action",
    "ipv6.dst-options": "a destination option past its header, with a wrong length, or unknown with a discard action",
    "ipv6.frag": "a fragment header wrong on its own: reserved bits, unaligned non-last, past 64 KiB, first fragment without the upper header",
    "ipv6.frag-overlap": "two fragments of one datagram cover the same bytes",
    "ipv6.frag-incomplete": "a fragment train with a hole or without its last fragment",
    "icmp.type-code": "an ICMP type/code pair no RFC defines",
    "icmp.quote-short": "an ICMP error quoting less than an IP header and 8 bytes",
    "icmp.mtu": "fragmentation-needed advertising a next-hop MTU below 68",
    "icmpv6.type-code": "an ICMPv6 type/code pair no RFC defines",
    "icmpv6.quote-short": "an ICMPv6 error quoting less than an IPv6 header and 8 bytes",
    "icmpv6.mtu": "packet-too-big advertising an MTU below 1280",
    "ndp.option-length": "an NDP option of length 0, past the end, or wrong for its type",
    "ndp.hop-limit": "an NDP message with a hop limit other than 255",
    "ndp.target": "a neighbor solicitation/advertisement or redirect whose target is multicast",
    "tcp.option-length": "a TCP option of length 0 or 1, past the header, or wrong for its kind",
    "tcp.flags": "a TCP flag combination no valid segment carries (SYN+FIN, SYN+RST, FIN+RST, none of SYN/RST/ACK, NS)",
    "tcp.data-offset": "TCP data offset below 5 or past the end of the segment",
    "tcp.urgent": "URG set with an urgent pointer past the data",
    "tcp.seq": "a sequence number other than the one the connection expects next",
    "tcp.ack": "ACK set with an acknowledgment number other than the next byte the stack sent",
    "udp.length": "UDP length that disagrees with the bytes present",
    "checksum": "one IPv4 header, TCP, UDP, ICMP or ICMPv6 checksum is wrong as the receiver reads the frame",
    "gso.size": "GSO with gso_size below 8 or not below the payload length",
    "gso.hdr-len": "virtio hdr_len other than the length of the frame's headers",
    "gso.csum": "NEEDS_CSUM with csum_start/csum_offset not pointing at the L4 checksum",
    "gso.type": "gso_type unknown or not matching the frame's family and protocol",
}
FLAWS: frozenset[str] = frozenset(FLAW_MEANINGS)


def is_lab_address(addr: str) -> bool:
    """May a frame carry `addr`? Lab ranges, the unspecified address, link-scope multicast, broadcast."""
    a = ip_address(addr)
    if isinstance(a, IPv4Address):
        return a in LAB4 or addr in (BROADCAST4, "0.0.0.0")
    return a in LAB6 or a in LINK_MULTICAST6 or a == IPv6Address("::")


@dataclass(frozen=True)
class Target:
    """Who is who on the fuzzed link; every address is a lab address."""

    wire_mac: str
    stack_mac: str
    peer4: str | None
    stack4: str | None
    peer6: str | None
    stack6: str | None
    net4: str | None
    net6: str | None
    mtu: int = 1500
    also4: tuple[str, ...] = ()
    also6: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Refuse rather than fuzz: a frame to an address outside the lab could leave it.
        for addr in (self.peer4, self.stack4, self.peer6, self.stack6, *self.also4, *self.also6):
            if addr is not None and not is_lab_address(addr):
                raise ValueError(f"{addr} is not a lab address; frames may only carry 198.18.0.0/15 and 2001:db8::/32")
        if self.net4 is not None and not ip_network(self.net4).subnet_of(LAB4):  # type: ignore[arg-type]
            raise ValueError(f"{self.net4} is not inside {LAB4}")
        if self.net6 is not None and not ip_network(self.net6).subnet_of(LAB6):  # type: ignore[arg-type]
            raise ValueError(f"{self.net6} is not inside {LAB6}")
        if (self.peer4 is None) != (self.stack4 is None) or (self.peer6 is None) != (self.stack6 is None):
            raise ValueError("peer and stack addresses come in pairs per family")
        if not (self.has4 or self.has6):
            raise ValueError("a target needs an IPv4 or an IPv6 address to aim at")
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"mtu {self.mtu}: the strategies need room for full headers (576..65535)")

    @property
    def has4(self) -> bool:
        return self.stack4 is not None

    @property
    def has6(self) -> bool:
        return self.stack6 is not None

    @property
    def subnet_broadcast4(self) -> str | None:
        return None if self.net4 is None else str(IPv4Network(self.net4).broadcast_address)

    @property
    def solicited6(self) -> str | None:
        """The stack's solicited-node multicast group (RFC 4291 2.7.1), where NDP sends NS."""
        if self.stack6 is None:
            return None
        low = int(IPv6Address(self.stack6)) & 0xFFFFFF
        return str(IPv6Address(int(IPv6Address("ff02::1:ff00:0")) | low))


@dataclass(frozen=True)
class Live:
    """A TCP connection the testbench holds open to the stack: segments fuzzed into it are in its window."""

    family: str
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int

    def __post_init__(self) -> None:
        if self.family not in ("ipv4", "ipv6"):
            raise ValueError(f"family {self.family!r}: ipv4 or ipv6")
        for addr in (self.src, self.dst):
            if not is_lab_address(addr):
                raise ValueError(f"{addr} is not a lab address")


@dataclass(frozen=True)
class Fuzzed:
    """One drawn input: one frame, or a train of frames that belong together (fragments of one datagram)."""

    kind: str
    frames: tuple[bytes, ...]
    flaws: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = self.flaws - FLAWS
        if unknown:
            raise ValueError(f"flaws outside the vocabulary: {sorted(unknown)}")


# --- addresses ---------------------------------------------------------------------------------


def _sources(peer: str | None, stack: str | None, net: IPv4Network | IPv6Network | None, last: int) -> SearchStrategy[str]:
    """The Wire's address, or another host of the link's network up to host number `last` (a
    neighbour the stack never saw)."""
    assert peer is not None
    if net is None:
        return st.just(peer)
    taken = {peer, stack}
    others = st.integers(1, last).map(lambda i: str(net[i]))
    return st.one_of(st.just(peer), others.filter(lambda a: a not in taken))


def sources4(t: Target) -> SearchStrategy[str]:
    net = IPv4Network(t.net4) if t.net4 else None
    return _sources(t.peer4, t.stack4, net, max(1, min(net.num_addresses - 2, 0xFFFF)) if net else 1)  # not its broadcast


def sources6(t: Target) -> SearchStrategy[str]:
    net = IPv6Network(t.net6) if t.net6 else None
    return _sources(t.peer6, t.stack6, net, min(net.num_addresses - 1, 0xFFFFFFFF) if net else 1)


def destinations4(t: Target, unicast: bool = False) -> SearchStrategy[str]:
    """The stack, the lab hosts behind it, and (unless `unicast`) the broadcasts it must hear."""
    assert t.stack4 is not None
    out = [t.stack4, *t.also4]
    if not unicast:
        out += [a for a in (t.subnet_broadcast4, BROADCAST4) if a is not None]
    return st.sampled_from(out)


def destinations6(t: Target, unicast: bool = False) -> SearchStrategy[str]:
    """The stack, the lab hosts behind it, and (unless `unicast`) all-nodes and its solicited-node group."""
    assert t.stack6 is not None and t.solicited6 is not None
    out = [t.stack6, *t.also6]
    if not unicast:
        out += [ALL_NODES6, t.solicited6]
    return st.sampled_from(out)


def mac_for(t: Target, dst: str) -> str:
    """The destination MAC an IP destination maps to on this link."""
    a = ip_address(dst)
    if isinstance(a, IPv6Address) and a.is_multicast:
        return "33:33:" + ":".join(f"{b:02x}" for b in a.packed[-4:])
    if dst == BROADCAST4 or dst == t.subnet_broadcast4:
        return BROADCAST_MAC
    return t.stack_mac


# --- payloads ----------------------------------------------------------------------------------


def payloads(max_len: int) -> SearchStrategy[bytes]:
    """A few drawn bytes, or up to `max_len` of one drawn fill byte: big payloads cost two choices, not thousands."""
    max_len = max(0, max_len)
    small = st.binary(max_size=min(48, max_len))
    filled = st.tuples(st.integers(0, 255), st.integers(0, max_len)).map(lambda fn: bytes([fn[0]]) * fn[1])
    return st.one_of(small, filled)


# --- finishing ---------------------------------------------------------------------------------


def l3_offset(frame: bytes) -> tuple[int, int]:
    """(offset, EtherType) of what follows the Ethernet header and any VLAN tags; -1 type if cut short."""
    off = 12
    while True:
        if len(frame) < off + 2:
            return off, -1
        etype = int.from_bytes(frame[off : off + 2], "big")
        if etype not in VLAN_TPIDS:
            return off + 2, etype
        off += 4


def vlan_tags(frame: bytes) -> int:
    n, off = 0, 12
    while len(frame) >= off + 2 and int.from_bytes(frame[off : off + 2], "big") in VLAN_TPIDS:
        n, off = n + 1, off + 4
    return n


def _pseudo(b: bytearray, off: int, family: int, proto: int, length: int) -> bytes:
    """The pseudo-header the L4 checksum covers (RFC 793/768 for IPv4, RFC 8200 8.1 for IPv6)."""
    if family == 4:
        return bytes(b[off + 12 : off + 20]) + bytes([0, proto]) + length.to_bytes(2, "big")
    return bytes(b[off + 8 : off + 40]) + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])


def _seal_l4(b: bytearray, off: int, family: int, proto: int, start: int, end: int) -> int | None:
    """Set the L4 checksum over b[start:end] (UDP: over its own length when that fits); its offset, or None."""
    icmp = 1 if family == 4 else 58
    at = {6: 16, 17: 6, icmp: 2}.get(proto)
    if at is None:
        return None
    if proto == 17 and end - start >= 8:
        ulen = int.from_bytes(b[start + 4 : start + 6], "big")
        if 8 <= ulen <= end - start:
            end = start + ulen
    if end - start < at + 2:
        return None
    b[start + at : start + at + 2] = b"\0\0"
    data = bytes(b[start:end])
    if proto != 1:
        data = _pseudo(b, off, family, proto, end - start) + data
    value = checksum(data)
    if proto == 17 and value == 0:
        value = 0xFFFF
    b[start + at : start + at + 2] = value.to_bytes(2, "big")
    return start + at


_EXTENSIONS6 = (0, 43, 44, 60)


def seal(frame: bytes) -> tuple[bytes, list[int]]:
    """`frame` with its IPv4 header and L4 checksums right as the receiver reads it, and their offsets.

    The receiver's view: the IPv4 header is IHL*4 bytes, the datagram ends at the total length
    (or payload length) or the frame, whichever comes first, UDP at its own length. Fragments keep their L4 checksum
    (it covers the reassembled datagram); what cannot be parsed that far keeps what scapy wrote.
    """
    b = bytearray(frame)
    off, etype = l3_offset(frame)
    spots: list[int] = []
    if etype == 0x0800 and len(b) - off >= 20 and b[off] >> 4 == 4:
        hl = (b[off] & 15) * 4
        if 20 <= hl <= len(b) - off:
            end = min(off + int.from_bytes(b[off + 2 : off + 4], "big"), len(b))
            fragment = int.from_bytes(b[off + 6 : off + 8], "big") & 0x3FFF
            if not fragment and end >= off + hl:
                spot = _seal_l4(b, off, 4, b[off + 9], off + hl, end)
                spots += [] if spot is None else [spot]
            b[off + 10 : off + 12] = b"\0\0"
            b[off + 10 : off + 12] = checksum(bytes(b[off : off + hl])).to_bytes(2, "big")
            spots.append(off + 10)
    elif etype == 0x86DD and len(b) - off >= 40 and b[off] >> 4 == 6:
        plen = int.from_bytes(b[off + 4 : off + 6], "big")
        end = min(off + 40 + plen, len(b))
        nh, p = b[off + 6], off + 40
        while nh in _EXTENSIONS6 and p + 8 <= end:
            if nh == 44 and int.from_bytes(b[p + 2 : p + 4], "big") & 0xFFF9:
                return bytes(b), spots  # a fragment: its checksum covers the reassembled datagram
            if nh == 43 and b[p + 3]:
                return bytes(b), spots  # segments left: the pseudo-header's destination is elsewhere
            nh, p = b[p], p + (8 if nh == 44 else (b[p + 1] + 1) * 8)
        if nh not in _EXTENSIONS6 and p <= end:
            spot = _seal_l4(b, off, 6, nh, p, end)
            spots += [] if spot is None else [spot]
    return bytes(b), spots


_DELTAS = (0x0001, 0x0100, 0x8000, 0x1234)


def emit(
    draw: st.DrawFn,
    t: Target,
    kind: str,
    frames: Sequence[Packet | bytes],
    flaws: Iterable[str] = (),
    *,
    sealed: bool = True,
) -> Fuzzed:
    """The finished input: frames as bytes, checksums sealed, now and then one broken, sizes checked.

    A wrong size is the strategy's bug, not a finding: it raises instead of sending a frame the
    link could not carry.
    """
    out = [bytes(f) for f in frames]
    if not out:
        raise ValueError(f"{kind}: no frames")
    found = set(flaws)
    if sealed:
        spots: list[tuple[int, int]] = []
        for i, frame in enumerate(out):
            out[i], offsets = seal(frame)
            spots += [(i, a) for a in offsets]
        if spots and draw(st.integers(0, 9)) == 7:
            i, at = draw(st.sampled_from(spots))
            old = int.from_bytes(out[i][at : at + 2], "big")
            new = old ^ draw(st.sampled_from(_DELTAS))
            new = new or old ^ 0x0300  # 0 is "no checksum" to UDP over IPv4
            out[i] = out[i][:at] + new.to_bytes(2, "big") + out[i][at + 2 :]
            found.add("checksum")
    for frame in out:
        limit = t.mtu + 14 + 4 * vlan_tags(frame)
        if not 14 <= len(frame) <= limit:
            raise ValueError(f"{kind}: a {len(frame)}-byte frame, outside 14..{limit}")
    return Fuzzed(kind, tuple(out), frozenset(found))
