"""Fixtures of the slirp suite: a lab namespace for slirp4netns to serve, a lab "host" namespace
for it to run in, the lab CIDR it gets, and fake slirp4netns binaries for the checks about what
the launcher does with a bad one.

The stack's process runs in the host namespace, never the root namespace: its forwarded ports
listen there and its "host loopback" is that namespace's 127.0.0.1, so every client and service
of these checks that stands for the host is made inside it."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labkit.lifecycle import owner
from labkit.net.layouts import uplink
from labkit.net.netns import NetNS
from labkit.net.topology import Namespace, Topology
from labkit.stacks.slirp4netns import Features

REAL = shutil.which("slirp4netns")
needs_slirp4netns = pytest.mark.skipif(REAL is None, reason="slirp4netns is not installed; install: apt-get install -y slirp4netns")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"{owner.new_name('slirp')}-") as d:
        yield Path(d)


@pytest.fixture
def topology() -> Iterator[Topology]:
    """The container's namespace (lo only) and the host's the stack runs in. The host has an
    uplink with lab addresses and default routes to a third, empty namespace (pasta refuses to
    start without a routable interface to copy from); nothing is served behind it."""
    topo = Topology()
    topo.namespace("slirp")
    uplink(topo)
    with topo:
        yield topo


@pytest.fixture
def namespace(topology: Topology) -> Namespace:
    """The container's namespace: slirp4netns or pasta puts its tap there."""
    return topology["slirp"]


@pytest.fixture
def host(topology: Topology) -> Namespace:
    """The lab host namespace the stack's process runs in: its 127.0.0.1 is the "host loopback"."""
    return topology["host"]


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


def free_port(host: NetNS, kind: int) -> int:
    """A port of the host namespace's 127.0.0.1 that nobody listens on just now."""
    with host.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def carried(host: NetNS, proto: str, host_port: int, inside: socket.socket, timeout: float = 3.0) -> bool:
    """Whether 8 random bytes sent from the host namespace to its 127.0.0.1:host_port arrive at `inside`."""
    payload = os.urandom(8)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    inside.settimeout(timeout)
    with host.socket(socket.AF_INET, kind) as outside:
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
