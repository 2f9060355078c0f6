"""Command lines and output parsers of the measuring programs (Debian's, never Python services).

- iperf3 (`-J`): TCP bulk throughput both ways, 1 or 4 connections, and UDP at a fixed offered
  rate. The client always runs inside the stack; `-R` makes the far end send (the rx metrics),
  so nothing has to listen inside a sandbox.
- sockperf ping-pong: TCP request/response round trips (`--full-rtt`), p50 and p99 in usec.
  sockperf's smallest message is 14 bytes (its own header), so "1-byte RR" is measured with
  14-byte messages: the same for every stack.
- wrk against busybox httpd: connect + request + close rate. sockperf has no CRR mode; wrk with
  `Connection: close` opens a new TCP connection for every request, and busybox httpd (one
  static binary, forking per connection) answers a 1-byte file.

Parsers take the program's text and raise LabError naming what was missing, so a broken run
says why instead of passing for a slow one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from labkit.errors import LabError

IPERF3_PORT = 5201
SOCKPERF_PORT = 11111
HTTP_PORT = 8080
RR_MESSAGE = 14  # bytes: sockperf's minimum (its header)
UDP_LENGTH = 1400  # bytes per datagram: below a 1500 MTU, so no stack fragments
IPERF3_READY = "Server listening"
CONNECT_MS = 3000  # iperf3's bound on its connect: a stack that cannot reach the far end fails fast
SOCKPERF_READY = "to block on socket"


@dataclass(frozen=True)
class Measured:
    """One measurement: the figure of its metric, the bytes it moved (for CPU per GB) and the
    secondary figures (`extra`: p99, loss, errors)."""

    value: float
    moved: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def iperf3_server(address: str, port: int = IPERF3_PORT) -> list[str]:
    """One test, then exit (`-1`); `--forceflush` so its "listening" line reaches a pipe at once."""
    return ["iperf3", "-s", "-1", "--forceflush", "-B", address, "-p", str(port)]


def iperf3_client(
    address: str, seconds: float, *, parallel: int = 1, reverse: bool = False, udp_rate: str | None = None, port: int = IPERF3_PORT
) -> list[str]:
    """A bounded run (`-t`) with JSON output; `reverse`: the far end sends; `udp_rate`: UDP at that
    offered rate (iperf3's notation, `300M`) in `UDP_LENGTH`-byte datagrams."""
    argv = ["iperf3", "-c", address, "-p", str(port), "-t", f"{seconds:g}", "-J", "-P", str(parallel), "--connect-timeout", str(CONNECT_MS)]
    if reverse:
        argv.append("-R")
    if udp_rate is not None:
        argv += ["-u", "-b", udp_rate, "-l", str(UDP_LENGTH)]
    return argv


def iperf3_probe(address: str, port: int = IPERF3_PORT) -> list[str]:
    """A few KB to the far end, bounded: whether the stack reaches it at all (before measuring)."""
    return ["iperf3", "-c", address, "-p", str(port), "-n", "64K", "-J", "--connect-timeout", str(CONNECT_MS)]


def parse_iperf3(text: str) -> Measured:
    """TCP: what the receiver got (Gbit/s); UDP: what the receiver got (Mbit/s) and the loss (%)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise LabError(f"iperf3 printed no JSON: {text.strip()[-200:]!r}") from None
    if not isinstance(doc, dict):
        raise LabError(f"iperf3's JSON is not an object: {text.strip()[-200:]!r}")
    if doc.get("error"):
        raise LabError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    udp = doc.get("start", {}).get("test_start", {}).get("protocol") == "UDP"
    received = end.get("sum_received") or (end.get("sum") if udp else None)
    if not received or "bits_per_second" not in received:
        raise LabError(f"iperf3's JSON has no receiver sum (end.sum_received): keys {sorted(end)}")
    bps = float(received["bits_per_second"])
    moved = int(received.get("bytes", 0))
    if udp:
        total = end.get("sum") or received
        return Measured(bps / 1e6, moved, {"loss": float(total.get("lost_percent", 0.0))})
    return Measured(bps / 1e9, moved, {"retransmits": float(end.get("sum_sent", {}).get("retransmits", 0))})


def sockperf_server(address: str, port: int = SOCKPERF_PORT) -> list[str]:
    return ["sockperf", "server", "--tcp", "-i", address, "-p", str(port)]


def sockperf_client(address: str, seconds: float, port: int = SOCKPERF_PORT) -> list[str]:
    """Ping-pong for `seconds` after sockperf's own warm-up (400 ms), round trips reported."""
    return ["sockperf", "ping-pong", "--tcp", "-i", address, "-p", str(port), "-t", f"{seconds:g}", "-m", str(RR_MESSAGE), "--full-rtt"]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PERCENTILE = re.compile(r"percentile\s+([0-9.]+)\s*=\s*([0-9.]+)")
_OBSERVATIONS = re.compile(r"Total\s+(\d+)\s+observations")


def parse_sockperf(text: str) -> Measured:
    """p50 round trip (usec) as the value; p99 and the number of observations as extras."""
    clean = _ANSI.sub("", text)
    points = {float(p): float(v) for p, v in _PERCENTILE.findall(clean)}
    if 50.0 not in points or 99.0 not in points:
        raise LabError(f"sockperf printed no p50/p99 percentiles: {clean.strip()[-300:]!r}")
    seen = _OBSERVATIONS.search(clean)
    return Measured(points[50.0], 0, {"p99": points[99.0], "observations": float(seen.group(1)) if seen else 0.0})


def httpd_server(address: str, root: str, port: int = HTTP_PORT) -> list[str]:
    """busybox httpd in the foreground; it prints nothing when it listens (the campaign probes)."""
    return ["busybox", "httpd", "-f", "-p", f"{address}:{port}", "-h", root]


def wrk_client(address: str, seconds: float, port: int = HTTP_PORT, path: str = "/r") -> list[str]:
    """One connection, one thread: every request on a new connection (`Connection: close`)."""
    duration = max(1, round(seconds))
    return ["wrk", "-t", "1", "-c", "1", "-d", f"{duration}s", "--timeout", "2s", "-H", "Connection: close", f"http://{address}:{port}{path}"]


_RATE = re.compile(r"Requests/sec:\s*([0-9.]+)")
_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> Measured:
    """Connections per second (one request each); socket errors and non-2xx answers as extras:
    a rate made of errors is refused."""
    rate = _RATE.search(text)
    if rate is None:
        raise LabError(f"wrk printed no Requests/sec: {text.strip()[-300:]!r}")
    socket_errors = _ERRORS.search(text)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    bad = int(m.group(1)) if (m := _NON2XX.search(text)) else 0
    value = float(rate.group(1))
    if value > 0 and bad and bad * 2 > value:
        raise LabError(f"wrk: most answers were not 2xx ({bad} non-2xx): {text.strip()[-300:]!r}")
    return Measured(value, 0, {"errors": float(errors), "non_2xx": float(bad)})
