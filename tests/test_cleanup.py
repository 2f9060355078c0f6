"""Cleanup you can trust: after Ctrl-C, after SIGKILL plus `labkit clean`, nothing of the lab stays."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labkit.lifecycle import owner, pids, process, reaper
from labkit.net import netns
from labkit.net.topology import Topology

from .conftest import ROOT, lab_namespaces_of

HOLDER = textwrap.dedent(
    """
    import subprocess, sys, tempfile, threading
    from labkit.lifecycle import janitor, owner
    from labkit.lifecycle.process import lab_env
    from labkit.stacks import resolve
    from labkit.testbed import Testbed

    if "--sigterm" in sys.argv:
        janitor.install_interrupt_handlers()
    stack = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--stack=")), "linux")
    bed = Testbed(resolve(stack)[0]).up()
    bed.stack.service("udp-echo")
    # A process that is not a child-with-deathsig: only the reaper can end it.
    stray = subprocess.Popen(["sleep", "300"], env=lab_env(), start_new_session=True)
    tmp = tempfile.mkdtemp(prefix=owner.new_name("tmp") + "-")
    print("HOLD", stray.pid, tmp, flush=True)
    threading.Event().wait(120)
    """
)


def start_holder(*args: str):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(owner.ENV_RUN, None)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = p.stdout.readline().split()
    assert line and line[0] == "HOLD", f"holder did not start: {line}"
    return p, int(line[1]), Path(line[2])


def alive(pid: int) -> bool:
    """The lab's own answer (a zombie is dead; a zombie leader with live threads is not)."""
    return pids.alive(pid)


def test_sigkill_then_labkit_clean_leaves_nothing():
    p, stray, tmp = start_holder()
    assert len(lab_namespaces_of(p.pid)) == 2 and alive(stray) and tmp.is_dir()
    p.kill()
    p.wait(10)
    assert len(lab_namespaces_of(p.pid)) == 2, "namespaces should outlive a SIGKILLed owner until cleaned"

    done = subprocess.run([sys.executable, "-m", "labkit", "clean"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Another session's reaper may have been first (pytest sessions reap at start): the end state
    # is what counts.
    assert lab_namespaces_of(p.pid) == []
    assert not alive(stray)
    assert not tmp.exists()


def test_clean_run_removes_a_named_run_even_with_a_live_owner():
    run = "0badc0de"
    ns = netns.NetNS.create(f"labkit-{run}-{os.getpid()}-1-t")
    try:
        assert reaper.reap().namespaces.count(ns.name) == 0  # a live owner is left alone
        done = subprocess.run(
            [sys.executable, "-m", "labkit", "clean", "--run", run], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert f"netns {ns.name}" in done.stdout and "removed 1 namespace(s)" in done.stdout
        assert not ns.exists()
    finally:
        ns.delete()


@pytest.mark.parametrize("sig, args", [(signal.SIGINT, ()), (signal.SIGTERM, ("--sigterm",))], ids=["ctrl-c", "sigterm"])
def test_owner_unwinds_on_ctrl_c_and_sigterm(sig, args):
    p, stray, _tmp = start_holder(*args)
    os.kill(stray, signal.SIGKILL)  # the stray is the reaper's job; here we test the owner's own unwind
    p.send_signal(sig)
    p.wait(10)
    assert lab_namespaces_of(p.pid) == []


def test_reaper_never_touches_a_live_owner_or_foreign_names():
    foreign = "not-a-lab-namespace"
    ns = netns.NetNS.create(foreign)
    try:
        t = Topology()
        t.namespace("mine")
        with t:
            reaper.reap()
            assert t["mine"].netns.exists()
        assert ns.exists()
    finally:
        ns.delete()


def test_interrupted_pytest_run_cleans_up(tmp_path):
    test_file = tmp_path / "test_hold.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import threading

            def test_hold(testbed):
                print("HOLD", flush=True)
                threading.Event().wait(120)
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(owner.ENV_RUN, None)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-s",  # a suite of its own, outside the checkout: the installed plugin gives it the fixtures
            "-p",
            "no:cacheprovider",
            "--stack",
            "linux",
            str(test_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    for line in p.stdout:
        if "HOLD" in line:
            break
    else:
        pytest.fail("pytest did not reach the test")
    assert len(lab_namespaces_of(p.pid)) == 2
    p.send_signal(signal.SIGINT)
    p.wait(30)
    assert lab_namespaces_of(p.pid) == []


def test_reaper_spares_a_process_that_only_names_a_dead_runs_path(tmp_path):
    # A `tail -f` of a dead run's log is not the lab's process, whatever path it names.
    path = tmp_path / "labkit-abcd-999999-notes.txt"
    path.write_text("x")
    reader = subprocess.Popen(["tail", "-f", str(path)], stdout=subprocess.DEVNULL)
    try:
        reaper.reap()
        assert reader.poll() is None, "the reaper killed a process that is not the lab's"
    finally:
        reader.kill()
        reader.wait()


def test_a_failing_service_close_still_stops_the_stack(monkeypatch, no_leftovers):
    from labkit.stacks import LinuxStack, StackSpec
    from labkit.stacks.base import Service
    from labkit.testbed import Testbed

    bed = Testbed(StackSpec(LinuxStack)).up()
    bed.stack.service("udp-echo")
    workdir = bed.stack.workdir

    def broken(self):
        raise OSError("close failed")

    monkeypatch.setattr(Service, "close", broken)
    with pytest.raises(OSError, match="close failed"):
        bed.down()
    assert not workdir.exists(), "the stack's workdir outlived a failed service close"


INTERRUPTED = textwrap.dedent(
    """
    import os, signal, subprocess, sys, threading
    from labkit.lifecycle import janitor, owner
    from labkit.lifecycle.process import lab_env

    owner.run_id()
    janitor.install_interrupt_handlers()
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen(["sleep", "60"], **quiet)  # inherits the run id, no owner tag: an xdist worker's kind
    lab = subprocess.Popen(["sleep", "60"], env=lab_env(), **quiet)  # owner-tagged: the lab ends it itself
    try:
        print("READY", flush=True)
        threading.Event().wait(60)
    except KeyboardInterrupt as exc:
        print("INTERRUPTED", repr(exc), flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):  # while unwinding: ignored, the teardown goes on
        os.kill(os.getpid(), sig)
    print("AFTER", worker.wait(10), lab.poll(), flush=True)
    lab.kill()
    lab.wait()
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_an_interrupt_unwinds_once_and_reaches_the_runs_workers(sig):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(owner.ENV_RUN, None)
    env.pop(owner.ENV_OWNER, None)
    p = subprocess.Popen([sys.executable, "-c", INTERRUPTED], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "READY"
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    lines = out.splitlines()
    assert lines[0].startswith("INTERRUPTED KeyboardInterrupt"), (out, err)
    # The worker got SIGINT (-2); the owner-tagged process was left to the lab (still running: None).
    assert lines[1] == f"AFTER {-signal.SIGINT} None", (out, err)
    assert p.returncode == 0, err


def test_kill_pids_returns_once_an_orphan_is_reaped():
    """`labkit clean` kills orphans, whose parent is init: it must not return while they are zombies."""
    if not process.reaps_reported():
        pytest.skip("this kernel's pidfds do not report a reap (Linux < 6.9): kill_pids cannot wait for it")
    out = subprocess.run(["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, timeout=10).stdout
    orphan = int(out)  # its parent, the shell, has exited: init reaps it, in its own time
    result = process.kill_pids([orphan], timeout=10, reaped=True)
    assert result.killed == [orphan] and result.unreaped == [], result
    assert not Path(f"/proc/{orphan}").exists(), "kill_pids returned before the orphan was reaped"
