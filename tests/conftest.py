"""Shared helpers for labkit's own tests."""

from __future__ import annotations

import os
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
