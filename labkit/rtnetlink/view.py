"""What a network namespace or a stack shows through rtnetlink: links, addresses, routes.

Both sides are read with the same client (`ip -j`, iproute2's JSON output) and the same parser,
so when the view from inside a sandbox differs from the host namespace it was copied from, the
difference is the stacks', not the tools'.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from labkit.errors import LabError

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


@dataclass(frozen=True)
class Iface:
    index: int
    name: str
    mtu: int
    mac: str
    up: bool
    loopback: bool


@dataclass(frozen=True, order=True)
class RouteEntry:
    dst: str  # always with a prefix length: "0.0.0.0/0", "::1/128"
    gateway: str | None
    dev: str | None

    def __str__(self) -> str:
        return self.dst + (f" via {self.gateway}" if self.gateway else "") + (f" dev {self.dev}" if self.dev else "")


def _dst(text: str, family: int) -> str:
    if text == "default":
        return "0.0.0.0/0" if family == 4 else "::/0"
    return str(ipaddress.ip_network(text, strict=False))


@dataclass(frozen=True)
class NetView:
    links: dict[str, Iface]
    addresses: dict[str, frozenset[str]]  # link name -> {"198.18.0.2/24", ...}
    routes: frozenset[RouteEntry]  # main table, both families

    @classmethod
    def read(cls, run: Runner) -> NetView:
        """Read a view by running `ip -j` through `run` (a stack's `run`, or a netns runner)."""

        def ip_json(*args: str) -> list[dict]:
            done = run(["ip", "-j", *args])
            if done.returncode != 0:
                raise LabError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
            return json.loads(done.stdout or "[]")

        links, addresses = {}, {}
        for item in ip_json("addr", "show"):
            flags = item.get("flags", [])
            name = item["ifname"]
            links[name] = Iface(
                item["ifindex"], name, item.get("mtu", 0), item.get("address", ""), "UP" in flags, "LOOPBACK" in flags
            )
            addresses[name] = frozenset(f"{a['local']}/{a['prefixlen']}" for a in item.get("addr_info", []) if "local" in a)
        routes = set()
        for family in (4, 6):
            for r in ip_json(f"-{family}", "route", "show"):
                dst = _dst(r["dst"], family)
                if ipaddress.ip_network(dst).version != family:
                    continue  # a stack that ignores the family filter: not this family's route
                routes.add(RouteEntry(dst, r.get("gateway"), r.get("dev")))
        return cls(links, addresses, frozenset(routes))
