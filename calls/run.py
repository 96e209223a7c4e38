"""One call, start to end: the call server and the far end's Chromium here, the village's Chromium behind a
command prefix (the lab: `ip netns exec <village ns>`), stats collected until the call's time is up.

Run it where the far end lives (the lab runs `python -m desanet.calls.run` inside the NOC namespace). It returns
raw per-second `getStats()` samples; judging them is verdict/call_outcome.py's job.

One call at a time on a host (a lock file): a starved CPU looks like congestion to Chrome's delay-based
estimator, and two calls are four browsers.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from desanet.calls import y4m
from desanet.calls.browser import Browser, find_chromium
from desanet.calls.server import ROLES, CallDesk, CallServer

LOCK_PATH = Path("/run/lock/desanet-call.lock")


@dataclass(frozen=True)
class CallSpec:
    """The picture and bitrate of the profile, how long to call and how long to wait for it to connect."""

    width: int = 640
    height: int = 360
    fps: int = 30
    kbit: int = 1000
    seconds: float = 30.0
    connect_timeout: float = 10.0  # setup takes ~3 s here; a blackholed village must be told within 15 s
    start_timeout: float = 120.0  # a person's page (the rehearsal): time to choose a source and allow the camera


@dataclass
class CallRun:
    """What happened: connected or why not, the setup time and each side's per-second samples."""

    connected: bool = False
    error: str | None = None
    failure: str | None = None  # why not connected or ended early: path, signalling, media, page, browser
    setup_s: float | None = None
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # per browser, over the whole call
    rss_bytes: dict[str, int] = field(default_factory=dict)  # per browser, at the end of the call
    seconds: float = 0.0
    # The host's 1-minute load average at the start and end of the call, and its CPUs: a starved CPU looks like
    # congestion to Chrome (measured: a clean 640x360 lab call froze 8 % of the time at load 17 on 2 cores).
    host_load: list[float] = field(default_factory=list)
    host_cpus: int = 0


class CallError(Exception):
    """The call could not be made at all (no Chromium, another call holding the lock)."""


@contextlib.contextmanager
def one_call_at_a_time(wait: float, path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold the host's call lock, waiting up to `wait` seconds for a call under way to finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CallError(f"another call is under way on this host (lock {path}); one at a time") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _state_of(events: list[dict[str, Any]]) -> str | None:
    states = [e["connection"] for e in events if "connection" in e]
    return states[-1] if states else None


def _errors(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["error"]) for e in events if "error" in e]


def run_call(bind: str, village_prefix: list[str], spec: CallSpec, binary: str | None = None) -> CallRun:
    """Make one call from the village's browser to a far end here; never raises for a call that fails."""
    chromium = binary or find_chromium()
    if chromium is None:
        raise CallError("no Chromium found (install Debian's chromium, or set DESANET_CHROMIUM)")
    with one_call_at_a_time(wait=spec.seconds + 60):
        server = CallServer(bind).start()
        try:
            call_id = uuid.uuid4().hex[:12]
            server.add_call(call_id, spec.width, spec.height, spec.fps, spec.kbit)
            return make_call(server.desk, server.origin, call_id, spec, chromium, village_prefix=village_prefix)
        finally:
            with _signals_held():
                server.close()


class CallAbandoned(CallError):
    """The village's page, opened by a person, never started the call (nothing chosen, camera refused)."""


def make_call(
    desk: CallDesk,
    origin: str,
    call_id: str,
    spec: CallSpec,
    chromium: str,
    *,
    village_prefix: list[str] | None = None,
    farend_query: str = "",
    farend_args: Sequence[str] = (),
    cancel: threading.Event | None = None,
) -> CallRun:
    """One call on `desk` (served at `origin`, with `call_id` added) between the far end started here and the
    village's page; what the lab call and the exporter's rehearsal share. The caller holds the host's lock.

    With `village_prefix` the village's browser is started here too (the lab: `ip netns exec NS`), and the
    connect deadline counts from before either browser starts. Without it the village's page is a person's
    browser that already has the page (the rehearsal): the deadline counts from the moment that page says its
    camera or test pattern is ready, which may take the person up to `spec.start_timeout`; CallAbandoned if
    it never does. `farend_query` and `farend_args` are for the far end's page URL and Chromium (its key and
    TLS pin in the exporter); `cancel` ends the call early (serve shutting down)."""
    with tempfile.TemporaryDirectory(prefix="desanet-call-") as tmp:
        video = y4m.write(Path(tmp) / "pattern.y4m", spec.width, spec.height, spec.fps)
        run = CallRun(host_load=[round(os.getloadavg()[0], 2)], host_cpus=os.cpu_count() or 1)
        browsers: dict[str, Browser] = {}
        page = f"{origin}/call/{call_id}/page"
        try:
            t0 = time.monotonic()
            # Held while each starts: a Ctrl-C between Popen and the assignment would leave a browser unknown
            # to the cleanup below (seen: the village's Chromium left running after a Ctrl-C).
            with _signals_held():
                browsers["farend"] = Browser.start(
                    chromium, f"{page}/farend{farend_query}", origin, video, extra=farend_args
                )
            if village_prefix is not None:
                with _signals_held():
                    browsers["village"] = Browser.start(
                        chromium, f"{page}/village", origin, video, prefix=village_prefix
                    )
            else:
                t0 = _wait_started(desk, call_id, browsers, spec.start_timeout, cancel)
            failure = _wait_connected(desk, origin, call_id, browsers, t0, spec.connect_timeout, cancel)
            if failure is None:
                run.connected = True
                run.setup_s = round(time.monotonic() - t0, 3)
                failure = _wait_call(browsers, spec.seconds, cancel)
            if failure is not None:
                run.failure, run.error = failure
            for role, b in browsers.items():
                run.cpu_s[role], run.rss_bytes[role] = b.usage()
            run.host_load.append(round(os.getloadavg()[0], 2))
            desk.stop_call(call_id)
            time.sleep(1.5)  # the pages' next stats post learns to hang up
            snap = desk.snapshot(call_id)
            run.samples, run.events = snap.samples, snap.events
            run.seconds = round(time.monotonic() - t0, 3)
        finally:
            with _signals_held():
                for b in browsers.values():
                    b.stop()
        return run


# Ctrl-C and SIGTERM (main() routes both here) while browsers start or stop are held until that is done: a
# second signal (the terminal's Ctrl-C reaches this process and `lab call`, which then sends SIGTERM too) must
# not leave a browser running or a profile behind. A flag, not pthread_sigmask: the kernel hands a signal to
# any thread that does not block it (the HTTP server's), and Python then runs the handler in the main thread.
_HOLD = {"depth": 0, "pending": 0}


def _interrupt(signum: int, frame: Any) -> None:
    if _HOLD["depth"]:
        _HOLD["pending"] = 1
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    _HOLD["depth"] += 1
    try:
        yield
    finally:
        _HOLD["depth"] -= 1
        if not _HOLD["depth"] and _HOLD["pending"]:
            _HOLD["pending"] = 0
            raise KeyboardInterrupt


def _exited(browsers: dict[str, Browser]) -> tuple[str, str] | None:
    for role, b in browsers.items():
        code = b.proc.poll()
        if code is not None:
            return "browser", f"the {role}'s Chromium exited with code {code}: {b.log_tail(3)}"
    return None


def _wait_started(
    desk: CallDesk, call_id: str, browsers: dict[str, Browser], timeout: float, cancel: threading.Event | None
) -> float:
    """When the village's page (a person's browser) had its camera or test pattern ready: its "media" event.

    CallAbandoned when it does not within `timeout` (nothing chosen, the tab closed), reports an error first
    (the camera refused), or the far end's browser dies meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = desk.snapshot(call_id)
        for e in snap.events["village"]:
            if "media" in e:
                return float(e["received"])
        errors = _errors(snap.events["village"])
        if errors:
            raise CallAbandoned(f"the village's page did not start the call: {errors[0]}")
        gone = _exited(browsers)
        if gone:
            raise CallError(gone[1])
        if cancel is not None and cancel.wait(0.2):
            raise CallAbandoned("interrupted before the call started")
        if cancel is None:
            time.sleep(0.2)
    raise CallAbandoned(f"the village's page did not start the call within {timeout:.0f} s")


def _wait_connected(
    desk: CallDesk,
    origin: str,
    call_id: str,
    browsers: dict[str, Browser],
    t0: float,
    timeout: float,
    cancel: threading.Event | None = None,
) -> tuple[str, str] | None:
    """None once both ends say 'connected', else why not: a one-word kind (for calls/words.py) and the reason
    in words a technician can act on."""
    while True:
        snap = desk.snapshot(call_id)
        states = {r: _state_of(snap.events[r]) for r in ROLES}
        if all(s == "connected" for s in states.values()):
            return None
        errors = [f"{r}: {e}" for r in ROLES for e in _errors(snap.events[r])]
        if errors:
            return "page", "the call page failed: " + "; ".join(errors)
        if "failed" in states.values():
            return "media", "the call's media path failed (ICE) although signalling worked: UDP does not get through"
        gone = _exited(browsers)
        if gone:
            return gone
        if cancel is not None and cancel.is_set():
            return "interrupted", "interrupted"
        waited = time.monotonic() - t0
        if waited > timeout:
            if "village" not in snap.opened:
                return "path", (
                    f"the village's browser did not reach the far end at {origin} within {timeout:.0f} s: "
                    "the path to the NOC is down or blocked"
                )
            if "farend" not in snap.signal:
                return "signalling", (
                    f"signalling with the far end did not finish within {timeout:.0f} s (the path drops requests)"
                )
            return "media", (
                f"the call did not connect within {timeout:.0f} s (signalled, but no media path: UDP blocked?)"
            )
        time.sleep(0.2)


def _wait_call(browsers: dict[str, Browser], seconds: float, cancel: threading.Event | None) -> tuple[str, str] | None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        gone = _exited(browsers)
        if gone:
            return gone
        if cancel is not None and cancel.wait(0.5):
            return "interrupted", "interrupted"
        if cancel is None:
            time.sleep(0.5)
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m desanet.calls.run`: one call, its raw record as JSON on stdout (the lab runs this in the NOC)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--bind", required=True, help="address of the call server, reachable from the village")
    p.add_argument("--village-ns", help="network namespace of the village's browser (lab)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--kbit", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    a = p.parse_args(argv)
    prefix = ["ip", "netns", "exec", a.village_ns] if a.village_ns else []
    spec = CallSpec(a.width, a.height, a.fps, a.kbit, a.seconds, a.connect_timeout)
    # SIGTERM (from `desanet lab call` on Ctrl-C or its deadline) unwinds like Ctrl-C, so run_call's cleanup
    # stops both browsers by PID and removes their profiles; neither cuts that cleanup short (_signals_held).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        run = run_call(a.bind, prefix, spec)
    except KeyboardInterrupt:
        print(json.dumps({"connected": False, "error": "interrupted", "could_not_call": True}))
        return 130
    except (CallError, OSError, ValueError) as exc:
        print(json.dumps({"connected": False, "error": str(exc), "could_not_call": True}))
        return 2
    print(json.dumps(asdict(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
