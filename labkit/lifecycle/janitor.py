"""Last-resort cleanup inside this process: whatever is still up at exit is taken down.

Context managers and fixture finalizers are the normal path. The janitor covers the paths where
they do not run (an exception between creation and `with`, Ctrl-C at an awkward moment, SIGTERM);
a SIGKILLed process is the reaper's job (`labkit.lifecycle.reaper`).
"""

from __future__ import annotations

import atexit
import signal
import threading
from typing import Protocol


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


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_sigterm_handler() -> None:
    """Make SIGTERM unwind like Ctrl-C so finalizers and context managers run."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


atexit.register(close_all)
