"""The transport suite's own rule: every check needs the socket agent (see suites/transport/conftest.py),
so a tap stack skips it by name instead of failing checks that were never meant for it."""

import re
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "suites" / "transport"


def test_every_needs_marker_in_the_suite_names_the_agent():
    found = 0
    for path in sorted(SUITE.glob("test_*.py")):
        for match in re.finditer(r"mark\.needs\(([^)]*)\)", path.read_text()):
            found += 1
            assert '"agent"' in match.group(1), f"{path.name}: needs({match.group(1)}) without the agent"
    assert found >= 9, f"only {found} needs markers found: the suite's modules each declare theirs"
