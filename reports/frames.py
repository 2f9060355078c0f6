"""A failing cell's captures, decoded for the page: one line per frame, the frames the Wire's
expectations matched or came closest to marked, the field that differed highlighted in the
frame's full decode.

A reader of a failure wants to see what was on the wire without downloading the pcap into
Wireshark, and, beside the Wire's capture, whether the stack's own side of the link saw the
frame (a frame lost before or after the stack). So each capture of the cell (`<stack>.pcap` from
the Wire, `<stack>.sandbox.pcap` from the stack's end of the veth, `<stack>.netstack.pcap` from
the stack itself, `<stack>.uplink*.pcap` from a tap stack's outside; any of them `.gz`) becomes a
view: plain dicts and lists the template reads.

Bounded, because a page holds hundreds of cells: at most `LIMIT` frames per capture (the marked
ones and their neighbours always, then the start of the conversation and its end), the full
decode only for those, a capture file read up to `READ_LIMIT` bytes. A file several cells name
(the evidence store keeps equal files once) is read and decoded once per process. What cannot be
read or decoded says so in the view; nothing here raises on bad evidence.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The layers the lab's checks speak; importing them registers their dissectors with scapy.
import scapy.layers.dhcp
import scapy.layers.dhcp6
import scapy.layers.dns
import scapy.layers.inet
import scapy.layers.inet6
import scapy.layers.l2  # noqa: F401
from scapy.config import conf
from scapy.packet import NoPayload, Packet, Raw

LIMIT = 60  # frames shown per capture
NEIGHBOURS = 2  # frames shown on each side of a marked one
TAIL = 3  # frames shown at the end of a long capture (how it ended)
READ_LIMIT = 64 << 20  # bytes of a (decompressed) capture read
FROM_STACK = "← stack"
TO_STACK = "→ stack"
UNSURE = "?"
# Host numbers the default address plan gives the stack (labkit.net.plan.AddressPlan).
DEFAULT_STACK_ADDRESSES = ("198.18.0.2", "2001:db8::2")
DEFAULT_PEER_ADDRESSES = ("198.18.0.1", "2001:db8::1")
DEFAULT_STACK_MAC = "02:00:00:00:00:02"
DEFAULT_PEER_MAC = "02:00:00:00:00:01"
_RAW_IP = (12, 101, 228, 229)  # pcap link types of captures that start at the IP header

_SOURCES = (  # name after `<stack>.`, without .gz -> source
    (re.compile(r"pcap"), "wire"),
    (re.compile(r"sandbox\.pcap"), "sandbox"),
    (re.compile(r"netstack\.pcap"), "netstack"),
    (re.compile(r"uplink[^.]*\.pcap"), "uplink"),
)
SOURCE_ORDER = ("wire", "sandbox", "netstack", "uplink")
LABELS = {
    "wire": "the Wire (the peer's end of the veth)",
    "sandbox": "the stack's end of the veth",
    "netstack": "the stack's own capture",
    "uplink": "the stack's uplink (its outside)",
}
_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_DIFF = re.compile(r"^(?P<layer>[A-Za-z_][\w]*)\.(?P<field>\w+): want ")
_ETHER_FIELD = re.compile(r"Ether\((?P<args>[^)]*)\)")
_SRC_ADDRESS = re.compile(r"\b(?:src|psrc)='(?P<addr>[0-9a-fA-F.:]+)'")
_MAC_ARG = re.compile(r"\b(?P<which>src|dst)='(?P<mac>[0-9a-fA-F:]{17})'")


def source_of(path: str | os.PathLike[str]) -> str | None:
    """Which capture a file is, by its name (`<stack>.<what>`), or None if it is no capture."""
    name = Path(path).name
    _, dot, rest = name.partition(".")
    if not dot:
        return None
    rest = rest.removesuffix(".gz")
    for pattern, source in _SOURCES:
        if pattern.fullmatch(rest):
            return source
    return None


def _lab_notes(paths: list[str]) -> dict[str, list[str]]:
    """What the lab said about a capture (`<stack>.sandbox.drops.txt`: frames its socket lost),
    per source, to show beside the capture's frames."""
    out: dict[str, list[str]] = {}
    for p in paths:
        _, dot, rest = Path(p).name.partition(".")
        stem = rest.split(".")[0]
        if not dot or not rest.endswith(".txt") or rest.count(".") < 2:
            continue
        source = "uplink" if stem.startswith("uplink") else stem
        if source not in ("sandbox", "netstack", "uplink"):
            continue
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                out.setdefault(source, []).append(f.read(2000).strip())
        except OSError:
            continue
    return out


# -- reading a capture -------------------------------------------------------------------------


@dataclass
class Capture:
    """A capture file read once: each frame's time and bytes, the link type, what went wrong."""

    linktype: int = 1
    times: list[float] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    note: str | None = None  # why the file is short of frames, or unreadable
    # index -> summary, full decode, and each layer's (class name, scapy name) to find a field by
    decoded: dict[int, tuple[str, str, list[tuple[str, str]]]] = field(default_factory=dict)


_captures: dict[tuple[str, int, int], Capture] = {}


def read_capture(path: str | os.PathLike[str]) -> Capture:
    """The capture at `path`, read once per process (keyed by its real path, size and mtime)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        return Capture(note=f"cannot read {Path(path).name}: {exc.strerror or exc}")
    key = (real, st.st_size, st.st_mtime_ns)
    cap = _captures.get(key)
    if cap is None:
        cap = _captures[key] = _read(real)
    return cap


def _read(path: str) -> Capture:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read(READ_LIMIT + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(READ_LIMIT + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        return Capture(note=f"cannot read {Path(path).name}: {exc}")
    cut = len(raw) > READ_LIMIT
    raw = raw[:READ_LIMIT]
    if raw[:4] in _PCAP_MAGIC:
        cap = _parse_pcap(raw)
    elif raw[:4] == _PCAPNG_MAGIC:
        cap = _parse_pcapng(raw)
    else:
        return Capture(note=f"{Path(path).name} is not a pcap file" if raw else f"{Path(path).name} is empty")
    if cut:
        cap.note = f"only the first {READ_LIMIT >> 20} MiB of the file are read; {len(cap.times)} frames in them"
    return cap


def _parse_pcap(raw: bytes) -> Capture:
    order, unit = _PCAP_MAGIC[raw[:4]]
    if len(raw) < 24:
        return Capture(note="the file ends inside the pcap header")
    cap = Capture(linktype=struct.unpack(order + "I", raw[20:24])[0] & 0xFFFF)
    header = struct.Struct(order + "IIII")
    at = 24
    while at + 16 <= len(raw):
        sec, frac, captured, _ = header.unpack_from(raw, at)
        end = at + 16 + captured
        if end > len(raw):
            break
        cap.times.append(sec + frac * unit)
        cap.data.append(raw[at + 16 : end])
        at = end
    if at != len(raw):
        cap.note = f"the file ends inside frame {len(cap.times)} ({len(raw) - at} bytes left over)"
    return cap


def _parse_pcapng(raw: bytes) -> Capture:
    """pcapng through scapy's reader (classic pcap, which the lab writes, is parsed above)."""
    from scapy.utils import RawPcapReader

    cap = Capture()
    try:
        with RawPcapReader(io.BytesIO(raw)) as reader:  # type: ignore[arg-type]  # it takes a file object too
            for data, meta in reader:
                cap.linktype = getattr(meta, "linktype", 1)
                resol = getattr(meta, "tsresol", 1000000) or 1000000
                cap.times.append(((getattr(meta, "tshigh", 0) << 32) + getattr(meta, "tslow", 0)) / resol)
                cap.data.append(bytes(data))
    except Exception as exc:  # scapy's reader raises assorted errors on a damaged file
        cap.note = f"pcapng read stopped after {len(cap.times)} frames: {exc}"
    return cap


def _decode(cap: Capture, index: int) -> tuple[str, str, list[tuple[str, str]]]:
    """A frame's scapy summary, its full decode, and its layers' class names (for locating a field)."""
    hit = cap.decoded.get(index)
    if hit is not None:
        return hit
    layer_type = conf.l2types.num2layer.get(cap.linktype, Raw)
    try:
        pkt = layer_type(cap.data[index])
        summary = pkt.summary()
    except Exception as exc:  # a frame scapy cannot dissect is shown, not raised
        hit = (f"(cannot decode: {exc})", _hexdump(cap.data[index]), [])
    else:
        try:
            # What show2() prints, for a packet dissected from bytes (it re-dissects the same bytes
            # to fill in computed fields, which a dissected packet has): a third faster.
            decode = _shorten_values(pkt.show(dump=True) or "")
        except Exception as exc:
            decode = f"(cannot decode: {exc})\n{_hexdump(cap.data[index])}"
        layers: list[tuple[str, str]] = []
        layer: Packet = pkt
        while not isinstance(layer, NoPayload):
            layers.append((type(layer).__name__, str(layer.name)))
            layer = layer.payload
        hit = (summary, decode, layers)
    cap.decoded[index] = hit
    return hit


def _hexdump(data: bytes) -> str:
    return "\n".join(f"{at:04x}  {data[at : at + 16].hex(' ')}" for at in range(0, len(data), 16))


# -- the stack's addresses ---------------------------------------------------------------------


def _src_mac(data: bytes) -> str | None:
    return data[6:12].hex(":") if len(data) >= 14 else None


def _l3_src(data: bytes, linktype: int) -> str | None:
    """The IPv4/IPv6/ARP sender address of an Ethernet or raw-IP frame, from its bytes."""
    import ipaddress

    if linktype == 1:
        if len(data) < 14:
            return None
        etype, data = data[12:14], data[14:]
        if etype == b"\x08\x06":
            return str(ipaddress.IPv4Address(data[14:18])) if len(data) >= 18 else None
        if etype not in (b"\x08\x00", b"\x86\xdd"):
            return None
    elif linktype not in _RAW_IP:
        return None
    if len(data) >= 20 and data[0] >> 4 == 4:
        return str(ipaddress.IPv4Address(data[12:16]))
    if len(data) >= 40 and data[0] >> 4 == 6:
        return str(ipaddress.IPv6Address(data[8:24]))
    return None


@dataclass(frozen=True)
class Sides:
    """Who is who on the Wire's link: the stack's MAC and the Wire's, and the IP addresses the
    stack sent from (for captures without an Ethernet header). None: the evidence does not say."""

    stack: str | None = None
    wire: str | None = None
    addresses: frozenset[str] = frozenset()

    def direction(self, data: bytes, linktype: int, macs: set[str]) -> str:
        """A frame's direction; `macs` are the addresses seen in its capture (a capture where
        neither side's MAC appears, a tap stack's uplink, cannot be told by MAC)."""
        if linktype == 1:
            src = _src_mac(data)
            if self.stack is not None and self.stack in macs:
                return FROM_STACK if src == self.stack else TO_STACK
            if self.wire is not None and src == self.wire:
                return TO_STACK
            return UNSURE
        if linktype in _RAW_IP and self.addresses:
            return FROM_STACK if _l3_src(data, linktype) in self.addresses else TO_STACK
        return UNSURE


def _winner(votes: Counter[str]) -> str | None:
    ranked = sorted(((n, mac) for mac, n in votes.items() if n > 0), reverse=True)
    if not ranked or (len(ranked) > 1 and ranked[0][0] == ranked[1][0]):
        return None
    return ranked[0][1]


def sides(cap: Capture, expects: list[dict[str, Any]]) -> Sides:
    """Which MAC in the Wire's capture is the stack's, which the Wire's.

    Votes: the frames an expectation matched or came closest to are the stack's (the Wire judges
    only incoming frames); a template's `Ether(src=...)` names the stack and `Ether(dst=...)`
    the Wire; a frame from an address a template expects from the stack is the stack's. Without
    any of that, the default address plan's MACs and addresses. A tie is unsure; with the Wire
    known and one other sender, that one is the stack ("the far side is the non-Wire MAC")."""
    if cap.linktype != 1:
        return Sides()
    stack: Counter[str] = Counter()
    wire: Counter[str] = Counter()
    from_stack: set[str] = set()
    for e in expects:
        if e.get("kind") in ("expect", "expect_none"):
            for key in ("frame", "closest_frame"):
                i = e.get(key)
                if isinstance(i, int) and 0 <= i < len(cap.data) and (mac := _src_mac(cap.data[i])):
                    stack[mac] += 4
        template = str(e.get("template") or "")
        for ether in _ETHER_FIELD.finditer(template):
            for m in _MAC_ARG.finditer(ether["args"]):
                (stack if m["which"] == "src" else wire)[m["mac"].lower()] += 3
        from_stack.update(m["addr"].lower() for m in _SRC_ADDRESS.finditer(_ETHER_FIELD.sub("", template)))
    defaults = not stack and not from_stack
    if defaults:
        from_stack = set(DEFAULT_STACK_ADDRESSES)
    senders: set[str] = set()
    for data in cap.data:
        mac = _src_mac(data)
        if mac is None:
            continue
        if not int(mac[:2], 16) & 1:
            senders.add(mac)
        src = _l3_src(data, 1)
        if src in from_stack:
            stack[mac] += 1
        elif defaults and src in DEFAULT_PEER_ADDRESSES:
            wire[mac] += 1
    if defaults:
        stack[DEFAULT_STACK_MAC] += DEFAULT_STACK_MAC in senders
        wire[DEFAULT_PEER_MAC] += DEFAULT_PEER_MAC in senders
    stack_mac = _winner(stack)
    wire_mac = _winner(wire)
    if wire_mac == stack_mac:
        wire_mac = None
    if stack_mac is None and wire_mac is not None and len(senders - {wire_mac}) == 1:
        stack_mac = next(iter(senders - {wire_mac}))
    addresses = frozenset(a for d in cap.data if _src_mac(d) == stack_mac and (a := _l3_src(d, 1)) is not None)
    return Sides(stack_mac, wire_mac, addresses if stack_mac else frozenset())


def _macs(cap: Capture) -> set[str]:
    """The Ethernet addresses a capture's frames come from or go to."""
    if cap.linktype != 1:
        return set()
    return {m for d in cap.data if len(d) >= 14 for m in (d[0:6].hex(":"), d[6:12].hex(":"))}


# -- marks and the differing field -------------------------------------------------------------


def _load_expects(path: str | None) -> tuple[list[dict[str, Any]], str | None]:
    if path is None:
        return [], None
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return [], f"cannot read {Path(path).name}: {exc}"
    if not isinstance(entries, list):
        return [], f"{Path(path).name} is not a list of expectations"
    return [e for e in entries if isinstance(e, dict)], None


def _guess_closest(cap: Capture, e: dict[str, Any], mac: str | None, after: int) -> int | None:
    """For expectations written before `closest_frame` existed: the first frame from the stack
    that the expectation could have seen (after `after`, the last frame an earlier one consumed,
    up to its timeout) whose field shows the value the difference names."""
    m = re.match(r"^(?P<layer>\w+)\.(?P<field>\w+): want .*, got (?P<got>.*)$", str(e.get("closest") or ""))
    started, timeout = e.get("started"), e.get("timeout")
    if m is None or not isinstance(started, (int, float)) or not isinstance(timeout, (int, float)):
        return None
    got = m["got"].strip("'\"")
    for i in range(after, len(cap.times)):
        if cap.times[i] > started + timeout + 0.5:
            break
        if mac is not None and _src_mac(cap.data[i]) != mac:
            continue
        try:
            layer = conf.l2types.num2layer.get(cap.linktype, Raw)(cap.data[i]).getlayer(m["layer"])
            if layer is None or m["field"] not in layer.fields:
                continue
            shown = layer.get_field(m["field"]).i2repr(layer, layer.getfieldval(m["field"]))
        except Exception:
            continue
        if str(shown).strip("'\"") == got:
            return i
    return None


def _differs_line(decode: list[str], layers: list[tuple[str, str]], diff: str | None) -> int | None:
    """The decode line of the field a difference names (`TCP.flags: want ...`), or None.

    The decode titles each layer by its scapy name (`###[ Ethernet ]###` for `Ether`), and the
    same name can come twice (IP in IP): the field is looked for under the title of the first
    layer of that class, counting the equal titles before it."""
    if diff and diff.startswith("payload: "):
        return next((n for n, line in enumerate(decode) if re.match(r"^\s*load\s*=", line)), None)
    m = _DIFF.match(diff or "")
    classes = [cls for cls, _ in layers]
    if m is None or m["layer"] not in classes:
        return None
    position = classes.index(m["layer"])
    names = [name for _, name in layers]
    name = names[position]
    nth = names[:position].count(name)
    header = f"###[ {name} ]###"
    starts = [n for n, line in enumerate(decode) if line.strip() == header]
    if nth >= len(starts):
        return None
    field_re = re.compile(rf"^\s*\\?{re.escape(m['field'])}\s*\\?\s*=")
    for n in range(starts[nth] + 1, len(decode)):
        if decode[n].lstrip().startswith("###["):
            break
        if field_re.match(decode[n]) or decode[n].strip() == f"\\{m['field']}\\":
            return n
    return None


VALUE_CHARS = 160  # of one field's value in a frame's full decode (a payload); the pcap has it all


def _shorten_values(decode: str) -> str:
    """The decode with long values (a 64 KB payload's `load`) cut: the page stays light, the
    fields a reader compares are short anyway."""
    out = []
    for line in decode.splitlines():
        if len(line) > VALUE_CHARS + 24:
            line = f"{line[: VALUE_CHARS + 24]}… ({len(line) - VALUE_CHARS - 24} more characters)"
        out.append(line)
    return "\n".join(out)


def _kept(total: int, marked: Iterable[int], limit: int) -> list[int]:
    """Which frames a view shows: marked ones with their neighbours, the last few, then the
    first ones up to `limit` (a marked frame is never dropped)."""
    if total <= limit:
        return list(range(total))
    keep: set[int] = set()
    for i in marked:
        keep.update(range(max(0, i - NEIGHBOURS), min(total, i + NEIGHBOURS + 1)))
    keep.update(range(max(0, total - TAIL), total))
    i = 0
    while len(keep) < limit and i < total:
        keep.add(i)
        i += 1
    return sorted(keep)


# -- views -------------------------------------------------------------------------------------


def _marks(expects: list[dict[str, Any]], cap: Capture, mac: str | None) -> dict[int, list[dict[str, Any]]]:
    """Per frame index, what the expectations say about it (the Wire's capture only)."""
    out: dict[int, list[dict[str, Any]]] = {}
    consumed = 0  # frames before this one an earlier expectation took (the Wire's cursor)
    for n, e in enumerate(expects):
        kind = e.get("kind")
        if kind not in ("expect", "expect_none"):
            continue
        frame, mark = e.get("frame"), "matched"
        guessed = False
        if not isinstance(frame, int):
            frame, mark = e.get("closest_frame"), "closest"
            if not isinstance(frame, int) and e.get("outcome") == "timeout" and e.get("closest"):
                frame, guessed = _guess_closest(cap, e, mac, consumed), True
        if not isinstance(frame, int) or not 0 <= frame < len(cap.data):
            continue
        if mark == "matched" and kind == "expect":
            consumed = max(consumed, frame + 1)
        out.setdefault(frame, []).append(
            {
                "mark": mark,
                "expect": n + 1,
                "kind": kind,
                "outcome": str(e.get("outcome", "")),
                "template": str(e.get("template", "")),
                "differs": e.get("closest") if mark == "closest" else None,
                "guessed": guessed,
            }
        )
    return out


def _expectation_lines(
    expects: list[dict[str, Any]], marks: dict[int, list[dict[str, Any]]], base: float | None
) -> list[dict[str, Any]]:
    """The expectations as the page lists them above the frames."""
    where = {(m["expect"], m["mark"]): i for i, ms in marks.items() for m in ms}
    lines = []
    for n, e in enumerate(expects, 1):
        started = e.get("started")
        lines.append(
            {
                "n": n,
                "kind": str(e.get("kind", "")),
                "template": str(e.get("template", "")),
                "timeout": e.get("timeout"),
                "started": _rel(started, base) if isinstance(started, (int, float)) and base is not None else "",
                "outcome": str(e.get("outcome", "")),
                "frame": where.get((n, "matched"), e.get("frame") if isinstance(e.get("frame"), int) else None),
                "closest_frame": where.get((n, "closest")),
                "differs": e.get("closest"),
            }
        )
    return lines


def _rel(ts: float, base: float) -> str:
    return f"{ts - base:+.6f}"


def twins(wire: Capture, other: Capture) -> dict[int, int]:
    """For a capture of the stack's side, which of its frames the Wire's capture holds too (its
    index -> the Wire's index): equal bytes, from the IP header on when it has no Ethernet header.
    A frame the Wire sent that the stack's side lacks was lost before the stack; one the stack's
    side shows leaving that the Wire lacks, after it."""
    strip = 14 if other.linktype in _RAW_IP and wire.linktype == 1 else 0
    if other.linktype != wire.linktype and not strip:
        return {}
    by_bytes: dict[bytes, list[int]] = {}
    for i, d in enumerate(wire.data):
        by_bytes.setdefault(d[strip:], []).append(i)
    out = {}
    for j, d in enumerate(other.data):
        if same := by_bytes.get(d):
            out[j] = same.pop(0)
    return out


def _view(
    source: str,
    path: str,
    expects: list[dict[str, Any]],
    base: float | None,
    who: Sides,
    limit: int,
    marks: dict[int, list[dict[str, Any]]],
    elsewhere: dict[int, list[tuple[str, bool]]],
    keep: Iterable[int] = (),
) -> dict[str, Any]:
    """One capture's view; `marks`: per frame, what the expectations say of it (the Wire's
    capture only); `elsewhere`: per frame, where the other captures have it (or not); `keep`:
    frames to show besides the marked ones (the twins of the Wire's marked frames)."""
    cap = read_capture(path)
    macs = _macs(cap)
    if base is None or (cap.times and abs(cap.times[0] - base) > 3600):
        base = cap.times[0] if cap.times else None  # another clock: the capture's own start
    shown = _kept(len(cap.data), [*marks, *keep], limit)
    frames = []
    previous = -1
    for i in shown:
        summary, decode_text, layers = _decode(cap, i)
        decode = decode_text.splitlines()
        highlight: set[int] = set()
        for m in marks.get(i, []):
            if m["mark"] == "closest" and (line := _differs_line(decode, layers, m["differs"])) is not None:
                highlight.add(line)
        frames.append(
            {
                "index": i,
                "gap": i - previous - 1,  # frames left out just before this one
                "time": _rel(cap.times[i], base) if base is not None else "",
                "direction": who.direction(cap.data[i], cap.linktype, macs),
                "summary": summary,
                "marks": sorted({m["mark"] for m in marks.get(i, [])}),
                "notes": marks.get(i, []),
                "decode": _chunks(decode, highlight),
                "absent": [text for text, absent in elsewhere.get(i, []) if absent],  # e.g. "not in sandbox"
                "twins": [text for text, absent in elsewhere.get(i, []) if not absent],  # e.g. "sandbox #4"
            }
        )
        previous = i
    notes = [n for n in (cap.note,) if n]
    if source == "wire" and any(f["direction"] == UNSURE for f in frames):
        notes.append("which frames are the stack's is not clear from the evidence (direction '?')")
    return {
        "source": source,
        "label": LABELS[source],
        "file": Path(path).name,
        "path": path,
        "total": len(cap.data),
        "shown": len(frames),
        "left_out": len(cap.data) - len(frames),
        "tail_gap": len(cap.data) - previous - 1 if frames else 0,
        "frames": frames,
        "stack_mac": who.stack,
        "note": "; ".join(notes) or None,
        "expectations": _expectation_lines(expects, marks, base) if source == "wire" else [],
    }


def _chunks(lines: list[str], highlight: set[int]) -> list[dict[str, Any]]:
    """The decode as runs of lines, a highlighted line a run of its own (one `<mark>` each)."""
    out: list[dict[str, Any]] = []
    run: list[str] = []
    for n, line in enumerate(lines):
        if n in highlight:
            if run:
                out.append({"text": "\n".join(run) + "\n", "differs": False})
                run = []
            out.append({"text": line, "differs": True})
            run = [""]  # the newline after the marked line
        else:
            run.append(line)
    if run and run != [""]:
        out.append({"text": "\n".join(run), "differs": False})
    return out


def frame_views(evidence: Iterable[str | os.PathLike[str]], *, limit: int = LIMIT) -> list[dict[str, Any]]:
    """One view per capture among a cell's evidence files, in the order wire, sandbox, netstack,
    uplink. A view: `source`, `label`, `file`, `path` (as given), `total`, `shown`, `left_out`,
    `frames` (index, gap, time, direction, summary, marks, notes, decode chunks, absent, twins),
    `tail_gap`, `stack_mac`, `note` (what went wrong, or None), `expectations` (the Wire's,
    listed above its frames), `overlap` (how many frames the Wire's and the stack's side share).

    Views of the same files are cached: treat them as read-only."""
    paths = [str(p) for p in evidence]
    captures = sorted(((s, p) for p in paths if (s := source_of(p)) is not None), key=lambda sp: (SOURCE_ORDER.index(sp[0]), sp[1]))
    if not captures:
        return []
    expects_path = next((p for p in paths if p.endswith(".expects.json")), None)
    read = [p for _, p in captures] + [p for p in paths if p == expects_path or p.endswith(".txt")]
    key = (tuple(os.path.realpath(p) for p in read), limit)
    cached = _views.get(key)
    if cached is not None and _fresh(cached[0]):
        return cached[1]
    stamp = _stamps(read)
    expects, expects_note = _load_expects(expects_path)
    wire = next((p for s, p in captures if s == "wire"), None)
    wire_cap = read_capture(wire) if wire else None
    who = sides(wire_cap, expects) if wire_cap else Sides()
    starts = [e["started"] for e in expects if isinstance(e.get("started"), (int, float))]
    base = wire_cap.times[0] if wire_cap and wire_cap.times else (min(starts) if starts else None)
    wire_marks = _marks(expects, wire_cap, who.stack) if wire_cap else {}
    # Where the stack's side has the Wire's frames: per source, per frame, [(text, absent)].
    elsewhere: dict[str, dict[int, list[tuple[str, bool]]]] = {source: {} for source, _ in captures}
    overlap: dict[str, list[str]] = {source: [] for source, _ in captures}
    keep: dict[str, set[int]] = {source: set() for source, _ in captures}
    for source, path in captures:
        other = read_capture(path)
        if wire_cap is None or source not in ("sandbox", "netstack") or (other.note and not other.data):
            continue
        pairs = twins(wire_cap, other)
        found = {w: j for j, w in pairs.items()}
        for j in range(len(other.data)):
            elsewhere[source][j] = [(f"wire #{pairs[j]}", False) if j in pairs else ("not on the wire", True)]
        ip_only = other.linktype in _RAW_IP  # a capture from the IP header on has no ARP to lack
        comparable = 0
        for w, data in enumerate(wire_cap.data):
            if w in found or not ip_only or data[12:14] in (b"\x08\x00", b"\x86\xdd"):
                comparable += 1
                seen = (f"{source} #{found[w]}", False) if w in found else (f"not in {source}", True)
                elsewhere["wire"].setdefault(w, []).append(seen)
        overlap["wire"].append(f"{len(pairs)} of {comparable} in {source}")
        overlap[source].append(f"{len(pairs)} of {len(other.data)} on the wire")
        keep[source] = {j for j, w in pairs.items() if w in wire_marks}
    lab_notes = _lab_notes(paths)
    views = []
    for source, path in captures:
        marks = wire_marks if source == "wire" and path == wire else {}
        view = _view(source, path, expects, base, who, limit, marks, elsewhere[source], keep[source])
        view["overlap"] = overlap[source]
        extra = [expects_note] if source == "wire" and expects_note else lab_notes.get(source, [])
        if extra:
            view["note"] = "; ".join(n for n in (view["note"], *extra) if n)
        views.append(view)
    _views[key] = (stamp, views)
    return views


_views: dict[tuple[Any, ...], tuple[list[tuple[str, int, int]], list[dict[str, Any]]]] = {}


def _stamps(paths: list[str]) -> list[tuple[str, int, int]]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, -1, -1))
    return out


def _fresh(stamp: list[tuple[str, int, int]]) -> bool:
    return _stamps([p for p, _, _ in stamp]) == stamp
