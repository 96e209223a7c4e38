"""`desanet lab up|down|status|impair|truth|exec`: the simulated district, by hand or from tests."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from desanet.district import InventoryError, default_inventory_path


class DelayDistribution(StrEnum):
    """netem's delay distributions, as lab/delay_model.py defines them (a test keeps the two lists equal)."""

    uniform = "uniform"
    normal = "normal"
    pareto = "pareto"
    pareto_normal = "pareto-normal"


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"desanet lab: {msg}", err=True)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    lab_app = typer.Typer(
        help="The simulated village network (network namespaces) that desanet is tested on.", no_args_is_help=True
    )
    app.add_typer(lab_app, name="lab")
    from desanet.cli import lab_traffic  # lab load, reboot, scenario

    lab_traffic.register(lab_app)

    @lab_app.command("up")
    def up_cmd(
        inventory: Annotated[Path | None, typer.Option(help="Inventory to simulate.")] = None,
        no_services: Annotated[bool, typer.Option("--no-services", help="Skip snmpd and iperf3.")] = False,
        uncapped: Annotated[
            bool, typer.Option("--uncapped", help="Leave links at line rate instead of their contracted rates.")
        ] = False,
        buffer_ms: Annotated[
            float, typer.Option(help="Queue of each cap toward the villages, ms at its rate (a router's: 20-50).")
        ] = 30.0,
        up_buffer_ms: Annotated[
            float, typer.Option(help="Queue of each cap toward the NOC, ms (a cheap CPE's bloat: 200-600).")
        ] = 30.0,
    ) -> None:
        """Build the lab: a NOC, a core, one namespace per kecamatan and per village, with their agents.

        Each village link is capped at its contracted rates and each kecamatan uplink at its uplink_mbit,
        with a tail-drop queue of --buffer-ms / --up-buffer-ms, so a saturated link queues and drops as in the
        field."""
        from desanet.lab.lab import LabError, up

        try:
            up(
                inventory or default_inventory_path(),
                services=not no_services,
                progress=lambda m: typer.echo(f"lab: {m}", err=True),
                uncapped=uncapped,
                buffer_ms=buffer_ms,
                up_buffer_ms=up_buffer_ms,
            )
        except (LabError, InventoryError) as exc:
            _fail(str(exc))

    @lab_app.command("down")
    def down_cmd() -> None:
        """Remove every namespace, link, rule and process the lab made."""
        from desanet.lab.lab import LabError, down

        try:
            removed = down()
        except LabError as exc:
            _fail(str(exc))
        typer.echo(f"lab down: removed {', '.join(removed) or 'nothing (it was not up)'}", err=True)

    @lab_app.command("status")
    def status_cmd(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
        """Is the lab up, and what is impaired? Exit 0 when up and healthy, 1 otherwise."""
        from desanet.lab.lab import status
        from desanet.lab.shaping import shaping_words as _shaping_words

        st = status()
        if as_json:
            typer.echo(json.dumps(st, indent=2))
        elif not st["up"] and not st.get("villages"):
            typer.echo(f"lab {st['prefix']}: down ({st['namespaces']} namespaces left)")
        else:
            typer.echo(
                f"lab {st['prefix']}: {'up' if st['up'] else 'DEGRADED'}, {st['villages']} villages in "
                f"{st['kecamatan']} kecamatan, {st['processes']} processes, built in {st['up_seconds']} s"
            )
            typer.echo(f"  links: {_shaping_words(st['shaping'])}")
            for name in st["dead_processes"]:
                typer.echo(f"  dead: {name}")
            for key, imp in st["impaired"].items():
                typer.echo(f"  impaired {key}: {_describe(imp)}")
            for line in lab_traffic.describe_tasks(st):
                typer.echo(line)
        raise typer.Exit(0 if st["up"] else 1)

    @lab_app.command("impair")
    def impair_cmd(
        village: Annotated[str | None, typer.Argument(help="Village slug (or use --kecamatan).")] = None,
        kecamatan: Annotated[str | None, typer.Option(help="Impair this kecamatan's uplink instead.")] = None,
        delay: Annotated[float | None, typer.Option(help="Delay toward the village, ms.")] = None,
        jitter: Annotated[
            float | None, typer.Option(help="Jitter toward the village, ms: ± for uniform, the sd for the others.")
        ] = None,
        loss: Annotated[float | None, typer.Option(help="Loss toward the village, %.")] = None,
        rate: Annotated[
            float | None, typer.Option(help="Rate cap toward the village, Mbit/s (overrides the contract).")
        ] = None,
        up_delay: Annotated[float | None, typer.Option(help="Delay toward the NOC, ms.")] = None,
        up_jitter: Annotated[float | None, typer.Option(help="Jitter toward the NOC, ms.")] = None,
        delay_distribution: Annotated[
            DelayDistribution | None,
            typer.Option(help="Shape of the drawn delay toward the village (netem's; uniform clears)."),
        ] = None,
        up_delay_distribution: Annotated[
            DelayDistribution | None, typer.Option(help="Shape of the drawn delay toward the NOC.")
        ] = None,
        delay_correlation: Annotated[
            float | None,
            typer.Option(help="Rank correlation of consecutive drawn delays toward the village, %."),
        ] = None,
        up_delay_correlation: Annotated[
            float | None, typer.Option(help="Rank correlation of consecutive drawn delays toward the NOC, %.")
        ] = None,
        reorder: Annotated[
            bool | None,
            typer.Option(
                "--reorder/--no-reorder",
                help="Toward the village, release each packet at its own drawn delay, so jitter reorders "
                "(netem's way); by default packets keep their order, as in a queue.",
            ),
        ] = None,
        up_reorder: Annotated[
            bool | None, typer.Option("--up-reorder/--no-up-reorder", help="The same toward the NOC.")
        ] = None,
        up_loss: Annotated[float | None, typer.Option(help="Loss toward the NOC, %.")] = None,
        up_rate: Annotated[float | None, typer.Option(help="Rate cap toward the NOC, Mbit/s.")] = None,
        buffer_ms: Annotated[float | None, typer.Option(help="Queue of the cap toward the village, ms.")] = None,
        up_buffer_ms: Annotated[float | None, typer.Option(help="Queue of the cap toward the NOC, ms.")] = None,
        down: Annotated[bool, typer.Option("--down", help="Blackhole it: nothing passes either way.")] = False,
        restore: Annotated[
            bool, typer.Option("--restore", help="Remove every impairment first (back to the contracted caps).")
        ] = False,
        optical_rx_dbm: Annotated[float | None, typer.Option(help="Optical rx power the router reports, dBm.")] = None,
        optical_tx_dbm: Annotated[float | None, typer.Option(help="Optical tx power the router reports, dBm.")] = None,
        to: Annotated[
            float | None, typer.Option(help="Ramp the optical rx power to this, dBm (from now or --optical-rx-dbm).")
        ] = None,
        over: Annotated[float | None, typer.Option(help="Seconds the optical ramp to --to takes.")] = None,
    ) -> None:
        """Impair one village's link or a kecamatan uplink, per direction, like netem on each side. 0 clears."""
        from desanet.lab.lab import LabError, impair

        optical: dict[str, Any] = {}
        if optical_rx_dbm is not None:
            optical["rx_dbm"] = optical_rx_dbm
        if optical_tx_dbm is not None:
            optical["tx_dbm"] = optical_tx_dbm
        ramp = lab_traffic.ramp_args(village, kecamatan, to, over)  # checked before anything changes
        try:
            cur = impair(
                village,
                kecamatan,
                {
                    "delay_ms": delay,
                    "jitter_ms": jitter,
                    "loss_pct": loss,
                    "rate_mbit": rate,
                    "buffer_ms": buffer_ms,
                    "delay_distribution": delay_distribution.value if delay_distribution else None,
                    "delay_correlation_pct": delay_correlation,
                    "reorder": reorder,
                },
                {
                    "delay_ms": up_delay,
                    "jitter_ms": up_jitter,
                    "loss_pct": up_loss,
                    "rate_mbit": up_rate,
                    "buffer_ms": up_buffer_ms,
                    "delay_distribution": up_delay_distribution.value if up_delay_distribution else None,
                    "delay_correlation_pct": up_delay_correlation,
                    "reorder": up_reorder,
                },
                blackhole=down,
                restore=restore,
                optical=optical or None,
            )
        except LabError as exc:
            _fail(str(exc))
        typer.echo(f"{village or kecamatan}: {_describe(cur)}")
        if ramp is not None:
            lab_traffic.ramp(*ramp)

    @lab_app.command("truth")
    def truth_cmd(
        window: Annotated[float, typer.Option(help="Seconds of history to summarise.")] = 60.0,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """What the lab imposed (configured) and actually applied per packet over the last WINDOW seconds."""
        from desanet.lab.lab import LabError, truth

        try:
            t = truth(window)
        except LabError as exc:
            _fail(str(exc))
        if as_json:
            typer.echo(json.dumps(t, indent=1))
            return
        for section in ("kecamatan", "villages"):
            for name, e in t[section].items():
                link_lines = [f"  {d} link: {_link_words(x)}" for d, x in (e.get("link") or {}).items() if _busy(x)]
                if (
                    not any(a["packets"] for a in e["applied"].values())
                    and _describe(e["configured"]) == "clean"
                    and not link_lines
                ):
                    continue
                typer.echo(f"{name}: {_describe(e['configured'])}")
                for line in link_lines:
                    typer.echo(line)
                for d in ("down", "up"):
                    a = e["applied"][d]
                    if a["packets"]:
                        typer.echo(
                            f"  {d}: {a['packets']} packets, {a['dropped']} dropped, "
                            f"{a.get('reordered') or 0} reordered, delay p50 "
                            f"{_ms(a['delay_ms_p50'])} mean {_ms(a['delay_ms_mean'])} "
                            f"(drawn {_ms(a.get('drawn_delay_ms_p50'))} / {_ms(a.get('drawn_delay_ms_mean'))}) "
                            f"ipdv {_ms(a['ipdv_ms_mean_abs'])}"
                        )

    @lab_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def exec_cmd(ctx: typer.Context) -> None:
        """Run a command inside the NOC namespace: `desanet lab exec -- ping 10.115.1.1`."""
        from desanet.lab.lab import LabError, exec_argv, exec_env

        command = list(ctx.args)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            _fail("give a command: desanet lab exec -- COMMAND ...", 2)
        try:
            argv = exec_argv(command)
        except LabError as exc:
            _fail(str(exc))
        sys.stdout.flush()
        os.execvpe(argv[0], argv, exec_env(os.environ))

    @lab_app.command("call")
    def call_cmd(
        village: Annotated[str, typer.Argument(help="Village slug or name.")],
        profile: Annotated[str | None, typer.Option(help="Profile to call at (default: the village's).")] = None,
        duration: Annotated[float, typer.Option(min=10, max=600, help="Length of the call, seconds.")] = 30.0,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        video: Annotated[
            str | None, typer.Option(help="Picture size instead of the profile's, WIDTHxHEIGHT (e.g. 640x360).")
        ] = None,
        fps: Annotated[int | None, typer.Option(help="Frame rate instead of the profile's.")] = None,
        kbit: Annotated[
            int | None, typer.Option(help="Video bitrate ceiling instead of the profile's, kbit/s.")
        ] = None,
    ) -> None:
        """A real WebRTC call (headless Chromium) from the village to the NOC through the lab's path.

        Prints each direction's outcome (holds, degraded, fails) and its figures. Exit 0 when both directions
        hold, 1 when one is degraded or fails (a call that cannot connect fails), 2 when no call could be made."""
        from desanet.lab.call import call
        from desanet.lab.lab import LabError

        override: dict[str, int] = {}
        if video:
            w, _, h = video.lower().partition("x")
            if not (w.isdigit() and h.isdigit()):
                _fail(f"--video {video!r}: give WIDTHxHEIGHT, e.g. 640x360", 2)
            override.update(video_width=int(w), video_height=int(h))
        if fps is not None:
            override["video_fps"] = fps
        if kbit is not None:
            override["video_kbit"] = kbit
        try:
            result = call(village, profile, seconds=duration, video=override)
        except (LabError, InventoryError) as exc:  # no lab, no such village or profile, no Chromium, busy
            _fail(str(exc), 2)
        o = result.outcome
        if as_json:
            rec = result.record
            typer.echo(
                json.dumps(
                    {
                        "village": result.village,
                        "profile": result.profile.name,
                        "video": {
                            "width": result.profile.video_width,
                            "height": result.profile.video_height,
                            "fps": result.profile.video_fps,
                            "kbit": result.profile.video_kbit,
                        },
                        "outcome": o.outcome,
                        "connected": o.connected,
                        "error": o.error,
                        "setup_s": o.setup_s,
                        "directions": {d: asdict(x) for d, x in o.directions.items()},
                        "cpu_s": rec.get("cpu_s"),
                        "memory_bytes": rec.get("rss_bytes"),
                        "seconds": rec.get("seconds"),
                        "host_load": rec.get("host_load"),
                        "host_cpus": rec.get("host_cpus"),
                    },
                    indent=2,
                )
            )
        else:
            for line in _call_lines(result):
                typer.echo(line)
        raise typer.Exit(0 if o.outcome == "holds" else 1)


def _call_lines(result: Any) -> list[str]:
    """A lab call in words: the setup, then one line per direction with its outcome and figures."""
    p, o = result.profile, result.outcome
    head = f"Call {result.village} <-> NOC at {p.name} ({p.video_width}x{p.video_height}, {p.video_fps} fps, "
    head += f"{p.video_kbit} kbit/s): "
    if not o.connected:
        return [head + "did not connect", f"  fails: {o.error}"]
    lines = [head + f"connected in {o.setup_s:.1f} s"]
    names = {"up": "up   (village -> NOC)", "down": "down (NOC -> village)"}
    for d, x in o.directions.items():
        figures = (
            f"{x.fps or 0:.0f} fps {x.width or 0}x{x.height or 0}, frozen {(x.freeze_ratio or 0):.1%}, "
            f"audio concealed {(x.audio_concealment_ratio or 0):.1%}, loss {(x.video_loss_ratio or 0):.1%}, "
            f"jitter buffer {x.jitter_buffer_ms or 0:.0f} ms, {x.kbit or 0:.0f} kbit/s, limited by {x.limitation}"
        )
        lines.append(f"  {names.get(d, d)}: {x.outcome:<8} {figures}")
        lines.extend(f"      {r}" for r in x.reasons)
    cpu, mem = result.record.get("cpu_s") or {}, result.record.get("rss_bytes") or {}
    secs = result.record.get("seconds") or 0
    if cpu and secs:
        lines.append(
            "  Chromium: "
            + ", ".join(f"{r} {cpu[r] / secs:.2f} core {mem.get(r, 0) / 1e6:.0f} MB" for r in sorted(cpu))
        )
    load, cpus = result.record.get("host_load") or [], result.record.get("host_cpus") or 0
    if cpus and load and max(load) > cpus:
        lines.append(
            f"  Host busy (load {max(load):.1f} on {cpus} CPUs): a starved CPU looks like congestion to Chrome, "
            "so freezes and concealment may be the host's, not the link's; repeat on a quiet host."
        )
    return lines


def _busy(x: dict[str, Any] | None) -> bool:
    """A link direction worth a line: it dropped something or queued over a millisecond."""
    if not x or x.get("offered_packets") is None:
        return False
    drops = x["dropped_queue_packets"] + x["dropped_loss_packets"] + x["dropped_blackhole_packets"]
    return bool(drops) or (x["queue_delay_ms_max"] or 0) > 1


def _link_words(x: dict[str, Any]) -> str:
    cap = f"cap {x['cap_mbit']:g} Mbit/s, buffer {x['buffer_ms']:g} ms" if x["cap_mbit"] else "uncapped"
    return (
        f"{cap}: {x['passed_mbit']:.2f} Mbit/s passed, {x['offered_packets']} packets offered, dropped "
        f"{x['dropped_queue_packets']} by the queue, {x['dropped_loss_packets']} by loss, "
        f"{x['dropped_blackhole_packets']} by a cut; queue delay p50 {_ms(x['queue_delay_ms_p50'])} "
        f"max {_ms(x['queue_delay_ms_max'])} (sampled)"
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _describe(imp: dict[str, Any]) -> str:
    parts = []
    if imp.get("blackholed"):
        parts.append("BLACKHOLED")
    for d, label in (("down", "down"), ("up", "up")):
        x = imp[d]
        bits = []
        if x.get("delay_ms") is not None:
            bits.append(f"delay {x['delay_ms']:g} ms")
        if x.get("jitter_ms") is not None:
            shape = x.get("delay_distribution")
            bits.append(f"jitter {x['jitter_ms']:g} ms {shape}" if shape else f"jitter ±{x['jitter_ms']:g} ms")
        if x.get("delay_correlation_pct") is not None:
            bits.append(f"delay correlation {x['delay_correlation_pct']:g} %")
        if x.get("reorder"):
            bits.append("reordering")
        if x.get("loss_pct") is not None:
            bits.append(f"loss {x['loss_pct']:g} %")
        if x.get("rate_mbit") is not None:
            bits.append(f"rate {x['rate_mbit']:g} Mbit/s")
        if x.get("buffer_ms") is not None:
            bits.append(f"buffer {x['buffer_ms']:g} ms")
        if bits:
            parts.append(f"{label}: {', '.join(bits)}")
    return "; ".join(parts) or "clean"
