"""Network namespaces the lab owns, made without forking and entered per thread.

`ip netns add` and pyroute2's `netns.create` fork a helper per namespace; a thread that unshares
its own network namespace and bind-mounts it under /run/netns does the same job in well under a
millisecond, which is what makes a fresh topology per test affordable.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from labkit.errors import LabError, LabInputError
from labkit.uapi import CLONE_NEWNET, MNT_DETACH, MS_BIND, MS_REC, MS_SHARED, check, libc

NETNS_DIR = Path("/run/netns")


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind `fd`."""
    check(libc.setns(fd, CLONE_NEWNET), "setns")


@contextmanager
def entered(fd: int, name: str = "") -> Iterator[None]:
    """Run the body with the calling thread in the network namespace behind `fd` (one of a
    NetNS, or a socket's from SIOCGSKNS), then go back; `name` says which in the error."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(fd)
        except OSError as exc:
            raise LabError(f"cannot enter netns {name or f'fd {fd}'}: setns failed: {exc}") from None
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def _ensure_netns_dir() -> None:
    # Like iproute2: /run/netns must be a shared mount point so namespace mounts propagate.
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    if libc.mount(b"", bytes(NETNS_DIR), b"none", MS_SHARED | MS_REC, None) != 0:
        if ctypes.get_errno() != errno.EINVAL:
            check(-1, f"make {NETNS_DIR} shared")
        check(libc.mount(bytes(NETNS_DIR), bytes(NETNS_DIR), b"none", MS_BIND | MS_REC, None), "bind /run/netns")
        check(libc.mount(b"", bytes(NETNS_DIR), b"none", MS_SHARED | MS_REC, None), "make /run/netns shared")


class NetNS:
    """A named network namespace (the `ip netns` kind), owned by whoever created it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    @classmethod
    def create(cls, name: str) -> NetNS:
        _ensure_netns_dir()
        ns = cls(name)
        fd = os.open(ns.path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
        failure: list[BaseException] = []

        def make() -> None:
            try:
                check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
                check(libc.mount(b"/proc/thread-self/ns/net", bytes(ns.path), b"none", MS_BIND, None), "bind netns")
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)

        t = threading.Thread(target=make, name=f"netns-{name}")
        t.start()
        t.join()
        if failure:
            ns.path.unlink(missing_ok=True)
            raise LabError(f"cannot create netns {name}: {failure[0]}")
        return ns

    @classmethod
    def attach(cls, name: str, pid: int) -> NetNS:
        """Give a name to the network namespace of process `pid` (`ip netns attach NAME PID`),
        e.g. one a user+net namespace holder made, so the lab can enter it like its own."""
        try:
            pyroute2_netns.attach(name, pid)
        except OSError as exc:
            (NETNS_DIR / name).unlink(missing_ok=True)
            raise LabError(f"cannot name the netns of pid {pid} as {name}: {exc}") from None
        return cls(name)

    def exists(self) -> bool:
        return os.path.ismount(self.path)

    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def open(self) -> int:
        """An fd on the namespace, e.g. for `net_ns_fd` or a child's setns."""
        return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with the calling thread inside this namespace, then go back. Failing to
        get in is a LabError naming the namespace; the body's own errors pass as they are."""
        try:
            target = self.open()
        except OSError as exc:
            raise LabError(f"cannot enter netns {self.name}: {exc}") from None
        try:
            with entered(target, self.name):
                yield
        finally:
            os.close(target)

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        """A socket that lives in this namespace, whatever thread uses it later."""
        with self.entered():
            return socket.socket(family, type, proto)

    def iproute(self) -> IPRoute:
        """A pyroute2 IPRoute bound to this namespace (its netlink socket is made inside)."""
        with self.entered():
            return IPRoute()

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one (what `ip netns pids` shows)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        mine = (st.st_ino, st.st_dev)
        return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _netns_of(int(e.name)) == mine]

    def delete(self) -> None:
        """Unmount and remove the name; the namespace dies with its last process or socket."""
        if libc.umount2(bytes(self.path), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
            check(-1, f"umount {self.path}")
        self.path.unlink(missing_ok=True)


def _netns_of(pid: int) -> tuple[int, int] | None:
    """(inode, device) of the network namespace of process `pid`. A thread-group leader that has
    exited while its other threads run (runsc's sandbox can) has no readable ns link of its own:
    its threads' links say where the process is."""
    for path in (f"/proc/{pid}/ns/net", *sorted(glob.glob(f"/proc/{pid}/task/*/ns/net"))):
        try:
            s = os.stat(path)
        except OSError:
            continue
        return s.st_ino, s.st_dev
    return None


def list_names() -> list[str]:
    """The names under /run/netns (what `ip netns list` shows)."""
    return sorted(pyroute2_netns.listnetns())


def lab_host(netns: NetNS) -> NetNS:
    """`netns`, if the lab made it (its name carries an owner tag): where a user-space stack's
    process may run and bind, since whatever it opens there stays in the lab."""
    from labkit.lifecycle.owner import Owner

    if Owner.parse(netns.name) is None:
        raise LabInputError(
            f"host namespace {netns.name!r}: allowed: a namespace the lab made (labkit-RUN-PID-...), never one it did not"
        )
    return netns
