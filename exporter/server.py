"""HTTP for the exporter: /metrics, /probe, /, /-/healthy, /-/reload, behind --web.config.file.

The stdlib threading server is enough here (a few scrapes a minute and a status page) and keeps the HTTP
work off the probing event loop: a scrape renders in its own thread, so a slow client never delays an echo.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from desanet.exporter.probe_metrics import probe_succeeded, render_probe
from desanet.exporter.scheduler import Monitor
from desanet.exporter.statuspage import render_index, render_village_page
from desanet.exporter.webconfig import Authenticator, WebConfig, WebConfigError, parse_web_config
from desanet.probes.icmp import LATENESS_BUCKETS_SECONDS

log = logging.getLogger("desanet.server")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MODULES = ("icmp", "stamp", "throughput", "snmp", "trace")
MODULE_TIMEOUT = {"icmp": 10.0, "stamp": 10.0, "snmp": 10.0, "trace": 25.0, "throughput": 30.0}
TIMEOUT_OFFSET = 0.5  # as blackbox_exporter's --timeout-offset


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


class Handler(BaseHTTPRequestHandler):
    server_version = "desanet"
    timeout = 30  # seconds a client may stay silent (handshake, request) before its thread gives up
    app: App  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def _send(
        self,
        status: int,
        body: bytes | str,
        ctype: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        if len(data) > 4096 and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            data = gzip.compress(data, compresslevel=1)
            headers = {**(headers or {}), "Content-Encoding": "gzip"}
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
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
        if not self._authorized():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path == "/metrics":
                self._send(HTTPStatus.OK, self.app.metrics(), CONTENT_TYPE)
            elif url.path == "/probe":
                self._probe(query)
            elif url.path == "/":
                self._send(
                    HTTPStatus.OK, self.app.status_page(query.get("village", [None])[0]), "text/html; charset=utf-8"
                )
            elif url.path == "/-/healthy":
                self._send(HTTPStatus.OK, "Healthy\n")
            elif url.path == "/-/ready":
                ok = self.app.monitor.ready.is_set()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "Ready\n" if ok else "Starting\n")
            elif url.path == "/-/reload":
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, "Only POST is allowed here.\n", headers={"Allow": "POST"})
            else:
                self._send(HTTPStatus.NOT_FOUND, "Not found\n")
        except BrokenPipeError:
            pass

    def do_POST(self) -> None:
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

    def _probe(self, query: dict[str, list[str]]) -> None:
        target = (query.get("target") or [""])[0]
        module = (query.get("module") or ["icmp"])[0]
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
        header = self.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        timeout = MODULE_TIMEOUT[module]
        try:
            if header:
                timeout = min(timeout, max(0.5, float(header) - TIMEOUT_OFFSET))
        except ValueError:
            pass
        self._send(HTTPStatus.OK, self.app.probe(target, module, timeout), CONTENT_TYPE)


class App:
    def __init__(
        self,
        monitor: Monitor,
        loop: asyncio.AbstractEventLoop,
        reload_fn: Callable[[], str | None],
        reload_state: ReloadState,
        web_config: str | None,
        version: str,
        district: str,
    ):
        self.monitor = monitor
        self.loop = loop
        self.reload = reload_fn
        self.reload_state = reload_state
        self.web_config_path = web_config
        self._web: tuple[float, Authenticator] | None = None
        self._web_lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(c)
        self.registry.register(SelfCollector(monitor, reload_state, version))
        self.district = district

    def auth(self) -> Authenticator:
        if not self.web_config_path:
            return _OPEN
        # Re-read when the file changes, as exporter-toolkit does: certificates and passwords rotate.
        mtime = os.stat(self.web_config_path).st_mtime
        with self._web_lock:
            if self._web is None or self._web[0] != mtime:
                try:
                    self._web = (mtime, Authenticator(parse_web_config(self.web_config_path)))
                except WebConfigError as exc:
                    log.error("web config not reloaded: %s", exc)
                    if self._web is None:
                        raise
            return self._web[1]

    def metrics(self) -> str:
        return self.monitor.render() + generate_latest(self.registry).decode()

    def status_page(self, village: str | None) -> str:
        if village and village in self.monitor.villages:
            return render_village_page(self.monitor.villages[village])
        return render_index(
            list(self.monitor.villages.values()), self.district, self.monitor.started, self.reload_state.successful
        )

    def probe(self, slug: str, module: str, timeout: float) -> str:
        t0 = time.monotonic()
        fut = asyncio.run_coroutine_threadsafe(self.monitor.probe_now(slug, module), self.loop)
        vs = self.monitor.villages.get(slug)
        try:
            result = fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            if vs:
                vs.log(f"probe:{module}", False, f"timed out after {timeout:.1f} s")
            return render_probe(module, None, False, time.monotonic() - t0)
        except Exception as exc:
            if vs:
                vs.log(f"probe:{module}", False, f"{type(exc).__name__}: {exc}")
            log.warning("on-demand probe failed", extra={"village": slug, "probe": module, "reason": str(exc)})
            return render_probe(module, None, False, time.monotonic() - t0)
        ok = probe_succeeded(module, result)
        if vs:
            vs.log(f"probe:{module}", ok, "on demand")
        return render_probe(module, result, ok, time.monotonic() - t0)


class _Open(Authenticator):
    def __init__(self) -> None:
        super().__init__(WebConfig())

    def check(self, header: str | None) -> bool:
        return True


_OPEN = _Open()


def parse_listen(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def serve_http(app: App, listen: str, web_config: str | None) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    host, port = parse_listen(listen)
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    if web_config:
        cfg = parse_web_config(web_config)
        if cfg.tls:
            # Handshake in the request's own thread: done in accept(), one silent client would stall them all.
            httpd.socket = cfg.ssl_context().wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    log.info("listening", extra={"address": listen, "tls": bool(web_config and Path(web_config).exists())})
    return httpd
