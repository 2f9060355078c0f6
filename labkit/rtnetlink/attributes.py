"""Every attribute of an rtnetlink answer, read from its bytes, and compared kernel against stack.

pyroute2 decodes the attributes it knows and calls the others UNKNOWN, so a comparison of its
decoded values cannot see an attribute that one side sends and pyroute2 has no name for: a stack
that leaves out IFLA_PARENT_DEV_NAME, or sends a number the kernel never uses, would pass. Here
each answer message's raw bytes are walked into (attribute number, payload) themselves, into the
containers the kernel nests (IFLA_AF_SPEC, IFLA_LINKINFO, IFLA_PROP_LIST ...), and named from
pyroute2's tables where it has a name, else "type N". Arrays of s32 (the per-device sysctls in
IFLA_INET_CONF / IFLA_INET6_CONF) are split into elements, so a difference names the sysctl.

Two namespaces of one kernel legitimately differ in some values: counters, timestamps, the index
of a link in another namespace, netns ids. Those are compared by presence alone, or normalised
(an interface index becomes the link's name); everything else is compared byte for byte.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ifstatsmsg import ifstatsmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from labkit.net.nlmsg import align
from labkit.rtnetlink.differ import Difference, Normaliser
from labkit.rtnetlink.probe import Answer, Message, netconfmsg

NLA = struct.Struct("=HH")  # struct nlattr: length, type
NLA_TYPE_MASK = 0x3FFF  # the type without NLA_F_NESTED and NLA_F_NET_BYTEORDER
AF_INET, AF_INET6, AF_BRIDGE, AF_MPLS = 2, 10, 7, 28


@dataclass
class Table:
    """The attributes at one level: their names, the ones that are containers worth walking
    into, and the ones that are arrays of s32."""

    names: dict[int, str]
    nested: dict[int, Table] = field(default_factory=dict)
    arrays: frozenset[int] = frozenset()


def names_of(nla_map: Any) -> dict[int, str]:
    """number -> name from a pyroute2 nla_map: ((name, type), ...) numbered by position, or
    ((number, name, type), ...)."""
    out: dict[int, str] = {}
    for position, entry in enumerate(nla_map):
        if len(entry) == 3 and isinstance(entry[0], int):
            out[entry[0]] = entry[1]
        else:
            out[position] = entry[0]
    return out


def _body_size(cls: Any) -> int:
    """The fixed part before the attributes, from the pyroute2 class's fields (padded to 4, as
    the kernel pads it: netconfmsg's one byte takes four)."""
    return align(struct.calcsize("=" + "".join(fmt for _, fmt in cls.fields)))


_INET6 = Table(names_of(ifinfmsg.af_spec_inet.inet6.nla_map) | {9: "IFLA_INET6_RA_MTU"}, arrays=frozenset({2}))
_AF_SPEC = Table(
    {AF_INET: "AF_INET", AF_INET6: "AF_INET6", AF_BRIDGE: "AF_BRIDGE", AF_MPLS: "AF_MPLS"},
    nested={AF_INET: Table({1: "IFLA_INET_CONF"}, arrays=frozenset({1})), AF_INET6: _INET6},
)
_LINK = Table(
    names_of(ifinfmsg.nla_map),
    nested={
        18: Table(names_of(ifinfmsg.ifinfo.nla_map)),  # IFLA_LINKINFO: kind, slave kind (their data: bytes)
        26: _AF_SPEC,  # IFLA_AF_SPEC
        43: Table(names_of(ifinfmsg.xdp.nla_map)),  # IFLA_XDP
        52: Table(names_of(ifinfmsg.proplist.nla_map)),  # IFLA_PROP_LIST: alternative names
        55: Table(names_of(ifinfmsg.down_reason.nla_map)),  # IFLA_PROTO_DOWN_REASON
    },
)
_STATS = Table(
    names_of(ifstatsmsg.nla_map),
    nested={
        5: Table({AF_MPLS: "AF_MPLS"}),  # IFLA_STATS_AF_SPEC
        4: Table({1: "IFLA_OFFLOAD_XSTATS_CPU_HIT", 2: "IFLA_OFFLOAD_XSTATS_HW_S_INFO", 3: "IFLA_OFFLOAD_XSTATS_L3_STATS"}),
    },
)
# Each answer type: the size of its fixed part and its attributes.
SCHEMAS: dict[str, tuple[int, Table]] = {
    "RTM_NEWLINK": (_body_size(ifinfmsg), _LINK),
    "RTM_NEWADDR": (_body_size(ifaddrmsg), Table(names_of(ifaddrmsg.nla_map))),
    "RTM_NEWROUTE": (_body_size(rtmsg), Table(names_of(rtmsg.nla_map), nested={8: Table(names_of(rtmsg.metrics.nla_map))})),
    "RTM_NEWNEIGH": (_body_size(ndmsg), Table(names_of(ndmsg.nla_map))),
    "RTM_NEWRULE": (_body_size(fibmsg), Table(names_of(fibmsg.nla_map))),
    "RTM_NEWNETCONF": (_body_size(netconfmsg), Table(names_of(netconfmsg.nla_map))),
    "RTM_NEWSTATS": (_body_size(ifstatsmsg), _STATS),
    "RTM_NEWNSID": (_body_size(nsidmsg), Table(names_of(nsidmsg.nla_map))),
}
CONTAINER = b""  # a container's own entry: present; its content is in the entries below it
MALFORMED = "(malformed)"


def walk(message: Message) -> dict[str, bytes]:
    """path -> payload for every attribute of the message ("IFLA_AF_SPEC/AF_INET6/IFLA_INET6_FLAGS"),
    containers included (payload CONTAINER); a second attribute of one type is "NAME#2". Bytes
    that do not parse as attributes end the walk of their level with a MALFORMED entry."""
    schema = SCHEMAS.get(message.type)
    if schema is None:
        return {}
    size, table = schema
    raw = bytes.fromhex(message.raw)
    return dict(_walk(raw[16 + size :], table, ""))


def _walk(data: bytes, table: Table, prefix: str) -> Iterator[tuple[str, bytes]]:
    seen: dict[str, int] = {}
    offset = 0
    while offset < len(data):
        if offset + NLA.size > len(data):
            yield prefix + MALFORMED, data[offset:]
            return
        length, type_ = NLA.unpack_from(data, offset)
        if length < NLA.size or offset + length > len(data):
            yield prefix + MALFORMED, data[offset:]
            return
        number = type_ & NLA_TYPE_MASK
        name = table.names.get(number, f"type {number}")
        seen[name] = seen.get(name, 0) + 1
        path = prefix + (name if seen[name] == 1 else f"{name}#{seen[name]}")
        payload = data[offset + NLA.size : offset + length]
        if number in table.nested:
            yield path, CONTAINER
            yield from _walk(payload, table.nested[number], path + "/")
        elif number in table.arrays:
            yield path, CONTAINER
            for i in range(len(payload) // 4):
                yield f"{path}[{i}]", payload[4 * i : 4 * i + 4]
        else:
            yield path, payload
        offset += align(length)


def _lifetimes(payload: bytes) -> Any:
    """IFA_CACHEINFO: the preferred and valid lifetimes, not when the address was made or changed."""
    return payload[:8].hex()


def _route_cacheinfo(payload: bytes) -> Any:
    """RTA_CACHEINFO (struct rta_cacheinfo): whether the route expires, and its error; not when it
    was last used, how often, or the clock its expiry counts on."""
    if len(payload) < 16:
        return payload
    expires, error = struct.unpack_from("=iI", payload, 8)
    return {"expires": expires != 0, "error": error}


def _inet6_cacheinfo(payload: bytes) -> Any:
    """IFLA_INET6_CACHEINFO (struct ifla_cacheinfo): max_reasm_len and retrans_time; not the
    timestamp, nor reachable_time, which the kernel draws at random."""
    return payload[0:4].hex() + payload[12:16].hex() if len(payload) >= 16 else payload


def _netconf_ifindex(payload: bytes) -> Any:
    """NETCONFA_IFINDEX: a link, or NETCONFA_IFINDEX_ALL (-1) / _DEFAULT (-2)."""
    (value,) = struct.unpack("=i", payload) if len(payload) == 4 else (None,)
    return {-1: "all", -2: "default"}.get(value, ("ifindex", value))


def _nsid(payload: bytes) -> Any:
    """NETNSA_NSID: whether the namespace has an id here (-1: NETNSA_NSID_NOT_ASSIGNED), not which:
    a namespace numbers its peers in the order it meets them."""
    return "not assigned" if payload == b"\xff\xff\xff\xff" else "assigned" if len(payload) == 4 else payload


# How a value that legitimately differs between two namespaces is compared: "presence" (only that
# it is there), "ifindex" (the interface it names), or a function of the payload. Counters and
# timestamps were seen differing between two namespaces of one kernel with the same topology;
# the carrier counts are the history of how the lab built the link, and indexes and ids of other
# namespaces are that namespace's numbering, so neither says anything about the stack.
VOLATILE: list[tuple[str, str | Callable[[bytes], Any]]] = [
    ("IFLA_STATS", "presence"),  # counters
    ("IFLA_STATS64", "presence"),
    ("IFLA_CARRIER_CHANGES", "presence"),  # how often the carrier came and went while the lab built the link
    ("IFLA_CARRIER_UP_COUNT", "presence"),
    ("IFLA_CARRIER_DOWN_COUNT", "presence"),
    ("IFLA_LINK", "presence"),  # the veth peer's index, in another namespace
    ("IFLA_LINK_NETNSID", "presence"),  # that namespace's id, as this one numbers it
    ("IFLA_MASTER", "ifindex"),
    ("IFLA_AF_SPEC/AF_INET6/IFLA_INET6_STATS", "presence"),
    ("IFLA_AF_SPEC/AF_INET6/IFLA_INET6_ICMP6STATS", "presence"),
    ("IFLA_AF_SPEC/AF_INET6/IFLA_INET6_CACHEINFO", _inet6_cacheinfo),
    ("IFA_CACHEINFO", _lifetimes),
    ("RTA_OIF", "ifindex"),
    ("RTA_IIF", "ifindex"),
    ("RTA_CACHEINFO", _route_cacheinfo),
    ("NDA_CACHEINFO", "presence"),  # when the entry was confirmed, used, updated
    ("NDA_PROBES", "presence"),
    ("NETCONFA_IFINDEX", _netconf_ifindex),
    ("IFLA_STATS_LINK_64", "presence"),  # RTM_NEWSTATS: counters
    ("IFLA_STATS_LINK_XSTATS*", "presence"),
    ("IFLA_STATS_LINK_OFFLOAD_XSTATS/*", "presence"),
    ("IFLA_STATS_AF_SPEC/*", "presence"),
    ("NETNSA_NSID", _nsid),
]


def _how(path: str) -> str | Callable[[bytes], Any] | None:
    bare = "/".join(part.split("#")[0] for part in path.split("/"))
    return next((how for pattern, how in VOLATILE if fnmatch.fnmatchcase(bare, pattern)), None)


def comparable(path: str, payload: bytes, normaliser: Normaliser) -> Any:
    """What of a payload is compared: the bytes, or what VOLATILE keeps of them."""
    how = _how(path)
    if how is None:
        return payload
    if how == "presence":
        return "present"
    if how == "ifindex":
        return normaliser.name(struct.unpack("=I", payload)[0]) if len(payload) == 4 else payload
    assert callable(how)
    value = how(payload)
    if isinstance(value, tuple) and value[:1] == ("ifindex",):
        return normaliser.name(value[1])
    return value


_ADDRESSES = ("_DST", "_SRC", "_GATEWAY", "_PREFSRC", "_ADDRESS", "_LOCAL", "_BROADCAST", "_ANYCAST", "_MULTICAST")


def show(path: str, value: Any, values: dict[str, Any] | None = None) -> Any:
    """A compared value as a reader wants it: an address, a string, a number, else hex; a
    container as what it holds, when `values` (its record's) are given."""
    if not isinstance(value, bytes):
        return value
    if value == CONTAINER:
        inside = [p[len(path) :].lstrip("/") for p in (values or {}) if _parent(p) == path]
        return f"present, holding {len(inside)}: {', '.join(inside[:6])}" if inside else "present"
    name = path.rsplit("/", 1)[-1].split("#")[0].split("[")[0]
    if name.endswith(_ADDRESSES) and len(value) in (4, 16):
        return str(ipaddress.ip_address(value))
    if len(value) > 1 and value.endswith(b"\x00") and value[:-1].isascii() and value[:-1].decode().isprintable():
        return value[:-1].decode()
    if len(value) in (1, 2, 4, 8):
        return int.from_bytes(value, "little", signed=len(value) == 4 and "[" in path)
    return value.hex()


@dataclass
class Attributes:
    """One record's attributes, compared values, keyed and labelled as differ.Normaliser has it."""

    key: tuple
    label: str
    values: dict[str, Any]


def records(answer: Answer, normaliser: Normaliser) -> list[Attributes]:
    out = []
    for m in answer.payload():
        if not m.type.startswith("RTM_"):
            continue
        record = normaliser.record(m)
        values = {path: comparable(path, payload, normaliser) for path, payload in walk(m).items()}
        out.append(Attributes(record.key, record.label(), values))
    return out


def _parent(path: str) -> str | None:
    """The container a path is inside: "A/B" for "A/B/C" and for the array element "A/B[3]"."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rsplit("/", 1)[0] if "/" in path else None


def _inside_a_missing_container(path: str, values: dict[str, Any]) -> bool:
    parent = _parent(path)
    return parent is not None and parent not in values


def diff_attributes(kernel: list[Attributes], stack: list[Attributes]) -> list[Difference]:
    """Per record both sides list (the n-th of a key with the n-th): the attributes only one side
    sent, with their values (a container one side lacks once, not each thing inside it), and the
    values that differ. Records one side lacks are the record checks' business."""
    by_key: dict[tuple, list[Attributes]] = {}
    for r in stack:
        by_key.setdefault(r.key, []).append(r)
    out = []
    for a in kernel:
        if not by_key.get(a.key):
            continue
        b = by_key[a.key].pop(0)
        for path in sorted(a.values.keys() | b.values.keys()):
            mine, theirs = a.values.get(path), b.values.get(path)
            if path not in b.values:
                if not _inside_a_missing_container(path, b.values):
                    out.append(Difference(a.label, path, show(path, mine, a.values), "absent"))
            elif path not in a.values:
                if not _inside_a_missing_container(path, a.values):
                    out.append(Difference(a.label, path, "absent", show(path, theirs, b.values)))
            elif mine != theirs:
                out.append(Difference(a.label, path, show(path, mine), show(path, theirs)))
    return out


def differences(
    kernel: Answer,
    stack: Answer,
    kernel_norm: Normaliser,
    stack_norm: Normaliser,
    keep: Callable[[Attributes], bool] = lambda record: True,
    none_in_common: bool = True,
) -> list[Difference]:
    """The attributes of the records both answers list (of the kernel's, those `keep` keeps). If the
    kernel listed some and the stack none of them, that is the difference (`none_in_common`): a
    check about attributes must not pass on an answer that has no records to compare."""
    mine = [r for r in records(kernel, kernel_norm) if keep(r)]
    theirs = records(stack, stack_norm)
    keys = {r.key for r in theirs}
    if none_in_common and mine and not any(r.key in keys for r in mine):
        listed = sorted({r.label for r in theirs})
        return [Difference(kernel.request, "records to compare attributes on", [r.label for r in mine][:5], listed[:5])]
    return diff_attributes(mine, theirs)


def top_level_names(message: Message) -> list[str]:
    """The message's own attributes by name or "type N" (for the support table)."""
    return sorted({path.split("#")[0] for path in walk(message) if "/" not in path and "[" not in path})
