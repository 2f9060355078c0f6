"""Compare two stacks' rtnetlink answers: normalise what may rightly differ, then say what differs.

Two namespaces with the same topology still differ in things that carry no meaning: interface
indexes (the kernel's start at 1 or wherever the lab put them, a sandbox numbers its own),
timestamps and counters, the order of a dump. A record keeps what a client relies on, with
interface indexes replaced by names, and is keyed by what identifies it (a link by name, an
address by interface and prefix, a route by table, destination and interface), so a differ can
say "route 198.19.64.0/24 in main: RTA_GATEWAY kernel 198.18.0.1, gvisor absent".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NAMES as PYROUTE2_IFA_F
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_TENTATIVE
from pyroute2.netlink.rtnl.ifinfmsg import IFF_NAMES as PYROUTE2_IFF

from labkit.rtnetlink.probe import Answer, Message

# The attributes container tooling reads (ip, pyroute2, CNI plugins, Go's netlink); a difference
# in one of them is a difference. Others are recorded (see attribute_names) but not compared.
COMPARED_ATTRS = {
    "RTM_NEWLINK": ("IFLA_IFNAME", "IFLA_MTU", "IFLA_ADDRESS", "IFLA_BROADCAST", "IFLA_OPERSTATE", "IFLA_TXQLEN"),
    "RTM_NEWADDR": ("IFA_ADDRESS", "IFA_LOCAL", "IFA_LABEL", "IFA_BROADCAST"),
    "RTM_NEWROUTE": ("RTA_DST", "RTA_GATEWAY", "RTA_OIF", "RTA_PREFSRC", "RTA_PRIORITY", "RTA_TABLE"),
    "RTM_NEWNEIGH": ("NDA_DST", "NDA_LLADDR"),
    "RTM_NEWRULE": ("FRA_TABLE", "FRA_PRIORITY", "FRA_SRC", "FRA_DST", "FRA_IIFNAME", "FRA_OIFNAME", "FRA_FWMARK", "FRA_PROTOCOL"),
    "RTM_NEWNETCONF": (
        "NETCONFA_FORWARDING",
        "NETCONFA_RP_FILTER",
        "NETCONFA_MC_FORWARDING",
        "NETCONFA_PROXY_NEIGH",
        "NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN",
        "NETCONFA_INPUT",
        "NETCONFA_BC_FORWARDING",
    ),
    "RTM_NEWSTATS": (),  # counters: which groups a stack sends is labkit.rtnetlink.attributes' business
    "RTM_NEWNSID": (),  # ids: the order a namespace met its peers in
}
COMPARED_FIELDS = {
    "RTM_NEWLINK": ("family", "ifi_type", "flags"),
    "RTM_NEWADDR": ("family", "prefixlen", "scope", "flags"),
    "RTM_NEWROUTE": ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type"),
    "RTM_NEWNEIGH": ("family", "flags"),  # not the NUD state: it moves with time
    "RTM_NEWRULE": ("family", "dst_len", "src_len", "tos", "table", "action", "flags"),
    "RTM_NEWNETCONF": ("family",),
    "RTM_NEWSTATS": ("family", "filter_mask"),
    "RTM_NEWNSID": ("rtgen_family",),
}
NETCONF_INDEXES = {-1: "all", -2: "default"}  # NETCONFA_IFINDEX_ALL, NETCONFA_IFINDEX_DEFAULT


def _bit_names(names: dict[str, int], prefix: str, spell: Callable[[str], str]) -> dict[int, str]:
    """bit -> name from pyroute2's name -> bit table, spelled as `ip` prints it; where two names
    share a bit, the first (IFA_F_SECONDARY before its IPv6 alias IFA_F_TEMPORARY)."""
    out: dict[int, str] = {}
    for name, bit in names.items():
        out.setdefault(bit, spell(name.removeprefix(prefix)))
    return out


IFF_NAMES = _bit_names(PYROUTE2_IFF, "IFF_", str)  # "UP", "BROADCAST", "LOWER_UP"
IFA_F_NAMES = _bit_names(PYROUTE2_IFA_F, "IFA_F_", lambda n: n.lower().replace("_", "-"))  # "nodad", "stable-privacy"
# IFA_F_TENTATIVE is left out on purpose: an IPv6 address is tentative for a moment after it is
# added even when no DAD is done, so a dump right after an add may or may not catch it; DAD has
# its own checks.
FOREVER = 0xFFFFFFFF


def flag_names(value: int, names: dict[int, str], skip: int = 0) -> str:
    """Named bits by name, any others as hex (so no difference hides), `skip` bits left out."""
    value &= ~skip
    known = [n for bit, n in sorted(names.items()) if value & bit]
    rest = value & ~sum(names)
    return ",".join(known + ([f"{rest:#x}"] if rest else [])) or "-"


def is_about(key_part: object, about: str) -> bool:
    """`about` names this part of a record's identity: equal, the same address with a prefix
    length ("198.18.0.50" in "198.18.0.50/24"), or a prefix ending in "." or ":" ("198.19.99.")."""
    text = str(key_part)
    return text == about or text.startswith(about + "/") or (about[-1:] in ".:" and text.startswith(about))


@dataclass
class Record:
    """One normalised message: its identity and the values compared."""

    type: str
    key: tuple
    values: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        return f"{self.type.removeprefix('RTM_NEW').lower()} {' '.join(str(k) for k in self.key if k not in (None, ''))}"


class Normaliser:
    """Knows a namespace's links (from its own link dump) so indexes can become names."""

    def __init__(self, link_dump: Answer | None = None) -> None:
        self.names: dict[int, str] = {}
        if link_dump is not None:
            for m in link_dump.payload():
                if m.type == "RTM_NEWLINK":
                    self.names[int(m.fields.get("index") or 0)] = str(m.attr("IFLA_IFNAME"))

    def name(self, index: Any) -> Any:
        return self.names.get(index, f"ifindex {index}") if isinstance(index, int) and index else index

    def record(self, m: Message) -> Record:
        values: dict[str, Any] = {f: m.fields.get(f) for f in COMPARED_FIELDS.get(m.type, ())}
        for name in COMPARED_ATTRS.get(m.type, ()):
            values[name] = m.attr(name)
        if m.type == "RTM_NEWLINK":
            values["flags"] = flag_names(values["flags"] or 0, IFF_NAMES)
            key: tuple = (m.attr("IFLA_IFNAME"),)
        elif m.type == "RTM_NEWADDR":
            values["flags"] = flag_names((m.attr("IFA_FLAGS") or values["flags"] or 0), IFA_F_NAMES, skip=IFA_F_TENTATIVE)
            cache = m.attr("IFA_CACHEINFO") or {}
            values["lifetime"] = "forever" if cache.get("ifa_valid", FOREVER) == FOREVER else "finite"
            key = (self.name(m.fields.get("index")), f"{m.attr('IFA_ADDRESS')}/{m.fields.get('prefixlen')}")
        elif m.type == "RTM_NEWROUTE":
            values["RTA_OIF"] = self.name(values["RTA_OIF"])
            table = m.attr("RTA_TABLE", m.fields.get("table"))
            dst = f"{m.attr('RTA_DST') or 'default'}/{m.fields.get('dst_len')}"
            key = (f"table {table}", dst, values["RTA_OIF"], m.fields.get("type"))
        elif m.type == "RTM_NEWNEIGH":
            key = (self.name(m.fields.get("ifindex")), m.attr("NDA_DST"))
        elif m.type == "RTM_NEWRULE":
            table = m.attr("FRA_TABLE", m.fields.get("table"))
            key = (f"family {m.fields.get('family')}", f"priority {m.attr('FRA_PRIORITY', 0)}", f"table {table}")
        elif m.type == "RTM_NEWNETCONF":
            index = m.attr("NETCONFA_IFINDEX")
            key = (f"family {m.fields.get('family')}", NETCONF_INDEXES.get(index) or self.name(index))
        elif m.type == "RTM_NEWSTATS":
            key = (f"family {m.fields.get('family')}", self.name(m.fields.get("ifindex")))
        elif m.type == "RTM_NEWNSID":
            key = ("nsid",)  # one peer like another: the ids are numbering, compared by count
        else:
            key = (m.type, m.seq)
        return Record(m.type, key, values)

    def records(self, answer: Answer) -> list[Record]:
        return [self.record(m) for m in answer.payload() if m.type.startswith("RTM_")]


@dataclass
class Difference:
    where: str
    what: str
    kernel: Any
    stack: Any

    def __str__(self) -> str:
        return f"{self.where}: {self.what} kernel {self.kernel!r}, stack {self.stack!r}"


def _counted(records: list[Record]) -> tuple[dict[tuple, Record], dict[tuple, int]]:
    return {r.key: r for r in records}, Counter(r.key for r in records)


def diff_records(
    kernel: list[Record], stack: list[Record], ignore: tuple[str, ...] = (), only: tuple[str, ...] | None = None
) -> list[Difference]:
    """What differs between two record sets: records one side lacks, then values by key (all of
    them but `ignore`, or `only` those named; `only=()` compares presence alone)."""
    mine, my_count = _counted(stack)
    theirs, their_count = _counted(kernel)
    out = [Difference(r.label(), "record", "present", "absent") for k, r in theirs.items() if k not in mine]
    out += [Difference(r.label(), "record", "absent", "present") for k, r in mine.items() if k not in theirs]
    out += [
        Difference(theirs[k].label(), "times listed", their_count[k], my_count[k])
        for k in theirs.keys() & mine.keys()
        if their_count[k] != my_count[k]
    ]
    for key in theirs.keys() & mine.keys():
        a, b = theirs[key], mine[key]
        for name in a.values.keys() | b.values.keys():
            if name in ignore or (only is not None and name not in only):
                continue
            if a.values.get(name) != b.values.get(name):
                out.append(Difference(a.label(), name, a.values.get(name), b.values.get(name)))
    return sorted(out, key=lambda d: (d.where, d.what))


def diff_outcome(kernel: Answer, stack: Answer) -> list[Difference]:
    """How the request ended: its errno, an ACK, silence."""
    out = []
    checks = (
        ("errno", lambda a: a.errno),
        ("acked", lambda a: a.acked),
        ("silent", lambda a: a.silent),
        ("ended", lambda a: not (a.incomplete or a.unterminated)),
    )
    for what, get in checks:
        if get(kernel) != get(stack):
            out.append(Difference(kernel.request, what, get(kernel), get(stack)))
    return out


def attribute_names(answer: Answer) -> dict[str, list[str]]:
    """Which attributes the answer's messages carried, by message type (for the support table):
    read from the bytes, so those pyroute2 has no name for are there too ("type 254"); from
    pyroute2's decoding where the bytes are not walked."""
    from labkit.rtnetlink.attributes import top_level_names  # (which builds on this module)

    seen: dict[str, set[str]] = {}
    for m in answer.payload():
        names = top_level_names(m) or [name for name, _ in m.attrs if name != "UNKNOWN"]
        seen.setdefault(m.type, set()).update(names)
    return {t: sorted(names) for t, names in seen.items()}


def explain(differences: list[Difference], limit: int = 25) -> str:
    lines = [str(d) for d in differences[:limit]]
    if len(differences) > limit:
        lines.append(f"... and {len(differences) - limit} more")
    return "\n".join(lines)
