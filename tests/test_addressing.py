import pytest

from labkit.errors import LabInputError
from labkit.net.addressing import lab_address, lab_interface, lab_network


@pytest.mark.parametrize("value", ["198.18.0.1", "198.19.255.254", "2001:db8::1", "2001:db8:ffff::9", "127.0.0.1", "::1"])
def test_lab_addresses_are_accepted(value):
    assert str(lab_address(value)) == value


@pytest.mark.parametrize("value", ["10.0.0.1", "192.168.1.1", "8.8.8.8", "198.20.0.1", "2001:db9::1", "fd00::1", "fe80::1"])
def test_other_addresses_are_refused_naming_the_value_and_the_ranges(value):
    with pytest.raises(LabInputError) as err:
        lab_address(value)
    message = str(err.value)
    assert value in message and "198.18.0.0/15" in message and "2001:db8::/32" in message
    assert "\n" not in message


def test_garbage_is_refused_as_not_an_address():
    with pytest.raises(LabInputError, match="not an IP address"):
        lab_address("198.18.0.300")


def test_interface_prefix_must_lie_inside_a_lab_range():
    assert str(lab_interface("198.18.4.2/24").network) == "198.18.4.0/24"
    with pytest.raises(LabInputError, match="outside the lab ranges"):
        lab_interface("198.18.0.1/14")  # 198.16.0.0/14 covers more than the lab range
    with pytest.raises(LabInputError, match="needs ADDR/PREFIXLEN"):
        lab_interface("198.18.0.1")


def test_route_destinations():
    assert lab_network("default").prefixlen == 0
    assert str(lab_network("198.18.8.0/24")) == "198.18.8.0/24"
    with pytest.raises(LabInputError, match="outside the lab ranges"):
        lab_network("10.0.0.0/8")
    with pytest.raises(LabInputError, match="bad route destination"):
        lab_network("198.18.8.1/24")  # host bits set
