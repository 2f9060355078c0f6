"""Fixtures of the slirp suite: a lab namespace for slirp4netns to serve, the lab CIDR it gets,
and fake slirp4netns binaries for the checks about what the launcher does with a bad one."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labkit.lifecycle import owner
from labkit.net.topology import Namespace, Topology
from labkit.stacks.slirp4netns import Features

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


def free_port(kind: int) -> int:
    """A port of the host's 127.0.0.1 that nobody listens on just now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def carried(proto: str, host_port: int, inside: socket.socket, timeout: float = 3.0) -> bool:
    """Whether 8 random bytes sent to the host's 127.0.0.1:host_port arrive at `inside`."""
    payload = os.urandom(8)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    inside.settimeout(timeout)
    with socket.socket(socket.AF_INET, kind) as outside:
        outside.settimeout(timeout)
        try:
            if proto == "tcp":
                outside.connect(("127.0.0.1", host_port))
                outside.sendall(payload)
                conn, _ = inside.accept()
                with conn:
                    conn.settimeout(timeout)
                    return conn.recv(64) == payload
            outside.sendto(payload, ("127.0.0.1", host_port))
            return inside.recv(64) == payload
        except OSError:
            return False
