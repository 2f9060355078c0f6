"""gVisor sandbox costs: start, stop, and what a check pays per run once sandboxes are pooled.

The per-check figure is what the `testbed` fixture costs a check on gvisor: with the pool, the
start of one sandbox spread over a module's worth of checks plus a reset per check; without it,
a start and a stop per check. Stops run in the background with the pool, so a check waits only
for what is on its own path.
"""

from __future__ import annotations

import statistics
import time

from labkit.net.plan import AddressPlan
from labkit.stacks import GVisorStack, StackSpec
from labkit.testbed import Testbed
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


def _per_check(reuse: bool) -> float:
    spec, plan = StackSpec(GVisorStack), AddressPlan()
    pool = TestbedPool(keep=2 if reuse else 0)
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
    pooled_per_check, unpooled_per_check = _per_check(True), _per_check(False)
    return [
        Figure("gvisor testbed up (topology + runsc create/start)", start * 1e3, "ms"),
        Figure("  of which runsc create + start", stack_start * 1e3, "ms"),
        Figure("gvisor testbed down (SIGKILL + bounded wait)", stop * 1e3, "ms"),
        Figure(
            f"gvisor per-check overhead, pooled ({CHECKS} checks)",
            pooled_per_check * 1e3,
            "ms",
            "<= 50 ms",
            pooled_per_check <= 0.05,
        ),
        Figure(f"gvisor per-check overhead, unpooled ({CHECKS} checks)", unpooled_per_check * 1e3, "ms"),
    ]
