"""The lab's error vocabulary: three kinds, each with one meaning.

- `LabInputError`: bad input from a person (a test author, the command line, a manifest). Its
  message is one line that names the bad value and says what is allowed, so the CLI and the
  pytest plugin print it as is and exit with status 2.
- `LabError`: something the lab itself could not do (a stack would not start, a namespace could
  not be made); the message says what and why.
- `ExpectTimeout`: what the wire, a service or a stack did not show within its bound. It is an
  AssertionError, so a check that times out fails (it is the stack's verdict, not the lab's
  error), and its message says what was looked for and what came closest.
"""

from __future__ import annotations


class LabError(Exception):
    """Something the lab could not do; the message says what and why."""


class LabInputError(LabError, ValueError):
    """Bad input: one line naming the value and what is allowed."""

    exit_code = 2


class ExpectTimeout(AssertionError):
    """Nothing matched within the bound; the message carries what was seen instead."""


class UnexpectedFrame(AssertionError):
    """A frame matched a template that must not be matched."""
