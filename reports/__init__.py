"""The report builder. Today a conformance run writes JUnit XML (tox -e conformance); the JSON
results file and the HTML conformance matrix are built here next."""
