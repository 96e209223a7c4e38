"""`desanet probe throughput TARGET`: TCP goodput down/up, or a UDP video rehearsal, against an iperf3 server."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table

from desanet.budget import Refused, TestSlot, acquire_test_slot
from desanet.district.targets import TargetError, resolve_target
from desanet.probes.throughput import Progress, ThroughputError, ThroughputResult, ThroughputSettings, probe

EXIT_MEASURED = 0
EXIT_FAILED = 1  # refused by the budget, session or uplink rules, or the measurement failed
EXIT_CANNOT_START = 2  # unknown village, bad option, no iperf3 endpoint


class DirectionChoice(StrEnum):
    both = "both"
    down = "down"
    up = "up"


HELP = (
    "Measure throughput to TARGET's iperf3 server: TCP goodput down (toward the village) and up, or with --udp a "
    "video rehearsal at a fixed bitrate and packet size (throughput, jitter, loss and reordering as the receiving "
    "end saw them).\n\n"
    "TARGET is a village slug or name from the inventory, or an address. For a village the inventory's rules "
    "apply: no test during (or just before) the village's scheduled session unless --force; never two tests on one "
    "kecamatan uplink at once; a daily byte and time budget per village (kept under DESANET_STATE_DIR, default "
    "/var/lib/desanet). --force overrides the session rule only. For a bare address no inventory rules apply.\n\n"
    "Exit codes: 0 measured; 1 refused (session, uplink busy, budget spent) or the measurement failed; "
    "2 could not start (unknown village, bad option, no iperf3 server listed for the village); 130 interrupted."
)


def register(app: typer.Typer) -> None:
    @app.command("throughput", help=HELP)
    def throughput(
        target: Annotated[str, typer.Argument(help="Village slug or name, or an IP address.")],
        direction: Annotated[
            DirectionChoice, typer.Option("--direction", "-d", help="down = toward the village, up = toward the NOC.")
        ] = DirectionChoice.both,
        udp: Annotated[bool, typer.Option("--udp", help="Video rehearsal over UDP instead of TCP goodput.")] = False,
        bitrate: Annotated[
            float | None,
            typer.Option(
                "--bitrate", help="UDP bitrate in Mbit/s (default: the village profile's need, else 4).", min=0.001
            ),
        ] = None,
        size: Annotated[
            int | None,
            typer.Option("--size", help="UDP payload bytes per packet (default: the profile's, else 1200).", min=16),
        ] = None,
        max_seconds: Annotated[
            float | None,
            typer.Option(
                "--max-seconds", help="Longest data phase per direction (default: the inventory's, else 5).", min=0.5
            ),
        ] = None,
        port: Annotated[
            int | None, typer.Option("--port", help="iperf3 port (default: the inventory's, else 5201).")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Test even during a scheduled session.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
        inventory: Annotated[Path | None, typer.Option("--inventory", help="Inventory file.")] = None,
    ) -> None:
        raise typer.Exit(run(target, direction.value, udp, bitrate, size, max_seconds, port, force, as_json, inventory))


def run(
    target: str,
    direction: str,
    udp: bool,
    bitrate_mbit: float | None,
    size: int | None,
    max_seconds: float | None,
    port: int | None,
    force: bool,
    as_json: bool,
    inventory_path: Path | None,
) -> int:
    err = Console(stderr=True, highlight=False)
    try:
        tgt = resolve_target(target, inventory_path)
    except TargetError as exc:
        err.print(f"desanet: {exc}", markup=False)
        if exc.candidates:
            err.print("did you mean: " + ", ".join(exc.candidates), markup=False)
        return EXIT_CANNOT_START

    directions = 2 if direction == "both" else 1
    address, default_port = tgt.address, 5201
    bitrate_bps, packet, dscp, limit_seconds = 4e6, 1200, 0, 5.0
    if tgt.village is not None and tgt.inventory is not None:
        endpoint = tgt.village.iperf3_address()
        if endpoint is None:
            err.print(
                f"desanet: {tgt.village.name} has no iperf3 server in the inventory "
                "(add `iperf3: {port: 5201}` to the village)",
                markup=False,
            )
            return EXIT_CANNOT_START
        address, default_port = endpoint
        profile = tgt.inventory.profile_for(tgt.village)
        bitrate_bps = max(profile.min_down_mbit, profile.min_up_mbit) * 1e6
        packet = profile.video_packet_bytes
        dscp = profile.dscp if udp else 0
        limit_seconds = tgt.inventory.settings.throughput.max_seconds
    if bitrate_mbit is not None:
        bitrate_bps = bitrate_mbit * 1e6
    packet = size or packet
    wanted_seconds = max_seconds or limit_seconds
    if tgt.village is not None and wanted_seconds > limit_seconds:
        err.print(f"--max-seconds capped at the inventory's {limit_seconds:g} s", markup=False)
        wanted_seconds = limit_seconds

    def settings(seconds: float, max_bytes: int | None) -> ThroughputSettings:
        return ThroughputSettings(
            port=port or default_port,
            direction=direction,  # type: ignore[arg-type]
            protocol="udp" if udp else "tcp",
            max_seconds=seconds,
            omit_seconds=min(0.5, seconds / 4),
            udp_bitrate_bps=bitrate_bps,
            udp_packet_bytes=packet,
            dscp=dscp,
            max_bytes=max_bytes,
        )

    try:
        settings(wanted_seconds, None)
    except ValueError as exc:
        err.print(f"desanet: {exc}", markup=False)
        return EXIT_CANNOT_START

    if tgt.village is None or tgt.inventory is None:
        return _measure(tgt.label, address, settings(wanted_seconds, None), as_json, err, None)

    inv = tgt.inventory
    now = datetime.now(ZoneInfo(inv.timezone))
    try:
        with acquire_test_slot(inv, tgt.village, now, force, directions=directions, origin="cli") as slot:
            cap_seconds, cap_bytes = slot.caps(directions)
            return _measure(
                tgt.label, address, settings(min(wanted_seconds, cap_seconds), cap_bytes), as_json, err, slot
            )
    except Refused as exc:
        err.print(f"refused: {exc}", markup=False)
        return EXIT_FAILED


def _measure(
    label: str, address: str, settings: ThroughputSettings, as_json: bool, err: Console, slot: TestSlot | None
) -> int:
    last_line = [0.0]
    interactive = err.is_terminal

    status = err.status(f"testing {label} …") if interactive else None

    def progress(p: Progress) -> None:
        if p.final:
            return
        text = (
            f"{label} {p.direction}: {p.seconds:4.1f} s  {p.bits_per_second / 1e6:9.2f} Mbit/s  {p.bytes / 1e6:8.1f} MB"
        )
        if status is not None:
            status.update(text)
        elif time.monotonic() - last_line[0] >= 1.0:
            last_line[0] = time.monotonic()
            err.print(text, markup=False)

    async def measure() -> ThroughputResult:
        # In a slot the budget charges what moved however the test ends (Ctrl-C cancels it: asyncio.run).
        if slot is not None:
            return await slot.measure(address, settings, progress=progress)
        return await probe(address, settings, progress=progress)

    what = "UDP rehearsal" if settings.protocol == "udp" else "TCP"
    if not interactive:
        err.print(f"testing {label} ({address}:{settings.port}, {what}, {settings.direction}) …", markup=False)
    try:
        if status is not None:
            with status:
                result = asyncio.run(measure())
        else:
            result = asyncio.run(measure())
    except ThroughputError as exc:
        err.print(f"failed: {exc}", markup=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("interrupted; the test was stopped on both ends", markup=False)
        sys.exit(130)

    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return EXIT_MEASURED
    out = Console(highlight=False)
    table = Table(title=f"{label} ({address}:{settings.port}) — {what}")
    table.add_column("direction")
    table.add_column("goodput Mbit/s", justify="right")
    table.add_column("on the wire Mbit/s", justify="right")
    table.add_column("MB", justify="right")
    table.add_column("seconds", justify="right")
    if settings.protocol == "udp":
        for col in ("jitter ms", "loss %", "reordered"):
            table.add_column(col, justify="right")
    else:
        table.add_column("steady", justify="center")
        table.add_column("retransmits", justify="right")
    for name, r in (("down", result.down), ("up", result.up)):
        if r is None:
            continue
        row = [
            name,
            f"{r.bits_per_second / 1e6:.2f}",
            f"{r.link_bits_per_second / 1e6:.2f}",
            f"{r.bytes / 1e6:.1f}",
            f"{r.seconds:.1f}",
        ]
        if settings.protocol == "udp":
            row += [
                f"{(r.jitter_seconds or 0) * 1e3:.2f}",
                f"{(r.loss_ratio or 0) * 100:.2f}",
                "?" if r.reordered is None else str(r.reordered),
            ]
        else:
            row += ["yes" if r.converged else "no", "?" if r.retransmits is None else str(r.retransmits)]
        table.add_row(*row)
    out.print(table)
    if settings.protocol == "tcp" and not all(r.converged for r in (result.down, result.up) if r):
        out.print("steady = no: the rate had not settled within ±2 % when the test ended; the figure is its average.")
    return EXIT_MEASURED
