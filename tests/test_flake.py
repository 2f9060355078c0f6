"""`labkit flake`'s verdict from the results of several runs: which cells differed, and which of
those the manifest already calls load-dependent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import cli, flake
from labkit.lifecycle import owner
from labkit.manifest import Manifest

from .conftest import ROOT


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


CHANGING = """
from pathlib import Path

def test_steady(stack_spec):
    pass

def test_passes_only_the_first_time(stack_spec):
    mark = Path(__file__).with_suffix(".ran")
    first = not mark.exists()
    mark.touch()
    assert first, "ran before"
"""


def test_labkit_flake_runs_the_suite_and_names_the_cell_that_changed(tmp_path):
    """The whole command, on the kernel reference: each run its own pytest, the comparison, the page."""
    suite = tmp_path / "test_changing.py"
    suite.write_text(CHANGING)
    out = tmp_path / "flake"
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "flake", "--runs", "2", "--out", str(out), "--deviations", str(tmp_path / "none.toml"),
         "--", str(suite), "--rootdir", str(tmp_path), "--stack", "linux", "-n", "0", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k not in (owner.ENV_RUN, owner.ENV_OWNER)},  # runs of their own
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert "flaky (a bug in the lab or a check until shown otherwise): 1" in done.stdout
    assert "test_changing.py::test_passes_only_the_first_time on linux: failed in run 2; passed in run 1" in done.stdout
    summary = json.loads((out / "flake.json").read_text())
    assert [f["check"] for f in summary["flaky"]] == ["test_changing.py::test_passes_only_the_first_time"]
    assert all(isinstance(seed, int) for seed in summary["seeds"]) and (out / "run-2" / "order.json").is_file()
    assert 'id="flaky"' in (out / "index.html").read_text()
