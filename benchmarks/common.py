"""Timing helpers: medians of repeated runs, figures printed as a table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None

    def line(self) -> str:
        verdict = "" if self.met is None else ("  [goal met]" if self.met else "  [GOAL MISSED]")
        goal = f"  goal {self.goal}" if self.goal else ""
        return f"{self.name:<52} {self.value:>12.3f} {self.unit:<10}{goal}{verdict}"


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
