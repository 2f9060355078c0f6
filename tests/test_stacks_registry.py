import pytest

from labkit.errors import LabInputError
from labkit.stacks import LinuxStack, resolve

from .conftest import run_pytest


def test_names_variants_globs_and_all():
    assert [s.id for s in resolve("linux")] == ["linux"]
    assert [s.id for s in resolve("linux-txcsum")] == ["linux-txcsum"]
    assert [s.id for s in resolve("linux-*")] == ["linux", "linux-txcsum"]  # NAME-*: every variant, the default too
    assert [s.id for s in resolve("linux-t*")] == ["linux-txcsum"]
    assert {"linux", "linux-txcsum"} <= {s.id for s in resolve("all")}
    assert [s.id for s in resolve("linux,linux")] == ["linux"]


def test_plug_in_a_driver_by_path():
    (spec,) = resolve("examples.arp_ignore:ArpIgnoreLinux")
    assert spec.id == "linux-arpignore" and issubclass(spec.driver, LinuxStack)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nope", "unknown stack 'nope'; allowed: "),
        ("nomodule:Foo", "cannot load stack driver 'nomodule:Foo'"),
        ("labkit.errors:LabError", "is not a labkit.stacks.Stack subclass"),
    ],
)
def test_unknown_names_are_refused(name, expected):
    with pytest.raises(LabInputError) as err:
        resolve(name)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_gvisor_variants_are_named():
    ids = {s.id for s in resolve("gvisor*")}
    assert ids == {
        "gvisor",
        "gvisor-ch2",
        "gvisor-ch4",
        "gvisor-nogso",
        "gvisor-swgso",
        "gvisor-txcsum",
        "gvisor-norxcsum",
        "gvisor-noqdisc",
        "gvisor-none",
    }
    (none,) = resolve("gvisor-none")
    assert "arp" not in none.capabilities and "exec" in none.capabilities


def test_missing_runsc_is_a_skip_that_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no runsc on it
    done = run_pytest("suites/linkdispatch/test_arp.py", "--stack", "gvisor", "-rs")
    assert done.returncode == 0, done.stdout[-2000:]
    assert "2 skipped" in done.stdout, done.stdout[-2000:]
    assert "gvisor unavailable: runsc is not installed; install: apt-get install -y runsc" in done.stdout, done.stdout[-2000:]


def test_named_variants_combine_with_plus():
    (spec,) = resolve("gvisor-ch4+txcsum")
    stack = spec.create()
    assert (stack.options["channels"], stack.options["tx_checksum"]) == (4, True)
    assert spec.id == "gvisor-ch4+txcsum"
    with pytest.raises(
        LabInputError, match=r"variants 'nogso' and 'swgso' of stack 'gvisor' conflict on software_gso \(False vs True\)"
    ):
        resolve("gvisor-nogso+swgso")
    with pytest.raises(
        LabInputError, match=r"unknown variant 'bogus' in 'ch4\+bogus' of stack 'gvisor'; allowed: gvisor, gvisor-ch2"
    ):
        resolve("gvisor-ch4+bogus")
    with pytest.raises(LabInputError, match=r"names a variant twice"):
        resolve("gvisor-ch4+ch4")
    with pytest.raises(LabInputError, match=r"network=none takes no link options, got channels"):
        resolve("gvisor-none+ch4")
