"""A process that outlives SIGKILL is reported as left behind, never counted as killed.

A process stuck in the kernel (state D, waiting on I/O that does not come) takes SIGKILL only
when it gets out; the reaper's wait for it is bounded, so such a process is still there when
the wait ends. The `unkillable` fixture stands in for one: SIGKILL is not delivered to the
processes it names, whichever way the lab sends it (kill(2) or pidfd_send_signal(2)).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys

import pytest

from labkit import cli
from labkit.errors import LabError
from labkit.lifecycle import owner, process, reaper
from labkit.net.topology import Topology

_REAL_KILL = os.kill


def _pid_of_pidfd(fd: int) -> int | None:
    try:
        for line in open(f"/proc/self/fdinfo/{fd}").read().splitlines():
            if line.startswith("Pid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


@pytest.fixture
def unkillable(monkeypatch):
    """`spare(pid)`: from now on SIGKILL does not reach `pid` (every other signal and pid as usual)."""
    spared: set[int] = set()
    real_kill, real_pidfd_send_signal = os.kill, signal.pidfd_send_signal

    def kill(pid, sig):
        if sig == signal.SIGKILL and pid in spared:
            return
        real_kill(pid, sig)

    def pidfd_send_signal(fd, sig, *args):
        if sig == signal.SIGKILL and _pid_of_pidfd(fd) in spared:
            return
        real_pidfd_send_signal(fd, sig, *args)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_send_signal)
    return spared.add


@pytest.fixture
def sleeper():
    """`start(env=None)`: a `sleep` child, killed and reaped at the end whatever the test did."""
    started: list[subprocess.Popen] = []

    def start(env: dict[str, str] | None = None) -> subprocess.Popen:
        p = subprocess.Popen(["sleep", "120"], env=env, stdin=subprocess.DEVNULL)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            _REAL_KILL(p.pid, signal.SIGKILL)  # the real one: `unkillable` may still be in place
        p.wait(10)


def test_kill_pids_reports_what_died_what_survived(unkillable, sleeper):
    doomed, stubborn = sleeper(), sleeper()
    unkillable(stubborn.pid)
    result = process.kill_pids([doomed.pid, stubborn.pid], timeout=0.5)
    assert result.killed == [doomed.pid]
    assert result.survivors == [stubborn.pid], "a process alive at the deadline must be reported, not dropped"
    assert result.refused == []
    assert doomed.poll() is not None and stubborn.poll() is None


def test_kill_pids_counts_a_process_that_is_already_gone_as_nothing(sleeper):
    p = sleeper()
    p.kill()
    p.wait(10)
    result = process.kill_pids([p.pid], timeout=0.5)
    assert (result.killed, result.survivors, result.refused) == ([], [], [])


@pytest.fixture
def tagged_run(monkeypatch):
    """A run id of our own, for `reap(run=...)`: other sessions' reapers never touch it (its owner, us, lives)."""
    monkeypatch.setattr(reaper, "KILL_TIMEOUT", 0.5)
    run = secrets.token_hex(4)
    env = dict(os.environ, **{owner.ENV_OWNER: f"{owner.PREFIX}-{run}-{os.getpid()}"})
    return run, env


def test_reaper_counts_only_what_died_and_names_survivors(unkillable, sleeper, tagged_run):
    run, env = tagged_run
    doomed, stubborn = sleeper(env), sleeper(env)
    unkillable(stubborn.pid)
    done = reaper.reap(run=run)
    assert done.processes == [doomed.pid], f"killed: {done.processes}"
    assert done.survivors == [stubborn.pid]
    text = done.summary()
    assert "killed 1 process(es)" in text and str(stubborn.pid) in text and "survived" in text, text


def test_labkit_clean_prints_survivors_not_as_killed(unkillable, sleeper, tagged_run, capsys):
    run, env = tagged_run
    stubborn = sleeper(env)
    unkillable(stubborn.pid)
    code = cli.main(["clean", "--run", run])
    out = capsys.readouterr().out
    assert "killed 0 process(es)" in out, out
    assert f"  process {stubborn.pid}\n" not in out, out
    assert f"  survivor {stubborn.pid}" in out and "survived" in out, out
    assert code == 1, "a clean that left a process behind must not exit 0"


def test_kill_namespace_processes_raises_naming_survivors(unkillable):
    topo = Topology()
    ns = topo.namespace("held")
    with topo:
        child = process.LabProcess([sys.executable, "-c", "import sys; sys.stdin.read()"], netns=ns.netns, stdin=subprocess.PIPE)
        try:
            unkillable(child.pid)
            with pytest.raises(LabError, match=rf"\b{child.pid}\b.*survived"):
                process.kill_namespace_processes(ns.netns, timeout=0.5)
        finally:
            child.close()


def test_topology_down_keeps_a_namespace_whose_process_survived_and_says_so(unkillable, no_leftovers):
    topo = Topology()
    ns = topo.namespace("held")
    topo.up()
    netns = ns.netns
    child = process.LabProcess([sys.executable, "-c", "import sys; sys.stdin.read()"], netns=netns, stdin=subprocess.PIPE)
    try:
        unkillable(child.pid)
        with pytest.raises(LabError) as failed:
            topo.down()
        message = str(failed.value)
        assert netns.name in message and str(child.pid) in message, message
        assert netns.exists(), "the namespace was deleted although a process in it survived"
    finally:
        child.close()
        netns.delete()
