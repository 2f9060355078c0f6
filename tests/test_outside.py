"""The tap stacks' world refuses what would put it somewhere else: a plan on top of the uplink,
a stack process in a namespace the lab did not make, a service option nobody reads, a DNS zone
that is not one. Each in one line that names the value, before anything is started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labkit.errors import LabInputError
from labkit.net import layouts
from labkit.net.netns import NetNS, lab_host
from labkit.net.plan import AddressPlan
from labkit.services import dns_answer, dns_zone
from labkit.stacks.forwarding import STANDARD, PortForward
from labkit.stacks.pasta.launcher import forward_spec
from labkit.stacks.service import service_argv


@pytest.mark.parametrize("kw", [{"net4": "198.19.1.0/24"}, {"net4": "198.19.0.0/16"}, {"net6": "2001:db8:1:1::/64"}])
def test_a_plan_on_the_uplink_is_refused(kw):
    with pytest.raises(LabInputError, match="overlaps the tap stacks' uplink"):
        layouts.tap(AddressPlan.parse(**kw))


def test_a_stack_may_not_run_in_a_namespace_the_lab_did_not_make():
    with pytest.raises(LabInputError, match="host namespace 'mine': allowed: a namespace the lab made"):
        lab_host(NetNS("mine"))


@pytest.mark.parametrize(
    "kind, options, allowed",
    [("smtp", {}, "unknown service 'smtp'"), ("dns", {"zones": "a=1.2.3.4"}, "service dns option 'zones': allowed: ")],
)
def test_a_service_is_refused_before_it_starts(kind, options, allowed):
    with pytest.raises(LabInputError, match=allowed):
        service_argv(kind, 0, "any", options)


def test_a_service_command_line_carries_its_options():
    argv = service_argv("dns", 53, "4", {"zone": "outside.lab=198.19.1.2", "lie": 1})
    assert argv[argv.index("--zone") + 1] == "outside.lab=198.19.1.2" and argv[argv.index("--lie") + 1] == "1"


@pytest.mark.parametrize("zone", ["outside.lab", "outside.lab=", "=198.19.1.2", "outside.lab=not-an-address"])
def test_a_dns_zone_item_that_is_not_name_equals_address_is_refused_at_start(zone):
    with pytest.raises(ValueError, match="allowed: NAME=ADDRESS"):
        dns_zone(zone)
    done = subprocess.run(
        [sys.executable, "-m", "labkit.services", "dns", "--zone", zone], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "allowed: NAME=ADDRESS" in done.stderr, done.stderr


def test_the_dns_responder_answers_its_zone_and_nxdomain_otherwise():
    from scapy.layers.dns import DNS, DNSQR

    zone = dns_zone("outside.lab=198.19.1.2,outside.lab=2001:db8:1:1::2")
    a = DNS(dns_answer(bytes(DNS(id=7, rd=1, qd=DNSQR(qname="outside.lab", qtype="A"))), zone))
    assert (a.id, a.rcode, a.ancount, a.an[0].rdata) == (7, 0, 1, "198.19.1.2")
    aaaa = DNS(dns_answer(bytes(DNS(id=8, qd=DNSQR(qname="Outside.Lab.", qtype="AAAA"))), zone))
    assert (aaaa.rcode, aaaa.an[0].rdata) == (0, "2001:db8:1:1::2")
    unknown = DNS(dns_answer(bytes(DNS(id=9, qd=DNSQR(qname="elsewhere.example"))), zone))
    assert (unknown.rcode, unknown.ancount) == (3, 0)
    lie = DNS(dns_answer(bytes(DNS(id=10, qd=DNSQR(qname="outside.lab"))), zone, lie=True))
    assert lie.an[0].rdata != "198.19.1.2"


def test_the_standard_table_gives_every_forward_ports_of_its_own():
    taken: dict[tuple[str, int], str] = {}
    for fwd in STANDARD:
        for host_port, _ in fwd.ports:
            assert (fwd.proto, host_port) not in taken, f"{fwd.name} and {taken[(fwd.proto, host_port)]} share {host_port}"
            taken[(fwd.proto, host_port)] = fwd.name
    assert len({f.name for f in STANDARD}) == len(STANDARD) == 34


@pytest.mark.parametrize(
    "fwd, spec",
    [
        (PortForward("tcp", 41000, 41000), ["-t", "41000"]),
        (PortForward("udp", 42060, 9060, 3), ["-u", "42060-42062:9060-9062"]),
        (PortForward("tcp", 41090, 41090, 1, "2001:db8:1:1::1", "ipv6"), ["-t", "2001:db8:1:1::1/41090"]),
    ],
)
def test_pasta_is_given_each_forward_as_its_man_page_spells_it(fwd, spec):
    assert forward_spec(fwd) == spec


@pytest.mark.parametrize(
    "kw, allowed",
    [
        ({"proto": "sctp"}, "allowed: tcp, udp"),
        ({"host_port": 65535, "count": 2}, "allowed: ports 1-65535"),
        ({"host_addr": "10.0.0.1"}, "outside the lab ranges"),
        ({"host_addr": "2001:db8:1:1::1"}, "allowed: an address of that family"),
    ],
)
def test_a_bad_forward_is_refused(kw, allowed):
    with pytest.raises(LabInputError, match=allowed):
        PortForward(**{"proto": "tcp", "host_port": 41000, "container_port": 8000, **kw})
