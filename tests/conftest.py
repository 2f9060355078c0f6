"""Shared helpers for labkit's own tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.lifecycle import owner
from labkit.net import netns

ROOT = Path(__file__).resolve().parents[1]


def lab_namespaces_of(pid: int) -> list[str]:
    return [n for n in netns.list_names() if (o := owner.Owner.parse(n)) is not None and o.pid == pid]


def root_state() -> tuple[str, str, str]:
    """Links, addresses and routes of the root namespace, to prove the lab never changes them."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    # Flags and counters move on their own; names, addresses and routes do not.
    links = "\n".join(sorted(line.split()[0] for line in run("ip", "-br", "link").splitlines()))
    return links, run("ip", "-br", "addr"), run("ip", "route") + run("ip", "-6", "route")


def run_pytest(*args: str, timeout: float = 300, run: str | None = None) -> subprocess.CompletedProcess:
    """pytest in a child process, from the project root, as a user runs it: a run of its own,
    with the id `run` if given (so a test can tell its leftovers from other tests')."""
    env = dict(os.environ)
    env.pop(owner.ENV_RUN, None)
    if run is not None:
        env[owner.ENV_RUN] = run
    env.pop(owner.ENV_OWNER, None)
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def no_leftovers():
    """Fail the test if it leaves a namespace of this process behind."""
    before = set(lab_namespaces_of(os.getpid()))
    yield
    after = set(lab_namespaces_of(os.getpid()))
    assert after <= before, f"namespaces left behind: {sorted(after - before)}"


NEEDS_SLIRP4NETNS = pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="apt-get install -y slirp4netns")
NEEDS_PASTA = pytest.mark.skipif(shutil.which("pasta") is None, reason="apt-get install -y passt")
NEEDS_NFT = pytest.mark.skipif(
    shutil.which("nft") is None, reason="the mutant loads an nftables ruleset; apt-get install -y nftables"
)


def assert_only_the_mutant_fails(targets: list[str], base: str, mutant: str, failing: int, evidence: str, *args: str) -> None:
    """Run `targets` on `base` and `mutant` (an `examples.mutants:Class`) in one pytest run: the
    mutant fails `failing` cells, saying `evidence`, and the base passes the same cells."""
    from labkit.stacks.registry import load_driver

    done = run_pytest(*targets, *args, "--stack", f"{base},{mutant}", "-p", "no:randomly", "-n", "0")
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    assert re.search(rf"\b{failing} failed\b", summary), out[-3000:]
    assert re.search(rf"\b{failing} passed\b", summary), out[-3000:]
    assert evidence in out, out[-3000:]
    kind = load_driver(mutant).kind
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and all(re.search(rf"\[{re.escape(kind)}[-\]]", line) for line in failed), out[-3000:]  # all the mutant's
