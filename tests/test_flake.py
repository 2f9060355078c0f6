"""`labkit flake`'s verdict from the results of several runs: which cells differed, and which of
those the manifest already calls load-dependent."""

from pathlib import Path

import pytest

from labkit import cli, flake
from labkit.manifest import Manifest


def results(*cells: tuple[str, str, str]) -> dict:
    return {"run": {"labkit": "0.1.0", "commit": "abc", "kernel": "6.1", "stacks": {"gvisor": {"version": "20221219"}}},
            "results": [{"check": c, "stack": s, "status": st} for c, s, st in cells]}  # fmt: skip


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    path = tmp_path / "deviations.toml"
    path.write_text(
        '[[deviation]]\nstack = "gvisor"\ncheck = "a/test_burst.py::test_burst"\nstrict = false\nreason = "load-dependent"\n'
        '[[deviation]]\nstack = "gvisor"\ncheck = "a/test_x.py::test_strict"\nreason = "always"\n'
    )
    return Manifest.load(path)


def test_same_outcomes_in_every_run_are_not_flaky(manifest):
    run = results(("a/test_x.py::test_ok", "gvisor", "passed"), ("a/test_x.py::test_strict", "gvisor", "known deviation"))
    assert flake.compare([run, run, run], manifest) == []


def test_a_differing_outcome_names_the_runs_and_is_flaky_unless_load_dependent(manifest):
    one = results(("a/test_x.py::test_ok", "gvisor", "passed"), ("a/test_burst.py::test_burst", "gvisor", "known deviation"))
    two = results(("a/test_x.py::test_ok", "gvisor", "failed"), ("a/test_burst.py::test_burst", "gvisor", "unexpected pass"))
    found = {f.check: f for f in flake.compare([one, two, one], manifest)}
    assert found["a/test_x.py::test_ok"].outcomes == {"passed": [1, 3], "failed": [2]}
    assert not found["a/test_x.py::test_ok"].load_dependent
    assert found["a/test_burst.py::test_burst"].load_dependent
    line = found["a/test_x.py::test_ok"].line([Path("r1/order.json"), Path("r2/order.json"), Path("r3/order.json")])
    assert line == "a/test_x.py::test_ok on gvisor: failed in run 2; passed in run 1, 3 (orders: r1/order.json, r2/order.json)"


def test_a_cell_missing_from_a_run_is_a_difference(manifest):
    one = results(("a/test_x.py::test_ok", "gvisor", "passed"))
    found = flake.compare([one, results()], manifest)
    assert [(f.check, f.outcomes) for f in found] == [("a/test_x.py::test_ok", {"passed": [1], "absent": [2]})]


def test_versions_name_what_must_stay_the_same():
    assert flake.versions(results()) == {"labkit": "0.1.0", "commit": "abc", "kernel": "6.1", "gvisor": "20221219"}


def test_fewer_than_two_runs_is_refused(capsys):
    assert cli.main(["flake", "--runs", "1"]) == 2
    assert "--runs 1: a flaky check needs at least two runs to differ; allowed: 2 or more" in capsys.readouterr().err
