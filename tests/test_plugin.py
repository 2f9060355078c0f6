"""The pytest plugin as users run it: in a child pytest, with real stacks."""

import secrets
import textwrap

from labkit.lifecycle import owner
from labkit.net import netns

from .conftest import run_pytest


def left_by(run: str) -> list[str]:
    """Namespaces of lab run `run` still there (other tests may leave orphans of their own meanwhile)."""
    return [n for n in netns.list_names() if (o := owner.Owner.parse(n)) is not None and o.run == run]


def test_linkdispatch_passes_on_linux_under_xdist():
    run = secrets.token_hex(3)
    done = run_pytest("suites/linkdispatch", "-n", "2", "--stack", "linux", "-v", run=run)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
    assert "PASSED suites/linkdispatch/test_arp.py::test_answers_who_has_for_own_address[linux]" in done.stdout
    assert left_by(run) == []


def test_arp_check_fails_on_a_stack_that_answers_no_arp():
    done = run_pytest("suites/linkdispatch/test_arp.py", "--stack", "examples.arp_ignore:ArpIgnoreLinux")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "no ARP reply came from linux-arpignore" in done.stdout
    assert "2 failed" in done.stdout
    assert ".pcap" in done.stdout  # the evidence is kept and its path printed


def test_manifest_turns_a_deviation_into_strict_xfail(tmp_path):
    manifest = tmp_path / "deviations.toml"
    manifest.write_text(
        textwrap.dedent(
            """
            [[deviation]]
            stack = "linux-arpignore"
            check = "linkdispatch/test_arp.py::*"
            reason = "arp_ignore=8 answers no ARP request"

            [[deviation]]
            stack = "linux"
            check = "linkdispatch/test_arp.py::test_answers_who_has_for_own_address"
            reason = "a deviation that does not happen"
            """
        )
    )
    done = run_pytest(
        "suites/linkdispatch/test_arp.py",
        "--stack",
        "linux,examples.arp_ignore:ArpIgnoreLinux",
        "--deviations",
        str(manifest),
        "-rxX",
    )
    # linux-arpignore's two failures are known; linux passing a check listed as deviating is reported.
    assert "2 xfailed" in done.stdout, done.stdout[-3000:]
    assert "known deviation: arp_ignore=8 answers no ARP request" in done.stdout
    assert "[XPASS(strict)] known deviation: a deviation that does not happen" in done.stdout
    assert done.returncode == 1


def test_a_deviation_that_fails_otherwise_than_its_entry_says_is_a_failure(tmp_path):
    """An entry with `says` covers a failure that says that, and no other: the same check
    failing for another reason is a failure, named as not the known deviation."""
    manifest = tmp_path / "deviations.toml"
    manifest.write_text(
        textwrap.dedent(
            """
            [[deviation]]
            stack = "linux-arpignore"
            check = "linkdispatch/test_arp.py::test_answers_who_has_for_own_address"
            reason = "arp_ignore=8 answers no ARP request"
            says = "no ARP reply came from"

            [[deviation]]
            stack = "linux-arpignore"
            check = "linkdispatch/test_arp.py::test_*"
            reason = "what this entry expects is not what happens"
            says = "a checksum was wrong"
            """
        )
    )
    done = run_pytest(
        "suites/linkdispatch/test_arp.py",
        "--stack",
        "examples.arp_ignore:ArpIgnoreLinux",
        "--deviations",
        str(manifest),
        "-rxXf",
    )
    assert "1 failed" in done.stdout and "1 xfailed" in done.stdout, done.stdout[-3000:]
    assert "not the known deviation: the manifest entry 'linux-arpignore :: linkdispatch/test_arp.py::test_*'" in done.stdout
    assert "/a checksum was wrong/" in done.stdout
    assert done.returncode == 1


def _bad(*args: str, run: str | None = None) -> tuple[int, str]:
    done = run_pytest("suites/linkdispatch/test_arp.py", *args, run=run)
    return done.returncode, (done.stdout + done.stderr).strip()


def test_unknown_stack_is_one_clear_line_and_exit_2():
    rc, out = _bad("--stack", "nosuchstack")
    assert rc == 2, out
    assert "unknown stack 'nosuchstack'; allowed: " in out and "linux" in out


def test_malformed_manifest_is_one_clear_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[deviation]]\nstack = "linux"\ncheck = "x.py::t"\n')
    rc, out = _bad("--deviations", str(bad))
    assert rc == 2, out
    assert f"deviation manifest {bad}, entry 1: 'reason' must be a non-empty string" in out


def test_address_outside_the_lab_ranges_is_exit_2():
    run = secrets.token_hex(3)
    rc, out = _bad("--lab-net4", "10.0.0.0/24", run=run)
    assert rc == 2, out
    assert "10.0.0.0/24 is outside the lab ranges" in out
    assert left_by(run) == []
