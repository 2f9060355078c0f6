"""iproute2 as users and scripts run it: each scenario of corpus/ (addresses, routes, lookups,
rules, neighbours, link properties) is run inside the kernel reference and inside the stack as
one `ip -force -batch`, and every command must end, print and complain as on the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.rtnetlink import ip_batch

from .conftest import SUITE

pytestmark = SUITE

CORPUS = Path(__file__).parent / "corpus"
READ_ONLY = {"show", "route-get", "route-get-v6"}  # the others change what they show, each on a fresh stack
CHANGES = [pytest.mark.fresh, pytest.mark.changes("addresses", "routes", "links", "neighbours")]
SCENARIOS = sorted(p.stem for p in CORPUS.glob("*.ip"))
UNSUPPORTED = "Operation not supported"


@pytest.mark.parametrize("scenario", [pytest.param(s, marks=[] if s in READ_ONLY else CHANGES) for s in SCENARIOS])
def test_ip_batch_as_on_the_kernel(rtnl, plan, scenario):
    batches = ip_batch.parse_corpus((CORPUS / f"{scenario}.ip").read_text(), ip_batch.values(plan))
    kernel = ip_batch.ask(rtnl.kernel.stack, batches)
    stack = ip_batch.ask(rtnl.stack, batches)
    ran = [(c, c is b["commands"][-1]) for b in kernel for c in b["commands"]]
    # Every command ends, with its status; one that exits ip (`ip neigh add` of an existing entry) ends its batch.
    stuck = [c for c, last in ran if not (c["status"] in ("ok", "failed") or (last and c["status"].startswith("ip exited")))]
    assert not stuck, f"ip did not get through {scenario} on the kernel: {stuck}"
    assert any(c["status"] == "ok" for c, _ in ran), f"every command of {scenario} fails on the kernel: {ran}"
    found = ip_batch.compare(batches, kernel, stack)
    for row in dict.fromkeys(c.row for b in batches for c in b.commands):
        said = [
            (k["stderr"], s["stderr"])
            for batch, kb, sb in zip(batches, kernel, stack, strict=True)
            for c, k, s in zip(batch.commands, kb["commands"], sb["commands"], strict=True)
            if c.row == row
        ]
        unsupported = any(UNSUPPORTED in s and UNSUPPORTED not in k for k, s in said)
        rtnl.row(row, [d for command, d in found if command.row == row], unsupported=unsupported)
    differences = [d for _, d in found]
    assert not differences, f"ip ({scenario}) inside {rtnl.stack.id} unlike on the kernel:\n" + "\n".join(
        f"{d.where}: {d.what}\n  kernel: {d.kernel!r}\n  stack:  {d.stack!r}" for d in differences[:20]
    )
