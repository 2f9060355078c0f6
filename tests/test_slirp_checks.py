"""The slirp suite's host-loopback check fails when slirp4netns is not there to block anything.

A guest's connection to the gateway fails in the same way whether slirp4netns refuses it or is
gone (then the tap and its routes are gone too: "network unreachable"), or hangs when it is
stopped. The check must pass only on slirp4netns's own refusal.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from labkit.lifecycle import owner
from labkit.net.topology import Topology
from labkit.stacks.slirp4netns import Slirp4netns, SlirpOptions
from suites.slirp.host_loopback import assert_host_loopback_blocked

pytestmark = pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="apt-get install -y slirp4netns")
CIDR = "198.18.0.0/24"


@pytest.fixture
def slirp():
    """slirp4netns serving an empty lab namespace, running in a lab host namespace of its own."""
    topo = Topology()
    ns, host = topo.namespace("slirp"), topo.namespace("host")
    with topo, tempfile.TemporaryDirectory(prefix=f"{owner.new_name('slirp')}-") as workdir:
        options = SlirpOptions.parse([f"cidr={CIDR}"])
        with Slirp4netns(ns.netns, options, host=host.netns, workdir=Path(workdir)) as running:
            yield ns.netns, running


GATEWAY = str(ipaddress.ip_network(CIDR).network_address + 2)


def test_the_check_passes_on_a_live_slirp4netns(slirp):
    netns, running = slirp
    assert_host_loopback_blocked(netns, running, GATEWAY)


def test_the_check_fails_when_slirp4netns_is_dead(slirp):
    netns, running = slirp
    os.kill(running.process.pid, signal.SIGKILL)
    running.process.popen.wait(10)
    with pytest.raises(AssertionError) as failed:
        assert_host_loopback_blocked(netns, running, GATEWAY)
    assert "slirp4netns" in str(failed.value)


def test_the_check_fails_when_slirp4netns_is_deaf(slirp):
    netns, running = slirp
    os.kill(running.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(AssertionError) as failed:
            assert_host_loopback_blocked(netns, running, GATEWAY, timeout=1.0)
    finally:
        os.kill(running.process.pid, signal.SIGCONT)
    assert "slirp4netns" in str(failed.value)
