"""How much memory a stack's own processes hold, and whether it grows with the frames it gets.

A user-space stack that keeps something per malformed frame (a reassembly queue never freed, a
connection entry for every bad SYN) dies of it in production long after a test would notice a
crash. The lab reads the resident set of the stack's processes after every batch and fits a line
through (frames sent, RSS) once the stack is warm: Go's heap (netstack) and glibc's arenas
(libslirp, passt) grow to a plateau first, and that plateau is not a leak.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MB = 1 << 20
PER_FRAMES = 100_000
LIMIT = 20 * MB  # growth allowed per PER_FRAMES frames (the figure)
WARMUP = 0.25  # the first quarter of the frames (and at least WARMUP_MIN) warms the stack up
WARMUP_MIN = 500
# A line through a few thousand frames extrapolated to 100,000 magnifies noise: growth is only a
# leak when the RSS also really rose by this much over the measured span.
FLOOR = 6 * MB
MIN_SAMPLES = 5


def rss(pids: Iterable[int]) -> int | None:
    """The summed resident set (bytes) of `pids`; None when none of them can be read (all gone)."""
    total, seen = 0, False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        seen = True
                        break
        except (OSError, ValueError):
            continue
    return total if seen else None


@dataclass(frozen=True)
class Growth:
    """The fitted growth of the stack's memory after its warm-up."""

    per_100k: float  # bytes per PER_FRAMES frames (the slope of the least-squares line)
    rise: int  # bytes: the last sample over the lowest after the warm-up
    frames: int  # frames the fit spans
    samples: int

    @property
    def leaks(self) -> bool:
        return self.per_100k > LIMIT and self.rise > FLOOR

    def describe(self) -> str:
        if self.leaks:
            verdict = f"over the {LIMIT // MB} MB limit"
        elif self.per_100k > LIMIT:  # steep, but too little to tell from the heap's own ups and downs
            verdict = f"steeper than the {LIMIT // MB} MB limit, but a rise under {FLOOR // MB} MB is not judged a leak"
        else:
            verdict = f"within the {LIMIT // MB} MB limit"
        return (
            f"{self.per_100k / MB:.1f} MB per {PER_FRAMES:,} frames ({verdict}), "
            f"RSS rose {self.rise / MB:.1f} MB over {self.frames:,} frames after the warm-up ({self.samples} samples)"
        )


def growth(samples: Sequence[tuple[int, int]]) -> Growth | None:
    """Fit (frames sent so far, RSS bytes) after the warm-up; None when too few frames or samples
    came after it to say anything (a short smoke run)."""
    if not samples:
        return None
    total = samples[-1][0]
    start = max(WARMUP_MIN, int(total * WARMUP))
    after = [(x, y) for x, y in samples if x >= start]
    if len(after) < MIN_SAMPLES or after[-1][0] - after[0][0] < WARMUP_MIN:
        return None
    n = len(after)
    mx = sum(x for x, _ in after) / n
    my = sum(y for _, y in after) / n
    sxx = sum((x - mx) ** 2 for x, _ in after)
    slope = sum((x - mx) * (y - my) for x, y in after) / sxx if sxx else 0.0
    rise = after[-1][1] - min(y for _, y in after)
    return Growth(slope * PER_FRAMES, rise, after[-1][0] - after[0][0], n)
