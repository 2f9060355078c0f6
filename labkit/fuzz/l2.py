"""Link-layer fuzzing: Ethernet framing and ARP.

A user-space stack reads the Ethernet header and ARP itself (netstack's link endpoint, libslirp's
arp_input, passt's tap handler): nothing below it has checked a length or a tag for it.
"""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, LLC, SNAP, Dot1AD, Dot1Q, Dot3, Ether
from scapy.packet import Packet, Raw

from labkit.fuzz.target import (
    BROADCAST_MAC,
    Fuzzed,
    Target,
    destinations4,
    destinations6,
    emit,
    mac_for,
    payloads,
    sources4,
    sources6,
)

# Header sizes a receiver needs before it can read anything: what "eth.short" cuts into.
MIN_HEADER = {0x0806: 8, 0x0800: 20, 0x86DD: 40, 0x8100: 4, 0x88A8: 4}
# EtherTypes nobody implements (local experimental, unassigned, reserved): scapy leaves them raw too.
UNKNOWN_TYPES = (0x0600, 0x0801, 0x86DE, 0x88B5, 0x88B6, 0xFFFE, 0xFFFF)


@st.composite
def _inner(draw: st.DrawFn, t: Target) -> tuple[str, int, Packet]:
    """A small, valid L3 packet for the stack: (destination MAC, EtherType, packet), to wrap in bad framing."""
    families = [f for f, ok in ((4, t.has4), (6, t.has6), (0, t.has4)) if ok]
    family = draw(st.sampled_from(families))
    ident = draw(st.integers(0, 0xFFFF))
    if family == 0:
        assert t.stack4 is not None
        arp = ARP(op=1, hwsrc=t.wire_mac, psrc=draw(sources4(t)), hwdst="00:00:00:00:00:00", pdst=t.stack4)
        return BROADCAST_MAC, 0x0806, arp
    body = draw(payloads(64))
    if family == 4:
        dst = draw(destinations4(t))
        return mac_for(t, dst), 0x0800, IP(src=draw(sources4(t)), dst=dst, id=ident) / ICMP(id=ident, seq=1) / Raw(body)
    dst = draw(destinations6(t))
    return mac_for(t, dst), 0x86DD, IPv6(src=draw(sources6(t)), dst=dst) / ICMPv6EchoRequest(id=ident, seq=1, data=body)


@st.composite
def ethernet(draw: st.DrawFn, target: Target) -> Fuzzed:
    """Bad framing around good packets: VLAN and QinQ tags, 802.3 lengths that lie, frames cut inside
    the next header, EtherTypes that name the wrong (or no) protocol.

    Why it matters: a stack that trusts the EtherType indexes past a 14-byte frame; one that does not
    expect tags reads the tag as the IP header; an 802.3 length is a length field nobody validates.
    """
    t = target
    mac, etype, inner = draw(_inner(t))
    eth = Ether(src=t.wire_mac, dst=mac)
    what = draw(st.sampled_from(("vlan", "qinq", "length-lies", "snap", "short", "type-mismatch", "unknown-type")))
    tag = st.tuples(st.integers(0, 7), st.integers(0, 4095))
    if what == "vlan":
        prio, vlan = draw(tag)
        return emit(draw, t, "eth.vlan", [eth / Dot1Q(prio=prio, vlan=vlan, type=etype) / inner], {"eth.vlan"})
    if what == "qinq":
        (p1, v1), (p2, v2) = draw(tag), draw(tag)
        outer = draw(st.sampled_from((Dot1AD, Dot1Q)))
        return emit(
            draw, t, "eth.qinq", [eth / outer(prio=p1, vlan=v1) / Dot1Q(prio=p2, vlan=v2, type=etype) / inner], {"eth.qinq"}
        )
    if what in ("length-lies", "snap"):
        body = draw(payloads(min(t.mtu - 3, 1497)))
        llc = LLC(dsap=0xAA, ssap=0xAA, ctrl=3)
        if what == "snap":  # RFC 1042 encapsulation of an IP packet: legal, and rarely implemented
            frame = Dot3(src=t.wire_mac, dst=mac) / llc / SNAP(OUI=0, code=etype) / inner
            return emit(draw, t, "eth.snap", [frame])
        actual = len(bytes(llc)) + len(body)
        length = draw(st.sampled_from((0, 1, actual - 1, actual + 1, 1500)).filter(lambda n: n != actual and 0 <= n <= 1500))
        return emit(draw, t, "eth.length-lies", [Dot3(src=t.wire_mac, dst=mac, len=length) / llc / Raw(body)], {"eth.length-lies"})
    if what == "short":
        cut_type = draw(st.sampled_from((etype, 0x8100)))
        whole = (
            bytes(eth / Dot1Q(vlan=draw(st.integers(0, 4095)), type=etype) / inner) if cut_type == 0x8100 else bytes(eth / inner)
        )
        keep = draw(st.integers(0, MIN_HEADER[cut_type] - 1))
        return emit(draw, t, "eth.short", [whole[: 14 + keep]], {"eth.short"}, sealed=False)
    if what == "type-mismatch" and etype != 0x0806:
        other = 0x86DD if etype == 0x0800 else 0x0800
        frames = [Ether(src=t.wire_mac, dst=mac, type=other) / inner]
        if draw(st.booleans()):  # the right EtherType, a version nibble of neither
            version = draw(st.integers(0, 15).filter(lambda v: v not in (4, 6)))
            frames = [eth / inner.copy()]
            frames[0].payload.version = version
        return emit(draw, t, "eth.type-mismatch", frames, {"eth.type-mismatch"}, sealed=False)
    unknown = draw(st.sampled_from(UNKNOWN_TYPES))
    body = draw(payloads(t.mtu))
    return emit(draw, t, "eth.unknown-type", [Ether(src=t.wire_mac, dst=mac, type=unknown) / Raw(body)], {"eth.unknown-type"})


ARP_BREAKS = ("htype", "ptype", "hwlen", "plen", "op", "short")


def _cycled(data: bytes, n: int) -> bytes:
    """`n` bytes made of `data` repeated: an address field of the wrong size that still holds lab bytes."""
    return (data * (n // max(1, len(data)) + 1))[:n]


@st.composite
def arp(draw: st.DrawFn, target: Target) -> Fuzzed:
    """ARP with wrong hardware/protocol types and sizes, unknown opcodes and truncated bodies, next to
    the odd-but-legal: gratuitous ARP, probes from 0.0.0.0, a neighbour claiming the stack's address.

    Why it matters: the address lengths decide where every later field is, so a stack that believes
    hwlen=255 reads 500 bytes; libslirp and passt answer ARP themselves, from fixed-size structs.
    """
    t = target
    assert t.stack4 is not None and t.peer4 is not None
    breaks = set(draw(st.sets(st.sampled_from(ARP_BREAKS), max_size=3)))
    other = draw(sources4(t))
    psrc = draw(st.sampled_from((other, t.peer4, "0.0.0.0", t.stack4)))
    pdst = draw(st.sampled_from((t.stack4, psrc, *t.also4)))
    op = draw(st.sampled_from((0, 3, 4, 8, 9, 10, 255, 0xFFFF)) if "op" in breaks else st.sampled_from((1, 2)))
    htype = draw(st.sampled_from((0, 6, 32, 0xFFFF))) if "htype" in breaks else 1
    ptype = draw(st.sampled_from((0, 0x86DD, 0x0806, 0xFFFF))) if "ptype" in breaks else 0x0800
    hwlen = draw(st.sampled_from((0, 1, 5, 7, 8, 16, 255))) if "hwlen" in breaks else 6
    plen = draw(st.sampled_from((0, 1, 3, 5, 16, 255))) if "plen" in breaks else 4
    if 8 + 2 * (hwlen + plen) > t.mtu:
        plen = 16
    if plen == 16 and t.stack6 is None:
        plen = 5  # 16 bytes read as IPv6, and there is no lab IPv6 address to put there
    mac_typed = htype == 1 and hwlen == 6
    ip_typed = (ptype, plen) in ((0x0800, 4), (0x86DD, 16))

    def hw_address(mac: str) -> str | bytes:
        return mac if mac_typed else _cycled(bytes.fromhex(mac.replace(":", "")), hwlen)

    def proto_address(addr: str) -> str | bytes:
        if plen == 16 and t.stack6 is not None:  # an IPv6 address where ARP expects IPv4: still a lab one
            v6 = t.stack6 if addr == t.stack4 else (t.peer6 or t.stack6)
            return v6 if ip_typed else ip_address(v6).packed
        return addr if ip_typed and plen == 4 else _cycled(ip_address(addr).packed, plen)

    body = ARP(
        hwtype=htype,
        ptype=ptype,
        hwlen=hwlen,
        plen=plen,
        op=op,
        hwsrc=hw_address(t.wire_mac),
        psrc=proto_address(psrc),
        hwdst=hw_address(t.stack_mac if op == 2 else "00:00:00:00:00:00"),
        pdst=proto_address(pdst),
    )
    dst = BROADCAST_MAC if op != 2 and draw(st.booleans()) else t.stack_mac
    whole = bytes(Ether(src=t.wire_mac, dst=dst) / body)
    if "short" in breaks and len(whole) > 14 + 8:
        whole = whole[: 14 + draw(st.integers(8, len(whole) - 15))]
    else:
        breaks.discard("short")
    if breaks:
        kind = "arp." + sorted(breaks)[0]
    elif psrc in ("0.0.0.0", t.stack4) or psrc == pdst:
        kind = {"0.0.0.0": "arp.probe", t.stack4: "arp.conflict"}.get(psrc, "arp.gratuitous")
    else:
        kind = "arp.request" if op == 1 else "arp.reply"
    return emit(draw, t, kind, [whole], {f"arp.{b}" for b in breaks}, sealed=False)
