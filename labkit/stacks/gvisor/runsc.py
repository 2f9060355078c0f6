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

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import LabError
from labkit.lifecycle import process
from labkit.lifecycle.process import lab_env
from labkit.net.netns import NetNS

# `runsc start` runs as `unshare --mount --propagation private -- sh -c START_SCRIPT ...` (behind
# setpriv's death signal). In that private mount namespace the shell mounts the tmpfs from inside
# the lab namespace (nsenter, a child of the shell), then execs runsc, which stays in the shell's
# network namespace, the caller's: runsc's control socket is an abstract one there. Each step
# exits with its own code, so a failure names the step; the tool's own message is in the log.
START_SCRIPT = """
lab=$1; shift
nsenter --no-fork --net="$lab" -- true || exit 122
nsenter --no-fork --net="$lab" -- mount -t tmpfs none /proc/sys/net/core || exit 123
exec "$@"
"""
_STEPS = {
    122: "setns(lab netns) (nsenter --net)",
    123: "mount tmpfs on /proc/sys/net/core (in the lab netns)",
}


class Runsc:
    """The runsc command for one state root and one set of global flags."""

    def __init__(self, root: Path, flags: Sequence[str], binary: str = "runsc") -> None:
        self.root = root
        self.flags = list(flags)
        self.binary = binary
        root.mkdir(parents=True, exist_ok=True)

    def argv(self, *command: str) -> list[str]:
        return [self.binary, f"--root={self.root}", *self.flags, *command]

    def _run_to_file(self, command: Sequence[str], log: Path, timeout: float, argv: Sequence[str] | None = None) -> None:
        env = lab_env()
        process.check_startable([self.binary], None, env)
        with open(log, "ab") as out:
            try:
                done = subprocess.run(
                    argv or process.exec_argv(self.argv(*command)),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                raise LabError(f"runsc {command[0]} did not finish within {timeout:g}s; log: {log}") from None
        if done.returncode != 0:
            step = _STEPS.get(done.returncode)
            last = last_line(log)
            why = f"setup step {step} failed: {last}" if step else process.setup_failure(last, [self.binary]) or last_error(log)
            raise LabError(f"runsc {command[0]} failed (exit {done.returncode}): {why}")

    def create(self, cid: str, bundle: Path, log: Path, timeout: float = 30.0) -> None:
        self._run_to_file(["create", "--bundle", str(bundle), cid], log, timeout)

    def start(self, cid: str, netns: NetNS, log: Path, timeout: float = 30.0) -> None:
        """`runsc start`, with /proc/sys/net/core covered as seen from the lab namespace (see the
        module docstring); nothing outside runsc's own mount namespace changes."""
        if not netns.exists():
            raise LabError(f"runsc start {cid}: netns {netns.name} does not exist")
        shell = [process.tool("sh"), "-c", START_SCRIPT, "labkit-runsc-start", str(netns.path), *self.argv("start", cid)]
        self._run_to_file(["start", cid], log, timeout, process.exec_argv(shell, private_mounts=True))

    def _query(self, command: str, cid: str, timeout: float) -> str:
        try:
            done = subprocess.run(self.argv(command, cid), capture_output=True, text=True, timeout=timeout, env=lab_env())
        except subprocess.TimeoutExpired:
            raise LabError(f"runsc {command} {cid} did not answer within {timeout:g}s") from None
        if done.returncode != 0:
            raise LabError(f"runsc {command} {cid} failed: {done.stderr.strip()[-300:]}")
        return done.stdout

    def state(self, cid: str, timeout: float = 10.0) -> dict[str, Any]:
        return json.loads(self._query("state", cid, timeout))

    def ps(self, cid: str, timeout: float = 10.0) -> list[SandboxProcess]:
        """The processes inside the sandbox, from its table (`UID PID PPID C TTY STIME TIME CMD`)."""
        rows = [line.split() for line in self._query("ps", cid, timeout).splitlines()[1:]]
        return [SandboxProcess(int(row[1]), row[-1]) for row in rows if len(row) >= 8 and row[1].isdigit()]

    def exec_argv(self, cid: str, argv: Sequence[str], env: Mapping[str, str] = {}) -> list[str]:
        env_flags = [x for k, v in env.items() for x in ("-env", f"{k}={v}")]
        return self.argv("exec", *env_flags, cid, *argv)


@dataclass(frozen=True)
class SandboxProcess:
    pid: int
    command: str


def last_line(log: Path) -> str:
    """The last non-empty line of a log (where a failing setup tool's `TOOL: why` lands)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


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
