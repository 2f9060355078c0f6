"""Run one of labkit's programs inside a stack and read the JSON it prints.

The rtnetlink clients (`clients`, `pyroute2_calls`, `ip_batch`) run where container tooling runs,
inside the stack, through its driver's `run`; each prints its findings as one JSON document.
A program that fails, or prints something else, is the lab's trouble and is said as such.
"""

from __future__ import annotations

import sys
from typing import Any

from labkit.errors import LabError


def run_json(stack: Any, module: str, args: list[str], timeout: float) -> Any:
    """`python -m MODULE ARGS...` inside `stack`: what it printed, decoded."""
    import json

    done = stack.run([sys.executable, "-m", module, *args], timeout=timeout)
    if done.returncode != 0:
        raise LabError(f"{module} in {stack.id} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    try:
        return json.loads(done.stdout)
    except ValueError as exc:
        raise LabError(f"{module} in {stack.id} printed no JSON ({exc}): {done.stdout[:300]!r}") from exc
