"""Each family of linkdispatch checks fails on a Linux broken in the way it guards against.

(ARP answering is shown by examples.arp_ignore in test_plugin.py.)
"""

import shutil

import pytest

from .conftest import run_pytest

NFT = pytest.mark.skipif(
    not shutil.which("nft"), reason="the mutant loads an nftables ruleset; install: apt-get install -y nftables"
)


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
            "examples.mutants:NoDadLinux",
            "suites/linkdispatch/test_neighbours.py::test_a_new_ipv6_address_is_probed_before_use"
            " suites/linkdispatch/test_neighbours.py::test_a_duplicate_ipv6_address_is_given_up",
            2,
            "is another node's (it answered the DAD probe)",
        ),
        (
            "examples.mutants:NoTsoLinux",
            "suites/linkdispatch/test_gso.py::test_gso_frames_carry_a_header_a_device_can_act_on",
            2,
            "has GSO on, yet all",
        ),
        (
            "examples.mutants:WrongRouteLinux",
            "suites/linkdispatch/test_routes.py::test_datagram_leaves_where_the_longest_matching_route_says",
            1,
            "198.19.64.5",
        ),
        (
            "examples.mutants:ReorderingLinux",
            "suites/linkdispatch/test_fanout.py::test_many_flows_arrive_complete_and_in_order",
            2,
            "flows delivered out of order",
        ),
        pytest.param(
            "examples.mutants:BurstDroppingLinux",
            "suites/linkdispatch/test_fanout.py::test_a_burst_within_the_kernels_backlog_is_absorbed",
            1,
            "datagrams of a burst the link queue holds lost",
            marks=NFT,
        ),
        pytest.param(
            "examples.mutants:ChecksumBlindLinux",
            "suites/linkdispatch/test_checksum_offload.py::test_udp_with_a_wrong_checksum_is_dropped",
            1,
            "a UDP datagram with a wrong checksum was delivered",
            marks=NFT,
        ),
        pytest.param(
            "examples.mutants:BadTxChecksumLinux",
            "suites/linkdispatch/test_udp.py::test_datagram_reaches_service_and_reply_checksum_is_valid",
            2,
            "UDP.chksum: 0x1234, should be",
            marks=NFT,
        ),
    ],
    ids=[
        "gratuitous-arp",
        "unsolicited-na",
        "duplicate-address",
        "gso",
        "longest-prefix",
        "flow-order",
        "burst",
        "rx-checksum",
        "tx-checksum",
    ],
)
def test_checks_fail_on_a_mutant(mutant, target, failing, evidence):
    done = run_pytest(*target.split(), "--stack", f"linux,{mutant}", "-p", "no:randomly")
    assert done.returncode == 1, done.stdout[-3000:]
    assert f"{failing} failed" in done.stdout, done.stdout[-3000:]
    assert evidence in done.stdout, done.stdout[-3000:]
    assert "FAILED" in done.stdout and "[linux-" in done.stdout
    # The unbroken reference passes the same checks in the same run.
    assert all("[linux]" not in line and "[linux-" in line for line in done.stdout.splitlines() if line.startswith("FAILED"))
