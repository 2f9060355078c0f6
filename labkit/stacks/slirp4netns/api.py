"""slirp4netns's API socket: one JSON request per connection, one JSON reply.

`{"error": {...}}` replies become SlirpApiError with the desc slirp4netns gave, so a duplicate
forward or a malformed request is an exception that says why, not a dict to remember to check.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from labkit.errors import LabError, LabInputError
from labkit.net.addressing import lab_address

ANY = ("0.0.0.0", "::")


class SlirpApiError(LabError):
    def __init__(self, request: object, reply: dict[str, Any]) -> None:
        self.reply = reply
        desc = reply.get("error", {}).get("desc", reply.get("error"))
        super().__init__(f"slirp4netns API refused {request}: {desc}")


class SlirpApi:
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path, self.timeout = path, timeout

    def raw(self, payload: bytes) -> dict[str, Any]:
        """Send `payload` as is and return the decoded reply (errors included, not raised)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(str(self.path))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode(errors="replace")
        try:
            return json.loads(text)
        except ValueError:
            raise LabError(f"slirp4netns API answered {payload[:80]!r} with non-JSON: {text[:200]!r}") from None

    def execute(self, command: str, **arguments: Any) -> dict[str, Any]:
        request = {"execute": command, "arguments": arguments} if arguments else {"execute": command}
        reply = self.raw(json.dumps(request).encode())
        if "error" in reply:
            raise SlirpApiError(request, reply)
        return reply.get("return", reply)

    def add_hostfwd(self, proto: str, host_addr: str, host_port: int, guest_port: int, guest_addr: str | None = None) -> int:
        """Forward host_addr:host_port (proto tcp or udp) to the namespace's guest_port; the id.
        host_addr is an address of the lab host namespace slirp4netns runs in (a lab address,
        loopback, or all of them): the lab opens nothing anywhere else."""
        if host_addr not in ANY:
            try:
                lab_address(host_addr)
            except LabInputError:
                raise LabInputError(
                    f"host_addr {host_addr!r}: allowed: a lab address (198.18.0.0/15, 2001:db8::/32), loopback, 0.0.0.0 or ::"
                ) from None
        args: dict[str, Any] = {"proto": proto, "host_addr": host_addr, "host_port": host_port, "guest_port": guest_port}
        if guest_addr is not None:
            args["guest_addr"] = guest_addr
        return int(self.execute("add_hostfwd", **args)["id"])

    def list_hostfwd(self) -> list[dict[str, Any]]:
        return list(self.execute("list_hostfwd").get("entries", []))

    def remove_hostfwd(self, forward_id: int) -> None:
        self.execute("remove_hostfwd", id=forward_id)
