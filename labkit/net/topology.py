"""Topologies: namespaces, veth pairs, addresses and routes, declared first and built in one call.

Everything the lab builds lives inside namespaces it created: a veth is made inside one lab
namespace with its peer placed straight into another, so the root namespace is never changed and
deleting the namespaces removes every link, address and route with them.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from labkit.errors import LabError, LabInputError
from labkit.lifecycle import janitor, owner
from labkit.lifecycle.process import kill_namespace_processes
from labkit.net import rtnl
from labkit.net.addressing import IPInterface, IPNetwork, lab_address, lab_interface, lab_network
from labkit.net.ethtool import set_tx_checksum
from labkit.net.netns import NetNS

IFNAMSIZ = 16
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
FIRST_IFINDEX = 100


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


def random_mac() -> str:
    """A locally administered unicast MAC, so a link's address is known without asking the kernel."""
    rest = secrets.token_bytes(5)
    return "02:" + ":".join(f"{b:02x}" for b in rest)


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
    await_up: bool = False  # up() waits until this end is UP too (a kernel host that must answer at once)
    addresses: list[IPInterface] = field(default_factory=list)
    peer: Link | None = None
    creates_pair: bool = False  # this end's namespace asks for the veth pair (the end declared first)
    index: int | None = None  # known after build

    def addr(self, cidr: str) -> Link:
        """Add an address (`ip addr add CIDR dev NAME`); IPv6 ones skip DAD so they work at once."""
        self.addresses.append(lab_interface(cidr))
        return self

    @property
    def ipv4(self) -> list[ipaddress.IPv4Interface]:
        return [a for a in self.addresses if isinstance(a, ipaddress.IPv4Interface)]

    @property
    def ipv6_addresses(self) -> list[ipaddress.IPv6Interface]:
        return [a for a in self.addresses if isinstance(a, ipaddress.IPv6Interface)]


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

    def iproute(self) -> IPRoute:
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
        la.creates_pair = True
        return la, lb

    # -- building -------------------------------------------------------------------------

    def up(self) -> Topology:
        """Build everything: namespaces, then links, then settings, then addresses and routes.

        Each phase is one rtnetlink batch per namespace; a failure rolls everything back.
        """
        if self._up:
            return self
        janitor.track(self)
        self._up = True
        try:
            for ns in self.namespaces.values():
                ns.netns = NetNS.create(owner.new_name(ns.role))
            self._assign_indexes()
            batches = {role: rtnl.Batch(ns.netns) for role, ns in self.namespaces.items()}  # type: ignore[arg-type]
            try:
                for role, ns in self.namespaces.items():
                    batches[role].link_up(1, "lo")
                    for link in ns.links.values():
                        if link.creates_pair:
                            self._veth_request(batches[role], link)
                self._commit(batches)
                for ns in self.namespaces.values():
                    self._settings(ns)
                for role, ns in self.namespaces.items():
                    self._addresses_and_routes(batches[role], ns)
                self._commit(batches)
                self._wait_live_ends()
            finally:
                for batch in batches.values():
                    batch.discard()  # an fd left open would keep a deleted namespace alive
        except BaseException:
            self.down()
            raise
        return self

    def _wait_live_ends(self) -> None:
        """Wait until the end of each veth that came up first, and each `await_up` end, is UP.

        The end that came up first had no carrier then: it keeps the noop qdisc, which drops
        everything, until linkwatch activates it. That is prompt, but late under load. The other
        end gets its qdisc at once, but IPv6 counts it ready only once linkwatch reports it UP,
        which can take a second: until then its addresses stay tentative and it answers no
        neighbour solicitation. Ends where a kernel host must answer at once ask for that wait
        with `await_up`. Linkwatch sets operstate UP in the same step, so the wait is on that
        notification.
        """
        order = {id(ns): i for i, ns in enumerate(self.namespaces.values())}
        for ns in self.namespaces.values():
            live: dict[int, str] = {}
            for link in ns.links.values():
                peer = link.peer
                if peer is None or not (link.up and peer.up) or link.index is None:
                    continue
                mine, theirs = (order[id(ns)], link.index), (order[id(peer.ns)], peer.index or 0)
                if mine < theirs or link.await_up:  # namespaces commit in declaration order, links by index
                    live[link.index] = link.name
            rtnl.wait_operational(ns.netns, live)  # type: ignore[arg-type]

    def _assign_indexes(self) -> None:
        # Choosing ifindexes ourselves saves a lookup per link. A new namespace holds lo (1) and,
        # when tunnel modules are loaded, their fallback devices (low indexes): start well above.
        next_index = {role: FIRST_IFINDEX for role in self.namespaces}
        for role, ns in self.namespaces.items():
            for link in ns.links.values():
                link.index = next_index[role]
                next_index[role] += 1
                if link.mac is None:
                    link.mac = random_mac()

    @staticmethod
    def _veth_request(batch: rtnl.Batch, link: Link) -> None:
        peer = link.peer
        assert peer is not None and peer.ns.netns is not None and link.index and peer.index and link.mac and peer.mac
        if link.mtu != peer.mtu:
            raise LabInputError(f"veth {link.name}/{peer.name}: both ends need the same MTU, got {link.mtu} and {peer.mtu}")
        batch.veth(
            link.name,
            link.index,
            link.mac,
            link.mtu,
            peer.name,
            peer.index,
            peer.mac,
            None if peer.ns is link.ns else peer.ns.netns,
        )

    def _commit(self, batches: dict[str, rtnl.Batch]) -> None:
        for role, batch in batches.items():
            try:
                batch.commit()
            except LabError as exc:
                raise LabError(f"building namespace {role!r}: {exc}") from None

    @staticmethod
    def _settings(ns: Namespace) -> None:
        assert ns.netns is not None
        for key, value in ns.sysctls.items():
            ns._write_sysctl(key, value)
        for link in ns.links.values():
            if not link.ipv6:
                ns._write_sysctl(f"net.ipv6.conf.{link.name}.disable_ipv6", "1")
            if link.tx_checksum is not None:
                set_tx_checksum(ns.netns, link.name, link.tx_checksum)

    @staticmethod
    def _addresses_and_routes(batch: rtnl.Batch, ns: Namespace) -> None:
        for link in ns.links.values():
            assert link.index is not None
            for a in link.addresses:
                family = socket.AF_INET6 if a.version == 6 else socket.AF_INET
                batch.addr(link.index, link.name, str(a.ip), a.network.prefixlen, family, IFA_F_NODAD if a.version == 6 else 0)
            if link.up:
                batch.link_up(link.index, link.name)
        for r in ns.routes:
            family = socket.AF_INET6 if r.dst.version == 6 else socket.AF_INET
            oif = ns.link(r.dev).index if r.dev is not None else None
            text = f"{r.dst}" + (f" via {r.via}" if r.via else "") + (f" dev {r.dev}" if r.dev else "")
            batch.route(family, str(r.dst.network_address), r.dst.prefixlen, str(r.via) if r.via else None, oif, r.metric, text)

    def down(self) -> None:
        """Remove every namespace this topology made, killing what still runs in them first."""
        errors = []
        for ns in self.namespaces.values():
            if ns.netns is None:
                continue
            try:
                kill_namespace_processes(ns.netns)
            except LabError as exc:
                # A process survived: the name stays, so the namespace is not hidden while it lives
                # on, and `labkit clean` finds it once this run has ended.
                errors.append(f"{exc}; the namespace is left in place")
            except Exception as exc:
                errors.append(f"{ns.netns.name}: {exc}")
            else:
                try:
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
