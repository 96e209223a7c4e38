"""Signalling and stats for calls: `CallDesk` answers the call page's requests, `CallServer` serves it over HTTP.

The desk knows no transport (`handle(method, path, body)` in, status, type and bytes out), so the exporter can
mount it on its own server behind its TLS and basic auth for the rehearsal page, while the lab serves it with
http.server from the standard library: a call makes a handful of requests a second, and the exporter's server
is in `exporter/`, which the lab must not import. Each call is a `CallState` keyed by its id; the pages poll
for the other side's description and post one stats sample a second, and the answer to a sample tells the page
when to stop.
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
    r"^/call/(?P<id>[A-Za-z0-9_-]{1,64})(?:/(?P<what>page|signal|stats|event|outcome)/(?P<role>village|farend))?$"
)
JSON = "application/json"
_PEER_KEYS = ("t", "in_video", "in_audio")
Answer = tuple[int, str, bytes]  # status, content type, body


@dataclass
class CallState:
    """What one call has seen so far; every field is written under the desk's lock."""

    config: dict[str, Any]
    opened: dict[str, float] = field(default_factory=dict)  # role -> monotonic time the page was fetched
    signal: dict[str, Any] = field(default_factory=dict)  # role -> {"type", "sdp"}
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {r: [] for r in ROLES})
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {r: [] for r in ROLES})
    stop: bool = False
    pages: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> PageConfig fields beyond the picture
    outcome: dict[str, Any] | None = None  # the judged call in words, for the page (the rehearsal sets it)


def _error(code: int, words: str) -> Answer:
    return code, JSON, json.dumps({"error": words}).encode()


class CallDesk:
    """The calls under way and the answers to their pages; thread-safe, no I/O of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, CallState] = {}

    def add_call(
        self, call_id: str, width: int, height: int, fps: int, kbit: int, pages: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """A call the pages may now open; `pages` gives a role's page more of PageConfig (language, source...)."""
        with self._lock:
            self._calls[call_id] = CallState(
                config={"width": width, "height": height, "fps": fps, "kbit": kbit}, pages=dict(pages or {})
            )

    def page(self, call_id: str, role: str) -> Answer:
        """The page for `role`, noting when it was first opened (the exporter serves the village's itself)."""
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                return _error(404, "no such call")
            call.opened.setdefault(role, time.monotonic())
            cfg = PageConfig(call_id=call_id, role=role, **call.config, **call.pages.get(role, {}))
        return 200, "text/html; charset=utf-8", render(cfg)

    def set_outcome(self, call_id: str, outcome: dict[str, Any]) -> None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is not None:
                call.outcome = outcome

    def calls(self) -> list[str]:
        with self._lock:
            return list(self._calls)

    def remove_call(self, call_id: str) -> None:
        with self._lock:
            self._calls.pop(call_id, None)

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
                pages={r: dict(v) for r, v in c.pages.items()},
                outcome=c.outcome,
            )

    def handle(self, method: str, path: str, body: bytes | None = None) -> Answer:
        """One request: GET a page or the other side's description, POST a description, a sample or an event.
        Bad input is answered with one line of JSON and changes nothing."""
        path, _, query = path.partition("?")
        m = _PATH.match(path)
        if m is None or not m["role"]:
            return _error(404, "no such path")
        call_id, what, role = m["id"], m["what"], m["role"]
        with self._lock:
            call = self._calls.get(call_id)
        if call is None:
            return _error(404, "no such call")
        if method in ("GET", "HEAD"):
            if what == "page":
                return self.page(call_id, role)
            if what in ("signal", "outcome"):
                with self._lock:
                    doc = call.signal.get(role) if what == "signal" else call.outcome
                return (200, JSON, json.dumps(doc).encode()) if doc else (204, JSON, b"")
            return _error(405, "only POST is allowed here")
        if method != "POST" or what in ("page", "outcome"):
            return _error(405, "method not allowed")
        if body is None or len(body) > MAX_BODY:
            return _error(400, "bad request")
        try:
            doc = json.loads(body or b"{}")
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError:
            return _error(400, "body is not a JSON object")
        now = time.monotonic()
        with self._lock:
            if what == "signal":
                call.signal[role] = {"type": doc.get("type"), "sdp": doc.get("sdp")}
            elif what == "stats":
                call.samples[role].append({**doc, "received": now})
            else:
                call.events[role].append({**doc, "received": now})
            answer: dict[str, Any] = {"stop": call.stop}
            if what == "stats" and "peer=1" in query.split("&"):
                # The rehearsal page shows both directions live: what the other end receives is the other half.
                other = call.samples[ROLES[1 - ROLES.index(role)]]
                answer["peer"] = {k: other[-1][k] for k in _PEER_KEYS if k in other[-1]} if other else None
        return 200, JSON, json.dumps(answer).encode()


class CallServer:
    """A `CallDesk` on its own HTTP port (the lab's far end). `add_call` before a page is opened."""

    def __init__(self, host: str, port: int = 0, desk: CallDesk | None = None):
        self.desk = desk or CallDesk()
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

    def url(self, call_id: str, role: str) -> str:
        return f"{self.origin}/call/{call_id}/page/{role}"

    def add_call(self, call_id: str, width: int, height: int, fps: int, kbit: int) -> None:
        self.desk.add_call(call_id, width, height, fps, kbit)

    def stop_call(self, call_id: str) -> None:
        self.desk.stop_call(call_id)

    def snapshot(self, call_id: str) -> CallState:
        return self.desk.snapshot(call_id)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        desk = self.desk

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per stats post would drown the call's own output

            def _answer(self, answer: Answer) -> None:
                code, ctype, body = answer
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body and self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(desk.handle("GET", self.path))

            def do_POST(self) -> None:
                length = self.headers.get("Content-Length") or "0"
                if not length.isdigit() or int(length) > MAX_BODY:
                    self.close_connection = True  # the body is not read: the connection cannot be reused
                    self._answer(desk.handle("POST", self.path, None))
                    return
                self._answer(desk.handle("POST", self.path, self.rfile.read(int(length))))

        return Handler
