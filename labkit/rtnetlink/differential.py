"""The differential the rtnetlink suite is written in: the same requests to the kernel and to the
stack under test, their answers side by side, and one support-table row per check.

A kernel namespace with the stack's own topology is the reference: the probe (labkit.rtnetlink.probe)
asks both, from inside, and the checks compare the normalised answers (labkit.rtnetlink.differ)
on what each is about, so one difference fails one check.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from labkit.rtnetlink import differ, probe

if TYPE_CHECKING:
    from labkit.stacks import Stack
    from labkit.testbed import Testbed


def dump(type_: str, family: int = 0) -> dict[str, Any]:
    """A dump request (`ip link|addr|route show`) of one message type, filtered to `family`."""
    return {"type": type_, "flags": ["REQUEST", "DUMP"], "fields": {"family": family}}


LINKS = dump("RTM_GETLINK")
RTM_F_LOOKUP_TABLE = 0x1000  # iproute2 sets it on every `ip route get`


def address(type_: str, dev: str | int, cidr: str, flags: Sequence[str] = ("REQUEST", "ACK"), ifa_flags: int = 0) -> dict[str, Any]:
    """`ip addr add|del CIDR dev DEV` (DEV a name, resolved in each namespace, or an index), with
    IFA_LOCAL and IFA_ADDRESS as ip sends them."""
    addr, _, prefixlen = cidr.partition("/")
    return {
        "type": type_,
        "flags": list(flags),
        "fields": {
            "family": 10 if ":" in addr else 2,
            "prefixlen": int(prefixlen),
            "index": dev if isinstance(dev, int) else {"ifindex_of": dev},
            "flags": ifa_flags,
        },
        "attrs": [["IFA_LOCAL", addr], ["IFA_ADDRESS", addr]],
    }


def lookup(dst: str, flags: int = 0) -> dict[str, Any]:
    """A route lookup (`ip route get DST`), with `rtm_flags`."""
    v6 = ":" in dst
    return {
        "type": "RTM_GETROUTE",
        "flags": ["REQUEST"],
        "fields": {"family": 10 if v6 else 2, "dst_len": 128 if v6 else 32, "flags": flags},
        "attrs": [["RTA_DST", dst]],
    }


# The errnos that say "not implemented" rather than "refused": a stack answering one where the
# kernel does not is unsupported in the support table, not merely different.
UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOPROTOOPT, errno.EPROTONOSUPPORT)


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
            kernel, stack = ([r for r in records if any(differ.is_about(k, about) for k in r.key)] for records in (kernel, stack))
        records = differ.diff_records(kernel, stack, ignore=ignore, only=only)
        return outcome + [replace(d, where=f"{name}: {d.where}") for d in records]  # which step saw it

    def report(self, name: str, differences: list[differ.Difference]) -> str:
        return f"{self.stack_id} answers {name} unlike the kernel:\n{differ.explain(differences)}"


def family_filter_differences(pair: Pair, name: str, family: int) -> list[differ.Difference]:
    """Records of another family in a dump asked for `family` (the kernel's must have none)."""
    kernel, stack = pair.records(name)
    assert kernel and all(r.values["family"] == family for r in kernel), f"the kernel's dump for family {family}: {kernel}"
    return [differ.Difference(r.label(), "family", "filtered out", "returned") for r in stack if r.values["family"] != family]


class Differential:
    """One check's view of both sides: `ask` them, then `verdict` (or `note`) what it found."""

    def __init__(self, kernel: Testbed, stack: Stack, support: list[dict[str, Any]], check: str) -> None:
        self.kernel, self.stack, self.support, self.check = kernel, stack, support, check

    def ask(self, requests: dict[str, dict[str, Any]], *, unprivileged: bool = False, quiet: float = 0.3) -> Pair:
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
        unsupported = s.errno in UNSUPPORTED and k.errno not in UNSUPPORTED
        self.row(
            message_type,
            differences,
            unsupported=unsupported,
            attrs=differ.attribute_names(s),
            kernel_attrs=differ.attribute_names(k),
        )

    def row(
        self,
        what: str,
        differences: list[differ.Difference],
        *,
        unsupported: bool = False,
        attrs: dict[str, list[str]] | None = None,
        kernel_attrs: dict[str, list[str]] | None = None,
    ) -> None:
        """A support-table row for something other than one request's answer (a socket option,
        a notification, a tool): `what` names the row, `unsupported` says the stack refused
        what the kernel does (EOPNOTSUPP, ENOPROTOOPT ...), rather than doing it differently."""
        status = "unsupported" if unsupported else "differs" if differences else "supported"
        self.support.append(
            {
                "check": self.check,
                "message": what,
                "stack": self.stack.id,
                "status": status,
                "differences": [str(d) for d in differences[:10]],
                "attrs": attrs or {},
                "kernel_attrs": kernel_attrs or {},
            }
        )

    def judge(self, what: str, differences: list[differ.Difference], description: str, *, unsupported: bool = False) -> None:
        """`row`, then fail on any difference, saying what was compared."""
        self.row(what, differences, unsupported=unsupported)
        assert not differences, f"{self.stack.id} {description} unlike the kernel:\n{differ.explain(differences)}"
