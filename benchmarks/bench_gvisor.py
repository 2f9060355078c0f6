"""gVisor sandbox costs: start, stop, and what a check pays per run once sandboxes are pooled.

The per-check figure is what the `testbed` fixture costs a check on gvisor, 20 checks in a row:
with the pool, a reset and the pool's look at what the check left (labkit.testbed.isolation), in
each isolation mode, interleaved and repeated 3 times (median); without it, a start and a stop
per check. Stops run in the background with the pool, so a check waits only for what is on its
own path.
"""

from __future__ import annotations

import statistics
import time

from labkit.net.plan import AddressPlan
from labkit.stacks import GVisorStack, StackSpec
from labkit.testbed import Testbed
from labkit.testbed.isolation import Mode
from labkit.testbed.pool import TestbedPool

from .common import Figure

CHECKS = 20  # checks of one variant in a row, about one module


def _start_stop() -> tuple[float, float, float]:
    starts, stops, stacks = [], [], []
    for _ in range(5):
        bed = Testbed(StackSpec(GVisorStack))
        t = time.perf_counter()
        bed.up()
        starts.append(time.perf_counter() - t)
        assert bed.stack is not None
        stacks.append(bed.stack.started_in)
        t = time.perf_counter()
        bed.down()
        stops.append(time.perf_counter() - t)
    return statistics.median(starts), statistics.median(stacks), statistics.median(stops)


def _per_check(reuse: bool, isolation: Mode = "cheap") -> float:
    """What a check waits for on its own path: hand-out, and give-back with the pool's look."""
    spec, plan = StackSpec(GVisorStack), AddressPlan()
    pool = TestbedPool(keep=2 if reuse else 0, isolation=isolation)
    pool.release(pool.acquire(spec, plan), reusable=True)  # the start is the unpooled figure's, not this one's
    t = time.perf_counter()
    for _ in range(CHECKS):
        bed = pool.acquire(spec, plan)
        pool.release(bed, reusable=True)
    on_path = (time.perf_counter() - t) / CHECKS
    pool.close()
    return on_path


def run() -> list[Figure]:
    if not GVisorStack.availability().ok:
        print(f"gvisor benchmarks skipped: runsc unavailable; install: {GVisorStack.availability().install}")
        return []
    start, stack_start, stop = _start_stop()
    # Interleaved and repeated, so the machine's noise hits each mode alike; the median of each.
    runs: dict[str, list[float]] = {"off": [], "cheap": [], "canary": []}
    for _ in range(3):
        for mode in runs:
            runs[mode].append(_per_check(True, mode))  # type: ignore[arg-type]
    pooled = {mode: statistics.median(times) for mode, times in runs.items()}
    pooled_per_check, unpooled_per_check = pooled["cheap"], _per_check(False)
    return [
        Figure("gvisor testbed up (topology + runsc create/start)", start * 1e3, "ms"),
        Figure("  of which runsc create + start", stack_start * 1e3, "ms"),
        Figure("gvisor testbed down (SIGKILL + bounded wait)", stop * 1e3, "ms"),
        Figure(
            "gvisor per-check, pooled, isolation cheap",
            pooled_per_check * 1e3,
            "ms",
            "<= 60 ms",
            pooled_per_check <= 0.06,
        ),
        Figure("  of which the pool's look (cheap - off)", (pooled["cheap"] - pooled["off"]) * 1e3, "ms"),
        Figure("gvisor per-check, pooled, isolation canary (CI)", pooled["canary"] * 1e3, "ms"),
        Figure("  canary / cheap, same run", pooled["canary"] / pooled["cheap"], "x"),
        Figure(f"gvisor per-check overhead, unpooled ({CHECKS} checks)", unpooled_per_check * 1e3, "ms"),
    ]
