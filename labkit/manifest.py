"""The known-deviation manifest: where a stack is known to differ from Linux, and why.

One TOML file; each `[[deviation]]` names a stack id (glob allowed, e.g. `gvisor-*`; without
'@' it covers that stack's builds too, `gvisor-*@nightly` only that build's), a check
(a test id relative to `suites/`, glob allowed; with its other parameters in brackets, e.g.
`...::test_datagram[ipv6]`, it names that case only) and a one-line reason. The plugin applies each as
a strict xfail, so a deviation that stops happening turns the run red instead of hiding.

    [[deviation]]
    stack = "linux-arpignore"
    check = "linkdispatch/test_arp.py::test_answers_who_has_for_own_address"
    reason = "arp_ignore=8 makes the kernel answer no ARP request"

`unless = "GLOB"` leaves out the stacks it matches (`stack = "gvisor*"`, `unless = "*norxcsum*"`).
`strict = false` is for a deviation of the stack's own that comes and goes (its check still
runs, and a pass is reported, XPASS, without turning the run red). It is a last resort: a check
whose verdict depends on load is made deterministic first (see the burst check in
suites/linkdispatch/test_fanout.py), and `labkit flake` lists these entries apart from the flaky
checks. Say why in the reason.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabInputError

KEYS = {"stack", "check", "reason"}
OPTIONAL = {"unless", "strict", "says"}  # a stack glob the entry does not apply to; strict = false


def stack_matches(stack_id: str, pattern: str) -> bool:
    """A stack id against a glob, the way --stack, the `stacks` marker and the manifest read it:
    `gvisor-*` is every variant of gvisor, its default one (`gvisor`) included.

    A build of a stack (`gvisor-ch4@nightly`, labkit.stacks.builds) is that stack too: a pattern
    without '@' matches it by the part before the '@'; a pattern with '@' matches builds only,
    both parts (`gvisor-*@nightly`, `gvisor@*`).
    """
    stack, at, build = stack_id.partition("@")
    want_stack, want_at, want_build = pattern.partition("@")
    if want_at and (not at or not fnmatch.fnmatchcase(build, want_build)):
        return False
    return fnmatch.fnmatchcase(stack, want_stack) or (want_stack.endswith("-*") and stack == want_stack[:-2])


@dataclass(frozen=True)
class Deviation:
    stack: str
    check: str
    reason: str
    unless: str = ""
    strict: bool = True
    says: str = ""  # a regular expression the failure must match to be this deviation

    def describes(self, failure: str) -> bool:
        """Whether `failure` (the check's failure text) is the deviation this entry records: one
        entry often covers a check's every case with one reason, and a stack that starts to fail
        one of them in another way must not pass for the known one."""
        return not self.says or re.search(self.says, failure) is not None

    @property
    def entry(self) -> str:
        """The entry as a stable name (its stack and check patterns): what a finding on the report
        page is named by, so a link to it survives a reworded reason."""
        return f"{self.stack}{' unless ' + self.unless if self.unless else ''} :: {self.check}"

    def applies(self, stack_id: str, check_id: str) -> bool:
        """`check_id` may carry the check's own parameters (`FILE::TEST[ipv6]`): a manifest entry
        with brackets must match them exactly; one without matches every case (globs allowed)."""
        if not stack_matches(stack_id, self.stack) or (self.unless and stack_matches(stack_id, self.unless)):
            return False
        if "[" in self.check:
            return check_id == self.check
        return fnmatch.fnmatchcase(check_id.split("[", 1)[0], self.check)


@dataclass(frozen=True)
class Manifest:
    path: Path | None
    deviations: tuple[Deviation, ...]

    def lookup(self, stack_id: str, check_id: str) -> Deviation | None:
        for d in self.deviations:
            if d.applies(stack_id, check_id):
                return d
        return None

    def load_dependent(self, stack_id: str, check_id: str) -> bool:
        """Whether the cell's deviation comes and goes (`strict = false`): the stack's own
        nondeterminism, which neither `labkit flake` nor the nightly counts as a flake or a failure."""
        deviation = self.lookup(stack_id, check_id) if stack_id else None
        return deviation is not None and not deviation.strict

    @classmethod
    def empty(cls) -> Manifest:
        return cls(None, ())

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise LabInputError(
                f"deviation manifest {path} does not exist; allowed: a TOML file of [[deviation]] entries"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise LabInputError(f"deviation manifest {path}: not valid TOML ({exc})") from None
        extra = set(data) - {"deviation"}
        if extra:
            raise LabInputError(f"deviation manifest {path}: unknown table(s) {sorted(extra)}; allowed: [[deviation]]")
        entries = data.get("deviation", [])
        if not isinstance(entries, list):
            raise LabInputError(f"deviation manifest {path}: 'deviation' must be an array of tables ([[deviation]])")
        out = []
        for n, entry in enumerate(entries, 1):
            where = f"deviation manifest {path}, entry {n}"
            if not isinstance(entry, dict):
                raise LabInputError(f"{where}: not a table; allowed: stack, check, reason")
            unknown = set(entry) - KEYS - OPTIONAL
            if unknown:
                raise LabInputError(
                    f"{where}: unknown key(s) {sorted(unknown)}; allowed: stack, check, reason, unless, strict, says"
                )
            if not isinstance(entry.get("strict", True), bool):
                raise LabInputError(f"{where}: 'strict' must be true or false, got {entry['strict']!r}")
            for key in sorted(KEYS | (OPTIONAL & set(entry) - {"strict"})):
                value = entry.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise LabInputError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
                if "\n" in value:
                    raise LabInputError(f"{where}: {key!r} must be one line")
            if "says" in entry:
                try:
                    re.compile(entry["says"])
                except re.error as exc:
                    raise LabInputError(f"{where}: 'says' {entry['says']!r} is not a regular expression ({exc})") from None
            if "::" not in entry["check"]:
                raise LabInputError(
                    f"{where}: check {entry['check']!r} is not a test id; allowed: SUITE/FILE.py::TEST (globs allowed)"
                )
            out.append(
                Deviation(
                    entry["stack"].strip(),
                    entry["check"].strip(),
                    entry["reason"].strip(),
                    entry.get("unless", "").strip(),
                    entry.get("strict", True),
                    entry.get("says", "").strip(),
                )
            )
        return cls(path, tuple(out))
