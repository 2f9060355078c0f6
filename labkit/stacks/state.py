"""What a later check could notice inside a stack, read with the stack's own tools.

One exec runs `ip` and reads /proc/net inside the stack (the kernel in a namespace, or netstack
behind runsc), so every driver that can exec gives the same view. Entries are normalised to what
matters to a check: volatile parts (lifetimes, DAD flags, expiry, TIME-WAIT and other closing
sockets) are left out, so ageing is never taken for a change.
"""

from __future__ import annotations

import ipaddress
import re

SCRIPT = "; echo @@; ".join(
    [
        "ip -o addr show",
        "ip -o route show; ip -o -6 route show",
        "for f in tcp tcp6 udp udp6; do echo \"## $f\"; cat /proc/net/$f 2>/dev/null; done",
    ]
)
ARGV = ["sh", "-c", SCRIPT]
TCP_LISTEN = "0A"
_VOLATILE_ROUTE = re.compile(r"\s+expires\s+\S+")


def parse(output: str) -> dict[str, frozenset[str]]:
    """`output` of ARGV -> {"addresses", "routes", "sockets"} -> entries."""
    sections = output.split("@@\n")
    if len(sections) != 3:
        raise ValueError(f"expected 3 sections in the state read inside the stack, got {len(sections)}: {output[:200]!r}")
    addresses, routes, sockets = sections
    return {"addresses": _addresses(addresses), "routes": _routes(routes), "sockets": _sockets(sockets)}


def _addresses(text: str) -> frozenset[str]:
    found = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("inet", "inet6"):  # "2: eth0    inet 198.18.0.2/24 scope global ..."
            found.add(f"{parts[1]} {parts[3]}")
    return frozenset(found)


def _routes(text: str) -> frozenset[str]:
    return frozenset(" ".join(_VOLATILE_ROUTE.sub("", line).split()) for line in text.splitlines() if line.strip())


def _sockets(text: str) -> frozenset[str]:
    """TCP listeners and bound UDP sockets, from /proc/net/{tcp,udp}{,6} (each after a `## name` line)."""
    found = set()
    proto = ""
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["##"]:
            proto = parts[1].rstrip("6")
            continue
        if len(parts) < 4 or parts[0] == "sl" or ":" not in parts[1]:
            continue
        if proto == "udp":
            found.add(f"udp bound {_endpoint(parts[1])}")
        elif proto == "tcp" and parts[3] == TCP_LISTEN:
            found.add(f"tcp listen {_endpoint(parts[1])}")
    return frozenset(found)


def _endpoint(hex_endpoint: str) -> str:
    """`0200A8C0:0035` (the kernel's little-endian words) -> `192.168.0.2:53`."""
    addr, port = hex_endpoint.split(":")
    raw = bytes.fromhex(addr)
    # Each 32-bit word is in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    return f"[{ip}]:{int(port, 16)}" if ip.version == 6 else f"{ip}:{int(port, 16)}"
