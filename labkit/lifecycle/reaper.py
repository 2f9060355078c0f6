"""Remove what dead lab runs left behind, and nothing else.

A resource is the lab's only if its name (or its process environment) carries an owner tag
`labkit-RUN-PID`; it is an orphan only if that owner is no longer running. Live runs, including
the other xdist workers of this run, are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit.lifecycle import owner as owners
from labkit.lifecycle.pids import alive
from labkit.lifecycle.process import kill_pids
from labkit.net.netns import NetNS, list_names

KILL_TIMEOUT = 5.0  # seconds a SIGKILLed orphan may take to end (a runsc sandbox takes ~1.5 s)


@dataclass
class Reaped:
    """What a reap did. Only what really ended counts as killed; what is still there is named."""

    namespaces: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)  # killed: seen to end
    paths: list[str] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)  # SIGKILLed, still alive when the wait ended
    refused: list[int] = field(default_factory=list)  # processes we may not signal (not root?)
    kept_namespaces: list[str] = field(default_factory=list)  # not deleted: a survivor is still in it
    unreaped: list[int] = field(default_factory=list)  # killed, but their parent had not reaped them when the wait ended

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.processes or self.paths or self.left)

    @property
    def left(self) -> list[int]:
        """The orphaned processes still there after the reap."""
        return sorted(self.survivors + self.refused)

    def summary(self) -> str:
        if not self:
            return "nothing to clean"
        text = (
            f"removed {len(self.namespaces)} namespace(s), killed {len(self.processes)} process(es), "
            f"removed {len(self.paths)} path(s)"
        )
        if self.survivors:
            text += (
                f"; {len(self.survivors)} process(es) survived SIGKILL for {KILL_TIMEOUT:g}s: {self.survivors} "
                "(stuck in the kernel? run labkit clean again later)"
            )
        if self.refused:
            text += f"; not allowed to kill {len(self.refused)} process(es): {self.refused} (run as root)"
        if self.unreaped:
            text += f"; {len(self.unreaped)} killed process(es) not reaped by their parent within {KILL_TIMEOUT:g}s: {self.unreaped}"
        if self.kept_namespaces:
            text += f"; kept {len(self.kept_namespaces)} namespace(s) that still hold them: {self.kept_namespaces}"
        return text


def _orphaned(tag_holder: str, include_live_run: str | None) -> owners.Owner | None:
    o = owners.Owner.parse(tag_holder)
    if o is None:
        return None
    if include_live_run is not None and o.run == include_live_run:
        return o
    return None if o.alive() else o


_ROOT_TAG = re.compile(rb"^--root=.*/(" + owners.PREFIX.encode() + rb"-[0-9a-f]{4,16}-\d+)")


def _owner_of_process(pid: int) -> str | None:
    """The owner tag a process carries: in its environment or, for runsc, in its state root.

    runsc starts its sandbox and gofer with a scrubbed environment, but they keep
    `--root=/tmp/labkit-RUN-PID-...` in their arguments. Only runsc's own processes are judged
    by that; any other process that merely names a lab path (a `tail -f` of a log) is not.
    """
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(owners.ENV_OWNER.encode() + b"="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not argv or not os.path.basename(argv[0]).startswith(b"runsc"):
        return None
    for arg in argv[1:]:
        if m := _ROOT_TAG.match(arg):
            return m.group(1).decode()
    return None


def run_processes(run: str) -> dict[int, str]:
    """Live processes of run `run` (pid -> command line), by any mark it leaves: its id in their
    environment (the pytest process, its workers, stacks, services), or a lab path of the run on
    their command line (runsc's sandbox and gofer scrub their environment). Broader than what the
    reaper takes (owner tags of dead owners): the tests' and the soak's view of what a run left.
    A zombie is dead (labkit.lifecycle.pids) and not listed."""
    found: dict[int, str] = {}
    env_marks = (f"{owners.ENV_RUN}={run}".encode(), f"{owners.ENV_OWNER}={owners.PREFIX}-{run}-".encode())
    path_mark = f"{owners.PREFIX}-{run}-".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ours = path_mark in argv or any(item.startswith(mark) for item in env.split(b"\0") for mark in env_marks)
        if ours and alive(pid):
            found[pid] = argv.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def temp_roots() -> list[Path]:
    return [Path(tempfile.gettempdir())]


def reap(run: str | None = None) -> Reaped:
    """Clean orphans of dead owners; with `run`, also everything of that run (owners alive or not).

    Order matters: processes first (they may hold namespaces and files), then namespaces, then files.
    """
    done = Reaped()
    me = os.getpid()

    # Processes tagged by a dead (or the given) owner, and processes inside orphaned namespaces.
    doomed_ns = [n for n in list_names() if _orphaned(n, run)]
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        tag = _owner_of_process(int(entry.name))
        if tag and _orphaned(tag, run):
            pids.append(int(entry.name))
    in_ns = {name: [p for p in NetNS(name).pids() if p != me] for name in doomed_ns}
    pids = sorted(set(pids).union(*in_ns.values()))
    # Waited for until reaped, not only until dead: when `labkit clean` returns, what it killed is gone.
    killed = kill_pids(pids, KILL_TIMEOUT, reaped=True)
    done.processes, done.survivors, done.refused = killed.killed, killed.survivors, killed.refused
    done.unreaped = killed.unreaped

    for name in doomed_ns:
        if set(in_ns[name]) & set(killed.left):
            done.kept_namespaces.append(name)  # its name is how the next reap finds what is left
            continue
        try:
            NetNS(name).delete()
            done.namespaces.append(name)
        except OSError:
            pass

    for root in temp_roots():
        for path in root.glob(f"{owners.PREFIX}-*"):
            if _orphaned(path.name, run):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                done.paths.append(str(path))

    records = owners.STATE_DIR / "owners"
    if records.is_dir():
        for rec in records.iterdir():
            run_id, _, pid = rec.name.partition("-")
            o = owners.Owner(run_id, int(pid)) if pid.isdigit() else None
            if o and ((run is not None and o.run == run) or not o.alive()):
                rec.unlink(missing_ok=True)
    return done
