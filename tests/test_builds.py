"""Stack builds as a matrix axis: `--stack gvisor@PATH` and `--lab-builds FILE` give a driver a
binary of its own, shown as a column of its own with its version; a variant the binary cannot
run (a flag it lacks) is a named skip. The real runs copy Debian's runsc under another directory,
as the nightly would fetch a newer one."""

from __future__ import annotations

import json
import os
import shutil
import stat
import textwrap
from pathlib import Path

import pytest

from labkit.errors import LabInputError
from labkit.manifest import Deviation, stack_matches
from labkit.pytest_plugin.matrix import plan_cells
from labkit.stacks import GVisorStack, programs, resolve
from labkit.stacks.builds import BuildsFile, label_of
from labkit.stacks.gvisor import flags as runsc_flags
from labkit.stacks.registry import load_builds

from .conftest import run_pytest

RUNSC = shutil.which("runsc")
needs_runsc = pytest.mark.skipif(RUNSC is None or not GVisorStack.availability().ok, reason="apt-get install -y runsc")


def runsc_copy(directory: Path) -> Path:
    """Debian's runsc copied under `directory`, keeping its file name: a build of its own."""
    assert RUNSC is not None
    directory.mkdir()
    return Path(shutil.copy2(RUNSC, directory / "runsc"))


def executable(path: Path, text: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is not None:
        path.write_text(text)
    elif not path.exists():
        path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def copies(tmp_path):
    """Two executables named alike in directories named apart, and a builds file naming one."""
    nightly = executable(tmp_path / "runsc-nightly" / "runsc")
    other = executable(tmp_path / "elsewhere" / "runsc")
    (tmp_path / "builds.toml").write_text(f'[gvisor]\nnightly = "{nightly}"\nrelative = "elsewhere/runsc"\n')
    return nightly, other, load_builds(tmp_path / "builds.toml")


# -- the label rules and the --stack syntax -----------------------------------------------------


def test_a_path_build_is_labelled_by_its_directory_and_keeps_its_path(copies):
    nightly, _, _ = copies
    assert label_of("/opt/runsc-nightly/runsc") == "runsc-nightly"
    (spec,) = resolve(f"gvisor-ch4@{nightly}")
    assert spec.id == "gvisor-ch4@runsc-nightly" and spec.build is not None and spec.build.path == str(nightly)
    stack = spec.create()
    assert stack.binary == str(nightly) and stack.options["channels"] == 4


def test_builds_file_labels_globs_and_relative_paths(copies):
    nightly, other, builds = copies
    assert [s.id for s in resolve("gvisor,gvisor@nightly", builds)] == ["gvisor", "gvisor@nightly"]
    variants = resolve("gvisor-*@nightly", builds)
    assert {s.id for s in variants} == {f"{s.id}@nightly" for s in resolve("gvisor-*")}
    assert {s.build.path for s in variants if s.build} == {str(nightly)}
    (relative,) = resolve("gvisor@relative", builds)
    assert relative.build is not None and relative.build.path == str(other)  # from the file's directory
    # `*` takes the drivers that have such a build; linux, slirp4netns and pasta have none here.
    assert {s.driver.kind for s in resolve("*@nightly", builds)} == {"gvisor"}


def test_a_verdict_is_never_carried_across_builds(copies):
    nightly, _, _ = copies
    specs = resolve(f"gvisor,gvisor-txcsum,gvisor@{nightly},gvisor-txcsum@{nightly}")
    cells = {c.measured.id: sorted(s.id for s in c.carried) for c in plan_cells(specs, lambda s: s, ("channels",), lambda s: ())}
    assert cells == {"gvisor": ["gvisor-txcsum"], "gvisor@runsc-nightly": ["gvisor-txcsum@runsc-nightly"]}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("gvisor@{missing}", "build 'gvisor@{missing}': {missing} does not exist; allowed: an executable file"),
        ("gvisor@{plain}", "build 'gvisor@{plain}': {plain} is not executable; allowed: "),
        ("gvisor@{tmp}", "build 'gvisor@{tmp}': {tmp} is not a file; allowed: "),
        ("gvisor@nope", "unknown build 'gvisor@nope': no gvisor build 'nope' in {tmp}/builds.toml; allowed: a path to the binary, or one of: nightly, relative"),
        ("linux@{nightly}", "stack 'linux@{nightly}': linux runs no binary of its own, so it has no builds; allowed: builds of gvisor, pasta, slirp4netns"),
        ("gvisor@", "stack 'gvisor@': nothing after '@'; allowed: STACK@/path/to/runsc or STACK@LABEL of --lab-builds"),
        ("gvisor@{nightly},gvisor-ch2@{samelabel}", "builds {nightly} and {samelabel} of gvisor would both be gvisor@runsc-nightly; allowed: one binary per label"),
        ("*@{nightly}", "stack '*@{nightly}': one binary for several stacks (gvisor, pasta, slirp4netns); allowed: "),
        ("gvisor@{spaced}", "build 'gvisor@{spaced}': build label 'with space' is not allowed in a stack id; allowed: "),
        ("nosuch@{nightly}", "unknown stack 'nosuch'; allowed: "),
    ],
)  # fmt: skip
def test_bad_builds_are_refused_in_one_line(tmp_path, copies, value, expected):
    nightly, _, builds = copies
    paths = {
        "missing": tmp_path / "gone" / "runsc",
        "plain": tmp_path / "plain" / "runsc",
        "tmp": tmp_path,
        "nightly": nightly,
        "samelabel": executable(tmp_path / "b" / "runsc-nightly" / "runsc"),
        "spaced": executable(tmp_path / "with space" / "runsc"),
    }
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "runsc").write_text("not executable")
    with pytest.raises(LabInputError) as refused:
        resolve(value.format(**paths), builds)
    message = str(refused.value)
    assert expected.format(**paths) in message and "\n" not in message, message


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            '[linux]\nx = "/bin/true"\n',
            "stack [linux] runs no binary of its own, so it has no builds; allowed: gvisor, pasta, slirp4netns",
        ),
        ('[gvisr]\nx = "/bin/true"\n', "unknown stack [gvisr]; allowed: gvisor, pasta, slirp4netns"),
        ("[gvisor]\nx = 3\n", "[gvisor]: x must be a path to a binary, got 3"),
        ('gvisor = "/bin/true"\n', "gvisor must be a table ([gvisor]) of LABEL"),
        ("[gvisor\n", "not readable TOML"),
        ('[gvisor]\n"a b" = "/bin/true"\n', "build label 'a b' is not allowed in a stack id"),
    ],
)
def test_a_bad_builds_file_is_refused_in_one_line(tmp_path, content, expected):
    (tmp_path / "b.toml").write_text(content)
    with pytest.raises(LabInputError) as refused:
        load_builds(tmp_path / "b.toml")
    assert expected in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    with pytest.raises(LabInputError, match="does not exist"):
        load_builds(tmp_path / "none.toml")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--stack", "gvisor@/nonexistent/runsc"], "labkit: build 'gvisor@/nonexistent/runsc': /nonexistent/runsc does not exist;"),
        (["--stack", "linux@/bin/true"], "labkit: stack 'linux@/bin/true': linux runs no binary of its own"),
        (
            ["--stack", "gvisor@nightly"],
            "labkit: unknown build 'gvisor@nightly': no gvisor build 'nightly' (no --lab-builds file given)",
        ),
        (["--lab-builds", "/nonexistent.toml"], "labkit: builds file /nonexistent.toml does not exist;"),
    ],
)
def test_bad_build_options_exit_2_with_one_line(args, expected):
    done = run_pytest("suites/linkdispatch/test_arp.py", "--collect-only", "-q", *args)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("labkit:") or "Exit:" in ln]
    assert any(expected in ln for ln in lines), done.stdout[-2000:] + done.stderr[-2000:]


# -- matching: the manifest, the stacks marker, --stack globs ------------------------------------


@pytest.mark.parametrize(
    "stack_id, pattern, matches",
    [
        ("gvisor-ch4@nightly", "gvisor-*", True),  # without '@': the stack's builds too
        ("gvisor@nightly", "gvisor", True),
        ("gvisor@nightly", "gvisor-*", True),
        ("gvisor@nightly", "gvisor*", True),
        ("gvisor@nightly", "linux", False),
        ("gvisor-ch4@nightly", "gvisor-*@nightly", True),  # with '@': that build only
        ("gvisor@nightly", "gvisor-*@nightly", True),
        ("gvisor-ch4@other", "gvisor-*@nightly", False),
        ("gvisor-ch4", "gvisor-*@nightly", False),
        ("gvisor", "gvisor@*", False),
        ("gvisor@x", "gvisor@*", True),
        ("gvisor-ch4", "gvisor-*", True),  # as before
        ("gvisor", "gvisor-*", True),
    ],
)
def test_stack_patterns_and_builds(stack_id, pattern, matches):
    assert stack_matches(stack_id, pattern) is matches


def test_a_manifest_entry_with_a_build_applies_to_that_build_only():
    everywhere = Deviation("gvisor-*", "s/test_x.py::test_y", "r")
    nightly_only = Deviation("gvisor-*@nightly", "s/test_x.py::test_y", "r", unless="*-none*")
    assert everywhere.applies("gvisor-ch2@nightly", "s/test_x.py::test_y") and everywhere.applies("gvisor", "s/test_x.py::test_y")
    assert nightly_only.applies("gvisor-ch2@nightly", "s/test_x.py::test_y")
    assert not nightly_only.applies("gvisor-ch2", "s/test_x.py::test_y")
    assert not nightly_only.applies("gvisor-none@nightly", "s/test_x.py::test_y")


# -- what a binary is ------------------------------------------------------------------------------


def test_flags_are_read_from_the_listing():
    listing = "  -debug\n    \tenable debug logging.\n  -gso\n    \t-1 means off (default true)\n  -num-network-channels int\n"
    assert runsc_flags.parse(listing) == {"debug", "gso", "num-network-channels"}
    assert runsc_flags.name_of("--num-network-channels=4") == "num-network-channels"


@needs_runsc
def test_a_copy_has_the_version_and_digest_of_its_file_and_no_package(tmp_path):
    copy = runsc_copy(tmp_path / "copy")
    debian, mine = GVisorStack.availability(), GVisorStack.availability(str(copy))
    assert mine.ok and mine.binary == str(copy) and debian.binary == RUNSC
    assert mine.version == debian.version and mine.version and mine.digest == debian.digest
    assert programs.package_of(RUNSC) is not None and programs.package_of(str(copy)) is None
    with copy.open("ab") as f:  # another build: the digest tells it apart, read again (size and mtime changed)
        f.write(b"\0")
    assert GVisorStack.availability(str(copy)).digest != debian.digest


@pytest.mark.skipif(shutil.which("pasta") is None, reason="apt-get install -y passt")
def test_pasta_is_dated_by_its_package_and_a_copy_says_it_has_none(tmp_path):
    from labkit.stacks import PastaStack

    debian = PastaStack.availability()
    assert debian.ok and debian.version and "(Debian package passt)" in debian.version, debian
    copy = tmp_path / "mine" / "pasta"  # the name kept: pasta picks its mode from it
    copy.parent.mkdir()
    shutil.copy(shutil.which("pasta") or "", copy)
    mine = PastaStack.availability(str(copy))
    assert mine.ok and mine.version == f"unknown: pasta prints none and no Debian package owns {copy}", mine
    (spec,) = resolve(f"pasta@{copy}")
    assert spec.id == "pasta@mine" and spec.create().binary == str(copy)


def test_linux_reports_the_kernel_release():
    (spec,) = resolve("linux")
    assert spec.availability().version == os.uname().release


# -- real runs ----------------------------------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import json
    import os
    from pathlib import Path

    from labkit.lifecycle import reaper


    def test_the_sandbox_is_the_builds_binary(stack):
        marker = str(stack.workdir).encode()
        seen = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                if marker in argv:
                    seen[entry.name] = {
                        "exe": os.readlink(f"/proc/{entry.name}/exe"),
                        "owner": reaper._owner_of_process(int(entry.name)),
                    }
            except OSError:
                continue
        (Path(__file__).parent / f"{stack.id}.json").write_text(json.dumps({"binary": stack.binary, "processes": seen}))
        assert seen
    """
)


@needs_runsc
def test_a_copy_of_runsc_runs_as_its_own_column(tmp_path):
    copy = runsc_copy(tmp_path / "runsc-copy")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "test_probe.py").write_text(PROBE)
    out = tmp_path / "out"
    done = run_pytest(
        "suites/linkdispatch/test_arp.py", str(probe / "test_probe.py"), "--rootdir", ".", "--stack", f"gvisor,gvisor@{copy}",
        "--lab-report", str(out), "-p", "no:randomly", "-n", "0", "-v",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "test_answers_who_has_for_own_address[gvisor@runsc-copy] PASSED" in done.stdout, done.stdout[-3000:]
    data = json.loads((out / "results.json").read_text())
    stacks = data["run"]["stacks"]
    assert set(stacks) == {"gvisor", "gvisor@runsc-copy"}
    assert (stacks["gvisor"]["binary"], stacks["gvisor@runsc-copy"]["binary"]) == (RUNSC, str(copy))
    for about in stacks.values():
        assert about["available"] and about["version"] and len(about["digest"]) == programs.DIGEST_LENGTH
    cells = {(r["check"], r["stack"]): r["status"] for r in data["results"]}
    for check in (
        "linkdispatch/test_arp.py::test_answers_who_has_for_own_address",
        "linkdispatch/test_arp.py::test_ignores_who_has_for_address_it_does_not_own",
    ):
        assert cells[(check, "gvisor")] == cells[(check, "gvisor@runsc-copy")] == "passed", cells
    # The copy's sandbox and gofer are the copy, and `labkit clean` knows them as the lab's.
    for stack_id, binary in (("gvisor", RUNSC), ("gvisor@runsc-copy", str(copy))):
        seen = json.loads((probe / f"{stack_id}.json").read_text())
        assert seen["processes"], seen
        for pid, proc in seen["processes"].items():
            assert proc["exe"] == os.path.realpath(binary), (stack_id, pid, proc)
            assert proc["owner"], (stack_id, pid, proc)


@needs_runsc
def test_a_variant_whose_flag_the_binary_lacks_is_a_named_skip(tmp_path):
    assert RUNSC is not None
    fake = executable(
        tmp_path / "nogso-build" / "runsc",
        f'#!/bin/sh\nif [ "$1" = flags ]; then {RUNSC} flags 2>&1 | grep -v -x -e "  -gso"; exit 0; fi\nexec {RUNSC} "$@"\n',
    )
    assert "gso" not in (runsc_flags.known(str(fake)) or {"gso"})
    done = run_pytest(
        "suites/linkdispatch/test_arp.py", "--stack", f"gvisor@{fake},gvisor-nogso@{fake}", "-p", "no:randomly", "-n", "0", "-rs", "-v",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # The default variant runs on it (runsc's own default stands in for --gso=true) ...
    assert "test_answers_who_has_for_own_address[gvisor@nogso-build] PASSED" in done.stdout, done.stdout[-3000:]
    # ... and the variant that sets -gso skips, naming the flag and the binary, never carried over.
    why = f"gvisor-nogso@nogso-build unavailable: {fake} has no -gso flag (its `runsc flags` does not list it), which variant gvisor-nogso (gso=False) needs"
    assert done.stdout.count(why) == 2, done.stdout[-3000:]
    assert "2 passed, 2 skipped" in done.stdout, done.stdout[-3000:]


def test_builds_file_in_the_options(tmp_path, copies):
    nightly, _, _ = copies
    (tmp_path / "b.toml").write_text(f'[gvisor]\nnightly = "{nightly}"\n')
    done = run_pytest(
        "suites/linkdispatch/test_arp.py",
        "--collect-only",
        "-q",
        "--lab-builds",
        str(tmp_path / "b.toml"),
        "--stack",
        "gvisor-ch*@nightly",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "test_arp.py::test_answers_who_has_for_own_address[gvisor-ch2@nightly]" in done.stdout, done.stdout[-2000:]
    assert "[gvisor-ch4@nightly]" in done.stdout and "[gvisor@nightly]" not in done.stdout
    assert isinstance(BuildsFile.load(tmp_path / "b.toml", {"gvisor": True}), BuildsFile)
