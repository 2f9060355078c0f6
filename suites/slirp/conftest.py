"""Fixtures of the slirp suite: a lab namespace for slirp4netns to serve, the lab CIDR it gets,
and fake slirp4netns binaries for the checks about what the launcher does with a bad one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labkit import owner
from labkit.slirp import Features
from labkit.topology import Namespace, Topology

REAL = shutil.which("slirp4netns")
needs_slirp4netns = pytest.mark.skipif(REAL is None, reason="slirp4netns is not installed; install: apt-get install -y slirp4netns")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"{owner.new_name('slirp')}-") as d:
        yield Path(d)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """An empty lab namespace (lo only) for slirp4netns to put its tap in."""
    topo = Topology()
    ns = topo.namespace("slirp")
    with topo:
        yield ns


@pytest.fixture
def cidr(plan) -> str:
    """slirp's virtual network: the lab's IPv4 prefix (its namespace is a world of its own)."""
    return str(plan.net4)


@pytest.fixture
def features() -> Features:
    return Features.probe(REAL or "slirp4netns")


@pytest.fixture
def fake_binary(tmp_path: Path) -> Callable[..., str]:
    """`make(help_text, body)`: an executable that prints `help_text` for --help and otherwise
    runs the shell `body` (exit at once, sleep, ...)."""

    def make(help_text: str, body: str = "exit 0") -> str:
        path = tmp_path / "fake-slirp4netns"
        path.write_text(f'#!/bin/sh\nif [ "$1" = --help ]; then cat <<"EOF"\n{help_text}\nEOF\nexit 0; fi\n{body}\n')
        path.chmod(0o755)
        return str(path)

    return make
