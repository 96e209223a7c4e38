"""`desanet probe stamp TARGET`: one STAMP stream to a village's reflector, printed as a table or JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from desanet.probes.stamp import STAMP_PORT, DirectionResult, StampResult, StampSettings, probe


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1e3:.3f} ms"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f} %"


def _num(value: int | None) -> str:
    return "—" if value is None else str(value)


def _print_table(result: StampResult, settings: StampSettings, label: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = (
        f"STAMP {label} ({result.target}:{result.port}): {result.sent} packets of {settings.packet_bytes} B "
        f"at {settings.rate_pps:g}/s, DSCP {settings.dscp}"
    )
    table = Table(
        title=title,
        title_justify="left",
        caption="forward: toward the reflector (down to the village when the NOC sends); backward: back to us",
        caption_justify="left",
    )
    table.add_column("")
    table.add_column("round trip", justify="right")
    table.add_column("forward", justify="right")
    table.add_column("backward", justify="right")
    fwd: DirectionResult = result.forward
    bwd: DirectionResult = result.backward
    table.add_row("loss", _pct(result.loss_ratio), _pct(fwd.loss_ratio), _pct(bwd.loss_ratio))
    table.add_row("jitter (RFC 3550)", _ms(result.jitter_seconds), _ms(fwd.jitter_seconds), _ms(bwd.jitter_seconds))
    table.add_row("IPDV (mean |Δ|)", _ms(result.ipdv_seconds), _ms(fwd.ipdv_seconds), _ms(bwd.ipdv_seconds))
    table.add_row("PDV (p99 − min)", _ms(result.pdv_seconds), _ms(fwd.pdv_seconds), _ms(bwd.pdv_seconds))
    table.add_row("hops", "", _num(fwd.hops), _num(bwd.hops))
    console.print(table)

    rtt = Table(title="RTT without the reflector's dwell time", title_justify="left")
    for name in ("min", "p50", "mean", "p95", "p99", "max", "stddev"):
        rtt.add_column(name, justify="right")
    if result.rtt is not None:
        rtt.add_row(*(_ms(v) for v in result.rtt.to_dict().values()))
    else:
        rtt.add_row(*(["—"] * 7))
    console.print(rtt)

    notes = [
        f"received {result.received}/{result.sent}",
        f"burst loss (200 ms) {_pct(result.burst_loss_ratio)}",
        f"reply DSCP {_num(result.reply_dscp)}",
        f"timestamps tx={result.tx_timestamps} rx={result.rx_timestamps}",
    ]
    extras = {
        "late": result.late,
        "duplicates": result.duplicates,
        "reordered": result.reordered,
        "malformed": result.malformed,
        "foreign": result.foreign,
        "ICMP errors": result.icmp_errors,
        "send errors": result.send_errors,
    }
    notes += [f"{k} {v}" for k, v in extras.items() if v]
    console.print(", ".join(notes))
    if result.short_replies:
        console.print(
            f"{result.short_replies} replies in the short TWAMP-light form (no Sender TTL): forward hops unknown"
        )
    elif result.received and fwd.hops is None:
        console.print("the reflector reported no Sender TTL: forward hops unknown")
    if result.received == 0:
        hint = " (ICMP errors: nothing is listening on that port?)" if result.icmp_errors else ""
        console.print(f"[bold red]no replies[/] from {result.target}:{result.port}{hint}")


def register(app: typer.Typer) -> None:
    @app.command("stamp")
    def stamp(
        target: Annotated[str, typer.Argument(help="A village (slug or name) or an IP address.")],
        port: Annotated[
            int | None,
            typer.Option("--port", "-p", min=1, max=65535, help="Reflector UDP port (default: inventory, else 862)."),
        ] = None,
        rate: Annotated[
            float | None,
            typer.Option("--rate", min=0.001, max=10000, help="Packets per second (default: inventory, else 50)."),
        ] = None,
        size: Annotated[int | None, typer.Option("--size", help="UDP payload octets, 44-9000 (default: 1200).")] = None,
        duration: Annotated[
            float | None,
            typer.Option("--duration", min=0.001, max=3600, help="Seconds of sending (default: inventory, else 5)."),
        ] = None,
        dscp: Annotated[
            int | None, typer.Option("--dscp", min=0, max=63, help="DSCP of the stream (default: 34 = AF41).")
        ] = None,
        timeout: Annotated[
            float | None, typer.Option("--timeout", min=0.001, max=60, help="Seconds to wait for a reply (default: 1).")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
        inventory: Annotated[
            Path | None,
            typer.Option("--inventory", "-i", help="Inventory file (default: $DESANET_INVENTORY, inventory.yaml)."),
        ] = None,
    ) -> None:
        """Send a video-like STAMP stream (RFC 8762) and report RTT, and loss and jitter per direction.

        Exit status: 0 measured, 1 no replies, 2 could not measure (unknown village, bad option, no socket).
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

        address, inv_port = resolved.address, None
        if resolved.village is not None:
            endpoint = resolved.village.stamp_address()
            if endpoint is not None:
                address, inv_port = endpoint
            elif not as_json:
                typer.echo(
                    f"note: {resolved.village.slug} has no stamp reflector in the inventory; trying its router",
                    err=True,
                )
        defaults = StampSettings()
        inv_stamp = resolved.inventory.settings.stamp if resolved.inventory is not None else None
        try:
            settings = StampSettings(
                port=port or inv_port or STAMP_PORT,
                rate_pps=rate or (inv_stamp.rate_pps if inv_stamp else defaults.rate_pps),
                duration_seconds=duration or (inv_stamp.duration_seconds if inv_stamp else defaults.duration_seconds),
                packet_bytes=size if size is not None else defaults.packet_bytes,
                dscp=dscp if dscp is not None else defaults.dscp,
                timeout_seconds=timeout or defaults.timeout_seconds,
            )
        except ValueError as exc:
            typer.echo(f"desanet: {exc}", err=True)
            raise typer.Exit(2) from None

        try:
            result = asyncio.run(probe(address, settings))
        except (OSError, ValueError) as exc:
            typer.echo(f"desanet: cannot probe {address}:{settings.port}: {exc}", err=True)
            raise typer.Exit(2) from None

        if as_json:
            print_json(resolved, result)
        else:
            _print_table(result, settings, resolved.label)
        raise typer.Exit(0 if result.received > 0 else 1)
