"""The report builder: results.json (results.py, gathered during a conformance run) and the
self-contained index.html conformance matrix (html.py); `labkit report` rebuilds the page and
compares two runs."""
