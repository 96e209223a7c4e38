"""desanet's throughput probe vs Debian's iperf3 client on the same lab link, in the same run.

For each repetition, RTT setting and tbf cap (both directions), and each direction, the two tools measure the
same village one after the other (the order alternates between repetitions so neither always meets a fresher
link). Reported per tool: goodput error against the ideal (cap × 1448/1514: tbf counts whole frames), the
data-phase seconds and the payload bytes the test cost the link, wall seconds including set-up, and CPU
seconds of the measuring side (the probe: its thread's CPU time, so interpreter start-up is not counted;
iperf3: the child's rusage, user + system, including its start-up of a few ms). The iperf3 server's CPU is
the same village server for both and is not counted.

Run as root on a host with a lab up (`desanet lab up`, the full one: it starts iperf3 in every village):

    DESANET_LAB_PREFIX=tq python bench/throughput/bench_throughput.py --reps 3 --json out.json

Not a test: it asserts nothing and prints a Markdown table of medians [min..max].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from desanet.lab.netns import run_in_netns
from desanet.probes.throughput import ThroughputSettings, probe

PAYLOAD, FRAME = 1448, 1514  # MSS with TCP timestamps, and the frame tbf counts


def lab_state(prefix: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((Path("/run/desanet-lab") / prefix / "state.json").read_text())
    return state


def impair(prefix: str, slug: str, *args: str) -> None:
    env = {**os.environ, "DESANET_LAB_PREFIX": prefix}
    subprocess.run(
        [sys.executable, "-m", "desanet.cli", "lab", "impair", slug, *args],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def run_probe(noc: str, address: str, direction: str, seconds: float) -> dict[str, Any]:
    settings = ThroughputSettings(direction=direction, max_seconds=seconds)  # type: ignore[arg-type]

    def measure() -> dict[str, Any]:
        cpu0, t0 = time.thread_time(), time.monotonic()
        res = asyncio.run(probe(address, settings))
        cpu, wall = time.thread_time() - cpu0, time.monotonic() - t0
        r = res.down if direction == "down" else res.up
        assert r is not None
        return {
            "goodput": r.bits_per_second,
            "link": r.link_bits_per_second,
            "seconds": r.seconds,
            "bytes": r.bytes,
            "wall": wall,
            "cpu": cpu,
            "converged": r.converged,
        }

    return run_in_netns(noc, measure)


def run_iperf3(noc: str, address: str, direction: str, seconds: float) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", noc, "iperf3", "-c", address, "-p", "5201", "-t", f"{seconds:g}", "-J"]
    if direction == "up":
        argv.append("-R")  # up = toward the NOC = the village server sends
    for _ in range(5):  # the server runs one test at a time; the previous one may still be closing
        ru0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
        ru, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - t0
        out, err = proc.stdout, proc.stderr
        data = json.loads(out or "{}")
        if "error" not in data and proc.returncode == 0:
            end = data["end"]
            return {
                "goodput": float(end["sum_received"]["bits_per_second"]),
                "seconds": float(end["sum_received"]["seconds"]),
                "bytes": int(end["sum_sent"]["bytes"]),
                "wall": wall,
                "cpu": (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime),
            }
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 failed: {out[-300:]} {err}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefix", default=os.environ.get("DESANET_LAB_PREFIX", "tq"))
    ap.add_argument("--slug", default="kepatihan", help="village whose link is capped (its kecamatan is idle)")
    ap.add_argument("--caps", default="5,20,50,100", help="tbf caps, Mbit/s, both directions")
    ap.add_argument("--delays", default="0,10", help="one-way delay each direction, ms (10 → 20 ms RTT)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="longest test per direction, both tools")
    ap.add_argument("--json", type=Path, help="write every sample here")
    args = ap.parse_args()

    plan = lab_state(args.prefix)["plan"]
    noc = plan["noc_ns"]
    village = next(v for v in plan["villages"] if v["slug"] == args.slug)
    address = village["router"]
    caps = [float(c) for c in args.caps.split(",")]
    delays = [float(d) for d in args.delays.split(",")]
    rows: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            for delay in delays:
                for cap in caps:
                    extra = ["--delay", f"{delay:g}", "--up-delay", f"{delay:g}"] if delay else []
                    impair(args.prefix, args.slug, "--restore", "--rate", f"{cap:g}", "--up-rate", f"{cap:g}", *extra)
                    ideal = cap * 1e6 * PAYLOAD / FRAME
                    for direction in ("down", "up"):
                        tools = [("desanet", run_probe), ("iperf3", run_iperf3)]
                        if rep % 2:
                            tools.reverse()
                        for tool, fn in tools:
                            r = fn(noc, address, direction, args.seconds)
                            r.update(
                                tool=tool,
                                rep=rep,
                                rtt_ms=2 * delay,
                                cap_mbit=cap,
                                direction=direction,
                                error=r["goodput"] / ideal - 1,
                            )
                            if tool == "desanet":
                                r["link_error_vs_cap"] = r["link"] / (cap * 1e6) - 1
                            rows.append(r)
                            print(
                                f"rep {rep} rtt {2 * delay:g} cap {cap:g} {direction:4} {tool:7} "
                                f"err {r['error'] * 100:+.2f} % {r['seconds']:.2f} s {r['bytes'] / 1e6:.1f} MB "
                                f"cpu {r['cpu'] if r['cpu'] is None else round(r['cpu'], 3)} s",
                                file=sys.stderr,
                                flush=True,
                            )
                            time.sleep(0.3)
    finally:
        impair(args.prefix, args.slug, "--restore")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows, args.reps))
    return 0


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} [{format(min(values), fmt)}..{format(max(values), fmt)}]"


def table(rows: list[dict[str, Any]], reps: int) -> str:
    lines = [
        f"median [min..max] over {reps} repetition(s)",
        "",
        "| RTT ms | cap Mbit/s | dir | tool | goodput error vs ideal % | link rate vs cap % | test s | MB | wall s "
        "| CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["rtt_ms"], r["cap_mbit"], r["direction"], r["tool"]) for r in rows},
        key=lambda k: (k[0], k[1], k[2] != "down", k[3]),
    )
    for rtt, cap, direction, tool in keys:
        sel = [
            r for r in rows if (r["rtt_ms"], r["cap_mbit"], r["direction"], r["tool"]) == (rtt, cap, direction, tool)
        ]
        link = [r["link_error_vs_cap"] * 100 for r in sel if "link_error_vs_cap" in r]
        cpu = [r["cpu"] for r in sel if r["cpu"] is not None]
        lines.append(
            f"| {rtt:g} | {cap:g} | {direction} | {tool} | {_cell([r['error'] * 100 for r in sel], '+.2f')} | "
            f"{_cell(link, '+.2f')} | {_cell([r['seconds'] for r in sel], '.2f')} | "
            f"{_cell([r['bytes'] / 1e6 for r in sel], '.1f')} | {_cell([r['wall'] for r in sel], '.2f')} | "
            f"{_cell(cpu, '.3f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
