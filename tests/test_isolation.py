"""Pool isolation: what one check changes on a pooled stack never decides the next one's verdict.

The real case is the one that made a run order-dependent: an unsolicited NA moves the peer's
neighbour entry on a pooled gVisor sandbox, and the next IPv6 check's reply then goes to a MAC
nobody answers for. With isolation it passes in that order; with it off it fails, which shows
the isolation is what makes it pass.
"""

from __future__ import annotations

import textwrap

import pytest

from labkit.errors import LabInputError
from labkit.stacks import GVisorStack
from labkit.stacks import state as stack_state
from labkit.testbed import isolation

from .conftest import run_pytest

needs_runsc = pytest.mark.skipif(not GVisorStack.availability().ok, reason=f"runsc unavailable; install: {GVisorStack.availability().install}")

NEIGHBOURS_THEN_UDP = (
    "suites/linkdispatch/test_neighbours.py::test_unsolicited_advertisement_updates_the_neighbour",
    "suites/linkdispatch/test_udp.py",
    "--stack",
    "gvisor",
    "-n",
    "0",
    "--lab-order",
    "given",
)


@needs_runsc
def test_a_neighbour_moved_by_one_check_does_not_reach_the_next():
    done = run_pytest(*NEIGHBOURS_THEN_UDP, "--lab-isolation", "cheap")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "3 passed" in done.stdout, done.stdout[-1500:]


@needs_runsc
def test_without_isolation_the_next_check_inherits_the_moved_neighbour():
    done = run_pytest(*NEIGHBOURS_THEN_UDP, "--lab-isolation", "off")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "FAILED suites/linkdispatch/test_udp.py::test_datagram_reaches_service_and_reply_checksum_is_valid[gvisor-ipv6]" in done.stdout
    assert "want 02:00:00:00:00:02 -> 02:00:00:00:00:01 (the peer's MAC)" in done.stdout, done.stdout[-3000:]
    assert "-> 02:00:00:00:00:55, want" in done.stdout, done.stdout[-3000:]


LEAVES = textwrap.dedent(
    """
    import pytest
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import Ether

    from labkit.packet.testbench import IcmpEcho

    OTHER = "02:00:00:00:00:55"

    def plant(stack, wire, plan):
        ping = IcmpEcho(wire, plan.endpoints("ipv6"))
        ping.ping(1, timeout=3)  # the stack has an entry for the peer: the NA moves it
        wire.send(Ether(src=OTHER, dst="33:33:00:00:00:01") / IPv6(src=plan.peer6, dst="ff02::1", hlim=255)
                  / ICMPv6ND_NA(tgt=plan.peer6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=OTHER))
        wire.own(plan.peer6, mac=OTHER)
        assert ping.ping(2, timeout=3)[Ether].dst == OTHER

    def test_a_plants_without_saying(stack, wire, plan):
        plant(stack, wire, plan)

    @pytest.mark.changes("neighbours")
    def test_b_plants_and_says_so(stack, wire, plan):
        plant(stack, wire, plan)

    def test_c_adds_an_address_inside(stack, testbed, plan):
        done = stack.run(["ip", "-6", "addr", "add", f"{plan.unused6()}/64", "dev", testbed.stack_end.name])
        assert done.returncode == 0, done.stderr

    def test_d_leaves_a_process(stack):
        stack.spawn(["sleep", "60"])
    """
)
TYPO = LEAVES + textwrap.dedent(
    """
    @pytest.mark.changes("nieghbours")
    def test_e_typo(stack):
        pass
    """
)


@needs_runsc
@pytest.mark.parametrize("mode", ["cheap", "canary"])
def test_an_undeclared_change_fails_the_check_that_made_it(tmp_path, mode):
    suite = tmp_path / "test_leaves.py"
    suite.write_text(LEAVES)
    done = run_pytest(str(suite), "--stack", "gvisor", "-n", "0", "--lab-order", "given", "--lab-isolation", mode, "-rE")
    out = done.stdout
    assert "ERROR at teardown of test_a_plants_without_saying[gvisor]" in out, out[-3000:]
    assert "neighbours: the stack now sends to 2001:db8::1: 02:00:00:00:00:01 -> 02:00:00:00:00:55" in out, out[-3000:]
    assert "ERROR at teardown of test_b_plants_and_says_so" not in out
    # Only the full look sees inside the sandbox.
    assert ("ERROR at teardown of test_c_adds_an_address_inside[gvisor]" in out) == (mode == "canary"), out[-3000:]
    assert ("ERROR at teardown of test_d_leaves_a_process[gvisor]" in out) == (mode == "canary"), out[-3000:]
    if mode == "canary":
        assert "addresses: +eth0 2001:db8::" in out, out[-3000:]
        assert "processes: +sleep (pid " in out, out[-3000:]


def test_a_misspelt_change_stops_the_run_naming_what_is_allowed(tmp_path):
    suite = tmp_path / "test_typo.py"
    suite.write_text(TYPO)
    done = run_pytest(str(suite), "--stack", "linux", "-n", "0", "--co")
    assert done.returncode == 2
    assert "unknown change 'nieghbours'; allowed: neighbours, addresses, routes, links, sysctls, sockets, processes" in done.stdout + done.stderr


def test_declared_refuses_an_empty_marker():
    with pytest.raises(LabInputError, match="a changes marker that names nothing; allowed: neighbours"):
        isolation.declared((), "test_x")


def test_differences_names_each_kind_that_changed():
    before = isolation.Snapshot({"198.18.0.1": "02:00:00:00:00:01"}, {"addresses": frozenset({"eth0 198.18.0.2/24"})})
    after = isolation.Snapshot({"198.18.0.1": isolation.NO_REPLY}, {"addresses": frozenset({"eth0 198.18.0.2/24", "eth0 198.18.0.9/24"})})
    assert isolation.differences(before, before) == {}
    assert isolation.differences(before, after) == {
        "neighbours": "the stack now sends to 198.18.0.1: 02:00:00:00:00:01 -> no reply",
        "addresses": "+eth0 198.18.0.9/24",
    }


STATE = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet6 2001:db8::2/64 scope global tentative \\       valid_lft forever preferred_lft forever
@@
198.18.0.0/24 dev eth0 proto kernel scope link src 198.18.0.2
2001:db8::/64 dev eth0 proto kernel metric 256 expires 86399sec pref medium
@@
## tcp
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 020012C6:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 020012C6:1F90 010012C6:9C40 06 00000000:00000000 03:00000F1B 00000000     0        0 0 3 0
## tcp6
## udp
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2 2 0 0
## udp6
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  101: B80D0120000000000000000002000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0 0
"""


def test_state_keeps_what_a_check_could_trip_over_and_drops_what_ages():
    got = stack_state.parse(STATE)
    assert got["addresses"] == {"lo 127.0.0.1/8", "eth0 2001:db8::2/64"}  # "tentative" is DAD, not a change
    assert "2001:db8::/64 dev eth0 proto kernel metric 256 pref medium" in got["routes"]  # expiry left out
    # The listener and both bound UDP sockets; the TIME-WAIT (06) connection is ageing, not state.
    assert got["sockets"] == {"tcp listen 198.18.0.2:8080", "udp bound 0.0.0.0:53", "udp bound [2001:db8::2]:53"}


def test_state_refuses_output_it_cannot_split():
    with pytest.raises(ValueError, match="expected 3 sections"):
        stack_state.parse("no markers here")


@needs_runsc
def test_linkdispatch_in_a_random_order_on_pooled_sandboxes_gives_the_manifests_verdicts():
    """CI's order-independence run: a new seed each time, the full look at every pooled testbed;
    a failure prints the seed and where each worker's sequence is, for --lab-replay."""
    done = run_pytest("suites/linkdispatch", "--stack", "linux,gvisor", "-n", "2", "--lab-isolation", "canary", timeout=600)
    seed = next((line for line in done.stdout.splitlines() if "--lab-seed" in line), "no seed printed")
    assert done.returncode == 0, f"{seed}\n{done.stdout[-4000:]}"
    assert "order: random, --lab-seed" in seed
