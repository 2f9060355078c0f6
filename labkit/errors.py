"""Errors the lab raises on purpose.

`LabInputError` is for bad input from a person (a test author, the command line, a manifest):
its message is one line that names the bad value and says what is allowed, so that the CLI and the
pytest plugin can print it as is and exit with status 2.
"""

from __future__ import annotations


class LabError(Exception):
    """Something the lab could not do; the message says what and why."""


class LabInputError(LabError, ValueError):
    """Bad input: one line naming the value and what is allowed."""

    exit_code = 2


class StackUnavailable(LabError):
    """A stack cannot run here; `install` is the command that would fix it."""

    def __init__(self, stack: str, reason: str, install: str | None = None) -> None:
        self.stack = stack
        self.reason = reason
        self.install = install
        hint = f" (install: {install})" if install else ""
        super().__init__(f"stack {stack!r} unavailable: {reason}{hint}")
