"""What the tools containers use make of a stack's rtnetlink answers.

Run inside a stack (`python -m labkit.rtnetlink.clients`): `ip -j` (iproute2) and pyroute2's IPRoute ask
for links, addresses, routes, neighbours and one lookup, and each outcome is written as data: the
exit code and first error line, or the exception, and a short summary of what was listed. The
rtnetlink suite compares it with the same run in a kernel namespace, so "ip route fails inside
runsc" is a finding of its own, even where the raw answers differ only in a detail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from labkit.rtnetlink import inside

IP_COMMANDS = {
    "ip link": ["link", "show"],
    "ip addr": ["addr", "show"],
    "ip route": ["route", "show"],
    "ip -6 route": ["-6", "route", "show"],
    "ip neigh": ["neigh", "show"],
}


def _summary(what: str, data: Any) -> list[str]:
    if what in ("ip link",):
        return sorted(item.get("ifname", "?") for item in data)
    if what == "ip addr":
        return sorted(f"{a.get('local')}/{a.get('prefixlen')}" for item in data for a in item.get("addr_info", []))
    if what.startswith("ip route") or what.startswith("ip -6 route") or what.startswith("ip route get"):
        return sorted(f"{r.get('dst')} via {r.get('gateway', '-')} dev {r.get('dev')}" for r in data)
    return sorted(f"{n.get('dst')} {n.get('lladdr', '-')}" for n in data)


def run_ip(what: str, argv: list[str]) -> dict[str, Any]:
    try:
        done = subprocess.run(["ip", "-j", *argv], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {"rc": done.returncode}
    if done.returncode:
        out["error"] = (done.stderr.strip().splitlines() or [""])[0]
        return out
    try:
        out["listed"] = _summary(what, json.loads(done.stdout or "[]"))
    except ValueError as exc:
        out["error"] = f"unparsable JSON from ip: {exc}: {done.stdout[:200]!r}"
    return out


def _route(r: Any, names: dict[int, str]) -> str:
    dst = f"{r.get_attr('RTA_DST') or 'default'}/{r['dst_len']}"
    dev = names.get(r.get_attr("RTA_OIF"), r.get_attr("RTA_OIF"))
    return f"{dst} table {r.get_attr('RTA_TABLE') or r['table']} via {r.get_attr('RTA_GATEWAY') or '-'} dev {dev}"


def run_pyroute2() -> dict[str, Any]:
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            names = {link["index"]: str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
            return {
                "links": sorted(names.values()),
                "addrs": sorted(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr()),
                "routes4": sorted(_route(r, names) for r in ipr.get_routes(family=2)),
                "routes6": sorted(_route(r, names) for r in ipr.get_routes(family=10)),
            }
    except Exception as exc:  # a client library breaking on the answers is the finding
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str]) -> int:
    lookups = argv  # destinations for `ip route get`
    out = {what: run_ip(what, cmd) for what, cmd in IP_COMMANDS.items()}
    for dst in lookups:
        out[f"ip route get {dst}"] = run_ip(f"ip route get {dst}", ["route", "get", dst])
    out["pyroute2 IPRoute"] = run_pyroute2()
    json.dump(out, sys.stdout)
    return 0


def ask(stack: Any, lookups: list[str]) -> dict[str, dict[str, Any]]:
    """Run the clients inside `stack` (through its `run`)."""
    return dict(inside.run_json(stack, "labkit.rtnetlink.clients", lookups, 60))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
