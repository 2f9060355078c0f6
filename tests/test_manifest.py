import pytest

from labkit.errors import LabInputError
from labkit.manifest import Manifest


def write(tmp_path, text):
    p = tmp_path / "deviations.toml"
    p.write_text(text)
    return p


def test_entries_match_by_stack_and_check_globs(tmp_path):
    m = Manifest.load(
        write(
            tmp_path,
            """
[[deviation]]
stack = "gvisor-*"
check = "linkdispatch/test_arp.py::test_*"
reason = "netstack answers differently"
""",
        )
    )
    assert (
        m.lookup("gvisor-ch4", "linkdispatch/test_arp.py::test_answers_who_has_for_own_address").reason
        == "netstack answers differently"
    )
    assert m.lookup("linux", "linkdispatch/test_arp.py::test_x") is None
    assert m.lookup("gvisor-ch4", "linkdispatch/test_udp.py::test_x") is None


@pytest.mark.parametrize(
    "body, expected",
    [
        ('[[deviation]]\nstack = "linux"\ncheck = "a.py::t"\n', "'reason' must be a non-empty string"),
        ('[[deviation]]\nstack = "linux"\ncheck = "a.py::t"\nreason = ""\n', "'reason' must be a non-empty string"),
        ('[[deviation]]\nstack = "linux"\ncheck = "a.py::t"\nreason = "r"\nseverity = 1\n', "unknown key(s) ['severity']"),
        ('[[deviation]]\nstack = "linux"\ncheck = "test_arp"\nreason = "r"\n', "is not a test id"),
        ("[[deviation]\n", "not valid TOML"),
        ("[other]\nx = 1\n", "unknown table(s) ['other']"),
    ],
)
def test_malformed_entries_are_refused_in_one_line(tmp_path, body, expected):
    with pytest.raises(LabInputError) as err:
        Manifest.load(write(tmp_path, body))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(LabInputError, match="does not exist"):
        Manifest.load(tmp_path / "nope.toml")


def test_shipped_manifest_is_valid():
    from labkit.pytest_plugin.options import MANIFEST_NAME

    from .conftest import ROOT

    assert Manifest.load(ROOT / MANIFEST_NAME).deviations


def test_strict_defaults_to_true_and_may_be_turned_off(tmp_path):
    body = """
[[deviation]]
stack = "a"
check = "s/t.py::one"
reason = "always"

[[deviation]]
stack = "b"
check = "s/t.py::two"
reason = "load-dependent"
strict = false
"""
    m = Manifest.load(write(tmp_path, body))
    assert m.lookup("a", "s/t.py::one").strict is True
    assert m.lookup("b", "s/t.py::two").strict is False


def test_strict_must_be_a_boolean(tmp_path):
    body = '[[deviation]]\nstack = "a"\ncheck = "s/t.py::one"\nreason = "r"\nstrict = "no"\n'
    with pytest.raises(LabInputError, match="'strict' must be true or false"):
        Manifest.load(write(tmp_path, body))


def test_says_is_a_regular_expression_the_failure_must_match(tmp_path):
    m = Manifest.load(
        write(tmp_path, '[[deviation]]\nstack = "gvisor*"\ncheck = "s/t.py::c"\nreason = "bind refused"\nsays = "bind.*EACCES"\n')
    )
    (d,) = m.deviations
    assert d.describes("subscribe (bind): outcome kernel 'joined', stack 'refused: EACCES'")
    assert not d.describes("notifications: RTM_NEWROUTE kernel 'present', stack 'absent'")
    assert (
        Manifest.load(write(tmp_path, '[[deviation]]\nstack = "g"\ncheck = "s/t.py::c"\nreason = "r"\n'))
        .deviations[0]
        .describes("anything")
    )
    with pytest.raises(LabInputError, match=r"entry 1: 'says' '\(' is not a regular expression"):
        Manifest.load(write(tmp_path, '[[deviation]]\nstack = "g"\ncheck = "s/t.py::c"\nreason = "r"\nsays = "("\n'))
