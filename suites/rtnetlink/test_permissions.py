"""Without CAP_NET_ADMIN (the probe drops it, as an unprivileged container runs) every request
that changes something is refused with EPERM, and the GETs still answer.

The requests are harmless if a stack wrongly carried them out (a missing link, an address and a
route on lo in the benchmark range), and the check runs on a fresh stack that is thrown away.
"""

from __future__ import annotations

import errno

import pytest

from labkit.rtnetlink import differ

from .conftest import SUITE

pytestmark = SUITE

LO = {"ifindex_of": "lo"}
NOWHERE = 0x7FFF0000  # no link has this index
CHANGES = {
    "RTM_NEWLINK": {
        "fields": {"family": 0, "index": NOWHERE},
        "attrs": [["IFLA_IFNAME", "labkit0"]],
        "flags": ["REQUEST", "ACK", "CREATE", "EXCL"],
    },
    "RTM_DELLINK": {"fields": {"family": 0, "index": NOWHERE}},
    "RTM_SETLINK": {"fields": {"family": 0, "index": NOWHERE}, "attrs": [["IFLA_MTU", 1300]]},
    "RTM_NEWADDR": {
        "fields": {"family": 2, "prefixlen": 32, "index": LO},
        "attrs": [["IFA_LOCAL", "198.19.250.1"], ["IFA_ADDRESS", "198.19.250.1"]],
        "flags": ["REQUEST", "ACK", "CREATE", "EXCL"],
    },
    "RTM_DELADDR": {"fields": {"family": 2, "prefixlen": 32, "index": LO}, "attrs": [["IFA_LOCAL", "198.19.250.2"]]},
    "RTM_NEWROUTE": {
        "fields": {"family": 2, "dst_len": 24, "table": 254, "proto": 4, "scope": 253, "type": 1},
        "attrs": [["RTA_DST", "198.19.251.0"], ["RTA_OIF", LO]],
        "flags": ["REQUEST", "ACK", "CREATE", "EXCL"],
    },
    "RTM_DELROUTE": {"fields": {"family": 2, "dst_len": 24, "table": 254}, "attrs": [["RTA_DST", "198.19.252.0"]]},
    "RTM_NEWNEIGH": {
        "fields": {"family": 2, "ifindex": LO, "state": 0x80},
        "attrs": [["NDA_DST", "198.19.250.9"], ["NDA_LLADDR", "02:00:00:00:00:99"]],
        "flags": ["REQUEST", "ACK", "CREATE"],
    },
    "RTM_DELNEIGH": {"fields": {"family": 2, "ifindex": LO}, "attrs": [["NDA_DST", "198.19.250.8"]]},
}
GETS = {
    "RTM_GETLINK": {"fields": {"family": 0}, "flags": ["REQUEST", "DUMP"]},
    "RTM_GETADDR": {"fields": {"family": 0}, "flags": ["REQUEST", "DUMP"]},
    "RTM_GETROUTE": {"fields": {"family": 0}, "flags": ["REQUEST", "DUMP"]},
}


def request(type_: str, spec: dict) -> dict:
    return {"type": type_, "flags": ["REQUEST", "ACK"], **spec}


@pytest.mark.fresh
@pytest.mark.changes("addresses", "routes", "links", "neighbours")  # should the stack let the request through
@pytest.mark.parametrize("type_", list(CHANGES))
def test_change_without_cap_net_admin_is_eperm(rtnl, type_):
    pair = rtnl.ask({type_: request(type_, CHANGES[type_])}, unprivileged=True)
    assert pair.kernel[type_].errno == errno.EPERM, (
        f"the kernel answered an unprivileged {type_} with errno {pair.kernel[type_].errno}"
    )
    differences = pair.differences(type_)
    rtnl.verdict(type_, pair, type_, differences, f"an unprivileged {type_}")


@pytest.mark.parametrize("type_", list(GETS))
def test_get_without_cap_net_admin_is_answered(rtnl, type_):
    pair = rtnl.ask({type_: request(type_, GETS[type_])}, unprivileged=True)
    assert pair.kernel[type_].errno is None and pair.kernel[type_].payload(), f"the kernel refused an unprivileged {type_}"
    differences = differ.diff_outcome(pair.kernel[type_], pair.stack[type_])  # what it lists: the dump checks
    if not pair.stack[type_].payload():
        differences.append(differ.Difference(type_, "entries", len(pair.kernel[type_].payload()), 0))
    rtnl.verdict(type_, pair, type_, differences, f"an unprivileged {type_} dump")
