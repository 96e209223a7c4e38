"""The lab's daemons (delay emulator, link sampler) take commands as one JSON line over a unix socket."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any


def control_request(path: Path, payload: dict[str, Any], who: str, timeout: float) -> dict[str, Any]:
    """Send one command line and read one reply line; a reply without `ok` raises with the daemon's words."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall((json.dumps(payload) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data or b"{}")
    if not reply.get("ok"):
        raise RuntimeError(f"{who}: {reply.get('error', 'no answer')}")
    return reply


def control_listen(path: Path) -> socket.socket:
    """The daemon's side: a non-blocking unix socket at `path` (a stale one from a crash is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    server.setblocking(False)
    return server


def control_answer(server: socket.socket, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Accept one pending command, answer it with `handle(request)`; bad input is an error reply, never a crash."""
    try:
        conn, _ = server.accept()
    except OSError:
        return
    with conn:
        conn.settimeout(2)
        try:
            resp = handle(json.loads(conn.makefile("r").readline() or "{}"))
        except (ValueError, OSError) as exc:
            resp = {"ok": False, "error": str(exc)}
        with contextlib.suppress(OSError):
            conn.sendall((json.dumps(resp) + "\n").encode())
