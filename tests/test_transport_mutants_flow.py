"""The window and loss/timer families of suites/transport fail on a Linux broken in the way each
check guards against, while the unbroken Linux passes them in the same run."""

import shutil

import pytest

from .conftest import run_pytest

NFT = pytest.mark.skipif(
    not shutil.which("nft"), reason="the mutant loads an nftables ruleset; install: apt-get install -y nftables"
)
WINDOW = "suites/transport/test_window.py::"
TIMERS = "suites/transport/test_timers.py::"


@pytest.mark.parametrize(
    "mutant, targets, failing, evidence",
    [
        pytest.param(
            "examples.mutants:WindowBlindLinux",
            [WINDOW + "test_zero_window_is_probed_while_data_waits"],
            2,
            "want a probe at",
            marks=NFT,
            id="zero-window-probe",
        ),
        pytest.param(
            "examples.mutants:WindowBlindLinux",
            [WINDOW + "test_sender_respects_a_shrunk_window"],
            2,
            "after the window shrank to end at byte 1500, the stack sent up to byte(s)",
            marks=NFT,
            id="window-shrink",
        ),
        pytest.param(
            "examples.mutants:WindowInflatingLinux",
            [WINDOW + "test_unread_data_closes_the_receive_window"],
            2,
            "bytes its window of 65535 had room for",
            marks=NFT,
            id="zero-receive-window",
        ),
        pytest.param(
            "examples.mutants:WindowInflatingLinux",
            [WINDOW + "test_announced_window_follows_so_rcvbuf"],
            2,
            "the SYN-ACK offers a window of 65535",
            marks=NFT,
            id="rcvbuf-window",
        ),
        pytest.param(
            "examples.mutants:FlatBackoffLinux",
            [TIMERS + "test_retransmissions_back_off_exponentially", WINDOW + "test_zero_window_probes_back_off"],
            4,
            "each gap should be about twice the one before",
            id="backoff",
        ),
        pytest.param(
            "examples.mutants:NoRetransmitLinux",
            [TIMERS + "test_fin_is_retransmitted_until_acknowledged"],
            4,
            "the stack's FIN, never acknowledged, was not sent again within 2 s",
            marks=NFT,
            id="fin-retransmission",
        ),
        pytest.param(
            "examples.mutants:NoRetransmitLinux",
            [TIMERS + "test_retransmissions_back_off_exponentially"],
            2,
            "copy 2 of the segment at",
            marks=NFT,
            id="retransmission",
        ),
        pytest.param(
            "examples.mutants:LateFastRetransmitLinux",
            [TIMERS + "test_three_duplicate_acks_trigger_fast_retransmit"],
            2,
            "by the timer, not by fast retransmit",
            id="fast-retransmit",
        ),
        pytest.param(
            "examples.mutants:NoSackLinux",
            [
                TIMERS + "test_sack_lets_the_stack_retransmit_only_the_holes",
                TIMERS + "test_tail_loss_probe_resends_the_last_segment",
            ],
            4,
            "the stack did not agree to SACK",
            id="sack-recovery",
        ),
        pytest.param(
            "examples.mutants:NoTimestampsLinux",
            [TIMERS + "test_paws_drops_a_segment_with_an_old_timestamp"],
            2,
            "the stack did not agree to timestamps",
            id="paws",
        ),
        pytest.param(
            "examples.mutants:RstMuteLinux",
            [TIMERS + "test_fin_wait_2_ends_after_tcp_linger2"],
            2,
            "the ACK still got no RST 3 s into FIN-WAIT-2",
            marks=NFT,
            id="fin-wait-2",
        ),
        pytest.param(
            "examples.mutants:RstMuteLinux",
            [TIMERS + "test_user_timeout_aborts_unacknowledged_data", WINDOW + "test_user_timeout_ends_zero_window_probing"],
            4,
            "the connection timed out (ETIMEDOUT), yet a segment from the peer got no RST",
            marks=NFT,
            id="user-timeout",
        ),
    ],
)
def test_transport_flow_checks_fail_on_a_mutant(mutant, targets, failing, evidence):
    done = run_pytest(*targets, "--stack", f"linux,{mutant}", "-p", "no:randomly", "-n", "0")
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    assert f"{failing} failed" in out, out[-3000:]
    assert evidence in out, out[-3000:]
    # The unbroken reference passes the same checks in the same run.
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and not any(f"[linux-{family}" in line for line in failed for family in ("ipv4", "ipv6")), out[-3000:]
    assert f"{failing} passed" in out, out[-3000:]
