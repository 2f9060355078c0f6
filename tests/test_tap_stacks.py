"""The stacks behind a tap (slirp4netns, pasta): a testbed puts the Wire on their tap, and nothing
of theirs survives a stop, or a SIGKILLed owner plus `labkit clean`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether

from labkit.lifecycle import owner
from labkit.stacks import resolve
from labkit.testbed import Testbed

from .conftest import ROOT, lab_namespaces_of
from .test_cleanup import start_holder

_SLIRP = pytest.mark.skipif(not shutil.which("slirp4netns"), reason="apt-get install -y slirp4netns")
_PASTA = pytest.mark.skipif(not shutil.which("pasta"), reason="apt-get install -y passt")
TAP_STACKS = [
    pytest.param("slirp4netns", marks=_SLIRP),
    pytest.param("slirp4netns-rootless", marks=_SLIRP),
    pytest.param("pasta", marks=_PASTA),
    pytest.param("pasta-rootless", marks=_PASTA),
]


def binary_of(kind: str) -> str:
    return "slirp4netns" if kind.startswith("slirp4netns") else "passt"


def processes_of(binary: str, tag: str) -> list[int]:
    """Live processes running `binary` whose environment carries the lab owner `tag`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not Path(os.readlink(proc / "exe")).name.startswith(binary):  # Debian runs passt.avx2
                continue
            if f"{owner.ENV_OWNER}={tag}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("kind", TAP_STACKS)
def test_testbed_puts_the_wire_on_the_tap_and_the_stack_answers_arp(kind):
    with Testbed(resolve(kind)[0]) as bed:
        plan, wire = bed.plan, bed.wire
        assert wire.ifname == "tap0" and bed.peer_end.mac == wire.mac
        assert f"{plan.peer4}/{plan.net4.prefixlen}" in bed.peer_end.addresses, bed.peer_end.addresses
        reply = wire.send_and_expect(
            Ether(src=wire.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=wire.mac, psrc=plan.peer4, pdst=plan.stack4),
            ARP(op=2, psrc=plan.stack4),
            timeout=2,
        )
        assert reply[ARP].hwsrc == bed.stack.mac
        workdir, tag = bed.stack.workdir, owner.me().tag
    assert processes_of(binary_of(kind), tag) == [], f"{kind} outlived stop"
    assert not workdir.exists()


@pytest.mark.parametrize("kind", TAP_STACKS)
def test_sigkill_with_a_tap_stack_then_labkit_clean_leaves_nothing(kind):
    p, _stray, tmp = start_holder(f"--stack={kind}")
    tag = owner.Owner.parse(tmp.name).tag
    binary = binary_of(kind)
    try:
        assert processes_of(binary, tag), f"no {kind} process of the holder"
    finally:
        p.kill()
        p.wait(10)
    done = subprocess.run([sys.executable, "-m", "labkit", "clean"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert processes_of(binary, tag) == [], f"{kind} survived its owner's SIGKILL and labkit clean"
    assert lab_namespaces_of(p.pid) == []
    assert list(tmp.parent.glob(f"{tag}-*")) == [], "a workdir (API socket, logs) was left in /tmp"
