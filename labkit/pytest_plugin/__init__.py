"""labkit's pytest plugin: which stacks and variants a check runs on, with what, and what is kept.

Registered as the `pytest11` entry point `labkit.pytest_plugin`; the parts are plugins of their own:
`options` (command line and settings), `hooks` (parametrization, deviations, evidence), `order`
(the random order, its record and replay), `fixtures`, `rtnetlink` (that suite's fixtures).
"""

pytest_plugins = [
    "labkit.pytest_plugin.order",  # first: the others import it, and a plugin must be registered before it is imported
    "labkit.pytest_plugin.hooks",
    "labkit.pytest_plugin.fixtures",
    "labkit.pytest_plugin.rtnetlink",
]
