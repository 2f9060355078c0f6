"""Small services that run inside a stack, so a suite can see what the stack delivers.

Standard library only: the same file runs under the kernel (linux driver) and inside a sandbox
(runsc exec with the host's Python). Each service prints JSON lines on stdout: first
`{"event": "ready", "port": P}` once its socket is bound, then one line per thing it received or
did; the lab reads them as evidence. Stop it with SIGTERM or, with `--lifeline`, by closing its
stdin: a signal does not always reach a process inside a sandbox (runsc exec does not forward
it), but the end of a pipe always does.

    python -m labkit.services udp-echo --port 7
    python -m labkit.services tcp-sink --port 9
    python -m labkit.services tcp-source --to 198.18.0.1 --port 9 --bytes 100000
    python -m labkit.services udp-send --to 198.18.0.5 --port 9 --payload 6c6162   # one datagram
    python -m labkit.services tcp-connect --to 198.18.0.9 --port 9   # "connected" or "error" + errno
    python -m labkit.services tcp-feed --port 19 --bytes 1000000      # sends each client that much, then closes
    python -m labkit.services dns --port 53 --zone outside.lab=198.19.1.2,outside.lab=2001:db8:1:1::2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

KINDS = ("udp-echo", "udp-sink", "tcp-echo", "tcp-sink", "tcp-source", "tcp-feed", "udp-send", "tcp-connect", "dns")
LIE4, LIE6 = "198.18.255.254", "2001:db8:ffff::fe"  # what `dns --lie` answers for every name (a broken responder)
SHOW_BYTES = 256  # payloads up to this size are reported in full (hex), larger ones by digest


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _payload(data: bytes) -> dict[str, object]:
    out: dict[str, object] = {"len": len(data)}
    if len(data) <= SHOW_BYTES:
        out["data"] = data.hex()
    else:
        out["sha256"] = hashlib.sha256(data).hexdigest()
    return out


def _bound(kind: int, family: str, port: int) -> socket.socket:
    fam = socket.AF_INET if family == "4" else socket.AF_INET6
    s = socket.socket(fam, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if family == "any" else 1)
    s.bind(("0.0.0.0" if fam == socket.AF_INET else "::", port))
    return s


def _peer(addr: tuple) -> list[object]:
    host = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
    return [host, addr[1]]


def udp(args: argparse.Namespace) -> None:
    s = _bound(socket.SOCK_DGRAM, args.family, args.port)
    # A burst must be lost (or not) by the stack under test, not by this slow reader's buffer.
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, args.rcvbuf)  # SO_RCVBUFFORCE: past rmem_max, as root
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    emit("ready", port=s.getsockname()[1])
    while True:
        data, addr = s.recvfrom(65535)
        emit("datagram", peer=_peer(addr), **_payload(data))
        if args.kind == "udp-echo":
            s.sendto(data, addr)


def tcp(args: argparse.Namespace) -> None:
    s = _bound(socket.SOCK_STREAM, args.family, args.port)
    s.listen(64)
    emit("ready", port=s.getsockname()[1])

    def serve(conn: socket.socket, addr: tuple) -> None:
        total, digest, error = 0, hashlib.sha256(), None
        emit("accepted", peer=_peer(addr))
        with conn:
            try:
                while data := conn.recv(65536):
                    total += len(data)
                    digest.update(data)
                    if args.kind == "tcp-echo":
                        conn.sendall(data)
            except OSError as exc:  # a reset is evidence too: report it with what arrived before
                error = exc.errno
        emit("closed", peer=_peer(addr), len=total, sha256=digest.hexdigest(), errno=error)

    while True:
        conn, addr = s.accept()
        threading.Thread(target=serve, args=(conn, addr), daemon=True).start()


PATTERN = bytes(range(256)) * 256  # what tcp-source and tcp-feed send, over and over: a reader can check any byte


def _pattern(total: int) -> Iterator[bytes]:
    """`total` bytes of PATTERN, in chunks of at most its length."""
    for start in range(0, total, len(PATTERN)):
        yield PATTERN[: min(len(PATTERN), total - start)]


def tcp_source(args: argparse.Namespace) -> None:
    fam = socket.AF_INET6 if ":" in args.to else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(args.timeout)
        if args.mss:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, args.mss)
        emit("ready", port=0)
        s.connect((args.to, args.port))
        sent, digest = 0, hashlib.sha256()
        for chunk in _pattern(args.bytes):
            s.sendall(chunk)
            digest.update(chunk)
            sent += len(chunk)
        s.shutdown(socket.SHUT_WR)
        emit("sent", len=sent, sha256=digest.hexdigest())


def tcp_feed(args: argparse.Namespace) -> None:
    """A download server: each client gets `--bytes` of a known pattern, then the end of the stream."""
    s = _bound(socket.SOCK_STREAM, args.family, args.port)
    s.listen(64)
    emit("ready", port=s.getsockname()[1])

    def feed(conn: socket.socket, addr: tuple) -> None:
        sent, digest, error = 0, hashlib.sha256(), None
        conn.settimeout(args.timeout)  # a client that stops reading ends its feed, bounded
        with conn:
            try:
                for chunk in _pattern(args.bytes):
                    conn.sendall(chunk)
                    digest.update(chunk)
                    sent += len(chunk)
                conn.shutdown(socket.SHUT_WR)
            except OSError as exc:
                error = exc.errno
        emit("fed", peer=_peer(addr), len=sent, sha256=digest.hexdigest(), errno=error)

    while True:
        conn, addr = s.accept()
        threading.Thread(target=feed, args=(conn, addr), daemon=True).start()


DNS_TYPES = {1: "A", 28: "AAAA"}


def _dns_question(query: bytes) -> tuple[str, int, int]:
    """(name, qtype, offset past the question) of a DNS query; ValueError if it is not one."""
    if len(query) < 12 or query[2] & 0x80 or int.from_bytes(query[4:6], "big") != 1:
        raise ValueError("not a query with one question")
    labels, i = [], 12
    while (length := query[i]) != 0:
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(query[i + 1 : i + 1 + length].decode("ascii", "replace"))
        i += 1 + length
    qtype = int.from_bytes(query[i + 1 : i + 3], "big")
    return ".".join(labels).lower(), qtype, i + 5


def dns_answer(query: bytes, zone: dict[str, list[str]], lie: bool = False) -> bytes:
    """The answer to one DNS query from `zone` (name -> addresses): NXDOMAIN for a name it lacks."""
    name, qtype, end = _dns_question(query)
    records = zone.get(name)
    rcode = 3 if records is None else 0
    answers = b""
    count = 0
    for address in records or []:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if (qtype == 1 and family == socket.AF_INET) or (qtype == 28 and family == socket.AF_INET6):
            if lie:
                address = LIE6 if family == socket.AF_INET6 else LIE4
            rdata = socket.inet_pton(family, address)
            answers += b"\xc0\x0c" + qtype.to_bytes(2, "big") + b"\x00\x01" + (60).to_bytes(4, "big")
            answers += len(rdata).to_bytes(2, "big") + rdata
            count += 1
    flags = 0x8000 | 0x0400 | (query[2] & 0x01) << 8 | 0x0080 | rcode  # QR, AA, RD as asked, RA
    header = query[:2] + flags.to_bytes(2, "big") + b"\x00\x01" + count.to_bytes(2, "big") + b"\x00\x00\x00\x00"
    return header + query[12:end] + answers


def dns_zone(text: str) -> dict[str, list[str]]:
    """`NAME=ADDRESS,...` as name -> addresses; ValueError naming an item that is not that."""
    zone: dict[str, list[str]] = {}
    for item in filter(None, text.split(",")):
        name, sep, address = item.partition("=")
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        except OSError:
            sep = ""
        if not sep or not name:
            raise ValueError(f"--zone item {item!r}: allowed: NAME=ADDRESS with an IPv4 or IPv6 address")
        zone.setdefault(name.lower().rstrip("."), []).append(address)
    return zone


def dns(args: argparse.Namespace) -> None:
    """A DNS responder for the lab's names only (UDP); every query it gets is evidence."""
    zone = dns_zone(args.zone)
    s = _bound(socket.SOCK_DGRAM, args.family, args.port)
    emit("ready", port=s.getsockname()[1])
    while True:
        query, addr = s.recvfrom(4096)
        try:
            name, qtype, _ = _dns_question(query)
            reply = dns_answer(query, zone, bool(args.lie))
        except (ValueError, IndexError) as exc:
            emit("bad-query", peer=_peer(addr), why=str(exc), **_payload(query))
            continue
        emit("query", peer=_peer(addr), name=name, type=DNS_TYPES.get(qtype, qtype), known=name in zone)
        s.sendto(reply, addr)


def _exit_at_eof() -> None:
    # os.read, not sys.stdin: a daemon thread blocked in a buffered read holds the buffer's lock,
    # and the interpreter's shutdown (after a signal) would wait on it, then abort.
    while os.read(0, 4096):
        pass
    os._exit(0)


def udp_send(args: argparse.Namespace) -> None:
    fam = socket.AF_INET6 if ":" in args.to else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        emit("ready", port=0)
        n = s.sendto(bytes.fromhex(args.payload), (args.to, args.port))
        emit("sent", len=n)


def tcp_connect(args: argparse.Namespace) -> None:
    """One connection attempt; the outcome (and how long it took) is the evidence."""
    fam = socket.AF_INET6 if ":" in args.to else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(args.timeout)
        emit("ready", port=0)
        started = time.monotonic()
        try:
            s.connect((args.to, args.port))
        except OSError as exc:
            emit("failed", errno=exc.errno, message=str(exc), after=round(time.monotonic() - started, 3))
            return
        emit("connected", after=round(time.monotonic() - started, 3))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit.services", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--family", choices=("4", "6", "any"), default="any")
    p.add_argument("--to", help="destination address (tcp-source)")
    p.add_argument("--bytes", type=int, default=65536, help="how much tcp-source sends")
    p.add_argument("--mss", type=int, default=0, help="TCP_MAXSEG for tcp-source")
    p.add_argument("--payload", default="6c61626b6974", help="hex bytes udp-send sends")
    p.add_argument("--rcvbuf", type=int, default=4 << 20, help="receive buffer of the UDP services")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--zone", default="", help="NAME=ADDRESS,... the dns service answers for")
    p.add_argument("--lie", type=int, choices=(0, 1), default=0, help="dns: 1 answers every name with a wrong address")
    p.add_argument("--lifeline", action="store_true", help="exit when stdin reaches its end")
    return p


def option_names() -> list[str]:
    """The options a service takes besides its kind, port, family and lifeline (`bytes`, `zone`, ...)."""
    fixed = {"help", "kind", "port", "family", "lifeline"}
    return [a.dest for a in parser()._actions if a.dest not in fixed]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.kind in ("tcp-source", "udp-send", "tcp-connect") and not args.to:
        p.error(f"{args.kind} needs --to ADDRESS")
    if args.kind == "dns":
        try:
            dns_zone(args.zone)
        except ValueError as exc:
            p.error(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))  # a terminal's Ctrl-C reaches the lab's children too
    if args.lifeline:
        threading.Thread(target=_exit_at_eof, daemon=True).start()
    try:
        {
            "udp-echo": udp,
            "udp-sink": udp,
            "tcp-echo": tcp,
            "tcp-sink": tcp,
            "tcp-source": tcp_source,
            "tcp-feed": tcp_feed,
            "dns": dns,
            "udp-send": udp_send,
            "tcp-connect": tcp_connect,
        }[args.kind](args)
    except OSError as exc:
        emit("error", errno=exc.errno, message=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
