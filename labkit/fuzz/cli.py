"""`labkit replay PCAP --stack NAME`: a robustness finding, reproduced by hand.

The frames go out of the Wire of a new standard testbed exactly as the reproducer holds them,
after a look that the stack is alive, and the same liveness oracle as the suite's looks again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from labkit.errors import LabError, LabInputError
from labkit.fuzz.replay import Injector, read_reproducer, replay
from labkit.stacks import resolve
from labkit.testbed import Testbed

MAX_TIMES = 20


LAB_FAILED = 3  # neither "survived" nor "broke": the testbed did not come up, or the stack was not alive to begin with


def replay_file(path: Path, stack: str, times: int = 1) -> int:
    """0: the stack survived every replay; 1: it broke at least once (each outcome printed);
    3: the lab could not tell; 2: bad input (LabInputError, one line)."""
    if not 1 <= times <= MAX_TIMES:
        raise LabInputError(f"bad --times {times}; allowed: 1 to {MAX_TIMES}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LabInputError(f"cannot read reproducer {path}: {exc.strerror}; allowed: a readable pcap file") from None
    frames = read_reproducer(data, str(path))
    if not frames:
        raise LabInputError(f"{path} holds no frames; allowed: a pcap with at least one frame")
    specs = resolve([stack])
    if len(specs) != 1:
        raise LabInputError(f"--stack {stack!r} names {len(specs)} stacks; allowed: exactly one stack id")
    spec = specs[0]
    available = spec.availability()
    if not available.ok:
        hint = f"; install: {available.install}" if available.install else ""
        raise LabInputError(f"{spec.id} unavailable: {available.reason}{hint}")
    broke = 0
    for n in range(times):
        try:
            with Testbed(spec) as bed:
                injector = Injector(bed)
                before, after = replay(bed, frames, injector=injector)
        except LabError as exc:
            print(f"replay {n + 1}: the lab failed, so nothing is known: {exc}", file=sys.stderr)
            return LAB_FAILED
        if not before.alive:
            print(f"replay {n + 1}: {spec.id} was not alive before the frames: {'; '.join(before.problems)}", file=sys.stderr)
            return LAB_FAILED
        refused = ", ".join(f"{k} x{v}" for k, v in sorted(injector.refused.items()))
        sent = f"{injector.sent} of {len(frames)} frame(s) sent" + (f" (refused by the lab's kernel: {refused})" if refused else "")
        if after.alive:
            print(f"replay {n + 1}: {spec.id} survived; {sent}")
        else:
            broke += 1
            print(f"replay {n + 1}: {spec.id} BROKE ({after.kind()}); {sent}: {'; '.join(after.problems)}")
            if after.panic:
                print(after.panic)
    return 1 if broke else 0
