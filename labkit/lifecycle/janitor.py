"""Last-resort cleanup inside this process: whatever is still up at exit is taken down.

Context managers and fixture finalizers are the normal path. The janitor covers the paths where
they do not run (an exception between creation and `with`, Ctrl-C at an awkward moment, SIGTERM);
a SIGKILLed process is the reaper's job (`labkit.lifecycle.reaper`).

Interrupts (`install_interrupt_handlers`): SIGTERM (a CI cancel) unwinds like Ctrl-C, so the same
finalizers run. The first SIGINT or SIGTERM raises KeyboardInterrupt; a later one is ignored, so
that a second Ctrl-C (or the group's signal arriving after a forwarded one) cannot cut a teardown
short and leave a sandbox behind; the teardown itself is bounded. The first one is also passed on,
as SIGINT, to this process's children of the same run that the lab did not start as stacks or
services: pytest-xdist's workers. Without that, a SIGINT or SIGTERM sent to the pytest process
alone reaches the workers only through execnet, which waits 5 s before it interrupts them.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from pathlib import Path
from typing import Protocol

from labkit.lifecycle import owner


class Disposable(Protocol):
    def close(self) -> object: ...


_live: dict[int, Disposable] = {}
_lock = threading.Lock()


def track(obj: Disposable) -> None:
    with _lock:
        _live[id(obj)] = obj


def untrack(obj: Disposable) -> None:
    with _lock:
        _live.pop(id(obj), None)


def close_all() -> None:
    """Close everything still tracked, newest first (a process before its namespace)."""
    with _lock:
        items = list(_live.values())[::-1]
        _live.clear()
    for obj in items:
        try:
            obj.close()
        except Exception:  # keep going: one failure must not leak the rest
            pass


# -- interrupts -----------------------------------------------------------------------------------

_interrupted: int | None = None  # the signal that started the unwind, once one came


def interrupted() -> int | None:
    """The signal (SIGINT or SIGTERM) this process is unwinding from, or None."""
    return _interrupted


def _children() -> list[int]:
    """This process's children (of every thread): /proc/self/task/*/children, or where the
    kernel lacks that file, every process whose parent we are."""
    me, found, listed = os.getpid(), [], False
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        tasks = []
    for task in tasks:
        try:
            found += [int(p) for p in Path(f"/proc/self/task/{task}/children").read_text().split()]
            listed = True
        except (OSError, ValueError):
            continue
    if listed:
        return found
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _run_child(pid: int, run: str) -> bool:
    """Whether child `pid` is a process of this run that the lab did not start itself: it carries
    the run id it inherited and no owner tag (lab_env gives every lab-made process one)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{owner.ENV_RUN}={run}".encode() in env and not any(e.startswith(owner.ENV_OWNER.encode() + b"=") for e in env)


def _pass_on() -> list[int]:
    """SIGINT to this run's worker children (see the module docstring); returns who got it."""
    run = os.environ.get(owner.ENV_RUN)
    if not run:
        return []
    sent = []
    for pid in _children():
        if _run_child(pid, run):
            try:
                os.kill(pid, signal.SIGINT)  # our own child: its pid cannot be reused before we reap it
            except OSError:
                continue
            sent.append(pid)
    return sent


def _on_interrupt(signum: int, frame: object) -> None:
    global _interrupted
    if _interrupted is not None:
        if "PYTEST_XDIST_WORKER" not in os.environ:
            os.write(2, b"\nlabkit: already stopping; the cleanup is bounded (SIGKILL, then `labkit clean`, if you cannot wait)\n")
        return
    _interrupted = signum
    try:
        _pass_on()
    except Exception:  # passing it on is a shortcut; execnet interrupts the workers all the same
        pass
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise KeyboardInterrupt(f"signal {signum}")


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM unwind once, like Ctrl-C, and are passed on to this run's workers.

    Only in the main thread, and only over the defaults: a handler someone else installed is
    kept, and an ignored SIGINT (a background job of a shell script) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_interrupt)


def _reset_after_fork() -> None:
    global _interrupted
    _interrupted = None


os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(close_all)
