"""Network-layer fuzzing: IPv4 and IPv6 headers, their options, extension headers and fragments.

User-space stacks parse these without a kernel in front: gVisor's netstack, libslirp's ip_input and
ip6_input, passt's own IPv4/IPv6 handling. Header lengths, option walks and reassembly are where
their buffer arithmetic lives.
"""

from __future__ import annotations

from hypothesis import strategies as st
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    IPOption,
    IPOption_EOL,
    IPOption_LSRR,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_SSRR,
    IPOption_Timestamp,
)
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
    Jumbo,
    Pad1,
    PadN,
    RouterAlert,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from labkit.fuzz.target import Fuzzed, Target, destinations4, destinations6, emit, mac_for, payloads, sources4, sources6

# The most one fragment carries: a datagram of three of them stays within IP's 65535 bytes at
# any MTU (65520 on a tap stack), and a train stays a train.
MAX_FRAGMENT = 8192

PORTS = (0, 7, 9, 53, 67, 68, 69, 80, 123, 443, 546, 547, 1900, 5353, 8080, 65535)
# IP protocol numbers nobody implements (unassigned, experimental, reserved): the stack must say so.
UNKNOWN_PROTOCOLS = (0, 143, 200, 253, 254, 255)


@st.composite
def _upper(draw: st.DrawFn, family: int, room: int) -> Packet:
    """A small, well-formed transport packet (at most `room` bytes) to carry under a broken IP header."""
    proto = draw(st.sampled_from(("udp", "icmp", "tcp", "unknown")))
    ports = st.one_of(st.sampled_from(PORTS), st.integers(0, 0xFFFF))
    body = Raw(draw(payloads(room - 20)))
    if proto == "udp":
        return UDP(sport=draw(ports), dport=draw(ports)) / body
    if proto == "tcp":
        flags = draw(st.sampled_from(("S", "A", "PA", "R", "FA")))
        return TCP(sport=draw(ports), dport=draw(ports), flags=flags, seq=draw(st.integers(0, 0xFFFFFFFF))) / body
    ident = draw(st.integers(0, 0xFFFF))
    if proto == "icmp":
        return ICMP(id=ident, seq=1) / body if family == 4 else ICMPv6EchoRequest(id=ident, seq=1, data=body.load)
    return body  # the caller names an unknown protocol number


def _proto4(pkt: Packet) -> int:
    return {UDP: 17, TCP: 6, ICMP: 1}.get(type(pkt), 0)


def _routers(draw: st.DrawFn, t: Target, n: int) -> list[str]:
    return [draw(sources4(t)) for _ in range(n)]


@st.composite
def _options4(draw: st.DrawFn, t: Target, bad: bool) -> tuple[list[Packet], bool]:
    """IPv4 options, at most 40 bytes; with `bad`, the last one has a length or pointer a receiver must reject."""
    opts: list[Packet] = []
    for what in draw(st.lists(st.sampled_from(("nop", "rr", "lsrr", "ssrr", "ts", "ra", "unknown")), max_size=3)):
        if what == "nop":
            opts.append(IPOption_NOP())
        elif what in ("rr", "lsrr", "ssrr"):
            n = draw(st.integers(1, 3))
            cls = {"rr": IPOption_RR, "lsrr": IPOption_LSRR, "ssrr": IPOption_SSRR}[what]
            opts.append(cls(pointer=4 + 4 * draw(st.integers(0, n)), routers=_routers(draw, t, n)))
        elif what == "ts":
            flg = draw(st.sampled_from((0, 1, 3)))
            opts.append(
                IPOption_Timestamp(
                    flg=flg, pointer=5, internet_address=draw(sources4(t)), timestamp=draw(st.integers(0, 2**32 - 1))
                )
            )
        elif what == "ra":
            opts.append(IPOption_Router_Alert())
        else:
            number = draw(st.sampled_from((15, 16, 17, 26, 30, 31)))
            opts.append(IPOption(copy_flag=draw(st.booleans()), option=number, value=bytes(draw(st.integers(0, 6)))))
    while len(b"".join(bytes(o) for o in opts)) > (32 if bad else 39):
        opts.pop()
    if bad:
        used = len(b"".join(bytes(o) for o in opts))
        how = draw(st.sampled_from(("zero", "one", "past-end", "pointer")))
        if how == "pointer":
            opts.append(IPOption_RR(pointer=draw(st.integers(0, 3)), routers=_routers(draw, t, 1)))
        else:
            area = (used + 3 + 3) // 4 * 4  # this option is 3 bytes; scapy pads the area to 4
            length = {"zero": 0, "one": 1}.get(how, area - used + draw(st.integers(1, 8)))
            opts.append(IPOption(option=draw(st.sampled_from((15, 26))), length=length, value=b"\0"))
    elif draw(st.booleans()):
        opts.append(IPOption_EOL())
    return opts, bad


@st.composite
def ipv4(draw: st.DrawFn, target: Target) -> Fuzzed:
    """IPv4 headers that lie: IHL below 5 or past the data, total lengths longer or shorter than the
    bytes, options with lengths of 0, 1 or past the header and route pointers below 4; and honest
    headers with every option, the reserved flag, TTL 0, unknown protocols.

    Why it matters: IHL and total length are the two numbers every later offset is computed from;
    an option walk with length 0 never advances.
    """
    t = target
    breaks = draw(st.sets(st.sampled_from(("ihl", "total-length", "options")), max_size=2))
    opts, _ = draw(_options4(t, "options" in breaks)) if "options" in breaks or draw(st.booleans()) else ([], False)
    upper = draw(_upper(4, t.mtu - 60 - 20))
    proto = _proto4(upper) or draw(st.sampled_from(UNKNOWN_PROTOCOLS))
    dst = draw(destinations4(t, unicast=isinstance(upper, TCP)))
    ip = IP(
        src=draw(sources4(t)),
        dst=dst,
        id=draw(st.integers(0, 0xFFFF)),
        ttl=draw(st.sampled_from((0, 1, 64, 255))),
        tos=draw(st.integers(0, 255)),
        flags=draw(st.sampled_from((0, 2, 4))),  # none, DF, the reserved bit
        proto=proto,
        options=opts,
    )
    honest = ip / upper
    size, hl = len(bytes(honest)), len(bytes(ip))
    if "total-length" in breaks:
        ip.len = draw(st.sampled_from((0, 1, 19, hl - 1, size - 1, size + 1, size + 64, 0xFFFF)).filter(lambda n: n != size))
    if "ihl" in breaks:
        seen = min(size, size if ip.len is None else ip.len)
        ip.ihl = draw(st.sampled_from([0, 1, 4, *[v for v in range(hl // 4 + 1, 16) if v * 4 > seen][:2]]))
    flaws = {f"ipv4.{b}" for b in breaks}
    if "ihl" in breaks:
        flaws.discard("ipv4.options")  # the receiver's option area is no longer the one with the bad option
    kind = "ipv4." + (sorted(breaks)[0] if breaks else ("protocol" if proto in UNKNOWN_PROTOCOLS else "header"))
    return emit(draw, t, kind, [Ether(src=t.wire_mac, dst=mac_for(t, dst)) / ip / upper], flaws)


def _pieces(draw: st.DrawFn, size: int, chunk: int, start: int = 0) -> list[tuple[int, int]]:
    """An honest cut of bytes [start, size) into (offset, length) pieces of a drawn multiple of 8, 2 to 16 of them."""
    need = -(-(size - start) // 16)
    least = max(8, -(-need // 8) * 8)
    most = min(chunk, max(8, (size - start - 1) // 8 * 8))  # two pieces at least: one piece is no fragment
    step = draw(st.integers(min(least, most) // 8, most // 8)) * 8
    return [(o, min(step, size - o)) for o in range(start, size, step)]


def incomplete(pieces: list[tuple[int, int, bool]]) -> bool:
    """Can (offset, length, more fragments) pieces never reassemble: no last piece, or a hole before its end?"""
    ends = [o + n for o, n, more in pieces if not more]
    if not ends:
        return True
    covered = 0
    for o, n, _ in sorted(pieces):
        if o > covered:
            return True
        covered = max(covered, o + n)
    return covered < max(ends)


@st.composite
def _fragment_plan(draw: st.DrawFn, size: int, chunk: int, tcp: bool) -> tuple[str, list[tuple[int, int, bytes | None]], set[str]]:
    """(plan, [(offset, length, own fill or None for the datagram's bytes)], flaws without the family prefix)."""
    plan = draw(st.sampled_from(("ok", "overlap", "tiny", "incomplete")))
    flaws: set[str] = set()
    pieces: list[tuple[int, int, bytes | None]]
    if plan == "tiny":
        first = 8 if draw(st.booleans()) else 0
        pieces = [(0, first, None), *[(o, n, None) for o, n in _pieces(draw, size, chunk, start=max(first, 8) if first else 0)]]
        if first == 0 or tcp:
            flaws.add("frag-tiny")
    else:
        pieces = [(o, n, None) for o, n in _pieces(draw, size, chunk)]
    if plan == "overlap":
        at = draw(st.integers(0, (size - 1) // 8)) * 8
        length = draw(st.integers(1, min(chunk, size - at)))
        length = min(size - at, max(8, length // 8 * 8))  # all but a last fragment hold a multiple of 8
        pieces.insert(draw(st.integers(0, len(pieces))), (at, length, bytes([draw(st.integers(0, 255))]) * length))
        flaws.add("frag-overlap")
    if plan == "incomplete":
        if len(pieces) == 1:
            pieces = [(0, 8, None)]
        else:
            del pieces[draw(st.integers(0, len(pieces) - 1))]
    if plan == "ok" and draw(st.booleans()):
        pieces.reverse()
    if incomplete([(o, n, o + n < size) for o, n, _ in pieces]):
        flaws.add("frag-incomplete")
    return plan, pieces, flaws


@st.composite
def ipv4_fragments(draw: st.DrawFn, target: Target) -> Fuzzed:
    """Fragment trains: overlapping (teardrop), tiny (a TCP header split across fragments, empty
    fragments), incomplete (reassembly state that only a timer frees), and ping-of-death trains that
    reassemble past 65535 bytes.

    Why it matters: reassembly is a user-space stack's own allocator and list code, fed by
    offsets and lengths the sender chose.
    """
    t = target
    src, dst, ident = draw(sources4(t)), draw(destinations4(t, unicast=True)), draw(st.integers(0, 0xFFFF))
    chunk = min((t.mtu - 20) // 8 * 8, MAX_FRAGMENT)
    eth = Ether(src=t.wire_mac, dst=mac_for(t, dst))

    def fragment(proto: int, offset: int, data: bytes, more: bool) -> Packet:
        return eth / IP(src=src, dst=dst, id=ident, proto=proto, flags=1 if more else 0, frag=offset // 8) / Raw(data)

    if (
        draw(st.sampled_from(("datagram", "datagram", "datagram", "past-64k"))) == "past-64k"
    ):  # past 64 KiB: the last fragment starts at the highest offset there is
        last, tail = 65528, draw(st.integers(8, chunk))
        fill = bytes([draw(st.integers(0, 255))])
        head = bytes(ICMP(id=ident, seq=1))
        complete = draw(st.booleans())
        starts = range(0, last, chunk) if complete else range(0, 1)
        frames = [
            fragment(1, o, (head if o == 0 else b"") + fill * (min(chunk, last - o) - (8 if o == 0 else 0)), True) for o in starts
        ]
        frames.append(fragment(1, last, fill * tail, False))
        flaws = {"ipv4.frag-past-64k"} | (set() if complete else {"ipv4.frag-incomplete"})
        return emit(draw, t, "ipv4.fragments.past-64k", frames, flaws)
    upper = draw(_upper(4, 3 * chunk).filter(lambda p: _proto4(p) != 0))
    whole = bytes(IP(src=src, dst=dst, proto=_proto4(upper)) / upper)[20:]
    if len(whole) < 16:
        whole = bytes(IP(src=src, dst=dst, proto=_proto4(upper)) / upper / Raw(bytes(16 - len(whole))))[20:]
    plan, pieces, flaws = draw(_fragment_plan(len(whole), chunk, isinstance(upper, TCP)))
    frames = [
        fragment(_proto4(upper), o, (own if own is not None else whole[o : o + n]), o + n < len(whole)) for o, n, own in pieces
    ]
    return emit(draw, t, f"ipv4.fragments.{plan}", frames, {f"ipv4.{f}" for f in flaws})


@st.composite
def ipv6(draw: st.DrawFn, target: Target) -> Fuzzed:
    """IPv6 fixed headers: payload lengths longer, shorter or zero (a jumbogram without its option),
    hop limit 0, every traffic class and flow label, next headers nobody implements.

    Why it matters: the payload length is the only length IPv6 has; a stack that trusts it over
    the frame reads past the buffer, one that ignores it takes padding for data.
    """
    t = target
    upper = draw(_upper(6, t.mtu - 40))
    nh = {UDP: 17, TCP: 6, ICMPv6EchoRequest: 58}.get(type(upper)) or draw(st.sampled_from((59, *UNKNOWN_PROTOCOLS[1:])))
    dst = draw(destinations6(t, unicast=isinstance(upper, TCP)))
    ip = IPv6(
        src=draw(sources6(t)),
        dst=dst,
        nh=nh,
        hlim=draw(st.sampled_from((0, 1, 64, 255))),
        tc=draw(st.integers(0, 255)),
        fl=draw(st.integers(0, 0xFFFFF)),
    )
    flaws = set()
    actual = len(bytes(ip / upper)) - 40
    if draw(st.booleans()):
        ip.plen = draw(st.sampled_from((0, 1, actual - 1, actual + 1, actual + 8, 0xFFFF)).filter(lambda n: n != actual and n >= 0))
        flaws.add("ipv6.payload-length")
    kind = "ipv6.payload-length" if flaws else ("ipv6.next-header" if nh not in (6, 17, 58) else "ipv6.header")
    return emit(draw, t, kind, [Ether(src=t.wire_mac, dst=mac_for(t, dst)) / ip / upper], flaws)


UNKNOWN_OPTIONS6 = {"skip": 0x1E, "discard": 0x5E, "discard-icmp": 0x9E, "discard-icmp-unicast": 0xDE}  # RFC 4727 experimental


@st.composite
def _options6(draw: st.DrawFn, hop_by_hop: bool, bad: bool) -> list[Packet]:
    """Options for a hop-by-hop or destination options header; with `bad`, one a receiver must reject."""
    opts: list[Packet] = []
    for what in draw(st.lists(st.sampled_from(("pad1", "padn", "ra", "skip")), max_size=3)):
        if what == "pad1":
            opts.append(Pad1())
        elif what == "padn":
            opts.append(PadN(optdata=bytes(draw(st.integers(0, 5)))))
        elif what == "ra" and hop_by_hop:
            opts.append(RouterAlert(value=0))
        else:
            opts.append(HBHOptUnknown(otype=UNKNOWN_OPTIONS6["skip"], optdata=bytes(draw(st.integers(0, 6)))))
    if bad:
        how = draw(st.sampled_from(("discard", "jumbo", "ra-length", "past-end")))
        if how == "discard":
            otype = UNKNOWN_OPTIONS6[draw(st.sampled_from(("discard", "discard-icmp", "discard-icmp-unicast")))]
            opts.insert(draw(st.integers(0, len(opts))), HBHOptUnknown(otype=otype, optdata=bytes(draw(st.integers(0, 4)))))
        elif how == "jumbo":  # a jumbo payload option in a packet with a payload length: RFC 2675 says drop
            opts.append(Jumbo(optlen=draw(st.sampled_from((2, 4))), jumboplen=draw(st.integers(0, 2**32 - 1))))
        elif how == "ra-length":
            opts.append(RouterAlert(optlen=draw(st.sampled_from((0, 1, 4))), value=0))
        else:
            opts.append(HBHOptUnknown(otype=UNKNOWN_OPTIONS6["skip"], optlen=255, optdata=bytes(draw(st.integers(0, 4)))))
    return opts


def _lab6(draw: st.DrawFn, t: Target, n: int) -> list[str]:
    return [draw(sources6(t)) for _ in range(n)]


@st.composite
def ipv6_extensions(draw: st.DrawFn, target: Target) -> Fuzzed:
    """Extension header chains: hop-by-hop where it may not be, headers repeated, routing headers of
    type 0 (deprecated), 2 and 4 with segments left, atomic fragments, headers whose length runs past
    the packet; option lists with unknown discard-action options, jumbo options, bad lengths.

    Why it matters: the chain is a linked list in the packet; each stack walks it with its own loop,
    limits and per-header length arithmetic.
    """
    t = target
    names = draw(st.lists(st.sampled_from(("hbh", "dst", "rh0", "rh2", "srh", "frag")), min_size=1, max_size=4))
    bad_options = draw(st.sets(st.sampled_from(("hbh", "dst"))))
    headers: list[Packet] = []
    flaws: set[str] = set()
    for name in names:
        if name in ("hbh", "dst"):
            bad = name in bad_options
            cls = IPv6ExtHdrHopByHop if name == "hbh" else IPv6ExtHdrDestOpt
            headers.append(cls(options=draw(_options6(name == "hbh", bad))))
            flaws |= {"ipv6.hbh-options" if name == "hbh" else "ipv6.dst-options"} if bad else set()
        elif name == "frag":
            headers.append(IPv6ExtHdrFragment(offset=0, m=0, id=draw(st.integers(0, 2**32 - 1))))
        elif name == "srh":
            hops = _lab6(draw, t, draw(st.integers(1, 3)))
            headers.append(
                IPv6ExtHdrSegmentRouting(addresses=hops, lastentry=len(hops) - 1, segleft=draw(st.integers(0, len(hops) + 1)))
            )
        else:
            hops = _lab6(draw, t, 1 if name == "rh2" else draw(st.integers(1, 3)))
            headers.append(
                IPv6ExtHdrRouting(type=2 if name == "rh2" else 0, addresses=hops, segleft=draw(st.integers(0, len(hops) + 1)))
            )
    numbers = [{"hbh": 0, "dst": 60, "frag": 44}.get(n, 43) for n in names]
    if 0 in numbers[1:]:
        flaws.add("ipv6.ext-chain")
    if any(numbers.count(n) > (2 if n == 60 else 1) for n in set(numbers)):
        flaws.add("ipv6.ext-chain")
    upper = draw(_upper(6, t.mtu - 40 - 240))
    if not isinstance(upper, (UDP, TCP, ICMPv6EchoRequest)):
        upper = Raw(upper.load)
    last = headers[-1]
    if t.mtu < 2088 and isinstance(last, (IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt)) and draw(st.integers(0, 3)) == 0:
        last.len = 255  # 2 KiB claimed: past the end of any packet this link carries
        flaws.add("ipv6.ext-chain")
    if isinstance(upper, Raw):
        last.nh = 59 if not upper.load else draw(st.sampled_from(UNKNOWN_PROTOCOLS[1:]))
    dst = draw(destinations6(t, unicast=isinstance(upper, TCP)))
    chain = headers[0]
    for h in headers[1:]:
        chain = chain / h
    ip = IPv6(src=draw(sources6(t)), dst=dst, hlim=draw(st.sampled_from((1, 64, 255))))
    kind = "ipv6.extensions." + (sorted(flaws)[0].removeprefix("ipv6.") if flaws else "chain")
    return emit(draw, t, kind, [Ether(src=t.wire_mac, dst=mac_for(t, dst)) / ip / chain / upper], flaws)


@st.composite
def ipv6_fragments(draw: st.DrawFn, target: Target) -> Fuzzed:
    """IPv6 fragment trains: overlapping (RFC 5722 says drop them all), tiny and incomplete ones,
    first fragments without the upper-layer header (RFC 7112), unaligned or past-64 KiB fragments
    and reserved bits set.

    Why it matters: the same reassembly code as IPv4 in most stacks, reached through the extension
    header walk, with 32-bit identifiers.
    """
    t = target
    src, dst, ident = draw(sources6(t)), draw(destinations6(t, unicast=True)), draw(st.integers(0, 2**32 - 1))
    chunk = min((t.mtu - 48) // 8 * 8, MAX_FRAGMENT)
    eth = Ether(src=t.wire_mac, dst=mac_for(t, dst))
    upper = draw(_upper(6, 3 * chunk).filter(lambda p: isinstance(p, (UDP, TCP, ICMPv6EchoRequest))))
    datagram = IPv6(src=src, dst=dst) / (IPv6ExtHdrDestOpt() / upper if draw(st.booleans()) else upper)
    whole, first_nh = bytes(datagram)[40:], bytes(datagram)[6]
    if len(whole) < 16:
        whole += bytes(16 - len(whole))
    odd = draw(st.sampled_from(("none", "reserved", "unaligned", "past-64k", "no-upper")))
    plan, pieces, flaws = draw(_fragment_plan(len(whole), chunk, isinstance(upper, TCP)))
    if odd == "no-upper":
        plan, pieces = "no-upper", [(0, 8, None), *[(o, n, None) for o, n in _pieces(draw, len(whole), chunk, start=8)]]
        flaws = {"frag"} if first_nh == 60 or isinstance(upper, TCP) else set()
    res1, res2 = (draw(st.integers(1, 255)), draw(st.integers(0, 3))) if odd == "reserved" else (0, 0)
    frames, sent = [], []
    for o, n, own in pieces:
        data = own if own is not None else whole[o : o + n]
        more = o + n < len(whole)
        if odd == "unaligned" and more and n > 1 and n % 8 == 0:
            data, odd = data[:-1], "done"  # one non-last fragment a byte short of a multiple of 8
            flaws.add("frag")
        sent.append((o, len(data), more))
        frag = IPv6ExtHdrFragment(nh=first_nh, offset=o // 8, m=int(more), id=ident, res1=res1, res2=res2)
        frames.append(eth / IPv6(src=src, dst=dst) / frag / Raw(data))
    if odd == "reserved":
        flaws.add("frag")
    if odd == "past-64k":
        tail = draw(st.integers(8, chunk))
        frames.append(eth / IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(nh=first_nh, offset=8191, m=0, id=ident) / Raw(bytes(tail)))
        flaws.add("frag")
        sent.append((65528, tail, False))
    flaws.discard("frag-incomplete")
    if incomplete(sent):
        flaws.add("frag-incomplete")
    flaws = {"frag" if f == "frag-tiny" else f for f in flaws}  # RFC 7112: a first fragment without the upper header
    return emit(draw, t, f"ipv6.fragments.{plan}", frames, {f"ipv6.{f}" for f in flaws})
