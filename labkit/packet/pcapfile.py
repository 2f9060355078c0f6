"""Classic pcap files, written and cut, without scapy: evidence is made on every failed check.

Two uses. The lab writes the frames a capture socket of its own recorded (`write`). And a stack
that keeps its own capture (runsc `--pcap-log`) writes one file for the sandbox's whole life,
while a pooled sandbox serves many checks: `window` cuts out the part that belongs to one check,
from a record boundary remembered when the check began (`records_end`) and by the records'
timestamps, so a record the writer flushed late still lands in the right check's window. The
writer may be mid-record when the lab reads: a record not yet whole is left for later.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

HEADER = 24  # magic, version 2.4, thiszone, sigfigs, snaplen, linktype
RECORD = 16  # ts_sec, ts_frac, captured length, original length
SNAPLEN = 65535
LINKTYPE_ETHERNET = 1
# magic as stored -> (byte order, seconds per unit of the fraction)
MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
MAX_RECORD = 1 << 18  # a captured length beyond this is not a record: the file is not what it claims


def header(linktype: int = LINKTYPE_ETHERNET, snaplen: int = SNAPLEN) -> bytes:
    """A little-endian, microsecond pcap header."""
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def write(frames: Iterable[tuple[float, bytes]], linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """A whole pcap of (timestamp, frame) pairs, as the Wire's pcap is written (microseconds)."""
    out = [header(linktype)]
    for ts, data in frames:
        sec = int(ts)
        usec = min(int((ts - sec) * 1e6), 999_999)
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)))
        out.append(data)
    return b"".join(out)


def _layout(head: bytes) -> tuple[str, float] | None:
    return MAGICS.get(head[:4]) if len(head) >= HEADER else None


def _records(data: bytes, at: int, order: str, unit: float) -> Iterator[tuple[int, int, float]]:
    """(start, end, timestamp) of each whole record in `data` from offset `at` on."""
    while at + RECORD <= len(data):
        sec, frac, captured, _length = struct.unpack_from(f"{order}IIII", data, at)
        if captured > MAX_RECORD:
            return
        end = at + RECORD + captured
        if end > len(data):
            return  # the writer has not finished this one
        yield at, end, sec + frac * unit
        at = end


def records_end(path: Path, start: int = 0) -> int:
    """Where the last whole record of `path` ends, walking from `start` (a record boundary found
    before, or 0). 0 when there is no whole header yet; a missing file is empty."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER)
            layout = _layout(head)
            if layout is None:
                return 0
            at = max(start, HEADER)
            f.seek(at)
            data = f.read()
    except FileNotFoundError:
        return 0
    ends = [end for _start, end, _ts in _records(data, 0, *layout)]
    return at + (ends[-1] if ends else 0)


def window(path: Path, offset: int = 0, since: float = 0.0) -> bytes | None:
    """The file's header and its whole records from `offset` (a record boundary, e.g. from
    `records_end`) on, stamped at or after `since`. None when the file is missing or has no
    pcap header (the writer wrote nothing: a build that keeps no capture)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER)
            layout = _layout(head)
            if layout is None:
                return None
            f.seek(max(offset, HEADER))
            data = f.read()
    except FileNotFoundError:
        return None
    kept = [data[start:end] for start, end, ts in _records(data, 0, *layout) if ts >= since]
    return head + b"".join(kept)


def count(data: bytes) -> int:
    """How many whole records a pcap held in memory has (0 for anything that is not a pcap)."""
    layout = _layout(data)
    return 0 if layout is None else sum(1 for _ in _records(data, HEADER, *layout))


def linktype(data: bytes) -> int | None:
    """The file's link type (1: Ethernet), None for anything that is not a pcap."""
    layout = _layout(data)
    if layout is None:
        return None
    return int(struct.unpack_from(f"{layout[0]}I", data, 20)[0])


def read(data: bytes) -> list[tuple[float, bytes]]:
    """(timestamp, frame) of every whole record; raises ValueError for what is not a pcap."""
    layout = _layout(data)
    if layout is None:
        raise ValueError("not a pcap file (no pcap magic in its first 4 bytes)")
    return [(ts, data[start + RECORD : end]) for start, end, ts in _records(data, HEADER, *layout)]
