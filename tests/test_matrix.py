"""The matrix rule: a check runs on one variant per distinct value of the options it varies with,
the others carry its verdict over, and nothing is carried where the verdict could differ."""

from __future__ import annotations

import json
import textwrap

import pytest

from labkit.errors import LabInputError
from labkit.pytest_plugin.matrix import check_axes, known_axes, plan_cells
from labkit.stacks import known_drivers, resolve

from .conftest import run_pytest

GVISOR = resolve("gvisor,gvisor-*")


def groups(axes, key=lambda spec: ()):
    return {cell.measured.id: sorted(s.id for s in cell.carried) for cell in plan_cells(GVISOR, lambda s: s, axes, key)}


def test_one_variant_per_value_of_the_declared_axes():
    assert groups(("channels",)) == {
        "gvisor": ["gvisor-nogso", "gvisor-none", "gvisor-noqdisc", "gvisor-norxcsum", "gvisor-swgso", "gvisor-txcsum"],
        "gvisor-ch2": [],
        "gvisor-ch4": [],
    }


def test_no_declaration_means_every_variant_runs():
    assert all(carried == [] for carried in groups(None).values()) and len(groups(None)) == len(GVISOR)


def test_what_else_the_verdict_rests_on_splits_a_group():
    split = groups((), key=lambda spec: spec.capabilities)  # gvisor-none lacks the link
    assert split["gvisor-none"] == [] and "gvisor-none" not in split["gvisor"]


def test_an_unknown_axis_is_one_clear_line():
    allowed = known_axes(known_drivers().values())
    assert {"channels", "gso", "tx_checksum", "rootless", "mtu"} <= allowed
    with pytest.raises(LabInputError) as refused:
        check_axes(("chanels",), allowed, "suites/x.py::test")
    assert "unknown variant axis 'chanels'" in str(refused.value) and "channels" in str(refused.value)
    assert "\n" not in str(refused.value)


CHECKS = textwrap.dedent(
    """
    import pytest

    @pytest.mark.varies_with()
    def test_everywhere_alike(stack):
        assert stack.id.startswith("linux")

    @pytest.mark.varies_with("tx_checksum")
    def test_with_the_offload(stack):
        assert stack.id.startswith("linux")

    @pytest.mark.varies_with()
    def test_known_to_differ_on_one(stack):
        assert stack.id == "linux"

    @pytest.mark.varies_with("chanels")
    def test_typo(stack):
        pass
    """
)
MANIFEST = textwrap.dedent(
    """
    [[deviation]]
    stack = "linux-txcsum"
    check = "*::test_known_to_differ_on_one"
    reason = "a deviation of one variant only: that variant must run the check itself"
    """
)


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "test_cells.py").write_text(CHECKS.replace('@pytest.mark.varies_with("chanels")\ndef test_typo(stack):\n    pass\n', ""))
    (tmp_path / "deviations.toml").write_text(MANIFEST)
    return tmp_path


def test_carried_cells_are_deselected_and_reported(suite):
    done = run_pytest(
        str(suite), "-n", "2", "--stack", "linux,linux-txcsum", "--deviations", str(suite / "deviations.toml"),
        "--lab-report", str(suite / "out"), "-p", "no:randomly",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "4 passed, 1 xfailed in" in done.stdout, done.stdout[-2000:]  # xdist's workers deselect: no count here
    assert "5 check x stack cells measured, 1 carried over" in done.stdout
    cells = {(r["check"].split("::")[-1], r["stack"]): r for r in json.loads((suite / "out" / "results.json").read_text())["results"]}
    carried = cells[("test_everywhere_alike", "linux-txcsum")]
    assert (carried["status"], carried["carried_from"]) == ("passed", "linux")
    assert cells[("test_with_the_offload", "linux-txcsum")]["carried_from"] is None
    assert cells[("test_known_to_differ_on_one", "linux-txcsum")]["status"] == "known deviation"
    assert cells[("test_known_to_differ_on_one", "linux-txcsum")]["carried_from"] is None


def test_full_matrix_measures_every_cell(suite):
    done = run_pytest(str(suite), "--stack", "linux,linux-txcsum", "--deviations", str(suite / "deviations.toml"), "--full-matrix")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "5 passed, 1 xfailed in" in done.stdout and "deselected" not in done.stdout, done.stdout[-2000:]


def test_selecting_one_variant_runs_it_though_another_would_stand_for_it(suite):
    """-k picks the checks first; only then are the runs left grouped."""
    done = run_pytest(str(suite), "--stack", "linux,linux-txcsum", "-k", "everywhere_alike and txcsum", "-v")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "test_everywhere_alike[linux-txcsum] PASSED" in done.stdout and "1 passed" in done.stdout, done.stdout[-2000:]


@pytest.mark.parametrize("full", [False, True], ids=["grouped", "full-matrix"])
def test_an_unknown_axis_stops_the_run_with_one_line(tmp_path, full):
    (tmp_path / "test_typo.py").write_text(CHECKS)
    done = run_pytest(str(tmp_path), "--stack", "linux", *(["--full-matrix"] if full else []))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "unknown variant axis 'chanels' in varies_with; allowed: " in done.stdout + done.stderr


def test_a_failure_is_not_carried_over(tmp_path):
    """A failed measured cell may be its variant's own trouble: the cells it stands for say they
    were not measured; a pass or a known deviation is carried as it is."""
    from labkit.pytest_plugin.results import ResultsCollector
    from reports.results import CheckResult

    collector = ResultsCollector(tmp_path)
    for status in ("failed", "passed", "known deviation"):
        nodeid = f"suites/s/test_x.py::test_{status.replace(' ', '_')}[gvisor]"
        collector.records[nodeid] = CheckResult(nodeid, "s/test_x.py::t", "s", "gvisor", status, "why")
        collector.stands_for[nodeid] = [(nodeid.replace("[gvisor]", "[gvisor-ch2]"), "gvisor-ch2")]
    cells = {c.nodeid.split("::")[1]: c for c in collector.carried()}
    assert (cells["test_failed[gvisor-ch2]"].status, cells["test_failed[gvisor-ch2]"].carried_from) == ("not run", "gvisor")
    assert "not measured: gvisor, which stands for it, failed" in cells["test_failed[gvisor-ch2]"].reason
    assert (cells["test_passed[gvisor-ch2]"].status, cells["test_passed[gvisor-ch2]"].stack) == ("passed", "gvisor-ch2")
    assert cells["test_known_deviation[gvisor-ch2]"].status == "known deviation"
