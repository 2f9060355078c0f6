"""Median, spread and the erratic flag of a cell's repetitions.

A cell is erratic when its repetitions disagree: max/min above MAX_SPREAD, or a coefficient of
variation above MAX_CV. One bad repetition on a shared machine must not flag a stack, so the
campaign re-measures a suspect cell and flags it only when the re-measurements disagree as well
(`confirm`); the flag names the values either way.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MAX_SPREAD = 3.0
MAX_CV = 0.25


@dataclass(frozen=True)
class Summary:
    median: float
    min: float
    max: float
    cv: float  # population standard deviation / mean (0 for one value or a zero mean)


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    cv = statistics.pstdev(values) / mean if len(values) > 1 and mean else 0.0
    return Summary(statistics.median(values), min(values), max(values), cv)


def _figures(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def spread_why(values: Sequence[float]) -> str:
    """Why `values` are erratic ("max/min 4.1 over reps 2.3, 9.5, ..."), or "" when they agree."""
    if len(values) < 2:
        return ""
    s = summarize(values)
    reasons = []
    if s.min > 0 and s.max / s.min > MAX_SPREAD:
        reasons.append(f"max/min {s.max / s.min:.2g}")
    elif s.min <= 0 < s.max:
        reasons.append("max/min unbounded (a repetition measured 0)")
    if s.cv > MAX_CV:
        reasons.append(f"CV {s.cv:.0%}")
    return f"{' and '.join(reasons)} over reps {_figures(values)}" if reasons else ""


def confirm(values: Sequence[float], again: Sequence[float]) -> str:
    """The erratic flag of a cell whose `values` were suspect and that was measured `again`:
    erratic only when the re-measurements disagree too; "" otherwise."""
    first, second = spread_why(values), spread_why(again)
    if not first or not second:
        return ""
    return f"{first} (confirmed by {len(again)} more: {_figures(again)})"
