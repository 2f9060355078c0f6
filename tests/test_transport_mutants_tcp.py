"""The handshake and RST families of suites/transport fail on a Linux broken in the way each
check guards against, while the unbroken Linux passes them in the same run."""

import shutil

import pytest

from .conftest import run_pytest

NFT = pytest.mark.skipif(
    not shutil.which("nft"), reason="the mutant loads an nftables ruleset; install: apt-get install -y nftables"
)
HANDSHAKE = "suites/transport/test_handshake.py::"
RST = "suites/transport/test_rst.py::"


@pytest.mark.parametrize(
    "mutant, targets, failing, evidence",
    [
        pytest.param(
            "examples.mutants:MssBlindLinux",
            [HANDSHAKE + "test_segments_never_exceed_the_mss_the_peer_announced"],
            2,
            "data segments carry more than the MSS of 536 the Wire announced",
            marks=NFT,
            id="mss",
        ),
        pytest.param(
            "examples.mutants:NoSackLinux",
            [HANDSHAKE + "test_sack_blocks_report_data_received_out_of_order"],
            2,
            "the SYN-ACK did not permit SACK the SYN offered",
            id="sack",
        ),
        pytest.param(
            "examples.mutants:NoTimestampsLinux",
            [HANDSHAKE + "test_every_segment_echoes_the_peers_latest_timestamp"],
            2,
            "the SYN-ACK did not agree to the timestamps the SYN offered",
            id="timestamps",
        ),
        pytest.param(
            "examples.mutants:NoWindowScalingLinux",
            [HANDSHAKE + "test_window_scale_is_applied_to_the_window_the_stack_announces"],
            2,
            "the SYN-ACK did not agree to window scaling the SYN offered",
            id="window-scale",
        ),
        pytest.param(
            "examples.mutants:NoTimestampsLinux",
            [HANDSHAKE + "test_active_open_syn_offers_every_option"],
            2,
            "the stack's SYN does not offer ['Timestamp']",
            id="active-open-options",
        ),
        pytest.param(
            "examples.mutants:RstMuteLinux",
            [RST + "test_close_with_unread_data_sends_rst", RST + "test_linger_zero_close_sends_rst"],
            4,
            "sent nothing within 2s; want an RST",
            marks=NFT,
            id="abort-rst",
        ),
        pytest.param(
            "examples.mutants:RstDeafLinux",
            [RST + "test_rst_at_rcv_nxt_resets_the_connection", RST + "test_rst_acking_the_syn_refuses_the_connect"],
            6,
            "connect ended with TIMEOUT; want ECONNREFUSED",
            marks=NFT,
            id="rst-honoured",
        ),
        pytest.param(
            "examples.mutants:Rfc1337Linux",
            [RST + "test_rst_in_time_wait_ends_it"],
            2,
            "TIME-WAIT outlived the RST",
            id="time-wait-rst",
        ),
        pytest.param(
            "examples.mutants:NoBareAckLinux",
            [
                RST + "test_rst_in_the_window_but_not_at_rcv_nxt_gets_a_challenge_ack",
                RST + "test_syn_in_an_established_connection_gets_a_challenge_ack",
            ],
            4,
            "the stack sent no ACK",
            marks=NFT,
            id="challenge-ack",
        ),
    ],
)
def test_transport_tcp_checks_fail_on_a_mutant(mutant, targets, failing, evidence):
    done = run_pytest(*targets, "--stack", f"linux,{mutant}", "-p", "no:randomly", "-n", "0")
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    assert f"{failing} failed" in out, out[-3000:]
    assert evidence in out, out[-3000:]
    # The unbroken reference passes the same checks in the same run.
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and not any(f"[linux-{family}" in line for line in failed for family in ("ipv4", "ipv6")), out[-3000:]
    assert f"{failing} passed" in out, out[-3000:]
