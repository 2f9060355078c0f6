"""pyroute2's IPRoute as a program calls it, run inside a stack: what each call gives its caller.

Run inside the stack under test (`python -m labkit.rtnetlink.pyroute2_calls CALLS-JSON`), each call
of a list is made in order on one IPRoute, and what the caller got is written as data: the
result, cut down to what a program reads from it (a link's name and MTU, an address and its
prefix, a route's destination, gateway and device, an ACK), or the exception. A NetlinkError
with an errno is a clean refusal a program can handle; any other exception is a program that
crashes on the stack's answer, which is the finding the rtnetlink suite looks for when it
compares the same calls on the kernel.

A call is data: {"name": "addr add v4", "call": ["addr", "add"], "kwargs": {...}}; a value
{"ifindex_of": NAME} in the kwargs is the index of that link inside the namespace, so one list
of calls means the same thing on both sides. Interface indexes in results become names.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Iterable
from typing import Any

from labkit.rtnetlink import inside

Call = dict[str, Any]

NUD = {0x01: "incomplete", 0x20: "failed", 0x40: "noarp", 0x80: "permanent", 0x00: "none"}
DYNAMIC_NUD = "dynamic"  # reachable, stale, delay, probe: they move with time, not with the stack


def _flag_names(value: int) -> str:
    """Link flags by name, as `ip link` prints them (any other bit in hex)."""
    from labkit.rtnetlink.differ import IFF_NAMES, flag_names

    return flag_names(value, IFF_NAMES)


def summarise(message: Any, names: dict[int, str]) -> str:
    """What a program reads from one message pyroute2 handed it, as one line."""
    event = message.get("event") if hasattr(message, "get") else None
    attr = message.get_attr

    def dev(index: Any) -> Any:
        return names.get(index, f"ifindex {index}") if isinstance(index, int) and index else index

    if event == "NLMSG_ERROR":
        return "ack" if not message.get("error") else f"error {message.get('error')}"
    if event == "RTM_NEWLINK":
        return (
            f"link {attr('IFLA_IFNAME')} mtu {attr('IFLA_MTU')} flags {_flag_names(message['flags'])} type {message['ifi_type']}"
            f" address {attr('IFLA_ADDRESS')} broadcast {attr('IFLA_BROADCAST')} operstate {attr('IFLA_OPERSTATE')}"
            f" txqlen {attr('IFLA_TXQLEN')}"
        )
    if event == "RTM_NEWADDR":
        return (
            f"addr {attr('IFA_ADDRESS')}/{message['prefixlen']} dev {dev(message['index'])} family {message['family']}"
            f" scope {message['scope']} local {attr('IFA_LOCAL')} label {attr('IFA_LABEL')} broadcast {attr('IFA_BROADCAST')}"
        )
    if event == "RTM_NEWROUTE":
        return (
            f"route {attr('RTA_DST') or 'default'}/{message['dst_len']} family {message['family']}"
            f" table {attr('RTA_TABLE') or message['table']} type {message['type']} proto {message['proto']}"
            f" scope {message['scope']} via {attr('RTA_GATEWAY')} dev {dev(attr('RTA_OIF'))} src {attr('RTA_PREFSRC')}"
            f" metric {attr('RTA_PRIORITY')}"
        )
    if event == "RTM_NEWNEIGH":
        state = NUD.get(message["state"], DYNAMIC_NUD)
        return f"neigh {attr('NDA_DST')} dev {dev(message['ifindex'])} lladdr {attr('NDA_LLADDR')} {state}"
    return f"{event}"


def _resolve(value: Any, ipr: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"ifindex_of"}:
        found = ipr.link_lookup(ifname=value["ifindex_of"])
        if not found:
            raise LookupError(f"no link named {value['ifindex_of']!r} to resolve")
        return found[0]
    if isinstance(value, dict):
        return {k: _resolve(v, ipr) for k, v in value.items()}
    return value


def outcome_of(exc: BaseException) -> dict[str, Any]:
    """How a call failed: a NetlinkError by its errno name, anything else by its type."""
    from pyroute2 import NetlinkError

    if isinstance(exc, NetlinkError) and isinstance(exc.code, int):
        return {"raised": "NetlinkError", "errno": errno.errorcode.get(exc.code, str(exc.code)), "text": str(exc)[:300]}
    return {"raised": type(exc).__name__, "text": str(exc)[:300]}


def make(ipr: Any, call: Call, names: dict[int, str]) -> dict[str, Any]:
    """One call, as the program would write it; its result or exception as data."""
    method, *args = call["call"]
    try:
        kwargs = _resolve(call.get("kwargs", {}), ipr)
        result = getattr(ipr, method)(*args, **kwargs)
        messages: Iterable[Any] = [] if result is None else result if not isinstance(result, (str, bytes)) else [result]
        return {"result": sorted(summarise(m, names) if hasattr(m, "get_attr") else repr(m) for m in messages)}
    except Exception as exc:  # a program's view: whatever reached it
        return outcome_of(exc)


def main(argv: list[str]) -> int:
    calls: list[Call] = json.loads(argv[0])
    out: dict[str, Any] = {}
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for call in calls:
                # Names as they are now: a call may add or remove a link.
                names = {link["index"]: str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
                out[call["name"]] = make(ipr, call, names)
    except Exception as exc:  # IPRoute() itself, or the link dump every call needs
        out["_ipr"] = outcome_of(exc)
    json.dump(out, sys.stdout)
    return 0


def ask(stack: Any, calls: list[Call], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """Make `calls` inside `stack` (through its `run`): each call's name -> its outcome."""
    return dict(inside.run_json(stack, "labkit.rtnetlink.pyroute2_calls", [json.dumps(calls)], timeout))


def compare(kernel: dict[str, Any], stack: dict[str, Any]) -> list[Any]:
    """Each call's outcome side by side: how it ended (a result, which errno, which exception),
    then the lines of its result one side lacks. Exception texts are shown, not compared."""
    from labkit.rtnetlink.differ import Difference

    out: list[Difference] = []
    for name in [*kernel, *(n for n in stack if n not in kernel)]:
        k, s = kernel.get(name, {"raised": "not called"}), stack.get(name, {"raised": "not called"})
        if ending(k) != ending(s):
            out.append(Difference(f"pyroute2 {name}", "outcome", describe(k), describe(s)))
        elif "result" in k:
            missing = [line for line in k["result"] if line not in s["result"]]
            extra = [line for line in s["result"] if line not in k["result"]]
            if missing or extra or len(k["result"]) != len(s["result"]):
                out.append(Difference(f"pyroute2 {name}", "result", missing or k["result"], extra or s["result"]))
    return out


def ending(outcome: dict[str, Any]) -> str:
    """What a caller branches on: a result, or the exception's type and errno."""
    if "result" in outcome:
        return "result"
    return " ".join(str(outcome[k]) for k in ("raised", "errno") if k in outcome)


def describe(outcome: dict[str, Any]) -> str:
    if "result" in outcome:
        return f"result {outcome['result']}"
    return f"{ending(outcome)}: {outcome.get('text', '')}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
