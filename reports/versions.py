"""What a run ran on, as name -> version: each stack, the kernel, Python and the packages the lab
builds and reads frames with. A verdict that changes with one of these is news of another kind
than one that changes on the same software, so the page lists version changes with the other
changes since the previous run, and the matrix's "changed" filter counts a cell whose stack
changed version.
"""

from __future__ import annotations

from typing import Any

# Libraries whose behaviour is part of what the lab sends and how it reads what came back.
LAB_PACKAGES = ("scapy", "pyroute2")


def installed_packages() -> dict[str, str]:
    """The versions of LAB_PACKAGES in this interpreter (recorded in a run's description)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in LAB_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def stack_version(info: dict[str, Any]) -> str:
    """A stack's version as the page shows it: what the program says, with the short digest of
    its binary where one is known (two builds may print the same version)."""
    version = str(info.get("version") or "")
    digest = str(info.get("digest") or "")
    if not info.get("available", True) or not version:
        return ""  # not there, or a results.json from before labkit asked: no version to compare
    return f"{version} sha256:{digest}" if digest else version


def versions(run: dict[str, Any]) -> dict[str, str]:
    """Everything that may explain a changed verdict, flat: `stack gvisor`, `kernel`, `scapy`..."""
    out = {f"stack {s}": stack_version(info) for s, info in sorted(run.get("stacks", {}).items())}
    out["kernel"] = str(run.get("kernel") or "")
    out["python"] = str(run.get("python") or "")
    for name, v in sorted((run.get("packages") or {}).items()):
        out[name] = str(v)
    if run.get("commit"):
        out["labkit"] = str(run["commit"])[:12]
    return out


def version_changes(run: dict[str, Any], previous: dict[str, Any]) -> list[dict[str, str]]:
    """What is not the same version as in the previous run. A name only one run gives a version
    for is left out: a stack installed or taken away, or one labkit learnt to ask, is not a new
    version of it."""
    now, before = versions(run), versions(previous)
    return [{"name": n, "was": before[n], "now": now[n]} for n in now if now[n] and before.get(n) and before[n] != now[n]]


def stacks_changed(run: dict[str, Any], previous: dict[str, Any]) -> set[str]:
    """The stacks whose version or binary differ from the previous run's."""
    return {c["name"].removeprefix("stack ") for c in version_changes(run, previous) if c["name"].startswith("stack ")}
