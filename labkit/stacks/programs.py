"""What a stack's binary is: where it lies, the version it says it is, and a digest of it.

A run may compare builds of one stack (Debian's runsc beside a nightly, `labkit.stacks.builds`),
so each column names the file it ran, the version that file reports and a short sha256 of it: two
builds that print the same version are still told apart. A binary that prints no version (pasta
says "unknown version") is dated by the Debian package that owns it; a copy that no package owns
says so. Everything read from a file is read once per version of it: cached by path, inode, size
and mtime, so a binary replaced in place is read again, and the per-check availability test costs
a stat.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from labkit.errors import LabError

T = TypeVar("T")
DIGEST_LENGTH = 12  # hex digits of sha256 shown: enough to tell builds apart at a glance
_cache: dict[tuple[str, str, tuple[int, ...]], object] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Program:
    path: str  # absolute, as the lab runs it: a symlink is kept (pasta picks its mode from argv[0])
    version: str  # what it prints, else its Debian package's version, else why there is none
    digest: str  # the first DIGEST_LENGTH hex digits of the sha256 of its content


def locate(binary: str) -> str | None:
    """The absolute path of `binary` (a path, or a name looked up on PATH) if it is an executable
    file; the path is made absolute but not resolved, so the file name the lab runs it by stays."""
    if os.sep in binary:
        path = os.path.abspath(binary)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(binary)


def _stamp(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def cached(what: str, path: str, compute: Callable[[str], T]) -> T:
    """`compute(path)`, once per version of the file (`what` names the question asked of it)."""
    key = (what, path, _stamp(path))
    with _lock:
        if key in _cache:
            return _cache[key]  # type: ignore[return-value]
    value = compute(path)
    with _lock:
        _cache[key] = value
    return value


def output(argv: list[str], timeout: float = 10.0) -> str:
    """What a short query of a binary prints (stdout and stderr); a failure to run it, a timeout
    or a non-zero exit raises a LabError that names the command."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)} failed: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv)} exited {done.returncode}: {last[-1] if last else '(no output)'}")
    return done.stdout + done.stderr


def digest(path: str) -> str:
    def compute(p: str) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:DIGEST_LENGTH]

    return cached("digest", path, compute)


def package_of(path: str) -> tuple[str, str] | None:
    """(package, version) of the Debian package that installed `path` (or the file it links to),
    None when no package owns it (a copy, a build of one's own) or there is no dpkg."""

    def compute(p: str) -> tuple[str, str] | None:
        for candidate in dict.fromkeys([p, os.path.realpath(p)]):
            try:
                found = output(["dpkg-query", "-S", candidate])
            except LabError:
                continue
            for line in found.splitlines():
                names, sep, owned = line.rpartition(": ")
                if sep and owned.strip() == candidate and not line.startswith("diversion "):
                    package = names.split(",")[0].strip()
                    try:
                        version = output(["dpkg-query", "-W", "-f=${Version}", package]).strip()
                    except LabError:
                        version = ""
                    return package, version
        return None

    return cached("package", path, compute)


def identify(path: str, printed: Callable[[str], str | None]) -> Program:
    """The Program at `path`; `printed(path)` is the version the binary itself reports (None when
    it prints none; a LabError when it cannot even say that, which is passed on)."""
    version = cached(f"version:{printed.__qualname__}", path, printed)
    if version is None:
        owner = package_of(path)
        if owner is not None:
            version = f"{owner[1] or 'unknown'} (Debian package {owner[0]})"
        else:
            version = f"unknown: {os.path.basename(path)} prints none and no Debian package owns {path}"
    return Program(path, version, digest(path))


def first_line_version(path: str) -> str | None:
    """`PATH --version`'s last word on its first line ("runsc version 0.0~20221219.0"), None
    when it says it does not know ("pasta unknown version")."""
    lines = [ln.strip() for ln in output([path, "--version"]).splitlines() if ln.strip()]
    if not lines or "unknown version" in lines[0]:
        return None
    return lines[0].split()[-1]
