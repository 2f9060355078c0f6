"""Rtnetlink requests sent as one batch per namespace, like `ip -batch`.

pyroute2's IPRoute spends most of its time in its own event loop, once per request; a topology
needs a dozen requests per namespace. Here the requests are pyroute2 messages (pyroute2 does all
encoding), written to one netlink socket in a single send, and the kernel's acks are read back
in order. A failed request is reported with what it was meant to do.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    nlmsg,
    nlmsgerr,
)
from pyroute2.netlink.rtnl import (
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    rt_proto,
    rt_type,
)
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_TENTATIVE, ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, rtmsg

from labkit.errors import LabError
from labkit.net.netns import NetNS
from labkit.net.nlmsg import split

RT_TABLE_MAIN = 254  # pyroute2 names the scopes, protocols and types, but not the tables
RTPROT_BOOT = rt_proto["boot"]
RTN_UNICAST = rt_type["unicast"]
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK
# Requests in flight at once. The kernel charges each ACK's whole buffer to the socket (832
# bytes here, not its 36), so 256 fill the default 212992-byte receive buffer exactly, and 300
# overrun it (ENOBUFS); 64 leave room for a kernel that charges more.
COMMIT_WINDOW = 64
ACK_TIMEOUT = 10.0  # seconds the kernel may take to acknowledge one window


@dataclass
class Batch:
    """Requests for one namespace; `commit()` sends them all and checks every ack."""

    ns: NetNS
    what: list[str] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)  # namespace fds named in requests, open until sent

    def _add(self, msg: nlmsg, kind: int, flags: int, what: str) -> None:
        msg["header"] = {"type": kind, "flags": flags}
        msg.encode()
        self.data.append(bytes(msg.data))
        self.what.append(what)

    def link_up(self, index: int, name: str) -> Batch:
        msg = ifinfmsg()
        msg["index"], msg["flags"], msg["change"] = index, IFF_UP, IFF_UP
        self._add(msg, RTM_NEWLINK, CHANGE, f"ip link set {name} up")
        return self

    def veth(
        self, name: str, index: int, mac: str, mtu: int | None, peer: str, peer_index: int, peer_mac: str, peer_ns: NetNS | None
    ) -> Batch:
        def attrs(ifname: str, address: str) -> list[tuple[str, object]]:
            out: list[tuple[str, object]] = [("IFLA_IFNAME", ifname), ("IFLA_ADDRESS", address)]
            return out + ([("IFLA_MTU", mtu)] if mtu else [])

        peer_attrs = attrs(peer, peer_mac)
        if peer_ns is not None:
            self.fds.append(peer_ns.open())
            peer_attrs.append(("IFLA_NET_NS_FD", self.fds[-1]))
        msg = ifinfmsg()
        msg["index"] = index
        msg["attrs"] = [
            *attrs(name, mac),
            (
                "IFLA_LINKINFO",
                {
                    "attrs": [
                        ("IFLA_INFO_KIND", "veth"),
                        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"index": peer_index, "attrs": peer_attrs})]}),
                    ]
                },
            ),
        ]
        self._add(msg, RTM_NEWLINK, CREATE, f"ip link add {name} type veth peer name {peer}")
        return self

    def addr(self, index: int, name: str, address: str, prefixlen: int, family: int, flags: int = 0) -> Batch:
        msg = ifaddrmsg()
        msg["family"], msg["prefixlen"], msg["index"], msg["flags"] = family, prefixlen, index, flags
        msg["attrs"] = (
            [("IFA_LOCAL", address), ("IFA_ADDRESS", address)] if family == socket.AF_INET else [("IFA_ADDRESS", address)]
        )
        self._add(msg, RTM_NEWADDR, CREATE, f"ip addr add {address}/{prefixlen} dev {name}")
        return self

    def route(
        self, family: int, dst: str | None, dst_len: int, gateway: str | None, oif: int | None, metric: int | None, text: str
    ) -> Batch:
        msg = rtmsg()
        msg["family"], msg["dst_len"], msg["table"] = family, dst_len, RT_TABLE_MAIN
        msg["proto"], msg["type"] = RTPROT_BOOT, RTN_UNICAST
        msg["scope"] = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        attrs: list[tuple[str, object]] = []
        if dst is not None and dst_len:
            attrs.append(("RTA_DST", dst))
        if gateway is not None:
            attrs.append(("RTA_GATEWAY", gateway))
        if oif is not None:
            attrs.append(("RTA_OIF", oif))
        if metric is not None:
            attrs.append(("RTA_PRIORITY", metric))
        msg["attrs"] = attrs
        self._add(msg, RTM_NEWROUTE, CREATE, f"ip route add {text}")
        return self

    def commit(self) -> None:
        """Send the requests, COMMIT_WINDOW at a time: every request is acknowledged, and the
        acknowledgements of a thousand routes sent at once would overrun the socket (ENOBUFS)."""
        if not self.data:
            return
        sock = self.ns.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        try:
            sock.bind((0, 0))
            done = 0
            while done < len(self.data):
                window = self.data[done : done + COMMIT_WINDOW]
                sock.sendall(b"".join(window))
                done = self._acknowledged(sock, done, done + len(window))
        finally:
            sock.close()
            self.discard()

    def _acknowledged(self, sock: socket.socket, done: int, pending: int) -> int:
        deadline = time.monotonic() + ACK_TIMEOUT
        while done < pending:
            if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise LabError(f"{self.what[done]} in {self.ns.name}: no acknowledgement within {ACK_TIMEOUT:g}s")
            for kind, data in _messages(sock.recv(1 << 16), self.ns):
                if kind == NLMSG_ERROR:
                    reply = nlmsgerr(data)
                    reply.decode()
                    if reply["error"]:
                        raise LabError(f"{self.what[done]} in {self.ns.name}: {os.strerror(-reply['error'])}")
                    done += 1
        return done

    def discard(self) -> None:
        """Drop unsent requests and close the namespace fds they named."""
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.data.clear()
        self.what.clear()


def _messages(buf: bytes, ns: NetNS) -> Iterator[tuple[int, bytes]]:
    """(type, bytes) of each message the kernel sent; a malformed one is the lab's failure."""
    for header, data in split(buf):
        if len(data) != header.length:
            raise LabError(f"a malformed netlink message from the kernel in {ns.name}: {data[:64].hex()}")
        yield header.type, data


def _watch(ns: NetNS, groups: int, request: nlmsg, timeout: float, timed_out: Callable[[], str]) -> Iterator[tuple[int, bytes]]:
    """Subscribe to `groups`, then send the dump `request` (so no change can fall in between),
    and yield every message of either until the caller has what it waits for; after `timeout`
    s without it, LabError with `timed_out()`."""
    sock = ns.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    try:
        sock.bind((0, groups))
        request.encode()
        sock.send(bytes(request.data))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise LabError(timed_out())
            yield from _messages(sock.recv(1 << 16), ns)
    finally:
        sock.close()


def wait_operational(ns: NetNS, links: dict[int, str], timeout: float = 10.0) -> None:
    """Return once every link in `links` (ifindex -> name) reports operstate UP.

    A link set up is not yet usable: until linkwatch attaches its qdisc (later under load) it
    drops what it is given. Waiting here, on the kernel's link notifications, means a test's
    first frame is never lost to that. Bounded: a link still not up names itself in the error.
    """
    pending = dict(links)
    if not pending:
        return
    request = ifinfmsg()
    request["header"] = {"type": RTM_GETLINK, "flags": NLM_F_REQUEST | NLM_F_DUMP}
    late = lambda: f"links not operational in {ns.name} after {timeout:g}s: {', '.join(sorted(pending.values()))}"
    for kind, data in _watch(ns, RTMGRP_LINK, request, timeout, late):
        if kind == RTM_NEWLINK:
            msg = ifinfmsg(data)
            msg.decode()
            if msg.get_attr("IFLA_OPERSTATE") == "UP":
                pending.pop(msg["index"], None)
                if not pending:
                    return


def wait_address(ns: NetNS, ifindex: int, family: int, accept: Callable[[str], bool], timeout: float = 10.0) -> str:
    """The first address of `family` on link `ifindex` that `accept`s and is no longer tentative
    (e.g. one IPv6 autoconfiguration gives it), waited for on the kernel's address notifications."""
    v4 = family == socket.AF_INET
    request = ifaddrmsg()
    request["header"] = {"type": RTM_GETADDR, "flags": NLM_F_REQUEST | NLM_F_DUMP}
    request["family"] = family
    seen: list[str] = []
    late = lambda: (
        f"no {'IPv4' if v4 else 'IPv6'} address as wanted on ifindex {ifindex} in {ns.name} after {timeout:g}s; seen: {seen or 'none'}"
    )
    for kind, data in _watch(ns, RTMGRP_IPV4_IFADDR if v4 else RTMGRP_IPV6_IFADDR, request, timeout, late):
        if kind != RTM_NEWADDR:
            continue
        msg = ifaddrmsg(data)
        msg.decode()
        flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
        address = msg.get_attr("IFA_ADDRESS")
        if msg["index"] != ifindex or not address:
            continue
        seen.append(f"{address}/{msg['prefixlen']}{' (tentative)' if flags & IFA_F_TENTATIVE else ''}")
        if not flags & IFA_F_TENTATIVE and accept(address):
            return f"{address}/{msg['prefixlen']}"
    raise AssertionError("unreachable: _watch ends only by raising")
