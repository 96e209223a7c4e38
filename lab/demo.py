"""The README's demo: measure every village of the running lab from its NOC namespace, print what desanet
sees, then leave the exporter and Prometheus running there for exploring.

It uses exactly the probes and the readiness logic the exporter uses; nothing here is demo-only except the
table. Run by scripts/demo.sh after `desanet lab up`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from desanet.district import Inventory, load_inventory, resolve_secret
from desanet.lab import lab as labmod
from desanet.lab.netns import run_in_netns
from desanet.verdict import readiness as rd

VERDICT_STYLE = {"ready": "green", "at_risk": "yellow", "not_ready": "red", "unknown": "dim"}


async def measure(inv: Inventory, console: Console) -> dict[str, dict[str, Any]]:
    from desanet.probes.icmp import IcmpEngine, IcmpSettings
    from desanet.probes.snmp import SnmpPoller, settings_from_config
    from desanet.probes.stamp import StampSettings
    from desanet.probes.stamp import probe as stamp_probe
    from desanet.probes.throughput import ThroughputError, ThroughputSettings
    from desanet.probes.throughput import probe as tp_probe

    out: dict[str, dict[str, Any]] = {v.slug: {} for v in inv.villages}
    t0 = time.monotonic()
    async with IcmpEngine() as engine, SnmpPoller() as poller:
        console.print(f"[bold]ICMP[/]: 50 echoes to each of {len(inv.villages)} villages through one socket …")
        trains = [
            engine.train(v.address, IcmpSettings(count=50, interval=0.02, timeout=1.0), label=v.slug)
            for v in inv.villages
        ]
        snmp_items = [(v.address, settings_from_config(inv.snmp_for(v), resolve_secret)) for v in inv.villages]
        snmp_task = asyncio.create_task(poller.poll_many(snmp_items))
        for v, r in zip(inv.villages, await asyncio.gather(*trains), strict=True):
            out[v.slug]["icmp"] = r
        console.print("[bold]STAMP[/]: a 2 s video-like stream (50 pps, 1200 B, AF41) to each reflector …")
        sem = asyncio.Semaphore(8)

        async def stamp(v: Any) -> None:
            ep = v.stamp_address()
            if ep is None:
                return
            async with sem:
                out[v.slug]["stamp"] = await stamp_probe(ep[0], StampSettings(port=ep[1], duration_seconds=2.0))

        await asyncio.gather(*(stamp(v) for v in inv.villages))
        for v, r in zip(inv.villages, await snmp_task, strict=True):
            out[v.slug]["snmp"] = r
        console.print("[bold]Throughput[/]: 1 s each way per village, one test per kecamatan uplink at a time …")
        by_kec: dict[str, list[Any]] = {}
        for v in inv.villages:
            if v.iperf3_address() is not None and out[v.slug]["icmp"].received:
                by_kec.setdefault(v.kecamatan, []).append(v)
        kec_sem = asyncio.Semaphore(4)

        async def kec_tests(villages: list[Any]) -> None:
            async with kec_sem:
                for v in villages:
                    addr, port = v.iperf3_address()
                    try:
                        out[v.slug]["throughput"] = await tp_probe(
                            addr, ThroughputSettings(port=port, max_seconds=1.0, omit_seconds=0.2)
                        )
                    except ThroughputError as exc:
                        out[v.slug]["throughput_error"] = str(exc)

        await asyncio.gather(*(kec_tests(vs) for vs in by_kec.values()))
    console.print(f"measured in {time.monotonic() - t0:.1f} s\n")
    return out


def assess(inv: Inventory, slug: str, m: dict[str, Any]) -> rd.Readiness:
    icmp, stamp, tp = m.get("icmp"), m.get("stamp"), m.get("throughput")
    jitter = icmp.jitter_seconds if icmp else None
    if stamp is not None and stamp.received:
        one_way = [j for j in (stamp.forward.jitter_seconds, stamp.backward.jitter_seconds) if j is not None]
        jitter = max(one_way) if one_way else jitter
    meas = rd.Measurements(
        rtt_p95_seconds=icmp.rtt.p95 if icmp and icmp.rtt else None,
        jitter_seconds=jitter,
        loss_ratio=icmp.loss_ratio if icmp else None,
        burst_loss_ratio=icmp.burst_loss_ratio if icmp else None,
        down_bits_per_second=tp.down.bits_per_second if tp and tp.down else None,
        up_bits_per_second=tp.up.bits_per_second if tp and tp.up else None,
    )
    village = inv.village(slug)
    return rd.assess(meas, inv.profile_for(village))


def table(inv: Inventory, results: dict[str, dict[str, Any]]) -> Table:
    t = Table(title=f"{inv.district}: will each village's video call hold up?", title_justify="left")
    for col in (
        "village",
        "kecamatan",
        "verdict",
        "limiting",
        "RTT p50 ms",
        "loss %",
        "jitter ms ↓/↑",
        "down/up Mbit/s",
        "rx dBm",
        "MOS",
    ):
        t.add_column(
            col, justify="right" if "ms" in col or "%" in col or "Mbit" in col or col in ("rx dBm", "MOS") else "left"
        )
    order = {"not_ready": 0, "at_risk": 1, "unknown": 2, "ready": 3}
    rows = []
    for v in inv.villages:
        m = results[v.slug]
        r = assess(inv, v.slug, m)
        rows.append((order[r.verdict], v, m, r))
    for _, v, m, r in sorted(rows, key=lambda x: (x[0], x[1].kecamatan, x[1].slug)):
        icmp, stamp, tp, snmp = m.get("icmp"), m.get("stamp"), m.get("throughput"), m.get("snmp")
        jit = "–"
        if stamp is not None and stamp.received:
            jit = f"{(stamp.forward.jitter_seconds or 0) * 1e3:.1f}/{(stamp.backward.jitter_seconds or 0) * 1e3:.1f}"
        rate = "–"
        if tp is not None and tp.down and tp.up:
            rate = f"{tp.down.bits_per_second / 1e6:.1f}/{tp.up.bits_per_second / 1e6:.1f}"
        rx = "–"
        if snmp is not None and snmp.success and snmp.optics and snmp.optics[0].rx_power_dbm is not None:
            rx = f"{snmp.optics[0].rx_power_dbm:.1f}"
        t.add_row(
            v.name,
            v.kecamatan,
            f"[{VERDICT_STYLE[r.verdict]}]{r.verdict.replace('_', ' ')}[/]",
            "" if r.verdict == "ready" else (r.limiting or ""),
            f"{icmp.rtt.p50 * 1e3:.2f}" if icmp and icmp.rtt else "–",
            f"{icmp.loss_ratio * 100:.0f}" if icmp and icmp.loss_ratio is not None else "–",
            jit,
            rate,
            rx,
            f"{r.mos:.2f}" if r.mos is not None else "–",
        )
    return t


def start_exporter(state: dict[str, Any], inventory: Path, console: Console) -> None:
    """Leave `desanet serve` and a Prometheus running in the NOC namespace; `desanet lab down` stops them."""
    import shutil

    d = labmod.state_dir(state["prefix"])
    noc = state["plan"]["noc_ns"]
    if "serve" not in state["pids"] or not labmod._alive(state["pids"]["serve"]):
        labmod._spawn(
            state,
            "serve",
            noc,
            [
                sys.executable,
                "-m",
                "desanet.cli",
                "serve",
                "--inventory",
                str(inventory),
                "--web.listen-address",
                "127.0.0.1:9917",
            ],
            d / "serve.log",
            env={"DESANET_STATE_DIR": str(d / "desanet-state")},
        )
    prom = shutil.which("prometheus")
    if prom and ("prometheus" not in state["pids"] or not labmod._alive(state["pids"]["prometheus"])):
        rules = Path(__file__).resolve().parent.parent / "alerts" / "desanet.rules.yml"
        cfg = d / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 10s, evaluation_interval: 10s}\n"
            + (f"rule_files: ['{rules}']\n" if rules.exists() else "")
            + "scrape_configs:\n  - job_name: desanet\n    static_configs: [{targets: ['127.0.0.1:9917']}]\n"
        )
        labmod._spawn(
            state,
            "prometheus",
            noc,
            [prom, f"--config.file={cfg}", f"--storage.tsdb.path={d / 'tsdb'}", "--web.listen-address=127.0.0.1:9090"],
            d / "prometheus.log",
        )
    labmod.save_state(state)
    console.print(
        "\nThe exporter and Prometheus keep running in the lab's NOC namespace:\n"
        "  desanet lab exec -- curl -s 127.0.0.1:9917/metrics | grep desanet_video_verdict\n"
        "  desanet lab exec -- curl -s 127.0.0.1:9090/api/v1/query "
        "--data-urlencode 'query=desanet_video_verdict{verdict=\"not_ready\"} == 1'\n"
        "  desanet lab exec -- desanet check pesanggaran\n"
        "  desanet lab down        # stops everything and removes the lab"
    )


def main() -> None:
    console = Console(width=None if sys.stdout.isatty() else 150)  # a log file gets the whole table
    state = labmod.load_state()
    if state is None or not state.get("complete"):
        console.print("[red]the lab is not up: run `desanet lab up` first[/]")
        raise SystemExit(1)
    os.environ.update(labmod.exec_env(os.environ))  # the secrets the lab's agents accept, where none is set
    inventory = Path(state["inventory"])
    inv = load_inventory(inventory)
    noc = state["plan"]["noc_ns"]
    results = run_in_netns(noc, lambda: asyncio.run(measure(inv, console)))
    console.print(table(inv, results))
    if not os.environ.get("DESANET_DEMO_NO_SERVE"):
        start_exporter(state, inventory, console)


if __name__ == "__main__":
    main()
