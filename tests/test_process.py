"""Starting processes while other threads run: every child in its namespace, with its death signal.

The testbed pool tears sandboxes down in background threads while checks start processes, and
the lab's threads enter namespaces (NetNS.entered) all the time. No Python code may run in a
forked child of such a process (preexec_fn): it may deadlock on a lock another thread held at
fork time. The child is born in its namespace (the forking thread enters it) and the programs it
execs set up the rest; these tests check what it ends up with, under that load.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from labkit.errors import LabError
from labkit.lifecycle import owner
from labkit.lifecycle.process import LabProcess, run_in, setup_failure
from labkit.net.netns import NETNS_DIR, NetNS
from labkit.net.topology import Topology
from labkit.uapi import MS_BIND, check, libc

pytestmark = pytest.mark.usefixtures("no_leftovers")

# Prints what the child got: its network and mount namespaces, its death signal (PR_GET_PDEATHSIG
# is 2), its owner tag, and writes to an inherited fd when told one.
CHILD = """
import ctypes, os, sys
sig = ctypes.c_int(-1)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig))
if len(sys.argv) > 1:
    os.write(int(sys.argv[1]), b"fd ok")
print(os.stat("/proc/self/ns/net").st_ino, os.stat("/proc/self/ns/mnt").st_ino, sig.value, os.environ.get("LABKIT_OWNER"), flush=True)
"""
CHILDREN = 36
BOUND = 120.0  # seconds for the whole test, on a slow shared machine


def _churn(namespaces: list[NetNS], stop: threading.Event, switches: list[int], errors: list[BaseException]) -> None:
    """Enter one namespace after another, make a socket there and allocate, until told to stop."""
    try:
        while not stop.is_set():
            for ns in namespaces:
                with ns.entered():
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.bind(("127.0.0.1", 0))
                    garbage = [bytearray(512) for _ in range(200)]
                    del garbage
                switches.append(1)
    except BaseException as exc:
        errors.append(exc)


def test_children_started_while_threads_switch_namespaces_get_their_namespace_and_death_signal(monkeypatch):
    preexec: list[object] = []
    real_init = subprocess.Popen.__init__

    def spy(self, *args, **kw):
        preexec.append(kw.get("preexec_fn"))
        real_init(self, *args, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    topo = Topology()
    lab = topo.namespace("lab")
    others = [topo.namespace(f"busy{i}") for i in range(3)]
    with topo:
        assert lab.netns is not None
        want_net = lab.netns.inode()
        my_mnt = os.stat("/proc/self/ns/mnt").st_ino
        my_net = os.stat("/proc/thread-self/ns/net").st_ino
        stop, errors, switches = threading.Event(), [], []
        churners = [
            threading.Thread(target=_churn, args=([o.netns for o in others[i:] + others[:i]], stop, switches, errors), daemon=True)
            for i in range(len(others))
        ]
        for t in churners:
            t.start()
        deadline = time.monotonic() + BOUND
        seen = []
        try:
            for i in range(CHILDREN):
                left = deadline - time.monotonic()
                assert left > 0, f"only {i} of {CHILDREN} children started within {BOUND:g}s"
                kind = ("run_in", "LabProcess", "private_mounts", "pass_fds")[i % 4]
                seen.append((kind, *_start_child(kind, lab.netns, min(left, 30.0))))
        finally:
            stop.set()
            for t in churners:
                t.join(10)
        assert not errors, f"a namespace-switching thread failed: {errors[0]!r}"
        assert not any(t.is_alive() for t in churners), "a namespace-switching thread did not stop"
        assert len(switches) > CHILDREN, f"the threads switched namespaces only {len(switches)} times: no load"
        assert os.stat("/proc/thread-self/ns/net").st_ino == my_net, "starting children left this thread in another netns"
    tag = owner.me().tag
    for kind, net, mnt, sig, child_owner in seen:
        assert net == want_net, f"{kind}: child in netns {net}, want the lab's {want_net}"
        assert sig == 9, f"{kind}: child's death signal is {sig}, want SIGKILL (9)"
        assert child_owner == tag, f"{kind}: child carries owner {child_owner!r}, want {tag!r}"
        assert (mnt != my_mnt) == (kind == "private_mounts"), f"{kind}: mount namespace {mnt}, the test's {my_mnt}"
    assert preexec and not any(preexec), "a child was started with preexec_fn"


def _start_child(kind: str, netns: NetNS, timeout: float) -> tuple[int, int, int, str]:
    argv = [sys.executable, "-I", "-S", "-c", CHILD]
    if kind == "run_in":
        done = run_in(netns, argv, timeout=timeout)
        assert done.returncode == 0, done.stderr
        out = done.stdout
    elif kind == "pass_fds":
        r, w = os.pipe()
        try:
            with LabProcess([*argv, str(w)], netns=netns, stdout=subprocess.PIPE, pass_fds=(w,)) as child:
                os.close(w)
                w = -1
                out = child.read_line(timeout) or ""
                assert os.read(r, 16) == b"fd ok", "the child could not write to the fd passed to it"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
    else:
        with LabProcess(argv, netns=netns, private_mounts=kind == "private_mounts", stdout=subprocess.PIPE) as child:
            out = child.read_line(timeout) or ""
    net, mnt, sig, child_owner = out.split()
    return int(net), int(mnt), int(sig), child_owner


def test_a_child_dies_with_the_process_that_started_it():
    """The death signal is real: when the process that started a LabProcess dies, so does the child."""
    starter = (
        "import sys; from labkit.lifecycle.process import LabProcess; "
        "p = LabProcess(['sleep', '120']); print(p.pid, flush=True); sys.stdin.read()"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the starter did not report its child: {line!r}"
        pidfd = os.pidfd_open(int(line))
    finally:
        parent.kill()
        parent.wait(10)
    try:
        assert select.select([pidfd], [], [], 10)[0], "the child outlived its parent's SIGKILL by 10s"
    finally:
        os.close(pidfd)


@pytest.fixture
def not_a_netns():
    """A name under /run/netns that is a mount, but of a UTS namespace: entering it must fail."""
    ns = NetNS(owner.new_name("uts"))
    ns.path.touch()
    try:
        check(libc.mount(b"/proc/self/ns/uts", bytes(ns.path), None, MS_BIND, None), "bind a uts namespace")
        yield ns
    finally:
        ns.delete()


@pytest.mark.parametrize("start", ["run_in", "LabProcess"])
def test_a_failed_setup_step_is_named(not_a_netns, start):
    with pytest.raises(LabError) as failed:
        if start == "run_in":
            run_in(not_a_netns, ["true"], timeout=10)
        else:
            LabProcess(["true"], netns=not_a_netns)
    message = str(failed.value)
    assert f"cannot enter netns {not_a_netns.name}: setns failed" in message, message
    assert "\n" not in message


def test_a_missing_namespace_or_program_is_refused_before_anything_starts():
    gone = NetNS(owner.new_name("gone"))
    assert not (NETNS_DIR / gone.name).exists()
    with pytest.raises(LabError, match=f"{gone.name}.*does not exist"):
        run_in(gone, ["true"])
    with pytest.raises(LabError, match=f"{gone.name}.*does not exist"):
        LabProcess(["true"], netns=gone)
    with pytest.raises(LabError, match="cannot run 'labkit-no-such-program': not found"):
        LabProcess(["labkit-no-such-program"])
    with pytest.raises(LabError, match="cannot run 'labkit-no-such-program': not found"):
        run_in(None, ["labkit-no-such-program"])


@pytest.mark.parametrize(
    "stderr, step",
    [
        ("unshare: cannot change root filesystem propagation: Permission denied\n", "a private mount namespace"),
        ("setpriv: prctl PR_SET_PDEATHSIG failed\n", "PR_SET_PDEATHSIG=SIGKILL"),
        ("setpriv: failed to execute ip: No such file or directory\n", "could not exec the next step"),
    ],
)
def test_a_chain_tool_failure_is_named_after_its_step(stderr, step):
    assert step in (setup_failure(stderr, ["ip"]) or ""), setup_failure(stderr, ["ip"])


@pytest.mark.parametrize("stderr, argv", [("Error: no such device\n", ["ip"]), ("unshare: bad option\n", ["unshare"]), ("", ["ip"])])
def test_a_program_s_own_failure_is_not_taken_for_a_setup_step(stderr, argv):
    assert setup_failure(stderr, argv) is None
