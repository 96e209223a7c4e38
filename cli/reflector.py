"""`desanet reflector`: the STAMP reflector a kantor desa runs (UDP 862), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from desanet.probes.reflector import ReflectorOptions


class LogfmtFormatter(logging.Formatter):
    """`ts=… level=… msg=… key=value` lines, as Prometheus exporters write them; fields from extra={"fields": {}}."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"msg={_quote(record.getMessage())}"]
        for key, value in (getattr(record, "fields", None) or {}).items():
            parts.append(f"{key}={_quote(str(value))}")
        if record.exc_info:
            parts.append(f"err={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _quote(text: str) -> str:
    if text and not any(c in text for c in ' ="\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _setup_logging(level: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    log = logging.getLogger("desanet.reflector")
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
    return log


async def _run(
    listen: list[tuple[str, int]],
    options: ReflectorOptions,
    log: logging.Logger,
    stats_interval: float,
) -> dict[str, int] | None:
    from desanet.probes.reflector import Reflector

    reflector = Reflector(options, logger=log)
    try:
        for host, port in listen:
            try:
                await reflector.serve(host, port)
            except OSError as exc:
                log.error("cannot listen", extra={"fields": {"address": f"{host}:{port}", "error": exc.strerror}})
                return None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("ready", extra={"fields": {"pid": os.getpid(), "sockets": len(listen)}})
        last: dict[str, int] = {}
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), stats_interval if stats_interval > 0 else None)
            counters = reflector.counters()
            if not stop.is_set() and counters != last:
                log.info("counters", extra={"fields": counters})
                last = counters
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        return reflector.counters()
    finally:
        reflector.close()


def register(app: typer.Typer) -> None:
    @app.command("reflector")
    def reflector(
        listen: Annotated[
            list[str] | None,
            typer.Option(
                "--listen",
                "-l",
                help="ADDR:PORT (or [V6]:PORT) to answer on; repeatable (default: 0.0.0.0:862).",
            ),
        ] = None,
        allow: Annotated[
            list[str] | None,
            typer.Option("--allow", help="Only answer senders in this network (CIDR); repeatable (default: anyone)."),
        ] = None,
        max_sessions: Annotated[int, typer.Option("--max-sessions", min=1, help="Sessions remembered.")] = 65536,
        session_idle: Annotated[
            float,
            typer.Option(
                "--session-idle",
                min=0.1,
                help="Seconds before an idle session is forgotten; a sender back after that is numbered from 0 again.",
            ),
        ] = 60.0,
        stats_interval: Annotated[
            float, typer.Option("--stats-interval", min=0, help="Log the counters this often, if changed (0: never).")
        ] = 300.0,
        log_level: Annotated[str, typer.Option("--log.level", help="debug, info, warning or error.")] = "info",
        dwell: Annotated[float, typer.Option("--test.dwell-seconds", hidden=True, min=0, max=10)] = 0.0,
        drop_in: Annotated[int, typer.Option("--test.drop-incoming-every", hidden=True, min=0)] = 0,
        drop_out: Annotated[int, typer.Option("--test.drop-reply-every", hidden=True, min=0)] = 0,
    ) -> None:
        """Answer STAMP (RFC 8762) and TWAMP-light test packets until SIGTERM or Ctrl-C; print counters at exit.

        Stateful: each sender gets its own reply numbering, so the sender can tell loss on the way in from loss
        on the way back. Port 862 needs CAP_NET_BIND_SERVICE (see deploy/desanet-reflector.service).
        """
        from desanet.probes.reflector import ReflectorOptions, parse_listen

        if log_level.lower() not in ("debug", "info", "warning", "error"):
            typer.echo(f"desanet: unknown log level {log_level!r}", err=True)
            raise typer.Exit(2)
        log = _setup_logging(log_level)
        try:
            addresses = [parse_listen(text) for text in (listen or ["0.0.0.0:862"])]
            networks = tuple(ipaddress.ip_network(text, strict=False) for text in (allow or []))
            options = ReflectorOptions(
                allow=networks,
                max_sessions=max_sessions,
                session_idle_seconds=session_idle,
                dwell_seconds=dwell,
                drop_incoming_every=drop_in,
                drop_reply_every=drop_out,
            )
        except ValueError as exc:
            typer.echo(f"desanet: {exc}", err=True)
            raise typer.Exit(2) from None
        if dwell or drop_in or drop_out:
            log.warning(
                "test hooks on",
                extra={
                    "fields": {"dwell_seconds": dwell, "drop_incoming_every": drop_in, "drop_reply_every": drop_out}
                },
            )
        counters = asyncio.run(_run(addresses, options, log, stats_interval))
        if counters is None:
            raise typer.Exit(2)
        log.info("stopped", extra={"fields": counters})
        width = max(len(k) for k in counters)
        for key, value in counters.items():
            typer.echo(f"{key:<{width}}  {value}")
