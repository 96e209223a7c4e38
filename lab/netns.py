"""Entering network namespaces from Python without a subprocess per action.

A network namespace is a property of a thread, and a socket keeps the namespace it was created in. So a
short-lived thread that calls setns(2) can create sockets (or write /proc/sys/net files) inside any lab
namespace, and the rest of the process stays where it was. Python 3.11 has no os.setns, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _setns(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread that has entered namespace `name`; return its result or raise its error."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _setns(NETNS_DIR / name)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def socket_in_netns(name: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    return run_in_netns(name, lambda: socket.socket(family, type_, proto))


def write_sysctls(name: str, values: dict[str, str]) -> None:
    """Write net.* sysctls of one namespace (keys like 'ipv4/ip_forward', relative to /proc/sys/net)."""

    def write() -> None:
        for key, value in values.items():
            path = Path("/proc/sys/net") / key
            try:
                path.write_text(value)
            except FileNotFoundError:
                continue  # e.g. IPv6 absent from this kernel

    run_in_netns(name, write)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
