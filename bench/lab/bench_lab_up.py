"""The whole district in the lab, capped and uncapped: how long `lab up` and `lab down` take, the memory it
holds, and what the caps cost in CPU.

For each mode and repetition it writes a synthetic inventory (`desanet inventory synth --villages N`), then:

- `lab up` wall seconds and the CPU seconds of `lab up` and everything it waited for (the children's rusage:
  ip, tc, nft, ...; not the long-running snmpd/iperf3/emulator/sampler, which outlive it);
- memory in use (MemTotal - MemAvailable) before and after, and the count of qdiscs and htb classes in force;
- the link-counter sampler's CPU over an idle stretch (its /proc/PID/stat utime + stime);
- with traffic: a UDP stream from the NOC to one village at half its cap, for a few seconds, and the CPU
  seconds of the iperf3 client and server (the kernel's forwarding, tbf/htb included, runs mostly in the
  sender's context; timer-driven dequeues may land elsewhere) plus the sampler's, capped vs uncapped;
- `lab down` wall seconds, then a check that no namespace, state directory or process of the lab is left.

Run as root, with no other lab under the same prefix (it uses its own, `bq`):

    python bench/lab/bench_lab_up.py --villages 217 --reps 3 --json out.json

Not a test: it asserts only that `down` left nothing, and prints a Markdown table of medians [min..max]. On a
shared machine the figures move with the other tenants' load; the table says the load average it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PREFIX = "bq"
RUN = Path("/run/desanet-lab")
TICK = os.sysconf("SC_CLK_TCK")


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desanet.cli", *args], env=env, text=True, capture_output=True, timeout=timeout
    )


def mem_used_mb() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kb = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
    return kb / 1024


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def count_shaping(state: dict[str, Any]) -> dict[str, int]:
    """tbf qdiscs (every cap is one) and those under a village's htb class (its cap toward the NOC)."""
    nss = [state["plan"]["core_ns"], *(k["ns"] for k in state["plan"]["kecamatan"])]
    qdiscs = []
    for ns in nss:
        out = subprocess.run(["tc", "-n", ns, "-j", "qdisc", "show"], capture_output=True, text=True, check=True)
        qdiscs += json.loads(out.stdout)
    tbf = [q for q in qdiscs if q.get("kind") == "tbf"]
    return {"tbf": len(tbf), "htb_classes": sum(1 for q in tbf if str(q.get("parent", "")).startswith("1:"))}


def traffic_cpu(state: dict[str, Any], seconds: int, rate_mbit: float) -> dict[str, float]:
    """A UDP stream NOC -> one village at rate_mbit: CPU seconds of client, server and sampler."""
    village = state["plan"]["villages"][0]
    server_pid = state["pids"][f"iperf3:{village['slug']}"]["pid"]
    sampler = state["pids"]["linkstats"]["pid"]
    s0, m0, c0 = proc_cpu(server_pid), proc_cpu(sampler), children_cpu()
    subprocess.run(
        ["ip", "netns", "exec", state["plan"]["noc_ns"], "iperf3", "-c", village["router"], "-u", "-b",
         f"{rate_mbit}M", "-l", "1400", "-t", str(seconds), "-J"],
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    return {
        "client_cpu_s": children_cpu() - c0,
        "server_cpu_s": proc_cpu(server_pid) - s0,
        "sampler_cpu_s": proc_cpu(sampler) - m0,
    }


def one_run(inventory: Path, uncapped: bool, idle_seconds: float, traffic_seconds: int) -> dict[str, Any]:
    env = {**os.environ, "DESANET_LAB_PREFIX": PREFIX}
    mem0 = mem_used_mb()
    cpu0, t0 = children_cpu(), time.monotonic()
    up = cli("lab", "up", "--inventory", str(inventory), *(["--uncapped"] if uncapped else []), env=env)
    up_s, up_cpu = time.monotonic() - t0, children_cpu() - cpu0
    if up.returncode != 0:
        cli("lab", "down", env=env)
        raise SystemExit(f"lab up failed: {up.stderr}")
    try:
        return _measure(inventory, uncapped, idle_seconds, traffic_seconds, env, up_s, up_cpu, mem0)
    except BaseException:
        cli("lab", "down", env=env)  # never leave the district up
        raise


def _measure(
    inventory: Path,
    uncapped: bool,
    idle_seconds: float,
    traffic_seconds: int,
    env: dict[str, str],
    up_s: float,
    up_cpu: float,
    mem0: float,
) -> dict[str, Any]:
    state = json.loads((RUN / PREFIX / "state.json").read_text())
    out: dict[str, Any] = {
        "mode": "uncapped" if uncapped else "capped",
        "up_s": up_s,
        "up_reported_s": state["up_seconds"],
        "up_cpu_s": up_cpu,
        "namespaces": len(state["plan"]["villages"]) + len(state["plan"]["kecamatan"]) + 2,
        "processes": len(state["pids"]),
        **count_shaping(state),
    }
    time.sleep(5)  # let the agents settle before reading memory
    out["mem_mb"] = mem_used_mb() - mem0
    sampler = state["pids"]["linkstats"]["pid"]
    s0 = proc_cpu(sampler)
    time.sleep(idle_seconds)
    out["sampler_idle_cpu_pct"] = (proc_cpu(sampler) - s0) / idle_seconds * 100
    cap = state["plan"]["villages"][0].get("down_mbit") or 20
    out.update(traffic_cpu(state, traffic_seconds, cap / 2))
    t1 = time.monotonic()
    down = cli("lab", "down", env=env)
    out["down_s"] = time.monotonic() - t1
    left_ns = [n for n in os.listdir("/run/netns") if n.startswith(f"{PREFIX}-")] if Path("/run/netns").exists() else []
    left_pids = [
        e["pid"] for e in state["pids"].values() if Path(f"/proc/{e['pid']}").exists() and _not_zombie(e["pid"])
    ]
    out["down_clean"] = down.returncode == 0 and not left_ns and not (RUN / PREFIX).exists() and not left_pids
    if not out["down_clean"]:
        raise SystemExit(f"lab down left {left_ns[:5]} namespaces, pids {left_pids[:5]}: {down.stderr}")
    return out


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def table(rows: list[dict[str, Any]]) -> str:
    keys = [
        ("up_s", "lab up, s"),
        ("up_cpu_s", "CPU of lab up, s"),
        ("down_s", "lab down, s"),
        ("mem_mb", "memory in use, MB"),
        ("tbf", "tbf qdiscs"),
        ("htb_classes", "htb classes"),
        ("sampler_idle_cpu_pct", "sampler idle, % of a core"),
        ("client_cpu_s", "UDP at half the cap: iperf3 client CPU, s"),
        ("server_cpu_s", "... iperf3 server CPU, s"),
        ("sampler_cpu_s", "... sampler CPU, s"),
    ]
    modes = sorted({r["mode"] for r in rows})
    lines = ["| figure | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for k, label in keys:
        cells = []
        for m in modes:
            vals = [r[k] for r in rows if r["mode"] == m]
            med = statistics.median(vals)
            cells.append(f"{med:.3g} [{min(vals):.3g}..{max(vals):.3g}]" if len(vals) > 1 else f"{med:.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--villages", type=int, default=217)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--traffic-seconds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the lab)")
    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp) / "district.yaml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "desanet.cli",
                "inventory",
                "synth",
                "--villages",
                str(args.villages),
                "-o",
                str(inv),
            ],
            check=True,
            capture_output=True,
        )
        rows = []
        load0 = os.getloadavg()[0]
        for rep in range(args.reps):
            for uncapped in (False, True) if rep % 2 == 0 else (True, False):
                rows.append(one_run(inv, uncapped, args.idle_seconds, args.traffic_seconds))
                print(json.dumps(rows[-1]), file=sys.stderr)
    meta = {
        "villages": args.villages,
        "reps": args.reps,
        "load_avg_1m": [load0, os.getloadavg()[0]],
        "nproc": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    print(
        f"{args.villages} villages, {args.reps} repetitions per mode, "
        f"load average {load0:.1f} -> {meta['load_avg_1m'][1]:.1f}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
