"""pasta (passt's namespace mode), started for a lab namespace and ended, every wait bounded.

pasta is told every address it hands the namespace (otherwise it copies the host's) and every
port it forwards (none is guessed: `-t none -u none -T none -U none` unless given). It goes to
the background once the tap is configured, so the launcher waits for the foreground process to
exit (that is the ready signal), then holds a pidfd on the daemon from its pid file. As root it
needs `--runas 0`.
"""

from __future__ import annotations

import ipaddress
import os
import select
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import LabError, LabInputError
from labkit.lifecycle.pids import exited
from labkit.lifecycle.process import lab_env, log_tail
from labkit.net.addressing import lab_address, lab_interface
from labkit.net.netns import NetNS

MIN_MTU, MAX_MTU = 68, 65520
LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Forward:
    """127.0.0.1:host_port on the host to ns_port in the namespace (pasta's `-t`/`-u` spec)."""

    proto: str  # "tcp" | "udp"
    host_port: int
    ns_port: int
    host_addr: str = "127.0.0.1"

    def spec(self) -> list[str]:
        return ["-t" if self.proto == "tcp" else "-u", f"{self.host_addr}/{self.host_port}:{self.ns_port}"]


@dataclass(frozen=True)
class PastaOptions:
    address4: str  # the namespace's, with its prefix: "198.18.0.1/24"
    gateway4: str
    address6: str | None = None
    gateway6: str | None = None
    mtu: int = 65520
    ifname: str = "tap0"
    forwards: tuple[Forward, ...] = field(default_factory=tuple)

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
            if fwd.proto not in ("tcp", "udp") or not (0 < fwd.host_port < 65536 and 0 < fwd.ns_port < 65536):
                raise LabInputError(f"pasta forward {fwd}: allowed: proto tcp or udp, ports 1-65535")
            if fwd.host_addr not in LOOPBACK:
                raise LabInputError(
                    f"pasta forward from {fwd.host_addr}: allowed: {', '.join(LOOPBACK)} (the lab opens nothing to the network)"
                )


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
    tcp = [f.spec() for f in options.forwards if f.proto == "tcp"] or [["-t", "none"]]
    udp = [f.spec() for f in options.forwards if f.proto == "udp"] or [["-u", "none"]]
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
        workdir: Path,
        binary: str = "pasta",
        ready_timeout: float = 10.0,
        pid: int | None = None,
    ) -> None:
        """`pid`: join that process's user and network namespaces (rootless) instead of `netns`'s path."""
        self.netns, self.options, self.workdir, self.binary, self.target_pid = netns, options, workdir, binary, pid
        self.ready_timeout = ready_timeout
        self.pidfile = workdir / "pasta.pid"
        self.log_path = workdir / "pasta.log"
        self.pid: int | None = None
        self._pidfd: int | None = None

    def start(self) -> Pasta:
        target = self.target_pid if self.target_pid is not None else self.netns.path
        argv = command_line(self.options, target, self.pidfile, self.binary)
        with open(self.log_path, "ab") as log:
            try:
                done = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=lab_env(), timeout=self.ready_timeout
                )
            except FileNotFoundError:
                raise LabError(f"cannot run {self.binary!r}: not found (install: apt-get install -y passt)") from None
            except subprocess.TimeoutExpired:
                self._kill_from_pidfile()
                raise LabError(
                    f"pasta did not configure the namespace within {self.ready_timeout}s; its log: {self.log_tail()}"
                ) from None
        if done.returncode != 0:
            self._kill_from_pidfile()
            raise LabError(f"pasta exited ({done.returncode}) before it was ready; its log: {self.log_tail()}")
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
