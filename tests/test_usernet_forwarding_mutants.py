"""The port-forwarding matrix (suites/usernet/test_forwarding.py) fails on a forward to the wrong
port (examples.mutants: WrongPortSlirp, each host port forwarded to the container port after the
one asked for), while the unbroken slirp4netns passes the same cases in the same run.

A row: the check, the cases (by their names, STANDARD's), how many of their cells fail on the
mutant (and pass on the base), and a piece of the failure's text that shows why: a single port's
traffic reaches no service, a range's reaches the neighbour of the one it was sent to, and the
stack's own list shows the wrong container ports.
"""

import pytest

from .conftest import NEEDS_SLIRP4NETNS, assert_only_the_mutant_fails

FORWARDING = "suites/usernet/test_forwarding.py"
MUTANT = "examples.mutants:WrongPortSlirp"


@pytest.mark.parametrize(
    "check, cases, failing, evidence",
    [
        pytest.param(
            "test_tcp_forward_echoes_concurrent_connections_intact",
            ["tcp-ipv4-one-same-any", "tcp-ipv4-range-translated-bound"],
            2,
            "the service on container port 8071 read ['connection 0']; want ['connection 1']",
            marks=NEEDS_SLIRP4NETNS,
            id="tcp",
        ),
        pytest.param(
            "test_udp_forward_echoes_every_datagram_intact",
            ["udp-ipv4-one-translated-any", "udp-ipv4-range-same-bound"],
            2,
            "to 198.19.1.1:42020 (container port 9020): sent 8 x 1000 bytes 9020:0..9020:7, got back 0",
            marks=NEEDS_SLIRP4NETNS,
            id="udp",
        ),
        pytest.param(
            "test_a_forward_is_listed_while_in_place_and_gone_after",
            ["tcp-ipv4-range-translated-any", "udp-ipv4-range-same-bound"],
            2,
            "missing [('tcp', None, 41060, 8060)",
            marks=NEEDS_SLIRP4NETNS,
            id="listed",
        ),
    ],
)
def test_forwarding_cases_fail_on_a_forward_to_the_wrong_port(check, cases, failing, evidence):
    selected = f"{check} and ({' or '.join(cases)})"
    assert_only_the_mutant_fails([FORWARDING], "slirp4netns", MUTANT, failing, evidence, "-k", selected)
