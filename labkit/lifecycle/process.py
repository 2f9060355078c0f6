"""Processes the lab starts: in a chosen namespace, tagged with their owner, never orphaned.

Each child gets `LABKIT_OWNER=<tag>` in its environment (the reaper's proof that the lab made it)
and PR_SET_PDEATHSIG=SIGKILL, so a SIGKILLed test run does not leave services behind.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.errors import ExpectTimeout, LabError
from labkit.lifecycle import janitor, owner
from labkit.net.netns import CLONE_NEWNET, NetNS

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def lab_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env[owner.ENV_OWNER] = owner.me().tag
    env[owner.ENV_RUN] = owner.run_id()
    env.update(extra or {})
    return env


CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18


def _child_setup(ns_fd: int | None, private_mounts: bool = False) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if ns_fd is not None and _libc.setns(ns_fd, CLONE_NEWNET) != 0:
        os._exit(121)
    # A mount namespace of its own whose mounts do not propagate back: what a program that
    # unmounts things (slirp4netns --enable-sandbox) does stays with it.
    if private_mounts and (_libc.unshare(CLONE_NEWNS) != 0 or _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0):
        os._exit(122)


class LabProcess:
    """A child process owned by the lab; `close()` ends it (TERM, then KILL) and reaps it."""

    def __init__(self, argv: Sequence[str], netns: NetNS | None = None, private_mounts: bool = False, **popen: Any) -> None:
        owner.me().register()
        ns_fd = netns.open() if netns is not None else None
        popen.setdefault("env", lab_env())
        popen.setdefault("stdin", subprocess.DEVNULL)
        # ns_fd is O_CLOEXEC and not passed: preexec_fn uses it before exec, and no child keeps
        # a namespace alive through an inherited fd.
        try:
            self.popen = subprocess.Popen(list(argv), preexec_fn=lambda: _child_setup(ns_fd, private_mounts), **popen)
        except FileNotFoundError:
            raise LabError(f"cannot run {argv[0]!r}: not found") from None
        finally:
            if ns_fd is not None:
                os.close(ns_fd)
        self.argv = list(argv)
        self._pending = b""
        janitor.track(self)

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
        """End the process: EOF on its stdin pipe first (if it has one), then TERM, then KILL."""
        janitor.untrack(self)
        p = self.popen
        if p.stdin is not None:
            p.stdin.close()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
        return p.returncode

    def __enter__(self) -> LabProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_in(netns: NetNS | None, argv: Sequence[str], timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command to completion inside `netns`, output captured, bounded by `timeout`."""
    ns_fd = netns.open() if netns is not None else None
    try:
        return subprocess.run(
            list(argv),
            preexec_fn=lambda: _child_setup(ns_fd),
            env=kw.pop("env", None) or lab_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kw,
        )
    finally:
        if ns_fd is not None:
            os.close(ns_fd)


def kill_pids(pids: Sequence[int], timeout: float = 5.0) -> list[int]:
    """SIGKILL `pids` and wait (bounded, on pidfds) until they are gone; returns those not killed.

    Our own children among them are reaped, so no zombies pile up during a session. A process
    we may not signal (PermissionError) is reported back, not fatal: cleanup goes on.
    """
    waiting: dict[int, int] = {}
    refused = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except OSError:
            fd = -1
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            refused.append(pid)
            if fd >= 0:
                os.close(fd)
            continue
        if fd >= 0:
            waiting[fd] = pid
    deadline = time.monotonic() + timeout
    try:
        while waiting and (left := deadline - time.monotonic()) > 0:
            for fd in select.select(list(waiting), [], [], left)[0]:
                waiting.pop(fd)
                try:  # reap through the pidfd: a recycled pid number cannot be mistaken for it
                    os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
                except ChildProcessError:
                    pass  # not our child: its parent reaps it
                finally:
                    os.close(fd)
    finally:
        for fd in waiting:
            os.close(fd)
    return refused


def kill_namespace_processes(netns: NetNS) -> None:
    """SIGKILL every process still in a lab namespace; they exist only because the lab ran them."""
    kill_pids([p for p in netns.pids() if p != os.getpid()])


def log_tail(path: Path, lines: int = 5) -> str:
    """The last `lines` lines of a program's log on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"
