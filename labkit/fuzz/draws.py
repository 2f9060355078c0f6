"""How a batch is drawn from hypothesis, and how a reduced batch is handed back to it.

A batch is drawn one input at a time (`draw_batch`), and each input keeps the choices hypothesis
made for it. That is what lets the shrinker start from a batch the bisection already cut down:
the kept inputs' choices are laid out in the reduced form (`draw_reduced`: "another input?",
which strategy, the input), and hypothesis's shrinker takes it from there, deleting inputs and
simplifying the ones left, with every candidate a valid draw of the same strategies.

`stream()` is what a seed sends, without a stack: the same hypothesis run, every batch passing.
"""

from __future__ import annotations

import functools
import unittest
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import InMemoryExampleDatabase, choices_to_bytes
from hypothesis.errors import Flaky
from hypothesis.internal.conjecture import providers
from hypothesis.strategies import SearchStrategy

from labkit.fuzz.frames import Fuzzed, Live, Target, frames, gso_superframes, live_segments
from labkit.fuzz.replay import Sent

BATCH = 32  # inputs per batch: an oracle every ~100 ms on the kernel, a few hundred ms behind runsc
LIVE_DRAWS = 4  # segments into the live connection per batch, at most
GSO_DRAWS = 4  # super-frames per batch through the PACKET_VNET_HDR socket, at most
MAX_EXAMPLES = 10_000_000  # generation ends on time, not on a count
MAX_REDUCED = 256  # inputs in a reduced batch, at most (a bound for hypothesis's replays)
# Which strategy an input came from: any malformed frame, a segment into the live connection,
# a GSO super-frame.
FRAMES, LIVE, GSO = 0, 1, 2
SOURCE_NAMES = {FRAMES: "frames", LIVE: "live", GSO: "gso"}


class Stop(Exception):
    """Ends a hypothesis run from inside its test function (time is up, the stack broke)."""


@dataclass(frozen=True)
class Drawn:
    """One input and the hypothesis choices that drew it."""

    fuzzed: Fuzzed
    source: int
    choices: tuple[Any, ...]

    def sent(self) -> list[Sent]:
        vnet = self.source == GSO
        return [Sent(frame, vnet=vnet, kind=self.fuzzed.kind) for frame in self.fuzzed.frames]


def sent_of(items: Sequence[Drawn]) -> list[Sent]:
    return [s for item in items for s in item.sent()]


def run_hypothesis(body: Callable[[st.DataObject], None], phases: list[Phase], seed_: int, db: InMemoryExampleDatabase) -> None:
    """Run `body` as hypothesis's test function under `seed_`. The function is the same code for
    every run, so a shrinking run finds what was saved for it in `db` under its key. The settings
    start from hypothesis's defaults, not a profile the user loaded, and its habit of drawing
    literals found in the project's own modules is off: both would make a seed's frames depend
    on more than the seed (which modules a pytest worker happened to import first)."""

    @settings(
        settings.get_profile("default"),
        database=db,
        phases=phases,
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
        report_multiple_bugs=False,
    )
    @seed(seed_)
    @given(st.data())
    def fuzz_batch(data: st.DataObject) -> None:
        body(data)

    with _no_local_constants():
        try:
            fuzz_batch()
        except (Stop, Flaky):
            pass
        except unittest.SkipTest:  # a shrinking run whose example was not there to replay: nothing to do
            pass


@contextmanager
def _no_local_constants() -> Iterator[None]:
    """Hypothesis (6.1xx) mixes literals it finds in every local module in sys.modules into what
    it draws, and rescans as modules are imported: the same seed would draw other frames in a
    process that imported more of the project. Its internal hook is swapped for an empty set
    while the lab runs it (labkit pins hypothesis below 7 for this and `conjecture_data`)."""
    hook = getattr(providers, "_get_local_constants", None)
    if hook is None:
        yield
        return
    empty = providers.Constants(
        integers=providers.SortedSet(),
        floats=providers.SortedSet(key=providers.float_to_int),
        bytes=providers.SortedSet(),
        strings=providers.SortedSet(),
    )
    cache = getattr(getattr(providers, "CONSTANTS_CACHE", None), "cache", None)  # filled from the hook on first use
    if cache is not None:
        cache.clear()
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = hook
        if cache is not None:
            cache.clear()


def _one(data: st.DataObject, strategy: SearchStrategy[Fuzzed], source: int) -> Drawn:
    # Straight from hypothesis's record of the example (internal, pinned below 7): DataObject.draw
    # would also describe every strategy and value for a report of a failing test, which costs
    # more than the frame.
    record = data.conjecture_data
    start = len(record.choices)
    fuzzed = record.draw(strategy)
    return Drawn(fuzzed, source, tuple(record.choices[start:]))


@functools.lru_cache(maxsize=16)
def _frames(target: Target) -> SearchStrategy[Fuzzed]:
    """frames(target), built once per target: hypothesis validates a strategy the first time it
    draws from it, and a new one per input would cost more than the input."""
    return frames(target)


def draw_batch(data: st.DataObject, target: Target, size: int, live: Live | None, gso: bool) -> list[Drawn]:
    """`size` malformed frames; then, where there is a live connection, up to LIVE_DRAWS
    segments into it, and for a stack that reads virtio_net_hdr up to GSO_DRAWS super-frames."""
    anything = _frames(target)
    items = [_one(data, anything, FRAMES) for _ in range(size)]
    if live is not None:
        items += [_one(data, live_segments(target, live), LIVE) for _ in range(data.draw(st.integers(0, LIVE_DRAWS)))]
    if gso:
        items += [_one(data, gso_superframes(target, live), GSO) for _ in range(data.draw(st.integers(0, GSO_DRAWS)))]
    return items


def draw_reduced(data: st.DataObject, target: Target, live: Live | None, gso: bool) -> list[Drawn]:
    """The reduced form: for each input, "another?", its strategy, then the input. Hypothesis
    shrinks a "no" forward (fewer inputs) and deletes an input's choices whole."""
    items: list[Drawn] = []
    while len(items) < MAX_REDUCED and data.draw(st.booleans()):
        source = data.draw(st.integers(FRAMES, GSO))
        strategy = _frames(target)
        if source == LIVE and live is not None:
            strategy = live_segments(target, live)
        elif source == GSO and gso:
            strategy = gso_superframes(target, live)
        items.append(_one(data, strategy, source))
    return items


def reduced_example(items: Sequence[Drawn]) -> bytes:
    """`items` in the reduced form, as hypothesis's database stores an example."""
    choices: list[Any] = []
    for item in items:
        choices += [True, item.source, *item.choices]
    choices.append(False)
    return choices_to_bytes(choices)


def stream(target: Target, seed_: int, count: int, size: int = BATCH) -> list[list[Fuzzed]]:
    """The first `count` batches a campaign with `seed_` sends a stack that holds no live
    connection and reads no virtio_net_hdr, every batch passing: what a seed means, without a
    stack (a campaign's frames differ only in its testbed's MACs)."""
    drawn: list[list[Fuzzed]] = []

    def body(data: st.DataObject) -> None:
        if len(drawn) >= count:
            raise Stop()
        drawn.append([d.fuzzed for d in draw_batch(data, target, size, None, False)])

    run_hypothesis(body, [Phase.generate], seed_, InMemoryExampleDatabase())
    return drawn
