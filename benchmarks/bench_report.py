"""The report page of a full conformance run, opened in headless Chromium: DOMContentLoaded within 2 s.

The page is rendered by this checkout's reports.html from the newest run's results.json
(reports/out/results.json, or the one given with --page-results), as `labkit report` would write
it, into a temporary folder beside nothing (links do not load; the page may fetch nothing), and
opened LOADS times, each a fresh navigation in one browser. The figure is the median of the
Navigation Timing entry's domContentLoadedEventEnd (from the navigation's start, so it holds the
parse, the inline CSS and the inline script's DOMContentLoaded work). Without such a results.json
there is no full-size page to measure: the figure says it was skipped and why, rather than
measuring a small page that would pass for the wrong reason. The run's size is in the figure's
name, so a small run's results.json cannot be mistaken for a full one either.

The browser is the tests' (tests/browser.py): Debian's chromium through /usr/bin/chromedriver.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Figure

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "reports" / "out" / "results.json"
LOADS = 5
GOAL_MS = 2000.0
NAME = "report page to DOMContentLoaded (Chromium)"


def _skipped(why: str) -> list[Figure]:
    print(f"report page benchmark skipped: {why}")
    return [Figure(f"{NAME}: skipped ({why})", 0.0, "ms", f"<= {GOAL_MS:g} ms", None)]


def _dom_content_loaded_ms(browser: Any, page: Path) -> float:
    driver = browser.driver
    browser.open(page)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ms = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return n && n.domContentLoadedEventEnd > 0 ? n.domContentLoadedEventEnd : null;"
        )
        if ms is not None:
            return float(ms)
        time.sleep(0.05)
    raise TimeoutError(f"{page} did not reach DOMContentLoaded within 30 s")


def run(results: Path | None = None, loads: int = LOADS) -> list[Figure]:
    results = results or DEFAULT_RESULTS
    sys.path.insert(0, str(ROOT))  # tests/ and reports/ of this checkout
    from tests.browser import chromium, unavailable

    if (why := unavailable()) is not None:
        return _skipped(why)
    if not results.is_file():
        return _skipped(f"no {results}: run ./lab conformance first")
    from reports import html

    data = json.loads(results.read_text())
    t = time.perf_counter()
    text = html.render(data, None, results.parent)
    render_ms = (time.perf_counter() - t) * 1000
    cells = len(data.get("results", []))
    with tempfile.TemporaryDirectory(prefix="labkit-bench-report-") as tmp:
        page = Path(tmp) / "index.html"
        page.write_text(text)
        size_mb = page.stat().st_size / 1e6
        with chromium(Path(tmp) / "screenshots") as browser:
            times = [_dom_content_loaded_ms(browser, page) for _ in range(loads)]
            problems = browser.severe() + browser.outside()
    median = statistics.median(times)
    what = f"{cells} cells, {size_mb:.2f} MB"
    if problems:  # a fast page that errs or reaches out is no page to be proud of: the goal is missed
        print(f"report page: console errors or requests leaving the file: {problems[:5]}")
    return [
        Figure(f"{NAME}, median of {loads} ({what})", median, "ms", f"<= {GOAL_MS:g} ms", median <= GOAL_MS and not problems),
        Figure(f"{NAME}, slowest of {loads}", max(times), "ms"),
        Figure(f"report page rendered by reports.html ({what})", render_ms, "ms"),
    ]


if __name__ == "__main__":
    for f in run(Path(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(f.line())
