"""Finding stack drivers by name.

Built-in drivers are listed here; third-party ones come from the `labkit.stacks` entry point
group or from `module.path:ClassName`. A name selects a driver and a variant:
`linux` (the default variant), `linux-txcsum`, `linux-*` (every variant), `gvisor-ch4+txcsum`
(named variants combined). `NAME@BUILD` runs it on a binary of its own (labkit.stacks.builds):
`gvisor@/opt/runsc-nightly/runsc`, `gvisor-*@nightly`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path

from labkit.errors import LabInputError
from labkit.manifest import stack_matches
from labkit.stacks.base import Availability, Stack
from labkit.stacks.builds import Build, BuildsFile, Labels, build_for
from labkit.stacks.gvisor import GVisorStack
from labkit.stacks.linux import LinuxStack
from labkit.stacks.pasta import PastaStack
from labkit.stacks.slirp4netns import Slirp4netnsStack

BUILTIN: dict[str, type[Stack]] = {"linux": LinuxStack, "gvisor": GVisorStack, "slirp4netns": Slirp4netnsStack, "pasta": PastaStack}


@dataclass(frozen=True)
class StackSpec:
    """A driver class, a variant name and the build it runs (None: its program on PATH): what the
    `stack` fixture is parametrized over."""

    driver: type[Stack]
    variant: str = ""
    build: Build | None = None

    @property
    def id(self) -> str:
        name = self.driver.id_for(self.variant)
        return f"{name}@{self.build.label}" if self.build is not None else name

    @property
    def capabilities(self) -> frozenset[str]:
        return self.driver.capabilities_for(self.variant)

    def availability(self) -> Availability:
        """The driver's availability with this build's binary; a variant the binary cannot run
        (a flag it lacks) is unavailable, saying which flag of which file."""
        found = self.driver.availability(self.build.path) if self.build is not None else self.driver.availability()
        if not found.ok or not found.binary:
            return found
        why = self.driver.refusal(self.variant, found.binary)
        return found if why is None else replace(found, ok=False, reason=why, install=None)

    def create(self) -> Stack:
        if self.build is None:
            return self.driver(self.variant)
        stack = self.driver(self.variant, binary=self.build.path)
        stack.build_label = self.build.label
        return stack


def load_driver(path: str) -> type[Stack]:
    """Import `module.path:ClassName` and check it is a Stack driver."""
    module_name, _, cls_name = path.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise LabInputError(
            f"cannot load stack driver {path!r}: {exc}; allowed: module.path:ClassName of a labkit.stacks.Stack subclass"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, Stack) and obj.kind):
        raise LabInputError(f"stack driver {path!r} is not a labkit.stacks.Stack subclass with a kind")
    return obj


def known_drivers() -> dict[str, type[Stack]]:
    drivers = dict(BUILTIN)
    for ep in entry_points(group="labkit.stacks"):
        try:
            cls = ep.load()
        except Exception:
            continue
        if isinstance(cls, type) and issubclass(cls, Stack):
            drivers.setdefault(cls.kind or ep.name, cls)
    return drivers


def resolve(names: str | list[str], builds: BuildsFile | None = None) -> list[StackSpec]:
    """Turn `--stack` values into specs; unknown names are refused with the list of allowed ones.
    `NAME@BUILD` gives the stacks NAME selects the build's binary (a path, or a label of `builds`);
    a glob or `all` takes the drivers among them that can have that build."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    drivers = known_drivers()
    all_ids = {cls.id_for(v): StackSpec(cls, v) for cls in drivers.values() for v in cls.variants}
    labels = Labels()
    specs: list[StackSpec] = []
    for item in items:
        name, at, ref = item.partition("@")
        found = _named(name.strip(), all_ids, drivers)
        if not found:
            allowed = ", ".join(sorted(all_ids)) + ", all, NAME-* or module.path:ClassName, each optionally @BUILD"
            raise LabInputError(f"unknown stack {name.strip()!r}; allowed: {allowed}")
        if at:
            found = _with_build(
                found, ref.strip(), item, builds or BuildsFile(), many=name.strip() == "all" or _is_glob(name), drivers=drivers
            )
            for spec in found:
                assert spec.build is not None
                labels.add(spec.driver.kind, spec.build)
        specs.extend(s for s in found if s not in specs)
    return specs


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _named(name: str, all_ids: dict[str, StackSpec], drivers: dict[str, type[Stack]]) -> list[StackSpec]:
    if ":" in name:
        return [StackSpec(load_driver(name), "")]
    if name == "all":
        return list(all_ids.values())
    if _is_glob(name):
        return [s for i, s in all_ids.items() if stack_matches(i, name)]
    return [all_ids[name]] if name in all_ids else _combined(name, drivers)


def _with_build(
    found: list[StackSpec], ref: str, item: str, builds: BuildsFile, many: bool, drivers: dict[str, type[Stack]]
) -> list[StackSpec]:
    """`found` on build `ref`. For one stack a driver that cannot have it is refused; for a glob
    or `all`, the drivers that can are kept, and it is refused only when none can."""
    with_binary = ", ".join(sorted(k for k, cls in drivers.items() if cls.program)) or "none installed"
    if "/" in ref and len({s.driver for s in found if s.driver.program}) > 1:
        kinds = ", ".join(sorted({s.driver.kind for s in found if s.driver.program}))
        raise LabInputError(
            f"stack {item!r}: one binary for several stacks ({kinds}); allowed: NAME@PATH or NAME-*@PATH of one stack"
        )
    out: list[StackSpec] = []
    first_error: LabInputError | None = None
    made: dict[type[Stack], Build] = {}
    for spec in found:
        try:
            if spec.driver not in made:
                made[spec.driver] = build_for(spec.driver.kind, spec.driver.program, ref, item, builds, with_binary)
        except LabInputError as exc:
            if not many:
                raise
            first_error = first_error or exc
            continue
        out.append(replace(spec, build=made[spec.driver]))
    if not out and first_error is not None:
        raise first_error
    return out


def _combined(item: str, drivers: dict[str, type[Stack]]) -> list[StackSpec]:
    """`gvisor-ch4+txcsum`: a driver's named variants joined by '+' (refused if they conflict)."""
    if "+" not in item:
        return []
    for cls in drivers.values():
        if item.startswith(f"{cls.kind}-"):
            variant = item[len(cls.kind) + 1 :]
            cls(variant)  # the driver validates the combination: a one-line error naming what is wrong
            return [StackSpec(cls, variant)]
    return []


def load_builds(path: str | Path) -> BuildsFile:
    """A `--lab-builds` file, checked against the known drivers."""
    return BuildsFile.load(path, {kind: bool(cls.program) for kind, cls in known_drivers().items()})


def default_specs() -> list[StackSpec]:
    """Every installed stack, in its default variant (unavailable ones too: they are shown as skips)."""
    return [StackSpec(cls, "") for cls in known_drivers().values()]
