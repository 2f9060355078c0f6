"""The rtnetlink suite: the same requests to the kernel and to the stack, answers side by side.

The stack under test runs on a topology made for route lookups (`rtnl_layout`), and a kernel
namespace with the very same topology is the reference: a probe (labkit.nlprobe) asks both,
from inside, and the checks compare the normalised answers (labkit.nldiff). Each check also
adds rows to the support table (message type x stack: supported, differs, unsupported, and the
attributes each returned), written to the evidence directory as rtnetlink-support.json.
"""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from labkit.net import layouts
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link, Topology
from labkit.rtnetlink import differ, probe
from labkit.rtnetlink.support import PARTS, SupportTable, merge_support
from labkit.stacks import resolve
from labkit.testbed import Testbed

SPECIFIC4, SPECIFIC6 = "198.19.64.0/24", "2001:db8:64::/64"  # via the peer: more specific than any default
IN_SPECIFIC4, IN_SPECIFIC6 = "198.19.64.9", "2001:db8:64::9"
UNROUTED4 = "198.19.77.7"  # IPv4 has no default route here: nothing matches it
DEFAULTED6 = "2001:db8:77::7"  # IPv6 has one: only the default matches


def dump(type_: str, family: int = 0) -> dict:
    """A dump request (`ip link|addr|route show`) of one message type, filtered to `family`."""
    return {"type": type_, "flags": ["REQUEST", "DUMP"], "fields": {"family": family}}


LINKS = dump("RTM_GETLINK")


def rtnl_layout(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    """The standard pair; routes: on-link, a /24 via the peer, and a default route for IPv6 only.
    The sandbox end skips duplicate address detection and is up before the stack starts, so
    the kernel's link-local address is not tentative in one namespace and settled in the other."""
    topo, stack_end, peer_end = plan.build(defaults=(6,))
    layouts.kernel_host(stack_end)
    stack_end.ns.route(SPECIFIC4, via=plan.peer4).route(SPECIFIC6, via=plan.peer6)
    return topo, stack_end, peer_end


def family_filter_differences(pair: Pair, name: str, family: int) -> list[differ.Difference]:
    """Records of another family in a dump asked for `family` (the kernel's must have none)."""
    kernel, stack = pair.records(name)
    assert kernel and all(r.values["family"] == family for r in kernel), f"the kernel's dump for family {family}: {kernel}"
    return [differ.Difference(r.label(), "family", "filtered out", "returned") for r in stack if r.values["family"] != family]


def _is_about(key_part: object, about: str) -> bool:
    """`about` names this part of a record's identity: equal, the same address with a prefix
    length ("198.18.0.50" in "198.18.0.50/24"), or a prefix ending in "." or ":" ("198.19.99.")."""
    text = str(key_part)
    return text == about or text.startswith(about + "/") or (about[-1:] in ".:" and text.startswith(about))


@dataclass
class Pair:
    """The kernel's and the stack's answers to one set of requests, with their normalisers."""

    kernel: dict[str, probe.Answer]
    stack: dict[str, probe.Answer]
    stack_id: str

    def __post_init__(self) -> None:
        self.kernel_norm = differ.Normaliser(self.kernel.get("_links"))
        self.stack_norm = differ.Normaliser(self.stack.get("_links"))

    def records(self, name: str) -> tuple[list[differ.Record], list[differ.Record]]:
        return self.kernel_norm.records(self.kernel[name]), self.stack_norm.records(self.stack[name])

    def differences(
        self, name: str, ignore: tuple[str, ...] = (), about: str | None = None, only: tuple[str, ...] | None = None
    ) -> list[differ.Difference]:
        """The request's outcome first (errno, ACK, silence), then its records: all of them, or
        only those whose identity mentions `about`, and of their values all, or `only` those
        named (`only=()`: presence alone). A check about one address or one flag leaves the
        attributes of a dump to the dump checks, so each difference fails one check."""
        outcome = differ.diff_outcome(self.kernel[name], self.stack[name])
        kernel, stack = self.records(name)
        if about is not None:
            kernel, stack = ([r for r in records if any(_is_about(k, about) for k in r.key)] for records in (kernel, stack))
        records = differ.diff_records(kernel, stack, ignore=ignore, only=only)
        return outcome + [replace(d, where=f"{name}: {d.where}") for d in records]  # which step saw it

    def report(self, name: str, differences: list[differ.Difference]) -> str:
        return f"{self.stack_id} answers {name} unlike the kernel:\n{differ.explain(differences)}"


class Differential:
    def __init__(self, kernel: Testbed, stack, support: SupportTable, check: str) -> None:
        self.kernel, self.stack, self.support, self.check = kernel, stack, support, check

    def ask(self, requests: dict[str, dict], *, unprivileged: bool = False, quiet: float = 0.3) -> Pair:
        """Ask both, each request in order, after a link dump both normalisers need."""
        requests = {"_links": LINKS, **requests}
        kernel = probe.ask(self.kernel.stack, requests, unprivileged=unprivileged, quiet=quiet)
        stack = probe.ask(self.stack, requests, unprivileged=unprivileged, quiet=quiet)
        crashed = [f"{n}: {a.crashed}" for side in (kernel, stack) for n, a in side.items() if a.crashed]
        assert not crashed, f"the probe itself failed: {crashed}"
        # A client library breaking on the stack's answer is a finding in any check: with the bytes.
        broken = [f"{n}: {m.type}: {m.decode_error}; bytes {m.raw}" for n, a in stack.items() for m in a.messages if m.decode_error]
        assert not broken, f"pyroute2 cannot decode {self.stack.id}'s answers:\n" + "\n".join(broken[:5])
        return Pair(kernel, stack, self.stack.id)

    def verdict(self, message_type: str, pair: Pair, name: str, differences: list[differ.Difference], what: str) -> None:
        """Note the support-table row, then fail on any difference, saying what was asked."""
        self.note(message_type, pair, name, differences)
        assert not differences, pair.report(what, differences)

    def note(self, message_type: str, pair: Pair, name: str, differences: list[differ.Difference]) -> None:
        """A support-table row for this check: how the stack did with `message_type`."""
        k, s = pair.kernel[name], pair.stack[name]
        if s.errno in (errno.EOPNOTSUPP, errno.ENOSYS) and k.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
            status = "unsupported"
        else:
            status = "differs" if differences else "supported"
        self.support.add(
            {
                "check": self.check,
                "message": message_type,
                "stack": self.stack.id,
                "status": status,
                "differences": [str(d) for d in differences[:10]],
                "attrs": differ.attribute_names(s),
                "kernel_attrs": differ.attribute_names(k),
            }
        )


def _evidence_dir(config: pytest.Config) -> Path:
    """--lab-evidence, else the run's base temp directory (the controller's, also on a worker)."""
    settings = config.stash.get(_settings_key(), None)
    if settings is not None and settings.evidence:
        return settings.evidence
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return (base.parent if hasattr(config, "workerinput") else base) / "evidence"


def _settings_key():
    from labkit.pytest_plugin.hooks import SETTINGS

    return SETTINGS


_RUN = pytest.StashKey[str]()


def _run_id(config: pytest.Config) -> str:
    """The same on every xdist worker of a run (xdist's testrunuid), new for each run."""
    if hasattr(config, "workerinput"):
        return config.workerinput["testrunuid"]  # type: ignore[attr-defined]
    if _RUN not in config.stash:
        config.stash[_RUN] = uuid.uuid4().hex
    return config.stash[_RUN]


@pytest.fixture(scope="session")
def support_table(request: pytest.FixtureRequest) -> SupportTable:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return SupportTable(_evidence_dir(request.config), _run_id(request.config), worker)


@pytest.fixture(scope="session")
def _shared_kernel(lab_settings) -> Iterator[Testbed]:
    with Testbed(resolve("linux")[0], lab_settings.plan, rtnl_layout).up() as bed:
        yield bed


@pytest.fixture
def kernel_reference(request: pytest.FixtureRequest, lab_settings) -> Iterator[Testbed]:
    """The kernel with the suite's topology: shared by the checks that only read, new for a
    check marked `fresh` (it changes what it asks about)."""
    if request.node.get_closest_marker("fresh") is None:
        yield request.getfixturevalue("_shared_kernel")
        return
    with Testbed(resolve("linux")[0], lab_settings.plan, rtnl_layout).up() as bed:
        yield bed


@pytest.fixture
def rtnl(request: pytest.FixtureRequest, stack, kernel_reference: Testbed, support_table: SupportTable) -> Differential:
    check = request.node.nodeid.split("::")[-1].split("[")[0]
    params = (
        [v for k, v in getattr(request.node, "callspec", None).params.items() if k != "stack_spec"]
        if hasattr(request.node, "callspec")
        else []
    )
    return Differential(kernel_reference, stack, support_table, check + (f"[{'-'.join(map(str, params))}]" if params else ""))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Every process that ran checks merges all parts written so far, under a lock: the last one
    to finish sees every part. (Under xdist the controller never loads this conftest.)"""
    directory = _evidence_dir(session.config)
    if not (directory / PARTS).is_dir():
        return
    with (directory / "rtnetlink-support.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merge_support(directory, _run_id(session.config))
