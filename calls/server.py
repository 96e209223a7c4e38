"""Signalling and stats for calls: a small HTTP server desanet runs at the NOC.

http.server from the standard library: a call makes a handful of requests a second, and the exporter's own
server is in `exporter/`, which the lab must not import. Each call is a `CallState` keyed by its id; the pages
poll for the other side's description and post one stats sample a second, and the server's answer to a
sample tells the page when to stop.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from desanet.calls.page import PageConfig, render

ROLES = ("village", "farend")
MAX_BODY = 256 * 1024  # an SDP is ~5 kB and a stats sample ~2 kB; anything larger is not ours
_PATH = re.compile(
    r"^/call/(?P<id>[A-Za-z0-9_-]{1,64})(?:/(?P<what>page|signal|stats|event)/(?P<role>village|farend))?$"
)


@dataclass
class CallState:
    """What one call has seen so far; every field is written under the server's lock."""

    config: dict[str, Any]
    opened: dict[str, float] = field(default_factory=dict)  # role -> monotonic time the page was fetched
    signal: dict[str, Any] = field(default_factory=dict)  # role -> {"type", "sdp"}
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {r: [] for r in ROLES})
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {r: [] for r in ROLES})
    stop: bool = False


class CallServer:
    """The HTTP side of calls. `add_call` before a page is opened; `state(id)` to read what arrived."""

    def __init__(self, host: str, port: int = 0):
        self._lock = threading.Lock()
        self._calls: dict[str, CallState] = {}
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="call-server", daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._httpd.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> CallServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_call(self, call_id: str, width: int, height: int, fps: int, kbit: int) -> None:
        with self._lock:
            self._calls[call_id] = CallState(config={"width": width, "height": height, "fps": fps, "kbit": kbit})

    def url(self, call_id: str, role: str) -> str:
        return f"{self.origin}/call/{call_id}/page/{role}"

    def stop_call(self, call_id: str) -> None:
        with self._lock:
            self._calls[call_id].stop = True

    def snapshot(self, call_id: str) -> CallState:
        """A copy of the call's state, safe to read while pages keep posting."""
        with self._lock:
            c = self._calls[call_id]
            return CallState(
                config=dict(c.config),
                opened=dict(c.opened),
                signal=dict(c.signal),
                samples={r: list(v) for r, v in c.samples.items()},
                events={r: list(v) for r, v in c.events.items()},
                stop=c.stop,
            )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per stats post would drown the call's own output

            def _send(self, code: int, body: bytes = b"", ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def _route(self) -> tuple[CallState, str | None, str | None, str] | None:
                m = _PATH.match(self.path.split("?", 1)[0])
                if m is None:
                    self._send(404, b'{"error": "no such path"}')
                    return None
                with server._lock:
                    call = server._calls.get(m["id"])
                if call is None:
                    self._send(404, b'{"error": "no such call"}')
                    return None
                return call, m["what"], m["role"], m["id"]

            def do_GET(self) -> None:
                r = self._route()
                if r is None:
                    return
                call, what, role, call_id = r
                if what == "page" and role:
                    with server._lock:
                        call.opened.setdefault(role, time.monotonic())
                        cfg = PageConfig(call_id=call_id, role=role, **call.config)
                    self._send(200, render(cfg), "text/html; charset=utf-8")
                elif what == "signal" and role:
                    with server._lock:
                        sig = call.signal.get(role)
                    self._send(200, json.dumps(sig).encode()) if sig else self._send(204)
                else:
                    self._send(404, b'{"error": "no such path"}')

            def do_POST(self) -> None:
                r = self._route()
                if r is None:
                    return
                call, what, role, _ = r
                length = int(self.headers.get("Content-Length") or 0)
                if not role or length > MAX_BODY:
                    self._send(400, b'{"error": "bad request"}')
                    return
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self._send(400, b'{"error": "body is not a JSON object"}')
                    return
                now = time.monotonic()
                with server._lock:
                    if what == "signal":
                        call.signal[role] = {"type": body.get("type"), "sdp": body.get("sdp")}
                    elif what == "stats":
                        call.samples[role].append({**body, "received": now})
                    elif what == "event":
                        call.events[role].append({**body, "received": now})
                    stop = call.stop
                self._send(200, json.dumps({"stop": stop}).encode())

        return Handler
