"""Who made a lab resource, so the reaper can tell an orphan from a resource still in use.

Every namespace, temp dir and process the lab makes carries an owner tag `RUN-PID`: the run id
(shared by all xdist workers of one pytest run) and the pid of the process that made it. An owner
record under `STATE_DIR` pins the pid's start time, so a recycled pid does not keep an orphan alive.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from labkit.lifecycle import pids

PREFIX = "labkit"
STATE_DIR = Path(os.environ.get("LABKIT_STATE_DIR", "/run/labkit"))
ENV_OWNER = "LABKIT_OWNER"
ENV_RUN = "LABKIT_RUN_ID"

# labkit-<run>-<pid>-<rest>; run ids are lowercase hex so that the pattern cannot match foreign names.
TAG_RE = re.compile(rf"^{PREFIX}-(?P<run>[0-9a-f]{{4,16}})-(?P<pid>\d+)(?:-(?P<rest>.*))?$")


@dataclass(frozen=True)
class Owner:
    run: str
    pid: int

    @property
    def tag(self) -> str:
        return f"{PREFIX}-{self.run}-{self.pid}"

    @property
    def record(self) -> Path:
        return STATE_DIR / "owners" / f"{self.run}-{self.pid}"

    def register(self) -> None:
        """Write the owner record once; cheap to call before each resource is made."""
        if self.record.exists():
            return
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(pids.start_time(self.pid) or "")

    def alive(self) -> bool:
        started = pids.start_time(self.pid)
        if started is None:
            return False
        try:
            recorded = self.record.read_text().strip()
        except OSError:
            return True  # no record: the pid alone is all we know; never reap a possibly live owner
        return not recorded or recorded == started

    def forget(self) -> None:
        self.record.unlink(missing_ok=True)

    @classmethod
    def parse(cls, name: str) -> Owner | None:
        m = TAG_RE.match(name)
        return cls(m["run"], int(m["pid"])) if m else None


_run_id: str | None = None


def run_id() -> str:
    """The id of this run: inherited from the environment (xdist workers, child processes) or new."""
    global _run_id
    if _run_id is None:
        env = os.environ.get(ENV_RUN, "")
        _run_id = env if re.fullmatch(r"[0-9a-f]{4,16}", env) else secrets.token_hex(3)
        os.environ[ENV_RUN] = _run_id
    return _run_id


def me() -> Owner:
    return Owner(run_id(), os.getpid())


_counter = itertools.count(1)  # next() on it is atomic: threads building topologies side by side get distinct names


def new_name(role: str = "") -> str:
    """A fresh resource name owned by this process: `labkit-RUN-PID-N[-role]`."""
    n = next(_counter)
    owner = me()
    owner.register()
    return f"{owner.tag}-{n}" + (f"-{role}" if role else "")
