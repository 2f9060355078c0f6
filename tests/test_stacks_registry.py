import pytest

from labkit.errors import LabInputError
from labkit.stacks import LinuxStack, resolve


def test_names_variants_globs_and_all():
    assert [s.id for s in resolve("linux")] == ["linux"]
    assert [s.id for s in resolve("linux-txcsum")] == ["linux-txcsum"]
    assert [s.id for s in resolve("linux-*")] == ["linux-txcsum"]
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
