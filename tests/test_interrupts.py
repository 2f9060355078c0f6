"""Interrupts leave nothing (issue 13): a `pytest -n 2` run holding a gVisor and a slirp4netns
testbed is interrupted the way a person or a CI system does it.

- SIGINT to the pytest process, SIGINT to its process group (a terminal's Ctrl-C) and SIGTERM
  (a CI cancel): the run ends within 10 s, prints its summary, and leaves no namespace, process
  or temp path of its run.
- SIGKILL to the whole process group: `labkit clean` leaves nothing, and when it returns every
  process it killed has been reaped (its pid is gone, not a zombie).
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from labkit.lifecycle import owner, pids
from labkit.lifecycle.reaper import run_processes
from labkit.net import netns
from labkit.stacks import resolve

from .conftest import ROOT

STACKS = "gvisor,slirp4netns"
PYTEST_ARGS = ("-n", "2", "--dist", "load", "-p", "no:cacheprovider")  # one check, so one held testbed, per worker
EXIT_BOUND = 10.0  # seconds from the signal to the run's exit (the rule)
HOLD_BOUND = 120.0  # seconds for both workers to start their testbeds (a cold runsc start is slow on 2 cores)

# Each check reports on a FIFO that its testbed is up, then blocks until the run is interrupted.
# With LABKIT_TEST_STRAY set it first starts a lab process that nothing ends but the reaper: in a
# session of its own (a group SIGKILL misses it) and without a death signal.
SUITE = textwrap.dedent(
    """
    import os
    import subprocess
    import threading

    from labkit.lifecycle.process import lab_env


    def test_hold(testbed):
        stray = 0
        if os.environ.get("LABKIT_TEST_STRAY"):
            stray = subprocess.Popen(["sleep", "300"], env=lab_env(), start_new_session=True).pid
        line = f"HOLD {os.getpid()} {testbed.spec.id} {stray}\\n".encode()
        fd = os.open(os.environ["LABKIT_TEST_HOLD_FIFO"], os.O_WRONLY)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        threading.Event().wait(300)
    """
)

# A test run in the background of a shell script starts with SIGINT ignored, and Python keeps it
# ignored: the run is started through this, which restores the default, then execs pytest (same pid).
RESTORE_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)

# The line pytest ends a run with: "==== 2 passed in 3.1s ====", "==== no tests ran in 9.8s ====", ...
SUMMARY = re.compile(r"^=+ .* in [\d.]+s(?: \([\d:]+\))? =+$", re.MULTILINE)


def _unavailable() -> str:
    """Why the run cannot hold a gVisor and a slirp4netns testbed here, or ""."""
    for spec in resolve(STACKS):
        available = spec.availability()
        if not available.ok:
            hint = f"; install: {available.install}" if available.install else ""
            return f"{spec.id} unavailable: {available.reason}{hint}"
    return ""


UNAVAILABLE = _unavailable()
pytestmark = pytest.mark.skipif(bool(UNAVAILABLE), reason=UNAVAILABLE)


@dataclass
class Leftovers:
    namespaces: list[str]
    processes: dict[int, str]
    paths: list[str]

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.processes or self.paths)


def leftovers(run: str) -> Leftovers:
    tag = f"{owner.PREFIX}-{run}-"
    return Leftovers(
        namespaces=[n for n in netns.list_names() if n.startswith(tag)],
        processes=run_processes(run),
        paths=sorted(str(p) for p in Path("/tmp").glob(f"{tag}*")),
    )


class Run:
    """`pytest -n 2` of the holding suite, in a process group of its own, with its own run id."""

    def __init__(self, tmp_path: Path, stray: bool = False) -> None:
        self.run = secrets.token_hex(4)
        suite = tmp_path / "test_hold.py"
        suite.write_text(SUITE)
        fifo = tmp_path / "hold.fifo"
        os.mkfifo(fifo)
        # Both ends open here: the read end never sees EOF between the two workers' writes.
        self.reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.keeper = os.open(fifo, os.O_WRONLY)
        env = dict(os.environ, PYTHONPATH=str(ROOT), LABKIT_TEST_HOLD_FIFO=str(fifo))
        if stray:
            env["LABKIT_TEST_STRAY"] = "1"
        env[owner.ENV_RUN] = self.run
        for name in (owner.ENV_OWNER, "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
            env.pop(name, None)
        self.out = tmp_path / "pytest.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", RESTORE_SIGINT, "-m", "pytest", *PYTEST_ARGS, "--stack", STACKS, str(suite)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
                start_new_session=True,  # its own process group, as a shell's job would be
            )
        self.holders: dict[int, str] = {}  # worker pid -> the stack its check holds
        self.strays: list[int] = []

    def wait_for_holders(self, count: int = 2, timeout: float = HOLD_BOUND) -> None:
        """Block until `count` checks hold a started testbed (event-driven: the FIFO, and the
        run's own exit through a pidfd)."""
        deadline = time.monotonic() + timeout
        pidfd = os.pidfd_open(self.proc.pid)
        pending = b""
        try:
            poller = select.poll()
            poller.register(self.reader, select.POLLIN)
            poller.register(pidfd, select.POLLIN)
            while len(self.holders) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"only {len(self.holders)} of {count} checks held a testbed within {timeout:g}s:\n{self.output()}")
                for fd, _ in poller.poll(left * 1000):
                    if fd == pidfd:
                        pytest.fail(f"the run ended before {count} checks held a testbed:\n{self.output()}")
                    pending += os.read(self.reader, 4096)
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    _, pid, stack, stray = line.decode().split()
                    self.holders[int(pid)] = stack
                    self.strays += [int(stray)] if int(stray) else []
        finally:
            os.close(pidfd)

    def wait_exit(self, timeout: float) -> float | None:
        """Seconds until the run exited (waited for on a pidfd), or None if it still runs after `timeout`."""
        began = time.monotonic()
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(timeout * 1000):
                return None
        finally:
            os.close(pidfd)
        took = time.monotonic() - began
        self.proc.wait()  # reap it: it has exited
        return took

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.reader)
        os.close(self.keeper)
        subprocess.run([sys.executable, "-m", "labkit", "clean", "--run", self.run], cwd=ROOT, capture_output=True, timeout=60)


@pytest.fixture
def lab_run(tmp_path):
    """`start(stray=False)`: a held run, SIGKILLed and cleaned at the end whatever the test did."""
    runs: list[Run] = []

    def start(stray: bool = False) -> Run:
        runs.append(Run(tmp_path, stray))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def send(run: Run, how: str) -> None:
    if how == "sigint-pid":
        run.proc.send_signal(signal.SIGINT)
    elif how == "sigint-group":
        os.killpg(run.proc.pid, signal.SIGINT)
    elif how == "sigterm-pid":
        run.proc.send_signal(signal.SIGTERM)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["sigint-pid", "sigint-group", "sigterm-pid"])
def test_interrupted_run_ends_in_time_with_its_summary_and_leaves_nothing(lab_run, how):
    run = lab_run()
    run.wait_for_holders()
    assert sorted(run.holders.values()) == sorted(STACKS.split(",")), run.holders
    assert leftovers(run.run).namespaces, "the held testbeds should have namespaces of the run"
    send(run, how)
    took = run.wait_exit(EXIT_BOUND)
    out = run.output()
    assert took is not None, f"the run did not end within {EXIT_BOUND:g}s of {how}:\n{out}"
    assert SUMMARY.search(out), f"no summary line after {how}:\n{out}"
    assert "KeyboardInterrupt" in out, out
    left = leftovers(run.run)
    assert not left, f"{how} left {left}\n{out}"


def test_sigkill_of_the_group_then_labkit_clean_leaves_nothing_and_reaps(lab_run):
    run = lab_run(stray=True)
    run.wait_for_holders()
    before = run_processes(run.run)
    assert any("runsc" in argv for argv in before.values()), before
    assert any("slirp4netns" in argv for argv in before.values()), before
    assert len(run.strays) == 2 and set(run.strays) <= set(before), (run.strays, before)
    os.killpg(run.proc.pid, signal.SIGKILL)
    assert run.wait_exit(EXIT_BOUND) is not None
    # The strays outlive the group's SIGKILL: only a reaper ends them, this clean's or, under
    # xdist, that of another test's pytest session (sessions reap dead runs at start) if it came
    # first. Whichever did, none may be left, and what this clean killed must be reaped.
    assert not [p for p in run.strays if p in _children_of_group(run.proc.pid)], "a stray was in the killed group"

    done = subprocess.run([sys.executable, "-m", "labkit", "clean"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    # Another session's reaper may have been first (pytest sessions reap at start): the end state counts.
    assert done.returncode == 0, said
    assert not leftovers(run.run), f"labkit clean left {leftovers(run.run)}\n{said}"
    assert not [p for p in before if pids.alive(p)], f"processes of the killed run alive after labkit clean\n{said}"
    assert not [p for p in run.strays if pids.alive(p)], f"strays alive after labkit clean\n{said}"
    # What it killed is reaped when it returns: the pid is gone, not a zombie waiting for init.
    killed = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("  process ")]
    unreaped = {p: _state(p) for p in killed if Path(f"/proc/{p}").exists()}
    assert not unreaped, f"labkit clean returned before what it killed was reaped: {unreaped}\n{said}"


def _children_of_group(pgid: int) -> list[int]:
    """Live processes still in process group `pgid` (a group SIGKILL leaves none)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and pids.alive(int(entry.name)):
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
