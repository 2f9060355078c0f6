"""Headless Chromium for the tests that look at the report page as a person does.

Debian's `chromium` and `chromium-driver` (`labkit doctor --install --for tests` installs them),
driven by Selenium from PyPI. Selenium is pointed at /usr/bin/chromedriver through a Service and
SE_OFFLINE is set: Selenium Manager, which would otherwise look for (and download) a driver and
a browser, is never asked; these machines cannot reach its download sites, and a test must not
depend on what it finds there.

What a page does wrong without showing it is collected here, so a test can fail on it: every
console message (goog:loggingPrefs browser ALL; an uncaught exception and a resource that failed
to load are SEVERE), and every request the page made (the DevTools performance log's
Network.requestWillBeSent, and the page's Resource Timing entries), which for a page that must
open offline may only be file:, data:, blob: or about: URLs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,1000",
)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
INSTALL = "labkit doctor --install --for tests (Debian's chromium and chromium-driver; selenium is in the test extra)"


def unavailable() -> str | None:
    """Why a browser test cannot run here, or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return f"no {', '.join(missing)}; install: {INSTALL}" if missing else None


class Browser:
    """One headless Chromium with a fresh profile; logs gathered as they are drained."""

    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.console: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.shots = shots
        self._shot = 0

    def shots_to(self, folder: Path) -> None:
        """Screenshots from now on go to `folder`, numbered from 1 (one browser, several tests)."""
        self.shots, self._shot = folder, 0

    def _drain(self) -> None:
        """Move what the driver logged since the last call into `console` and `requests`
        (each get_log call hands out an entry once)."""
        self.console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])

    def open(self, page: Path, timeout: float = 15) -> None:
        """Open a file as a reader would (a file: URL)."""
        self.open_url(page.resolve().as_uri(), timeout)

    def open_url(self, url: str, timeout: float = 15) -> None:
        """Open `url` (a file: URL, perhaps with a #fragment) after a blank page whose logs are
        thrown away: what the browser fetched for itself at start is not the page's doing. What
        was gathered on the page before is dropped too: the checks are of this page. A page that
        does not finish loading within `timeout` fails."""
        self.driver.get("about:blank")
        self.driver.get_log("browser")
        self.driver.get_log("performance")
        self.console, self.requests = [], []
        self.driver.get(url)  # returns at DOMContentLoaded (page load strategy "eager")
        deadline = time.monotonic() + timeout
        while self.driver.execute_script("return document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not finish loading within {timeout:g} s")
            time.sleep(0.05)
        self._drain()

    def severe(self) -> list[str]:
        """The console messages at level SEVERE: console.error, an uncaught exception, a failed load."""
        self._drain()
        return [e["message"] for e in self.console if e["level"] == "SEVERE"]

    def outside(self) -> list[str]:
        """Every URL the page requested that is not the file itself or inline: none may be."""
        self._drain()
        timed = self.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") or []
        return sorted({u for u in [*self.requests, *timed] if not u.startswith(LOCAL_SCHEMES)})

    def wait_outside(self, seconds: float = 5) -> list[str]:
        """`outside`, given a request the page started a moment to show up in the logs."""
        deadline = time.monotonic() + seconds
        while not (found := self.outside()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    def assert_clean(self) -> None:
        severe, outside = self.severe(), self.outside()
        assert not severe, f"console errors: {severe}"
        assert not outside, f"requests leaving the file: {outside}"

    def screenshot(self, name: str) -> Path:
        """A numbered PNG of the viewport in the test's folder, so the steps read in order."""
        self.shots.mkdir(parents=True, exist_ok=True)
        self._shot += 1
        path = self.shots / f"{self._shot:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@contextmanager
def chromium(shots: Path) -> Iterator[Browser]:
    """A Browser whose screenshots go to `shots`; quits and removes its profile however the caller ends."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="labkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.page_load_strategy = "eager"  # a page whose image hangs must not hang the test
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver, offline = None, os.environ.get("SE_OFFLINE")
    try:
        # An explicit driver path: Selenium then skips Selenium Manager altogether; and should
        # anything ask it all the same, SE_OFFLINE keeps it from reaching out.
        os.environ["SE_OFFLINE"] = "true"
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(10)
        yield Browser(driver, shots)
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        if offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = offline
