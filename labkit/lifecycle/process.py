"""Processes the lab starts: in a chosen namespace, tagged with their owner, never orphaned.

Each child gets `LABKIT_OWNER=<tag>` in its environment (the reaper's proof that the lab made it)
and PR_SET_PDEATHSIG=SIGKILL, so a SIGKILLed test run does not leave services behind.

No Python runs in the forked child (no preexec_fn). The lab's threads enter namespaces and tear
testbeds down while checks start processes, and a child forked from a threaded process can
deadlock on a lock that another thread held at the fork. So:
- the network namespace is the calling thread's own for the moment of the fork (a network
  namespace belongs to a thread, which is how NetNS.entered works): the child is born in it, so
  it is there when LabProcess returns, and a failed setns is a LabError naming the namespace;
- the rest is done by util-linux's small tools, each of which sets one thing and execs the next,
  so the pid stays the program's: `setpriv --pdeathsig KILL`, then, for a mount namespace of its
  own, `unshare --mount --propagation private` (a threaded process may not change its mount
  namespace itself). A tool that fails prints `TOOL: why` and exits before the program runs;
  run_in turns that into a LabError naming the step.
"""

from __future__ import annotations

import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import ExpectTimeout, LabError, LabInputError
from labkit.lifecycle import janitor, owner
from labkit.lifecycle.pids import alive
from labkit.net.netns import NetNS

INTERRUPTED_GRACE = 0.2  # seconds each step of LabProcess.close may take while the run unwinds from an interrupt

# What each tool of the exec chain sets up, to name the step when it fails.
SETUP_STEPS = {
    "setpriv": "PR_SET_PDEATHSIG=SIGKILL (setpriv --pdeathsig KILL)",
    "unshare": "a private mount namespace (unshare --mount --propagation private)",
    "mount": "a file of the lab's bound over a system file in the private mount namespace (mount --bind)",
}
# Binds files in place (SRC DST pairs up to "--"), then execs the program: the one step that
# needs a shell, since util-linux has no tool that mounts and then execs.
_BIND_AND_EXEC = 'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@"'


def lab_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env[owner.ENV_OWNER] = owner.me().tag
    env[owner.ENV_RUN] = owner.run_id()
    env.update(extra or {})
    return env


@functools.cache
def tool(name: str) -> str:
    """The absolute path of a util-linux tool of the exec chain (found once, on our own PATH)."""
    path = shutil.which(name)
    if path is None:
        raise LabError(f"{name} not found: labkit starts its processes through it; install: apt-get install -y util-linux")
    return path


def exec_argv(argv: Sequence[str], private_mounts: bool = False, binds: Sequence[tuple[Path, str]] = ()) -> list[str]:
    """`argv` behind the tools that give it a death signal and, with `private_mounts`, a mount
    namespace of its own whose mounts do not propagate back (what a program that unmounts
    things, slirp4netns --enable-sandbox, does stays with it). `binds` (source, target) are
    bind-mounted there first: the lab's resolv.conf over /etc/resolv.conf, which only that
    program then sees."""
    chain = [tool("setpriv"), "--pdeathsig", "KILL", "--"]
    if private_mounts or binds:
        chain += [tool("unshare"), "--mount", "--propagation", "private", "--"]
    if binds:
        chain += ["/bin/sh", "-c", _BIND_AND_EXEC, "labkit-binds"]
        for source, target in binds:
            chain += [str(source), target]
        chain.append("--")
    return chain + list(argv)


def born_in(netns: NetNS | None) -> AbstractContextManager[None]:
    """The calling thread inside `netns` for the body, so a fork there gives a child born in it
    (a network namespace belongs to a thread); no namespace: the thread's own."""
    return netns.entered() if netns is not None else nullcontext()


def check_startable(argv: Sequence[str], netns: NetNS | None, env: Mapping[str, str] | None, cwd: Any = None) -> None:
    """Refuse, before anything is forked, what would make the child fail before its program runs."""
    if not argv:
        raise LabInputError("command []: allowed: a program and its arguments")
    if netns is not None and not netns.exists():
        raise LabError(f"cannot run {argv[0]!r} in netns {netns.name}: the namespace does not exist")
    program = str(argv[0])
    if os.sep in program:
        found = os.access(Path(cwd or ".", program), os.X_OK)
    else:
        found = shutil.which(program, path=(env if env is not None else os.environ).get("PATH", os.defpath)) is not None
    if not found:
        raise LabError(f"cannot run {program!r}: not found")


def setup_failure(stderr: str, argv: Sequence[str]) -> str | None:
    """What a child's stderr says about a setup step that failed, or None when its program ran.

    The tools print `TOOL: why` and exit before the program starts, so the step's message is the
    first line. (A program that is itself one of the tools is taken at its word.)
    """
    line = stderr.strip().splitlines()[0] if stderr.strip() else ""
    name, sep, why = line.partition(": ")
    if not sep or name not in SETUP_STEPS or os.path.basename(str(argv[0])) == name:
        return None
    if why.startswith("failed to execute"):
        return f"{name} could not exec the next step: {line}"
    return f"setup step {SETUP_STEPS[name]} failed: {line}"


class LabProcess:
    """A child process owned by the lab; `close()` ends it (TERM, then KILL) and reaps it."""

    def __init__(
        self,
        argv: Sequence[str],
        netns: NetNS | None = None,
        private_mounts: bool = False,
        binds: Sequence[tuple[Path, str]] = (),
        **popen: Any,
    ) -> None:
        owner.me().register()
        popen.setdefault("env", lab_env())
        popen.setdefault("stdin", subprocess.DEVNULL)
        check_startable(argv, netns, popen["env"], popen.get("cwd"))
        try:
            with born_in(netns):
                self.popen = subprocess.Popen(exec_argv(argv, private_mounts, binds), **popen)
        except FileNotFoundError as exc:
            raise LabError(f"cannot run {argv[0]!r}: {exc}") from None
        self.argv = list(argv)
        self._pending = b""
        janitor.track(self)

    def running(self) -> bool:
        """Whether the program still runs (not reaped here: close() collects its exit code)."""
        return self.popen.returncode is None and alive(self.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, timeout: float) -> str | None:
        """The next stdout line within `timeout`, None at EOF; the child must have stdout=PIPE.

        Reads the pipe with os.read into our own buffer: a buffered readline() could swallow
        a second line that select() would then never report.
        """
        out = self.popen.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExpectTimeout(f"no output from {self.argv[0]} within {timeout:g}s")
            if not select.select([out], [], [], left)[0]:
                continue
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                rest, self._pending = self._pending, b""
                return rest.decode(errors="replace") or None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(errors="replace") + "\n"

    def close(self, grace: float = 1.0) -> int | None:
        """End the process: EOF on its stdin pipe first (if it has one), then TERM, then KILL.

        While this process unwinds from Ctrl-C or SIGTERM (janitor.interrupted()), each step gets
        INTERRUPTED_GRACE at most: the run must end within seconds, and a service that got the
        terminal's SIGINT too may spend a second dying on its own (Python's shutdown waits for a
        lock that its stdin thread holds).
        """
        janitor.untrack(self)
        p = self.popen
        if janitor.interrupted() is not None:
            grace = min(grace, INTERRUPTED_GRACE)
        if p.stdin is not None:
            p.stdin.close()
            self._wait(grace)
        if p.poll() is None:
            p.terminate()
            if not self._wait(grace):
                p.kill()
                self._wait(5)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
        return p.returncode

    def _wait(self, timeout: float) -> bool:
        """Wait up to `timeout` for the child to exit (on a pidfd: no polling loop), reaping it;
        whether it has exited."""
        p = self.popen
        if p.poll() is not None:
            return True
        fd = os.pidfd_open(p.pid)  # our unreaped child: its pid is still ours, even as a zombie
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(max(0.0, timeout) * 1000)
        finally:
            os.close(fd)
        return p.poll() is not None

    def __enter__(self) -> LabProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_in(
    netns: NetNS | None, argv: Sequence[str], timeout: float = 30.0, binds: Sequence[tuple[Path, str]] = (), **kw: Any
) -> subprocess.CompletedProcess:
    """Run a command to completion inside `netns`, output captured, bounded by `timeout`.

    A setup step that fails (entering the namespace, or a tool of the exec chain) raises
    LabError naming it, rather than passing for the command's own failure; a command that does
    not finish in time is killed and raises ExpectTimeout.
    """
    env = kw.pop("env", None) or lab_env()
    check_startable(argv, netns, env, kw.get("cwd"))
    popen = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with born_in(netns):
        child = subprocess.Popen(exec_argv(argv, binds=binds), **{**popen, **kw})
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            pass  # the janitor has no handle on it, but its death signal and owner tag remain
        raise ExpectTimeout(f"{argv[0]} did not finish within {timeout:g}s (killed)") from None
    finally:
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    done = subprocess.CompletedProcess(list(argv), child.returncode, out, err)
    if done.returncode != 0 and (why := setup_failure(done.stderr, argv)):
        where = f" in netns {netns.name}" if netns is not None else ""
        raise LabError(f"cannot run {argv[0]!r}{where}: {why}")
    return done


@dataclass
class Killed:
    """What kill_pids did, so that only what really ended is counted as killed."""

    killed: list[int] = field(default_factory=list)  # signalled and seen to end within the bound
    survivors: list[int] = field(default_factory=list)  # signalled, still alive when the bound ran out
    refused: list[int] = field(default_factory=list)  # not ours to signal (PermissionError): left alone
    unreaped: list[int] = field(default_factory=list)  # killed, but (asked to wait for it) not yet reaped by its parent

    @property
    def left(self) -> list[int]:
        """Every process still there: survivors and refused."""
        return sorted(self.survivors + self.refused)


@functools.cache
def reaps_reported() -> bool:
    """Whether a pidfd reports POLLHUP once its process has been reaped (Linux >= 6.9), so that a
    wait for another parent's reap can be event-driven. Found out once, on a child of our own."""
    argv = [shutil.which("true") or sys.executable, "-c", ""]  # `true` ignores the arguments
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return False
    try:
        fd = os.pidfd_open(child.pid)
    except OSError:
        child.wait()
        return False
    try:
        child.wait()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in poller.poll(0))
    finally:
        os.close(fd)


def kill_pids(pids: Sequence[int], timeout: float = 5.0, reaped: bool = False) -> Killed:
    """SIGKILL `pids` and wait (bounded, on pidfds) until they are gone; says which ones ended.

    A pid already gone is in no list. The signal goes through a pidfd, so a pid number reused
    after the process ended is never hit. Our own children among them are reaped, so no zombies
    pile up during a session. A process we may not signal (PermissionError) is reported back,
    not fatal: cleanup goes on. A process still alive at the deadline (stuck in the kernel, in
    state D) is a survivor: the caller must not count it as killed.

    With `reaped`, a process that is not our child is waited for until its parent has reaped it
    too (its pid is gone, not a zombie), within the same bound: `labkit clean` returns only once
    what it killed is gone. An orphan's parent is init, which may take its time (~1.5 s seen).
    One still a zombie at the deadline is killed and listed in `unreaped`. Kernels whose pidfds
    do not report a reap (before 6.9) are not waited on for it.
    """
    result = Killed()
    waiting: dict[int, int] = {}  # pidfd -> pid, until it has exited
    zombies: dict[int, int] = {}  # pidfd -> pid, exited, until its parent has reaped it (with `reaped`)
    unwatched: list[int] = []  # pidfd_open failed (e.g. out of fds): no event to wait on, judged after the others
    wait_reap = reaped and reaps_reported()
    try:
        for pid in dict.fromkeys(pids):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:
                fd = -1
            try:
                if fd >= 0:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it ended on its own just now: the pidfd says so below
            except PermissionError:
                result.refused.append(pid)
                if fd >= 0:
                    os.close(fd)
                continue
            if fd >= 0:
                waiting[fd] = pid
            else:
                unwatched.append(pid)
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while waiting or zombies:
            left = max(0.0, deadline - time.monotonic())
            ready = poller.poll(left * 1000)
            for fd, events in ready:
                if fd in zombies:  # registered for POLLHUP alone: reaped by its parent
                    poller.unregister(fd)
                    zombies.pop(fd)
                    os.close(fd)
                    continue
                pid = waiting.pop(fd)
                result.killed.append(pid)
                try:  # reap through the pidfd: a recycled pid number cannot be mistaken for it
                    os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
                except ChildProcessError:  # not our child: its parent reaps it
                    if wait_reap and not events & select.POLLHUP:
                        poller.modify(fd, 0)  # POLLHUP is reported whatever the mask: the reap
                        zombies[fd] = pid
                        continue
                finally:
                    if fd not in zombies:
                        poller.unregister(fd)
                        os.close(fd)
            if not ready and left == 0:
                break
        result.survivors = list(waiting.values())
        result.unreaped = sorted(zombies.values())
        for pid in unwatched:
            (result.survivors if alive(pid) else result.killed).append(pid)
    finally:
        for fd in [*waiting, *zombies]:
            os.close(fd)
    return result


def kill_namespace_processes(netns: NetNS, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process still in a lab namespace (they exist only because the lab ran them);
    returns those killed.

    One that survives is an error: deleting the name then would hide a namespace that lives on
    with that process in it, so the caller must keep the name and say what it left.
    """
    result = kill_pids([p for p in netns.pids() if p != os.getpid()], timeout)
    problems = []
    if result.survivors:
        problems.append(f"process(es) {result.survivors} survived SIGKILL for {timeout:g}s")
    if result.refused:
        problems.append(f"process(es) {result.refused} may not be signalled (not root?)")
    if problems:
        raise LabError(f"netns {netns.name}: " + "; ".join(problems))
    return result.killed


def log_tail(path: Path, lines: int = 5) -> str:
    """The last `lines` lines of a program's log on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"
