"""A lab service running inside a stack, seen from the lab: its JSON-line events are the evidence.

The program itself is `labkit.services` (standard library only, started through the driver's
`spawn`); this is the lab's handle on one running copy of it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from labkit import services
from labkit.errors import ExpectTimeout, LabError, LabInputError
from labkit.lifecycle.process import LabProcess


def service_argv(kind: str, port: int, family: str, options: Mapping[str, object]) -> list[str]:
    """The command line of one of the lab's services (labkit.services), wherever it runs; an
    unknown kind or option is refused here, in one line, not by the service once it is started."""
    if kind not in services.KINDS:
        raise LabInputError(f"unknown service {kind!r}; allowed: {', '.join(services.KINDS)}")
    allowed = services.option_names()
    for key in options:
        if key not in allowed:
            raise LabInputError(f"service {kind} option {key!r}: allowed: {', '.join(allowed)}")
    argv = [sys.executable, "-m", "labkit.services", kind, "--port", str(port), "--family", family, "--lifeline"]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


class Service:
    """A lab service running inside a stack; its JSON-line events are the stack's evidence."""

    def __init__(self, kind: str, process: LabProcess, ready_timeout: float = 10.0) -> None:
        self.kind = kind
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._cursor = 0
        try:
            ready = self.wait_for(lambda e: e["event"] in ("ready", "error"), ready_timeout)
            if ready["event"] == "error":
                raise LabError(f"service {kind} failed to start: {ready.get('message')}")
        except BaseException:
            process.close()
            raise
        self.port: int = ready["port"]

    def _next(self, timeout: float) -> dict[str, Any] | None:
        line = self.process.read_line(timeout)
        if line is None:
            return None
        try:
            event = json.loads(line)
        except ValueError:
            event = {"event": "output", "line": line.rstrip("\n")}
        self.events.append(event)
        return event

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 2.0) -> dict[str, Any]:
        """The next event for which `predicate` holds, within `timeout`.

        Each event is returned at most once (like the Wire's frames), so waiting for a second
        datagram cannot be satisfied by the first.
        """
        while self._cursor < len(self.events):
            event = self.events[self._cursor]
            self._cursor += 1
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                came = self._next(left)
            except ExpectTimeout:
                break
            if came is None:
                raise LabError(f"service {self.kind} exited (code {self.process.popen.poll()}); events: {self.events[-5:]}")
            self._cursor = len(self.events)
            if predicate(came):
                return came
        raise ExpectTimeout(f"service {self.kind}: no matching event within {timeout:g}s; events so far: {self.events[-5:]}")

    def discard(self) -> int:
        """Read and drop the events waiting in the pipe; how many. For a service that lives long
        and whose events nobody wants (the robustness oracle's echo): a pipe nobody reads fills
        up, and the service then blocks on its next event, which looks like a stack that died."""
        dropped = 0
        while True:
            try:
                line = self.process.read_line(0.001)
            except ExpectTimeout:
                return dropped
            if line is None:
                return dropped
            dropped += 1

    def close(self) -> None:
        self.process.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
