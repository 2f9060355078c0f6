"""A corpus of iproute2 commands, run inside a stack as one `ip -force -batch -`, with what each
command printed and whether it failed.

A user's script runs `ip` commands in a row and reads what they print; `ip -batch` is that row in
one process, and `-force` keeps it going past a failing line, as a script without `set -e` does.
To know which command printed what, each command is followed by a marker line that fails the
same way everywhere (`route show dev lkmarkN`: no such device, said by `ip` itself; not a
`link show`, which leaves state behind in ip that changes what a later `addr show dev X` prints), and the next command is only written once the marker's failure is read: ip
writes a command's output before it reads the next line, so whatever the stdout pipe holds then
is that command's, and the stderr up to the marker's message is too. Some commands exit on an
error, -force or not (`ip neigh add` of an existing entry exits 2): such a command ends its
batch, and a corpus puts it last in one. The markers fail on
purpose, so the batch's own exit status is 1 on every stack; each command's status is its own
"Command failed" line.

The corpus (one file per scenario, suites/rtnetlink/corpus/) is a list of `ip -batch` lines;
`#! ip OPTIONS` starts another batch with global options (`#! ip -6`: a batch line cannot carry
them), `# row: NAME` after a command names its support-table row (else its first two words),
and `$dev`, `$peer4`... are the plan's names and addresses (`values`).

Run inside the stack (`python -m labkit.rtnetlink.ip_batch BATCHES-JSON`); the lab compares the
kernel's and the stack's output after `normalise`, which takes out only what differs between
any two namespaces (interface indexes, the peer's netns, timers).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labkit.errors import LabInputError
from labkit.rtnetlink import inside

if TYPE_CHECKING:
    from labkit.net.plan import AddressPlan
    from labkit.rtnetlink.differ import Difference

MARKER = "lkmark{}"  # no such device in any namespace: `ip` says so itself, with no request sent
COMMAND_TIMEOUT = 10.0  # one command, its marker included


@dataclass
class Command:
    line: str  # as `ip -batch` reads it
    row: str  # the support-table row it counts for
    source: int  # its line number in the corpus file


@dataclass
class Batch:
    options: list[str] = field(default_factory=list)  # global options: ip OPTIONS -force -batch -
    commands: list[Command] = field(default_factory=list)

    def describe(self, command: Command) -> str:
        return " ".join(["ip", *self.options, command.line])


def values(plan: AddressPlan) -> dict[str, str]:
    """The names a corpus may use ($dev, $peer4 ...), from the check's address plan."""
    v4, v6 = plan.endpoints("ipv4"), plan.endpoints("ipv6")
    return {
        "dev": plan.stack_ifname,
        "peer4": v4.peer,
        "stack4": v4.stack,
        "unused4": v4.unused,
        "net4": str(v4.network),
        "len4": str(v4.network.prefixlen),
        "peer6": v6.peer,
        "stack6": v6.stack,
        "unused6": v6.unused,
        "net6": str(v6.network),
        "len6": str(v6.network.prefixlen),
        "host4": str(v4.network.network_address).rsplit(".", 1)[0],  # "198.18.0" + ".50"
        "host6": str(v6.network.network_address).rstrip(":") + ":",  # "2001:db8:" + ":50"
    }


def parse_corpus(text: str, names: dict[str, str]) -> list[Batch]:
    """The batches of a corpus file, its names filled in."""
    batches = [Batch()]
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#!"):
            words = stripped[2:].split()
            if not words or words[0] != "ip" or any(not w.startswith("-") for w in words[1:]):
                raise LabInputError(f"corpus line {number}: {raw!r}; allowed: '#! ip [-OPTION ...]'")
            batches.append(Batch(words[1:]))
            continue
        line, _, comment = raw.partition("#")
        line = line.strip()
        if not line:
            continue
        try:
            line = string.Template(line).substitute(names)
        except (KeyError, ValueError) as exc:
            raise LabInputError(
                f"corpus line {number}: unknown name {exc} in {raw!r}; allowed: {', '.join(sorted(names))}"
            ) from exc
        row = comment.strip().removeprefix("row:").strip() if comment.strip().startswith("row:") else " ".join(line.split()[:2])
        batches[-1].commands.append(Command(line, f"ip: {row}", number))
    return [b for b in batches if b.commands]


# What may differ between two namespaces with the same topology, and nothing else.
NORMALISE = [
    (re.compile(r"^\d+: (?=[\w.-]+(?:@[\w.-]+)?[:\s])", re.M), "N: "),  # a link's index: "100: eth0@if100: <..."
    (re.compile(r"@if\d+\b"), "@ifN"),  # the peer's index, in another namespace
    # The peer's namespace, by name or, when ip could not name it, by id: ip names it by asking
    # the id of every namespace in /var/run/netns, where other checks' namespaces come and go.
    # One that went while ip walked makes the kernel answer "Peer netns reference is invalid",
    # which ip prints, and leaves the peer unnamed. Neither is the stack's doing.
    (re.compile(r"link-netns(?:id)? \S+"), "link-netns PEER"),
    (re.compile(r"^Error: Peer netns reference is invalid\.\n", re.M), ""),
    (re.compile(r"\bexpires \d+sec"), "expires Nsec"),  # a cached route's or an address's timer
    (re.compile(r"\bused \d+/\d+/\d+"), "used N/N/N"),  # neighbour and route counters
    (re.compile(r"\b(valid|preferred)_lft \d+sec"), r"\1_lft Nsec"),
]


def normalise(text: str) -> str:
    for pattern, replacement in NORMALISE:
        text = pattern.sub(replacement, text)
    return text


def split_stderr(stderr: str, command_line: int, marker_line: int) -> tuple[str, str, str] | None:
    """A command's stderr and status from what ip wrote to stderr up to its marker's failure:
    (stderr, status, what came after), or None while the marker's "Command failed" is not in."""
    lines = stderr.splitlines(keepends=True)
    end = f"Command failed -:{marker_line}\n"
    if end not in lines:
        return None
    at = lines.index(end)
    own = lines[: max(at - 1, 0)]  # the line before is the marker's own 'Cannot find device "lkmarkN"'
    failed = f"Command failed -:{command_line}\n"
    status = "failed" if failed in own else "ok"
    return "".join(line for line in own if line != failed), status, "".join(lines[at + 1 :])


def run_batch(options: list[str], lines: list[str], timeout: float = COMMAND_TIMEOUT, ip: str = "ip") -> dict[str, Any]:
    """Inside the stack: one `ip -force -batch -`, fed a command and its marker at a time."""
    proc = subprocess.Popen(
        [ip, *options, "-force", "-batch", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    buffers = {"out": b"", "err": b""}
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    results: list[dict[str, Any]] = []

    def read(wait: float) -> bool:
        """Read what is there (waiting up to `wait`); False once both pipes are closed."""
        for key, _ in selector.select(max(wait, 0)):
            data = os.read(key.fd, 65536)
            if data:
                buffers[streams[key.fd]] += data
            else:
                selector.unregister(key.fd)
        return bool(selector.get_map())

    try:
        for i, line in enumerate(lines):
            proc.stdin.write(f"{line}\nroute show dev {MARKER.format(i)}\n".encode())
            proc.stdin.flush()
            deadline, split, open_ = time.monotonic() + timeout, None, True
            while open_ and (split := split_stderr(buffers["err"].decode(errors="replace"), 2 * i + 1, 2 * i + 2)) is None:
                if time.monotonic() > deadline:
                    break
                open_ = read(deadline - time.monotonic())
            if split is None:  # ip gave up (some commands exit on an error, -force or not), or hangs
                ended = "timeout" if open_ else f"ip exited {proc.wait(timeout)}"
                out, err = (buffers[k].decode(errors="replace") for k in ("out", "err"))
                results.append({"line": line, "status": ended, "stdout": out, "stderr": err})
                results += [{"line": rest, "status": "not run", "stdout": "", "stderr": ""} for rest in lines[i + 1 :]]
                break
            while selector.get_map() and selector.select(0):  # the stdout the command wrote before its marker ran
                read(0)
            stderr, status, after = split
            results.append({"line": line, "status": status, "stdout": buffers["out"].decode(errors="replace"), "stderr": stderr})
            buffers = {"out": b"", "err": after.encode()}
        proc.stdin.close()
        code: int | str = proc.wait(timeout)
    except (subprocess.TimeoutExpired, BrokenPipeError) as exc:
        code = f"{type(exc).__name__}"
        # Every command has its result, so both sides line up command by command.
        results += [{"line": rest, "status": f"not run ({code})", "stdout": "", "stderr": ""} for rest in lines[len(results) :]]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        selector.close()
    return {"options": options, "exit": code, "commands": results}


def main(argv: list[str]) -> int:
    batches = json.loads(argv[0])
    json.dump([run_batch(b["options"], b["lines"]) for b in batches], sys.stdout)
    return 0


def ask(stack: Any, batches: list[Batch], timeout: float = 120) -> list[dict[str, Any]]:
    """Run the batches inside `stack` (through its `run`): per batch its exit and its commands."""
    request = json.dumps([{"options": b.options, "lines": [c.line for c in b.commands]} for b in batches])
    return list(inside.run_json(stack, "labkit.rtnetlink.ip_batch", [request], timeout))


def compare(batches: list[Batch], kernel: list[dict[str, Any]], stack: list[dict[str, Any]]) -> list[tuple[Command, Difference]]:
    """Each command's status, stdout and stderr, normalised, side by side; then each batch's exit."""
    from labkit.rtnetlink.differ import Difference

    out: list[tuple[Command, Difference]] = []
    for batch, k, s in zip(batches, kernel, stack, strict=True):
        for command, kc, sc in zip(batch.commands, k["commands"], s["commands"], strict=True):
            for what in ("status", "stdout", "stderr"):
                kv, sv = normalise(kc[what]), normalise(sc[what])
                if kv != sv:
                    out.append((command, Difference(f"line {command.source}: {batch.describe(command)}", what, kv, sv)))
        if k["exit"] != s["exit"] and batch.commands:
            out.append(
                (batch.commands[-1], Difference(" ".join(["ip", *batch.options, "-force -batch"]), "exit", k["exit"], s["exit"]))
            )
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
