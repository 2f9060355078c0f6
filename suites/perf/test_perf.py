"""One check per (stack, metric): the cell was measured, and its median meets its gate.

The measuring is the campaign's (suites/perf/conftest.py, labkit.perf.campaign), shared by every
check of the session; a check fails with the cell's figures when its ratio to the kernel is below
the gate in suites/perf.toml. An erratic cell is a finding of the report, not a failure.
"""

from __future__ import annotations

from typing import Any

import pytest


def _figures(cell: dict[str, Any]) -> str:
    values = ", ".join(f"{v:.4g}" for v in cell["values"])
    return (
        f"{cell['stack']} {cell['metric']} (MTU {cell['mtu']}): median {cell['median']} {cell['unit']} "
        f"[{values}], CV {cell['cv']}, ratio to the kernel {cell['ratio']}"
    )


def test_perf(request: pytest.FixtureRequest, perf_cell: tuple[str, str, int], perf_run: dict[str, Any]) -> None:
    stack, metric, mtu = perf_cell
    for key in (stack, f"{stack}:mtu{mtu}"):
        if key in perf_run["skipped"]:
            pytest.skip(f"{key} not measured: {perf_run['skipped'][key]}")
    found = [c for c in perf_run["cells"] if (c["stack"], c["metric"], c["mtu"]) == (stack, metric, mtu)]
    if not found:
        pytest.skip(f"{stack} {metric} at MTU {mtu} was not measured (the stack runs at another MTU, or its testbed did not come up)")
    cell = found[0]
    request.node.user_properties.append(("perf", cell))
    if cell["errors"]:
        pytest.fail(f"{len(cell['errors'])} measurement(s) failed; first: {cell['errors'][0]}; {_figures(cell) if cell['values'] else ''}")
    gate = cell["gate"]
    if gate is not None and not gate["met"]:
        pytest.fail(f"below its gate (min_ratio {gate['min_ratio']}): {_figures(cell)}", pytrace=False)
