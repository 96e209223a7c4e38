"""`desanet probe icmp TARGET`: one echo train to a village router (or any address), as a table or JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from desanet.probes.icmp import IcmpPermissionError, IcmpResult, IcmpSettings, probe


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1e3:.3f} ms"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _print_table(result: IcmpResult, settings: IcmpSettings, label: str, address: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    where = label if label == address else f"{label} ({address})"
    title = (
        f"ICMP echo {where}: {result.sent} × {settings.payload_bytes} B every {settings.interval:g} s, "
        f"DSCP {settings.dscp}, TTL {settings.ttl}{', DF' if settings.dont_fragment else ''}"
    )
    table = Table(title=title, title_justify="left", caption="RTT in milliseconds", caption_justify="left")
    for name in ("sent", "recv", "loss", "min", "p50", "mean", "p95", "p99", "max", "sd"):
        table.add_column(name, justify="right")
    rtt = result.rtt.to_dict() if result.rtt else {}
    table.add_row(
        str(result.sent),
        str(result.received),
        _pct(result.loss_ratio),
        *(
            "—" if rtt.get(k) is None else f"{rtt[k] * 1e3:.3f}"
            for k in ("min", "p50", "mean", "p95", "p99", "max", "stddev")
        ),
    )
    console.print(table)
    notes = [
        f"jitter (RFC 3550) {_ms(result.jitter_seconds)}",
        f"IPDV (mean |Δ|) {_ms(result.ipdv_seconds)}",
        f"PDV (p99 − min) {_ms(result.pdv_seconds)}",
        f"burst loss (200 ms) {_pct(result.burst_loss_ratio)}",
        f"timestamps {result.timestamping}, {result.socket_kind} socket",
    ]
    extras = {
        "duplicates": result.duplicates,
        "reordered": result.reordered,
        "ICMP errors": result.icmp_errors,
        "send errors": result.send_errors,
    }
    notes += [f"{k} {v}" for k, v in extras.items() if v]
    console.print(", ".join(notes))
    if result.received == 0:
        why = f": {result.error}" if result.error else (" (ICMP errors came back)" if result.icmp_errors else "")
        console.print(f"[bold red]no replies[/] from {address}{why}")


def register(app: typer.Typer) -> None:
    @app.command("icmp")
    def icmp(
        target: Annotated[str, typer.Argument(help="A village (slug or name) or an IP address.")],
        count: Annotated[int, typer.Option("--count", "-c", min=1, max=1_000_000, help="Echoes to send.")] = 20,
        interval: Annotated[
            float, typer.Option("--interval", min=0.001, max=3600, help="Seconds between echoes.")
        ] = 0.2,
        size: Annotated[
            int | None,
            typer.Option("--size", "-s", min=0, max=65507, help="ICMP payload bytes (default: inventory, else 56)."),
        ] = None,
        dscp: Annotated[int, typer.Option("--dscp", min=0, max=63, help="DSCP of the echoes (46 = EF).")] = 0,
        ttl: Annotated[int, typer.Option("--ttl", min=1, max=255, help="IP TTL / hop limit.")] = 64,
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.001, max=60, help="Seconds to wait for each reply.")
        ] = 2.0,
        dont_fragment: Annotated[
            bool, typer.Option("--dont-fragment", "-M", help="Set DF: too-big echoes fail instead of fragmenting.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
        inventory: Annotated[
            Path | None,
            typer.Option("--inventory", "-i", help="Inventory file (default: $DESANET_INVENTORY, inventory.yaml)."),
        ] = None,
    ) -> None:
        """Ping a village router with kernel timestamps: RTT distribution, loss, jitter, PDV, burst loss.

        Exit status: 0 measured and got replies, 1 every echo lost, 2 could not measure (unknown village,
        bad option, no permission for ICMP sockets).
        """
        from desanet.cli.output import print_json
        from desanet.district.targets import TargetError, resolve_target

        try:
            resolved = resolve_target(target, inventory)
        except TargetError as exc:
            typer.echo(f"desanet: {exc}", err=True)
            if exc.candidates:
                typer.echo("did you mean: " + ", ".join(exc.candidates), err=True)
            raise typer.Exit(2) from None

        if size is None and resolved.inventory is not None:
            size = resolved.inventory.settings.icmp.payload_bytes
        try:
            settings = IcmpSettings(
                count=count,
                interval=interval,
                timeout=timeout,
                payload_bytes=56 if size is None else size,
                dscp=dscp,
                ttl=ttl,
                dont_fragment=dont_fragment,
            )
        except ValueError as exc:
            typer.echo(f"desanet: {exc}", err=True)
            raise typer.Exit(2) from None

        try:
            result = asyncio.run(probe(resolved.address, settings))
        except IcmpPermissionError as exc:
            typer.echo(f"desanet: no permission to ping: {exc}", err=True)
            raise typer.Exit(2) from None
        except (OSError, ValueError) as exc:
            typer.echo(f"desanet: cannot probe {resolved.address}: {exc}", err=True)
            raise typer.Exit(2) from None

        if as_json:
            print_json(resolved, result)
        else:
            _print_table(result, settings, resolved.label, resolved.address)
        raise typer.Exit(0 if result.received > 0 else 1)
