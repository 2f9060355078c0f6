"""slirp4netns (libslirp) as a stack under test, on the far side of the namespace's tap.

slirp4netns --configure gives the namespace .100 of the CIDR; the gateway .2 and the DNS address
.3 are libslirp's, which answers ARP for them with 52:55 and the address's four bytes. The
checks talk to libslirp at .2.

IPv6 is left out of the conformance checks: libslirp's IPv6 prefix is fd00::/64, outside the
lab's documentation range, so the lab sends nothing there, and forwards no IPv6 port to it.

slirp4netns runs in the layout's host namespace. Its DNS forwarder at .3 asks the lab's outside
responder (the resolv.conf it sees is the lab's); ports are forwarded through its API socket,
one call per port, as engines do; a forwarded connection reaches the container from the client's
address, or from .2 (libslirp's address for the host) when the client is on the host's loopback.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from labkit.errors import LabError, LabInputError
from labkit.net.plan import AddressPlan
from labkit.stacks import base, programs
from labkit.stacks.forwarding import PortForward
from labkit.stacks.slirp4netns.features import Features
from labkit.stacks.slirp4netns.launcher import Slirp4netns, command_line
from labkit.stacks.slirp4netns.options import SlirpOptions
from labkit.stacks.tap import TapStack

INSTALL = "apt-get install -y slirp4netns"
SLIRP_GUEST, SLIRP_GATEWAY, SLIRP_UNUSED = 100, 2, 50  # .3 is libslirp's DNS address


class Slirp4netnsStack(TapStack):
    kind = "slirp4netns"
    capabilities = frozenset(
        {base.ARP, base.IPV4, base.ICMP, base.EXEC, base.SERVICES, base.OUTSIDE, base.FORWARD, base.FORWARD_API, base.DHCP, base.DNS}
    )
    DHCP_FIRST, DHCP_LEASES = 15, 16  # libslirp leases .15 to .30 of its network
    option_defaults: ClassVar[Mapping[str, Any]] = {"rootless": False, "sandbox": False, "mtu": 1500}
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "": {},  # rootful (a named netns, by path), MTU 1500, no --enable-sandbox
        "rootless": {"rootless": True},  # a user+net namespace, by pid
        "sandbox": {"sandbox": True},
        "mtu65520": {"mtu": 65520},
    }

    program = "slirp4netns"
    install = INSTALL

    def __init__(self, variant: str = "", binary: str | None = None) -> None:
        super().__init__(variant, binary)
        self.slirp: Slirp4netns | None = None

    @classmethod
    def plan_for(cls, variant: str, plan: AddressPlan) -> AddressPlan:
        mtu = cls.variant_options(variant).get("mtu", 1500)
        return replace(plan, peer_host=SLIRP_GUEST, stack_host=SLIRP_GATEWAY, unused_host=SLIRP_UNUSED, mtu=mtu)

    @classmethod
    def printed_version(cls, path: str) -> str | None:
        """`slirp4netns --version`: its own version, and the libslirp it is linked with."""
        text = programs.output([path, "--version"])
        own = re.search(r"slirp4netns version (\S+)", text)
        libslirp = re.search(r"libslirp: (\S+)", text)
        if own is None:
            return None
        return f"{own.group(1)} (libslirp {libslirp.group(1)})" if libslirp else own.group(1)

    @classmethod
    def refusal(cls, variant: str, binary: str) -> str | None:
        """What the launcher would refuse for this variant, given what the binary's --help lists."""
        try:
            features = Features.of(binary)
        except LabError as exc:
            return str(exc)
        opts = cls.variant_options(variant)
        try:
            command_line(
                SlirpOptions(mtu=opts.get("mtu", cls.option_defaults["mtu"])), features,
                target=1 if opts.get("rootless") else "/run/netns/x", ready_fd=3, exit_fd=4,
                api_socket=Path("api.sock"), sandbox=bool(opts.get("sandbox")), dns=True,
            )  # fmt: skip
        except LabInputError as exc:
            return f"{exc} (variant {cls.id_for(variant)})"
        return None

    def _start_stack(self) -> None:
        tap, workdir = self.tap, self.workdir
        assert workdir is not None
        options = SlirpOptions(cidr=str(tap.net4), mtu=tap.mtu)
        sandbox = self.options.get("sandbox", False)
        target = self.holder_pid if self.rootless else tap.netns
        assert target is not None
        self.slirp = Slirp4netns(
            target, options, host=tap.host_netns, workdir=workdir, binary=self.binary, tap=tap.name, sandbox=sandbox,
            resolv_conf=self.resolv_conf(), features=Features.of(self.binary),
        ).start()  # fmt: skip
        gateway = tap.net4.network_address + SLIRP_GATEWAY
        tap.stack_mac = "52:55:" + ":".join(f"{b:02x}" for b in gateway.packed)

    def _stop_stack(self) -> None:
        if self.slirp is not None:
            self.slirp.stop()
            self.slirp = None

    def forward_refusal(self, forward: PortForward) -> str | None:
        if forward.family == "ipv6":
            return (
                "slirp4netns forwards IPv4 ports only (its API binds IPv4 host addresses), and its IPv6 prefix "
                "is a fixed fd00::/64 outside the lab's ranges, so the lab sends no IPv6 to it"
            )
        return None

    def _add_forward(self, forward: PortForward) -> list[int]:
        assert self.slirp is not None
        api, ids = self.slirp.api, []
        try:
            for host_port, container_port in forward.ports:
                ids.append(api.add_hostfwd(forward.proto, forward.host_addr or "0.0.0.0", host_port, container_port))
        except BaseException:
            self._remove_forward(ids)
            raise
        return ids

    def _remove_forward(self, handle: object) -> None:
        """Remove each port's forward, all of them even when one is refused (then raise the first)."""
        assert isinstance(handle, list)
        if self.slirp is None or not self.slirp.running():
            return
        errors = []
        for forward_id in handle:
            try:
                self.slirp.api.remove_hostfwd(forward_id)
            except LabError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def listed_forwards(self) -> list[PortForward]:
        """What `list_hostfwd` answers, one PortForward per entry (0.0.0.0: bound to every address)."""
        assert self.slirp is not None
        return [
            PortForward(
                e["proto"], int(e["host_port"]), int(e["guest_port"]), 1, None if e["host_addr"] == "0.0.0.0" else e["host_addr"]
            )
            for e in self.slirp.api.list_hostfwd()
        ]

    def forwarded_source(self, forward: PortForward, client: str) -> str:
        """The client's own address; a client on the host's loopback comes from libslirp's host
        address (.2), since the container cannot reach the host's 127.0.0.1."""
        return str(self.tap.net4.network_address + SLIRP_GATEWAY) if forward.loopback else client

    def dhcp_range(self) -> list[str]:
        """The addresses libslirp's DHCP server leases (its own range, not the --configure one)."""
        net = self.tap.net4.network_address
        return [str(net + self.DHCP_FIRST + i) for i in range(self.DHCP_LEASES)]

    def healthy(self) -> bool:
        return super().healthy() and self.slirp is not None and self.slirp.running()

    def ended(self, wait: float = 0.0) -> str | None:
        if self.slirp is None or self.slirp.process is None:
            return None
        try:
            code = self.slirp.process.popen.wait(wait)
        except subprocess.TimeoutExpired:
            return None
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        return f"{how}; its log: {self.slirp.log_tail()}"

    def own_pids(self) -> list[int]:
        process = self.slirp.process if self.slirp is not None else None
        return [process.pid] if process is not None and process.running() else []

    def command_lines(self) -> list[list[str]]:
        return [self.slirp.argv] if self.slirp is not None and self.slirp.argv else []
