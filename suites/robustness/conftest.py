"""The robustness suite's one fixture: a campaign's testbed kept for the evidence.

A campaign builds its own testbeds (a fresh one for every shrink candidate), so the pool's
`testbed` fixture does not apply; the testbed the reproducer last broke is what the plugin
saves as the cell's evidence, with the reproducer beside it, and goes after the check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from labkit.pytest_plugin.hooks import TESTBED
from labkit.testbed import Testbed, down_all
from labkit.testbed.evidence import Piece


@pytest.fixture
def keep_evidence(request: pytest.FixtureRequest) -> Iterator[Callable[[Testbed, list[Piece]], None]]:
    kept: list[Testbed] = []

    def keep(bed: Testbed, pieces: list[Piece]) -> None:
        bed.extra_evidence += pieces
        request.node.stash[TESTBED] = bed
        kept.append(bed)

    try:
        yield keep
    finally:
        if kept and request.node.stash.get(TESTBED, None) in kept:
            del request.node.stash[TESTBED]
        down_all(kept)
