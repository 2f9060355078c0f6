"""slirp4netns network options as a container engine takes them (`key=value`), checked.

The contract is podman's: cidr, mtu, allow_host_loopback, enable_ipv6, outbound_addr,
outbound_addr6 and port_handler, and nothing else. Each bad value is refused in one line that
names the option, the value and what is allowed. The defaults are the lab's, not slirp4netns's:
host loopback blocked, MTU 65520, and a CIDR in the lab's benchmark range (slirp4netns's own
default, 10.0.2.0/24, is a private range the lab never uses).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from labkit.errors import LabInputError
from labkit.net.addressing import lab_interface

MIN_MTU = 68
DEFAULT_MTU = 65520
DEFAULT_CIDR = "198.18.0.0/24"  # slirp4netns's own default, 10.0.2.0/24, is a range the lab never uses
PORT_HANDLERS = ("slirp4netns", "rootlesskit")
BOOLEANS = {"true": True, "false": False}
KEYS = ("cidr", "mtu", "allow_host_loopback", "enable_ipv6", "outbound_addr", "outbound_addr6", "port_handler")


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class SlirpOptions:
    cidr: str = DEFAULT_CIDR
    mtu: int = DEFAULT_MTU
    allow_host_loopback: bool = False
    enable_ipv6: bool = False
    outbound_addr: str | None = None
    outbound_addr6: str | None = None
    port_handler: str = "slirp4netns"

    @classmethod
    def parse(cls, items: Iterable[str] | Mapping[str, str], max_mtu: int = 65521) -> SlirpOptions:
        """From `["mtu=1500", ...]` or `{"mtu": "1500"}`; `max_mtu` is what the binary takes."""
        pairs = list(items.items()) if isinstance(items, Mapping) else [_split(item) for item in items]
        opts = cls()
        for key, value in pairs:
            change: dict[str, Any] = {key: _parse_one(key, value, max_mtu)}
            opts = replace(opts, **change)
        if opts.outbound_addr6 is not None and not opts.enable_ipv6:
            raise LabInputError(f"slirp4netns option outbound_addr6={opts.outbound_addr6}: needs enable_ipv6=true")
        return opts

    @property
    def host_forward(self) -> bool:
        """Port forwarding through slirp4netns's API socket (else rootlesskit does it)."""
        return self.port_handler == "slirp4netns"


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise LabInputError(f"slirp4netns option {item!r}: expected KEY=VALUE with KEY one of {', '.join(KEYS)}")
    return key, value


def _parse_one(key: str, value: str, max_mtu: int) -> object:
    bad = f"slirp4netns option {key}={value!r}: "
    if key == "cidr":
        allowed = "allowed: an IPv4 CIDR of /25 or wider in the lab's 198.18.0.0/15, e.g. 198.18.5.0/24"
        try:
            net = ipaddress.ip_network(value, strict=False)
            lab_interface(value)
        except (ValueError, LabInputError):
            net = None
        if net is None or net.version != 4 or "/" not in value or net.prefixlen > 25:
            raise LabInputError(bad + allowed)
        return value
    if key == "mtu":
        try:
            mtu = int(value)
        except ValueError:
            mtu = -1
        if not MIN_MTU <= mtu <= max_mtu:
            raise LabInputError(bad + f"allowed: an integer from {MIN_MTU} to {max_mtu}")
        return mtu
    if key in ("allow_host_loopback", "enable_ipv6"):
        if value not in BOOLEANS:
            raise LabInputError(bad + "allowed: true, false")
        return BOOLEANS[value]
    if key in ("outbound_addr", "outbound_addr6"):
        version = 4 if key == "outbound_addr" else 6
        try:
            ok = ipaddress.ip_address(value).version == version
        except ValueError:
            ok = _interface_exists(value)
        if not ok:
            raise LabInputError(bad + f"allowed: an IPv{version} address or the name of an existing interface")
        return value
    if key == "port_handler":
        if value not in PORT_HANDLERS:
            raise LabInputError(bad + f"allowed: {', '.join(PORT_HANDLERS)}")
        return value
    raise LabInputError(f"unknown slirp4netns option {key!r}; allowed: {', '.join(KEYS)}")
