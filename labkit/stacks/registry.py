"""Finding stack drivers by name.

Built-in drivers are listed here; third-party ones come from the `labkit.stacks` entry point
group or from `module.path:ClassName`. A name selects a driver and a variant:
`linux` (the default variant), `linux-txcsum`, `linux-*` (every variant), `gvisor-ch4+txcsum`
(named variants combined).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from labkit.errors import LabInputError
from labkit.manifest import stack_matches
from labkit.stacks.base import Availability, Stack
from labkit.stacks.gvisor import GVisorStack
from labkit.stacks.linux import LinuxStack
from labkit.stacks.pasta import PastaStack
from labkit.stacks.slirp4netns import Slirp4netnsStack

BUILTIN: dict[str, type[Stack]] = {"linux": LinuxStack, "gvisor": GVisorStack, "slirp4netns": Slirp4netnsStack, "pasta": PastaStack}


@dataclass(frozen=True)
class StackSpec:
    """A driver class and a variant name: what the `stack` fixture is parametrized over."""

    driver: type[Stack]
    variant: str = ""

    @property
    def id(self) -> str:
        return self.driver.id_for(self.variant)

    @property
    def capabilities(self) -> frozenset[str]:
        return self.driver.capabilities_for(self.variant)

    def availability(self) -> Availability:
        return self.driver.availability()

    def create(self) -> Stack:
        return self.driver(self.variant)


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


def resolve(names: str | list[str]) -> list[StackSpec]:
    """Turn `--stack` values into specs; unknown names are refused with the list of allowed ones."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    drivers = known_drivers()
    all_ids = {cls.id_for(v): StackSpec(cls, v) for cls in drivers.values() for v in cls.variants}
    specs: list[StackSpec] = []
    for item in items:
        if ":" in item:
            cls = load_driver(item)
            found = [StackSpec(cls, "")]
        elif item == "all":
            found = list(all_ids.values())
        elif any(ch in item for ch in "*?["):
            found = [s for i, s in all_ids.items() if stack_matches(i, item)]
        else:
            found = [all_ids[item]] if item in all_ids else _combined(item, drivers)
        if not found:
            allowed = ", ".join(sorted(all_ids)) + ", all, NAME-* or module.path:ClassName"
            raise LabInputError(f"unknown stack {item!r}; allowed: {allowed}")
        specs.extend(s for s in found if s not in specs)
    return specs


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


def default_specs() -> list[StackSpec]:
    """Every installed stack, in its default variant (unavailable ones too: they are shown as skips)."""
    return [StackSpec(cls, "") for cls in known_drivers().values()]
