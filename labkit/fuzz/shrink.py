"""From a batch that broke a stack to the fewest frames that break a fresh one.

Every candidate runs on a new testbed of the stack: a broken stack tells nothing about the next
candidate, and a verdict must not depend on what ran before it. Three steps share one budget:

1. Bisection over the run's history: the failing batch alone, else how few of the batches
   before it (binary search) must be replayed first. Those are then the preamble, sent as they
   were.
2. Bisection over the failing batch's inputs (ddmin: halves, then quarters, ... and their
   complements), then over the preamble's, each candidate sent as raw frames.
3. Hypothesis's shrinker on the inputs left, handed to it in the reduced form
   (labkit.fuzz.draws): it deletes inputs and simplifies the ones left, drawing each candidate
   afresh from the same strategies, for this testbed's MACs and live connection.

A candidate counts only when the stack breaks the same way (a crash stays a crash). Past the
budget, candidates count as not breaking, and the smallest that broke so far is the result.
Finally the result is replayed once more as raw frames, as `labkit replay` sends a pcap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hypothesis import Phase
from hypothesis import strategies as st
from hypothesis.database import InMemoryExampleDatabase

from labkit.errors import LabError
from labkit.fuzz.draws import LIVE, Drawn, Stop, reduced_example, run_hypothesis, sent_of
from labkit.fuzz.oracle import Liveness, Verdict
from labkit.fuzz.replay import Sent
from labkit.testbed import Testbed


class Bench(Protocol):
    """What the shrinker needs of a campaign: new testbeds, frames replayed on one, and a
    reduced batch drawn and sent on one."""

    def testbed(self) -> tuple[Testbed, Liveness]: ...

    def replay(self, bed: Testbed, probe: Liveness, frames: Sequence[Sent]) -> tuple[Verdict, Verdict]: ...

    def send_reduced(
        self, data: st.DataObject, bed: Testbed, probe: Liveness, preamble: Sequence[Sent], live: bool
    ) -> tuple[list[Drawn], Verdict]: ...


# What a candidate may fail with on the lab's side (a testbed that did not come up, a probe's
# service that did not start): the candidate then did not break the stack, and is counted.
LAB_TROUBLE = (LabError, AssertionError, OSError)


@dataclass
class Shrunk:
    frames: list[Sent]
    verdict: Verdict
    history_needed: int | None  # None: not even the whole history broke a fresh stack
    replays: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    evidence: Testbed | None = None  # the testbed the result broke last, kept up for the evidence


class Shrinker:
    def __init__(self, bench: Bench, seed: int, db: InMemoryExampleDatabase, seconds: float) -> None:
        self.bench, self.seed, self.db, self.seconds = bench, seed, db, seconds
        self.deadline = 0.0
        self.candidates = 0
        self.lab_errors = 0  # candidates the lab failed on (counted as not breaking the stack)
        self.kind = ""
        self._kept: Testbed | None = None
        self._preamble: list[Sent] = []
        self._live = False
        self._best: tuple[list[Sent], Verdict] | None = None

    def shrink(self, history: Sequence[Sequence[Drawn]], broken: Verdict) -> Shrunk:
        started = time.monotonic()
        self.deadline = started + self.seconds
        self.kind = broken.kind()
        failing, before = list(history[-1]), [list(b) for b in history[:-1]]
        needed = self._history_needed([sent_of(b) for b in before], sent_of(failing))
        stats: dict[str, Any] = {"from_frames": len(sent_of(failing))}
        kept = failing
        if needed is not None:
            earlier = [item for b in before[len(before) - needed :] for item in b]
            stats["from_frames"] += len(sent_of(earlier))
            kept = self._ddmin(failing, lambda some: self._breaks(sent_of(earlier) + sent_of(some)) is not None)
            if earlier:
                earlier = self._ddmin(earlier, lambda some: self._breaks(sent_of(some) + sent_of(kept)) is not None)
            self._preamble = sent_of(earlier)
        stats["bisection_seconds"] = round(time.monotonic() - started, 1)
        stats["after_bisection"] = len(self._preamble) + len(sent_of(kept))
        before_hypothesis = self.candidates
        self._best = (self._preamble + sent_of(kept), broken) if needed is not None else None
        self._hypothesis(kept)
        stats["hypothesis_candidates"] = self.candidates - before_hypothesis
        if self._best is None:
            stats.update(
                seconds=round(time.monotonic() - started, 1),
                candidates=self.candidates,
                reproduced=False,
                lab_errors=self.lab_errors,
            )
            return Shrunk([], broken, None, stats=stats, evidence=self._take_kept())
        frames, verdict = self._best
        if needed is None:  # hypothesis reproduced what the raw frames did not (a live connection): the batch alone
            needed = 0
        replays = self._confirm(frames)
        stats.update(
            seconds=round(time.monotonic() - started, 1),
            candidates=self.candidates,
            capped=time.monotonic() > self.deadline,
            to_frames=len(frames),
            reproduced=True,
            lab_errors=self.lab_errors,
        )
        return Shrunk(frames, verdict, needed, replays, stats, self._take_kept())

    # -- testbeds ---------------------------------------------------------------------------------

    def _keep(self, bed: Testbed) -> None:
        old, self._kept = self._kept, bed
        if old is not None and old is not bed:
            old.down()

    def _take_kept(self) -> Testbed | None:
        kept, self._kept = self._kept, None
        return kept

    def _same(self, verdict: Verdict) -> bool:
        return not verdict.alive and verdict.kind() == self.kind

    def _breaks(self, frames: list[Sent], keep: bool = False) -> Verdict | None:
        """The verdict when `frames` break a fresh stack the same way; None when they do not, it
        was not alive to begin with, or the lab failed on the way (no evidence either way).
        `keep`: a testbed it broke is kept as the evidence."""
        if time.monotonic() > self.deadline and not keep:
            return None
        self.candidates += 1
        try:
            bed, probe = self.bench.testbed()
        except LAB_TROUBLE:
            self.lab_errors += 1
            return None
        kept = False
        try:
            before, after = self.bench.replay(bed, probe, frames)
            if before.alive and self._same(after):
                if keep:
                    self._keep(bed)
                    kept = True
                return after
            return None
        except LAB_TROUBLE:
            self.lab_errors += 1
            return None
        finally:
            if not kept:
                self._down(bed)

    def _down(self, bed: Testbed) -> None:
        try:
            bed.down()
        except LAB_TROUBLE:
            self.lab_errors += 1

    # -- 1. which batches ---------------------------------------------------------------------------

    def _history_needed(self, before: list[list[Sent]], failing: list[Sent]) -> int | None:
        if self._breaks(failing) is not None:
            return 0
        if not before or self._breaks([s for b in before for s in b] + failing) is None:
            return None
        lo, hi = 1, len(before)  # breaks with `hi` batches before it; not with fewer than `lo`
        while lo < hi and time.monotonic() < self.deadline:
            mid = (lo + hi) // 2
            if self._breaks([s for b in before[len(before) - mid :] for s in b] + failing) is not None:
                hi = mid
            else:
                lo = mid + 1
        return hi

    # -- 2. which inputs ----------------------------------------------------------------------------

    def _ddmin(self, items: list[Drawn], breaks: Callable[[list[Drawn]], bool]) -> list[Drawn]:
        """The classic delta debugging over inputs: a chunk alone, else everything but a chunk,
        at finer and finer chunks, until no single input can go (or the budget is spent).
        Chunks are by position (a batch holds equal inputs more than once) and no subset is
        tried twice."""
        keep = list(range(len(items)))
        tried: set[tuple[int, ...]] = set()

        def test(subset: list[int]) -> bool:
            key = tuple(subset)
            if not subset or key in tried:
                return False
            tried.add(key)
            return breaks([items[i] for i in subset])

        n = 2
        while len(keep) >= 2 and time.monotonic() < self.deadline:
            bounds = [(i * len(keep) // n, (i + 1) * len(keep) // n) for i in range(n)]
            chunks = [keep[lo:hi] for lo, hi in bounds if hi > lo]
            rests = [keep[:lo] + keep[hi:] for lo, hi in bounds if hi > lo] if n > 2 else []
            if (found := next((c for c in chunks if test(c)), None)) is not None:
                keep, n = found, 2
            elif (found := next((r for r in rests if test(r)), None)) is not None:
                keep, n = found, max(n - 1, 2)
            elif n >= len(keep):
                break
            else:
                n = min(len(keep), 2 * n)
        return [items[i] for i in keep]

    # -- 3. hypothesis --------------------------------------------------------------------------------

    def _hypothesis(self, items: list[Drawn]) -> None:
        """Hand `items` to hypothesis as the one saved example of the shrinking run (a secondary
        entry: a primary one hypothesis takes for shrunk already) and let it shrink."""
        keys = [k for k in self.db.data if not k.endswith(b".secondary")]
        if not keys or not items:
            return
        for key in list(self.db.data):
            for value in list(self.db.fetch(key)):
                self.db.delete(key, value)
        self.db.save(keys[0] + b".secondary", reduced_example(items))
        self._live = any(item.source == LIVE for item in items)
        run_hypothesis(self._candidate, [Phase.reuse, Phase.shrink], self.seed, self.db)

    def _candidate(self, data: st.DataObject) -> None:
        if time.monotonic() > self.deadline:
            return  # out of budget: no more candidates break, the smallest so far stands
        try:
            bed, probe = self.bench.testbed()
        except LAB_TROUBLE:
            self.lab_errors += 1
            return
        self.candidates += 1
        try:
            if not probe.check().alive:
                return
            items, verdict = self.bench.send_reduced(data, bed, probe, self._preamble, self._live)
        except LAB_TROUBLE:  # the lab's trouble is not the stack's: this candidate did not break it
            self.lab_errors += 1
            return
        finally:
            self._down(bed)
        if not self._same(verdict):
            return
        frames = self._preamble + sent_of(items)
        if self._best is None or _size(frames) < _size(self._best[0]):
            self._best = (frames, verdict)
        raise Stop()

    def _confirm(self, frames: list[Sent]) -> bool:
        try:
            return self._breaks(frames, keep=True) is not None
        except LabError:
            return False


def _size(frames: Sequence[Sent]) -> tuple[int, int]:
    return len(frames), sum(len(f.frame) for f in frames)
