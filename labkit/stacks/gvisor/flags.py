"""Which global flags a runsc binary takes, read from its `runsc flags` listing.

Builds of runsc differ in their flags: a newer one adds, renames and drops some. The lab reads
each binary's list once (per version of the file, labkit.stacks.programs.cached), so a variant
whose flag that binary lacks is a named skip and not a sandbox that fails to start.
"""

from __future__ import annotations

import re

from labkit.errors import LabError
from labkit.stacks import programs

# `runsc flags` prints Go's flag usage: "  -name type" on a line, its description indented below.
_FLAG_LINE = re.compile(r"^\s{1,4}-{1,2}([A-Za-z0-9][A-Za-z0-9_.-]*)(?:\s|=|$)")


def parse(listing: str) -> frozenset[str]:
    """The flag names (no dashes) in a `runsc flags` listing."""
    return frozenset(m.group(1) for line in listing.splitlines() if (m := _FLAG_LINE.match(line)))


def known(binary: str) -> frozenset[str] | None:
    """The flags the runsc at `binary` (an absolute path) lists; None when it lists none (a
    runsc without the `flags` command): the lab then cannot tell, and passes its flags as ever."""

    def read(path: str) -> frozenset[str] | None:
        try:
            found = parse(programs.output([path, "flags"]))
        except LabError:
            return None
        return found or None

    return programs.cached("runsc-flags", binary, read)


def name_of(flag: str) -> str:
    """`--gso=false` -> `gso`."""
    return flag.lstrip("-").split("=", 1)[0]
