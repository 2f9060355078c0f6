"""Evidence of a failed check, kept within a budget: one folder per check, logs cut to the check's
window and gzipped, and a file that another variant of the check already stored kept once.

A full conformance run fails or deviates in hundreds of cells. Kept whole, a gVisor sandbox's
debug log (every gofer RPC, every packet with `--log-packets`) is megabytes per cell, and the same
deviation on every variant is the same evidence many times over. So:

- `evidence/<check>/<stack>.<what>`: one folder per check (its id made a readable file name),
  one set of files per stack in it.
- Logs hold only what the stack wrote in the check's window (`Stack.mark_logs`) and are gzipped
  deterministically (mtime 0, no name), so equal windows give equal bytes. A window beyond
  `LOG_LIMIT` keeps its head and tail, with a line that says how much was left out.
- Beside the Wire's pcap (`<stack>.pcap`, the peer end of the veth), the stack's side of the
  link: `<stack>.sandbox.pcap`, recorded on the stack's end inside its namespace (with
  `<stack>.sandbox.drops.txt` when the kernel dropped frames of it), and `<stack>.netstack.pcap`,
  the stack's own capture where its build keeps one (runsc `--pcap-log`). Together they say
  whether a frame was lost before or after the stack.
- pcaps stay plain (a failed check's frames are a few KB; tcpdump, Wireshark and a browser open
  them as they are); one over `PCAP_GZIP_OVER` (a bulk transfer) is stored as `.pcap.gz`, which
  Wireshark opens directly.
- The same evidence is stored once per check and run: a file whose content, normalised, equals
  one stored before for another stack of the same check is not written again, and the later
  cell's evidence entry names the stored file. Normalised means: a pcap's frames, in order,
  without their timestamps; the expectations without their start times; a log or command file
  with timestamps, pids, Go pointers and the lab's temporary names (`labkit-RUN-PID-N...`)
  blanked out. Everything else must match byte for byte, so two variants whose frames or log
  lines differ in anything that is the stack's doing (a checksum, a sequence number, a message)
  each keep their own. A known deviation is kept like a failure: its pcap and its window's log
  lines; several variants that deviate alike share them.

The store is safe under `pytest -n auto`: files are written under a temporary name and renamed
into place, and which cell stored a content first is decided by an exclusive symlink in the run's
index (`.index/<run>/<digest>`, created only after its target is complete); a cell that loses the
race removes its copy and names the winner's.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LOG_LIMIT = 32 << 20  # bytes of one log's window kept (head and tail) before compression
PCAP_GZIP_OVER = 1 << 20  # a pcap bigger than this is stored gzipped
NAME_LIMIT = 120  # characters of a check's folder name
INDEX = ".index"


@dataclass(frozen=True)
class Piece:
    """One file of a cell's evidence: `name` follows `<stack>.` in the check's folder; `data` is
    what is stored; `key` what two pieces are compared by (the normalised content)."""

    name: str
    data: bytes
    key: bytes


def check_folder(check: str) -> str:
    """A readable folder name for a check id (`transport/test_window.py::test_x[ipv6]` ->
    `transport.test_window.test_x-ipv6`). A name that lost characters on the way (a parameter
    with spaces) or was cut to `NAME_LIMIT` ends in a short hash of the id, so two checks never
    share a folder."""
    path, _, rest = check.partition("::")
    name = path.removesuffix(".py").replace("/", ".").lstrip(".")
    test, bracket, params = rest.partition("[")
    name = f"{name}.{test.replace('::', '.')}" if test else name
    if bracket:
        name += "-" + params.removesuffix("]")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "check"
    if safe != name or len(safe) > NAME_LIMIT:
        digest = hashlib.sha256(check.encode()).hexdigest()[:8]
        safe = f"{safe[: NAME_LIMIT - 9]}-{digest}"
    return safe


def gzipped(data: bytes) -> bytes:
    """gzip with no time and no name in the header: the same input gives the same bytes."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def read_window(path: Path, offset: int, limit: int = LOG_LIMIT) -> bytes:
    """What `path` holds from `offset` on; more than `limit` keeps the first and last halves
    and says how much is left out between them. A log shorter than `offset` was replaced: all
    of it is new."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if offset > size:
            offset = 0
        length = size - offset
        f.seek(offset)
        if length <= limit:
            return f.read(length)
        half = limit // 2
        head = f.read(half)
        f.seek(size - half)
        tail = f.read(half)
    return head + f"\n[labkit: {length - 2 * half} bytes of this window left out]\n".encode() + tail


# What differs between two runs of the same behaviour, blanked out for comparison only.
_LOG_NOISE = [
    (re.compile(rb"^([IWEDF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ", re.M), rb"\1 "),  # glog: level, date, time, thread id
    (re.compile(rb"^\s*\d+\.\d+: ", re.M), b""),  # pasta: seconds since start
    (re.compile(rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"), b"<time>"),
    (re.compile(rb"\b\d\d:\d\d:\d\d\.\d+\b"), b"<time>"),
    (re.compile(rb"\b1[5-9]\d{8}(\.\d+)?\b"), b"<time>"),  # seconds since the epoch
    (re.compile(rb"\b(Sec|Nsec):\d+"), rb"\1:?"),  # file times in gofer RPCs
    (re.compile(rb"labkit-[0-9a-f]+-\d+-\d+[-\w]*"), b"labkit-*"),  # the lab's temporary names (workdirs, namespaces)
    (re.compile(rb"0x[0-9a-f]{6,}"), b"0x?"),  # Go pointers
    (re.compile(rb"\b(pid|PID|Pid)([:= ]\s*)\d+"), rb"\1\2?"),
    (re.compile(rb"\b\d+(\.\d+)?(ns|us|\xc2\xb5s|ms|s)\b"), b"<duration>"),
]


def normalised_log(data: bytes) -> bytes:
    """A log (or command file) with timestamps, pids, pointers and temporary names blanked."""
    for pattern, replacement in _LOG_NOISE:
        data = pattern.sub(replacement, data)
    return data


def pcap_frames(data: bytes) -> bytes:
    """A pcap's frames in order, without their timestamps: what two pcaps are compared by.
    Anything that is not a whole pcap compares by its bytes."""
    if len(data) < 24 or data[:4] not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        return data
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, at = [data[20:24]], 24  # the link type, then each frame with its length
    while at + 16 <= len(data):
        captured, wire_len = struct.unpack(f"{order}II", data[at + 8 : at + 16])
        frame = data[at + 16 : at + 16 + captured]
        if len(frame) < captured:
            return data
        out.append(struct.pack(">II", captured, wire_len) + frame)
        at += 16 + captured
    return b"".join(out) if at == len(data) else data


def expectations_key(data: bytes) -> bytes:
    """The expectations without the wall-clock time each began."""
    try:
        entries = json.loads(data)
    except ValueError:
        return data
    if not isinstance(entries, list):
        return data
    return json.dumps([{k: v for k, v in e.items() if k != "started"} if isinstance(e, dict) else e for e in entries]).encode()


def log_piece(name: str, window: bytes) -> Piece:
    return Piece(f"{name}.gz", gzipped(window), normalised_log(window))


def pcap_piece(name: str, data: bytes) -> Piece:
    """`name` "" is the Wire's pcap (`<stack>.pcap`), else `<stack>.<name>.pcap`."""
    stem = f"{name}.pcap" if name else "pcap"
    if len(data) > PCAP_GZIP_OVER:
        return Piece(f"{stem}.gz", gzipped(data), pcap_frames(data))
    return Piece(stem, data, pcap_frames(data))


def expectations_piece(data: bytes) -> Piece:
    return Piece("expects.json", data, expectations_key(data))


def note_piece(name: str, text: str) -> Piece:
    """A line or two the lab says about another piece (`<stack>.<name>.txt`), e.g. what a capture misses."""
    data = text.encode()
    return Piece(f"{name}.txt", data, normalised_log(data))


def commands_piece(text: str) -> Piece:
    data = text.encode()
    return Piece("commands.txt", data, normalised_log(data))


class EvidenceStore:
    """Where a run keeps its cells' evidence: `root/<check folder>/<stack>.<piece>`."""

    def __init__(self, root: Path, run: str) -> None:
        self.root = root.resolve()
        self.index = self.root / INDEX / run

    def folder(self, check: str) -> Path:
        return self.root / check_folder(check)

    @staticmethod
    def prefix(stack: str) -> str:
        """A stack id as the start of a file name: no dots (the first dot ends it) and nothing a
        path or a URL would take apart."""
        return re.sub(r"[^A-Za-z0-9_@+-]", "_", stack) or "stack"

    def scratch(self, check: str, stack: str, name: str) -> Path:
        """A private temporary path in the check's folder (for a writer that wants a path)."""
        folder = self.folder(check)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f".{self.prefix(stack)}.{name}.{os.getpid()}.tmp"

    def keep(self, check: str, stack: str, pieces: Iterable[Piece]) -> list[Path]:
        """Store one cell's evidence; returns where each piece is (its own file, or the one
        another stack of the check stored first). The stack's files of an earlier run in the
        folder go first: what is there afterwards is this run's."""
        folder, prefix = self.folder(check), self.prefix(stack)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.name.split(".", 1)[0] == prefix:
                old.unlink(missing_ok=True)
        return [self._put(folder, prefix, piece) for piece in pieces]

    def _put(self, folder: Path, prefix: str, piece: Piece) -> Path:
        digest = hashlib.sha256(b"\0".join([folder.name.encode(), piece.name.encode(), piece.key])).hexdigest()[:40]
        link = self.index / digest
        if (first := self._stored(link)) is not None:
            return first
        dest = folder / f"{prefix}.{piece.name}"
        write_atomically(dest, piece.data)
        self.index.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(os.path.relpath(dest, self.index), link)
        except FileExistsError:
            first = self._stored(link)
            if first is not None and first != dest:
                dest.unlink(missing_ok=True)
                return first
        return dest

    def _stored(self, link: Path) -> Path | None:
        try:
            target = Path(os.path.normpath(self.index / os.readlink(link)))
        except FileNotFoundError:
            return None
        return target if target.exists() else None

    def finish(self) -> None:
        """Drop the run's index (the files stay): called once, when every worker is done."""
        shutil.rmtree(self.index, ignore_errors=True)
        try:
            self.index.parent.rmdir()  # only if no other run's index is in it
        except OSError:
            pass


def write_atomically(dest: Path, data: bytes) -> None:
    """Write under a private name, then rename: a reader never sees half a file."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)


def totals(paths: Iterable[str]) -> dict[str, int]:
    """The run's evidence size: each file its cells name, counted once."""
    files = {os.path.realpath(p) for p in paths}
    sizes = [os.path.getsize(p) for p in files if os.path.isfile(p)]
    return {"evidence bytes": sum(sizes), "evidence files": len(sizes)}
