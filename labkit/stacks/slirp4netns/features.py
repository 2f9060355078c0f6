"""What a slirp4netns binary can do, read from its `--help` as container engines read it (per
binary: a build given to the driver is read on its own)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from labkit.errors import LabError
from labkit.stacks import programs

FLAGS = {
    "configure": "--configure",
    "ready_fd": "--ready-fd",
    "exit_fd": "--exit-fd",
    "api_socket": "--api-socket",
    "netns_type": "--netns-type",
    "mtu": "--mtu",
    "ipv6": "--enable-ipv6",
    "cidr": "--cidr",
    "disable_host_loopback": "--disable-host-loopback",
    "enable_sandbox": "--enable-sandbox",
    "enable_seccomp": "--enable-seccomp",
    "outbound_addr": "--outbound-addr",
    "disable_dns": "--disable-dns",
    "macaddress": "--macaddress",
}


@dataclass(frozen=True)
class Features:
    binary: str
    flags: frozenset[str]  # keys of FLAGS the help text mentions
    max_mtu: int = 65521

    def has(self, feature: str) -> bool:
        return feature in self.flags

    @classmethod
    def parse(cls, binary: str, help_text: str) -> Features:
        found = frozenset(name for name, flag in FLAGS.items() if re.search(re.escape(flag) + r"\b", help_text))
        limit = re.search(r"max=(\d+)", help_text)
        return cls(binary, found, int(limit.group(1)) if limit else 65521)

    @classmethod
    def of(cls, binary: str) -> Features:
        """The features of `binary` (a path, or a name on PATH), read once per version of the file
        (labkit.stacks.programs.cached): the driver asks before every start."""
        path = programs.locate(binary)
        if path is None:
            return cls.probe(binary)  # says why it cannot run
        return programs.cached("slirp4netns-features", path, cls.probe)

    @classmethod
    def probe(cls, binary: str = "slirp4netns", timeout: float = 10.0) -> Features:
        try:
            done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise LabError(f"cannot run {binary!r}: not found (install: apt-get install -y slirp4netns)") from None
        except subprocess.TimeoutExpired:
            raise LabError(f"{binary} --help did not finish within {timeout}s") from None
        if done.returncode != 0:
            raise LabError(f"{binary} --help exited {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}")
        return cls.parse(binary, done.stdout + done.stderr)
