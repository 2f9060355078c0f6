"""Topologies: namespaces, veth pairs, addresses and routes, declared first and built in one call.

Everything the lab builds lives inside namespaces it created: a veth is made inside one lab
namespace with its peer placed straight into another, so the root namespace is never changed and
deleting the namespaces removes every link, address and route with them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from . import janitor, owner
from .addressing import IPInterface, IPNetwork, lab_address, lab_interface, lab_network
from .errors import LabError, LabInputError
from .ethtool import set_tx_checksum
from .netns import NetNS
from .process import kill_namespace_processes

IFNAMSIZ = 16
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
IFA_F_NODAD = 0x02


def check_ifname(name: str) -> str:
    if not _IFNAME_RE.match(name or "") or name in (".", ".."):
        raise LabInputError(
            f"bad interface name {name!r}: allowed are 1-{IFNAMSIZ - 1} characters of letters, digits, '_', '.', '-'"
        )
    return name


def check_mac(mac: str) -> str:
    mac = (mac or "").lower()
    if not _MAC_RE.match(mac) or int(mac[:2], 16) & 1:
        raise LabInputError(f"bad MAC {mac!r}: allowed is a unicast address like 02:00:00:00:00:01")
    return mac


def check_mtu(mtu: int) -> int:
    if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise LabInputError(f"bad MTU {mtu!r}: allowed is an integer from 68 to 65535")
    return mtu


@dataclass
class Link:
    """One interface in a namespace; a veth end until other kinds are needed."""

    ns: Namespace
    name: str
    mac: str | None = None
    mtu: int | None = None
    up: bool = True
    tx_checksum: bool | None = None  # None: leave the kernel's default (on for veth)
    ipv6: bool = True
    addresses: list[IPInterface] = field(default_factory=list)
    peer: Link | None = None
    index: int | None = None  # known after build

    def addr(self, cidr: str) -> Link:
        """Add an address (`ip addr add CIDR dev NAME`); IPv6 ones skip DAD so they work at once."""
        self.addresses.append(lab_interface(cidr))
        return self

    @property
    def ipv4(self) -> list[ipaddress.IPv4Interface]:
        return [a for a in self.addresses if a.version == 4]  # type: ignore[misc]

    @property
    def ipv6_addresses(self) -> list[ipaddress.IPv6Interface]:
        return [a for a in self.addresses if a.version == 6]  # type: ignore[misc]


@dataclass
class Route:
    dst: IPNetwork
    via: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dev: str | None
    metric: int | None


class Namespace:
    """A namespace in a topology; `name` is the real netns name once the topology is up."""

    def __init__(self, topology: Topology, role: str) -> None:
        self.topology = topology
        self.role = role
        self.links: dict[str, Link] = {}
        self.routes: list[Route] = []
        self.sysctls: dict[str, str] = {}
        self.netns: NetNS | None = None

    def __repr__(self) -> str:
        return f"Namespace({self.role!r}, {self.name!r})"

    @property
    def name(self) -> str | None:
        return self.netns.name if self.netns else None

    def _link(self, name: str, **kw: Any) -> Link:
        check_ifname(name)
        if name in self.links:
            raise LabInputError(f"interface {name!r} declared twice in namespace {self.role!r}; allowed: one per name")
        if kw.get("mac") is not None:
            kw["mac"] = check_mac(kw["mac"])
        if kw.get("mtu") is not None:
            check_mtu(kw["mtu"])
        link = Link(self, name, **kw)
        self.links[name] = link
        return link

    def link(self, name: str) -> Link:
        try:
            return self.links[name]
        except KeyError:
            raise LabInputError(f"no interface {name!r} in namespace {self.role!r}; declared: {sorted(self.links)}") from None

    def addr(self, dev: str, cidr: str) -> Namespace:
        self.link(dev).addr(cidr)
        return self

    def route(self, dst: str, via: str | None = None, dev: str | None = None, metric: int | None = None) -> Namespace:
        """Declare a route like `ip route add DST [via GW] [dev DEV] [metric M]`."""
        net = lab_network(dst)
        gw = lab_address(via) if via is not None else None
        if dev is not None:
            self.link(dev)
        if gw is None and dev is None:
            raise LabInputError(f"route {dst}: needs via GATEWAY or dev NAME")
        if str(dst) == "default" and gw is not None and gw.version == 6:
            net = ipaddress.ip_network("::/0")
        if gw is not None and gw.version != net.version:
            raise LabInputError(f"route {dst} via {gw}: gateway family differs from destination family")
        self.routes.append(Route(net, gw, dev, metric))
        return self

    def sysctl(self, key: str, value: object) -> Namespace:
        """Set a net.* sysctl inside this namespace (never the root namespace's)."""
        if not re.fullmatch(r"net(\.[A-Za-z0-9_-]+)+", key):
            raise LabInputError(f"bad sysctl {key!r}: allowed are net.* keys, e.g. net.ipv4.conf.all.arp_ignore")
        self.sysctls[key] = str(value)
        if self.netns is not None:
            self._write_sysctl(key, str(value))
        return self

    def _write_sysctl(self, key: str, value: str) -> None:
        assert self.netns is not None
        path = "/proc/sys/" + key.replace(".", "/")
        with self.netns.entered():
            # /proc/sys/net shows the namespace of the thread that opens it.
            with open(path, "w") as f:
                f.write(value)

    def iproute(self):  # -> pyroute2.IPRoute
        if self.netns is None:
            raise LabError(f"namespace {self.role!r} is not up")
        return self.netns.iproute()

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        if self.netns is None:
            raise LabError(f"namespace {self.role!r} is not up")
        return self.netns.socket(family, type, proto)


class Topology:
    """A set of namespaces joined by veths; `up()` builds all of it, `down()` removes all of it.

    >>> t = Topology()
    >>> sb, peer = t.namespace("sb"), t.namespace("peer")
    >>> t.veth(sb, "eth0", peer, "peer0", mtu=1500)
    >>> sb.addr("eth0", "198.18.0.2/24").route("default", via="198.18.0.1")
    >>> with t: ...
    """

    def __init__(self) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self._up = False

    def namespace(self, role: str) -> Namespace:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", role):
            raise LabInputError(f"bad namespace role {role!r}: allowed are 1-12 lowercase letters/digits")
        if role in self.namespaces:
            return self.namespaces[role]
        ns = self.namespaces[role] = Namespace(self, role)
        return ns

    def __getitem__(self, role: str) -> Namespace:
        return self.namespaces[role]

    def veth(
        self,
        a: Namespace,
        a_name: str,
        b: Namespace,
        b_name: str,
        *,
        mtu: int | None = None,
        a_mac: str | None = None,
        b_mac: str | None = None,
        **link_options: Any,
    ) -> tuple[Link, Link]:
        """Declare a veth pair with one end in each namespace (both may be the same one)."""
        la = a._link(a_name, mac=a_mac, mtu=mtu, **link_options)
        lb = b._link(b_name, mac=b_mac, mtu=mtu, **link_options)
        la.peer, lb.peer = lb, la
        return la, lb

    # -- building -------------------------------------------------------------------------

    def up(self) -> Topology:
        if self._up:
            return self
        janitor.track(self)
        self._up = True
        try:
            for ns in self.namespaces.values():
                ns.netns = NetNS.create(owner.new_name(ns.role))
            for ns in self.namespaces.values():
                self._configure(ns)
        except BaseException:
            self.down()
            raise
        return self

    def _configure(self, ns: Namespace) -> None:
        assert ns.netns is not None
        ipr = ns.iproute()
        try:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            for link in ns.links.values():
                if link.peer is not None and link.peer.index is None and link.index is None:
                    self._make_veth(ipr, link)
            for key, value in ns.sysctls.items():
                ns._write_sysctl(key, value)
            for link in ns.links.values():
                if not link.ipv6:
                    ns._write_sysctl(f"net.ipv6.conf.{link.name}.disable_ipv6", "1")
                if link.tx_checksum is not None:
                    set_tx_checksum(ns.netns, link.name, link.tx_checksum)
                for a in link.addresses:
                    flags = IFA_F_NODAD if a.version == 6 else 0
                    ipr.addr("add", index=link.index, address=str(a.ip), prefixlen=a.network.prefixlen, flags=flags)
                if link.up:
                    ipr.link("set", index=link.index, state="up")
            for r in ns.routes:
                self._add_route(ipr, ns, r)
        except LabError:
            raise
        except Exception as exc:
            raise LabError(f"building namespace {ns.role!r} ({ns.name}): {exc}") from exc
        finally:
            ipr.close()

    @staticmethod
    def _make_veth(ipr: Any, link: Link) -> None:
        peer = link.peer
        assert peer is not None and peer.ns.netns is not None
        peer_spec: dict[str, Any] = {"ifname": peer.name}
        if peer.ns is not link.ns:
            peer_spec["net_ns_fd"] = str(peer.ns.netns.path)
        if peer.mac:
            peer_spec["address"] = peer.mac
        if peer.mtu:
            peer_spec["mtu"] = peer.mtu
        spec: dict[str, Any] = {"ifname": link.name, "kind": "veth", "peer": peer_spec}
        if link.mac:
            spec["address"] = link.mac
        if link.mtu:
            spec["mtu"] = link.mtu
        ipr.link("add", **spec)
        link.index = ipr.link_lookup(ifname=link.name)[0]
        with peer.ns.iproute() as pipr:
            peer.index = pipr.link_lookup(ifname=peer.name)[0]
            if peer.mac is None:
                peer.mac = pipr.get_links(peer.index)[0].get("IFLA_ADDRESS")
        if link.mac is None:
            link.mac = ipr.get_links(link.index)[0].get("IFLA_ADDRESS")

    @staticmethod
    def _add_route(ipr: Any, ns: Namespace, r: Route) -> None:
        spec: dict[str, Any] = {
            "dst": str(r.dst.network_address),
            "dst_len": r.dst.prefixlen,
            "family": socket.AF_INET6 if r.dst.version == 6 else socket.AF_INET,
        }
        if r.via is not None:
            spec["gateway"] = str(r.via)
        if r.dev is not None:
            spec["oif"] = ns.link(r.dev).index
        if r.metric is not None:
            spec["priority"] = r.metric
        if r.dst.prefixlen == 0:
            spec.pop("dst")
        ipr.route("add", **spec)

    def down(self) -> None:
        """Remove every namespace this topology made, killing what still runs in them first."""
        errors = []
        for ns in self.namespaces.values():
            if ns.netns is None:
                continue
            try:
                kill_namespace_processes(ns.netns)
                ns.netns.delete()
            except Exception as exc:
                errors.append(f"{ns.netns.name}: {exc}")
            ns.netns = None
            for link in ns.links.values():
                link.index = None
        self._up = False
        janitor.untrack(self)
        if errors:
            raise LabError("teardown left resources behind: " + "; ".join(errors))

    close = down

    def __enter__(self) -> Topology:
        return self.up()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.down()
