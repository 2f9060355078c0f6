"""labkit's pytest plugin: which stacks and variants a check runs on, with what, and what is kept.

Registered as the `pytest11` entry point `labkit.pytest_plugin`; the parts are plugins of their own:
`options` (command line and settings), `hooks` (parametrization, deviations, evidence), `fixtures`.
"""

pytest_plugins = ["labkit.pytest_plugin.hooks", "labkit.pytest_plugin.fixtures", "labkit.pytest_plugin.rtnetlink"]
