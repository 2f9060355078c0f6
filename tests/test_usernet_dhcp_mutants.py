"""The DHCP checks (suites/usernet/test_dhcp.py) fail on a tap stack whose DHCP server was told
other things than the plan says (examples.mutants), while the unbroken stack passes the same
checks in the same run.

A row: the base stack, the mutant, the checks it should fail, how many of their cells fail, and
a piece of the failure's text that shows why.
"""

import pytest

from .conftest import NEEDS_PASTA, NEEDS_SLIRP4NETNS, assert_only_the_mutant_fails

DHCP = "suites/usernet/test_dhcp.py::"


@pytest.mark.parametrize(
    "base, mutant, targets, failing, evidence",
    [
        pytest.param(
            "slirp4netns",
            "NarrowCidrSlirp",
            [DHCP + "test_the_offer_names_the_gateway_and_the_networks_mask"],
            1,
            "subnet mask 255.255.255.128; want 255.255.255.0 (198.18.0.0/24)",
            marks=NEEDS_SLIRP4NETNS,
            id="dhcp-mask-slirp4netns",
        ),
        pytest.param(
            "pasta",
            "MtuMisstatingPasta",
            [DHCP + "test_the_offer_carries_the_links_mtu"],
            1,
            "interface MTU (option 26) 1400; want 1500",
            marks=NEEDS_PASTA,
            id="dhcp-mtu-pasta",
        ),
    ],
)
def test_dhcp_checks_fail_on_a_mutant(base, mutant, targets, failing, evidence):
    assert_only_the_mutant_fails(targets, base, f"examples.mutants:{mutant}", failing, evidence)
