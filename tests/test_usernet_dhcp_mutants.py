"""The DHCP checks (suites/usernet/test_dhcp.py) fail on a tap stack whose DHCP server was told
other things than the plan says (examples.mutants), while the unbroken stack passes the same
checks in the same run.

A row: the base stack, the mutant, the checks it should fail, how many of their cells fail, and
a piece of the failure's text that shows why.
"""

import shutil

import pytest

from labkit.stacks.registry import load_driver

from .conftest import run_pytest

DHCP = "suites/usernet/test_dhcp.py::"
SLIRP = pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="apt-get install -y slirp4netns")
PASTA = pytest.mark.skipif(shutil.which("pasta") is None, reason="apt-get install -y passt")


@pytest.mark.parametrize(
    "base, mutant, targets, failing, evidence",
    [
        pytest.param(
            "slirp4netns",
            "NarrowCidrSlirp",
            [DHCP + "test_the_offer_names_the_gateway_and_the_networks_mask"],
            1,
            "subnet mask 255.255.255.128; want 255.255.255.0 (198.18.0.0/24)",
            marks=SLIRP,
            id="dhcp-mask-slirp4netns",
        ),
        pytest.param(
            "pasta",
            "MtuMisstatingPasta",
            [DHCP + "test_the_offer_carries_the_links_mtu"],
            1,
            "interface MTU (option 26) 1400; want 1500",
            marks=PASTA,
            id="dhcp-mtu-pasta",
        ),
    ],
)
def test_dhcp_checks_fail_on_a_mutant(base, mutant, targets, failing, evidence):
    driver = f"examples.mutants:{mutant}"
    done = run_pytest(*targets, "--stack", f"{base},{driver}", "-p", "no:randomly", "-n", "0")
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    assert f"{failing} failed" in out, out[-3000:]
    assert evidence in out, out[-3000:]
    # Only the mutant fails (every failed cell carries its kind); the base passes the same checks.
    kind = load_driver(driver).kind
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and all(f"[{kind}" in line for line in failed), out[-3000:]
    assert f"{failing} passed" in out, out[-3000:]
