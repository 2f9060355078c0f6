"""The report builder: results.json (results.py, gathered during a conformance run) and the
self-contained index.html conformance matrix (html.py shapes the data, templates/ lay it out with
Jinja2, autoescaped); `labkit report` rebuilds the page and compares two runs."""
