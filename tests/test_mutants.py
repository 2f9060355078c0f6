"""Each family of linkdispatch checks fails on a Linux broken in the way it guards against.

(ARP answering is shown by examples.arp_ignore in test_plugin.py.)
"""

import pytest

from .conftest import run_pytest


@pytest.mark.parametrize(
    "mutant, target, failing, evidence",
    [
        (
            "examples.mutants:NoGratuitousArpLinux",
            "suites/linkdispatch/test_neighbours.py::test_gratuitous_arp_updates_the_neighbour",
            2,
            "after a gratuitous ARP request",
        ),
        (
            "examples.mutants:NoUnsolicitedNaLinux",
            "suites/linkdispatch/test_neighbours.py::test_unsolicited_advertisement_updates_the_neighbour",
            1,
            "after an unsolicited NA",
        ),
        (
            "examples.mutants:WrongRouteLinux",
            "suites/linkdispatch/test_routes.py::test_datagram_leaves_where_the_longest_matching_route_says",
            1,
            "198.19.64.5",
        ),
    ],
    ids=["gratuitous-arp", "unsolicited-na", "longest-prefix"],
)
def test_checks_fail_on_a_mutant(mutant, target, failing, evidence):
    done = run_pytest(target, "--stack", f"linux,{mutant}", "-p", "no:randomly")
    assert done.returncode == 1, done.stdout[-3000:]
    assert f"{failing} failed" in done.stdout, done.stdout[-3000:]
    assert evidence in done.stdout, done.stdout[-3000:]
    assert "FAILED" in done.stdout and "[linux-" in done.stdout
    # The unbroken reference passes the same checks in the same run.
    assert all("[linux]" not in line and "[linux-" in line for line in done.stdout.splitlines() if line.startswith("FAILED"))
