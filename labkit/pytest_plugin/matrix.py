"""Which stack variants a check runs on: one per distinct value of the options it depends on.

A variant is a set of driver options (gVisor's channels, GSO, checksum offload, qdisc; slirp4netns's
MTU, rootless; ...). Most checks depend on few of them: the rtnetlink emulation does not care how
many channels read the link. A check (or a whole module, through `pytestmark`) declares the
options its outcome can depend on with `@pytest.mark.varies_with("channels", "gso")`; the variants
of one driver that agree on those options form a group, the first of them (in `--stack` order, so
the default variant when it is selected) runs the check, and the others carry its verdict over.
`--full-matrix` runs every variant.

A carried-over verdict must be one the variant would get itself, so a group also splits where
its members differ in anything else the verdict rests on: their capabilities (a skip), the
addresses their driver gives the check, or the manifest's deviation entry for this very check.
A check that declares nothing varies with everything. A verdict is never carried across builds
(`gvisor@nightly` beside `gvisor`, labkit.stacks.builds): comparing them is why both run; nor to
a variant its build cannot run (a flag it lacks), which skips on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from labkit.errors import LabInputError
from labkit.stacks.base import Stack
from labkit.stacks.registry import StackSpec

MARKER = "varies_with"
T = TypeVar("T")


def known_axes(drivers: Iterable[type[Stack]]) -> set[str]:
    """Every option a variant of these drivers may set."""
    axes: set[str] = set()
    for driver in drivers:
        axes |= set(driver.option_defaults)
        for options in driver.variants.values():
            axes |= set(options)
    return axes


def check_axes(axes: Sequence[str], allowed: set[str], where: str) -> tuple[str, ...]:
    bad = [a for a in axes if a not in allowed]
    if bad:
        raise LabInputError(f"{where}: unknown variant axis {bad[0]!r} in varies_with; allowed: {', '.join(sorted(allowed))}")
    return tuple(axes)


def position(spec: StackSpec, axes: tuple[str, ...] | None) -> tuple[Any, ...]:
    """Where a variant stands on `axes` (None: on every axis), as a hashable key."""
    options = spec.driver.options_for(spec.variant)
    names = sorted(options) if axes is None else [a for a in axes if a in options]
    return tuple((name, _hashable(options[name])) for name in names)


def _hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


def _refusal(spec: StackSpec) -> str | None:
    """Why the variant cannot run here (a flag its build lacks: a skip of its own), or None."""
    available = spec.availability()
    return None if available.ok else available.reason


@dataclass
class Cell(Generic[T]):
    """One check on one group of variants: `measured` runs it, `carried` take its verdict."""

    measured: T
    carried: list[T] = field(default_factory=list)


def plan_cells(
    items: Sequence[T], spec_of: Callable[[T], StackSpec], axes: tuple[str, ...] | None, key: Callable[[T], Hashable]
) -> list[Cell[T]]:
    """Group the runs of one check (`items`, one per variant) by driver and build, by their
    position on `axes` and by `key` (what else the verdict rests on); the first of each group is measured.
    The order of `items` is kept among the measured ones."""
    groups: dict[Hashable, Cell[T]] = {}
    for item in items:
        spec = spec_of(item)
        group = (spec.driver, spec.build, _refusal(spec), position(spec, axes), key(item))
        if group in groups:
            groups[group].carried.append(item)
        else:
            groups[group] = Cell(item)
    return list(groups.values())
