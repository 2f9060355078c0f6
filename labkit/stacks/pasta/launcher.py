"""pasta (passt's namespace mode), started for a lab namespace and ended, every wait bounded.

pasta runs in a lab "host" namespace (never the root namespace): its sockets, forwarded ports
and DNS upstream are that namespace's. It is told every address it hands the namespace
(otherwise it copies the host's) and every port it forwards (none is guessed: `-t none -u none
-T none -U none` unless given); it reads the upstream resolver for `--dns-forward` from
/etc/resolv.conf, so the launcher binds the lab's own over it in a private mount namespace. It
goes to the background once the tap is configured, so the launcher waits for the foreground
process to exit (that is the ready signal), then holds a pidfd on the daemon from its pid file.
As root it needs `--runas 0`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import LabError, LabInputError
from labkit.lifecycle.pids import exited
from labkit.lifecycle.process import born_in, check_startable, exec_argv, lab_env, log_tail
from labkit.net.addressing import lab_address, lab_interface
from labkit.net.netns import NetNS, lab_host
from labkit.stacks.forwarding import PortForward

MIN_MTU, MAX_MTU = 68, 65520


def forward_spec(fwd: PortForward) -> list[str]:
    """pasta's `-t`/`-u` option for one forward: `[ADDR/]FIRST[-LAST][:FIRST[-LAST]]`."""

    def span(first: int) -> str:
        return f"{first}-{first + fwd.count - 1}" if fwd.count > 1 else str(first)

    ports = span(fwd.host_port)
    if fwd.container_port != fwd.host_port:
        ports += ":" + span(fwd.container_port)
    return ["-t" if fwd.proto == "tcp" else "-u", f"{fwd.host_addr}/{ports}" if fwd.host_addr else ports]


@dataclass(frozen=True)
class PastaOptions:
    address4: str  # the namespace's, with its prefix: "198.18.0.1/24"
    gateway4: str
    address6: str | None = None
    gateway6: str | None = None
    mtu: int = 65520
    ifname: str = "tap0"
    forwards: tuple[PortForward, ...] = field(default_factory=tuple)
    dns_forward: tuple[str, ...] = ()  # addresses of the namespace's side whose DNS queries go to the host's resolver

    def __post_init__(self) -> None:
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise LabInputError(f"pasta mtu={self.mtu}: allowed: an integer from {MIN_MTU} to {MAX_MTU}")
        if (self.address6 is None) != (self.gateway6 is None):
            raise LabInputError(f"pasta address6={self.address6} gateway6={self.gateway6}: allowed: both or neither")
        for key, value, version in (("address4", self.address4, 4), ("address6", self.address6, 6)):
            if value is not None and lab_interface(value).version != version:
                raise LabInputError(f"pasta {key}={value}: allowed: an IPv{version} lab address with its prefix length")
        for key, value, version in (("gateway4", self.gateway4, 4), ("gateway6", self.gateway6, 6)):
            if value is not None and lab_address(value).version != version:
                raise LabInputError(f"pasta {key}={value}: allowed: an IPv{version} lab address")
        for fwd in self.forwards:
            if not isinstance(fwd, PortForward):
                raise LabInputError(f"pasta forward {fwd!r}: allowed: a labkit.stacks.forwarding.PortForward")
        versions = [lab_address(a).version for a in self.dns_forward]
        if len(set(versions)) < len(versions):
            raise LabInputError(f"pasta dns_forward={self.dns_forward}: allowed: at most one IPv4 and one IPv6 address")


def command_line(options: PastaOptions, target: Path | int, pidfile: Path, binary: str = "pasta") -> list[str]:
    """`target`: a netns path (rootful), or the pid of a process whose user and network
    namespaces pasta joins (rootless: its last, positional argument)."""
    v4 = ipaddress.ip_interface(options.address4)
    argv = [binary, "--config-net", "--runas", "0", "-q", "-P", str(pidfile)]
    if not isinstance(target, int):
        argv += ["--netns", str(target)]
    argv += [
        "-I",
        options.ifname,
        "-m",
        str(options.mtu),
        "-a",
        str(v4.ip),
        "-n",
        str(v4.network.prefixlen),
        "-g",
        options.gateway4,
    ]
    if options.address6 is not None and options.gateway6 is not None:
        argv += ["-a", str(ipaddress.ip_interface(options.address6).ip), "-g", options.gateway6]
    else:
        argv.append("--ipv4-only")
    for address in options.dns_forward:  # forwarded to the first resolver of pasta's resolv.conf
        argv += ["--dns-forward", address]
    if options.dns_forward:
        argv.append("--dhcp-dns")
    tcp = [forward_spec(f) for f in options.forwards if f.proto == "tcp"] or [["-t", "none"]]
    udp = [forward_spec(f) for f in options.forwards if f.proto == "udp"] or [["-u", "none"]]
    for spec in (*tcp, *udp, ["-T", "none"], ["-U", "none"]):
        argv += spec
    return [*argv, str(target)] if isinstance(target, int) else argv


class Pasta:
    """One pasta daemon serving one namespace; a context manager that owns it."""

    def __init__(
        self,
        netns: NetNS,
        options: PastaOptions,
        *,
        host: NetNS,
        workdir: Path,
        binary: str = "pasta",
        ready_timeout: float = 10.0,
        pid: int | None = None,
        resolv_conf: Path | None = None,
    ) -> None:
        """`host`: the lab namespace pasta runs in (its sockets and forwarded ports are there).
        `pid`: join that process's user and network namespaces (rootless) instead of `netns`'s
        path. `resolv_conf`: what pasta reads as /etc/resolv.conf (its DNS upstream)."""
        self.netns, self.options, self.workdir, self.binary, self.target_pid = netns, options, workdir, binary, pid
        self.host, self.resolv_conf = host, resolv_conf
        lab_host(host)
        self.ready_timeout = ready_timeout
        self.pidfile = workdir / "pasta.pid"
        self.log_path = workdir / "pasta.log"
        self.pid: int | None = None
        self.argv: list[str] = []  # the command line it was started with (kept with the evidence)
        self._pidfd: int | None = None

    def start(self) -> Pasta:
        target = self.target_pid if self.target_pid is not None else self.netns.path
        argv = command_line(self.options, target, self.pidfile, self.binary)
        self.argv = argv
        try:
            check_startable(argv, self.host, lab_env())
        except LabError as exc:
            raise LabError(f"{exc} (install: apt-get install -y passt)") from None
        binds = [(self.resolv_conf, "/etc/resolv.conf")] if self.resolv_conf is not None else []
        with open(self.log_path, "ab") as log:
            with born_in(self.host):
                child = subprocess.Popen(
                    exec_argv(argv, binds=binds), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=lab_env()
                )
            try:
                returncode = child.wait(self.ready_timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
                self._kill_from_pidfile()  # a daemon it already forked must not outlive it
                raise LabError(
                    f"pasta did not configure the namespace within {self.ready_timeout}s; its log: {self.log_tail()}"
                ) from None
        if returncode != 0:
            self._kill_from_pidfile()
            raise LabError(f"pasta exited ({returncode}) before it was ready; its log: {self.log_tail()}")
        self.pid = self._read_pid()
        self._pidfd = self._open_daemon(self.pid)
        return self

    def _open_daemon(self, pid: int) -> int:
        """A pidfd on the daemon, once it is sure to be ours: the pid from the file could have
        been reused if pasta died in between, so the process must name our pid file."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise LabError(f"pasta (pid {pid}) is gone right after it was ready; its log: {self.log_tail()}") from None
        try:
            ours = str(self.pidfile).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            ours = False
        if not ours:
            os.close(pidfd)
            raise LabError(f"pid {pid} from {self.pidfile} is not our pasta any more; its log: {self.log_tail()}")
        return pidfd

    def _read_pid(self) -> int:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise LabError(f"pasta is ready but wrote no pid to {self.pidfile}; its log: {self.log_tail()}") from None

    def _kill_from_pidfile(self) -> None:
        try:
            pidfd = self._open_daemon(self._read_pid())
        except LabError:
            return
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)

    def log_tail(self, lines: int = 5) -> str:
        return log_tail(self.log_path, lines)

    def running(self) -> bool:
        return self._pidfd is not None and not exited(self._pidfd)

    def wait_ended(self, timeout: float) -> bool:
        """Whether the daemon has ended, waiting up to `timeout` on its pidfd."""
        if self._pidfd is None:
            return False
        return bool(select.select([self._pidfd], [], [], timeout)[0])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, a bounded wait on the pidfd, then SIGKILL."""
        if self._pidfd is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                break
            if select.select([self._pidfd], [], [], timeout)[0]:
                break
        os.close(self._pidfd)
        self._pidfd = None
        self.pidfile.unlink(missing_ok=True)

    def __enter__(self) -> Pasta:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
