"""The lab's daemons (delay emulator, link sampler) take commands as one JSON line over a unix socket."""

from __future__ import annotations

import json
import socket
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
