"""A perf campaign: every selected stack measured against a kernel far end, repetitions interleaved.

Per stack (and MTU) one testbed stays up for the whole campaign: a veth stack on
`layouts.kernel_peer` (the far end is the peer namespace's kernel), a tap stack (slirp4netns,
pasta) on its own tap layout (the far end is the outside namespace behind the stack's host).
The servers run on the far end (iperf3 per measurement, sockperf and busybox httpd for the
campaign), the clients inside the stack through the driver's `run`, so a sandbox's client goes
through the sandbox's stack, and nothing leaves the lab's namespaces.

Repetitions are interleaved (for rep: for metric: for stack), so the noise of a shared machine
falls on every stack alike, and the kernel (linux; added when not selected: every figure is
also a ratio to it) is measured in the same rounds. A cell whose repetitions disagree is
measured `repetitions` more times; it is flagged erratic only when those disagree too.
Every measurement is bounded: a fixed duration, and a timeout on every wait.

`Campaign(specs).run()` returns plain data: the "perf" value of results.json (README, "Performance").
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labkit.errors import ExpectTimeout, LabError, LabInputError
from labkit.lifecycle.process import LabProcess
from labkit.net import layouts
from labkit.net.ethtool import set_tx_checksum
from labkit.net.netns import NetNS
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link
from labkit.perf import stats, tools
from labkit.perf.cpu import CpuWindow, per_gb
from labkit.perf.gates import Gate, gate_for
from labkit.stacks import StackSpec, resolve
from labkit.testbed.bed import Testbed

KERNEL = "linux"
UDP_RATE = "300M"  # iperf3's offered rate for udp_tx: within the kernel's reach on 2 cores, not a sandbox's
READY_TIMEOUT = 5.0  # seconds a far-end server may take to listen
RUN_SLACK = 10.0  # seconds a client may take beyond its duration (a sandbox's exec, connection setup)


@dataclass(frozen=True)
class Metric:
    """`better`: "higher" (throughput, rate) or "lower" (latency); `bulk`: moves bytes, so it has a CPU cost per GB."""

    name: str
    unit: str
    better: str
    tool: str  # iperf3 | sockperf | wrk
    parallel: int = 1
    reverse: bool = False  # the far end sends (rx)
    udp: bool = False
    bulk: bool = False


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("tcp_tx_1", "Gbit/s", "higher", "iperf3", bulk=True),
        Metric("tcp_tx_4", "Gbit/s", "higher", "iperf3", parallel=4, bulk=True),
        Metric("tcp_rx_1", "Gbit/s", "higher", "iperf3", reverse=True, bulk=True),
        Metric("tcp_rx_4", "Gbit/s", "higher", "iperf3", parallel=4, reverse=True, bulk=True),
        Metric("udp_tx", "Mbit/s", "higher", "iperf3", udp=True, bulk=True),
        Metric("tcp_rr", "usec", "lower", "sockperf"),
        Metric("tcp_crr", "conn/s", "higher", "wrk"),
    )
}


def metrics_named(names: Sequence[str]) -> list[Metric]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise LabInputError(f"perf metric {unknown[0]!r}: allowed: {', '.join(METRICS)}")
    return [METRICS[n] for n in names]


# Flags a driver starts its stack with for the conformance evidence, which cost throughput:
# runsc's --log-packets writes a debug-log line for every packet (and --debug everything else).
def measured(spec: StackSpec) -> StackSpec:
    """`spec` as the campaign runs it: a driver that keeps evidence logs (gVisor's runsc debug log,
    every packet in it) runs without them, so the figures are the stack's, not its logger's.
    Same id, variant and build: the cells are the stack's own."""
    driver = spec.driver
    if not getattr(driver, "evidence_logs", False):
        return spec
    quiet = type(f"Measured{driver.__name__}", (driver,), {"evidence_logs": False, "__module__": __name__})
    return replace(spec, driver=quiet)


def _wait_exit(process: LabProcess, timeout: float) -> bool:
    """Wait up to `timeout` for `process` to end (on its pidfd); whether it has."""
    fd = os.pidfd_open(process.pid)
    try:
        return bool(select.select([fd], [], [], max(0.0, timeout))[0])
    finally:
        os.close(fd)


def _await_line(process: LabProcess, marker: str, what: str) -> None:
    """Read `process`'s output until a line holds `marker` (its "listening" line), bounded."""
    deadline = time.monotonic() + READY_TIMEOUT
    seen: list[str] = []
    while True:
        try:
            line = process.read_line(max(0.01, deadline - time.monotonic()))
        except ExpectTimeout:
            raise LabError(f"{what} did not say it listens within {READY_TIMEOUT:g}s; it said: {''.join(seen)[-300:]!r}") from None
        if line is None:
            raise LabError(f"{what} ended before it listened; it said: {''.join(seen)[-300:]!r}")
        if marker in line:
            return
        seen.append(line)


def _await_listener(process: LabProcess, netns: NetNS, address: str, port: int, what: str) -> None:
    """A server that prints nothing when ready (busybox httpd): connect from its own namespace
    until it accepts. Between tries the wait is on the server's exit (its pidfd), so a server
    that dies ends the wait at once; the whole wait is bounded."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with netns.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect((address, port))
                return
            except OSError as exc:
                why = exc
        if time.monotonic() > deadline:
            raise LabError(f"{what} does not accept on {address}:{port} after {READY_TIMEOUT:g}s: {why}")
        if _wait_exit(process, 0.02):
            raise LabError(f"{what} ended before it listened on {address}:{port}")


@dataclass
class Bench:
    """One stack (at one MTU) with its far end: the testbed, where the far end is, its servers."""

    spec: StackSpec
    mtu: int | None = None
    bed: Testbed | None = None
    far: NetNS | None = None
    address: str = ""
    servers: list[LabProcess] = field(default_factory=list)
    www: Path | None = None
    note: str = ""  # how this stack's far end differs from the others'

    @property
    def id(self) -> str:
        return self.spec.id

    def up(self, plan: AddressPlan) -> None:
        if self.mtu is not None:
            plan = replace(plan, mtu=self.mtu)
        if self.spec.driver.makes_link:
            self.bed = Testbed(measured(self.spec), plan).up()
            assert self.bed.outside is not None
            self.far, self.address = self.bed.outside.netns("outside"), layouts.OUTSIDE4
        else:
            self.bed = Testbed(measured(self.spec), plan, layout=layouts.kernel_peer).up()
            assert self.bed.peer_end is not None and self.bed.peer_end.ns.netns is not None
            self.far, self.address = self.bed.peer_end.ns.netns, self.bed.plan.peer4
        self.mtu = self.bed.plan.mtu

    def _server(self, argv: list[str]) -> LabProcess:
        process = LabProcess(argv, netns=self.far, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.servers.append(process)
        return process

    def reachable(self) -> None:
        """Move a few KB to the far end, bounded, before measuring anything: a stack that cannot
        reach its kernel far end is reported once instead of timing out in every cell.

        A veth hands the stack the kernel's partial checksums, which a stack that verifies them
        (gvisor-norxcsum) drops: when the first try fails, the far end finishes its checksums
        (tx checksumming off on its veth, as a NIC would put them on a wire) and tries again,
        and `note` says so. Only then: it costs the kernel its TSO, and so the reference."""
        try:
            self._probe()
        except LabError:
            if self.bed is None or self.spec.driver.makes_link or self.far is None:
                raise
            assert isinstance(self.bed.peer_end, Link)
            set_tx_checksum(self.far, self.bed.peer_end.name, False)
            self._probe()
            self.note = "far end with tx checksumming off (finished checksums): partial ones were dropped"

    def _probe(self) -> None:
        assert self.bed is not None and self.bed.stack is not None
        server = LabProcess(tools.iperf3_server(self.address), netns=self.far, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _await_line(server, tools.IPERF3_READY, f"iperf3 server ({self.id}'s far end)")
            done = self.bed.stack.run(tools.iperf3_probe(self.address), timeout=RUN_SLACK)
            tools.parse_iperf3(done.stdout)
        except (LabError, ExpectTimeout) as exc:
            raise LabError(f"cannot reach its kernel far end {self.address} (iperf3 -n 64K): {str(exc).splitlines()[0][:200]}") from None
        finally:
            _wait_exit(server, 2.0)
            server.close()

    def start_servers(self, metrics: Sequence[Metric]) -> None:
        """The long-lived far-end servers the metrics need (iperf3's is started per measurement)."""
        assert self.far is not None
        tools_needed = {m.tool for m in metrics}
        if "sockperf" in tools_needed:
            _await_line(self._server(tools.sockperf_server(self.address)), tools.SOCKPERF_READY, f"sockperf server ({self.id}'s far end)")
        if "wrk" in tools_needed:
            self.www = Path(tempfile.mkdtemp(prefix="labkit-perf-www-"))
            (self.www / "r").write_bytes(b"x")
            httpd = self._server(tools.httpd_server(self.address, str(self.www)))
            _await_listener(httpd, self.far, self.address, tools.HTTP_PORT, f"busybox httpd ({self.id}'s far end)")

    def measure(self, metric: Metric, seconds: float) -> tuple[tools.Measured, float]:
        """One measurement: (its figures, the busy CPU seconds of the machine over the client's run)."""
        assert self.bed is not None and self.bed.stack is not None
        stack = self.bed.stack
        server = None
        if metric.tool == "iperf3":
            server = LabProcess(tools.iperf3_server(self.address), netns=self.far, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            _await_line(server, tools.IPERF3_READY, f"iperf3 server ({self.id}'s far end)")
            argv = tools.iperf3_client(
                self.address, seconds, parallel=metric.parallel, reverse=metric.reverse, udp_rate=UDP_RATE if metric.udp else None
            )
            parse: Callable[[str], tools.Measured] = tools.parse_iperf3
        elif metric.tool == "sockperf":
            argv, parse = tools.sockperf_client(self.address, seconds), tools.parse_sockperf
        else:
            argv, parse = tools.wrk_client(self.address, seconds), tools.parse_wrk
        try:
            with CpuWindow() as window:
                done = stack.run(argv, timeout=seconds + RUN_SLACK)
            try:
                measured = parse(done.stdout)
            except LabError as exc:
                raise LabError(f"{exc} (exit {done.returncode}; stderr: {done.stderr.strip()[-200:]!r})") from None
            if done.returncode != 0 and metric.tool != "sockperf":
                raise LabError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-200:]!r}")
            return measured, window.seconds
        finally:
            if server is not None:
                _wait_exit(server, 2.0)  # one test (-1): it ends on its own once the client is done
                server.close()

    def down(self) -> None:
        errors: list[BaseException] = []
        servers, self.servers = self.servers, []
        for process in servers:
            try:
                process.close()
            except Exception as exc:
                errors.append(exc)
        if self.www is not None:
            shutil.rmtree(self.www, ignore_errors=True)
            self.www = None
        if self.bed is not None:
            try:
                self.bed.down()
            except Exception as exc:
                errors.append(exc)
            self.bed = None
        if errors:
            raise errors[0]


@dataclass
class Cell:
    stack: str
    metric: Metric
    mtu: int
    values: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds per GB of each repetition (bulk metrics)
    extras: list[dict[str, float]] = field(default_factory=list)
    again: list[float] = field(default_factory=list)  # the confirming re-measurements of a suspect cell
    errors: list[str] = field(default_factory=list)

    def add(self, measured: tools.Measured, cpu_seconds: float, confirming: bool = False) -> None:
        (self.again if confirming else self.values).append(measured.value)
        if confirming:
            return
        self.extras.append(measured.extra)
        if self.metric.bulk and (cost := per_gb(cpu_seconds, measured.moved)) is not None:
            self.cpu.append(cost)


def _median(values: Sequence[float]) -> float | None:
    return stats.summarize(values).median if values else None


class Campaign:
    """Measure `metrics` on every spec, `repetitions` interleaved rounds of `seconds` each.

    `mtus`: the MTUs a veth stack is measured at (None: the plan's); a tap stack's MTU is its
    variant's. `log` gets a line per step (progress on a long run).
    """

    def __init__(
        self,
        specs: Sequence[StackSpec],
        *,
        repetitions: int = 5,
        seconds: float = 1.0,
        metrics: Sequence[str] = tuple(METRICS),
        mtus: Sequence[int | None] = (None,),
        gates: Sequence[Gate] = (),
        plan: AddressPlan | None = None,
        full: bool = False,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        if repetitions < 1:
            raise LabInputError(f"repetitions={repetitions}: allowed: 1 or more")
        if not 0.5 <= seconds <= 60:
            raise LabInputError(f"seconds={seconds}: allowed: 0.5 to 60")
        self.metrics = metrics_named(list(metrics))
        self.repetitions, self.seconds, self.gates, self.full, self.log = repetitions, seconds, list(gates), full, log
        self.plan = plan or AddressPlan()
        if not any(s.id == KERNEL for s in specs):
            specs = [*resolve(KERNEL), *specs]  # the reference every ratio is taken to
        self.specs = list(specs)
        self.mtus = list(mtus)
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def _benches(self) -> list[Bench]:
        benches = []
        for spec in self.specs:
            available = spec.availability()  # a variant its binary cannot run is unavailable too
            if not available.ok:
                self.skipped[spec.id] = available.reason
                continue
            for mtu in [None] if spec.driver.makes_link else self.mtus:
                benches.append(Bench(spec, mtu))
        return benches

    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        benches = self._benches()
        cells: dict[tuple[str, int, str], Cell] = {}
        live: list[Bench] = []
        try:
            for bench in benches:
                try:
                    bench.up(self.plan)
                    bench.reachable()
                    bench.start_servers(self.metrics)
                except Exception as exc:
                    self.skipped[bench.id if self.mtus == [None] else f"{bench.id}:mtu{bench.mtu}"] = str(exc).splitlines()[0][:300]
                    self.log(f"perf: {bench.id}: {exc}")
                    bench.down()
                    continue
                live.append(bench)
                if bench.note:
                    self.notes[bench.id] = bench.note
                self.log(f"perf: {bench.id} (MTU {bench.mtu}) up")
            for bench in live:
                assert bench.mtu is not None
                for metric in self.metrics:
                    cells[(bench.id, bench.mtu, metric.name)] = Cell(bench.id, metric, bench.mtu)
            for rep in range(self.repetitions):
                for metric in self.metrics:
                    for bench in live:
                        self._one(bench, metric, cells, confirming=False)
                self.log(f"perf: repetition {rep + 1}/{self.repetitions} done, {time.monotonic() - began:.0f}s")
            suspects = [(b, m) for b in live for m in self.metrics if stats.spread_why(cells[(b.id, b.mtu or 0, m.name)].values)]
            if suspects:
                self.log(f"perf: re-measuring {len(suspects)} suspect cell(s): {', '.join(f'{b.id}/{m.name}' for b, m in suspects)}")
            for _ in range(self.repetitions if suspects else 0):
                for bench, metric in suspects:
                    self._one(bench, metric, cells, confirming=True)
        finally:
            for bench in live:
                try:
                    bench.down()
                except Exception as exc:  # tear down the others all the same
                    self.log(f"perf: {bench.id}: teardown failed: {exc}")
        return {
            "repetitions": self.repetitions,
            "seconds": self.seconds,
            "full": self.full,
            "duration s": round(time.monotonic() - began, 1),
            "udp offered": UDP_RATE,
            "rr message bytes": tools.RR_MESSAGE,
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "cells": self._shape(list(cells.values())),
        }

    def _one(self, bench: Bench, metric: Metric, cells: dict[tuple[str, int, str], Cell], confirming: bool) -> None:
        cell = cells[(bench.id, bench.mtu or 0, metric.name)]
        began = time.monotonic()
        try:
            measured, cpu_seconds = bench.measure(metric, self.seconds)
        except (LabError, ExpectTimeout, OSError, subprocess.SubprocessError) as exc:
            cell.errors.append(str(exc).splitlines()[0][:300])
            self.log(f"perf: {bench.id} {metric.name}: {cell.errors[-1]} ({time.monotonic() - began:.1f}s)")
            return
        cell.add(measured, cpu_seconds, confirming)
        self.log(f"perf: {bench.id} {metric.name} {measured.value:.4g} {metric.unit} ({time.monotonic() - began:.1f}s)")

    def _shape(self, cells: list[Cell]) -> list[dict[str, Any]]:
        kernel = {(c.metric.name, c.mtu): _median(c.values) for c in cells if c.stack == KERNEL}
        rows = []
        for c in cells:
            row: dict[str, Any] = {
                "stack": c.stack,
                "metric": c.metric.name,
                "mtu": c.mtu,
                "unit": c.metric.unit,
                "better": c.metric.better,
                "values": [round(v, 4) for v in c.values],
                "median": None,
                "min": None,
                "max": None,
                "cv": None,
                "ratio": None,
                "cpu_per_gb": round(_median(c.cpu) or 0, 3) if c.cpu else None,
                "erratic": False,
                "erratic_why": "",
                "gate": None,
                "extra": {},
                "rechecked": [round(v, 4) for v in c.again],
                "errors": c.errors,
            }
            if c.values:
                s = stats.summarize(c.values)
                row.update(median=round(s.median, 4), min=round(s.min, 4), max=round(s.max, 4), cv=round(s.cv, 4))
                ref = kernel.get((c.metric.name, c.mtu))
                if ref and s.median:
                    row["ratio"] = round(s.median / ref if c.metric.better == "higher" else ref / s.median, 4)
                why = stats.confirm(c.values, c.again) if c.again else ""
                row["erratic"], row["erratic_why"] = bool(why), why
                keys = sorted({k for e in c.extras for k in e})
                row["extra"] = {k: round(_median([e[k] for e in c.extras if k in e]) or 0, 4) for k in keys}
            gate = gate_for(self.gates, c.stack, c.metric.name)
            if gate is not None:
                row["gate"] = {"min_ratio": gate.min_ratio, "met": row["ratio"] is not None and row["ratio"] >= gate.min_ratio}
            rows.append(row)
        return rows
