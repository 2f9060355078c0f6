"""Malformed requests: truncated headers, lengths that lie, attributes past the end or of length
zero, and seeded random messages. Whatever comes back must be an errno, an ACK, silence or
well-formed messages, within the probe's bounds; afterwards the stack must still answer a link
dump and a ping. The kernel's answers are recorded next to the stack's (support table).

Reproduce a random run with LABKIT_RTNL_SEED=<seed printed in the failure>.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP

from labkit.rtnetlink import differ
from labkit.rtnetlink.differential import LINKS
from labkit.rtnetlink.probe import NLM_F, raw_message

from .conftest import SUITE

# Like the rest of the suite these vary with nothing: the ping afterwards only shows that the stack
# still runs, and a request that wedged or crashed it would do so however many channels read its
# link (each reads a share of the frames; none parses netlink).
pytestmark = [*SUITE, pytest.mark.fresh]

IFINFO = struct.pack("=BxHiII", 0, 0, 0, 0, 0)  # ifinfomsg: family, type, index, flags, change
REQ, DUMP = NLM_F["REQUEST"], NLM_F["REQUEST"] | NLM_F["DUMP"]
MALFORMED = {
    "header-only-8-bytes": raw_message(18, DUMP, 1)[:16],
    "length-below-header": raw_message(18, DUMP, 2, IFINFO, length=8),
    "length-past-the-end": raw_message(18, DUMP, 3, IFINFO, length=200),
    "attr-past-the-end": raw_message(18, REQ, 4, IFINFO + struct.pack("=HH", 200, 3) + b"eth0"),
    "attr-length-zero": raw_message(18, REQ, 5, IFINFO + struct.pack("=HH", 0, 3) + b"eth0"),
    "attr-shorter-than-header": raw_message(18, REQ, 6, IFINFO + struct.pack("=HH", 2, 3) + b"eth0"),
    "body-shorter-than-ifinfomsg": raw_message(18, REQ, 7, b"\x00\x00\x00\x00"),
    "addr-dump-garbage-body": raw_message(22, DUMP, 8, bytes(range(40))),
    "route-get-no-dst": raw_message(26, REQ, 9, struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 254, 0, 0, 1, 0)),
}
RANDOM_MESSAGES = 40


def faults(answer) -> list[str]:
    out = []
    if answer.crashed:
        out.append(f"the probe failed: {answer.crashed}")
    if answer.unterminated:
        out.append("answers kept coming until the deadline")
    out += [f"{m.type} that pyroute2 cannot decode ({m.decode_error}): {m.raw[:120]}" for m in answer.messages if m.decode_error]
    return out


def still_serves(rtnl, wire, plan) -> list[str]:
    problems = []
    after = rtnl.ask({"links": LINKS})
    names = {m.attr("IFLA_IFNAME") for m in after.stack["links"].payload()}
    if plan.stack_ifname not in names:
        problems.append(f"a link dump afterwards lists {sorted(n for n in names if n)}")
    ident = random.randint(1, 0xFFFF)
    wire.send(IP(src=plan.peer4, dst=plan.stack4) / ICMP(id=ident, seq=1))
    try:
        wire.expect(IP(src=plan.stack4) / ICMP(type="echo-reply", id=ident, seq=1), timeout=3)
    except AssertionError:
        problems.append("no answer to a ping afterwards")
    return problems


def test_malformed_requests_get_an_errno_or_silence(rtnl, wire, plan):
    pair = rtnl.ask({name: {"raw": raw} for name, raw in MALFORMED.items()})
    found = {name: faults(pair.stack[name]) for name in MALFORMED if faults(pair.stack[name])}
    differences = [d for name in MALFORMED for d in differ.diff_outcome(pair.kernel[name], pair.stack[name])]
    rtnl.note("malformed", pair, next(iter(MALFORMED)), differences)
    problems = still_serves(rtnl, wire, plan)
    assert not found and not problems, f"{pair.stack_id}: {found} {problems}"
    assert not differences, pair.report("malformed requests", differences)


def _random_message(rng: random.Random, seq: int) -> str:
    type_ = rng.choice([16, 17, 18, 19, 20, 21, 22, 24, 25, 26, 28, 29, 30, rng.randrange(0, 0x10000)])
    flags = rng.choice([REQ, DUMP, REQ | NLM_F["ACK"], rng.randrange(0, 0x10000)])
    body = rng.randbytes(rng.randrange(0, 64))
    length = rng.choice([None, None, None, rng.randrange(0, 120)])
    return raw_message(type_, flags, seq, body, length=length)


def test_random_messages_never_crash_or_hang_the_stack(rtnl, wire, plan, record_property):
    seed = int(os.environ.get("LABKIT_RTNL_SEED") or random.randrange(2**32))
    record_property("seed", seed)
    rng = random.Random(seed)
    requests = {f"random-{i}": {"raw": _random_message(rng, 100 + i)} for i in range(RANDOM_MESSAGES)}
    pair = rtnl.ask(requests, quiet=0.2)
    found = {name: faults(pair.stack[name]) for name in requests if faults(pair.stack[name])}
    problems = still_serves(rtnl, wire, plan)
    assert not found and not problems, f"seed {seed} (LABKIT_RTNL_SEED={seed} reproduces it): {pair.stack_id}: {found} {problems}"
