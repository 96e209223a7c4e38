"""`desanet probe trace TARGET`: the path to a village, hop by hop, and where it degrades.

Exit status: 0 the target answered, 1 it did not, 2 the trace could not start (unknown village, bad option,
no route, or no permission for raw sockets).
"""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from desanet.probes.trace import TraceResult


class _Protocol(StrEnum):
    icmp = "icmp"
    udp = "udp"
    tcp = "tcp"


def _fail(msg: str) -> None:
    typer.echo(f"desanet probe trace: {msg}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command("trace")
    def trace_cmd(
        target: Annotated[str, typer.Argument(help="Village slug or name, or an IPv4 address.")],
        protocol: Annotated[_Protocol, typer.Option(help="Probe with ICMP echo, UDP or TCP SYN.")] = _Protocol.icmp,
        max_hops: Annotated[int, typer.Option("--max-hops", min=1, max=64, help="Highest TTL to probe.")] = 16,
        probes: Annotated[int, typer.Option("--probes", min=1, max=100, help="Probes per hop.")] = 3,
        port: Annotated[
            int | None, typer.Option(min=1, max=65535, help="Destination port (default 33434 UDP, 80 TCP).")
        ] = None,
        timeout: Annotated[float, typer.Option(min=0.001, help="Seconds to wait for each reply.")] = 1.0,
        deadline: Annotated[float, typer.Option(min=0.01, help="Seconds for the whole trace, at most.")] = 10.0,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        inventory: Annotated[Path | None, typer.Option(help="Inventory to resolve village names in.")] = None,
    ) -> None:
        """Trace the path to a village Paris-traceroute style: per-hop RTT and loss, and the first hop where
        latency or loss steps up (a kecamatan uplink or the village's own link). Needs root or CAP_NET_RAW."""
        from desanet.district.targets import TargetError, resolve_target
        from desanet.probes.trace import TraceError, TraceSettings, probe

        try:
            tgt = resolve_target(target, inventory)
        except TargetError as exc:
            hint = f" (did you mean {', '.join(exc.candidates)}?)" if exc.candidates else ""
            _fail(f"{exc}{hint}")
            return
        try:
            settings = TraceSettings(
                protocol=protocol.value,
                max_hops=max_hops,
                probes_per_hop=probes,
                timeout_seconds=timeout,
                port=port,
                deadline_seconds=deadline,
            )
        except ValueError as exc:
            _fail(str(exc))
            return
        try:
            result = asyncio.run(probe(tgt.address, settings))
        except PermissionError:
            _fail("raw sockets need root or CAP_NET_RAW: run it with sudo (or grant the capability)")
            return
        except TraceError as exc:
            _fail(str(exc))
            return
        label = tgt.village.slug if tgt.village else None
        if as_json:
            typer.echo(json.dumps({"village": label, **result.to_dict()}, indent=2))
        else:
            _print(result, label, settings.probes_per_hop)
        raise typer.Exit(0 if result.reached else 1)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.2f}"


def _print(result: TraceResult, label: str | None, probes: int) -> None:
    from rich.console import Console
    from rich.table import Table

    name = f"{label} ({result.target})" if label else result.target
    table = Table(title=f"trace to {name}, {result.protocol}, {probes} probes per hop", title_justify="left")
    table.add_column("TTL", justify="right")
    table.add_column("address")
    table.add_column("loss", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("RTTs ms")
    table.add_column("")
    d = result.degradation
    hops = list(result.hops)
    last_heard = max((h.ttl for h in hops if h.received), default=0)
    tail = [h for h in hops if h.ttl > last_heard]
    if len(tail) > 1:  # one row for the silence at the end, as "* * *" from TTL a to b
        hops = [h for h in hops if h.ttl <= last_heard]
    for h in hops:
        loss = "-" if h.loss_ratio is None else f"{h.loss_ratio:.0%}"
        note = []
        if h.reached:
            note.append("target")
        if h.unreachable:
            note.append("unreachable")
        style = None
        if d is not None and h.ttl == d.ttl:
            note.append(f"[bold red]◀ {' and '.join(d.reasons)} step[/]")
            style = "bold"
        table.add_row(
            str(h.ttl),
            h.address or "*",
            f"{h.received}/{h.sent} {loss}" if h.sent else "-",
            _ms(h.rtt_seconds_p50),
            " ".join(_ms(r) for r in h.rtt_seconds),
            " ".join(note),
            style=style,
        )
    if len(tail) > 1:
        sent = sum(h.sent for h in tail)
        table.add_row(f"{tail[0].ttl}-{tail[-1].ttl}", "*", f"0/{sent}", "-", "", "no answer")
    console = Console()
    console.print(table)
    last = result.hops[-1].ttl if result.hops else 0
    if result.reached:
        console.print(f"reached in {last} hops, {result.duration_seconds:.2f} s, {result.probes_sent} probes")
    else:
        console.print(
            f"[bold red]NOT reached[/] within {last} hops ({result.duration_seconds:.2f} s, "
            f"{result.probes_sent} probes)"
        )
    if not result.reached:
        if last_heard:
            h = result.hops[last_heard - 1]
            console.print(f"[bold]the path ends after hop {h.ttl} ({h.address})[/]: nothing beyond it answered")
        else:
            console.print("[bold]nothing on the path answered[/]")
    if d is None:
        console.print("no step in latency or loss along the answering hops")
    else:
        after = "the NOC" if d.after_ttl == 0 else f"hop {d.after_ttl} ({d.after_address or '*'})"
        parts = []
        if "latency" in d.reasons:
            parts.append(f"median RTT +{d.rtt_step_seconds * 1e3:.1f} ms")
        if "loss" in d.reasons:
            parts.append(f"loss +{d.loss_step:.0%}")
        console.print(
            f"[bold]degraded at hop {d.ttl} ({d.address or '*'})[/], after {after}: {', '.join(parts)}"
            + ("" if d.after_ttl == d.ttl - 1 else " (silent hops in between: the step is somewhere there)")
        )
