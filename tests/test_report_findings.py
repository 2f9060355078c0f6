"""Findings: cells grouped into one entry per check, outcome and reason, under anchors that stay
the same from run to run (reports.findings)."""

from __future__ import annotations

import re

from reports.findings import failure_signature, findings, links, slug

CHECK = "transport/test_tcp.py::test_rst_on_closed_port[ipv4]"
OTHER = "transport/test_tcp.py::test_rst_on_closed_port[ipv6]"
ENTRY = "gvisor-* :: transport/test_tcp.py::test_rst_on_closed_port"


def rec(
    check: str, stack: str, status: str, reason: str = "", manifest: str | None = None, carried_from: str | None = None
) -> dict:
    return {
        "nodeid": f"suites/{check}[{stack}]",
        "check": check,
        "suite": "transport",
        "stack": stack,
        "status": status,
        "reason": reason,
        "duration": 0.5,
        "evidence": [],
        "carried_from": carried_from,
        "manifest": manifest,
    }


def test_variants_that_deviate_alike_are_one_finding_and_counts_stay_per_cell():
    cells = [
        rec(CHECK, "gvisor", "known deviation", "netstack answers with ACK", ENTRY),
        rec(CHECK, "gvisor-ch4", "known deviation", "netstack answers with ACK", ENTRY),
        rec(CHECK, "gvisor-gso", "known deviation", "netstack answers with ACK", ENTRY, carried_from="gvisor"),
        rec(CHECK, "linux", "passed"),
        rec(OTHER, "gvisor", "known deviation", "netstack answers with ACK", ENTRY),
    ]
    found = findings(cells)
    assert [(f.check, len(f.cells)) for f in found] == [(CHECK, 3), (OTHER, 1)]
    first = found[0]
    assert first.stacks == ["gvisor", "gvisor-ch4", "gvisor-gso"], "carried cells come after the measured ones"
    assert [c["stack"] for c in first.measured] == ["gvisor", "gvisor-ch4"]
    assert set(links(found)) == {c["nodeid"] for c in cells if c["status"] != "passed"}


def test_two_manifest_entries_for_one_check_are_two_findings():
    cells = [
        rec(CHECK, "gvisor", "known deviation", "netstack answers with ACK", ENTRY),
        rec(CHECK, "pasta", "known deviation", "pasta resets from the host", "pasta :: transport/test_tcp.py::*"),
    ]
    assert len(findings(cells)) == 2


def test_failures_group_by_their_message_without_addresses_ports_timings_and_values():
    a = "Wire(ns:veth0): no frame matched TCP(flags='R') within 1s; 2 incoming frame(s) seen, closest:\n  +0.012s ..."
    b = "Wire(ns:veth1): no frame matched TCP(flags='R') within 2s; 5 incoming frame(s) seen, closest:\n  +0.020s other"
    c = "connect to 198.18.0.2 port 4321 took 0.31s, want 0, got 111"
    d = "connect to 2001:db8::2 port 80 took 12ms, want 0, got 113"
    assert failure_signature(a) == failure_signature(b)
    assert failure_signature(c) == failure_signature(d)
    assert "198.18" not in failure_signature(c) and "111" not in failure_signature(c)
    found = findings([rec(CHECK, "gvisor", "failed", a), rec(CHECK, "gvisor-ch4", "failed", b), rec(CHECK, "pasta", "failed", c)])
    assert sorted(len(f.cells) for f in found) == [1, 2]
    # a different failure of the same check is another finding
    assert failure_signature(a) != failure_signature("ValueError: the agent did not answer")


def test_anchor_is_stable_readable_and_unique():
    one = slug(CHECK, "known deviation", ENTRY)
    assert one == slug(CHECK, "known deviation", ENTRY), "the same finding tomorrow has the same anchor"
    assert re.fullmatch(r"finding-[A-Za-z0-9-]+", one) and "test-rst-on-closed-port-ipv4" in one
    others = {
        slug(OTHER, "known deviation", ENTRY),
        slug(CHECK, "unexpected pass", ENTRY),
        slug(CHECK, "known deviation", "pasta :: *"),
    }
    assert one not in others and len(others) == 3
    long = slug("x/" + "a" * 300 + ".py::t", "failed", "why")
    assert len(long) < 100


def test_the_anchor_does_not_depend_on_the_run():
    """A failure seen in another run (other addresses, timings, variants, order) keeps its anchor."""
    today = [rec(CHECK, "gvisor", "failed", "took 0.31s for 198.18.0.2:8080, want 0, got 111")]
    tomorrow = [
        rec(CHECK, "gvisor-ch2", "failed", "took 1.2s for 198.19.1.2:9090, want 0, got 113"),
        rec(CHECK, "gvisor", "failed", "took 0.5s for 198.18.0.2:8080, want 0, got 111"),
    ]
    assert findings(today)[0].anchor == findings(tomorrow)[0].anchor


def test_outcomes_are_ordered_failures_first():
    cells = [
        rec(OTHER, "gvisor", "known deviation", "r", ENTRY),
        rec(CHECK, "linux", "unexpected pass", "passed, although", "linux :: x"),
        rec(OTHER, "linux", "failed", "boom"),
        rec(CHECK, "linux-x", "skipped", "lacks capabilities: agent"),
    ]
    assert [f.status for f in findings(cells)] == ["failed", "unexpected pass", "known deviation"]


def test_variants_that_name_themselves_in_the_message_are_one_finding():
    """Many checks say which stack failed ("no ARP reply came from gvisor-nogso"): the name is the
    cell, not the finding."""
    cells = [
        rec(CHECK, s, "failed", f"no ARP reply came from {s} within 1s")
        for s in ("gvisor", "gvisor-nogso", "gvisor-txcsum@nightly")
    ]
    assert len(findings(cells)) == 1


def test_a_timeout_that_came_close_in_another_field_is_another_finding():
    head = "Wire(labkit-1-2-3:peer0): no frame matched TCP(flags='R') within 1s; 2 incoming frame(s) seen, closest:"
    rst = f"{head}\n  +0.010s Ether / IP / TCP 198.18.0.2:80 > 198.18.0.1:4000 SA  -- TCP.flags: want 'R', got 'SA'"
    window = f"{head}\n  +0.012s Ether / IP / TCP 198.18.0.2:80 > 198.18.0.1:4000 R  -- TCP.window: want 0, got 512"
    rst_again = f"{head}\n  +0.300s Ether / IP / TCP 198.18.0.2:81 > 198.18.0.1:4001 A  -- TCP.flags: want 'R', got 'A'"
    assert failure_signature(rst) == failure_signature(rst_again), "the values differ, the field does not"
    assert failure_signature(rst) != failure_signature(window)
    assert "TCP.flags" in failure_signature(rst) and "'SA'" not in failure_signature(rst)
