"""The world behind a tap stack, as a check sees it: the lab's outside namespace and the host.

slirp4netns and pasta carry the container's traffic out through ordinary sockets of the
namespace their process runs in. In the lab that is a "host" namespace whose only way out is a
veth to an "outside" namespace (labkit.net.layouts.tap): what the container sends to an outside
address crosses the stack under test, leaves through the host's sockets and arrives at a lab
service here, and nothing reaches the root namespace or a real network.

    echo = outside.service("tcp-echo")            # listening on OUTSIDE4/OUTSIDE6, any port
    with outside.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.connect((HOST4, 41000))                   # a client of a forwarded port

Services are the lab's own (`labkit.services`, the same program that runs inside stacks); their
JSON events are the outside's evidence, and they end with the check (`reset`).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from labkit.errors import LabError, LabInputError
from labkit.lifecycle.process import LabProcess, run_in
from labkit.net.layouts import HOST4, HOST6, OUTSIDE4, OUTSIDE6, OUTSIDE_IFNAME, TapEnd
from labkit.net.netns import NetNS
from labkit.packet.wire import Wire
from labkit.stacks import Stack
from labkit.stacks.service import Service, service_argv

Where = Literal["outside", "host"]
WHERE = ("outside", "host")


class Outside:
    """The outside namespace (the lab's internet) and the host namespace (the stack's own) of one
    tap testbed. `log` collects the services' stderr, kept with the evidence."""

    host4, host6 = HOST4, HOST6
    outside4, outside6 = OUTSIDE4, OUTSIDE6

    def __init__(
        self, end: TapEnd, log: Path, faults: Mapping[str, Mapping[str, object]] | None = None, rules: str = ""
    ) -> None:
        """A world broken on purpose (TapStack.outside_faults and outside_rules, for mutants):
        `faults` are options forced on services of a kind, `rules` an nftables ruleset loaded in
        the outside namespace now."""
        self.end = end
        self.log = log
        self.faults = dict(faults or {})
        self._services: list[Service] = []
        self._watches: list[Wire] = []
        if rules:
            self._load_rules(rules)

    def _load_rules(self, rules: str) -> None:
        path = self.log.with_name("outside.nft")
        path.write_text(rules)
        done = self.run(["nft", "-f", str(path)], timeout=10)
        if done.returncode != 0:
            raise LabError(f"nft refused the outside's rules ({path}): {done.stderr.strip()[-300:]}")

    def netns(self, where: Where = "outside") -> NetNS:
        if where not in WHERE:
            raise LabInputError(f"where={where!r}: allowed: {', '.join(WHERE)}")
        return self.end.outside_netns if where == "outside" else self.end.host_netns

    def address(self, family: str, where: Where = "outside") -> str:
        """The outside's (or the host's) address of `family` ("ipv4" or "ipv6")."""
        if family not in ("ipv4", "ipv6"):
            raise LabInputError(f"family={family!r}: allowed: ipv4, ipv6")
        if where not in WHERE:
            raise LabInputError(f"where={where!r}: allowed: {', '.join(WHERE)}")
        if where == "host":
            return self.host4 if family == "ipv4" else self.host6
        return self.outside4 if family == "ipv4" else self.outside6

    def service(self, kind: str, port: int = 0, *, family: str = "any", where: Where = "outside", **options: Any) -> Service:
        """Start a lab service (labkit.services) there and wait until it is ready; it ends with the check."""
        argv = service_argv(kind, port, family, {**options, **self.faults.get(kind, {})})
        with open(self.log, "ab") as log:
            process = LabProcess(
                argv, netns=self.netns(where), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=Stack.child_env()
            )
        svc = Service(kind, process)
        self._services.append(svc)
        return svc

    def socket(self, family: int, type: int, proto: int = 0, *, where: Where = "outside") -> socket.socket:
        """A socket of the outside (or host) namespace, for a client the check drives itself."""
        return self.netns(where).socket(family, type, proto)

    def run(self, argv: Sequence[str], *, where: Where = "outside", timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_in(self.netns(where), argv, timeout=timeout, env=Stack.child_env())

    def watch(self) -> Wire:
        """A Wire on the outside's end of the uplink: every frame the stack's host sockets put out.
        It answers for no address (the outside's kernel does), so it only records."""
        with self.netns("outside").iproute() as ipr:
            mac = ipr.get_links(ifname=OUTSIDE_IFNAME)[0].get_attr("IFLA_ADDRESS")
        wire = Wire(self.netns("outside"), OUTSIDE_IFNAME, mac=mac)
        self._watches.append(wire)
        return wire

    @property
    def watches(self) -> list[Wire]:
        """The uplink recordings of this check (kept as evidence beside the tap's pcap)."""
        return list(self._watches)

    def reset(self) -> None:
        """End the services and watches a check started (a reused testbed starts the next clean)."""
        services, self._services = self._services, []
        watches, self._watches = self._watches, []
        errors: list[Exception] = []
        closers = [s.close for s in services] + [w.close for w in watches]
        for close in closers:
            try:
                close()
            except Exception as exc:  # close the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]

    close = reset
