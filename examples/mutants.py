"""Stacks broken on purpose: each mutant breaks one property a family of checks guards, so
labkit's own tests (tests/test_mutants.py, tests/test_transport_mutants.py,
tests/test_usernet_*mutants.py) can show those checks fail when it is broken.

    pytest suites/linkdispatch/test_routes.py --stack examples.mutants:WrongRouteLinux
    pytest suites/transport/test_rst.py --stack linux,examples.mutants:RstMuteLinux
    pytest suites/usernet/test_dns.py --stack slirp4netns,examples.mutants:LyingDnsSlirp

Most Linux mutants are a sysctl (`sysctls`) or one nftables chain on the link (`_NftLinux`:
`hook` and `rules`); the rest change the namespace in `_start`. The tap-stack mutants break the
world behind slirp4netns or pasta (`outside_rules`: an nftables ruleset in the outside namespace;
`outside_faults`: a service told to misbehave) or what the driver asks of the stack.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from labkit.errors import LabError
from labkit.lifecycle.process import LabProcess
from labkit.net.ethtool import set_tso
from labkit.stacks import LinuxStack, PastaStack, Slirp4netnsStack
from labkit.stacks.forwarding import PortForward


class NoGratuitousArpLinux(LinuxStack):
    """Ignores gratuitous ARP: a neighbour that announces a new MAC is not updated."""

    kind = "linux-nogarp"
    sysctls = {"net.ipv4.conf.all.drop_gratuitous_arp": 1}


class NoUnsolicitedNaLinux(LinuxStack):
    """Ignores unsolicited neighbour advertisements."""

    kind = "linux-nouna"

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        self._ns.sysctl(f"net.ipv6.conf.{self.link.name}.drop_unsolicited_na", 1)  # per device: "all" is not read


class NoDadLinux(LinuxStack):
    """Skips duplicate address detection: a new IPv6 address is used at once, whoever else has it."""

    kind = "linux-nodad"

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        self._ns.sysctl("net.ipv6.conf.all.accept_dad", 0).sysctl(f"net.ipv6.conf.{self.link.name}.accept_dad", 0)


class NoTsoLinux(LinuxStack):
    """Says it hands the device GSO super-frames (TX checksumming on), but has TSO off: a large
    write leaves already cut into segments."""

    kind = "linux-notso"
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {"": {"tx_checksum": True, "gso": True}}

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        set_tso(self._ns.netns, self.link.name, False)


class WrongRouteLinux(LinuxStack):
    """Loses the more specific of two overlapping routes, so the wider one carries its traffic."""

    kind = "linux-wrongroute"
    lost = ("198.19.64.0", 24)

    def _start(self) -> None:
        super()._start()
        with self._ns.iproute() as ipr:
            routes = ipr.get_routes(family=socket.AF_INET)
            if any(r.get_attr("RTA_DST") == self.lost[0] and r["dst_len"] == self.lost[1] for r in routes):
                ipr.route("del", dst=f"{self.lost[0]}/{self.lost[1]}")


def _load_nft(stack: LinuxStack, name: str, chains: str) -> None:
    """Load a netdev table on the stack's link: its hooks see frames before the kernel's IP layer
    (ingress) and after it (egress), so a rule there breaks the stack as a faulty NIC would."""
    assert stack.link is not None and stack.workdir is not None
    path = stack.workdir / f"{name}.nft"
    path.write_text(f"table netdev {name} {{\n{chains.replace('DEV', stack.link.name)}\n}}\n")
    done = stack.run(["nft", "-f", str(path)])
    if done.returncode:
        raise LabError(f"{stack.kind}: nft refused {path}: {done.stderr.strip()}")


def _redirect_ingress(ipr: Any, link: int, to: int, keys: Mapping[int, str]) -> None:
    """Send what arrives on `link` and matches a u32 key (per EtherType) to the ifb `to` first, as
    a slow or reordering device in front of the stack would: an ingress qdisc, one filter each."""
    ipr.tc("add", "ingress", link, "ffff:")
    for prio, (protocol, key) in enumerate(keys.items(), start=1):
        ipr.tc(
            "add-filter",
            "u32",
            link,
            parent=0xFFFF0000,
            prio=prio,
            protocol=protocol,
            keys=[key],
            target=0x1,
            action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": to},
        )


class _NftLinux(LinuxStack):
    """A Linux broken by one nftables chain on its link, as a mutant with `sysctls` is by a
    sysctl: `rules` on the `hook`, "ingress" (frames on their way in) or "egress" (on their way
    out), in a table named after the mutant's kind."""

    hook: ClassVar[str]
    rules: ClassVar[str]

    def _start(self) -> None:
        super()._start()
        chain = "in" if self.hook == "ingress" else "out"
        hooked = f'chain {chain} {{ type filter hook {self.hook} device "DEV" priority 0; {self.rules} }}'
        _load_nft(self, self.kind.removeprefix("linux-"), hooked)


class ChecksumBlindLinux(_NftLinux):
    """Accepts IPv4 UDP whatever its checksum: the checksum is zeroed ("none") on the way in."""

    kind = "linux-csumblind"
    hook = "ingress"
    rules = "meta protocol ip udp checksum set 0;"


class BadTxChecksumLinux(_NftLinux):
    """Sends every UDP datagram with the same made-up checksum, 0x1234."""

    kind = "linux-badtxcsum"
    hook = "egress"
    rules = "udp checksum set 0x1234;"


class ReorderingLinux(LinuxStack):
    """Delays about half the frames it receives in a rate-limited queue, so later frames of a flow
    overtake them: those with bit 1 set in byte 7 of the transport header, which is the UDP
    checksum (as good as random) or the low byte of the TCP sequence number."""

    kind = "linux-reorder"

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        with self._ns.iproute() as ipr:
            ipr.link("add", ifname="lkdelay", kind="ifb")
            delay = ipr.link_lookup(ifname="lkdelay")[0]
            ipr.link("set", index=delay, state="up")
            ipr.tc("add", "tbf", delay, rate="2mbit", burst=1600, latency="1s")
            link = ipr.link_lookup(ifname=self.link.name)[0]
            # pyroute2 reads "value/mask+offset" per byte of the mask from the IP header: byte 7
            # of the transport header is at 27 (IPv4, no options) or 47 (IPv6, no extensions).
            _redirect_ingress(ipr, link, delay, {0x0800: "0x2/0x2+27", 0x86DD: "0x2/0x2+47"})


class BurstDroppingLinux(_NftLinux):
    """Takes in no more than 64 UDP datagrams at once: the rest of a burst is dropped on the way
    in (an nftables limit at ingress, refilled at one packet a second), as a receive queue far
    smaller than the one it claims would."""

    kind = "linux-burstdrop"
    hook = "ingress"
    rules = "meta l4proto udp limit rate over 1/second burst 64 packets drop;"


# -- suites/transport/test_ip.py and test_fragments.py --


class NoReassemblyLinux(LinuxStack):
    """Keeps no memory for reassembly (the high thresholds at 0): every fragment it receives is
    dropped, so no fragmented datagram ever arrives. The low thresholds go first: a high one may
    not fall below its low one."""

    kind = "linux-noreasm"
    sysctls = {
        "net.ipv4.ipfrag_low_thresh": 0,
        "net.ipv4.ipfrag_high_thresh": 0,
        "net.ipv6.ip6frag_low_thresh": 0,
        "net.ipv6.ip6frag_high_thresh": 0,
    }


class TtlRewritingLinux(_NftLinux):
    """Sends everything with TTL / hop limit 200, whatever the default or the socket says (an
    nftables rule on the way out)."""

    kind = "linux-ttl200"
    hook = "egress"
    rules = "meta protocol ip ip ttl set 200; meta protocol ip6 ip6 hoplimit set 200;"


class RepeatingIdLinux(_NftLinux):
    """Puts the same identification, 4242, on every IPv4 datagram it sends (fragments included)."""

    kind = "linux-sameid"
    hook = "egress"
    rules = "meta protocol ip ip id set 4242;"


class SilentIpErrorsLinux(_NftLinux):
    """Never lets out an ICMP time exceeded or parameter problem (v4 or v6): whatever it finds
    wrong with a header or a reassembly, the sender is not told."""

    kind = "linux-noiperrors"
    hook = "egress"
    rules = (
        "meta protocol ip icmp type { time-exceeded, parameter-problem } drop; "
        "meta protocol ip6 icmpv6 type { time-exceeded, parameter-problem } drop;"
    )


class OptionDroppingLinux(_NftLinux):
    """Drops on the way in every IPv4 datagram with options and every IPv6 packet whose first
    extension header is hop-by-hop (0) or destination options (60), however valid."""

    kind = "linux-dropoptions"
    hook = "ingress"
    rules = "meta protocol ip ip hdrlength > 5 drop; meta protocol ip6 ip6 nexthdr { 0, 60 } drop;"


# -- transport: the handshake and RST families (suites/transport/test_handshake.py, test_rst.py) --


class NoSackLinux(LinuxStack):
    """Never agrees to SACK (net.ipv4.tcp_sack = 0): its SYN-ACK leaves SACK-permitted out and
    no ACK carries SACK blocks."""

    kind = "linux-nosack"
    sysctls = {"net.ipv4.tcp_sack": 0}


class NoTimestampsLinux(LinuxStack):
    """Never agrees to timestamps (net.ipv4.tcp_timestamps = 0): no segment carries TSopt."""

    kind = "linux-notimestamps"
    sysctls = {"net.ipv4.tcp_timestamps": 0}


class NoWindowScalingLinux(LinuxStack):
    """Never agrees to window scaling (net.ipv4.tcp_window_scaling = 0): its window stays 16-bit."""

    kind = "linux-nowscale"
    sysctls = {"net.ipv4.tcp_window_scaling": 0}


class MssBlindLinux(_NftLinux):
    """Ignores an MSS of 536 its peer announces: on the way in, a SYN whose first option is
    MSS 536 (as the lab's SYN is) gets MSS 1460 instead, so the stack cuts its segments for a
    1500-byte link. nftables only ever lowers an MSS with `tcp option maxseg`, and a raw write
    leaves the checksum alone, so the rule also writes 65535 - 924 into the urgent pointer (0,
    and ignored without URG): the one's-complement sum, hence the checksum, stays right."""

    kind = "linux-mssblind"
    hook = "ingress"
    # TCP header bits 104-111: flags; 144-159: urgent pointer; 160-175: the first option's
    # kind and length (0x0204: MSS); 176-191: its value.
    rules = (
        "meta l4proto tcp tcp flags & syn == syn @th,144,16 0 @th,160,16 0x0204 @th,176,16 536 "
        "@th,176,16 set 1460 @th,144,16 set 64611;"
    )


class RstDeafLinux(_NftLinux):
    """Never sees an RST: an ingress rule drops every TCP segment with RST set, so no reset ends
    a connection (or refuses a connect)."""

    kind = "linux-rstdeaf"
    hook = "ingress"
    rules = "tcp flags & rst == rst drop;"


class RstMuteLinux(_NftLinux):
    """Sends no RST: an egress rule drops every TCP segment of the stack's with RST set, so an
    abort (close with unread data, SO_LINGER 0, a closed port) reaches nobody."""

    kind = "linux-rstmute"
    hook = "egress"
    rules = "tcp flags & rst == rst drop;"


class Rfc1337Linux(LinuxStack):
    """Ignores an RST in TIME-WAIT (net.ipv4.tcp_rfc1337 = 1, RFC 1337's remedy against TIME-WAIT
    assassination), where Linux by default lets it end TIME-WAIT."""

    kind = "linux-rfc1337"
    sysctls = {"net.ipv4.tcp_rfc1337": 1}


class NoBareAckLinux(_NftLinux):
    """Sends no bare ACK with timestamps (an egress rule drops every segment that is ACK only,
    no data: 52 bytes over IPv4, a 32-byte payload over IPv6), so challenge ACKs (RFC 5961) and
    the ACKs answering unacceptable segments never leave; data, SYN-ACKs, FINs and RSTs do."""

    kind = "linux-nobareack"
    hook = "egress"
    rules = "meta protocol ip tcp flags == ack ip length 52 drop; meta protocol ip6 tcp flags == ack ip6 length 32 drop;"


# -- transport: the listen queue, UDP and ICMP (suites/transport/test_listen.py, test_udp.py, test_icmp.py) --


class SmallAcceptQueueLinux(LinuxStack):
    """Caps every listen backlog at 0 (net.core.somaxconn = 0): the accept queue holds one
    connection whatever listen(2) asked for."""

    kind = "linux-somaxconn0"
    sysctls = {"net.core.somaxconn": 0}


class AbortOnOverflowLinux(LinuxStack):
    """Resets a handshake whose final ACK finds the accept queue full (net.ipv4.tcp_abort_on_overflow
    = 1) instead of ignoring the ACK and letting the client's retransmission complete it later."""

    kind = "linux-abortoverflow"
    sysctls = {"net.ipv4.tcp_abort_on_overflow": 1}


class AlwaysSynCookiesLinux(LinuxStack):
    """Answers every SYN with a cookie (net.ipv4.tcp_syncookies = 2): no handshake is kept in
    SYN-RECEIVED, however empty the listener's queue."""

    kind = "linux-alwayscookies"
    sysctls = {"net.ipv4.tcp_syncookies": 2}


class NoSynCookiesLinux(LinuxStack):
    """Has no SYN cookies (net.ipv4.tcp_syncookies = 0): a SYN that finds the SYN queue full is dropped."""

    kind = "linux-nocookies"
    sysctls = {"net.ipv4.tcp_syncookies": 0}


class UnreachableBlindLinux(_NftLinux):
    """Never takes in a destination unreachable (v4 or v6, any code): an ingress rule drops them,
    so a connected UDP socket never learns its peer refuses, nor a connect that its peer is gone."""

    kind = "linux-unreachblind"
    hook = "ingress"
    rules = "meta protocol ip icmp type destination-unreachable drop; meta protocol ip6 icmpv6 type destination-unreachable drop;"


class MulticastSourceLinux(_NftLinux):
    """Delivers datagrams from a multicast source: an ingress rule rewrites such a source into the
    peer's address before the IP layer can refuse it (checksums fixed up by nftables)."""

    kind = "linux-mcastsource"
    hook = "ingress"
    rules = (
        "meta protocol ip ip saddr 224.0.0.0/4 ip saddr set 198.18.0.1; "
        "meta protocol ip6 ip6 saddr ff00::/8 ip6 saddr set 2001:db8::1;"
    )


class EmptyDatagramLosingLinux(_NftLinux):
    """Loses every UDP datagram it sends that carries no data (UDP length 8)."""

    kind = "linux-noemptyudp"
    hook = "egress"
    rules = "udp length 8 drop;"


class EchoReplyDeafLinux(_NftLinux):
    """Never takes in an echo reply (v4 or v6): a ping socket's request is answered in vain."""

    kind = "linux-echodeaf"
    hook = "ingress"
    rules = "meta protocol ip icmp type echo-reply drop; meta protocol ip6 icmpv6 type echo-reply drop;"


class SilentPortLinux(_NftLinux):
    """Never lets out a port unreachable (v4 or v6): a datagram to a closed port vanishes."""

    kind = "linux-silentport"
    hook = "egress"
    rules = (
        "meta protocol ip icmp type destination-unreachable icmp code port-unreachable drop; "
        "meta protocol ip6 icmpv6 type destination-unreachable icmpv6 code port-unreachable drop;"
    )


class PmtuBlindLinux(_NftLinux):
    """Never takes in fragmentation needed (v4) or packet too big (v6): the path MTU stays the
    link's, whatever the path says (an ICMP black hole in front of the stack)."""

    kind = "linux-pmtublind"
    hook = "ingress"
    rules = (
        "meta protocol ip icmp type destination-unreachable icmp code frag-needed drop; "
        "meta protocol ip6 icmpv6 type packet-too-big drop;"
    )


class NoPmtuDiscoveryLinux(LinuxStack):
    """Gives every new socket IP_PMTUDISC_DONT: IPv4 packets leave with DF clear, as a stack
    without path MTU discovery sends them."""

    kind = "linux-nopmtud"
    sysctls = {"net.ipv4.ip_no_pmtu_disc": 1}


class AnyBroadcastLinux(_NftLinux):
    """Takes an IPv4 broadcast for its own unicast address: an ingress rule rewrites the limited
    and the subnet's broadcast destination into 198.18.0.2 (the stack's), so a socket bound to
    that address gets broadcasts."""

    kind = "linux-anybroadcast"
    hook = "ingress"
    rules = "meta protocol ip ip daddr { 255.255.255.255, 198.18.0.255 } ip daddr set 198.18.0.2;"


# -- transport: the window and loss/timer families (suites/transport/test_window.py, test_timers.py) --


class WindowBlindLinux(_NftLinux):
    """Never sees the window its peer announces: on the way in, every TCP segment's window field
    is rewritten to 65535 (nftables fixes the checksum), so the stack sends into a closed or
    shrunk window as if it were open."""

    kind = "linux-windowblind"
    hook = "ingress"
    rules = "meta l4proto tcp tcp window set 65535;"


class WindowInflatingLinux(_NftLinux):
    """Announces more window than it has buffer: on the way out, every TCP segment's window field
    is rewritten to 65535, so the window never closes, whatever the application leaves unread."""

    kind = "linux-bigwindow"
    hook = "egress"
    rules = "meta l4proto tcp tcp window set 65535;"


class FlatBackoffLinux(LinuxStack):
    """Barely backs off: the RTO starts at 400 ms (net.ipv4.tcp_rto_min_us) and may not grow past
    1 s (net.ipv4.tcp_rto_max_ms, its floor), so the third timeout comes 1 s after the second
    instead of 1.6 s."""

    kind = "linux-flatbackoff"
    sysctls = {"net.ipv4.tcp_rto_min_us": 400000, "net.ipv4.tcp_rto_max_ms": 1000}


class NoRetransmitLinux(LinuxStack):
    """Its retransmissions never reach the wire: an egress rule remembers (source, port, sequence
    number) of every TCP segment with PSH or FIN in a dynamic set and drops a segment already
    there, so data and FINs leave once and their copies are lost (bare ACKs and zero-window
    probes, which carry neither flag, still go)."""

    kind = "linux-noretransmit"

    def _start(self) -> None:
        super()._start()
        seen = "tcp flags & (fin | psh) != 0"
        _load_nft(
            self,
            "noretransmit",
            "set sent4 { typeof ip saddr . tcp sport . tcp sequence; size 65535; timeout 1m; flags dynamic; }\n"
            "set sent6 { typeof ip6 saddr . tcp sport . tcp sequence; size 65535; timeout 1m; flags dynamic; }\n"
            'chain out { type filter hook egress device "DEV" priority 0;\n'
            f"  meta protocol ip {seen} ip saddr . tcp sport . tcp sequence @sent4 drop\n"
            f"  meta protocol ip {seen} add @sent4 {{ ip saddr . tcp sport . tcp sequence }}\n"
            f"  meta protocol ip6 {seen} ip6 saddr . tcp sport . tcp sequence @sent6 drop\n"
            f"  meta protocol ip6 {seen} add @sent6 {{ ip6 saddr . tcp sport . tcp sequence }}\n"
            "}",
        )


class LateFastRetransmitLinux(LinuxStack):
    """Waits for more than ten duplicate ACKs before it takes a segment for lost
    (net.ipv4.tcp_reordering = 10): after three, the loss is left to the RTO."""

    kind = "linux-dupthresh10"
    sysctls = {"net.ipv4.tcp_reordering": 10}


# -- tap stacks (slirp4netns, pasta): the world behind them broken on purpose (TapStack.outside_rules) --

# Every TCP segment the outside namespace sends is dropped on its way out, RSTs excepted: its
# services never answer (their SYN-ACKs are lost, so the stack's own connect to them never
# completes), while a port nobody listens on still refuses.
_SILENT_TCP_OUTSIDE = """
table inet labkit_tcpsilent {
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto tcp tcp flags & rst == 0 drop
    }
}
"""


class SilentTcpOutsideSlirp(Slirp4netnsStack):
    """slirp4netns with an outside whose TCP services drop every reply (`_SILENT_TCP_OUTSIDE`):
    the container's connections to them never open, so its handshakes, uploads and downloads fail."""

    kind = "slirp4netns-tcpsilent"
    outside_rules = _SILENT_TCP_OUTSIDE


class SilentTcpOutsidePasta(PastaStack):
    """pasta with an outside whose TCP services drop every reply (`_SILENT_TCP_OUTSIDE`)."""

    kind = "pasta-tcpsilent"
    outside_rules = _SILENT_TCP_OUTSIDE


# -- tap stacks' DHCP servers told other things than the plan says (suites/usernet/test_dhcp.py) --


class NarrowCidrSlirp(Slirp4netnsStack):
    """slirp4netns started with `--cidr` one bit narrower (a /25) than the plan's container
    network (a /24): the namespace's .100, the gateway .2, the DNS .3 and the DHCP pool .15-.30
    are all the same, but libslirp's DHCP server hands out the mask of the network it was told."""

    kind = "slirp4netns-dhcpmask"

    def _start_stack(self) -> None:
        tap = self.tap
        tap.net4 = ipaddress.ip_network(f"{tap.net4.network_address}/{tap.net4.prefixlen + 1}")
        super()._start_stack()


class MtuMisstatingPasta(PastaStack):
    """pasta started with `-m` 100 bytes below the plan's MTU: its DHCP server (option 26) and
    the tap tell the container an MTU the plan does not have."""

    kind = "pasta-dhcpmtu"

    def _start_stack(self) -> None:
        self.tap.mtu -= 100
        super()._start_stack()


# -- tap stacks' outbound UDP, ICMP and DNS against a broken outside (suites/transport/test_tap_udp.py,
#    transport/test_tap_icmp.py, usernet/test_dns.py) --


class LyingDnsSlirp(Slirp4netnsStack):
    """slirp4netns whose upstream resolver (the outside's responder) answers every name with a
    wrong address (`dns --lie 1`): what the container resolves is not what the zone says."""

    kind = "slirp4netns-dnslie"
    outside_faults: ClassVar[Mapping[str, Mapping[str, object]]] = {"dns": {"lie": 1}}


class LyingDnsPasta(PastaStack):
    """pasta whose upstream resolver answers every name with a wrong address (`dns --lie 1`)."""

    kind = "pasta-dnslie"
    outside_faults: ClassVar[Mapping[str, Mapping[str, object]]] = {"dns": {"lie": 1}}


# Every UDP datagram the outside namespace's services send is dropped on its way out, DNS
# (source port 53) excepted: datagrams reach them, their replies never come back.
_SILENT_UDP_OUTSIDE = """
table inet labkit_udpsilent {
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto udp udp sport != 53 drop
    }
}
"""


class SilentUdpOutsideSlirp(Slirp4netnsStack):
    """slirp4netns with an outside whose UDP services' replies are dropped (`_SILENT_UDP_OUTSIDE`)."""

    kind = "slirp4netns-udpsilent"
    outside_rules = _SILENT_UDP_OUTSIDE


class SilentUdpOutsidePasta(PastaStack):
    """pasta with an outside whose UDP services' replies are dropped (`_SILENT_UDP_OUTSIDE`)."""

    kind = "pasta-udpsilent"
    outside_rules = _SILENT_UDP_OUTSIDE


# The outside namespace's kernel answers no echo: its echo replies (ICMP and ICMPv6) are dropped
# on their way out, so an echo the stack carries out through its ping socket is never answered.
_ECHO_MUTE_OUTSIDE = """
table inet labkit_echomute {
    chain out {
        type filter hook output priority 0; policy accept;
        icmp type echo-reply drop
        icmpv6 type echo-reply drop
    }
}
"""


class EchoMuteOutsideSlirp(Slirp4netnsStack):
    """slirp4netns with an outside that sends no echo replies (`_ECHO_MUTE_OUTSIDE`)."""

    kind = "slirp4netns-echomute"
    outside_rules = _ECHO_MUTE_OUTSIDE


class EchoMuteOutsidePasta(PastaStack):
    """pasta with an outside that sends no echo replies (`_ECHO_MUTE_OUTSIDE`)."""

    kind = "pasta-echomute"
    outside_rules = _ECHO_MUTE_OUTSIDE


# -- tap stacks' port forwarding (suites/usernet/test_forwarding.py) --


class WrongPortSlirp(Slirp4netnsStack):
    """slirp4netns told to forward each host port to the container port after the one asked for
    (an off-by-one in an engine's port mapping): a single port's traffic reaches no service, a
    range's reaches its neighbour's."""

    kind = "slirp4netns-wrongport"

    def _add_forward(self, forward: PortForward) -> list[int]:
        return super()._add_forward(dataclasses.replace(forward, container_port=forward.container_port + 1))


# -- suites/perf (tests/test_perf_mutants.py) --


_SHAPER = "lkshape"  # the ifb that carries the link's incoming traffic through a tbf
_MEASURING_TOOLS = frozenset({"iperf3", "sockperf", "wrk"})


def _tbf(rate_mbit: int) -> dict[str, Any]:
    """tbf parameters for `rate_mbit`: a bucket of a few milliseconds at that rate (at least 64 KiB,
    so a GSO super-frame fits and a fast setting is not held back by the timer tick) and a queue
    of 50 ms, so the rate is what a bulk transfer sees and latency stays bounded."""
    return {"rate": f"{rate_mbit}mbit", "burst": max(65536, rate_mbit * 125_000 // 250), "latency": "50ms"}


class _ShapedLinux(LinuxStack):
    """A Linux whose link is a slow NIC both ways: a tbf qdisc on its egress, and its ingress
    redirected (tc mirred) through an ifb with a second tbf, all inside the stack's namespace
    (the peer's end is the lab's and stays untouched). Set with pyroute2's tc calls, as
    ReorderingLinux does: no `tc` subprocess."""

    rate_mbit: ClassVar[int]

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        with self._ns.iproute() as ipr:
            ipr.link("add", ifname=_SHAPER, kind="ifb")
            shaper = ipr.link_lookup(ifname=_SHAPER)[0]
            ipr.link("set", index=shaper, state="up")
            link = ipr.link_lookup(ifname=self.link.name)[0]
            ipr.tc("add", "tbf", link, 0x10000, **_tbf(self.rate_mbit))
            ipr.tc("add", "tbf", shaper, 0x10000, **_tbf(self.rate_mbit))
            # Every IPv4 and IPv6 packet (a u32 key matching anything); ARP stays unshaped.
            _redirect_ingress(ipr, link, shaper, {0x0800: "0x0/0x0+0", 0x86DD: "0x0/0x0+0"})

    def set_rate(self, rate_mbit: int) -> None:
        """Change both tbfs to `rate_mbit` in place (tc change: the queues and filters stay)."""
        assert self.link is not None
        with self._ns.iproute() as ipr:
            for name in (self.link.name, _SHAPER):
                ipr.tc("change", "tbf", ipr.link_lookup(ifname=name)[0], 0x10000, **_tbf(rate_mbit))


class SlowLinux(_ShapedLinux):
    """Moves no more than 50 Mbit/s each way (a tbf on its link), where the kernel on a veth moves
    tens of Gbit/s: its bulk throughput misses any sensible gate."""

    kind = "linux-slow"
    rate_mbit = 50


class SwitchingLinux(_ShapedLinux):
    """A link whose rate switches between 20 and 400 Mbit/s from one measurement to the next, so
    its repetitions of a cell differ by far more than 3x: the erratic flag must say so.

    The switch is deterministic and bounded: each time the stack is asked to run a measuring tool
    (iperf3, sockperf, wrk, by `run` or `spawn`), the count of that exact command (ports left
    out, as they may differ between repetitions) picks the rate: odd counts slow, even counts
    fast. One command per cell and repetition, so a cell's repetitions alternate, whatever other
    cells run in between, and so do its confirming re-measurements."""

    kind = "linux-switching"
    rate_mbit = 20
    rates: ClassVar[tuple[int, int]] = (20, 400)
    _port_flags: ClassVar[frozenset[str]] = frozenset({"-p", "--port", "--cport", "-B", "--bind"})

    def _start(self) -> None:
        self._asked: dict[tuple[str, ...], int] = {}
        super()._start()

    def _switch_for(self, argv: Sequence[str]) -> None:
        if not argv or Path(argv[0]).name not in _MEASURING_TOOLS:
            return
        key = tuple("" if i and argv[i - 1] in self._port_flags else word for i, word in enumerate(argv))
        count = self._asked[key] = self._asked.get(key, 0) + 1
        self.set_rate(self.rates[0] if count % 2 else self.rates[1])

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        self._switch_for(argv)
        return super().run(argv, timeout=timeout)

    def spawn(self, argv: Sequence[str]) -> LabProcess:
        self._switch_for(argv)
        return super().spawn(argv)


# -- the robustness suite (suites/robustness): a stack that dies on one frame, one that leaks --


class MarkedFrameDeathLinux(_NftLinux):
    """Dies, as far as anyone on the link can tell, on one marked frame: the first frame whose
    bytes at `offset` are `marker` puts the link in a set, and from then on everything arriving
    on the link is dropped (ARP, echo, TCP: the liveness oracle's probes). A fresh stack has an
    empty set. The test names the frame (`marked`) from the fuzzer's own stream for its seed.

    It carries no TCP, so the campaign holds no live connection: the frames of a seed are then
    the same in every run, whatever the stack's sequence numbers."""

    kind = "linux-marked"
    capabilities = LinuxStack.capabilities - {"tcp"}
    hook = "ingress"
    offset: ClassVar[int] = 14
    marker: ClassVar[bytes] = b"\xde\xad\xbe\xef\x00\x01"

    @classmethod
    def marked(cls, offset: int, marker: bytes) -> type[MarkedFrameDeathLinux]:
        """This mutant, dying on `marker` at byte `offset` of a frame."""
        if offset < 0 or not 1 <= len(marker) <= 16:
            raise LabError(f"bad marker {marker.hex()} at {offset}; allowed: 1 to 16 bytes at offset >= 0")
        return type("MarkedFrameDeathLinux", (cls,), {"offset": offset, "marker": marker})

    @classmethod
    def _rules(cls) -> str:
        bits = len(cls.marker) * 8
        return f"iifname @dead drop; @ll,{cls.offset * 8},{bits} 0x{cls.marker.hex()} add @dead {{ iifname }} drop;"

    def _start(self) -> None:
        LinuxStack._start(self)
        chains = (
            "set dead { type ifname; flags dynamic; }\n"
            f'chain in {{ type filter hook ingress device "DEV" priority 0; {self._rules()} }}'
        )
        _load_nft(self, "marked", chains)


_HOARDER = """
import select, socket, sys
link, pad = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((link, 0))
kept = []
print("ready", flush=True)
while True:
    ready = select.select([s, sys.stdin], [], [])[0]
    if sys.stdin in ready and not sys.stdin.buffer.read1(1):
        break
    if s in ready:
        kept.append(s.recv(65535) + bytes(pad))
"""


class LeakyLinux(LinuxStack):
    """A Linux with a process of its own that keeps every frame the link brings, and `pad` bytes
    more: a user-space stack that never frees what a frame made it allocate. Its memory grows
    by about 16 KB per frame, 1.6 GB per 100,000 (the limit is 20 MB)."""

    kind = "linux-leaky"
    pad: ClassVar[int] = 16384

    def _start(self) -> None:
        super()._start()
        assert self.link is not None
        self._hoarder = self.spawn([sys.executable, "-c", _HOARDER, self.link.name, str(self.pad)])
        line = self._hoarder.read_line(10.0)
        if line is None or line.strip() != "ready":
            raise LabError(f"{self.kind}: its frame hoarder did not start (said {line!r})")

    def own_pids(self) -> list[int]:
        hoarder = getattr(self, "_hoarder", None)
        return [hoarder.pid] if hoarder is not None and hoarder.running() else []

    def _stop(self) -> None:
        hoarder = getattr(self, "_hoarder", None)
        if hoarder is not None:
            hoarder.close()
        super()._stop()


# -- rtnetlink: a NETLINK_ROUTE emulation broken on purpose ------------------------------------
# A sandboxed stack's rtnetlink is a program's netlink socket; the kernel's cannot be broken from
# a namespace. These mutants run every program inside with examples/netlink_shim first on
# PYTHONPATH, whose sitecustomize makes the Python programs' AF_NETLINK sockets misbehave as
# `fault` says (the probe, the socket agent, pyroute2). `ip` itself is C and sees the kernel.
NETLINK_SHIM = Path(__file__).resolve().parent / "netlink_shim"


class _NetlinkFaultLinux(LinuxStack):
    fault: ClassVar[str] = ""

    def child_env(self) -> dict[str, str]:  # type: ignore[override]
        env = LinuxStack.child_env()
        env["PYTHONPATH"] = f"{NETLINK_SHIM}:{env['PYTHONPATH']}"
        env["LABKIT_NETLINK_FAULT"] = self.fault
        return env


class GrouplessNetlinkLinux(_NetlinkFaultLinux):
    """Refuses multicast groups (bind with groups, NETLINK_ADD_MEMBERSHIP: EPERM): no listener
    ever hears of a change, as runsc's netlink did for years."""

    kind = "linux-groupless"
    fault = "groupless"


class ExtAckBlindLinux(_NetlinkFaultLinux):
    """Knows no NETLINK_EXT_ACK (ENOPROTOOPT), which iproute2, pyroute2 and sd-netlink set."""

    kind = "linux-noextack"
    fault = "option:NETLINK_EXT_ACK"


class RuleBlindLinux(_NetlinkFaultLinux):
    """Refuses RTM_GETRULE (`ip rule`, policy routing tools) with EOPNOTSUPP."""

    kind = "linux-norules"
    fault = "type:34"


class GatewayDroppingLinux(_NetlinkFaultLinux):
    """Leaves RTA_GATEWAY out of every route it sends: routes via a gateway look on-link."""

    kind = "linux-nogateway"
    fault = "drop-attr:24:5"


class LossyDumpLinux(_NetlinkFaultLinux):
    """Loses the last message of every multi-part read: a long dump comes back short."""

    kind = "linux-lossydump"
    fault = "lossy-dump"


class ShortErrorLinux(_NetlinkFaultLinux):
    """Quotes only the header of a request it refuses, without NLM_F_CAPPED: a client that reads
    the quote as the whole request (pyroute2) reads past its end."""

    kind = "linux-shorterror"
    fault = "short-error"
