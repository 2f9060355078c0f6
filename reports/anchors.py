"""Ids for a page's rows: readable, stable from one run to the next, and unique on the page."""

from __future__ import annotations

import re


def unique_anchor(text: str, taken: set[str]) -> str:
    """`text` made an id (anything but letters, digits, `_.-` becomes `-`), with `-2`, `-3`, ...
    when the page already has it; the result is added to `taken`."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
    out, n = base, 1
    while out in taken:
        n += 1
        out = f"{base}-{n}"
    taken.add(out)
    return out
