"""`desanet serve`: what a NOC runs. Probes the inventory's villages on its own schedule and serves
/metrics, /probe, a status page, /-/healthy and /-/reload."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from desanet.district import InventoryError, default_inventory_path, load_inventory

if TYPE_CHECKING:
    from desanet.exporter.webconfig import WebConfigWatcher

log = logging.getLogger("desanet.serve")


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter("use K/N, e.g. 2/3") from None
    if not 1 <= k <= n:
        raise typer.BadParameter("need 1 <= K <= N")
    return k, n


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        inventory: Annotated[Path | None, typer.Option("--inventory", help="The district inventory.")] = None,
        listen: Annotated[str, typer.Option("--web.listen-address", help="Address to serve HTTP on.")] = ":9917",
        web_config: Annotated[
            Path | None, typer.Option("--web.config.file", help="exporter-toolkit web config: TLS, basic auth.")
        ] = None,
        shard: Annotated[str, typer.Option("--shard", help="Probe only shard K of N villages (K/N).")] = "1/1",
        probes: Annotated[str, typer.Option("--probes", help="Which probes to schedule, comma-separated.")] = (
            "icmp,snmp,stamp,trace,throughput"
        ),
        log_level: Annotated[str, typer.Option("--log.level", help="debug, info, warning, error.")] = "info",
        log_format: Annotated[str, typer.Option("--log.format", help="logfmt or json.")] = "logfmt",
        detail: Annotated[
            bool,
            typer.Option(
                "--metrics.detail",
                help="Also export the finer families (window statistics, STAMP histograms, delay variation, every "
                "router port and optical reading, path hops, probe timings): ~3x the series (docs/metrics.md).",
            ),
        ] = False,
    ) -> None:
        """Probe every village continuously and export metrics and video-readiness verdicts."""
        from desanet.exporter import logfmt

        logfmt.setup(log_level, log_format)
        path = inventory or default_inventory_path()
        try:
            inv = load_inventory(path)
        except InventoryError as exc:
            for p in exc.problems:
                typer.echo(str(p), err=True)
            raise typer.Exit(1) from None
        enable = {p.strip() for p in probes.split(",") if p.strip()}
        unknown = enable - {"icmp", "snmp", "stamp", "trace", "throughput"}
        if unknown:
            raise typer.BadParameter(f"unknown probes: {', '.join(sorted(unknown))}")
        from desanet.exporter.server import parse_listen
        from desanet.exporter.webconfig import WebConfigError, WebConfigWatcher

        # Every setting is checked before a probe runs: a broken web config or address refuses in one line.
        try:
            parse_listen(listen)
            web = WebConfigWatcher(web_config) if web_config else None
        except (ValueError, WebConfigError) as exc:
            typer.echo(f"desanet serve: {exc}", err=True)
            raise typer.Exit(1) from None
        try:
            asyncio.run(_serve(path, inv, listen, web, _shard(shard), enable, detail))
        except PermissionError as exc:
            typer.echo(f"desanet serve: {exc} (ICMP needs CAP_NET_RAW or net.ipv4.ping_group_range)", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            typer.echo(f"desanet serve: {exc}", err=True)
            raise typer.Exit(2) from None


async def _serve(
    path: Path,
    inv: object,
    listen: str,
    web: WebConfigWatcher | None,
    shard: tuple[int, int],
    enable: set[str],
    detail: bool = False,
) -> None:
    from importlib.metadata import version

    from desanet.exporter.scheduler import Monitor
    from desanet.exporter.server import App, ReloadState, serve_http, start_serving

    loop = asyncio.get_running_loop()
    monitor = Monitor(inv, shard=shard, enable=enable, detail=detail)  # type: ignore[arg-type]
    state = ReloadState()

    def reload() -> str | None:
        """Re-read the inventory; a broken one is refused and the last good one kept."""
        try:
            new = load_inventory(path)
        except InventoryError as exc:
            state.successful = False
            state.last_error = str(exc)
            log.error("inventory reload failed; keeping the previous one", extra={"problems": len(exc.problems)})
            for p in exc.problems:
                log.error(str(p))
            return str(exc)
        loop.call_soon_threadsafe(monitor.apply_inventory, new)
        state.successful = True
        state.last_success = __import__("time").time()
        log.info("inventory reloaded", extra={"villages": len(new.villages)})
        return None

    try:
        ver = version("desanet")
    except Exception:
        ver = "dev"
    app = App(monitor, loop, reload, state, web, ver, inv.district)  # type: ignore[attr-defined]
    httpd = serve_http(app, listen, web)  # bound before the first probe: a taken port sends nothing
    try:
        await monitor.start()
    except BaseException:
        httpd.server_close()
        raise
    # What is loaded by now (modules, pysnmp's MIB tree, the inventory) lives as long as the process. Frozen
    # out of the collector's reach, a full collection under a flood of scrapes took 38 ms instead of 376 ms,
    # a pause that held every thread: a scraper's answer (p99 354 -> 16 ms) and the echoes' sends alike.
    gc.collect()
    gc.freeze()
    start_serving(httpd, listen)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, app.reload))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", extra={"villages": len(monitor.villages), "address": listen, "shard": f"{shard[0]}/{shard[1]}"})
    try:
        await stop.wait()
    finally:
        httpd.shutdown()
        httpd.server_close()
        # A rehearsal call under way: its far end (a Chromium in its own process group) is stopped by PID and
        # its cost charged before serve exits, not left running without a parent.
        await loop.run_in_executor(None, app.rehearsals.close)
        with contextlib.suppress(Exception):
            await monitor.stop()
        log.info("stopped")
