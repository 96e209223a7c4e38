"""`desanet lab load|reboot|scenario`: cross traffic, router events and scripted timelines in the lab.

Registered on the `lab` group by cli/lab.py; each command parses, calls one function of lab/, and prints.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"desanet lab: {msg}", err=True)
    raise typer.Exit(code)


def register(lab_app: typer.Typer) -> None:
    @lab_app.command("load")
    def load_cmd(
        village: Annotated[str | None, typer.Argument(help="Village slug (or use --kecamatan).")] = None,
        kecamatan: Annotated[str | None, typer.Option(help="Load every village behind this kecamatan uplink.")] = None,
        kind: Annotated[
            str, typer.Option(help="bulk (TCP downloads/uploads), video (on-off stream) or cbr (camera).")
        ] = "bulk",
        down: Annotated[
            str | None,
            typer.Option(help="Toward the village, Mbit/s per village, or 'max' (bulk: as fast as TCP goes)."),
        ] = None,
        up: Annotated[
            str | None, typer.Option(help="Toward the internet, Mbit/s per village, or 'max' (bulk).")
        ] = None,
        flows: Annotated[int | None, typer.Option(help="Connections (or streams) per village and direction.")] = None,
        seconds: Annotated[float, typer.Option("--for", help="Seconds until the load ends by itself.")] = 60.0,
        segment: Annotated[float, typer.Option(help="video: seconds of video per chunk.")] = 4.0,
        cc: Annotated[str, typer.Option(help="TCP congestion control of the senders (cubic fills buffers).")] = "cubic",
        stop: Annotated[
            bool, typer.Option("--stop", help="Stop the loads on the target (all loads without one).")
        ] = False,
    ) -> None:
        """Cross traffic from the lab's internet host through the same queues as the probes.

        Defaults per kind: bulk 4 flows down at max; video 5 Mbit/s down in 4 s chunks; cbr 4 Mbit/s up."""
        from desanet.lab import load

        try:
            if stop:
                stopped = load.stop(village, kecamatan)
                typer.echo(f"stopped {', '.join(stopped) if stopped else 'nothing (no load running there)'}")
                return
            spec = load.make_spec(kind, down, up, flows, seconds, segment, cc)
            entry = load.start(village, kecamatan, spec)
        except load.LoadError as exc:
            _fail(str(exc), 2)
        except load.labmod.LabError as exc:
            _fail(str(exc))
        where = entry["target"] if entry["scope"] == "village" else f"kecamatan {entry['target']}"
        typer.echo(
            f"load {entry['id']} on {where} ({len(entry['villages'])} village{'s' * (len(entry['villages']) != 1)}): "
            f"{entry['what']}, for {seconds:g} s (pid {entry['pid']}); stop with `desanet lab load --stop`"
        )

    @lab_app.command("reboot")
    def reboot_cmd(
        village: Annotated[str, typer.Argument(help="Village slug.")],
        down_for: Annotated[float, typer.Option(help="Seconds without power.")] = 10.0,
    ) -> None:
        """A power cut at the village: link down, router dark, then back with its uptime reset."""
        from desanet.lab import events

        _term_as_interrupt()
        try:
            events.reboot(village, down_for, say=typer.echo)
        except events.labmod.LabError as exc:
            _fail(str(exc))

    scenario_app = typer.Typer(help="Play a timeline of impairments, loads and router events.", no_args_is_help=True)
    lab_app.add_typer(scenario_app, name="scenario")

    @scenario_app.command("run")
    def scenario_run(
        file: Annotated[str, typer.Argument(help="A scenario file, or the name of a shipped one (see `list`).")],
        speed: Annotated[float, typer.Option(help="Play N times faster (every time in the file divided by N).")] = 1.0,
    ) -> None:
        """Play a scenario against the running lab, printing each step; Ctrl-C undoes what it did."""
        from desanet.lab import lab as labmod
        from desanet.lab import scenario as sc

        state = labmod.load_state()
        if state is None or not state.get("complete"):
            _fail("the lab is not up: run `desanet lab up` first")
        assert state is not None
        try:
            scn = sc.load_file(sc.resolve(file), sc.LabNames.of_plan(labmod.plan_from_state(state)))
            player = sc.Player(scn, speed=speed, say=lambda m: typer.echo(m))
        except sc.ScenarioError as exc:
            _fail(f"{len(exc.problems)} problem{'s' * (len(exc.problems) != 1)} in the scenario:\n{exc}", 2)
        except labmod.LabError as exc:
            _fail(str(exc), 2)
        _term_as_interrupt()
        try:
            player.play()
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    @scenario_app.command("check")
    def scenario_check(
        files: Annotated[list[str], typer.Argument(help="Scenario files or shipped names.")],
        inventory: Annotated[Path | None, typer.Option(help="Check names against this inventory, not the lab.")] = None,
    ) -> None:
        """Validate scenario files: every problem as FILE:LINE:COL: message; exit 1 if any."""
        from desanet.lab import scenario as sc

        names = _names(inventory)
        bad = 0
        for f in files:
            try:
                scn = sc.load_file(sc.resolve(f), names)
            except sc.ScenarioError as exc:
                typer.echo(str(exc), err=True)
                bad += 1
                continue
            typer.echo(f"{sc.resolve(f)}: ok ({len(scn.steps)} steps) — {scn.name}")
        raise typer.Exit(1 if bad else 0)

    @scenario_app.command("list")
    def scenario_list() -> None:
        """The scenarios shipped with desanet, with the cause each reproduces."""
        from desanet.lab import scenario as sc

        for path in sc.shipped():
            scn = sc.load_file(path)
            typer.echo(f"{path.stem:20} {scn.name}")


def _names(inventory: Path | None) -> Any:
    """The names a scenario may use: the running lab's, else the inventory's."""
    from desanet.district import InventoryError, default_inventory_path, load_inventory
    from desanet.lab import lab as labmod
    from desanet.lab import scenario as sc
    from desanet.lab.topology import plan

    state = labmod.load_state() if inventory is None else None
    if state is not None and state.get("complete"):
        return sc.LabNames.of_plan(labmod.plan_from_state(state))
    try:
        return sc.LabNames.of_plan(plan(load_inventory(inventory or default_inventory_path())))
    except InventoryError as exc:
        _fail(f"the inventory to check names against has problems:\n{exc}", 2)


def _term_as_interrupt() -> None:
    """SIGTERM undoes like Ctrl-C: a power cut ends with the power back, a scenario with its changes undone."""

    def handler(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def describe_tasks(status: dict[str, Any]) -> list[str]:
    """The lines `lab status` prints for loads, ramps and villages without power."""
    from desanet.lab import load

    lines = []
    now = time.time()
    for tid, t in status.get("tasks", {}).items():
        where = t["target"] if t.get("scope", "village") == "village" else f"kecamatan {t['target']}"
        extra = ""
        if t.get("kind") == "load":
            got = load.live(t)
            if got is not None:
                extra = f"; last second {got['down_mbit']:.1f} Mbit/s down, {got['up_mbit']:.1f} up"
        lines.append(f"  {t.get('kind')} {tid} on {where}: {t.get('what')}, {t['seconds_left']:g} s left{extra}")
    for ev in status.get("events", {}).values():
        lines.append(f"  power off: {ev['village']}, back in {max(0.0, ev['until'] - now):.0f} s")
    return lines


def ramp_args(village: str | None, kecamatan: str | None, to: float | None, over: float | None) -> Any:
    """`impair --to DBM --over S`: (village, to, over) for `ramp`, None without a ramp; a bad combination fails."""
    if to is None and over is None:
        return None
    if to is None or over is None:
        _fail("an optical ramp needs both --to DBM and --over SECONDS", 2)
    if village is None or kecamatan is not None:
        _fail("an optical ramp belongs to a village, not a kecamatan", 2)
    from desanet.lab.events import MAX_RAMP_SECONDS, RX_DBM_RANGE

    if not RX_DBM_RANGE[0] <= to <= RX_DBM_RANGE[1]:  # type: ignore[operator]
        _fail(f"--to must be between {RX_DBM_RANGE[0]:g} and {RX_DBM_RANGE[1]:g} dBm, not {to:g}", 2)
    if not 0 < over <= MAX_RAMP_SECONDS:  # type: ignore[operator]
        _fail(f"--over must be more than 0 and at most {MAX_RAMP_SECONDS:g} seconds", 2)
    return village, to, over


def ramp(village: str, to: float, over: float) -> None:
    from desanet.lab import events

    try:
        r = events.ramp_optical(village, to, over)
    except events.labmod.LabError as exc:
        _fail(str(exc))
    typer.echo(f"{village}: {r['what']} (ramp {r['id']}, pid {r['pid']})")
