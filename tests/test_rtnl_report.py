"""The rtnetlink support table reaches the report of a run, with or without xdist, also without
--lab-evidence: a child pytest runs a few quick rtnetlink checks with --lab-report."""

from __future__ import annotations

import json

import pytest

from .conftest import run_pytest

CHECKS = ["suites/rtnetlink/test_getlink.py::test_link_dump_matches_the_kernel", "suites/rtnetlink/test_getlink.py::test_getlink_errors"]


@pytest.mark.parametrize(
    "xdist, evidence", [([], False), (["-n", "2"], False), (["-n", "2"], True)], ids=["single", "xdist", "xdist-evidence"]
)
def test_support_table_is_in_the_report(tmp_path, xdist, evidence):
    report, kept = tmp_path / "report", tmp_path / "evidence"
    more = ["--lab-evidence", str(kept)] if evidence else []
    done = run_pytest(*CHECKS, *xdist, *more, "--stack", "linux", "--lab-report", str(report), "-p", "no:randomly")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    data = json.loads((report / "results.json").read_text())
    support = data.get("rtnetlink_support")
    assert support, f"no rtnetlink_support in results.json; notes: {data['run'].get('notes')}"
    cell = support["messages"]["RTM_GETLINK"]["linux"]
    assert cell["status"] == "supported"
    assert sorted(c.split("[")[0] for c in cell["checks"]) == ["test_getlink_errors"] * 3 + ["test_link_dump_matches_the_kernel"]
    assert json.loads((report / "rtnetlink-support.json").read_text()) == support  # next to results.json
    if evidence:
        assert json.loads((kept / "rtnetlink-support.json").read_text()) == support
