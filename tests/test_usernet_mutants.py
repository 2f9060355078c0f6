"""The outbound UDP, ICMP and DNS checks of the tap stacks (suites/transport/test_tap_udp.py,
transport/test_tap_icmp.py, usernet/test_dns.py) fail when the world behind the stack is broken on purpose
(examples.mutants: a lying DNS responder, an outside whose UDP services or echo replies are
dropped on the way out), while the unbroken stack passes the same checks in the same run.

A row: the base stack, the mutant, the checks it should fail, how many of their cells fail, and
a piece of the failure's text that shows why. Its id names the family and the stack.
"""

import pytest

from .conftest import NEEDS_NFT, NEEDS_PASTA, NEEDS_SLIRP4NETNS, assert_only_the_mutant_fails

UDP = "suites/transport/test_tap_udp.py::"
ICMP = "suites/transport/test_tap_icmp.py::"
DNS = "suites/usernet/test_dns.py::"


@pytest.mark.parametrize(
    "base, mutant, targets, failing, evidence",
    [
        # DNS: the responder upstream answers every name with a wrong address
        pytest.param(
            "slirp4netns",
            "LyingDnsSlirp",
            [DNS + "test_a_lab_name_resolves_to_the_responders_address"],
            2,
            "outside.lab A resolved to ['198.18.255.254'], want the responder's [198.19.1.2]",
            marks=NEEDS_SLIRP4NETNS,
            id="dns-answer-slirp4netns",
        ),
        pytest.param(
            "pasta",
            "LyingDnsPasta",
            [DNS + "test_a_lab_name_resolves_to_the_responders_address"],
            4,
            "outside.lab AAAA resolved to ['2001:db8:ffff::fe'], want the responder's [2001:db8:1:1::2]",
            marks=NEEDS_PASTA,
            id="dns-answer-pasta",
        ),
        # UDP: the outside's services get the datagrams, their replies are dropped on the way out
        pytest.param(
            "slirp4netns",
            "SilentUdpOutsideSlirp",
            [
                UDP + "test_datagram_reaches_the_outside_from_the_host_and_the_reply_comes_back",
                UDP + "test_datagrams_up_to_the_mtu_cross_whole_both_ways",
            ],
            4,
            "the outside's reply never reached the container",
            marks=[NEEDS_SLIRP4NETNS, NEEDS_NFT],
            id="udp-reply-slirp4netns",
        ),
        pytest.param(
            "pasta",
            "SilentUdpOutsidePasta",
            [UDP + "test_datagram_reaches_the_outside_from_the_host_and_the_reply_comes_back"],
            2,
            "the outside's reply never reached the container",
            marks=[NEEDS_PASTA, NEEDS_NFT],
            id="udp-reply-pasta",
        ),
        # ICMP: the outside's kernel sends no echo replies
        pytest.param(
            "slirp4netns",
            "EchoMuteOutsideSlirp",
            [
                ICMP + "test_outside_host_answers_echo_with_its_id_seq_and_payload",
                ICMP + "test_outside_echoes_in_a_row_keep_their_sequence_numbers",
            ],
            2,
            "an echo to 198.19.1.2 got no reply within 3s",
            marks=[NEEDS_SLIRP4NETNS, NEEDS_NFT],
            id="icmp-echo-slirp4netns",
        ),
        pytest.param(
            "pasta",
            "EchoMuteOutsidePasta",
            [ICMP + "test_outside_host_answers_echo_with_its_id_seq_and_payload"],
            2,
            "an echo to 2001:db8:1:1::2 got no reply within 3s",
            marks=[NEEDS_PASTA, NEEDS_NFT],
            id="icmp-echo-pasta",
        ),
    ],
)
def test_outbound_checks_fail_on_a_mutant(base, mutant, targets, failing, evidence):
    assert_only_the_mutant_fails(targets, base, f"examples.mutants:{mutant}", failing, evidence)
