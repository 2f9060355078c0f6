"""Topologies are built and removed in one call, only inside lab namespaces."""

import socket

import pytest

from labkit.errors import LabInputError
from labkit.lifecycle import owner
from labkit.net.netns import NetNS
from labkit.net.topology import Topology

from .conftest import lab_namespaces_of, root_state

pytestmark = pytest.mark.usefixtures("no_leftovers")
IFF_UP = 1


def two_hosts() -> Topology:
    t = Topology()
    a, b = t.namespace("a"), t.namespace("b")
    t.veth(a, "eth0", b, "eth0", mtu=1400, a_mac="02:00:00:00:0a:01", b_mac="02:00:00:00:0b:01")
    a.addr("eth0", "198.18.1.1/24").addr("eth0", "2001:db8:1::1/64")
    b.addr("eth0", "198.18.1.2/24").addr("eth0", "2001:db8:1::2/64")
    b.route("default", via="198.18.1.1").route("default", via="2001:db8:1::1").route("198.18.9.0/24", dev="eth0")
    return t


def test_builds_links_addresses_and_routes_then_removes_everything():
    before = root_state()
    with two_hosts() as t:
        names = [ns.name for ns in t.namespaces.values()]
        assert all(NetNS(n).exists() for n in names)
        assert all(owner.Owner.parse(n) == owner.me() for n in names), names
        with t["b"].iproute() as ipr:
            link = ipr.get_links(ifname="eth0")[0]
            assert link.get("IFLA_MTU") == 1400
            assert link.get("IFLA_ADDRESS") == "02:00:00:00:0b:01"
            assert link["flags"] & IFF_UP
            addrs = {a.get("IFA_ADDRESS") for a in ipr.get_addr(index=link["index"])}
            assert {"198.18.1.2", "2001:db8:1::2"} <= addrs
            v4 = {(r.get("RTA_DST"), r.get("RTA_GATEWAY")) for r in ipr.get_routes(family=socket.AF_INET)}
            assert (None, "198.18.1.1") in v4 and ("198.18.9.0", None) in v4
            v6 = {(r.get("RTA_DST"), r.get("RTA_GATEWAY")) for r in ipr.get_routes(family=socket.AF_INET6)}
            assert (None, "2001:db8:1::1") in v6
        # The veth really joins the two: a datagram crosses it.
        with t["a"].socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, t["b"].socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("198.18.1.1", 5000))
            rx.settimeout(2)
            tx.sendto(b"over the veth", ("198.18.1.1", 5000))
            assert rx.recvfrom(100)[0] == b"over the veth"
    assert not any(NetNS(n).exists() for n in names)
    assert root_state() == before


def test_up_returns_once_the_first_veth_end_can_carry_frames():
    t = two_hosts()
    with t, t["a"].iproute() as ipr:
        # "a" came up first, without carrier: only linkwatch gives it a working qdisc, and it
        # sets operstate UP in the same step. up() must not return before that.
        assert ipr.get_links(ifname="eth0")[0].get("IFLA_OPERSTATE") == "UP"
        with t["a"].socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as tx:
            tx.bind(("eth0", 0))
            with t["b"].socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5)) as rx:
                rx.bind(("eth0", 0x88B5))
                rx.settimeout(2)
                tx.send(bytes.fromhex("02000000 0b01 02000000 0a01 88b5".replace(" ", "")) + b"first frame".ljust(46, b"."))
                assert rx.recv(100)[14:25] == b"first frame"


def test_link_declared_down_stays_down():
    t = Topology()
    a, b = t.namespace("a"), t.namespace("b")
    t.veth(a, "up0", b, "down0")
    b.link("down0").up = False
    with t, b.iproute() as ipr:
        assert not ipr.get_links(ifname="down0")[0]["flags"] & IFF_UP
        assert ipr.get_links(ifname="lo")[0]["flags"] & IFF_UP


def test_sysctl_is_set_inside_the_namespace_only():
    root = open("/proc/sys/net/ipv4/conf/all/arp_ignore").read()
    t = Topology()
    t.namespace("a").sysctl("net.ipv4.conf.all.arp_ignore", 8)
    with t, t["a"].netns.entered():
        assert open("/proc/sys/net/ipv4/conf/all/arp_ignore").read().strip() == "8"
    assert open("/proc/sys/net/ipv4/conf/all/arp_ignore").read() == root


@pytest.mark.parametrize(
    "declare, expected",
    [
        (lambda t: t.namespace("a").link("eth0"), "no interface 'eth0'"),
        (lambda t: t.veth(t.namespace("a"), "a-name-that-is-too-long", t.namespace("b"), "x"), "bad interface name"),
        (lambda t: t.veth(t.namespace("a"), "e0", t.namespace("b"), "e1", mtu=10), "bad MTU 10"),
        (lambda t: t.veth(t.namespace("a"), "e0", t.namespace("b"), "e1", a_mac="01:00:00:00:00:01"), "bad MAC"),
        (lambda t: t.veth(t.namespace("a"), "e0", t.namespace("b"), "e1")[0].addr("10.1.2.3/24"), "outside the lab ranges"),
        (lambda t: t.namespace("a").route("192.168.0.0/16", dev="x"), "outside the lab ranges"),
        (lambda t: t.namespace("a").sysctl("kernel.panic", 1), "bad sysctl"),
        (lambda t: t.namespace("Bad Role"), "bad namespace role"),
    ],
)
def test_bad_input_is_refused_before_anything_is_made(declare, expected):
    t = Topology()
    with pytest.raises(LabInputError) as err:
        declare(t)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert all(ns.netns is None for ns in t.namespaces.values())


def test_failed_build_rolls_back():
    t = Topology()
    a, b = t.namespace("a"), t.namespace("b")
    t.veth(a, "e0", b, "e1")
    a.route("198.18.50.0/24", via="198.18.60.1")  # gateway not reachable: the kernel refuses
    before = set(lab_namespaces_of(owner.me().pid))
    with pytest.raises(Exception, match="building namespace 'a'"):
        t.up()
    assert set(lab_namespaces_of(owner.me().pid)) == before


def test_names_are_unique_and_carry_run_and_owner():
    t1, t2 = Topology(), Topology()
    t1.namespace("x")
    t2.namespace("x")
    with t1, t2:
        n1, n2 = t1["x"].name, t2["x"].name
        assert n1 != n2
        assert n1.startswith(f"labkit-{owner.run_id()}-{owner.me().pid}-")


def test_up_waits_on_the_first_end_of_each_live_veth_only(monkeypatch):
    from labkit.net import rtnl

    waited: list[tuple[str, dict[int, str]]] = []
    real = rtnl.wait_operational
    monkeypatch.setattr(
        rtnl, "wait_operational", lambda ns, links, timeout=10.0: (waited.append((ns.name, dict(links))), real(ns, links, timeout))
    )
    t = two_hosts()
    c = t.namespace("c")
    t.veth(t["a"], "dead0", c, "dead1")
    c.link("dead1").up = False  # no carrier ever: nothing to wait for
    with t:
        by_role = {ns.name: role for role, ns in t.namespaces.items()}
        chosen = {by_role[name]: sorted(links.values()) for name, links in waited if links}
    assert chosen == {"a": ["eth0"]}


def test_an_await_up_end_answers_neighbour_solicitation_when_up_returns():
    # Until linkwatch reports the second end UP, IPv6 does not treat it as ready and leaves
    # the first neighbour solicitation unanswered: the first connection waits for a retransmit.
    t = two_hosts()
    t["b"].link("eth0").await_up = True
    with t:
        with t["b"].socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
            listener.bind(("2001:db8:1::2", 0))
            listener.listen(1)
            with t["a"].socket(socket.AF_INET6, socket.SOCK_STREAM) as c:
                c.settimeout(0.8)  # a neighbour solicitation is retransmitted after 1 s
                c.connect(("2001:db8:1::2", listener.getsockname()[1]))


def test_a_link_that_never_comes_up_is_a_bounded_error():
    from labkit.errors import LabError
    from labkit.net import rtnl

    t = Topology()
    a, b = t.namespace("a"), t.namespace("b")
    t.veth(a, "e0", b, "e1")
    b.link("e1").up = False
    with t:
        with pytest.raises(LabError, match=r"links not operational in .* after 0.2s: e0"):
            rtnl.wait_operational(a.netns, {a.link("e0").index: "e0"}, timeout=0.2)


def test_a_thousand_routes_and_addresses_come_up_in_one_build():
    """Every request is acknowledged; sent at once, 1,200 acknowledgements would overrun the
    build's own socket (ENOBUFS). The rtnetlink suite's large-dump layout builds this many."""
    t = Topology()
    a, b = t.namespace("a"), t.namespace("b")
    t.veth(a, "eth0", b, "eth0")
    a.addr("eth0", "198.18.1.1/24")
    for i in range(1000):
        a.route(f"198.19.{128 + i // 64}.{i % 64 * 4}/30", via="198.18.1.2")
    for i in range(200):
        a.addr("eth0", f"198.19.200.{i + 1}/32")
    with t:
        with a.iproute() as ipr:
            routes = [r for r in ipr.get_routes(family=socket.AF_INET) if r.get("RTA_GATEWAY") == "198.18.1.2"]
            addresses = [x for x in ipr.get_addr(family=socket.AF_INET) if x.get("IFA_ADDRESS").startswith("198.19.200.")]
    assert (len(routes), len(addresses)) == (1000, 200)
