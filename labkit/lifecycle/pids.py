"""Whether a process is alive: the one answer every part of the lab uses.

/proc/PID/stat alone misleads. A zombie (state Z) is dead: it only waits for its parent to reap
it. But a thread-group leader that exited while its other threads run shows state Z too, and
that process is alive (a Go program such as runsc may do that). The kernel's own answer is the
pidfd: it turns readable once the whole thread group has exited.
"""

from __future__ import annotations

import errno
import os
import select
from pathlib import Path


def exited(pidfd: int) -> bool:
    """Whether the process behind `pidfd` has exited (every thread of it), without waiting."""
    poller = select.poll()  # not select(): a busy session's fd numbers pass FD_SETSIZE
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def alive(pid: int) -> bool:
    """Whether process `pid` runs: it exists and not every thread of it has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: `pid` names a thread, not a process; ask /proc
            raise
        return _alive_by_proc(pid)
    try:
        return not exited(pidfd)
    finally:
        os.close(pidfd)


def _alive_by_proc(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state not in ("Z", "X"):
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return False


def start_time(pid: int) -> str | None:
    """The start time of a live process (field 22 of /proc/PID/stat, in clock ticks), else None:
    with the pid, it names one process even after the pid number is reused."""
    if not alive(pid):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in field 2 may hold spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]
