"""runsc, the gVisor runtime, as the lab drives it: one state root per sandbox, fixed global flags.

Two facts of Debian 12 on a new kernel shape the code (README, "Stacks"):
- `runsc create` hands its stdio to the sandbox, which keeps it open: its output goes to a file,
  never to a pipe that the lab would wait on forever.
- runsc refuses `--network=sandbox` when it thinks it runs in the root network namespace, and it
  decides that by whether /proc/sys/net/core/rmem_default exists; kernels >= 6.8 show that file in
  every namespace. `start` therefore runs in a private mount namespace in which that directory, as
  seen from the lab namespace, is covered by an empty tmpfs. Nothing outside that child changes.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from labkit.errors import LabError
from labkit.lifecycle.process import lab_env
from labkit.net.netns import CLONE_NEWNET, NetNS

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

# Exit codes of the start helper's setup steps, so a failure names the step.
_STEPS = {
    120: "unshare(CLONE_NEWNS)",
    121: "make / private",
    122: "setns(lab netns)",
    123: "mount tmpfs on /proc/sys/net/core",
    124: "setns(back)",
}


def _hide_root_netns_marker(lab_fd: int, home_fd: int) -> None:
    """preexec for `runsc start`: the workaround described in the module docstring."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if _libc.unshare(CLONE_NEWNS) != 0:
        os._exit(120)
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        os._exit(121)
    if _libc.setns(lab_fd, CLONE_NEWNET) != 0:
        os._exit(122)
    if _libc.mount(b"none", b"/proc/sys/net/core", b"tmpfs", 0, None) != 0:
        os._exit(123)
    if _libc.setns(home_fd, CLONE_NEWNET) != 0:
        os._exit(124)


def _pdeathsig() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Runsc:
    """The runsc command for one state root and one set of global flags."""

    def __init__(self, root: Path, flags: Sequence[str], binary: str = "runsc") -> None:
        self.root = root
        self.flags = list(flags)
        self.binary = binary
        root.mkdir(parents=True, exist_ok=True)

    def argv(self, *command: str) -> list[str]:
        return [self.binary, f"--root={self.root}", *self.flags, *command]

    def _run_to_file(self, command: Sequence[str], log: Path, timeout: float, preexec=_pdeathsig) -> None:
        with open(log, "ab") as out:
            try:
                done = subprocess.run(
                    self.argv(*command),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=preexec,
                    env=lab_env(),
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                raise LabError(f"runsc {command[0]} did not finish within {timeout:g}s; log: {log}") from None
        if done.returncode != 0:
            step = _STEPS.get(done.returncode)
            why = f"setup step {step} failed" if step else last_error(log)
            raise LabError(f"runsc {command[0]} failed (exit {done.returncode}): {why}")

    def create(self, cid: str, bundle: Path, log: Path, timeout: float = 30.0) -> None:
        self._run_to_file(["create", "--bundle", str(bundle), cid], log, timeout)

    def start(self, cid: str, netns: NetNS, log: Path, timeout: float = 30.0) -> None:
        lab_fd = netns.open()
        home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._run_to_file(["start", cid], log, timeout, preexec=lambda: _hide_root_netns_marker(lab_fd, home_fd))
        finally:
            os.close(lab_fd)
            os.close(home_fd)

    def state(self, cid: str, timeout: float = 10.0) -> dict:
        done = subprocess.run(self.argv("state", cid), capture_output=True, text=True, timeout=timeout, env=lab_env())
        if done.returncode != 0:
            raise LabError(f"runsc state {cid} failed: {done.stderr.strip()[-300:]}")
        return json.loads(done.stdout)

    def exec_argv(self, cid: str, argv: Sequence[str], env: Mapping[str, str] = {}) -> list[str]:
        env_flags = [x for k, v in env.items() for x in ("-env", f"{k}={v}")]
        return self.argv("exec", *env_flags, cid, *argv)


def last_error(log: Path) -> str:
    """The line of a runsc log that says why it failed (runsc prints it last, often JSON)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"(no log at {log})"
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                msg = json.loads(line).get("msg")
            except ValueError:
                msg = None
            if msg:
                return str(msg)
        elif "error" in line.lower() or "fail" in line.lower():
            return line
    return lines[-1] if lines else f"(empty log {log})"
