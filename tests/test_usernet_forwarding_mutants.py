"""The port-forwarding matrix (suites/usernet/test_forwarding.py) fails on a forward to the wrong
port (examples.mutants: WrongPortSlirp, each host port forwarded to the container port after the
one asked for), while the unbroken slirp4netns passes the same cases in the same run.

A row: the cases (by their names, STANDARD's), how many of their cells fail on the mutant (and
pass on the base), and a piece of the failure's text that shows why: a single port's traffic
reaches no service, a range's reaches the neighbour of the one it was sent to.
"""

import shutil

import pytest

from labkit.stacks.registry import load_driver

from .conftest import run_pytest

FORWARDING = "suites/usernet/test_forwarding.py"
MUTANT = "examples.mutants:WrongPortSlirp"
_SLIRP = pytest.mark.skipif(not shutil.which("slirp4netns"), reason="apt-get install -y slirp4netns")


@pytest.mark.parametrize(
    "cases, failing, evidence",
    [
        pytest.param(
            ["tcp-ipv4-one-same-any", "tcp-ipv4-range-translated-bound"],
            2,
            "the service on container port 8071 read ['connection 0']; want ['connection 1']",
            marks=_SLIRP,
            id="tcp",
        ),
        pytest.param(
            ["udp-ipv4-one-translated-any", "udp-ipv4-range-same-bound"],
            2,
            "to 198.19.1.1:42020 (container port 9020): sent 8 x 1000 bytes 9020:0..9020:7, got back 0",
            marks=_SLIRP,
            id="udp",
        ),
    ],
)
def test_forwarding_cases_fail_on_a_forward_to_the_wrong_port(cases, failing, evidence):
    done = run_pytest(FORWARDING, "--stack", f"slirp4netns,{MUTANT}", "-k", " or ".join(cases), "-p", "no:randomly", "-n", "0")
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    assert f"{failing} failed" in out, out[-3000:]
    assert evidence in out, out[-3000:]
    # Only the mutant fails (every failed cell carries its kind); the unbroken slirp4netns
    # passes the same cases in the same run.
    kind = load_driver(MUTANT).kind
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and all(f"[{kind}-" in line for line in failed), out[-3000:]
    assert f"{failing} passed" in out, out[-3000:]
