"""Topology up+down: labkit (pyroute2, namespaces made by a thread) vs the same with `ip` commands.

Both build two namespaces joined by a veth, IPv4 and IPv6 addresses on both ends, loopback and
links up, IPv4 and IPv6 default routes; then remove it all.
"""

from __future__ import annotations

import subprocess

from labkit.lifecycle import owner
from labkit.net.topology import Topology

from .common import Figure, median_seconds


def labkit_up_down() -> None:
    t = Topology()
    a, b = t.namespace("a"), t.namespace("b")
    t.veth(a, "eth0", b, "peer0")
    a.addr("eth0", "198.18.7.2/24").addr("eth0", "2001:db8:7::2/64")
    b.addr("peer0", "198.18.7.1/24").addr("peer0", "2001:db8:7::1/64")
    a.route("default", via="198.18.7.1").route("default", via="2001:db8:7::1")
    with t:
        pass


def ip_up_down() -> None:
    a, b = owner.new_name("ipa"), owner.new_name("ipb")
    script = [
        f"netns add {a}",
        f"netns add {b}",
        f"-n {a} link add eth0 type veth peer name peer0 netns {b}",
        f"-n {a} addr add 198.18.7.2/24 dev eth0",
        f"-n {a} addr add 2001:db8:7::2/64 dev eth0 nodad",
        f"-n {b} addr add 198.18.7.1/24 dev peer0",
        f"-n {b} addr add 2001:db8:7::1/64 dev peer0 nodad",
        f"-n {a} link set lo up",
        f"-n {a} link set eth0 up",
        f"-n {b} link set lo up",
        f"-n {b} link set peer0 up",
        f"-n {a} route add default via 198.18.7.1",
        f"-n {a} -6 route add default via 2001:db8:7::1",
        f"netns del {a}",
        f"netns del {b}",
    ]
    for line in script:
        subprocess.run(["ip", *line.split()], check=True, stdin=subprocess.DEVNULL)


def run(repeat: int = 15) -> list[Figure]:
    lab = median_seconds(labkit_up_down, repeat)
    ip = median_seconds(ip_up_down, repeat)
    ratio = lab / ip
    return [
        Figure("topology up+down, labkit", lab * 1e3, "ms"),
        Figure("topology up+down, ip commands", ip * 1e3, "ms"),
        Figure("topology labkit / ip", ratio, "x", "<= 0.25", ratio <= 0.25),
    ]
