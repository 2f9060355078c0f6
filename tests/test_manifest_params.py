"""Manifest entries and parametrized checks: without brackets an entry covers every case, with them one."""

import pytest

from labkit.manifest import Deviation, Manifest

CHECK = "linkdispatch/test_udp.py::test_datagram"


@pytest.mark.parametrize(
    "check_id, expected",
    [
        (CHECK, True),
        (f"{CHECK}[ipv6]", True),
        (f"{CHECK}[ipv4]", True),
        (f"{CHECK}_large[ipv6]", False),
        ("linkdispatch/test_tcp.py::test_datagram[ipv6]", False),
    ],
)
def test_entry_without_brackets_covers_every_case(check_id, expected):
    assert Deviation("linux", CHECK, "r").applies("linux", check_id) is expected


@pytest.mark.parametrize(
    "check_id, expected",
    [
        (f"{CHECK}[ipv6]", True),
        (f"{CHECK}[ipv4]", False),
        (CHECK, False),
        (f"{CHECK}[ipv6-frag]", False),
        (f"{CHECK}_large[ipv6]", False),
    ],
)
def test_entry_with_brackets_names_one_case(check_id, expected):
    assert Deviation("linux", f"{CHECK}[ipv6]", "r").applies("linux", check_id) is expected


def test_check_glob_without_brackets_covers_cases():
    d = Deviation("linux", "linkdispatch/test_udp.py::test_*", "r")
    assert d.applies("linux", f"{CHECK}[ipv6]")
    assert not d.applies("linux", "linkdispatch/test_arp.py::test_x[ipv6]")


@pytest.mark.parametrize(
    "stack_id, expected",
    [("gvisor", True), ("gvisor-ch4", True), ("gvisor-nogso", True), ("linux", False), ("slirp4netns", False)],
)
def test_stack_globs_still_apply(stack_id, expected):
    assert Deviation("gvisor*", f"{CHECK}[ipv6]", "r").applies(stack_id, f"{CHECK}[ipv6]") is expected
    assert Deviation("gvisor*", CHECK, "r").applies(stack_id, f"{CHECK}[ipv4]") is expected


def test_name_dash_star_covers_the_default_variant_too():
    assert Deviation("gvisor-*", CHECK, "r").applies("gvisor", CHECK)
    assert not Deviation("gvisor-*ch*", CHECK, "r").applies("gvisor", CHECK)


def test_lookup_returns_the_first_matching_entry():
    exact = Deviation("gvisor-*", f"{CHECK}[ipv6]", "only ipv6")
    every = Deviation("gvisor-*", CHECK, "every case")
    m = Manifest(None, (exact, every))
    assert m.lookup("gvisor-ch4", f"{CHECK}[ipv6]") is exact
    assert m.lookup("gvisor-ch4", f"{CHECK}[ipv4]") is every
    assert m.lookup("linux", f"{CHECK}[ipv6]") is None


def test_bracketed_entry_loads_from_toml(tmp_path):
    p = tmp_path / "deviations.toml"
    p.write_text(f'[[deviation]]\nstack = "linux-*"\ncheck = "{CHECK}[ipv6]"\nreason = "one case"\n')
    m = Manifest.load(p)
    assert m.lookup("linux-txcsum", f"{CHECK}[ipv6]").reason == "one case"
    assert m.lookup("linux-txcsum", f"{CHECK}[ipv4]") is None


def test_unless_leaves_out_matching_stacks(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[[deviation]]\nstack = "gvisor*"\nunless = "*norxcsum*"\ncheck = "a/test_x.py::test_y"\nreason = "r"\n')
    m = Manifest.load(path)
    assert m.lookup("gvisor-ch4", "a/test_x.py::test_y") is not None
    assert m.lookup("gvisor-norxcsum", "a/test_x.py::test_y") is None
    assert m.lookup("gvisor-ch4+norxcsum", "a/test_x.py::test_y") is None
