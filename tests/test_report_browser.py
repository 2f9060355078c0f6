"""The report page of a real small run, opened in headless Chromium and used as a person would:
a filter clicked, a search typed, a finding and a frame opened, each time checking what is on
screen; and the page may neither log a console error nor request anything from outside the file.

The run: the ARP checks on linux, on linux with arp_ignore=8 (examples.arp_ignore) and on a stack
that is never installed, with a manifest of our own. That gives every kind of row the page sorts:
a pass, a failure (arp_ignore answers no ARP request, unannounced), a known deviation (announced),
an unexpected pass (a deviation claimed for linux that does not happen) and skips, with the Wire's
pcap and expects for each. It takes about 10 s.

The harness is checked on its own first: a console error, an uncaught exception and an image
from the network, put into a page, are each caught. Screenshots of every step go to the test's
tmp_path (screenshots/); keep them with --basetemp.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from .browser import Browser, chromium, unavailable
from .conftest import run_pytest

ANSWERS = "linkdispatch/test_arp.py::test_answers_who_has_for_own_address"
IGNORES = "linkdispatch/test_arp.py::test_ignores_who_has_for_address_it_does_not_own"
MANIFEST = (
    f'[[deviation]]\nstack = "linux-arpignore"\ncheck = "{ANSWERS}"\nreason = "arp_ignore=8 answers no ARP request"\n'
    f'[[deviation]]\nstack = "linux"\ncheck = "{IGNORES}"\nreason = "claimed, but it is not so"\n'
)
CLEAN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>t</title>
<style>body{font-family:sans-serif}</style></head><body><h1>a page that keeps to itself</h1>
<img alt="dot" src="data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw==">
<details><summary>more</summary><p>inside</p></details>
<script>document.querySelector('h1').dataset.ran = '1';</script></body></html>
"""
OFFENCES = {
    "console-error": ('<script>console.error("labkit-injected-error")</script>', "labkit-injected-error", None),
    "uncaught": ('<script>throw new Error("labkit-injected-throw")</script>', "labkit-injected-throw", None),
    "image-from-the-network": ('<img alt="x" src="http://198.18.0.1/x">', None, "http://198.18.0.1/x"),
    "fetch": ('<script>fetch("http://198.18.0.1/api").catch(() => {})</script>', None, "http://198.18.0.1/api"),
}

# A machine without the browser skips, naming the install command; CI installs it (tox's tests env
# runs `labkit doctor --install --for tests`), so there a missing browser fails instead of hiding.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true")
pytestmark = pytest.mark.skipif(unavailable() is not None and not IN_CI, reason=unavailable() or "")


@pytest.fixture(scope="module")
def _chromium(tmp_path_factory):
    """One browser for the module (it takes a second to start); each test opens its own page."""
    with chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


@pytest.fixture
def browser(_chromium, tmp_path):
    _chromium.shots_to(tmp_path / "screenshots")
    yield _chromium
    try:
        _chromium.screenshot("last")  # how the page was left, passed or failed
    except Exception:  # the browser may be what failed; the screenshot is a courtesy
        pass


@pytest.fixture(scope="module")
def arp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("arp-run")
    manifest = out / "deviations.toml"
    manifest.write_text(MANIFEST)
    done = run_pytest(
        "suites/linkdispatch/test_arp.py",
        "--stack", "linux,examples.arp_ignore:ArpIgnoreLinux,tests.drivers:MissingStack",
        "--deviations", str(manifest),
        "--lab-report", str(out),
        "--lab-evidence", str(out / "evidence"),
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]  # the failure on arp_ignore
    assert (out / "index.html").is_file(), "the run wrote no page: " + done.stdout[-3000:]
    return out


def _page(tmp_path, source, extra: str):
    """A copy of a page with `extra` just before </body>."""
    text = source.read_text() if hasattr(source, "read_text") else source
    assert "</body>" in text
    path = tmp_path / "page.html"
    path.write_text(text.replace("</body>", extra + "</body>", 1))
    return path


@pytest.mark.parametrize("page", ["small", "report"])
def test_a_clean_page_passes_the_harness(browser: Browser, tmp_path, page, request):
    source = request.getfixturevalue("arp_run") / "index.html" if page == "report" else CLEAN_PAGE
    browser.open(_page(tmp_path, source, ""))
    browser.screenshot("clean")
    browser.assert_clean()


@pytest.mark.parametrize("page", ["small", "report"])
@pytest.mark.parametrize("offence", list(OFFENCES))
def test_the_harness_catches_what_a_page_does_wrong(browser: Browser, tmp_path, page, offence, request):
    source = request.getfixturevalue("arp_run") / "index.html" if page == "report" else CLEAN_PAGE
    markup, console, url = OFFENCES[offence]
    browser.open(_page(tmp_path, source, markup))
    browser.screenshot(offence)
    if console is not None:
        assert any(console in m for m in browser.severe()), browser.console
    if url is not None:
        assert url in browser.wait_outside(), browser.requests
    with pytest.raises(AssertionError):
        browser.assert_clean()


def _visible_checks(browser: Browser) -> set[str]:
    """The checks whose rows are on screen; read in one go, so the page cannot change between the
    reads, and checked against the rows' `hidden` attribute (the contract: hidden means hidden)."""
    rows = browser.driver.execute_script(
        "return Array.from(document.querySelectorAll('table.matrix tr.check'))"
        ".map(r => [r.getAttribute('data-check'), r.hasAttribute('hidden'), r.checkVisibility()]);"
    )
    for check, hidden, shown in rows:
        assert hidden != shown, f"{check}: hidden attribute {hidden}, on screen {shown}"
    return {check for check, _, shown in rows if shown}


def _settles_on(browser: Browser, expected: set[str], seconds: float = 3) -> set[str]:
    """The visible checks once the page has caught up (the search waits for typing to pause)."""
    deadline = time.monotonic() + seconds
    while (seen := _visible_checks(browser)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def _shown_count(browser: Browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.driver.find_element(By.ID, "matrix-shown").text.strip()


def test_filters_search_findings_and_frames_work_in_the_browser(arp_run, browser: Browser):
    from selenium.webdriver.common.by import By

    driver = browser.driver
    browser.open(arp_run / "index.html")
    browser.screenshot("opened")
    browser.assert_clean()
    assert browser.driver.find_elements(By.CSS_SELECTOR, "table.matrix tr.check"), "no check rows (table.matrix tr.check)"
    assert _visible_checks(browser) == {ANSWERS, IGNORES}

    # Filters: each shows the rows with a cell of its kind, and says how many.
    for name, expected in [
        ("deviations", {ANSWERS}),
        ("failures", {IGNORES}),
        ("unexpected", {IGNORES}),
        ("all", {ANSWERS, IGNORES}),
    ]:
        buttons = driver.find_elements(By.CSS_SELECTOR, f'button.filter[data-filter="{name}"]')
        assert len(buttons) == 1, f'{len(buttons)} button.filter[data-filter="{name}"]'
        button = buttons[0]
        button.click()
        browser.screenshot(f"filter-{name}")
        assert button.get_attribute("aria-pressed") == "true", name
        assert _settles_on(browser, expected) == expected, name
        assert _shown_count(browser) == f"{len(expected)} of 2 checks", name

    # Search: by a part of the check's name; nothing matching hides the group rows too.
    search = driver.find_element(By.ID, "matrix-search")
    search.send_keys("does_not_own")
    assert _settles_on(browser, {IGNORES}) == {IGNORES}
    browser.screenshot("search")
    assert _shown_count(browser) == "1 of 2 checks"
    search.clear()
    search.send_keys("no-check-is-called-this")
    assert _settles_on(browser, set()) == set()
    groups = driver.find_elements(By.CSS_SELECTOR, "table.matrix tr.suite, table.matrix tr.feature")
    assert groups and not any(g.is_displayed() for g in groups)
    search.clear()
    search.send_keys(" ")  # clear() fires no input event; a space and a backspace do
    search.send_keys("\b")
    assert _settles_on(browser, {ANSWERS, IGNORES}) == {ANSWERS, IGNORES}

    # Findings: one each, closed; opening one shows its evidence and the Wire's frames.
    findings = {f.get_attribute("data-status"): f for f in driver.find_elements(By.CSS_SELECTOR, "details.finding")}
    assert set(findings) == {"failed", "known deviation", "unexpected pass"}, f"details.finding by data-status: {list(findings)}"
    assert all(f.get_attribute("id").startswith("finding-") for f in findings.values())
    failed = findings["failed"]
    frames = failed.find_element(By.CSS_SELECTOR, 'div.frames[data-source="wire"]')
    assert not frames.is_displayed()
    failed.find_element(By.CSS_SELECTOR, ":scope > summary").click()
    browser.screenshot("finding-open")
    assert failed.get_property("open") and frames.is_displayed()

    # A frame: one line until clicked, then its full decode. The expect's closest frame is marked.
    closest = frames.find_element(By.CSS_SELECTOR, "details.frame.closest")
    decode = closest.find_element(By.CSS_SELECTOR, "pre.decode")
    assert not decode.is_displayed()
    line = closest.find_element(By.CSS_SELECTOR, ":scope > summary")
    assert "stack" in line.text  # the direction: → stack / ← stack
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", line)
    line.click()
    browser.screenshot("frame-open")
    assert decode.is_displayed() and decode.text.strip()

    # The deviation came closest with a field that differed, highlighted; the unexpected pass matched.
    deviation = findings["known deviation"]
    deviation.find_element(By.CSS_SELECTOR, ":scope > summary").click()
    assert deviation.find_elements(By.CSS_SELECTOR, 'div.frames[data-source="wire"] details.frame.closest mark.differs')
    unexpected = findings["unexpected pass"]
    unexpected.find_element(By.CSS_SELECTOR, ":scope > summary").click()
    assert unexpected.find_elements(By.CSS_SELECTOR, 'div.frames[data-source="wire"] details.frame.matched')
    browser.screenshot("all-open")
    browser.assert_clean()


def test_the_browser_is_debians_and_selenium_manager_is_not_used(browser: Browser):
    """The driver is the one Debian ships, given by path: Selenium Manager was never asked."""
    assert browser.driver.service.path == "/usr/bin/chromedriver"
    shipped = subprocess.run(["/usr/bin/chromedriver", "--version"], capture_output=True, text=True, timeout=30).stdout
    assert browser.driver.capabilities["chrome"]["chromedriverVersion"].split()[0] in shipped
    assert os.environ.get("SE_OFFLINE") == "true"
    assert not (Path.home() / ".cache" / "selenium").exists() or not list(
        (Path.home() / ".cache" / "selenium").rglob("chromedriver*")
    )


def test_a_cell_link_a_shared_link_and_the_changed_filter_lead_to_the_finding(arp_run, browser: Browser, tmp_path):
    """What a reader does with a link: a matrix cell opens its finding; a link someone sent
    (`index.html#finding-...`) opens on that finding; "changed" shows the cells that moved since
    the previous run. And the failing check's finding shows the stack's end of the veth too."""
    import json
    import sys

    from selenium.webdriver.common.by import By

    data = json.loads((arp_run / "results.json").read_text())
    previous = json.loads(json.dumps(data))
    for r in previous["results"]:
        if r["check"] == IGNORES and r["status"] == "failed":
            r["status"] = "passed"  # last night it passed: the one changed cell
    (tmp_path / "previous.json").write_text(json.dumps(previous))
    out = tmp_path / "page"
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "report", str(arp_run / "results.json"), "--previous", str(tmp_path / "previous.json"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    driver = browser.driver
    browser.open(out / "index.html")

    changed = driver.find_element(By.CSS_SELECTOR, 'button.filter[data-filter="changed"]')
    changed.click()
    assert _settles_on(browser, {IGNORES}) == {IGNORES}
    assert _shown_count(browser) == "1 of 2 checks"
    browser.screenshot("changed")

    failed_cell = driver.find_element(By.CSS_SELECTOR, f'tr.check[data-check="{IGNORES}"] td[data-status="failed"] a')
    target = failed_cell.get_attribute("href").split("#", 1)[1]
    assert target.startswith("finding-")
    failed_cell.click()
    finding = driver.find_element(By.ID, target)
    deadline = time.monotonic() + 3
    while not finding.get_property("open") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert finding.get_property("open"), "the cell's link did not open its finding"
    assert finding.get_attribute("data-status") == "failed"
    assert finding.find_elements(By.CSS_SELECTOR, 'div.frames[data-source="sandbox"] details.frame'), (
        "no capture of the stack's end"
    )
    browser.screenshot("cell-link")

    deviation = driver.find_element(By.CSS_SELECTOR, 'details.finding[data-status="known deviation"]').get_attribute("id")
    browser.open_url(f"{(out / 'index.html').as_uri()}#{deviation}")
    shared = driver.find_element(By.ID, deviation)
    assert shared.get_property("open"), "a link to a finding did not open it"
    top = driver.execute_script("return arguments[0].getBoundingClientRect().top", shared)
    assert 0 <= top < driver.execute_script("return window.innerHeight"), "the finding is not in view"
    browser.screenshot("shared-link")
    browser.assert_clean()
