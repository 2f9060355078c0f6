"""The transport suite's own rule: every check needs the socket agent, or (the tap stacks' own
TCP/UDP/ICMP, `test_tap_*.py`) an outside world (see suites/transport/conftest.py), so a stack
skips by name the checks that were never meant for it instead of failing them."""

import re
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "suites" / "transport"


def test_every_needs_marker_in_the_suite_names_the_agent_or_the_outside():
    found = 0
    for path in sorted(SUITE.glob("test_*.py")):
        want = '"outside"' if path.name.startswith("test_tap_") else '"agent"'
        for match in re.finditer(r"mark\.needs\(([^)]*)\)", path.read_text()):
            found += 1
            assert want in match.group(1), f"{path.name}: needs({match.group(1)}) without {want}"
    assert found >= 12, f"only {found} needs markers found: the suite's modules each declare theirs"
