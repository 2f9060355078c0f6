"""The pytest side of the rtnetlink differential: the `rtnl` fixture, its kernel reference, and
the support table gathered over the whole run.

Every process keeps the rows its checks note in memory. An xdist worker hands them to the
controller through xdist's own channel (`config.workeroutput`, read from the node when it goes
down); the process that ends the run (the controller, or the only process) merges them and
stores the table on its config (SUPPORT) before the report is written, and writes
rtnetlink-support.json to the report and evidence directories.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from labkit.net.plan import AddressPlan
from labkit.pytest_plugin.hooks import SETTINGS, layout_of
from labkit.rtnetlink import support
from labkit.rtnetlink.differential import Differential
from labkit.stacks import Stack, resolve
from labkit.testbed import Layout, Testbed

SUPPORT = pytest.StashKey[dict[str, Any]]()  # the merged table, on the config of the process that ends the run
ROWS = pytest.StashKey[list[dict[str, Any]]]()  # this process's rows (and, on the controller, the workers')
WORKER_ROWS = "labkit_rtnetlink_support"  # the key in config.workeroutput


def pytest_configure(config: pytest.Config) -> None:
    config.stash[ROWS] = []


@pytest.fixture(scope="session")
def support_rows(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The rows of this process: every check's `Differential` adds its own."""
    return request.config.stash[ROWS]


class KernelReferences:
    """Kernel namespaces built on a layout and plan, each built once and shared by the checks
    that only read it; closed at the end of the session."""

    def __init__(self) -> None:
        self.beds: dict[tuple[Layout, AddressPlan], Testbed] = {}
        self.exits = ExitStack()

    def get(self, layout: Layout, plan: AddressPlan) -> Testbed:
        if (layout, plan) not in self.beds:
            self.beds[layout, plan] = self.exits.enter_context(Testbed(resolve("linux")[0], plan, layout).up())
        return self.beds[layout, plan]


@pytest.fixture(scope="session")
def _kernel_references() -> Iterator[KernelReferences]:
    references = KernelReferences()
    with references.exits:
        yield references


@pytest.fixture
def kernel_reference(request: pytest.FixtureRequest, plan: AddressPlan) -> Iterator[Testbed]:
    """The kernel on the topology the check's stack runs on (its `layout` marker, its plan):
    shared by the checks that only read, new for a check marked `fresh` (it changes what it
    asks about)."""
    layout = layout_of(request.node)
    if request.node.get_closest_marker("fresh") is None:
        yield request.getfixturevalue("_kernel_references").get(layout, plan)
        return
    with Testbed(resolve("linux")[0], plan, layout).up() as bed:
        yield bed


@pytest.fixture
def rtnl(request: pytest.FixtureRequest, stack: Stack, kernel_reference: Testbed, support_rows: list[dict[str, Any]]) -> Differential:
    """Ask the stack under test and the kernel reference the same, compare, note the row."""
    check = request.node.nodeid.split("::")[-1].split("[")[0]
    callspec = getattr(request.node, "callspec", None)
    params = [str(v) for k, v in callspec.params.items() if k != "stack_spec"] if callspec is not None else []
    return Differential(kernel_reference, stack, support_rows, check + (f"[{'-'.join(params)}]" if params else ""))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller: a worker's rows, from what it handed over when it finished."""
    node.config.stash[ROWS].extend(getattr(node, "workeroutput", {}).get(WORKER_ROWS, []))


@pytest.hookimpl(tryfirst=True)  # before the results collector writes the report
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    rows = config.stash.get(ROWS, [])
    if hasattr(config, "workeroutput"):  # an xdist worker: hand the rows over, the controller merges
        config.workeroutput[WORKER_ROWS] = rows
        return
    if not rows:
        return
    table = support.merge(rows)
    config.stash[SUPPORT] = table
    settings = config.stash.get(SETTINGS, None)
    report = config.getoption("lab_report", None)
    for directory in (Path(report) if report else None, settings.evidence if settings else None):
        if directory is not None:
            support.write(directory, table)
