"""The lab's address policy: lab traffic stays in ranges no real network uses.

198.18.0.0/15 (RFC 2544 benchmarking) and 2001:db8::/32 (RFC 3849 documentation), plus loopback.
Every address or prefix the lab configures or sends to is checked here first, so a typo cannot
make a test talk to a real network.
"""

from __future__ import annotations

import ipaddress
from typing import TypeAlias

from labkit.errors import LabInputError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

LAB_RANGES: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("2001:db8::/32"),
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
ALLOWED = "198.18.0.0/15, 2001:db8::/32 or loopback"


def _in_lab(net: IPNetwork) -> bool:
    return any(net.version == r.version and net.subnet_of(r) for r in LAB_RANGES)  # type: ignore[arg-type]


def lab_address(value: object) -> IPAddress:
    """Parse `value` as a single lab address, or refuse it."""
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        raise LabInputError(f"bad address {value!r}: not an IP address; allowed: {ALLOWED}") from None
    if not _in_lab(ipaddress.ip_network(addr)):
        raise LabInputError(f"address {addr} is outside the lab ranges; allowed: {ALLOWED}")
    return addr


def lab_interface(value: object) -> IPInterface:
    """Parse `ADDR/PREFIXLEN` for an interface; the whole prefix must lie in a lab range."""
    text = str(value)
    if "/" not in text:
        raise LabInputError(f"bad interface address {text!r}: needs ADDR/PREFIXLEN; allowed: {ALLOWED}")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise LabInputError(f"bad interface address {text!r}: not ADDR/PREFIXLEN; allowed: {ALLOWED}") from None
    if not _in_lab(iface.network):
        raise LabInputError(f"prefix {iface.network} of {text} is outside the lab ranges; allowed: {ALLOWED}")
    return iface


def lab_network(value: object) -> IPNetwork:
    """Parse a route destination; `default` means the whole family and is always allowed.

    A default route only decides where frames leave; the frames themselves still go to lab
    addresses, which the Wire and services check.
    """
    text = str(value)
    if text in ("default", "0.0.0.0/0", "::/0"):
        return ipaddress.ip_network("::/0" if text == "::/0" else "0.0.0.0/0")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise LabInputError(f"bad route destination {text!r}: {exc}; allowed: default or a prefix in {ALLOWED}") from None
    if not _in_lab(net):
        raise LabInputError(f"route destination {net} is outside the lab ranges; allowed: default or a prefix in {ALLOWED}")
    return net
