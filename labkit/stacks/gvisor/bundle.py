"""The OCI bundle a lab sandbox boots from.

The host's root filesystem, read-only, is the container's root: the host's Python, `ip` and the
lab's own code run inside unchanged. /tmp is a fresh tmpfs, so lab paths that live under /tmp
(a CI checkout, a scratch venv) are bind-mounted back, read-only, at the same place. The network
namespace is the lab's: that is what runsc copies into netstack.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CAPABILITIES = ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHADOWED = ("/tmp", "/dev", "/proc")  # mounted over in the container: host paths below need a bind


def needs_bind(path: Path) -> bool:
    """Whether a host path lies below a mount the container replaces (the mount point itself is not bound)."""
    return any(Path(top) in path.parents for top in SHADOWED)


def spec(netns_path: str | None, args: Sequence[str], visible: Iterable[Path] = (), hostname: str = "labkit") -> dict[str, Any]:
    """An OCI runtime spec; `netns_path` None gives the container a new, empty network namespace."""
    caps = list(CAPABILITIES)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
    ]
    for path in sorted({Path(p).resolve() for p in visible}):
        if needs_bind(path):
            mounts.append({"destination": str(path), "type": "bind", "source": str(path), "options": ["rbind", "ro"]})
    netns: dict[str, str] = {"type": "network"}
    if netns_path is not None:
        netns["path"] = netns_path
    return {
        "ociVersion": "1.0.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": [f"PATH={PATH}"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "inheritable", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
        },
        "root": {"path": "/", "readonly": True},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {"namespaces": [{"type": "pid"}, netns, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
    }


def write(directory: Path, content: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(content, indent=1))
    return directory
