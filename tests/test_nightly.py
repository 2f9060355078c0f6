"""The nightly: the shard definition, merging shards, the history of nights, the verdict, and
`labkit nightly` itself on small real runs (a sharded run gives the unsharded run's outcomes;
five nights with a check made to flip show the trends and name it flaky)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import cli
from labkit.lifecycle import owner
from labkit.nightly.shards import ShardPlan, unclaimed_or_twice
from reports import history
from reports.html import render

from .conftest import ROOT

PIECES = """
[[piece]]
name = "kernel"
stacks = ["linux-*"]
suites = ["linkdispatch", "rtnetlink"]
stackless = true
weight = 30

[[piece]]
name = "sandbox-link"
stacks = ["gvisor-*"]
suites = ["linkdispatch"]
weight = 50

[[piece]]
name = "sandbox-netlink"
stacks = ["gvisor-*"]
suites = ["rtnetlink"]
weight = 20
"""


def write(tmp_path: Path, text: str, name: str = "shards.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the shard definition --------------------------------------------------------------------


def test_pieces_pack_into_shards_by_weight_the_same_way_every_time(tmp_path):
    plan = ShardPlan.load(write(tmp_path, PIECES))
    shards = plan.shards(2)
    assert [[p.name for p in s.pieces] for s in shards] == [["sandbox-link"], ["kernel", "sandbox-netlink"]]
    assert [s.weight for s in shards] == [50, 50] and plan.shards(2) == shards
    assert sorted(p.name for s in plan.shards(3) for p in s.pieces) == ["kernel", "sandbox-link", "sandbox-netlink"]
    assert plan.select("2/2") == shards[1]


def test_every_cell_belongs_to_one_piece_builds_go_with_their_driver(tmp_path):
    plan = ShardPlan.load(write(tmp_path, PIECES))
    assert [p.name for p in plan.owners("linkdispatch", "gvisor-ch4")] == ["sandbox-link"]
    assert [p.name for p in plan.owners("linkdispatch", "gvisor@nightly")] == ["sandbox-link"]
    assert [p.name for p in plan.owners("rtnetlink", None)] == ["kernel"]
    assert unclaimed_or_twice(plan, [("transport", "linux"), ("linkdispatch", "linux")]) == [
        "suite 'transport' on linux is in no piece"
    ]


def test_the_repository_definition_takes_every_suite_and_stack_once():
    plan = ShardPlan.load(ROOT / ".ci" / "shards.toml")
    # suites/perf is no part of the conformance run (its conftest leaves it out unless named): tox -e perf runs it
    suites = [p.name for p in (ROOT / "suites").iterdir() if p.is_dir() and p.name not in ("__pycache__", "perf")]
    cells = [(s, k) for s in suites for k in ("linux", "gvisor-ch4", "slirp4netns-rootless", "pasta", None)]
    assert unclaimed_or_twice(plan, cells) == []
    assert len(plan.shards(3)) == 3


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "[[piece]]\nname='a'\nstacks=['gvisor-ch4']\nsuites=['x']\nweight=1\n",
            "stacks ['gvisor-ch4']; allowed: a list of whole drivers",
        ),
        ("[[piece]]\nname='a'\nstacks=['gvisor-*']\nsuites=['x']\nweight=1\ncolour=1\n", "unknown key 'colour'"),
        ("[[piece]]\nname='a'\nstacks=['gvisor-*']\nsuites=['x']\n", "missing 'weight'"),
        ("[[piece]]\nname='a'\nstacks=['gvisor-*']\nsuites=['x']\nweight=-1\n", "weight -1"),
        ("name = 'a'\n", "no [[piece]] entries"),
        ("[[piece]\n", "not TOML"),
        (PIECES + "[[piece]]\nname='kernel'\nstacks=['pasta-*']\nsuites=['x']\nweight=1\n", "piece 'kernel' is named twice"),
    ],
)
def test_a_bad_shard_definition_is_refused_in_one_line(tmp_path, capsys, text, said):
    path = write(tmp_path, text)
    assert cli.main(["shards", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1


def test_a_bad_shard_number_is_refused(tmp_path, capsys):
    path = write(tmp_path, PIECES)
    assert cli.main(["shards", "--file", str(path), "--count", "4"]) == 2
    err = capsys.readouterr().err
    assert "shard count 4: the shard definition" in err and "allowed: 1 to 3" in err
    with pytest.raises(Exception, match=r"--lab-shard '3/2': allowed: K/N"):
        ShardPlan.load(path).select("3/2")


def test_the_workflow_matrix_is_one_line_of_json(tmp_path, capsys):
    assert cli.main(["shards", "--file", str(write(tmp_path, PIECES)), "--count", "2", "--github-matrix"]) == 0
    matrix = json.loads(capsys.readouterr().out)
    assert [(m["shard"], m["name"]) for m in matrix["include"]] == [("1/2", "sandbox-link"), ("2/2", "kernel+sandbox-netlink")]


# -- merging shards ----------------------------------------------------------------------------


def results(path: Path, cells: dict[tuple[str, str], str], **run: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "run": {"date": "2026-12-01T01:00:00+00:00", "commit": "c1", "kernel": "6.1", "labkit": "0.1", "exit status": 0,
                "stacks": {s: {"available": True, "version": "v1"} for _, s in cells if s}, **run},
        "results": [
            {"nodeid": f"suites/{c.split('/')[0]}/x.py::{c}[{s}]", "check": c, "suite": c.split("/")[0], "stack": s, "status": st,
             "reason": "", "duration": 1.0, "evidence": [], "carried_from": None}
            for (c, s), st in cells.items()
        ],
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def test_shards_merge_into_one_report_and_a_cell_reported_twice_is_refused(tmp_path, capsys):
    a = results(tmp_path / "a" / "results.json", {("linkdispatch/t", "linux"): "passed"}, date="2026-12-01T02:00:00+00:00")
    b = results(
        tmp_path / "b" / "results.json", {("linkdispatch/t", "gvisor"): "failed", ("rtnetlink/t", "gvisor"): "known deviation"}
    )
    out = tmp_path / "merged"
    assert cli.main(["report", "--merge", str(a), str(b), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert merged["counts"]["passed"] == 1 and merged["counts"]["failed"] == 1 and merged["counts"]["known deviation"] == 1
    assert merged["run"]["date"] == "2026-12-01T01:00:00+00:00" and len(merged["run"]["shards"]) == 2
    assert 'data-stack="gvisor"' in (out / "index.html").read_text()
    capsys.readouterr()
    assert cli.main(["report", "--merge", str(a), str(b), str(a), "--out", str(out)]) == 2
    assert f"results file {a} is given twice" in capsys.readouterr().err
    copy = tmp_path / "c" / "results.json"
    copy.parent.mkdir()
    copy.write_text(a.read_text())
    assert cli.main(["report", "--merge", str(a), str(b), str(copy), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"linkdispatch/t on linux is reported by both {a} and {copy}" in err and err.count("\n") == 1


def test_several_results_without_merge_are_refused(tmp_path, capsys):
    a = results(tmp_path / "a" / "results.json", {("linkdispatch/t", "linux"): "passed"})
    assert cli.main(["report", str(a), str(a)]) == 2
    assert "2 results files given without --merge" in capsys.readouterr().err


def test_the_verdict_fails_on_new_failures_and_strict_unexpected_passes_only(tmp_path, capsys):
    cells = {("linkdispatch/o.py::old", "linux"): "failed", ("linkdispatch/l.py::loose", "pasta"): "unexpected pass"}
    before = results(tmp_path / "n1" / "results.json", cells)
    deviations = write(
        tmp_path,
        '[[deviation]]\nstack="pasta"\ncheck="linkdispatch/l.py::loose"\nreason="comes and goes"\nstrict=false\n',
        "d.toml",
    )
    now = results(tmp_path / "n2" / "results.json", cells)
    base = ["report", str(now), "--previous", str(before), "--deviations", str(deviations), "--fail-on-new"]
    assert cli.main([*base, "--summary", str(tmp_path / "s.md")]) == 0  # an old failure and a load-dependent pass
    assert "passed: nothing new failed" in (tmp_path / "s.md").read_text()
    worse = results(
        tmp_path / "n3" / "results.json",
        {**cells, ("linkdispatch/n.py::new", "gvisor"): "failed", ("rtnetlink/x.py::x", "gvisor"): "unexpected pass"},
    )
    assert (
        cli.main(
            [
                "report",
                str(worse),
                "--previous",
                str(before),
                "--deviations",
                str(deviations),
                "--fail-on-new",
                "--summary",
                str(tmp_path / "s.md"),
                "--page-url",
                "https://lab.example/nightly",
            ]
        )
        == 1
    )
    summary = (tmp_path / "s.md").read_text()
    assert (
        "## New failures: 1" in summary
        and "## Unexpected passes (a deviation stopped happening: update the manifest): 1" in summary
    )
    anchor = re.search(
        r"\[`linkdispatch/n.py::new` on gvisor\]\(https://lab.example/nightly/index.html#(finding-[\w-]+)\)", summary
    )
    assert anchor, summary
    assert f'id="{anchor.group(1)}"' in (tmp_path / "n3" / "index.html").read_text(), "the summary links to no finding"
    assert "FAILED: 1 new failures, 1 unexpected passes" in summary


# -- history -----------------------------------------------------------------------------------


def night(tmp_path: Path, n: int, status: str, version: str = "v1", commit: str = "c1") -> dict:
    path = results(
        tmp_path / f"r{n}" / "results.json",
        {("linkdispatch/steady", "linux"): "passed", ("linkdispatch/flip", "linux"): status, ("linkdispatch/built", "gvisor"): "passed" if version == "v1" else "failed"},
        date=f"2026-11-{n:02d}T01:00:00+00:00",
        commit=commit,
    )  # fmt: skip
    data = json.loads(path.read_text())
    data["run"]["stacks"]["gvisor"]["version"] = version
    return data


def test_nights_are_kept_up_to_the_limit_and_flips_are_sorted_out(tmp_path):
    hist = tmp_path / "history"
    for n, (status, version) in enumerate(
        [("passed", "v1"), ("failed", "v1"), ("passed", "v1"), ("passed", "v2"), ("failed", "v2")], 1
    ):
        history.record(hist, night(tmp_path, n, status, version), keep=4)
    nights = history.load(hist)
    assert len(nights) == 4 and nights[0].date.startswith("2026-11-02")
    summary = history.summarize(nights)
    assert [(f["check"], f["strip"]) for f in summary["flaky"]] == [("linkdispatch/flip", "FPPF")]
    assert [(b["check"], b["change"]) for b in summary["builds"]] == [("linkdispatch/built", "version v1 -> v2")]
    assert summary["strips"]["linkdispatch/steady"] == "PPPP"
    assert [t["nights"][-1]["failed"] for t in summary["trends"]] == [1, 1]  # gvisor, linux
    load = history.summarize(nights, lambda stack, check: check == "linkdispatch/flip")
    assert load["flaky"] == [] and [e["check"] for e in load["load_dependent"]] == ["linkdispatch/flip"]


def test_a_change_of_labkit_is_not_a_flake(tmp_path):
    hist = tmp_path / "history"
    history.record(hist, night(tmp_path, 1, "passed"))
    history.record(hist, night(tmp_path, 2, "failed", commit="c2"))
    summary = history.summarize(history.load(hist))
    assert summary["flaky"] == [] and summary["builds"] == [] and summary["lab"][0]["change"] == "labkit c1 -> c2"


def test_the_page_draws_the_trends_and_the_strips(tmp_path):
    hist = tmp_path / "history"
    for n, status in enumerate(["passed", "failed", "passed"], 1):
        data = night(tmp_path, n, status)
        history.attach(data, hist)
    page = render(data)
    assert 'id="history"' in page and page.count('<figure class="trend"') == 2 and "<rect" in page
    assert 'data-kind="flaky"' in page and "linkdispatch/flip" in page.split('data-kind="flaky"')[1].split("</ul>")[0]
    assert page.count('<i class="failed"') >= 2


def test_a_broken_night_is_refused_by_name(tmp_path):
    hist = tmp_path / "history"
    hist.mkdir()
    (hist / "night-1.json").write_text("{")
    with pytest.raises(Exception, match=r"history night .*night-1.json: .*allowed: night-\*.json files written by labkit"):
        history.load(hist)


# -- labkit nightly on real runs ---------------------------------------------------------------


def own_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (owner.ENV_RUN, owner.ENV_OWNER, "PYTEST_XDIST_WORKER")}
    return {**env, **extra}


def labkit(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labkit", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, env=env or own_env(),
    )  # fmt: skip


def outcomes(path: Path) -> dict[tuple[str, str], str]:
    return {(r["check"], r["stack"]): r["status"] for r in json.loads(path.read_text())["results"]}


def test_three_shards_give_the_outcomes_of_one_unsharded_run(tmp_path):
    shards = write(tmp_path, PIECES)
    selection = [
        "suites/linkdispatch/test_arp.py",
        "suites/rtnetlink/test_getlink.py",
        "--stack",
        "linux,gvisor",
        "--lab-order",
        "given",
    ]
    done = labkit(
        "nightly",
        "--shards",
        "3",
        "--file",
        str(shards),
        "--out",
        str(tmp_path / "nightly"),
        "--history",
        str(tmp_path / "h"),
        "--",
        *selection,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    single = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *selection, "-n", "2", "--lab-report", str(tmp_path / "single")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env=own_env(),
    )  # fmt: skip
    assert single.returncode == 0, single.stdout[-3000:]
    merged = outcomes(tmp_path / "nightly" / "results.json")
    assert merged == outcomes(tmp_path / "single" / "results.json") and {s for _, s in merged} == {"linux", "gvisor"}
    per_shard = [outcomes(tmp_path / "nightly" / f"shard-{n}" / "results.json") for n in (1, 2, 3)]
    assert all(per_shard) and sum(map(len, per_shard)) == len(merged)  # each shard ran its part, none twice
    again = labkit(
        "report",
        "--merge",
        *(str(tmp_path / "nightly" / f"shard-{n}" / "results.json") for n in (1, 2, 3, 1)),
        "--out",
        str(tmp_path / "x"),
    )
    assert again.returncode == 2 and "is given twice" in again.stderr


FLIPPING = """
import os

def test_steady(stack_spec):
    pass

def test_flips_every_other_night(stack_spec):
    assert int(os.environ["LABKIT_TEST_NIGHT"]) % 2 == 1, "an even night"
"""


def test_five_nights_build_a_history_whose_page_names_the_flaky_check(tmp_path):
    """Three nights through `labkit nightly`, two through a plain run with --lab-history: one
    history, the same code and kernel each night, so the flipping check is flaky."""
    (tmp_path / "test_flipping.py").write_text(FLIPPING)
    shards = write(tmp_path, '[[piece]]\nname = "all"\nstacks = ["*"]\nsuites = ["test_flipping.py"]\nweight = 1\n')
    hist, out = tmp_path / "history", tmp_path / "nightly"
    args = ["--rootdir", str(tmp_path), "--stack", "linux", "-p", "no:cacheprovider"]
    for night_no in (1, 2, 3):
        done = labkit(
            "nightly", "--shards", "1", "--file", str(shards), "--out", str(out), "--history", str(hist), "--",
            str(tmp_path / "test_flipping.py"), *args, env=own_env(LABKIT_TEST_NIGHT=str(night_no)),
        )  # fmt: skip
        assert done.returncode == (1 if night_no == 2 else 0), done.stdout[-3000:] + done.stderr[-2000:]
    for night_no in (4, 5):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", str(tmp_path / "test_flipping.py"), *args, "--lab-report", str(tmp_path / f"run{night_no}"),
             "--lab-history", str(hist)],
            cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=own_env(LABKIT_TEST_NIGHT=str(night_no)),
        )  # fmt: skip
        assert done.returncode == (1 if night_no == 4 else 0), done.stdout[-3000:]
    assert len(history.load(hist)) == 5
    page = (tmp_path / "run5" / "index.html").read_text()
    assert "History: 5 nights" in page and '<figure class="trend" data-stack="linux">' in page
    flaky = page.split('data-kind="flaky"')[1].split("</ul>")[0]
    assert "test_flipping.py::test_flips_every_other_night" in flaky and "test_steady" not in flaky
    data = json.loads((tmp_path / "run5" / "results.json").read_text())
    assert data["history"]["strips"]["test_flipping.py::test_flips_every_other_night"] == "PFPFP"
    assert "## New failures: 0" in (out / "summary.md").read_text()  # night 3's: night 2's failure passed again


def test_a_night_recorded_again_is_not_compared_with_itself(tmp_path):
    """A re-run merge job records the same night again: its new failure is still new."""
    before = results(tmp_path / "n1" / "results.json", {("linkdispatch/x.py::t", "gvisor"): "passed"})
    now = results(
        tmp_path / "n2" / "results.json", {("linkdispatch/x.py::t", "gvisor"): "failed"}, date="2026-12-02T01:00:00+00:00"
    )
    hist = str(tmp_path / "history")
    assert cli.main(["report", str(before), "--out", str(tmp_path / "o1"), "--history", hist]) == 0
    for _ in range(2):
        assert cli.main(["report", str(now), "--out", str(tmp_path / "o2"), "--history", hist, "--fail-on-new"]) == 1
    assert len(history.load(tmp_path / "history")) == 2


def test_skips_and_cells_not_run_are_no_change_and_a_new_labkit_is_the_labs(tmp_path):
    hist = tmp_path / "history"
    for n, status in enumerate(["passed", "not run", "passed", "skipped", "passed"], 1):
        history.record(hist, night(tmp_path, n, status))
    assert history.summarize(history.load(hist))["flaky"] == []
    history.record(hist, night(tmp_path, 6, "failed", commit="c2"))
    summary = history.summarize(history.load(hist))
    assert summary["builds"] == [] and [(e["check"], e["change"]) for e in summary["lab"]] == [
        ("linkdispatch/flip", "labkit c1 -> c2")
    ]


def test_evidence_from_outside_the_shard_folder_keeps_each_checks_own(tmp_path):
    evidence = tmp_path / "elsewhere"
    for check in ("a", "b"):
        (evidence / check).mkdir(parents=True)
        (evidence / check / "linux.pcap").write_text(f"frames of {check}")
    shard = results(
        tmp_path / "s1" / "results.json", {("linkdispatch/x.py::a", "linux"): "failed", ("linkdispatch/x.py::b", "linux"): "failed"}
    )
    data = json.loads(shard.read_text())
    for record in data["results"]:
        record["evidence"] = [str(evidence / record["check"].rsplit(":", 1)[-1] / "linux.pcap")]
    shard.write_text(json.dumps(data))
    assert cli.main(["report", "--merge", str(shard), "--out", str(tmp_path / "out")]) == 0
    merged = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(Path(r["evidence"][0]).read_text() for r in merged["results"]) == ["frames of a", "frames of b"]


def test_a_refused_merge_leaves_nothing_and_a_bad_record_is_named(tmp_path, capsys):
    a = results(tmp_path / "a" / "results.json", {("linkdispatch/x.py::t", "linux"): "passed"})
    copy = tmp_path / "b" / "results.json"
    copy.parent.mkdir()
    copy.write_text(a.read_text())
    out = tmp_path / "out"
    assert cli.main(["report", "--merge", str(a), str(copy), "--out", str(out)]) == 2 and not out.exists()
    broken = tmp_path / "c" / "results.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps({"run": {}, "results": [{"check": "x"}]}))
    capsys.readouterr()
    assert cli.main(["report", "--merge", str(a), str(broken), "--out", str(out)]) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert f"results file {broken}, result 1: has check;" in err and err.count("\n") == 1


def test_the_budgets_are_on_the_page(tmp_path):
    data = json.loads(results(tmp_path / "r" / "results.json", {("linkdispatch/x.py::t", "linux"): "passed"}).read_text())
    data["run"].update({"duration s": 540.0, "evidence bytes": 160_000_000, "evidence files": 900})
    page = render(data)
    figures = page.split('class="bench run-figures"')[1].split("</table>")[0]
    assert (
        'conformance run, wall time</td><td class="c">9.0</td><td>min</td><td>&lt;= 10 min</td><td class="c passed">met' in figures
    )
    assert (
        'evidence kept in 900 files</td><td class="c">160.0</td><td>MB</td><td>&lt;= 150 MB</td><td class="c failed">missed'
        in figures
    )


def test_a_shard_past_its_bound_is_ended_and_named(tmp_path, monkeypatch):
    from labkit.errors import LabError
    from labkit.nightly import run

    monkeypatch.setattr(run, "SHARD_TIMEOUT", 0.5)
    monkeypatch.setattr(run, "STOP_GRACE", 5.0)
    shard = ShardPlan.load(write(tmp_path, PIECES)).select("1/3")
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "--lab-report", str(tmp_path / "out")]
    with pytest.raises(LabError, match=r"shard 1/3 ran past 0 min and was ended; its output: .*shard.log"):
        run.run_shard(shard, argv, tmp_path, tmp_path / "shard.log")


def test_shards_side_by_side_each_log_apart_and_merge(tmp_path):
    (tmp_path / "test_flipping.py").write_text(FLIPPING)
    shards = write(
        tmp_path,
        '[[piece]]\nname = "k"\nstacks = ["linux-*"]\nsuites = ["test_flipping.py"]\nweight = 1\n'
        '[[piece]]\nname = "g"\nstacks = ["gvisor-*"]\nsuites = ["test_flipping.py"]\nweight = 1\n',
    )
    out = tmp_path / "nightly"
    done = labkit(
        "nightly", "--shards", "2", "--parallel", "2", "--file", str(shards), "--out", str(out), "--history", str(tmp_path / "h"), "--",
        str(tmp_path / "test_flipping.py"), "--rootdir", str(tmp_path), "--stack", "linux,gvisor", "-p", "no:cacheprovider",
        env=own_env(LABKIT_TEST_NIGHT="1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert all((out / f"shard-{n}.log").read_text().count("passed") for n in (1, 2))
    assert {s for _, s in outcomes(out / "results.json")} == {"linux", "gvisor"}
