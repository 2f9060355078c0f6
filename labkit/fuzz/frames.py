"""Hypothesis strategies of malformed frames, per protocol and all together.

The strategies live per layer (l2, l3, l4, gso); this module is the one entry point the fuzz
runner and the robustness suite import. Each draw is a `Fuzzed`: the frames to send and the
flaws they carry, from the fixed vocabulary `FLAWS`, so a finding can say what was wrong with
the input without re-parsing it.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from labkit.fuzz.gso import gso_superframes
from labkit.fuzz.l2 import arp, ethernet
from labkit.fuzz.l3 import ipv4, ipv4_fragments, ipv6, ipv6_extensions, ipv6_fragments
from labkit.fuzz.l4 import icmp, icmpv6, live_segments, ndp, tcp, udp
from labkit.fuzz.target import FLAW_MEANINGS, FLAWS, Fuzzed, Live, Target, is_lab_address

__all__ = [
    "FLAWS",
    "FLAW_MEANINGS",
    "Fuzzed",
    "Live",
    "Target",
    "arp",
    "batches",
    "ethernet",
    "frames",
    "gso_superframes",
    "icmp",
    "icmpv6",
    "ipv4",
    "ipv4_fragments",
    "ipv6",
    "ipv6_extensions",
    "ipv6_fragments",
    "is_lab_address",
    "live_segments",
    "ndp",
    "protocols",
    "tcp",
    "udp",
]


def protocols(target: Target) -> dict[str, SearchStrategy[Fuzzed]]:
    """Every per-protocol strategy the target's address families allow, by name."""
    out: dict[str, SearchStrategy[Fuzzed]] = {"ethernet": ethernet(target)}
    if target.has4:
        out |= {"arp": arp(target), "ipv4": ipv4(target), "ipv4_fragments": ipv4_fragments(target), "icmp": icmp(target)}
    if target.has6:
        out |= {
            "ipv6": ipv6(target),
            "ipv6_extensions": ipv6_extensions(target),
            "ipv6_fragments": ipv6_fragments(target),
            "icmpv6": icmpv6(target),
            "ndp": ndp(target),
        }
    out |= {"tcp": tcp(target), "udp": udp(target)}
    return out


def frames(target: Target) -> SearchStrategy[Fuzzed]:
    """Any malformed input for this target: one_of every protocol strategy that the target's families allow."""
    return st.one_of(*protocols(target).values())


def batches(target: Target, size: int) -> SearchStrategy[list[Fuzzed]]:
    """A batch: exactly `size` draws of frames(target)."""
    return st.lists(frames(target), min_size=size, max_size=size)
