# This checkout's suites and tests use labkit's pytest plugin through the thin `fixtures` folder.
pytest_plugins = ["fixtures"]
