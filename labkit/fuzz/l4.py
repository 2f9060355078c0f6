"""Transport and control fuzzing: ICMP, ICMPv6 and neighbor discovery, TCP (stray or into a live
connection), UDP.

This is where user-space stacks keep state a malformed packet can corrupt: netstack's TCP endpoints
and NDP cache, libslirp's socket table and its ICMP error forwarding, passt's flow table.
"""

from __future__ import annotations

from ipaddress import IPv6Address
from typing import Any

from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptUnknown,
    ICMPv6Unknown,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from labkit.fuzz.l3 import PORTS
from labkit.fuzz.target import (
    ALL_NODES6,
    Fuzzed,
    Live,
    Target,
    destinations4,
    destinations6,
    emit,
    mac_for,
    payloads,
    sources4,
    sources6,
)

# Type -> codes the RFCs define (792, 950, 1256, 1812, 8335): anything else is "icmp.type-code".
ICMP4_CODES: dict[int, range | tuple[int, ...]] = {
    0: (0,), 3: range(16), 4: (0,), 5: range(4), 8: (0,), 9: (0, 16), 10: (0,), 11: range(2), 12: range(3),
    13: (0,), 14: (0,), 15: (0,), 16: (0,), 17: (0,), 18: (0,), 30: (0,), 42: (0,), 43: range(5),
}  # fmt: skip
# RFC 4443, 4861, 2710, 3810, 2894, 4620, 3122, 6275, 4286, 6550, 8335, 8754, 8883.
ICMP6_CODES: dict[int, range | tuple[int, ...]] = {
    1: range(9), 2: (0,), 3: range(2), 4: range(11), 128: (0,), 129: (0,), 130: (0,), 131: (0,), 132: (0,),
    133: (0,), 134: (0,), 135: (0,), 136: (0,), 137: (0,), 138: (0, 1, 255), 139: range(3), 140: range(3),
    141: (0,), 142: (0,), 143: (0,), 144: (0,), 145: (0,), 146: (0,), 147: (0,), 148: (0,), 149: (0,),
    151: (0,), 152: (0,), 153: (0,), 155: (0, 1, 2, 3, 0x80, 0x81, 0x82, 0x83, 0x8A), 160: (0,), 161: range(5),
}  # fmt: skip
ICMP4_ERRORS = (3, 4, 5, 11, 12)
ICMP6_ERRORS = (1, 2, 3, 4)
NDP_TYPES = (133, 134, 135, 136, 137)


def _defined(table: dict[int, range | tuple[int, ...]], icmp_type: int, code: int) -> bool:
    return code in table.get(icmp_type, ())


@st.composite
def _quote4(draw: st.DrawFn, t: Target, short: bool) -> bytes:
    """The start of a datagram the stack could have sent, as a router quotes it; `short` cuts it below 28 bytes."""
    assert t.stack4 is not None
    sender = draw(st.sampled_from((t.stack4, *t.also4)))
    upper = draw(st.sampled_from((UDP, TCP, ICMP)))
    l4 = upper(id=1) if upper is ICMP else upper(sport=draw(st.sampled_from(PORTS)), dport=draw(st.sampled_from(PORTS)))
    whole = bytes(
        IP(src=sender, dst=draw(sources4(t)), id=draw(st.integers(0, 0xFFFF))) / l4 / Raw(bytes(draw(st.integers(0, 64))))
    )
    return whole[: draw(st.integers(0, 27))] if short else whole[: draw(st.sampled_from((28, 48, len(whole))))]


@st.composite
def _quote6(draw: st.DrawFn, t: Target, short: bool) -> bytes:
    assert t.stack6 is not None
    sender = draw(st.sampled_from((t.stack6, *t.also6)))
    upper = draw(st.sampled_from((UDP, TCP, ICMPv6EchoRequest)))
    l4 = upper() if upper is ICMPv6EchoRequest else upper(sport=draw(st.sampled_from(PORTS)), dport=draw(st.sampled_from(PORTS)))
    whole = bytes(IPv6(src=sender, dst=draw(sources6(t))) / l4 / Raw(bytes(draw(st.integers(0, 64)))))
    return whole[: draw(st.integers(0, 47))] if short else whole[: draw(st.sampled_from((48, 64, len(whole))))]


@st.composite
def icmp(draw: st.DrawFn, target: Target) -> Fuzzed:
    """ICMP: every type 0..255 with every code 0..255, errors quoting the stack's own datagrams (in
    full, or cut short), fragmentation-needed with next-hop MTUs down to 0, echo to broadcast.

    Why it matters: errors are matched against sockets by the quoted header, and a next-hop MTU
    goes straight into the path-MTU and MSS arithmetic.
    """
    t = target
    what = draw(st.sampled_from(("echo", "type-code", "error")))
    src = draw(sources4(t))
    if what == "echo":
        dst = draw(destinations4(t))
        ident = draw(st.integers(0, 0xFFFF))
        msg = ICMP(type=8, id=ident, seq=draw(st.integers(0, 0xFFFF))) / Raw(draw(payloads(t.mtu - 28)))
        return emit(draw, t, "icmp.echo", [Ether(src=t.wire_mac, dst=mac_for(t, dst)) / IP(src=src, dst=dst, id=ident) / msg])
    if what == "type-code":
        icmp_type, code = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    else:
        icmp_type = draw(st.sampled_from(ICMP4_ERRORS))
        code = draw(st.sampled_from(ICMP4_CODES[icmp_type]))
    short = draw(st.booleans())
    if icmp_type in ICMP4_ERRORS and (what == "error" or draw(st.booleans())):
        body = draw(_quote4(t, short))
    else:
        body = bytes(draw(st.integers(0, 64)))  # zeros: the type's own fields, all 0
    fields: dict[str, Any] = {}
    mtu = 68
    if icmp_type == 5:
        fields["gw"] = draw(sources4(t))
    if icmp_type == 3 and code == 4:
        fields["nexthopmtu"] = mtu = draw(st.sampled_from((0, 1, 67, 68, 576, 1280, 1500, 0xFFFF)))
    if icmp_type == 12:
        fields["ptr"] = draw(st.integers(0, 255))
    if icmp_type in (0, 8, 13, 14, 15, 16, 17, 18):
        fields.update(id=draw(st.integers(0, 0xFFFF)), seq=draw(st.integers(0, 0xFFFF)))
    flaws = set()
    if not _defined(ICMP4_CODES, icmp_type, code):
        flaws.add("icmp.type-code")
    if icmp_type in ICMP4_ERRORS and len(body) < 28:
        flaws.add("icmp.quote-short")
    if mtu < 68:
        flaws.add("icmp.mtu")
    dst = draw(destinations4(t, unicast=icmp_type in ICMP4_ERRORS))
    msg = ICMP(type=icmp_type, code=code, **fields) / Raw(body)
    kind = f"icmp.{what}" if what == "type-code" else f"icmp.error.{icmp_type}"
    return emit(draw, t, kind, [Ether(src=t.wire_mac, dst=mac_for(t, dst)) / IP(src=src, dst=dst) / msg], flaws)


@st.composite
def icmpv6(draw: st.DrawFn, target: Target) -> Fuzzed:
    """ICMPv6: every type and code (NDP and MLD types included, with all-zero bodies), errors quoting
    the stack's datagrams in full or cut short, packet-too-big below the 1280 minimum, echo to all-nodes.

    Why it matters: ICMPv6 is IPv6's control plane; one switch over the type dispatches into NDP,
    MLD and error handling, each with its own length assumptions.
    """
    t = target
    what = draw(st.sampled_from(("echo", "type-code", "error")))
    src = draw(sources6(t))
    if what == "echo":
        dst = draw(destinations6(t))
        echo = ICMPv6EchoRequest(id=draw(st.integers(0, 0xFFFF)), seq=draw(st.integers(0, 0xFFFF)), data=draw(payloads(t.mtu - 48)))
        return emit(draw, t, "icmpv6.echo", [Ether(src=t.wire_mac, dst=mac_for(t, dst)) / IPv6(src=src, dst=dst) / echo])
    if what == "type-code":
        icmp_type, code = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    else:
        icmp_type = draw(st.sampled_from(ICMP6_ERRORS))
        code = draw(st.sampled_from(ICMP6_CODES[icmp_type]))
    rest = 0
    if icmp_type == 2:
        rest = draw(st.sampled_from((0, 1, 68, 1279, 1280, 1500, 0xFFFFFFFF)))
    elif icmp_type in (4, 128, 129):
        rest = draw(st.integers(0, 0xFFFFFFFF))
    if icmp_type in ICMP6_ERRORS and (what == "error" or draw(st.booleans())):
        quote = draw(_quote6(t, draw(st.booleans())))
    else:
        quote = bytes(draw(st.integers(0, 64)))
    flaws = set()
    if not _defined(ICMP6_CODES, icmp_type, code):
        flaws.add("icmpv6.type-code")
    if icmp_type in ICMP6_ERRORS and len(quote) < 48:
        flaws.add("icmpv6.quote-short")
    if icmp_type == 2 and rest < 1280:
        flaws.add("icmpv6.mtu")
    unicast = icmp_type in ICMP6_ERRORS or icmp_type in NDP_TYPES
    dst = draw(destinations6(t, unicast=unicast))
    msg = ICMPv6Unknown(type=icmp_type, code=code, msgbody=rest.to_bytes(4, "big") + quote)
    kind = f"icmpv6.{what}" if what == "type-code" else f"icmpv6.error.{icmp_type}"
    hlim = 255 if icmp_type in NDP_TYPES else 64
    return emit(draw, t, kind, [Ether(src=t.wire_mac, dst=mac_for(t, dst)) / IPv6(src=src, dst=dst, hlim=hlim) / msg], flaws)


UNKNOWN_NDP_OPTIONS = (253, 254)  # RFC 4727 experimental
NDP_OPTION_LENGTHS = {1: 1, 2: 1, 3: 4, 5: 1}  # RFC 4861 4.6: the only right lengths on Ethernet


@st.composite
def _ndp_options(draw: st.DrawFn, t: Target, bad: bool) -> list[Packet]:
    """NDP options; with `bad`, one of length 0, the wrong length for its type, or (last) past the end."""
    prefix = str(IPv6Address(int(IPv6Address("2001:db8::")) | draw(st.integers(0, 0xFFFF)) << 80))
    makers = {
        "sll": lambda: ICMPv6NDOptSrcLLAddr(lladdr=t.wire_mac),
        "tll": lambda: ICMPv6NDOptDstLLAddr(lladdr=t.wire_mac),
        "prefix": lambda: ICMPv6NDOptPrefixInfo(prefix=prefix, prefixlen=draw(st.sampled_from((0, 48, 64, 127, 128, 255)))),
        "mtu": lambda: ICMPv6NDOptMTU(mtu=draw(st.sampled_from((0, 1279, 1280, 1500, 65535, 0xFFFFFFFF)))),
        "unknown": lambda: ICMPv6NDOptUnknown(type=draw(st.sampled_from(UNKNOWN_NDP_OPTIONS)), data=bytes(6)),
    }
    opts = [makers[name]() for name in draw(st.lists(st.sampled_from(sorted(makers)), max_size=3))]
    if bad:
        how = draw(st.sampled_from(("zero", "wrong", "past-end")))
        if how == "past-end":
            opts.append(
                ICMPv6NDOptUnknown(
                    type=draw(st.sampled_from(UNKNOWN_NDP_OPTIONS)), len=draw(st.sampled_from((2, 255))), data=bytes(6)
                )
            )
        else:
            name = draw(st.sampled_from(("sll", "tll", "prefix", "mtu")))
            opt = makers[name]()
            opt.len = (
                0 if how == "zero" else draw(st.sampled_from((2, 3, 5, 255)).filter(lambda n: n != NDP_OPTION_LENGTHS[opt.type]))
            )
            opts.insert(draw(st.integers(0, len(opts))), opt)
    return opts


@st.composite
def ndp(draw: st.DrawFn, target: Target) -> Fuzzed:
    """Neighbor discovery: NS (to the solicited-node group, unicast, from :: for DAD), NA, RS, RA and
    redirects with options of length 0, past the end or wrong for their type, hop limits other than
    255, multicast targets.

    Why it matters: every option walk is length-driven (length 0 loops forever); NDP fills caches
    and prefix lists, so bad input is remembered, not just dropped.
    """
    t = target
    assert t.stack6 is not None and t.solicited6 is not None
    msg_kind = draw(st.sampled_from(("ns", "na", "rs", "ra", "redirect")))
    bad_options = draw(st.booleans())
    flaws = {"ndp.option-length"} if bad_options else set()
    hlim = draw(st.sampled_from((255, 255, 255, 255, 254, 64, 0)))
    if hlim != 255:
        flaws.add("ndp.hop-limit")
    src = draw(sources6(t))
    multicast_target = draw(st.integers(0, 4)) == 1
    target_addr = draw(st.sampled_from((ALL_NODES6, t.solicited6))) if multicast_target else None
    msg: Packet
    if msg_kind == "ns":
        dst = draw(st.sampled_from((t.solicited6, t.stack6)))
        src = draw(st.sampled_from((src, "::")))
        msg = ICMPv6ND_NS(tgt=target_addr or t.stack6)
    elif msg_kind == "na":
        dst = draw(st.sampled_from((t.stack6, ALL_NODES6)))
        msg = ICMPv6ND_NA(tgt=target_addr or src, R=draw(st.booleans()), S=draw(st.booleans()), O=draw(st.booleans()))
    elif msg_kind == "rs":
        dst, target_addr = "ff02::2", None
        msg = ICMPv6ND_RS()
    elif msg_kind == "ra":
        dst, target_addr = draw(st.sampled_from((ALL_NODES6, t.stack6))), None
        msg = ICMPv6ND_RA(
            chlim=draw(st.sampled_from((0, 1, 64, 255))),
            M=draw(st.booleans()),
            O=draw(st.booleans()),
            routerlifetime=draw(st.sampled_from((0, 1, 1800, 0xFFFF))),
            reachabletime=draw(st.sampled_from((0, 1, 30000, 0xFFFFFFFF))),
            retranstimer=draw(st.sampled_from((0, 1, 1000, 0xFFFFFFFF))),
        )
    else:
        dst = t.stack6
        msg = ICMPv6ND_Redirect(tgt=target_addr or draw(sources6(t)), dst=draw(st.sampled_from((t.stack6, *t.also6, src))))
    if target_addr is not None:
        flaws.add("ndp.target")
    options = draw(_ndp_options(t, bad_options))
    frame = Ether(src=t.wire_mac, dst=mac_for(t, dst)) / IPv6(src=src, dst=dst, hlim=hlim) / msg
    for opt in options:
        frame = frame / opt
    kind = f"ndp.{msg_kind}" + (".options" if bad_options else "")
    return emit(draw, t, kind, [frame], flaws)


def odd_tcp_flags(flags: int, reserved: int = 0) -> bool:
    """Flags no valid segment carries: SYN with FIN or RST, FIN with RST, none of SYN/RST/ACK, NS or reserved bits."""
    fin, syn, rst, ack = flags & 1, flags & 2, flags & 4, flags & 0x10
    return bool(reserved or flags & 0x100 or (syn and (fin or rst)) or (fin and rst) or not (syn or rst or ack))


TCP_OPTION_LENGTHS = {2: 4, 3: 3, 4: 2, 8: 10}  # MSS, window scale, SACK-permitted, timestamps
SEQ_EDGES = (0, 1, -1, 0xFFFF, 0x10000, -0x10000, 1 << 30, (1 << 31) - 1, 1 << 31, -(1 << 31) + 1)


def _tcp_options(draw: st.DrawFn) -> list[tuple[str | int, object]]:
    """Honest options, NOP-padded to a multiple of 4 (scapy would pad with EOL, which ends the walk)."""
    chosen = draw(st.lists(st.sampled_from(("mss", "ws", "sackok", "ts", "sack", "nop", "md5", "unknown")), max_size=4))
    opts: list[tuple[str | int, object]] = []
    size = 0
    for name in chosen:
        if name == "mss":
            opt: tuple[str | int, object] = ("MSS", draw(st.sampled_from((0, 1, 536, 1460, 0xFFFF))))
        elif name == "ws":
            opt = ("WScale", draw(st.sampled_from((0, 7, 14, 15, 255))))
        elif name == "sackok":
            opt = ("SAckOK", b"")
        elif name == "ts":
            opt = ("Timestamp", (draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))))
        elif name == "sack":
            left = draw(st.integers(0, 2**32 - 1))
            opt = ("SAck", (left, (left + draw(st.integers(0, 0xFFFF))) % 2**32))
        elif name == "nop":
            opt = ("NOP", None)
        elif name == "md5":
            opt = (19, bytes(16))
        else:
            opt = (draw(st.sampled_from((253, 254))), bytes(draw(st.integers(0, 4))))
        fixed = {"MSS": 4, "WScale": 3, "SAckOK": 2, "Timestamp": 10, "SAck": 10, "NOP": 1}.get(str(opt[0]))
        length = fixed if fixed is not None else 2 + len(opt[1])  # type: ignore[arg-type]
        if size + length > 40:
            break
        opts.append(opt)
        size += length
    return opts + [("NOP", None)] * (-size % 4)


@st.composite
def _segment(draw: st.DrawFn, t: Target, src: str, dst: str, sport: int, dport: int, seq: int, ack: int) -> tuple[Packet, set[str]]:
    """A TCP segment with drawn flags, options (one maybe of a bad length), data offset, urgent pointer."""
    flags = draw(st.one_of(st.sampled_from((0x10, 0x18, 0x11, 0x14, 0x04, 0x02, 0x12, 0x30, 0xC2, 0x52)), st.integers(0, 0x1FF)))
    reserved = draw(st.sampled_from((0, 0, 0, 1, 7)))
    opts = _tcp_options(draw)
    head = bytes(TCP(options=opts))[20:]
    flaws: set[str] = set()
    bad = b""
    if len(head) <= 32 and draw(st.booleans()):
        how = draw(st.sampled_from(("zero", "one", "past-end", "wrong")))
        if how == "wrong":
            kind = draw(st.sampled_from(sorted(TCP_OPTION_LENGTHS)))
            length = draw(st.sampled_from((2, 3, 4, 6)).filter(lambda n: n != TCP_OPTION_LENGTHS[kind]))
            bad = bytes([kind, length]) + bytes(length - 2)
        else:
            kind = draw(st.sampled_from((2, 8, 253)))
            bad = bytes([kind, {"zero": 0, "one": 1}.get(how, 40)])
        bad += b"\x01" * (-len(bad) % 4)
        flaws.add("tcp.option-length")
    room = t.mtu - (60 if ":" in dst else 40) - len(head) - len(bad)
    data = draw(payloads(room))
    urg = draw(st.sampled_from((0, 1, len(data), len(data) + 1, 0xFFFF)))
    if flags & 0x20 and urg > len(data):
        flaws.add("tcp.urgent")
    if odd_tcp_flags(flags, reserved):
        flaws.add("tcp.flags")
    dataofs = 5 + (len(head) + len(bad)) // 4
    seg_len = 20 + len(head) + len(bad) + len(data)
    if draw(st.integers(0, 5)) == 3:
        past = [v for v in range(dataofs + 1, 16) if v * 4 > seg_len][:2]
        dataofs = draw(st.sampled_from([0, 1, 4, *past]))
        flaws.add("tcp.data-offset")
        flaws -= {"tcp.option-length", "tcp.urgent"}  # the receiver no longer sees options and data where they are
    seg = TCP(
        sport=sport, dport=dport, seq=seq % 2**32, ack=ack % 2**32, flags=flags, reserved=reserved, dataofs=dataofs, urgptr=urg
    )
    seg.window = draw(st.sampled_from((0, 1, 512, 0xFFFF)))
    return seg / Raw(head + bad + data), flaws


def _ip(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


@st.composite
def tcp(draw: st.DrawFn, target: Target) -> Fuzzed:
    """Stray TCP segments (no connection): every flag combination including NS/CWR/ECE, options of
    length 0, 1, past the header or wrong for their kind, data offsets below 5 or past the segment,
    urgent pointers past the data, ports 0 and 65535.

    Why it matters: a listener's SYN path and the RST-for-nothing path run on every one of these,
    before any state says the peer is trusted.
    """
    t = target
    v6 = draw(st.sampled_from([f for f, ok in ((False, t.has4), (True, t.has6)) if ok]))
    src = draw(sources6(t) if v6 else sources4(t))
    dst = draw(destinations6(t, unicast=True) if v6 else destinations4(t, unicast=True))
    ports = st.one_of(st.sampled_from(PORTS), st.integers(0, 0xFFFF))
    seg, flaws = draw(
        _segment(t, src, dst, draw(ports), draw(ports), draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)))
    )
    kind = "tcp." + (sorted(flaws)[0].removeprefix("tcp.") if flaws else "segment")
    return emit(draw, t, kind, [Ether(src=t.wire_mac, dst=t.stack_mac) / _ip(src, dst) / seg], flaws)


@st.composite
def live_segments(draw: st.DrawFn, target: Target, live: Live) -> Fuzzed:
    """Segments into that connection: bad option lengths, every flag combination, data offsets past the end,
    sequence numbers around the window edges, urgent pointers past the data.

    Why it matters: only segments in the window reach the receive queue, reassembly and SACK code.
    RST, SYN or FIN in the window may legitimately end the connection.
    """
    t = target
    edge = st.one_of(st.sampled_from(SEQ_EDGES), st.integers(-70000, 70000))
    dseq, dack = draw(edge), draw(edge)
    seg, flaws = draw(_segment(t, live.src, live.dst, live.sport, live.dport, live.seq + dseq, live.ack + dack))
    if dseq % 2**32:
        flaws.add("tcp.seq")
    if int(seg.flags) & 0x10 and dack % 2**32:
        flaws.add("tcp.ack")
    kind = "tcp.live." + (sorted(flaws)[0].removeprefix("tcp.") if flaws else "segment")
    return emit(draw, t, kind, [Ether(src=t.wire_mac, dst=t.stack_mac) / _ip(live.src, live.dst) / seg], flaws)


@st.composite
def udp(draw: st.DrawFn, target: Target) -> Fuzzed:
    """UDP whose length field lies (0, under 8, one off, past the data) to well-known and odd ports,
    unicast, broadcast and all-nodes.

    Why it matters: the UDP length is a second length inside the IP one; libslirp and passt forward
    UDP to host sockets and copy by it.
    """
    t = target
    v6 = draw(st.sampled_from([f for f, ok in ((False, t.has4), (True, t.has6)) if ok]))
    src = draw(sources6(t) if v6 else sources4(t))
    dst = draw(destinations6(t) if v6 else destinations4(t))
    ports = st.one_of(st.sampled_from(PORTS), st.integers(0, 0xFFFF))
    data = draw(payloads(t.mtu - (48 if v6 else 28)))
    dgram = UDP(sport=draw(ports), dport=draw(ports))
    flaws = set()
    actual = 8 + len(data)
    if draw(st.booleans()):
        dgram.len = draw(st.sampled_from((0, 1, 7, actual - 1, actual + 1, actual + 8, 0xFFFF)).filter(lambda n: n != actual))
        flaws.add("udp.length")
    kind = "udp.length" if flaws else "udp.datagram"
    return emit(draw, t, kind, [Ether(src=t.wire_mac, dst=mac_for(t, dst)) / _ip(src, dst) / dgram / Raw(data)], flaws)
