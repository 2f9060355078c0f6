"""The IP-layer transport checks (suites/transport/test_ip.py, test_fragments.py) fail on a Linux
broken in the way each family guards against, while plain linux passes them in the same run."""

import shutil

import pytest

from .conftest import run_pytest

NFT = pytest.mark.skipif(
    not shutil.which("nft"), reason="the mutant loads an nftables ruleset; install: apt-get install -y nftables"
)
IP = "suites/transport/test_ip.py"
FRAGMENTS = "suites/transport/test_fragments.py"


@pytest.mark.parametrize(
    "mutant, targets, failing, evidence",
    [
        pytest.param(
            "examples.mutants:NoReassemblyLinux",
            [f"{FRAGMENTS}::test_fragments_in_order_are_reassembled", f"{FRAGMENTS}::test_fragments_out_of_order_are_reassembled"],
            4,
            "in order: the socket got nothing, want the datagram whole",
            id="reassembly",
        ),
        pytest.param(
            "examples.mutants:TtlRewritingLinux",
            [f"{IP}::test_outgoing_packets_carry_ttl_64_by_default", f"{IP}::test_socket_ttl_is_honoured_on_the_wire"],
            8,
            "the udp packet left with TTL/hop limit 200, want the default 64",
            marks=NFT,
            id="ttl",
        ),
        pytest.param(
            "examples.mutants:RepeatingIdLinux",
            [f"{IP}::test_ipv4_ids_do_not_repeat_towards_one_destination", f"{IP}::test_retransmitted_segment_gets_a_new_ipv4_id"],
            2,
            "IDs repeated among 40 non-atomic datagrams to 198.18.0.1: [4242]",
            marks=NFT,
            id="ipv4-id",
        ),
        pytest.param(
            "examples.mutants:NoPmtuDiscoveryLinux",
            [f"{IP}::test_ipv4_packets_leave_with_df_set_for_path_mtu_discovery"],
            2,
            "(DF clear): no path MTU discovery",
            id="df",
        ),
        pytest.param(
            "examples.mutants:SilentIpErrorsLinux",
            [f"{FRAGMENTS}::test_incomplete_datagram_times_out_with_time_exceeded", f"{IP}::test_routing_header_type_0_is_refused"],
            5,
            "no time exceeded (reassembly) within 3 s",
            marks=NFT,
            id="ip-errors",
        ),
        pytest.param(
            "examples.mutants:OptionDroppingLinux",
            [f"{IP}::test_datagram_with_ipv4_options_is_delivered", f"{IP}::test_padding_options_are_skipped"],
            6,
            "behind a hop-by-hop options header with PadN: the socket got nothing",
            marks=NFT,
            id="options",
        ),
    ],
)
def test_ip_checks_fail_on_a_mutant(mutant, targets, failing, evidence):
    done = run_pytest(*targets, "--stack", f"linux,{mutant}", "-p", "no:randomly", "-n", "0")
    assert done.returncode == 1, done.stdout[-3000:]
    assert f"{failing} failed" in done.stdout, done.stdout[-3000:]
    assert evidence in done.stdout, done.stdout[-3000:]
    assert "FAILED" in done.stdout and "[linux-" in done.stdout
    # The unbroken reference passes the same checks in the same run.
    assert all("[linux]" not in line and "[linux-" in line for line in done.stdout.splitlines() if line.startswith("FAILED"))
