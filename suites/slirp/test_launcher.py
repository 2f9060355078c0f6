"""The slirp4netns launcher's contract: options, features, start and stop, what the namespace
gets, host loopback, and port forwarding through the API socket.

slirp4netns runs in a lab "host" namespace (the `host` fixture), never the root namespace: port
forwards listen on that namespace's 127.0.0.1 and its clients connect from inside it; services
inside run in the container's lab namespace.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether

from labkit.errors import LabError, LabInputError
from labkit.lifecycle.process import run_in
from labkit.net.rtnl import wait_address
from labkit.rtnetlink.view import NetView
from labkit.stacks.slirp4netns import Features, Slirp4netns, SlirpApiError, SlirpOptions, command_line
from labkit.stacks.slirp4netns.api import SlirpApi
from labkit.stacks.slirp4netns.options import DEFAULT_MTU

from .conftest import carried, free_port, needs_slirp4netns
from .host_loopback import assert_host_loopback_blocked, connect

SLIRP_IPV6_PREFIX = ipaddress.ip_network("fd00::/64")  # libslirp's; watched, never sent to
FULL_HELP = """-c, --configure -e, --exit-fd=FD -r, --ready-fd=FD -m, --mtu=MTU (default=1500, max=65521)
-6, --enable-ipv6 -a, --api-socket=PATH --cidr=CIDR --disable-host-loopback --netns-type=TYPE
--enable-sandbox --enable-seccomp --outbound-addr=IPv4 --outbound-addr6=IPv6 --disable-dns"""


# -- option rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, allowed",
    [
        ("cidr=10.0.2.0", "an IPv4 CIDR"),
        ("cidr=10.0.2.0/24", "in the lab's 198.18.0.0/15"),
        ("cidr=198.18.0.0/26", "of /25 or wider"),
        ("cidr=2001:db8::/64", "an IPv4 CIDR"),
        ("cidr=nonsense", "an IPv4 CIDR"),
        ("mtu=67", "an integer from 68 to 65521"),
        ("mtu=65522", "an integer from 68 to 65521"),
        ("mtu=big", "an integer from 68 to 65521"),
        ("allow_host_loopback=yes", "true, false"),
        ("enable_ipv6=1", "true, false"),
        ("outbound_addr=2001:db8::1", "an IPv4 address or the name of an existing interface"),
        ("outbound_addr=nosuchif0", "an IPv4 address or the name of an existing interface"),
        ("outbound_addr6=198.18.0.1", "an IPv6 address or the name of an existing interface"),
        ("port_handler=socat", "slirp4netns, rootlesskit"),
        ("colour=blue", "cidr, mtu, allow_host_loopback"),
        ("mtu", "expected KEY=VALUE"),
    ],
)
def test_each_invalid_option_gets_its_error(option, allowed):
    with pytest.raises(LabInputError) as refused:
        SlirpOptions.parse([option])
    message = str(refused.value)
    assert "\n" not in message and allowed in message and option.split("=")[0] in message, message


def test_outbound_addr6_needs_ipv6():
    with pytest.raises(LabInputError, match="outbound_addr6=2001:db8::1: needs enable_ipv6=true"):
        SlirpOptions.parse(["outbound_addr6=2001:db8::1"])


@pytest.mark.parametrize(
    "options, want, unwanted",
    [
        (
            [],
            [
                "--disable-host-loopback",
                f"--mtu={DEFAULT_MTU}",
                "--api-socket=/run/x.sock",
                "--cidr=198.18.0.0/24",
                "--disable-dns",
            ],
            ["--enable-ipv6", "--outbound-addr"],
        ),
        (["allow_host_loopback=true", "mtu=1500"], ["--mtu=1500"], ["--disable-host-loopback"]),
        (["cidr=198.18.5.0/24", "enable_ipv6=true"], ["--cidr=198.18.5.0/24", "--enable-ipv6"], []),
        (["outbound_addr=lo", "enable_ipv6=true", "outbound_addr6=::1"], ["--outbound-addr=lo", "--outbound-addr6=::1"], []),
        (["port_handler=slirp4netns"], ["--api-socket=/run/x.sock"], []),
        (["port_handler=rootlesskit"], [], ["--api-socket"]),
    ],
)
def test_valid_options_give_the_expected_command_line(options, want, unwanted):
    argv = command_line(
        SlirpOptions.parse(options), Features.parse("slirp4netns", FULL_HELP), target="/run/netns/x", ready_fd=4, exit_fd=3,
        api_socket=Path("/run/x.sock"),
    )  # fmt: skip
    assert argv[:4] == ["slirp4netns", "--configure", "--exit-fd=3", "--ready-fd=4"]
    assert argv[-3:] == ["--netns-type=path", "/run/netns/x", "tap0"]
    assert set(want) <= set(argv), argv
    assert not [a for a in argv for u in unwanted if a.startswith(u)], argv


@pytest.mark.parametrize(
    "missing, option",
    [("--cidr", "cidr=198.18.5.0/24"), ("--enable-ipv6", "enable_ipv6=true"), ("--disable-host-loopback", None)],
)
def test_launcher_refuses_what_the_binary_lacks(fake_binary, workdir, namespace, host, missing, option):
    help_text = FULL_HELP.replace(missing, "")
    binary = fake_binary(help_text)
    with pytest.raises(LabInputError) as refused:
        Slirp4netns(
            namespace.netns, SlirpOptions.parse([option] if option else []), host=host.netns, workdir=workdir, binary=binary
        ).start()
    assert missing in str(refused.value) and "needed by" in str(refused.value), refused.value
    assert os.listdir(workdir) == [], "a refused start left files behind"


# -- start and stop ----------------------------------------------------------------------------


@needs_slirp4netns
def test_ready_then_exit_fd_ends_it(namespace, host, workdir, cidr):
    slirp = Slirp4netns(namespace.netns, SlirpOptions.parse([f"cidr={cidr}"]), host=host.netns, workdir=workdir, ready_timeout=5)
    with slirp:
        assert slirp.running()
        sock = slirp.api_socket
        assert sock is not None and sock.is_socket()
        # Closing the exit fd alone must end it, well before stop() would kill it.
        code = slirp.stop(timeout=2)
    assert code == 0, f"slirp4netns did not end on its exit fd (exit code {code}: killed)"
    assert not sock.exists(), "the API socket survived"
    assert namespace.netns.exists(), "stopping slirp4netns took the namespace with it"


@needs_slirp4netns
def test_sandboxed_start_keeps_the_namespace_mount(namespace, host, workdir, cidr):
    """--enable-sandbox unmounts things in its mount namespace; the launcher gives it a private one."""
    with Slirp4netns(namespace.netns, SlirpOptions.parse([f"cidr={cidr}"]), host=host.netns, workdir=workdir, sandbox=True):
        assert namespace.netns.exists()
    assert namespace.netns.exists() and os.path.ismount(namespace.netns.path)


def test_a_binary_that_dies_at_once_is_reported_with_its_log(fake_binary, namespace, host, workdir):
    binary = fake_binary(FULL_HELP, body="echo 'cannot open tap: computer says no' >&2; exit 1")
    with pytest.raises(LabError) as failed:
        Slirp4netns(namespace.netns, host=host.netns, workdir=workdir, binary=binary, ready_timeout=10).start()
    assert "exited (1) before it was ready" in str(failed.value) and "computer says no" in str(failed.value)


def test_a_binary_that_closes_its_ready_fd_unready_is_reported(fake_binary, namespace, host, workdir):
    # Closes the fd named by --ready-fd (dash cannot name fds above 9), then idles.
    close = "import os, sys, time; [os.close(int(a.split('=')[1])) for a in sys.argv[1:] if a.startswith('--ready-fd=')]; time.sleep(30)"
    body = f'exec python3 -c "{close}" "$@"'
    binary = fake_binary(FULL_HELP, body=body)
    with pytest.raises(LabError, match="closed its ready fd without writing"):
        Slirp4netns(namespace.netns, host=host.netns, workdir=workdir, binary=binary, ready_timeout=10).start()


def test_a_binary_that_never_gets_ready_is_bounded(fake_binary, namespace, host, workdir):
    binary = fake_binary(FULL_HELP, body="exec sleep 30")
    with pytest.raises(LabError, match=r"not ready within 0.5s"):
        Slirp4netns(namespace.netns, host=host.netns, workdir=workdir, binary=binary, ready_timeout=0.5).start()


# -- inside the namespace ----------------------------------------------------------------------


@needs_slirp4netns
@pytest.mark.parametrize("mtu", [None, 1500])
def test_namespace_gets_tap_address_gateway_and_mtu(namespace, host, workdir, cidr, mtu):
    options = [f"cidr={cidr}"] + ([f"mtu={mtu}"] if mtu else [])
    net = ipaddress.ip_network(cidr)
    with Slirp4netns(namespace.netns, SlirpOptions.parse(options), host=host.netns, workdir=workdir):
        view = NetView.read(lambda argv: run_in(namespace.netns, argv))
        tap = view.links.get("tap0")
        assert tap is not None, f"no tap0 in the namespace: {sorted(view.links)}"
        assert tap.mtu == (mtu or DEFAULT_MTU), f"tap0 MTU {tap.mtu}, asked for {mtu or DEFAULT_MTU}"
        mine = f"{net.network_address + 100}/{net.prefixlen}"
        assert mine in view.addresses.get("tap0", ()), f"tap0 has {sorted(view.addresses.get('tap0', ()))}, not {mine}"
        default = [(r.gateway, r.dev) for r in view.routes if r.dst == "0.0.0.0/0"]
        assert default == [(str(net.network_address + 2), "tap0")], f"IPv4 default routes {default}"
        # The gateway (.2) and the DNS address (.3) are slirp's: they answer ARP from the tap.
        for host in (2, 3):
            assert _arp_answered(namespace, tap, str(net.network_address + host), str(net.network_address + 100))


@needs_slirp4netns
@pytest.mark.parametrize("enabled", [True, False], ids=["enable_ipv6", "ipv4-only"])
def test_ipv6_when_enabled(namespace, host, workdir, cidr, enabled):
    """With enable_ipv6=true libslirp advertises its prefix (fd00::/64) and the tap autoconfigures
    an address in it. The lab only watches the namespace's addresses: it sends nothing there."""
    options = SlirpOptions.parse([f"cidr={cidr}", f"enable_ipv6={'true' if enabled else 'false'}"])
    with Slirp4netns(namespace.netns, options, host=host.netns, workdir=workdir):
        index = _ifindex(namespace, "tap0")
        in_prefix = lambda a: ipaddress.ip_address(a) in SLIRP_IPV6_PREFIX
        if enabled:
            got = wait_address(namespace.netns, index, socket.AF_INET6, in_prefix, timeout=10)
            assert ipaddress.ip_interface(got).network == SLIRP_IPV6_PREFIX, got
        else:
            # As long as the positive case may take (about 3 s measured), and twice that.
            with pytest.raises(LabError, match="no IPv6 address"):
                wait_address(namespace.netns, index, socket.AF_INET6, in_prefix, timeout=6)


def _ifindex(namespace, name: str) -> int:
    with namespace.netns.iproute() as ipr:
        return ipr.link_lookup(ifname=name)[0]


def _arp_answered(namespace, tap, target: str, source: str) -> bool:
    with namespace.netns.entered():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    with s:
        s.bind(("tap0", 0x0806))
        s.settimeout(2)
        s.send(bytes(Ether(src=tap.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=tap.mac, psrc=source, pdst=target)))
        try:
            while True:
                reply = Ether(s.recv(2048))
                if reply.haslayer(ARP) and reply[ARP].op == 2 and reply[ARP].psrc == target:
                    return True
        except TimeoutError:
            return False


# -- host loopback -----------------------------------------------------------------------------


@needs_slirp4netns
@pytest.mark.parametrize("allowed", [False, True], ids=["blocked", "allowed"])
def test_host_loopback(namespace, host, workdir, cidr, allowed):
    gateway = str(ipaddress.ip_network(cidr).network_address + 2)
    options = [f"cidr={cidr}", f"allow_host_loopback={'true' if allowed else 'false'}"]
    with Slirp4netns(namespace.netns, SlirpOptions.parse(options), host=host.netns, workdir=workdir) as slirp:
        if not allowed:
            # slirp4netns's own refusal, while it runs and serves: see suites/slirp/host_loopback.py.
            assert_host_loopback_blocked(namespace.netns, slirp, gateway)
            return
        with host.socket(socket.AF_INET, socket.SOCK_STREAM) as host_service:
            host_service.bind(("127.0.0.1", 0))
            host_service.listen(1)
            port = host_service.getsockname()[1]
            attempt = connect(namespace.netns, gateway, port)
    assert attempt.outcome == "connected", f"allow_host_loopback=true, yet the gateway did not reach 127.0.0.1:{port}: {attempt}"


# -- port forwarding through the API ---------------------------------------------------------


@needs_slirp4netns
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_port_forwarding_through_the_api(namespace, host, workdir, cidr, proto):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    host_port = free_port(host.netns, kind)
    with Slirp4netns(namespace.netns, SlirpOptions.parse([f"cidr={cidr}"]), host=host.netns, workdir=workdir) as slirp:
        with namespace.netns.entered():
            inside = socket.socket(socket.AF_INET, kind)
        with inside:
            inside.bind(("0.0.0.0", 0))
            guest_port = inside.getsockname()[1]
            if proto == "tcp":
                inside.listen(1)
            inside.settimeout(3)
            forward = slirp.api.add_hostfwd(proto, "127.0.0.1", host_port, guest_port)
            listed = slirp.api.list_hostfwd()
            assert [(e["id"], e["proto"], e["host_port"], e["guest_port"]) for e in listed] == [
                (forward, proto, host_port, guest_port)
            ]
            with pytest.raises(SlirpApiError, match="add_hostfwd"):
                slirp.api.add_hostfwd(proto, "127.0.0.1", host_port, guest_port)
            assert carried(host.netns, proto, host_port, inside), f"{proto} 127.0.0.1:{host_port} did not reach the service inside"
            slirp.api.remove_hostfwd(forward)
            assert slirp.api.list_hostfwd() == []
            assert not carried(host.netns, proto, host_port, inside), f"{proto} 127.0.0.1:{host_port} still forwarded after remove"


@needs_slirp4netns
def test_api_errors_are_replies_and_it_keeps_serving(namespace, host, workdir, cidr):
    with Slirp4netns(namespace.netns, SlirpOptions.parse([f"cidr={cidr}"]), host=host.netns, workdir=workdir) as slirp:
        for payload, desc in ((b"{not json", "cannot parse JSON"), (b'{"execute": "reboot"}', "unknown execute")):
            reply = slirp.api.raw(payload)
            assert desc in reply.get("error", {}).get("desc", ""), f"{payload!r} got {reply}"
        assert slirp.running() and slirp.api.list_hostfwd() == []


@pytest.mark.parametrize("host_addr", ["10.0.0.1", "192.168.1.1", "fe80::1"])
def test_api_refuses_to_forward_from_outside_the_lab(host_addr):
    """A forward binds only in the lab: a lab address, loopback or all of the host namespace's;
    anything else is refused before the API socket is touched (there is none here)."""
    with pytest.raises(LabInputError, match="allowed: a lab address"):
        SlirpApi(Path("/nonexistent/slirp4netns.sock")).add_hostfwd("tcp", host_addr, 8080, 80)
