"""Whether a runsc build keeps its own capture (`--pcap-log`), found by trying it once.

netstack's capture is the third view of a failed check's frames, after the Wire's and the
sandbox end of the veth's: what netstack itself took in and put out. Not every build writes it:
Debian's runsc 0.0~20221219.0 lists `--pcap-log` but leaves the file empty when its links are
AF_PACKET sockets, as the lab's are. So the lab asks each build once: a throwaway sandbox started
with the flag answers one echo, and the file must then hold a pcap header and a record. Only a
build that wrote one gets the flag on the sandboxes that checks run on; a build that does not
runs exactly as before.

It is asked for, not on by default (`LABKIT_NETSTACK_PCAP=1`): a sandbox with `--pcap-log` wraps
its link in netstack's sniffer, which writes every frame to a file for the sandbox's whole life,
and a lab must not run a stack other than the one its verdicts are about without being told.
The flag is then in the sandbox's command line, kept with each cell's evidence (commands.txt).

The answer is kept per file version, in memory and under the lab's state directory (it lives
until reboot), so the probe costs a machine about 2 s per build once (most of it the probe
sandbox's death after SIGKILL), not every run or every worker. The probe is torn down before it
answers: a sandbox or namespace left dying in the background would be a leftover to whatever
looks for one (a test's leftover check, `labkit clean`).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

from labkit.lifecycle import owner
from labkit.packet import pcapfile
from labkit.stacks import programs
from labkit.stacks.gvisor import flags as runsc_flags

FLAG = "pcap-log"
FILE = "netstack.pcap"  # in the sandbox's workdir
WAIT = 2.0  # seconds the probe waits for its echo
GRACE = 2.0  # seconds it then waits for the record before it says "writes nothing" (until reboot)
OPT_IN = "LABKIT_NETSTACK_PCAP"


def wanted() -> bool:
    """Whether this run asked for netstack's own capture."""
    return os.environ.get(OPT_IN, "").lower() in ("1", "true", "yes")


_YES, _NO = "writes", "writes nothing"


def _record(binary: str) -> Path:
    st = os.stat(binary)
    key = hashlib.sha256(f"{binary}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return owner.STATE_DIR / "probes" / f"runsc-pcap-log-{key}"


def writes(binary: str) -> bool:
    """Whether the runsc at `binary` (an absolute path) writes a capture with `--pcap-log` on
    the lab's links. A build without the flag does not, without a probe."""
    listed = runsc_flags.known(binary)
    if listed is not None and FLAG not in listed:
        return False
    return programs.cached("runsc-pcap-log", binary, _remembered)


def _remembered(binary: str) -> bool:
    record = _record(binary)
    try:
        return record.read_text().strip() == _YES
    except OSError:
        pass
    found = probe(binary)
    if found is None:
        return False  # no answer: this process goes without, the next one asks again
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}")
        tmp.write_text((_YES if found else _NO) + "\n")
        os.replace(tmp, record)
    except OSError:
        pass  # asked again next time
    return found


def probe(binary: str) -> bool | None:
    """Start a sandbox of `binary` with `--pcap-log`, exchange an echo with it, and see whether
    the file then holds a record; None when the probe's sandbox did not start or answer (no
    answer about the flag, and nothing to remember)."""
    from labkit.packet.testbench import IcmpEcho
    from labkit.stacks.builds import Build
    from labkit.stacks.gvisor.driver import GVisorStack
    from labkit.stacks.registry import StackSpec
    from labkit.testbed.bed import Testbed

    class Probe(GVisorStack):
        pcap_log = True

    bed = Testbed(StackSpec(Probe, "", Build("pcap-log-probe", binary)))
    try:
        try:
            bed.up()
            assert bed.wire is not None and bed.stack is not None and bed.stack.workdir is not None
            echo = IcmpEcho(bed.wire, bed.plan.endpoints("ipv4"), ident=0x9CA9)
            echo.send(1)
            bed.wire.expect(echo.reply(1), timeout=WAIT)
        except Exception:
            return None
        path = bed.stack.workdir / FILE
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline:
            if pcapfile.records_end(path) > pcapfile.HEADER:
                return True
            time.sleep(0.05)
        return False
    finally:
        try:
            bed.down()
        except Exception as exc:  # the answer stands; what outlives its kill is `labkit clean`'s
            warnings.warn(
                f"the --pcap-log probe's sandbox did not come down cleanly: {exc}; `labkit clean` removes it", stacklevel=2
            )
