"""Builds: a stack driver given a binary of its own, a column of the matrix beside the one on PATH.

`--stack gvisor@/opt/runsc-nightly/runsc` runs gvisor on that file; `--stack gvisor@nightly`
on the build a builds file names (`--lab-builds FILE`):

    [gvisor]
    nightly = "/opt/runsc-nightly/runsc"

The stack id gets `@LABEL`: the name in the file, or, for a path, the name of the binary's
directory (`gvisor@runsc-nightly`). Within one driver a label stands for one file: two paths that
would share a label are refused, naming both. A build is run by the path given, never a renamed
copy and never the file a symlink points to: pasta picks its mode from its own file name.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import LabInputError

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
LABEL_RULE = "letters, digits, '.', '_', '-' (not first)"


@dataclass(frozen=True)
class Build:
    label: str
    path: str  # absolute, as given (not resolved)


def label_of(path: str) -> str:
    """The label of a build given by path: the name of the directory the binary is in."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def check_label(label: str, where: str) -> str:
    if not LABEL.fullmatch(label):
        raise LabInputError(f"{where}: build label {label!r} is not allowed in a stack id; allowed: {LABEL_RULE}")
    return label


def check_binary(path: str, value: str) -> str:
    """`path` made absolute, if it is an executable file; else one line naming `value`."""
    full = os.path.abspath(path)
    allowed = "allowed: an executable file (STACK@/path/to/binary) or a build named in --lab-builds"
    if not os.path.exists(full):
        raise LabInputError(f"build {value!r}: {full} does not exist; {allowed}")
    if not os.path.isfile(full):
        raise LabInputError(f"build {value!r}: {full} is not a file; {allowed}")
    if not os.access(full, os.X_OK):
        raise LabInputError(f"build {value!r}: {full} is not executable; {allowed}")
    return full


@dataclass(frozen=True)
class BuildsFile:
    """The builds a `--lab-builds` file names: driver kind -> label -> path (absolute; a relative
    one is taken from the file's directory). Paths are checked when a `--stack` value uses them,
    so one file can name builds that only some machines have."""

    path: Path | None = None
    builds: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, kinds: Mapping[str, bool]) -> BuildsFile:
        """`kinds`: every known driver kind, True for those that run a binary of their own."""
        path = Path(path)
        where = f"builds file {path}"
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise LabInputError(f'{where} does not exist; allowed: a TOML file of [STACK] tables of LABEL = "PATH"') from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LabInputError(f"{where}: not readable TOML ({exc})") from None
        with_binary = ", ".join(sorted(k for k, has in kinds.items() if has))
        builds: dict[str, dict[str, str]] = {}
        for kind, table in data.items():
            if kind not in kinds:
                raise LabInputError(f"{where}: unknown stack [{kind}]; allowed: {with_binary}")
            if not kinds[kind]:
                raise LabInputError(
                    f"{where}: stack [{kind}] runs no binary of its own, so it has no builds; allowed: {with_binary}"
                )
            if not isinstance(table, dict):
                raise LabInputError(f'{where}: {kind} must be a table ([{kind}]) of LABEL = "PATH"')
            for label, value in table.items():
                check_label(label, f"{where} [{kind}]")
                if not isinstance(value, str) or not value.strip():
                    raise LabInputError(f"{where} [{kind}]: {label} must be a path to a binary, got {value!r}")
                builds.setdefault(kind, {})[label] = str(path.parent.absolute() / value.strip())
        return cls(path, builds)

    def lookup(self, kind: str, label: str, value: str) -> Build:
        named = self.builds.get(kind, {})
        if label not in named:
            where = f"in {self.path}" if self.path is not None else "(no --lab-builds file given)"
            known = ", ".join(sorted(named)) or "none"
            raise LabInputError(
                f"unknown build {value!r}: no {kind} build {label!r} {where}; allowed: a path to the binary, or one of: {known}"
            )
        return Build(label, check_binary(named[label], value))


def build_for(kind: str, program: str, ref: str, value: str, named: BuildsFile, with_binary: str) -> Build:
    """The build `ref` (a path: it has a '/'; else a label of `named`) of driver `kind`, which
    runs `program` ("" for none); `value` is the `--stack` value, for the message, and
    `with_binary` the drivers that have builds."""
    if not program:
        raise LabInputError(
            f"stack {value!r}: {kind} runs no binary of its own, so it has no builds; allowed: builds of {with_binary}"
        )
    if not ref:
        raise LabInputError(f"stack {value!r}: nothing after '@'; allowed: STACK@/path/to/{program} or STACK@LABEL of --lab-builds")
    if "/" in ref:
        path = check_binary(ref, value)
        return Build(check_label(label_of(path), f"build {value!r}"), path)
    return named.lookup(kind, ref, value)


class Labels:
    """The builds one `--stack` list uses, by driver and label: one file per label."""

    def __init__(self) -> None:
        self.paths: dict[tuple[str, str], str] = {}

    def add(self, kind: str, build: Build) -> None:
        seen = self.paths.setdefault((kind, build.label), build.path)
        if seen != build.path:
            raise LabInputError(
                f"builds {seen} and {build.path} of {kind} would both be {kind}@{build.label}; "
                "allowed: one binary per label (put them in directories of different names, or name them in --lab-builds)"
            )
