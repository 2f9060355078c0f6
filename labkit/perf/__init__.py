"""labkit's performance engine: throughput, latency, connection rate and CPU cost of each stack,
measured side by side against the kernel (suites/perf runs it; see README "Performance").

One job per module: `tools` (the measuring programs' command lines and output), `cpu` (what the
machine spent), `stats` (median, spread, erratic), `gates` (suites/perf.toml) and `campaign`
(testbeds, servers, interleaved repetitions).
"""

from typing import Any

import pytest

# Where suites/perf leaves the campaign's results (the "perf" value of results.json) for the
# session's other plugins: `session.config.stash.get(PERF_STASH, None)`.
PERF_STASH = pytest.StashKey[dict[str, Any]]()
