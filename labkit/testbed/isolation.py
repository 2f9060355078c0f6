"""What a check leaves on a pooled testbed, and how the pool keeps it from the next check.

A reused sandbox carries whatever the last check did to it: a neighbour entry planted by an
unsolicited advertisement makes the next check's replies go to a MAC nobody answers for. Two
things keep that from happening. A check that changes the stack says so
(`@pytest.mark.changes("neighbours")`) and the pool never hands its testbed on. And the pool
looks: after every check whose testbed it would keep, it compares the testbed with what it was
when handed out, and a change nobody declared discards the testbed and fails the check, which is
a bug in the check (or the stack changing by itself), never something for the next one to find.

Only what can change a later verdict is looked at: the MAC the stack's frames to each lab peer
carry (seen from the Wire, so it works where the stack cannot list its neighbours: runsc refuses
RTM_GETNEIGH), and, in the full look, the addresses, routes, bound sockets and processes inside.
Neighbour ageing and TIME-WAIT are not changes. The Wire's look costs two echo round trips; the
full look costs the driver two execs inside (~130 ms on gVisor), so it runs in the `canary`
mode that CI and `labkit flake` use, and the cheap look otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from labkit.errors import ExpectTimeout, LabInputError
from labkit.packet.testbench import IcmpEcho

if TYPE_CHECKING:
    from labkit.testbed.bed import Testbed

# What a check may declare it changes: each kind names what a later check could trip over.
CHANGES: Mapping[str, str] = {
    "neighbours": "the stack's ARP/NDP entries (which MAC it sends to for an address)",
    "addresses": "the stack's addresses",
    "routes": "the stack's routes",
    "links": "the stack's links, their state, MTU or offloads, or the topology around them",
    "sysctls": "the stack's settings (sysctls, socket defaults)",
    "sockets": "sockets left bound or listening inside the stack",
    "processes": "processes left running inside the stack",
}

Mode = Literal["cheap", "canary", "off"]
MODES: tuple[Mode, ...] = ("cheap", "canary", "off")
NO_REPLY = "no reply"


def declared(kinds: Iterable[object], where: str) -> frozenset[str]:
    """The kinds a `changes` marker names, checked against CHANGES (at least one)."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in CHANGES]
    if bad or not kinds:
        what = f"unknown change {bad[0]!r}" if bad else "a changes marker that names nothing"
        raise LabInputError(f"{where}: {what}; allowed: {', '.join(CHANGES)}")
    return frozenset(str(k) for k in kinds)


@dataclass(frozen=True)
class Snapshot:
    """The testbed as a later check could notice it; `inside` is empty in the cheap look."""

    peer_macs: Mapping[str, str] = field(default_factory=dict)  # lab peer address -> MAC the stack sends to
    inside: Mapping[str, frozenset[str]] = field(default_factory=dict)  # kind (CHANGES) -> entries


def handed_out(bed: Testbed, inside: Mapping[str, frozenset[str]]) -> Snapshot:
    """What the testbed is when a check gets it: the stack sends to each peer the MAC the Wire
    answers with, and `inside` is what the driver read when the testbed was built."""
    assert bed.wire is not None
    return Snapshot({peer: bed.wire.owned()[peer] for peer, _ in _peers(bed)}, inside)


def look(bed: Testbed, full: bool, timeout: float = 3.0) -> Snapshot:
    """The testbed now: an echo from each lab peer the Wire plays, and the MAC on the reply (the
    timeout is generous: a busy machine must not make a quiet stack look changed)."""
    assert bed.wire is not None and bed.stack is not None
    macs = {}
    for peer, family in _peers(bed):
        echo = IcmpEcho(bed.wire, bed.plan.endpoints(family))
        echo.send(1)
        try:
            macs[peer] = echo.wire.expect_frame(echo.reply(1), timeout=timeout).packet.dst
        except ExpectTimeout:
            macs[peer] = NO_REPLY
    return Snapshot(macs, bed.stack.state() if full else {})


def _peers(bed: Testbed) -> list[tuple[str, str]]:
    """(address, family) of the lab peers the Wire answers for, where the stack answers echoes."""
    assert bed.stack is not None and bed.wire is not None
    if not bed.stack.can("icmp"):
        return []
    owned = bed.wire.owned()
    return [(peer, family) for peer, family in ((bed.plan.peer4, "ipv4"), (bed.plan.peer6, "ipv6")) if peer in owned and bed.stack.can(family)]


def differences(before: Snapshot, after: Snapshot) -> dict[str, str]:
    """kind -> what changed, for every kind that did (empty: the testbed is as handed out)."""
    found = {}
    moved = [f"{peer}: {before.peer_macs[peer]} -> {after.peer_macs.get(peer)}" for peer in before.peer_macs if after.peer_macs.get(peer) != before.peer_macs[peer]]
    if moved:
        found["neighbours"] = "the stack now sends to " + ", ".join(moved)
    for kind in sorted(set(before.inside) | set(after.inside)):
        was, now = before.inside.get(kind, frozenset()), after.inside.get(kind, frozenset())
        if was != now:
            parts = [f"+{e}" for e in sorted(now - was)] + [f"-{e}" for e in sorted(was - now)]
            found[kind] = "; ".join(parts)
    return found


def verdict(changed: Mapping[str, str]) -> str:
    """One line per undeclared change, for the check's error."""
    kinds = ", ".join(repr(k) for k in changed)
    lines = [f"the check changed the pooled stack and does not declare it (@pytest.mark.changes({kinds})), so the testbed was discarded:"]
    lines += [f"  {kind}: {what}" for kind, what in changed.items()]
    return "\n".join(lines)
