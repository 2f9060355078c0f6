"""Start slirp4netns for a namespace the way a container engine does, and end it.

The contract (podman's, see the seeds): the options are checked, the binary's features are read
from its `--help`, an option the binary lacks is refused before anything starts, the process
gets a ready fd it writes "1" to once the tap is configured and an exit fd whose closing ends
it. The process runs in a lab "host" namespace, never the root namespace: its outbound sockets,
forwarded ports and DNS upstream are that namespace's. libslirp forwards the DNS queries sent to
its .3 to the resolvers of /etc/resolv.conf, so the launcher binds the lab's own over it in a
private mount namespace, or turns the forwarder off. The launcher waits for the ready fd and for the process's exit at the same time (a pidfd),
so a binary that dies at once is reported with its log instead of a hang; every wait is bounded.
"""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

from labkit.errors import LabError, LabInputError
from labkit.lifecycle.process import LabProcess, log_tail
from labkit.net.netns import NetNS, lab_host
from labkit.stacks.slirp4netns.api import SlirpApi
from labkit.stacks.slirp4netns.features import FLAGS, Features
from labkit.stacks.slirp4netns.options import DEFAULT_MTU, SlirpOptions


def command_line(
    options: SlirpOptions,
    features: Features,
    *,
    target: str | int,
    ready_fd: int,
    exit_fd: int,
    tap: str = "tap0",
    api_socket: Path | None = None,
    sandbox: bool = False,
    dns: bool = False,
) -> list[str]:
    """The argv for `options`; `target` is a netns path or the pid of a process in the namespace.
    The lab's own rules are added: a lab CIDR always, and DNS forwarding only with `dns` (the
    launcher sets it when slirp4netns will see the lab's resolv.conf)."""

    def need(feature: str, why: str) -> None:
        if not features.has(feature):
            raise LabInputError(f"{features.binary} has no {FLAGS[feature]} (its --help lacks it), needed by {why}")

    for base in ("configure", "ready_fd", "exit_fd"):
        need(base, "the launcher itself")
    argv = [features.binary, "--configure", f"--exit-fd={exit_fd}", f"--ready-fd={ready_fd}"]
    if not options.allow_host_loopback:
        need("disable_host_loopback", "allow_host_loopback=false (the default; pass allow_host_loopback=true to allow it)")
        argv.append("--disable-host-loopback")
    if options.mtu != DEFAULT_MTU or features.has("mtu"):
        need("mtu", f"mtu={options.mtu}")
        argv.append(f"--mtu={options.mtu}")
    need("cidr", f"cidr={options.cidr} (the lab never uses slirp4netns's own 10.0.2.0/24)")
    argv.append(f"--cidr={options.cidr}")
    if not dns and features.has("disable_dns"):
        # .3 would forward DNS to resolvers the lab did not choose: off the machine, maybe.
        argv.append("--disable-dns")
    if options.enable_ipv6:
        need("ipv6", "enable_ipv6=true")
        argv.append("--enable-ipv6")
    if options.outbound_addr is not None:
        need("outbound_addr", f"outbound_addr={options.outbound_addr}")
        argv.append(f"--outbound-addr={options.outbound_addr}")
    if options.outbound_addr6 is not None:
        need("outbound_addr", f"outbound_addr6={options.outbound_addr6}")
        need("ipv6", f"outbound_addr6={options.outbound_addr6}")
        argv.append(f"--outbound-addr6={options.outbound_addr6}")
    if sandbox:
        need("enable_sandbox", "sandbox=True")
        argv.append("--enable-sandbox")
    if api_socket is not None and options.host_forward:
        need("api_socket", "port_handler=slirp4netns")
        argv.append(f"--api-socket={api_socket}")
    if isinstance(target, int):
        argv.append(str(target))
    else:
        need("netns_type", f"a namespace given by path ({target})")
        argv += ["--netns-type=path", str(target)]
    return [*argv, tap]


class Slirp4netns:
    """One slirp4netns serving one namespace; a context manager that owns the process, its fds,
    its log and its API socket.

        with Slirp4netns(ns, SlirpOptions.parse(["mtu=1500"]), host=host_ns, workdir=d) as slirp:
            slirp.api.add_hostfwd("tcp", "127.0.0.1", 8080, 80)
    """

    def __init__(
        self,
        target: NetNS | int,
        options: SlirpOptions | None = None,
        *,
        host: NetNS,
        workdir: Path,
        binary: str = "slirp4netns",
        tap: str = "tap0",
        sandbox: bool = False,
        ready_timeout: float = 5.0,
        features: Features | None = None,
        resolv_conf: Path | None = None,
    ) -> None:
        """`host`: the lab namespace slirp4netns runs in. `resolv_conf`: what it reads as
        /etc/resolv.conf, which turns its DNS forwarder on (None: --disable-dns)."""
        self.target, self.options, self.host, self.resolv_conf = target, options or SlirpOptions(), host, resolv_conf
        lab_host(host)
        self.workdir, self.binary, self.tap, self.sandbox = workdir, binary, tap, sandbox
        self.ready_timeout = ready_timeout
        self.features = features
        self.log_path = workdir / "slirp4netns.log"
        self.api_socket = workdir / "slirp4netns.sock" if self.options.host_forward else None
        self.process: LabProcess | None = None
        self.argv: list[str] = []  # the command line it was started with (kept with the evidence)
        self._exit_w: int | None = None

    @property
    def api(self) -> SlirpApi:
        if self.api_socket is None:
            raise LabInputError("no API socket: port_handler=rootlesskit leaves port forwarding to rootlesskit")
        return SlirpApi(self.api_socket)

    def start(self) -> Slirp4netns:
        features = self.features or Features.probe(self.binary)
        target = str(self.target.path) if isinstance(self.target, NetNS) else self.target
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        try:
            argv = command_line(
                self.options, features, target=target, ready_fd=ready_w, exit_fd=exit_r, tap=self.tap,
                api_socket=self.api_socket, sandbox=self.sandbox, dns=self.resolv_conf is not None,
            )  # fmt: skip
            self.argv = argv
            binds = [(self.resolv_conf, "/etc/resolv.conf")] if self.resolv_conf is not None else []
            with open(self.log_path, "ab") as log:
                self.process = LabProcess(
                    argv, netns=self.host, stdout=log, stderr=subprocess.STDOUT, pass_fds=(ready_w, exit_r),
                    private_mounts=self.sandbox, binds=binds,
                )  # fmt: skip
        except BaseException:
            for fd in (ready_r, ready_w, exit_r, exit_w):
                os.close(fd)
            raise
        os.close(ready_w)
        os.close(exit_r)
        self._exit_w = exit_w
        try:
            self._await_ready(ready_r)
        except BaseException:
            # Not ready: it need not be watching its exit fd yet, so waiting for it to end on
            # that is waiting for nothing (5 s for a binary that hangs): TERM, then KILL.
            self.stop(timeout=0)
            raise
        finally:
            os.close(ready_r)
        return self

    def _await_ready(self, ready_r: int) -> None:
        assert self.process is not None
        pidfd = os.pidfd_open(self.process.pid)
        try:
            ready, _, _ = select.select([ready_r, pidfd], [], [], self.ready_timeout)
            if ready_r in ready:
                if os.read(ready_r, 1) == b"1":
                    return
                if pidfd not in select.select([pidfd], [], [], 1.0)[0]:
                    raise LabError(f"slirp4netns closed its ready fd without writing '1'; its log: {self.log_tail()}")
            elif not ready:
                raise LabError(f"slirp4netns was not ready within {self.ready_timeout}s; its log: {self.log_tail()}")
        finally:
            os.close(pidfd)
        code = self.process.popen.wait(5)
        raise LabError(f"slirp4netns exited ({code}) before it was ready; its log: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        return log_tail(self.log_path, lines)

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def stop(self, timeout: float = 5.0) -> int | None:
        """Close the exit fd (slirp4netns ends on it) and wait, bounded; kill if it does not."""
        if self._exit_w is not None:
            os.close(self._exit_w)
            self._exit_w = None
        code = None
        if self.process is not None:
            try:
                self.process.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass  # close() below: TERM, then KILL; the code then says it was killed
            self.process.close()
            code = self.process.popen.returncode
            self.process = None
        if self.api_socket is not None:
            self.api_socket.unlink(missing_ok=True)
        return code

    def __enter__(self) -> Slirp4netns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
