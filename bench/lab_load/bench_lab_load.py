"""What cross traffic costs in CPU: each kind of `desanet lab load`, measured on a lab of its own.

For each case the script starts one load, lets it settle, then over a window reads (a) the load process's own
user and system CPU from /proc/PID/stat, which includes the kernel's work of sending through the veths and the
forwarding namespaces that runs in its syscalls, (b) the whole machine's busy CPU from /proc/stat (with
whatever else runs on it), and (c) what the load delivered. It prints one JSON line per case.

    sudo .venv/bin/python bench/lab_load/bench_lab_load.py [--seconds 10]

It brings up its own lab under the prefix `bl<pid>` from the shipped inventory and takes it down at the end;
every load is bounded by --for and stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HZ = os.sysconf("SC_CLK_TCK")
CASES = [
    ("bulk 4 flows down, one 20 Mbit/s village", ["kabat", "--kind", "bulk", "--flows", "4"]),
    ("bulk 4 flows down, one 100 Mbit/s village", ["kepatihan", "--kind", "bulk", "--flows", "4"]),
    ("bulk 1 flow up, one 20 Mbit/s village", ["licin", "--kind", "bulk", "--up", "max", "--flows", "1"]),
    ("video 5 Mbit/s down, 4 s segments", ["giri", "--kind", "video"]),
    ("cbr 4 Mbit/s up (a camera)", ["glagah", "--kind", "cbr"]),
    (
        "bulk 2 flows down per village, kecamatan Banyuwangi (3 × 100 Mbit/s)",
        ["--kecamatan", "Banyuwangi", "--flows", "2"],
    ),
    # Through the delay emulator: every packet of the load crosses it (NFQUEUE, Python) both ways.
    ("bulk 4 flows down, 20 Mbit/s village with 20 ms delay each way", ["sempu", "--kind", "bulk", "--flows", "4"]),
]
IMPAIR = {"sempu": ["--delay", "20", "--up-delay", "20"]}


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def machine_busy() -> tuple[float, float]:
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / HZ, sum(vals) / HZ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    env = {**os.environ, "DESANET_LAB_PREFIX": f"bl{os.getpid() % 100000}"}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "desanet.cli", *argv], env=env, text=True, capture_output=True, timeout=300
        )

    up = cli("lab", "up", "--inventory", str(ROOT / "inventory.yaml"))
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    try:
        time.sleep(3)
        (b0, _), w0 = machine_busy(), time.monotonic()
        time.sleep(args.seconds)
        (b1, _), w1 = machine_busy(), time.monotonic()
        print(
            json.dumps(
                {
                    "case": "no load (the lab idle, and whatever else runs)",
                    "machine_busy_cpu_percent": round(100 * (b1 - b0) / (w1 - w0), 1),
                    "loadavg": Path("/proc/loadavg").read_text().split()[0],
                }
            )
        )
        state = json.loads((Path("/run/desanet-lab") / env["DESANET_LAB_PREFIX"] / "state.json").read_text())
        emulator = state["pids"]["emulator"]["pid"]
        for name, load_args in CASES:
            if load_args[0] in IMPAIR:
                cli("lab", "impair", load_args[0], *IMPAIR[load_args[0]]).check_returncode()
            cli("lab", "load", *load_args, "--for", str(args.seconds + 10)).check_returncode()
            st = json.loads(cli("lab", "status", "--json").stdout)
            task = next(iter(st["tasks"].values()))
            time.sleep(3)  # past slow start and the first queue fill
            e0, c0, (b0, _), w0 = cpu_of(emulator), cpu_of(task["pid"]), machine_busy(), time.monotonic()
            s0 = json.loads(Path(task["stats"]).read_text())
            time.sleep(args.seconds)
            e1, c1, (b1, _), w1 = cpu_of(emulator), cpu_of(task["pid"]), machine_busy(), time.monotonic()
            s1 = json.loads(Path(task["stats"]).read_text())
            moved = sum(d["received_bytes"] for v in s1["villages"].values() for d in v.values()) - sum(
                d["received_bytes"] for v in s0["villages"].values() for d in v.values()
            )
            row: dict[str, Any] = {
                "case": name,
                "mbit_per_second": round(moved * 8 / (s1["updated"] - s0["updated"]) / 1e6, 2),
                "load_process_cpu_percent": round(100 * (c1 - c0) / (w1 - w0), 1),
                "emulator_cpu_percent": round(100 * (e1 - e0) / (w1 - w0), 1),
                "machine_busy_cpu_percent": round(100 * (b1 - b0) / (w1 - w0), 1),  # of one core; 200 = both
                "machine_cores": os.cpu_count(),
                "loadavg": Path("/proc/loadavg").read_text().split()[0],
            }
            print(json.dumps(row), flush=True)
            cli("lab", "load", "--stop")
            time.sleep(1)
    finally:
        cli("lab", "down")


if __name__ == "__main__":
    main()
