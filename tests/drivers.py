"""Drivers for labkit's own tests: a stack that is never installed (its checks are skipped, and
the report's column says why)."""

from __future__ import annotations

from labkit.stacks import LinuxStack
from labkit.stacks.base import Availability


class MissingStack(LinuxStack):
    kind = "missing"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(False, "the missing stack is never installed", "apt-get install -y nothing-at-all")
