"""What this machine has for the lab, what it lacks, and the command that installs it.

Tools come in groups. The `lab` group is what labkit and its conformance runs use; it is always
examined and installed. Others serve one purpose only, e.g. `tests`: the browser labkit's own
tests open the report page in, which a machine that only runs conformance never needs. They are
listed apart, and installed only when asked for (`labkit doctor --install --for tests`).
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from labkit.errors import LabError, LabInputError
from labkit.stacks import known_drivers

APT_INSTALL = "apt-get install -y"
LAB = "lab"
GROUPS = {
    LAB: "the lab and its conformance runs",
    "tests": "labkit's own tests (tox -e tests)",
}


@dataclass(frozen=True)
class Tool:
    name: str
    apt: str
    needed_by: str
    binary: str | None = None
    version_argv: tuple[str, ...] = ()
    library: str | None = None
    group: str = LAB

    def probe(self) -> tuple[bool, str]:
        """(present, version or what is missing)."""
        if self.library is not None:
            found = ctypes.util.find_library(self.library)
            return (found is not None, found or f"lib{self.library} not found")
        assert self.binary is not None
        path = shutil.which(self.binary) or next(
            (p for p in (f"/usr/sbin/{self.binary}", f"/usr/bin/{self.binary}") if os.access(p, os.X_OK)), None
        )
        if path is None:
            return False, f"{self.binary} not found"
        if not self.version_argv:
            return True, path
        try:
            out = subprocess.run([path, *self.version_argv], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return True, f"{path} (version unknown: {exc})"
        text = (out.stdout or out.stderr).strip().splitlines()
        return True, text[0] if text else path


TOOLS: tuple[Tool, ...] = (
    Tool("libpcap", "libpcap0.8", "capture filters (BPF compiled by libpcap)", library="pcap"),
    Tool("util-linux", "util-linux", "starting the lab's processes (setpriv, unshare, nsenter)", "setpriv", ("--version",)),
    Tool("iproute2", "iproute2", "debugging lab namespaces; the ip-command benchmark", "ip", ("-V",)),
    Tool("ethtool", "ethtool", "inspecting offloads by hand", "ethtool", ("--version",)),
    Tool("tcpdump", "tcpdump", "reading the lab's pcaps", "tcpdump", ("--version",)),
    Tool("nftables", "nftables", "the checksum mutants (examples/mutants.py, tests/test_mutants.py)", "nft", ("--version",)),
    Tool("runsc", "runsc", "the gvisor stack", "runsc", ("--version",)),
    Tool("slirp4netns", "slirp4netns", "the slirp4netns stack", "slirp4netns", ("--version",)),
    Tool("pasta", "passt", "the pasta stack", "pasta", ("--version",)),
    # The perf suite's measuring tools (suites/perf, labkit/perf/tools.py), run inside the stacks and on their far end.
    Tool("iperf3", "iperf3", "the perf suite: TCP and UDP throughput (tox -e perf)", "iperf3", ("--version",)),
    Tool("sockperf", "sockperf", "the perf suite: TCP request/response latency (tox -e perf)", "sockperf", ("--version",)),
    Tool("wrk", "wrk", "the perf suite: connect+request+close rate (tox -e perf)", "wrk", ("--version",)),
    Tool("busybox", "busybox-static", "the perf suite: the HTTP server wrk connects to (busybox httpd)", "busybox"),
    # The report page opened in a real browser (tests/test_report_browser.py, benchmarks/bench_report.py),
    # driven by Selenium through Debian's driver: Selenium's own driver download cannot work here.
    Tool("chromium", "chromium", "the browser tests of the report page", "chromium", ("--version",), group="tests"),
    Tool(
        "chromium-driver",
        "chromium-driver",
        "Selenium driving chromium in those tests",
        "chromedriver",
        ("--version",),
        group="tests",
    ),
)


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    needed_by: str
    install: str | None
    required: bool = False  # the lab cannot run without it (a missing stack is only a skip)
    group: str = LAB


def _package_version(name: str) -> tuple[bool, str]:
    try:
        return True, version(name)
    except PackageNotFoundError:
        return False, "not installed"


def examine() -> list[Finding]:
    found: list[Finding] = []
    for pkg in ("pyroute2", "scapy", "pytest", "pytest-xdist"):
        ok, detail = _package_version(pkg)
        found.append(Finding(f"python:{pkg}", ok, detail, "labkit", None if ok else f"pip install {pkg}", required=True))
    for tool in TOOLS:
        ok, detail = tool.probe()
        found.append(
            Finding(
                tool.name,
                ok,
                detail,
                tool.needed_by,
                None if ok else f"{APT_INSTALL} {tool.apt}",
                tool.library is not None,
                tool.group,
            )
        )
    for kind, driver in known_drivers().items():
        a = driver.availability()
        found.append(Finding(f"stack:{kind}", a.ok, a.version or a.reason or "available", "conformance runs", a.install))
    return found


def groups_of(wanted: Iterable[str] = ()) -> tuple[str, ...]:
    """The lab's group and the ones asked for, checked: a misspelt group must not pass as installed."""
    unknown = sorted(set(wanted) - set(GROUPS))
    if unknown:
        raise LabInputError(f"unknown tool group {', '.join(unknown)}; allowed: {', '.join(g for g in GROUPS if g != LAB)}")
    return (LAB, *sorted(set(wanted) - {LAB}))


def render(findings: list[Finding], groups: Iterable[str] = (LAB,)) -> str:
    """One line per finding; the lab's first, then each other group under a heading that says
    what it is for and whether this command looks after it (a tool of a group not asked for is
    "missing", not "MISSING": nothing the caller runs needs it)."""
    width = max(len(f.name) for f in findings)
    wanted = set(groups)
    lines = []
    for group, purpose in GROUPS.items():
        mine = [f for f in findings if f.group == group]
        if not mine:
            continue
        if group != LAB:
            lacking = group not in wanted and not all(f.ok for f in mine)
            how = f"; install with: labkit doctor --install --for {group}" if lacking else ""
            lines.append(f"\nfor {purpose}{how}:")
        for f in mine:
            mark = "ok     " if f.ok else "MISSING" if group in wanted else "missing"
            line = f"{mark}  {f.name:<{width}}  {f.detail}"
            if not f.ok:
                line += f"  [needed by {f.needed_by}; install: {f.install}]"
            lines.append(line)
    return "\n".join(lines)


def apt_packages(findings: list[Finding], groups: Iterable[str] = (LAB,)) -> list[str]:
    """The Debian packages missing for the tools of these groups (the lab's alone by default)."""
    prefix = APT_INSTALL + " "
    wanted = set(groups)
    return sorted(
        {
            f.install[len(prefix) :]
            for f in findings
            if not f.ok and f.group in wanted and f.install and f.install.startswith(prefix)
        }
    )


def install(packages: list[str]) -> None:
    """apt-get install the packages (root only), bounded in time."""
    if not packages:
        return
    if os.geteuid() != 0:
        raise LabError(f"installing {' '.join(packages)} needs root; run: sudo {APT_INSTALL} {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=900)
        if done.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed with exit code {done.returncode}")
