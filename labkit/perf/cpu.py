"""All CPU time the machine spent over a measurement, from /proc/stat.

A sandbox's cost is mostly process time (runsc's Sentry, slirp4netns, pasta), the kernel's is
mostly softirq; counting user + nice + system + irq + softirq over all CPUs counts both the same
way. Whatever else the machine did in the window is counted too: the figure is a cost ceiling,
compared across stacks measured interleaved under the same load.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

STAT = Path("/proc/stat")
BUSY = ("user", "nice", "system", "irq", "softirq")
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def busy_ticks(text: str | None = None) -> int:
    """The busy clock ticks of the aggregate `cpu` line (guest time is already inside user)."""
    text = STAT.read_text() if text is None else text
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = dict(zip(FIELDS, (int(v) for v in line.split()[1:]), strict=False))
            return sum(values.get(name, 0) for name in BUSY)
    raise ValueError("no aggregate 'cpu ' line in /proc/stat")


TICK = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuWindow:
    """`with CpuWindow() as w: ...` then `w.seconds`: busy CPU seconds (all CPUs) in the window."""

    start: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    _began: float = 0.0

    def __enter__(self) -> CpuWindow:
        self.start, self._began = busy_ticks(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = (busy_ticks() - self.start) * TICK
        self.wall = time.monotonic() - self._began


def per_gb(cpu_seconds: float, moved: int) -> float | None:
    """CPU seconds per GB (1e9 bytes) moved; None when nothing moved."""
    return cpu_seconds / (moved / 1e9) if moved > 0 else None
