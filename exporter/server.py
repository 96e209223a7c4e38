"""HTTP for the exporter: /metrics, /probe, /, /-/healthy, /-/reload, behind --web.config.file.

The stdlib threading server keeps the HTTP work off the probing event loop: a scrape renders in its own
thread, so a slow client never delays an echo. What keeps it standing under a flood (measured in
tests/test_load_lab.py: 1,000 concurrent scrapes and 100 /probe requests): a listen queue as deep as the
kernel allows, keep-alive, one render shared by all concurrent scrapes (Coalesced), a cap on connection
threads, and an admission check (admission.py) before any on-demand probe sends a packet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import itertools
import logging
import math
import resource
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from desanet.budget import Refused
from desanet.calls.server import MAX_BODY as MAX_CALL_BODY
from desanet.exporter.admission import Admission, Busy, Refusal
from desanet.exporter.probe_metrics import probe_succeeded, render_probe
from desanet.exporter.rehearse import Rehearsals
from desanet.exporter.scheduler import Monitor
from desanet.exporter.statuspage import render_index, render_village_page
from desanet.exporter.webconfig import Authenticator, WebConfig, WebConfigWatcher
from desanet.probes.icmp import LATENESS_BUCKETS_SECONDS

log = logging.getLogger("desanet.server")
T = TypeVar("T")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTML = "text/html; charset=utf-8"
MODULES = ("icmp", "stamp", "throughput", "snmp", "trace")
MODULE_TIMEOUT = {"icmp": 10.0, "stamp": 10.0, "snmp": 10.0, "trace": 25.0, "throughput": 30.0}
# How long a module's probe itself runs: the rest of the timeout may be spent waiting for a scheduled slot.
MODULE_RUN_SECONDS = {"stamp": 3.5, "trace": 20.0}
TIMEOUT_OFFSET = 0.5  # as blackbox_exporter's --timeout-offset
GZIP_MIN_BYTES = 4096
RENDER_MAX_AGE_SECONDS = 0.5  # a /metrics or status-page body this fresh is served again (Coalesced)
NEW_CONNECTION_GATE = 4  # first requests of new connections read and handled at once (Handler.handle)
SWITCH_INTERVAL_SECONDS = 0.001  # sys.setswitchinterval for the serving process (serve_http says why)
HEAD_SECONDS = 2.0  # for the rest of a first request's head once its first bytes came, inside the gate
FIRST_BYTES_SECONDS = 0.2  # a new client's request follows its connection at once; a silent one waits alone
ADMITTING = 64  # new connections between accept() and their first request's end (Server.process_request)
MAX_CONNECTIONS = 2048  # connection threads at once; beyond, a new connection gets OVERLOADED and is closed
OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: 36\r\n\r\nToo many connections; retry shortly\n"
)


class ReloadState:
    def __init__(self) -> None:
        self.successful = True
        self.last_success = time.time()
        self.last_error: str | None = None


class SelfCollector(Collector):
    """The exporter's own health: config reloads, villages watched, the ICMP engine's counters."""

    def __init__(self, monitor: Monitor, reload: ReloadState, version: str):
        self.monitor = monitor
        self.reload = reload
        self.version = version

    def collect(self) -> Any:
        g = GaugeMetricFamily("desanet_config_last_reload_successful", "1 when the last inventory (re)load succeeded.")
        g.add_metric([], 1 if self.reload.successful else 0)
        yield g
        g = GaugeMetricFamily(
            "desanet_config_last_reload_success_timestamp_seconds", "When the inventory was last loaded successfully."
        )
        g.add_metric([], self.reload.last_success)
        yield g
        g = GaugeMetricFamily("desanet_villages", "Villages this instance probes (its shard).")
        g.add_metric([], len(self.monitor.villages))
        yield g
        info = GaugeMetricFamily("desanet_build_info", "desanet's version; always 1.", labels=["version"])
        info.add_metric([self.version], 1)
        yield info
        if "stamp" in self.monitor.enable:
            yield from self._stamp_schedule()
        if "trace" in self.monitor.enable:
            yield from self._trace_schedule()
        engine = self.monitor.engine
        if engine is not None:
            st = engine.stats
            c = CounterMetricFamily(
                "desanet_icmp_ignored_packets", "ICMP packets the engine ignored, by reason.", labels=["reason"]
            )
            for reason in ("malformed", "foreign", "late"):
                c.add_metric([reason], getattr(st, reason, 0))
            yield c
            c = CounterMetricFamily("desanet_icmp_send_errors", "Echoes the local stack refused to send.")
            c.add_metric([], st.send_errors)
            yield c
            # The probe host's own health: RTTs stay right when it is starved of CPU (kernel stamps), but echoes
            # leave late. Early sends (batching) count as 0. Never reset by `serve`, so a proper counter.
            cumulative = list(itertools.accumulate(st.lateness_histogram))
            h = HistogramMetricFamily(
                "desanet_icmp_send_lateness_seconds",
                "How long after its scheduled time each continuous echo was sent.",
                buckets=[
                    (floatToGoString(b), float(n)) for b, n in zip(LATENESS_BUCKETS_SECONDS, cumulative, strict=True)
                ],
                sum_value=st.lateness_sum_seconds,
            )
            yield h
            g = GaugeMetricFamily(
                "desanet_icmp_batch_window_seconds",
                "How far ahead the ICMP engine sends a batch of due echoes (adapts to the probing rate).",
            )
            g.add_metric([], engine.batch_window)
            yield g

    def _stamp_schedule(self) -> Any:
        """Whether STAMP keeps up with the shard, shard-wide (no village label): a shard that falls behind has
        fewer fresh villages than villages, an oldest result past STAMP_FRESH_PERIODS intervals, and bursts
        waiting while every slot is in flight; those villages' verdicts then judge ICMP's jitter."""
        pool, health = self.monitor.stamp_pool, self.monitor.stamp_health
        yield from _gauges(
            (
                "desanet_stamp_burst_slots",
                "STAMP bursts this shard may run at once (sized from its villages).",
                pool.limit,
            ),
            ("desanet_stamp_bursts_in_flight", "STAMP bursts running now, scheduled and on-demand.", pool.in_use),
            ("desanet_stamp_bursts_waiting", "STAMP bursts due but waiting for a slot.", pool.waiting),
            ("desanet_stamp_villages", "Villages in this shard with a STAMP reflector.", health.villages),
            (
                "desanet_stamp_fresh_villages",
                "Villages whose last STAMP burst is recent enough to count for the verdict (2.5 intervals).",
                health.fresh,
            ),
            (
                "desanet_stamp_oldest_result_age_seconds",
                "Longest any village with a reflector has gone without a STAMP burst (since it joined, if none yet).",
                health.oldest_age_seconds,
            ),
            (
                "desanet_stamp_interval_seconds",
                "Seconds between STAMP bursts to one village (the inventory's).",
                health.interval_seconds,
            ),
        )

    def _trace_schedule(self) -> Any:
        """Whether the traces keep up with the shard, shard-wide (no village label), as STAMP's: a shard that falls
        behind has fewer villages traced within 2.5 intervals than villages, and traces waiting for a slot; its
        degraded-hop figures then describe old paths."""
        pool, health = self.monitor.trace_pool, self.monitor.trace_health
        yield from _gauges(
            ("desanet_trace_slots", "Traces this shard may run at once (sized from its villages).", pool.limit),
            ("desanet_trace_in_flight", "Traces running now, scheduled and on-demand.", pool.in_use),
            ("desanet_trace_waiting", "Traces due but waiting for a slot.", pool.waiting),
            ("desanet_trace_villages", "Villages this shard traces.", health.villages),
            (
                "desanet_trace_fresh_villages",
                "Villages whose last trace is within 2.5 intervals (the schedule keeps their cadence).",
                health.fresh,
            ),
            (
                "desanet_trace_oldest_result_age_seconds",
                "Longest any village has gone without a trace (since it joined, if none yet).",
                health.oldest_age_seconds,
            ),
            (
                "desanet_trace_interval_seconds",
                "Seconds between traces to one village (the inventory's).",
                health.interval_seconds,
            ),
        )


def _gauges(*rows: tuple[str, str, float]) -> Any:
    """One unlabelled gauge family per (name, help, value)."""
    for name, text, value in rows:
        g = GaugeMetricFamily(name, text)
        g.add_metric([], value)
        yield g


class Coalesced(Generic[T]):
    """Concurrent callers share one run of `fn`, and each gets a run that started after it arrived.

    1,000 scrapes at once cost two renders rather than 1,000, and a reload asked for while another is being
    read still re-reads the file. With `max_age_seconds`, a caller also takes a run under way or one that
    finished that recently: the villages' text is re-rendered every few seconds by the scheduler anyway, so
    a /metrics body half a second old says the same, and a flood of scrapes then costs no renders at all.
    Hand-written: functools.cache never expires and futures have no
    "next run" (singleflight in Go's x/sync is the nearest thing, and it shares a run already under way)."""

    def __init__(self, fn: Callable[[], T], *, max_age_seconds: float = 0.0):
        self._fn = fn
        # For renders: a run under way, or one finished less than max_age_seconds ago, is fresh enough.
        self._max_age = max_age_seconds
        self._finished_at = -math.inf
        self._floor = 0  # the first run a caller may be given (invalidate)
        self._cond = threading.Condition()
        self._started = 0
        self._finished = 0
        self._running = False
        self._result: tuple[bool, Any] = (True, None)

    def __call__(self) -> T:
        with self._cond:
            fresh = time.monotonic() - self._finished_at < self._max_age and self._finished >= self._floor
            if fresh and self._result[0]:
                return cast(T, self._result[1])
            target = max(self._floor, self._started + (0 if self._max_age > 0 and self._running else 1))
            while self._finished < target:
                if not self._running and self._started < target:
                    self._started += 1
                    self._running = True
                    self._cond.release()
                    try:
                        result: tuple[bool, Any] = (True, self._fn())
                    except Exception as exc:
                        result = (False, exc)
                    finally:
                        self._cond.acquire()
                        self._running = False
                    self._result, self._finished, self._finished_at = result, self._started, time.monotonic()
                    self._cond.notify_all()
                else:
                    self._cond.wait()
            ok, value = self._result
        if not ok:
            raise value
        return cast(T, value)

    def invalidate(self) -> None:
        """Callers from now on get a run that starts after this call (after a reload, say)."""
        with self._cond:
            self._floor = self._started + 1


@dataclass(frozen=True)
class Body:
    """A response body and, when worth it, its gzip form, made once and sent to every client that shares it."""

    data: bytes
    gz: bytes | None

    @classmethod
    def of(cls, text: str) -> Body:
        data = text.encode()
        return cls(data, gzip.compress(data, compresslevel=1) if len(data) > GZIP_MIN_BYTES else None)


class Handler(BaseHTTPRequestHandler):
    server_version = "desanet"
    # Keep-alive, as Prometheus scrapes: a scraper's connection is already served while a burst of new ones
    # waits in the listen queue. Every response carries Content-Length, which HTTP/1.1 needs.
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may stay silent (handshake, request, keep-alive) before its thread gives up
    # Headers and body leave in two writes; with Nagle on, a kept-alive client's delayed ACK held the body
    # back 40 ms on every scrape. Go's net/http sets TCP_NODELAY too.
    disable_nagle_algorithm = True
    app: App  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def setup(self) -> None:
        self._in_gate = False
        self._admitting = True  # holds one of the server's ADMITTING places (Server.process_request)
        try:
            super().setup()
        except BaseException:
            self._admitted()
            raise

    def handle(self) -> None:
        """The first request of a connection goes through the server's gate; later ones on a kept-alive
        connection (a Prometheus that scrapes) go straight to handle_one_request.

        Nothing is held while waiting on the client: a connection that has sent nothing yet gives its
        admission place back and waits alone (a silent client costs its thread, nothing else). One whose
        bytes are there does its TLS handshake, then is read (HEAD_SECONDS for the rest of its head) and
        answered inside the gate, and leaves it before writing the answer or waiting for a probe."""
        conn = self.connection
        self.close_connection = True
        try:
            if not self._wait_readable():
                return
            if isinstance(conn, ssl.SSLSocket):
                # In the connection's own thread, with the time its head gets; a failure is the client's (a
                # plain-HTTP request, an unknown CA, a port scan), so one line, not a traceback.
                conn.settimeout(HEAD_SECONDS)
                try:
                    conn.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    log.info("TLS handshake failed", extra={"peer": _peer(self.client_address), "reason": _reason(exc)})
                    return
                conn.settimeout(self.timeout)
                if not self._wait_readable():
                    return
            self.server.gate.acquire()  # type: ignore[attr-defined]
            self._in_gate = True
            conn.settimeout(HEAD_SECONDS)
            self.handle_one_request()
        finally:
            self._leave_gate()
            self._admitted()
        while not self.close_connection:
            self.handle_one_request()

    def _wait_readable(self) -> bool:
        """Whether the client has sent something, waiting up to `timeout` for it; an admission place is
        held for FIRST_BYTES_SECONDS at most, then given back for the rest of the wait (poll: no FD_SETSIZE
        limit, no interpreter lock held while waiting)."""
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket) and conn.pending():
            return True
        poller = select.poll()
        poller.register(conn, select.POLLIN | select.POLLPRI)
        if poller.poll(FIRST_BYTES_SECONDS * 1000 if self._admitting else 0):
            return True
        self._admitted()
        return bool(poller.poll(self.timeout * 1000))

    def _admitted(self) -> None:
        if self._admitting:
            self._admitting = False
            self.server.admitting.release()  # type: ignore[attr-defined]

    def _send(
        self,
        status: int,
        body: bytes | str | Body,
        ctype: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(body, Body):
            body = Body.of(body) if isinstance(body, str) else Body(body, None)
        data = body.data
        headers = dict(headers or {})
        if body.gz is not None and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            data = body.gz
            headers["Content-Encoding"] = "gzip"
        self._leave_gate()  # a client slow to read its answer holds its own thread, not the gate
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.app.auth().check(self.headers.get("Authorization")):
            return True
        self._send(HTTPStatus.UNAUTHORIZED, "Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="desanet"'})
        return False

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _leave_gate(self) -> None:
        """Leave the gate (see handle()). A flood of new connections has at most NEW_CONNECTION_GATE threads
        contending for the interpreter, instead of 1,000, and a scraper's request is answered in
        milliseconds while the flood is worked through in order."""
        if self._in_gate:
            self._in_gate = False
            self.connection.settimeout(self.timeout)
            self.server.gate.release()  # type: ignore[attr-defined]
            self._admitted()

    def _guarded(self, fn: Callable[[], None]) -> None:
        """A bug in one request is that request's 500 and one log line; the server and the probes go on."""
        try:
            fn()
        except (BrokenPipeError, ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True
        except Exception as exc:
            log.error("request failed", extra={"path": self.path[:200], "reason": _reason(exc)})
            self.close_connection = True
            with contextlib.suppress(Exception):
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal error; see the exporter's log\n")
        finally:
            self._leave_gate()

    def _get(self) -> None:
        if Rehearsals.handles(urlsplit(self.path).path):
            self._rehearsal(None)
            return
        if not self._authorized():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/metrics":
            self._send(HTTPStatus.OK, self.app.metrics_body(), CONTENT_TYPE)
        elif url.path == "/probe":
            self._probe(query)
        elif url.path == "/":
            self._send(HTTPStatus.OK, self.app.status_body(next(iter(query.get("village") or []), None)), HTML)
        elif url.path == "/-/healthy":
            self._send(HTTPStatus.OK, "Healthy\n")
        elif url.path == "/-/ready":
            ok = self.app.monitor.ready.is_set()
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "Ready\n" if ok else "Starting\n")
        elif url.path == "/-/reload":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, "Only POST is allowed here.\n", headers={"Allow": "POST"})
        else:
            self._send(HTTPStatus.NOT_FOUND, "Not found\n")

    def _post(self) -> None:
        length = self.headers.get("Content-Length")
        body = None
        if length and length.isdigit() and int(length) <= MAX_CALL_BODY:
            body = self.rfile.read(int(length))  # read even if unused, so a kept-alive connection stays in step
        elif length or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
        if Rehearsals.handles(urlsplit(self.path).path):
            self._rehearsal(body)
            return
        if not self._authorized():
            return
        if urlsplit(self.path).path != "/-/reload":
            self._send(HTTPStatus.NOT_FOUND, "Not found\n")
            return
        error = self.app.reload()
        if error is None:
            self._send(HTTPStatus.OK, "Reloaded\n")
        else:
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"Reload failed; still serving the previous inventory:\n{error}\n"
            )

    def _rehearsal(self, body: bytes | None) -> None:
        """/rehearse/VILLAGE and the call pages' requests (exporter/rehearse.py): behind auth like the rest,
        but for the far end's own requests, which carry their call's key (serve keeps no password to give it)."""
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        rehearsals = self.app.rehearsals
        if not rehearsals.farend_request(url.path, query) and not self._authorized():
            return
        self._leave_gate()  # admission writes the ledger and a call page polls: no reason to hold the gate
        r = rehearsals.answer(self.command, url.path, query, body, self.headers.get("Accept-Language"))
        self._send(r.status, r.body, r.ctype, r.headers)

    def _probe(self, query: dict[str, list[str]]) -> None:
        target = (query.get("target") or [""])[0]
        module = (query.get("module") or ["icmp"])[0]  # absent: icmp; present but empty: refused below
        if module not in MODULES:
            self._send(HTTPStatus.BAD_REQUEST, f"Unknown module {module!r}; one of {', '.join(MODULES)}\n")
            return
        inv = self.app.monitor.inventory
        slugs = {v.slug for v in inv.villages}
        if target not in slugs:
            # Never probe what the inventory does not name: /probe must not become a scanner.
            self._send(
                HTTPStatus.BAD_REQUEST,
                f"Unknown target {target!r}: /probe answers only for village slugs in the inventory\n",
            )
            return
        timeout = MODULE_TIMEOUT[module]
        with contextlib.suppress(ValueError):
            scrape = float(self.headers.get("X-Prometheus-Scrape-Timeout-Seconds") or "nan")
            if math.isfinite(scrape):
                timeout = min(timeout, max(0.5, scrape - TIMEOUT_OFFSET))
        self._leave_gate()  # waiting seconds for a probe's result costs no interpreter time
        outcome = self.app.probe(target, module, timeout)
        if isinstance(outcome, Refusal):
            retry = {"Retry-After": outcome.retry_after} if outcome.status != HTTPStatus.FORBIDDEN else None
            self._send(outcome.status, outcome.reason + "\n", headers=retry)
        else:
            self._send(HTTPStatus.OK, outcome, CONTENT_TYPE)


def budget_refusal(exc: Refused) -> Refusal:
    """The HTTP answer to a throughput test the budget refused, with the budget's words as the body.

    Not blackbox's probe_success 0: a refusal measured nothing, and a 0 would read as a failed link. 403 when
    the inventory does not allow on-demand tests (asking again will not help); 429 over the village's
    on-demand allowance, rate or daily budget (RFC 6585); 503 while the uplink is busy or a session runs;
    500 when the ledger needs a person. Prometheus shows the status as the scrape's error (up 0)."""
    status = {
        "disabled": HTTPStatus.FORBIDDEN,
        "uplink_busy": HTTPStatus.SERVICE_UNAVAILABLE,
        "session": HTTPStatus.SERVICE_UNAVAILABLE,
        "ledger": HTTPStatus.INTERNAL_SERVER_ERROR,
    }.get(exc.reason, HTTPStatus.TOO_MANY_REQUESTS)
    return Refusal(int(status), exc.retry_after if exc.retry_after is not None else 60.0, f"refused: {exc}")


def _peer(addr: Any) -> str:
    try:
        return f"{addr[0]}:{addr[1]}"
    except (TypeError, IndexError):
        return str(addr)


def _reason(exc: BaseException) -> str:
    """One line for a log: OpenSSL's reason, the errno's words, or the exception's first line."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class App:
    def __init__(
        self,
        monitor: Monitor,
        loop: asyncio.AbstractEventLoop,
        reload_fn: Callable[[], str | None],
        reload_state: ReloadState,
        web: WebConfigWatcher | None,
        version: str,
        district: str,
    ):
        self.monitor = monitor
        self.loop = loop
        self._reload = Coalesced(reload_fn)  # concurrent POSTs share a reload that started after they came
        self.reload_state = reload_state
        self.web = web
        self.admission = Admission()
        self.rehearsals = Rehearsals(lambda: self.monitor.inventory)  # serve_http tells it where serve listens
        self.registry = CollectorRegistry(auto_describe=False)
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(c)
        self.registry.register(SelfCollector(monitor, reload_state, version))
        self.registry.register(HttpCollector(self))
        self.district = district
        self.metrics_body = Coalesced(lambda: Body.of(self.metrics()), max_age_seconds=RENDER_MAX_AGE_SECONDS)
        self._status: dict[str | None, Coalesced[Body]] = {}
        self._status_lock = threading.Lock()

    def reload(self) -> str | None:
        """Re-read the inventory (None, or why not); the next /metrics and status page show the outcome."""
        try:
            return self._reload()
        finally:
            self.metrics_body.invalidate()
            with self._status_lock:
                for render in self._status.values():
                    render.invalidate()

    def auth(self) -> Authenticator:
        return self.web.current().auth if self.web is not None else _OPEN

    def metrics(self) -> str:
        return self.monitor.render() + self.rehearsals.render() + generate_latest(self.registry).decode()

    def status_body(self, village: str | None) -> Body:
        key = village if village in self.monitor.villages else None  # one render per page, however many ask
        with self._status_lock:
            render = self._status.get(key)
            if render is None:
                render = self._status[key] = Coalesced(
                    lambda: Body.of(self.status_page(key)), max_age_seconds=RENDER_MAX_AGE_SECONDS
                )
        return render()

    def status_page(self, village: str | None) -> str:
        if village and village in self.monitor.villages:
            return render_village_page(self.monitor.villages[village])
        return render_index(
            list(self.monitor.villages.values()), self.district, self.monitor.started, self.reload_state.successful
        )

    def probe(self, slug: str, module: str, timeout: float) -> str | Refusal:
        """One on-demand probe within the admission limits, or the refusal that says why not."""
        t0 = time.monotonic()
        refusal = self.admission.admit(slug, module, t0)
        if refusal is not None:
            log.debug("on-demand probe refused", extra={"village": slug, "probe": module, "reason": refusal.reason})
            return refusal
        try:
            return self._probe(slug, module, timeout, t0)
        except Busy as exc:
            return self.admission.busy(slug, module, exc)
        except Refused as exc:  # a throughput test the budget would not start: nothing was sent
            return self.admission.refund(slug, module, budget_refusal(exc), exc.reason)
        finally:
            self.admission.done()

    def _probe(self, slug: str, module: str, timeout: float, t0: float) -> str:
        wait = max(0.0, timeout - MODULE_RUN_SECONDS.get(module, timeout))
        fut = asyncio.run_coroutine_threadsafe(self.monitor.probe_on_demand(slug, module, wait), self.loop)
        vs = self.monitor.villages.get(slug)
        try:
            result = fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            if vs:
                vs.log(f"probe:{module}", False, f"timed out after {timeout:.1f} s", on_demand=True)
            return render_probe(module, None, False, time.monotonic() - t0)
        except (Busy, Refused):
            raise
        except Exception as exc:
            if vs:
                vs.log(f"probe:{module}", False, f"{type(exc).__name__}: {exc}", on_demand=True)
            log.warning("on-demand probe failed", extra={"village": slug, "probe": module, "reason": str(exc)})
            return render_probe(module, None, False, time.monotonic() - t0)
        ok = probe_succeeded(module, result)
        if vs:
            vs.log(f"probe:{module}", ok, "on demand", on_demand=True)
        return render_probe(module, result, ok, time.monotonic() - t0)


class HttpCollector(Collector):
    """The HTTP side's own defences, so an operator sees them work: refusals, reloads of the web config."""

    def __init__(self, app: App):
        self.app = app

    def collect(self) -> Any:
        c = CounterMetricFamily(
            "desanet_probe_requests_refused",
            "On-demand /probe requests refused: rate (over the village's allowance), busy (every slot in use), or "
            "for module throughput the budget's reason (disabled, on_demand_budget, budget, rate_limit, uplink_busy, "
            "session, ledger).",
            labels=["module", "reason"],
        )
        for (module, reason), n in sorted(self.app.admission.refused.items()):
            c.add_metric([module, reason], n)
        yield c
        web = self.app.web
        if web is not None:
            c = CounterMetricFamily(
                "desanet_web_config_reloads",
                "Changes of --web.config.file or its certificate files picked up (success) or refused (failure).",
                labels=["result"],
            )
            c.add_metric(["success"], web.reloads)
            c.add_metric(["failure"], web.failures)
            yield c


class _Open(Authenticator):
    def __init__(self) -> None:
        super().__init__(WebConfig())

    def check(self, header: str | None) -> bool:
        return True


_OPEN = _Open()


def parse_listen(addr: str) -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port`; a ValueError with the reason otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--web.listen-address {addr!r}: write HOST:PORT or :PORT, e.g. :9917")
    return (host.strip("[]") or "0.0.0.0"), int(port)


class Server(ThreadingHTTPServer):
    """The stdlib threading server with the limits a monitor on a village network needs."""

    daemon_threads = True
    # The stdlib's 5 overflowed at once under 1,000 concurrent scrapes (682 resets); the kernel caps this at
    # net.core.somaxconn (4096 since Linux 5.4), as Go's net/http takes it.
    request_queue_size = 4096
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[Handler], web: WebConfigWatcher | None):
        self.web = web
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.gate = threading.Semaphore(NEW_CONNECTION_GATE)
        self.admitting = threading.BoundedSemaphore(ADMITTING)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        if self.web is not None and self.web.tls:
            # Each connection gets the context current now, so a renewed certificate serves the next client
            # without a restart. The handshake itself runs in the connection's thread (Handler.handle).
            ctx = self.web.current().ssl_context
            assert ctx is not None
            try:
                sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ssl.SSLError):
                sock.close()
                raise
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Past MAX_CONNECTIONS threads a new connection is turned away at once: memory stays bounded and
            # kept-alive connections (the Prometheus that scrapes) keep being served.
            with contextlib.suppress(OSError):
                if not isinstance(request, ssl.SSLSocket):
                    request.sendall(OVERLOADED)
            self.shutdown_request(request)
            return
        # At most ADMITTING new connections between accept() and the end of their first request (or their
        # first wait on the client): the rest of a flood waits in the listen queue, not as hundreds of
        # threads that all want the interpreter and the address space at once (stalls of every thread, the
        # scraper's included, of 137-259 ms with 800-950 started).
        self.admitting.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.admitting.release()
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line per failed connection (the stdlib prints a traceback to stderr)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | ssl.SSLError):
            log.debug("connection failed", extra={"peer": _peer(client_address), "reason": _reason(exc)})
        elif exc is not None:
            log.error("connection failed", extra={"peer": _peer(client_address), "reason": _reason(exc)})


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, as Go programs do at start: systemd's soft 1024 would make
    accept() fail with EMFILE under MAX_CONNECTIONS concurrent clients long before the hard 524288."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


def serve_http(app: App, listen: str, web: WebConfigWatcher | None) -> Server:
    """Bind now (a taken port fails before any probe runs); serve requests once start_serving is called."""
    raise_open_files_limit()
    # A thread that wants the interpreter waits up to one switch interval per contender each time it blocks
    # and wakes (every recv and send): 5 ms by default put a scraper's answer 100 ms and more behind a flood's
    # gated threads, and an echo's send behind a render. 1 ms costs a little throughput for that latency.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    handler = type("BoundHandler", (Handler,), {"app": app})
    httpd = Server(parse_listen(listen), handler, web)
    host, port = httpd.server_address[:2]
    app.rehearsals.listening(str(host), int(port), web)
    return httpd


def start_serving(httpd: Server, listen: str) -> None:
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    log.info("listening", extra={"address": listen, "tls": bool(httpd.web and httpd.web.tls)})
