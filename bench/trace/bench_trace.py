"""What one scheduled trace costs on a healthy district path: how long it holds its slot, and its CPU.

Not a test (timing figures need a quiet machine): it writes one JSON line per phase to `--out` and prints them;
exporter/scheduler.py (`trace_slot_seconds`) and docs/performance.md ("Trace at province scale") quote them.

The path is the lab's (docs/lab.md): NOC -> core -> kecamatan router -> village router, Linux namespaces with
the kernel's ICMP rate limiting as shipped (net.ipv4.icmp_ratelimit 1000 ms, icmp_ratemask 6168: time-exceeded
from one router to one host, burst 6 then one a second), every link healthy (no impairment, contracted caps).
The lab is this script's own (prefix `btr`, a synthetic inventory of `--villages` over `--kecamatan`, no snmpd
or iperf3) and is taken down at the end.

Each phase runs real traces (probes/trace.py `trace_blocking`, the scheduler's settings: ICMP, 16 hops, 3 probes
a hop) from the NOC namespace at `rate` traces a second, evenly spaced over `--seconds`, villages in turn, each in
its own thread as the exporter runs them; the rates are a shard's at 5-minute traces (217, 4,250 and 8,500
villages: 0.72, 14.2 and 28.3 a second). With `--echoes N`, `ping` in the NOC namespace sends N echoes a second
to 127.0.0.1 meanwhile: the echo replies an exporter's ICMP engine receives at N villages and one echo a second
(every reply reaches every open trace socket's kernel filter). Per trace: its duration (what it holds a slot),
its thread's CPU time, whether every probe was answered. Every process is started here and stopped by its PID.

    sudo nice -n 19 .venv/bin/python bench/trace/bench_trace.py --rates 0.72 14.2 28.3 --echoes 0 4250 \\
        --out bench/trace/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PREFIX = "btr"
MAX_TRACES = 5000  # per phase, whatever the rate and seconds asked
MAX_THREADS = 256
DRAIN_SECONDS = 30.0  # after the last trace was due: three deadlines


def sh(*argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env, timeout=timeout).stdout


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def commit(root: Path) -> str:
    if not (root / ".git").exists():
        return f"copy at {root}"
    head = sh("git", "-C", str(root), "rev-parse", "--short", "HEAD").strip()
    dirty = sh("git", "-C", str(root), "status", "--porcelain", "--", "probes/trace.py").strip()
    return head + ("+trace.py" if dirty else "")


# ------------------------------------------------------------------------------------------------- the worker
def worker(rate: float, seconds: float, targets: list[str]) -> dict[str, Any]:
    """Runs inside the NOC namespace (`ip netns exec`): traces at `rate` a second for `seconds`."""
    from desanet.probes.trace import TraceSettings, trace_blocking

    settings = TraceSettings(max_hops=16, probes_per_hop=3)  # the scheduler's (inventory defaults)
    trace_blocking(targets[0], settings)  # scapy's first import is the process's, not a trace's
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    running = 0
    peak = 0

    def one(address: str, due: float) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        t0, c0 = time.monotonic(), time.thread_time()
        try:
            r = trace_blocking(address, settings)
            row: dict[str, Any] = {
                "lag": t0 - due,
                "duration": r.duration_seconds,
                "cpu": time.thread_time() - c0,
                "all_answered": all(h.received == h.sent for h in r.hops),
                "reached": r.reached,
                "silent_hops": sum(1 for h in r.hops if h.received == 0),
                "sent": r.probes_sent,
            }
        except Exception as exc:  # reported, not fatal: the phase goes on
            row = {"error": f"{type(exc).__name__}: {exc}", "duration": time.monotonic() - t0}
        with lock:
            running -= 1
            rows.append(row)

    n = min(MAX_TRACES, max(1, round(rate * seconds)))
    order = targets[:]
    random.Random(16).shuffle(order)
    start = time.monotonic() + 0.5
    c0 = time.process_time()
    pool = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="trace")
    futures = []
    for i in range(n):
        due = start + i / rate
        time.sleep(max(0.0, due - time.monotonic()))
        futures.append(pool.submit(one, order[i % len(order)], due))
    # A trace ends by its deadline (10 s); give the last ones that and a margin, then report the rest unfinished
    # (the caller exits with os._exit: a thread cannot be stopped).
    wait(futures, timeout=DRAIN_SECONDS)
    pool.shutdown(wait=False, cancel_futures=True)
    wall = time.monotonic() - start
    ok = [r for r in rows if "error" not in r]
    durations = sorted(r["duration"] for r in ok)

    def q(p: float) -> float | None:
        return round(durations[min(len(durations) - 1, int(p * len(durations)))], 4) if durations else None

    with lock:
        rows = list(rows)
    return {
        "traces": len(rows),
        "unfinished": n - len(rows),
        "errors": sorted({r["error"] for r in rows if "error" in r})[:5],
        "duration_mean_s": round(statistics.fmean(durations), 4) if durations else None,
        "duration_p50_s": q(0.5),
        "duration_p90_s": q(0.9),
        "duration_max_s": q(1.0),
        "cpu_mean_ms": round(statistics.fmean(r["cpu"] for r in ok) * 1e3, 2) if ok else None,
        "process_cores": round((time.process_time() - c0) / wall, 3),
        "all_answered_share": round(sum(r["all_answered"] for r in ok) / len(ok), 3) if ok else None,
        "reached_share": round(sum(r["reached"] for r in ok) / len(ok), 3) if ok else None,
        "with_silent_hop_share": round(sum(r["silent_hops"] > 0 for r in ok) / len(ok), 3) if ok else None,
        "start_lag_max_s": round(max((r["lag"] for r in ok), default=0.0), 3),
        "in_flight_mean": round(rate * statistics.fmean(durations), 2) if durations else None,
        "in_flight_peak": peak,
    }


# ------------------------------------------------------------------------------------------------- the lab
def lab_env() -> dict[str, str]:
    return {**os.environ, "DESANET_LAB_PREFIX": PREFIX}


def lab_up(villages: int, kecamatan: int, tmp: Path) -> dict[str, Any]:
    inv = tmp / "inventory.yaml"
    sh(sys.executable, "-m", "desanet.cli", "inventory", "synth", "--villages", str(villages),
       "--kecamatan", str(kecamatan), "-o", str(inv))  # fmt: skip
    sh(sys.executable, "-m", "desanet.cli", "lab", "up", "--no-services", "--inventory", str(inv), env=lab_env())
    return dict(json.loads((Path("/run/desanet-lab") / PREFIX / "state.json").read_text()))


def lab_down() -> None:
    subprocess.run([sys.executable, "-m", "desanet.cli", "lab", "down"], env=lab_env(), capture_output=True,
                   timeout=300, check=False)  # fmt: skip


def set_ratemask(state: dict[str, Any], value: str) -> None:
    from desanet.lab.netns import write_sysctls

    p = state["plan"]
    for ns in [p["core_ns"], *(k["ns"] for k in p["kecamatan"]), *(v["ns"] for v in p["villages"])]:
        write_sysctls(ns, {"ipv4/icmp_ratemask": value})


def phase(noc: str, rate: float, seconds: float, echoes: int, targets: list[str], code: Path) -> dict[str, Any]:
    ping: subprocess.Popen[bytes] | None = None
    if echoes > 0:
        interval = f"{1 / echoes:.6f}"
        ping = subprocess.Popen(["ip", "netns", "exec", noc, "ping", "-q", "-i", interval, "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1.0)
    load_start = load1()
    try:
        out = sh("ip", "netns", "exec", noc, sys.executable, str(code / "bench/trace/bench_trace.py"), "worker",
                 "--rate", str(rate), "--seconds", str(seconds), "--targets", ",".join(targets),
                 timeout=seconds + 120)  # fmt: skip
    finally:
        if ping is not None:
            ping.send_signal(signal.SIGINT)
            try:
                ping.wait(10)
            except subprocess.TimeoutExpired:
                ping.kill()
                ping.wait(5)
    return {**json.loads(out), "load_start": load_start, "load_end": load1()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--targets", required=True)
    ap.add_argument("--villages", type=int, default=76, help="lab villages (76: 2 in each of 38 kecamatan)")
    ap.add_argument("--kecamatan", type=int, default=38)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.72, 14.2, 28.3])
    ap.add_argument("--echoes", type=int, nargs="+", default=[0])
    ap.add_argument("--ratemask", nargs="+", default=["6168"], help="routers' icmp_ratemask (6168 Linux's, 0 none)")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--down-share", type=float, default=0.0, help="share of villages cut (lab impair --down)")
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose probes/trace.py the traces run")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.cmd == "worker":
        print(json.dumps(worker(args.rate, args.seconds, args.targets.split(","))), flush=True)
        os._exit(0)  # unfinished traces' threads, if any, end with the process
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, raw sockets)")
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        lab_down()
        try:
            state = lab_up(args.villages, args.kecamatan, Path(tmp))
            noc = str(state["plan"]["noc_ns"])
            targets = [str(v["router"]) for v in state["plan"]["villages"]]
            down = [str(v["slug"]) for v in state["plan"]["villages"]][:: max(1, round(1 / args.down_share))] if (
                args.down_share > 0) else []  # fmt: skip
            for slug in down:
                sh(sys.executable, "-m", "desanet.cli", "lab", "impair", slug, "--down", env=lab_env())
            for mask in args.ratemask:
                set_ratemask(state, mask)
                for echoes in args.echoes:
                    for rate in args.rates:
                        row = {
                            "bench": "trace",
                            "commit": commit(args.code),
                            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "villages": args.villages,
                            "kecamatan": args.kecamatan,
                            "ratemask": mask,
                            "rate_per_s": rate,
                            "echoes_per_s": echoes,
                            "seconds": args.seconds,
                            "villages_down": len(down),
                            "note": args.note,
                            **phase(noc, rate, args.seconds, echoes, targets, args.code),
                        }
                        print(json.dumps(row), flush=True)
                        if args.out:
                            with args.out.open("a") as f:
                                f.write(json.dumps(row) + "\n")
        finally:
            lab_down()


if __name__ == "__main__":
    main()
