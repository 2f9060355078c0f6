"""The outbound TCP checks of the tap stacks (suites/transport/test_tap_tcp.py) fail when the
world behind the stack is broken: with an outside whose TCP services drop every reply
(examples.mutants: SilentTcpOutsideSlirp, SilentTcpOutsidePasta), while the unbroken stack
passes the same checks in the same run.

A row: the base stack, the mutant, the checks it should fail, how many of their cells fail (and
pass on the base: slirp4netns has no IPv6, pasta both families), and a piece of the failure's
text that shows why.
"""

import pytest

from .conftest import NEEDS_NFT, NEEDS_PASTA, NEEDS_SLIRP4NETNS, assert_only_the_mutant_fails

OUTBOUND = "suites/transport/test_tap_tcp.py::"


@pytest.mark.parametrize(
    "base, mutant, targets, failing, evidence",
    [
        pytest.param(
            "slirp4netns",
            "SilentTcpOutsideSlirp",
            [OUTBOUND + "test_syn_gets_a_syn_ack_in_the_outsides_name"],
            1,
            "no SYN-ACK from 198.19.1.2 port",
            marks=[NEEDS_SLIRP4NETNS, NEEDS_NFT],
            id="slirp4netns-handshake",
        ),
        pytest.param(
            "slirp4netns",
            "SilentTcpOutsideSlirp",
            [
                OUTBOUND + "test_a_large_upload_reaches_the_outside_intact",
                OUTBOUND + "test_a_large_download_reaches_the_wire_intact",
            ],
            2,
            "no SYN-ACK from 198.19.1.2 port",
            marks=[NEEDS_SLIRP4NETNS, NEEDS_NFT],
            id="slirp4netns-transfer",
        ),
        pytest.param(
            "slirp4netns",
            "SilentTcpOutsideSlirp",
            [
                OUTBOUND + "test_the_window_is_open_and_data_in_it_is_acknowledged",
                OUTBOUND + "test_the_wires_fin_reaches_the_outside",
                OUTBOUND + "test_the_outside_closing_gives_the_wire_a_fin",
                OUTBOUND + "test_the_outside_sees_the_hosts_address",
            ],
            4,
            "no SYN-ACK from 198.19.1.2 port",
            marks=[NEEDS_SLIRP4NETNS, NEEDS_NFT],
            id="slirp4netns-window-fin-source",
        ),
        pytest.param(
            "pasta",
            "SilentTcpOutsidePasta",
            [OUTBOUND + "test_syn_gets_a_syn_ack_in_the_outsides_name"],
            2,
            "no SYN-ACK from 2001:db8:1:1::2 port",
            marks=[NEEDS_PASTA, NEEDS_NFT],
            id="pasta-handshake",
        ),
        pytest.param(
            "pasta",
            "SilentTcpOutsidePasta",
            [
                OUTBOUND + "test_a_large_upload_reaches_the_outside_intact",
                OUTBOUND + "test_a_large_download_reaches_the_wire_intact",
            ],
            4,
            "no SYN-ACK from 198.19.1.2 port",
            marks=[NEEDS_PASTA, NEEDS_NFT],
            id="pasta-transfer",
        ),
    ],
)
def test_outbound_tcp_checks_fail_on_a_silent_outside(base, mutant, targets, failing, evidence):
    assert_only_the_mutant_fails(targets, base, f"examples.mutants:{mutant}", failing, evidence)
