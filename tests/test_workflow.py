"""The nightly workflow (.github/workflows/nightly.yml) as the pipeline's logic depends on it.

GitHub runs it only there, so these tests read the real file: which command each job runs, where
the matrix comes from, what is pinned and what may write. The shell of the steps whose exit status
is the verdict (a shard's conformance run, the merge) is run here with bash as GitHub runs it,
against a stand-in `./lab` or `labkit` that records its arguments and exits as told.
"""

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as the boolean True.
    return workflow.get("on", workflow.get(True))


def steps_running(job: dict[str, Any], text: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if text in s.get("run", "")]


def only_step_running(job: dict[str, Any], text: str) -> dict[str, Any]:
    found = steps_running(job, text)
    assert len(found) == 1, f"want one step running {text!r}, found {len(found)}"
    return found[0]


def executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def run_step(step: dict[str, Any], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a step's script the way GitHub runs `run:` on Linux: bash -e -o pipefail, the step's env
    given literally (the values a test chooses stand for what the `${{ }}` expressions give)."""
    script = cwd / "step.sh"
    script.write_text(step["run"])
    full = {"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(cwd / "output"), "GITHUB_STEP_SUMMARY": str(cwd / "summary")}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=cwd,
        env=full | env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def outputs(cwd: Path) -> dict[str, str]:
    path = cwd / "output"
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split("=", 1) for line in lines)


def test_runs_nightly_and_on_demand_with_a_shard_count(workflow):
    on = triggers(workflow)
    assert on["schedule"] and all("cron" in s for s in on["schedule"])
    shards = on["workflow_dispatch"]["inputs"]["shards"]
    assert shards["type"] == "number" and shards["default"] == 3


def test_the_matrix_comes_from_labkit_shards(workflow):
    plan = workflow["jobs"]["plan"]
    step = only_step_running(plan, 'labkit" shards')
    assert re.search(r'shards --count "\$SHARDS" --github-matrix\)', step["run"])
    assert step["env"]["SHARDS"] == "${{ inputs.shards || 3 }}"
    assert plan["outputs"]["matrix"] == "${{ steps.plan.outputs.matrix }}" and step["id"] == "plan"
    strategy = workflow["jobs"]["shard"]["strategy"]
    assert strategy["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert strategy["fail-fast"] is False


def test_a_shard_runs_the_readme_conformance_command_in_a_privileged_debian_12_container(workflow):
    shard = workflow["jobs"]["shard"]
    assert shard["container"]["image"] == "debian:12"
    assert "--privileged" in shard["container"]["options"]
    step = only_step_running(shard, "./lab conformance")
    assert re.search(
        r'^\s*\./lab conformance --lab-shard "\$SHARD" --fuzz-seconds 120 "\$\{extra\[@\]\}" \|\| status=\$\?$', step["run"], re.M
    )
    assert step["env"]["SHARD"] == "${{ matrix.shard }}"
    upload = next(s for s in shard["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "reports/out"
    assert upload["with"]["name"] == "shard-${{ matrix.index }}"  # a shard value has a '/', which artifact names refuse
    assert upload["if"] == "${{ !cancelled() }}"


@pytest.mark.parametrize(
    ("status", "writes_results", "fails"),
    [(0, True, False), (1, True, False), (1, False, True), (2, True, True), (0, False, True), (137, True, True)],
)
def test_a_shard_fails_on_infrastructure_errors_only(workflow, tmp_path, status, writes_results, fails):
    """Exit status 1 (checks failed) is the merge job's to judge; any other failure, or a run that
    wrote no results.json, is the shard's."""
    step = only_step_running(workflow["jobs"]["shard"], "./lab conformance")
    write = "mkdir -p reports/out && echo '{}' > reports/out/results.json\n" if writes_results else ""
    executable(tmp_path / "lab", f'echo "$@" > lab.args\n{write}exit {status}\n')
    done = run_step(step, tmp_path, {"SHARD": "2/3"})
    assert (tmp_path / "lab.args").read_text().split() == ["conformance", "--lab-shard", "2/3", "--fuzz-seconds", "120"]
    assert (done.returncode != 0) == fails, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("build", "args"), [("", []), ("gvisor@/opt/runsc-release/runsc", ["--stack", "gvisor@/opt/runsc-release/runsc"])]
)
def test_a_fetched_runsc_build_is_one_more_column_of_the_gvisor_shards(workflow, tmp_path, build, args):
    shard = workflow["jobs"]["shard"]
    fetch = next(s for s in shard["steps"] if s.get("id") == "build")
    assert fetch["if"] == "${{ contains(matrix.stacks, 'gvisor') }}" and "sha512sum -c" in fetch["run"]
    step = only_step_running(shard, "./lab conformance")
    assert step["env"]["BUILD"] == "${{ steps.build.outputs.stack }}"
    executable(tmp_path / "lab", "echo \"$@\" > lab.args\nmkdir -p reports/out && echo '{}' > reports/out/results.json\n")
    done = run_step(step, tmp_path, {"SHARD": "1/3", "BUILD": build})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lab.args").read_text().split() == ["conformance", "--lab-shard", "1/3", "--fuzz-seconds", "120", *args]


def test_perf_runs_in_a_job_of_its_own(workflow):
    jobs = workflow["jobs"]
    perf = jobs["perf"]
    assert "strategy" not in perf
    assert perf["container"]["image"] == "debian:12"
    assert only_step_running(perf, "./lab bench")["run"].strip() == "./lab bench"
    assert not steps_running(perf, "./lab conformance")
    for name, job in jobs.items():
        if name != "perf":
            assert not steps_running(job, "./lab bench"), f"job {name} runs the benchmarks beside other work"


def test_merge_waits_for_every_shard_and_perf_and_runs_after_failures(workflow):
    merge = workflow["jobs"]["merge"]
    assert set(merge["needs"]) >= {"plan", "shard", "perf"}
    assert "!cancelled()" in merge["if"] and "needs.plan.result == 'success'" in merge["if"]
    step = only_step_running(merge, 'labkit" report')
    assert "--merge" in step["run"] and "--fail-on-new" in step["run"]


def merge_in(tmp_path: Path, shards: int, previous: bool, perf: bool) -> None:
    for k in range(1, shards + 1):
        (tmp_path / "in" / f"shard-{k}").mkdir(parents=True)
        (tmp_path / "in" / f"shard-{k}" / "results.json").write_text("{}")
    if previous:
        (tmp_path / "prev").mkdir()
        (tmp_path / "prev" / "results.json").write_text("{}")
    if perf:
        (tmp_path / "in" / "perf").mkdir()
        (tmp_path / "in" / "perf" / "benchmarks.json").write_text("{}")


@pytest.mark.parametrize("status", [0, 1, 2])
def test_merge_calls_labkit_report_and_keeps_its_verdict_for_after_publishing(workflow, tmp_path, status):
    merge = workflow["jobs"]["merge"]
    step = only_step_running(merge, 'labkit" report')
    merge_in(tmp_path, shards=3, previous=True, perf=True)
    executable(
        tmp_path / "venv" / "bin" / "labkit", f'printf "%s\\n" "$@" > labkit.args\necho "# night" > summary.md\nexit {status}\n'
    )
    env = {"SHARDS": "3", "SHARD_JOBS": "success", "PAGE_URL": "https://example.org/lab/", "RUNNER_TEMP": str(tmp_path)}
    done = run_step(step, tmp_path, env)
    args = (tmp_path / "labkit.args").read_text().splitlines()
    assert args[:5] == ["report", "--merge", "in/shard-1/results.json", "in/shard-2/results.json", "in/shard-3/results.json"]
    assert "--fail-on-new" in args
    assert args[args.index("--previous") + 1] == "prev/results.json"
    assert args[args.index("--benchmarks") + 1] == "in/perf/benchmarks.json"
    assert args[args.index("--history") + 1] == "history" and args[args.index("--out") + 1] == "site"
    if status == 2:  # the merge itself failed (a cell reported twice): nothing to publish
        assert done.returncode == 2
        return
    assert done.returncode == 0, done.stdout + done.stderr  # publish first ...
    assert outputs(tmp_path) == {"status": str(status), "complete": "true"}
    assert (tmp_path / "summary").read_text() == "# night\n"
    verdict = next(s for s in merge["steps"] if s.get("name") == "verdict")
    assert verdict["env"]["STATUS"] == "${{ steps.report.outputs.status }}"
    assert (run_step(verdict, tmp_path, {"STATUS": str(status)}).returncode != 0) == (status == 1)  # ... fail after
    assert merge["steps"].index(verdict) == len(merge["steps"]) - 1


def test_a_night_with_a_missing_shard_is_published_but_not_kept(workflow, tmp_path):
    merge = workflow["jobs"]["merge"]
    step = only_step_running(merge, 'labkit" report')
    merge_in(tmp_path, shards=2, previous=False, perf=False)
    executable(tmp_path / "venv" / "bin" / "labkit", 'printf "%s\\n" "$@" > labkit.args\n')
    done = run_step(step, tmp_path, {"SHARDS": "3", "SHARD_JOBS": "failure", "PAGE_URL": "", "RUNNER_TEMP": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "labkit.args").read_text().splitlines()
    assert "--previous" not in args and "--benchmarks" not in args
    assert outputs(tmp_path)["complete"] == "false"
    keeps = [s for s in merge["steps"] if "nightly-history" == s.get("with", {}).get("name")]
    assert len(keeps) == 1 and keeps[0]["if"] == "${{ steps.report.outputs.complete == 'true' }}"


def test_a_night_whose_shard_broke_after_writing_results_is_published_but_not_kept(workflow, tmp_path):
    """A shard that exited 2 or 3 may still upload a partial results.json: all three are there,
    yet the shard job failed, so the night is not the next night's baseline."""
    step = only_step_running(workflow["jobs"]["merge"], 'labkit" report')
    assert step["env"]["SHARD_JOBS"] == "${{ needs.shard.result }}"
    merge_in(tmp_path, shards=3, previous=False, perf=False)
    executable(tmp_path / "venv" / "bin" / "labkit", "exit 0\n")
    done = run_step(step, tmp_path, {"SHARDS": "3", "SHARD_JOBS": "failure", "PAGE_URL": "", "RUNNER_TEMP": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert outputs(tmp_path)["complete"] == "false"


def test_the_previous_night_is_never_this_runs_own(workflow):
    fetch = next(s for s in workflow["jobs"]["merge"]["steps"] if s.get("name") == "fetch the previous night's history")
    assert fetch["env"]["RUN_ID"] == "${{ github.run_id }}"
    assert ".workflow_run.id != (env.RUN_ID | tonumber)" in fetch["run"]


def test_the_page_goes_to_an_artifact_and_to_pages_even_on_new_failures(workflow):
    jobs = workflow["jobs"]
    uses = [s.get("uses", "").split("@")[0] for s in jobs["merge"]["steps"]]
    assert "actions/upload-artifact" in uses and "actions/upload-pages-artifact" in uses
    deploy = jobs["deploy"]
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert deploy["needs"] == "merge" and "needs.merge.outputs.page == 'success'" in deploy["if"]


def test_every_job_has_a_timeout(workflow):
    for name, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int) and 0 < job["timeout-minutes"] <= 180, name


def test_every_action_is_pinned_by_a_commit_with_its_version_beside_it(workflow):
    used = [s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "uses" in s]
    assert len(used) >= 10
    for ref in used:
        assert SHA_PIN.match(ref), f"{ref} is not pinned by a full commit SHA"
    for line in WORKFLOW.read_text().splitlines():
        if re.match(r"^\s*(- )?uses:", line):
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), f"no version comment: {line.strip()}"


def test_permissions_are_minimal(workflow):
    assert workflow["permissions"] == {}
    writes = {}
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, f"job {name} inherits the default token permissions"
        writes.update({f"{name}.{k}": v for k, v in job["permissions"].items() if v == "write"})
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name
    assert writes == {"deploy.pages": "write", "deploy.id-token": "write"}


def test_no_expression_is_expanded_inside_a_script(workflow):
    """Untrusted values reach the shell through env:, never pasted into the script's text."""
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), f"{name}: {step.get('name')}"


def test_one_night_at_a_time(workflow):
    assert workflow["concurrency"]["cancel-in-progress"] is False
