"""Benchmark desanet's ICMP engine against fping and smokeping_prober: CPU, false loss, schedule, accuracy.

Not a test: it prints JSON lines and a summary for docs/performance.md "## ICMP". Two namespaces: the
probing side `bicmp-noc` (no default route) and `bicmp-far`, which answers on every address of 10.96.0.0/11
through one AnyIP local route, so 10,000 targets cost two namespaces. Nothing leaves them.

    python bench/icmp/bench_icmp.py scale --targets 1000 5000 10000 --reps 3 --seconds 30
    python bench/icmp/bench_icmp.py accuracy --reps 3 --count 50

scale: each tool probes every target once a second; CPU is the utime+stime delta in /proc/PID/stat over a
`--seconds` window after an 8 s warm-up; requests are counted on the far side of the veth (`ip -s -j link`)
once a second; every target answers, so any loss a tool reports is false. Tools run one after another,
interleaved within each repetition. smokeping_prober runs at 1,000 targets only (research/baselines.md §6: it
saturates both vCPUs from 1,000 targets and takes ~94 s to start at 5,000).

accuracy: a capture on the probing veth (tcpdump -j host, nanosecond stamps) is the ground truth; each tool
probes its own address, so requests pair with replies by (address, ICMP id, seq) and with the tool's k-th
sample by order. smokeping_prober exports only a histogram: its error is that of the mean RTT.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NOC, FAR = "bicmp-noc", "bicmp-far"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP = 8.0
SP_LISTEN = "127.0.0.1:19374"


def sh(*argv: str, check: bool = True, input_: str | None = None) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True, input=input_).stdout


def net_up() -> None:
    net_down()
    sh("ip", "netns", "add", NOC)
    sh("ip", "netns", "add", FAR)
    sh("ip", "link", "add", "n0", "netns", NOC, "type", "veth", "peer", "name", "f0", "netns", FAR)
    sh("ip", "-n", NOC, "-batch", "-", input_="link set lo up\nlink set n0 up\naddr add 10.255.1.1/30 dev n0\n"
       "route add 10.96.0.0/11 via 10.255.1.2\n")  # fmt: skip
    sh("ip", "-n", FAR, "-batch", "-", input_="link set lo up\nlink set f0 up\naddr add 10.255.1.2/30 dev f0\n"
       "route add local 10.96.0.0/11 dev lo\n")  # fmt: skip
    for ns in (NOC, FAR):  # answer every echo: no ICMP rate limit on replies in the far side
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv4.icmp_msgs_per_sec=0")


def net_down() -> None:
    for ns in (NOC, FAR):
        sh("ip", "netns", "delete", ns, check=False)


def addresses(n: int, base: int = 0) -> list[str]:
    """n target addresses in 10.96.0.0/11, skipping .0 and .255 (some tools refuse them)."""
    out: list[str] = []
    i = base
    while len(out) < n:
        i += 1
        if i & 0xFF in (0, 255):
            continue
        out.append(f"10.{96 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}")
    return out


def cpu_seconds(pid: int) -> float:
    return sum(user_sys_seconds(pid))


def user_sys_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def far_rx_packets() -> int:
    """Requests that reached the far side (its veth's received packets)."""
    data = json.loads(sh("ip", "-n", FAR, "-s", "-j", "link", "show", "f0"))
    return int(data[0]["stats64"]["rx"]["packets"])


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(proc: subprocess.Popen[Any], n: int, seconds: float) -> dict[str, Any]:
    """CPU and per-second request rate of a running prober over `seconds` after the warm-up."""
    time.sleep(WARMUP)
    if proc.poll() is not None:
        raise RuntimeError(f"prober exited early with {proc.returncode}")
    load0 = os.getloadavg()[0]
    u0, s0 = user_sys_seconds(proc.pid)
    c0 = cpu_seconds(proc.pid)
    t0 = time.monotonic()
    p_prev, t_prev = far_rx_packets(), time.monotonic()
    p_first = p_prev
    rates = []
    for k in range(1, int(seconds) + 1):
        time.sleep(max(0.0, t0 + k - time.monotonic()))
        p, t = far_rx_packets(), time.monotonic()
        rates.append((p - p_prev) / (t - t_prev))
        p_prev, t_prev = p, t
    c1 = cpu_seconds(proc.pid)
    u1, s1 = user_sys_seconds(proc.pid)
    t1 = time.monotonic()
    requests = p_prev - p_first
    on = sum(abs(r - n) <= 0.02 * n for r in rates)
    return {
        "cpu_s": round(c1 - c0, 3),
        "wall_s": round(t1 - t0, 3),
        "requests": requests,
        "req_per_s": round(requests / (t_prev - t0), 1),
        "cpu_s_per_1000_req": round((c1 - c0) / requests * 1000, 4) if requests else None,
        "on_schedule_share": round(on / len(rates), 3),
        "user_s": round(u1 - u0, 3),  # the split is sampled at clock ticks; the sum (cpu_s) is exact
        "sys_s": round(s1 - s0, 3),
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],  # before, after: how shared the VM was
        "min_rate": round(min(rates), 1),
        "max_rate": round(max(rates), 1),
    }


def run_desanet(n: int, seconds: float, tmp: Path) -> dict[str, Any]:
    f = tmp / f"targets-{n}.txt"
    cmd = [sys.executable, str(ROOT / "bench/icmp/drive_desanet.py"), "-f", str(f)]
    cmd += ["--warmup", str(WARMUP), "--seconds", str(seconds + 1)]
    proc = subprocess.Popen(["ip", "netns", "exec", NOC, *cmd], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        m = measure(proc, n, seconds)
        out, _ = proc.communicate(timeout=60)
    finally:
        stop(proc)
    r = json.loads(out.strip().splitlines()[-1])
    return {**m, "tool_sent": r["sent"], "false_loss": r["lost"], "driver": r}


def run_fping(n: int, seconds: float, tmp: Path) -> dict[str, Any]:
    f = tmp / f"targets-{n}.txt"
    count = int(WARMUP + seconds + 2)
    interval = f"{0.9 * 1000 / n:.3g}"  # a round of n targets must fit in the 1 s period
    argv = ["fping", "-C", str(count), "-p", "1000", "-i", interval, "-t", "900", "-q", "-f", str(f)]
    proc = subprocess.Popen(["ip", "netns", "exec", NOC, *argv], stderr=subprocess.PIPE, text=True)
    try:
        m = measure(proc, n, seconds)
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    sent = lost = 0
    for line in err.splitlines():
        if " : " in line:
            vals = line.split(" : ", 1)[1].split()
            sent += len(vals)
            lost += vals.count("-")
    return {**m, "tool_sent": sent, "false_loss": lost, "argv": " ".join(argv)}


def smokeping_config(path: Path, hosts: list[str], interval: str) -> None:
    lines = ["targets:", "- hosts:"] + [f"  - {h}" for h in hosts]
    lines += [f"  interval: {interval}", "  network: ip4", "  protocol: icmp", "  size: 56"]
    path.write_text("\n".join(lines) + "\n")


def scrape_smokeping() -> str:
    """/metrics, or "" when the prober never answered (saturated, its listener may open very late)."""
    for _ in range(3):
        argv = ("ip", "netns", "exec", NOC, "curl", "-sf", "--max-time", "60", f"http://{SP_LISTEN}/metrics")
        out = sh(*argv, check=False)
        if out:
            return out
        time.sleep(5)
    return ""


def sum_metric(body: str, name: str) -> float:
    return sum(float(x) for x in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)", body, re.M))


def run_smokeping(n: int, seconds: float, tmp: Path) -> dict[str, Any]:
    cfg = tmp / f"sp-{n}.yml"
    smokeping_config(cfg, addresses(n), "1s")
    argv = ["prometheus-smokeping-prober", f"--config.file={cfg}", "--privileged", f"--web.listen-address={SP_LISTEN}"]
    proc = subprocess.Popen(["ip", "netns", "exec", NOC, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        m = measure(proc, n, seconds)
        body = scrape_smokeping()
    finally:
        stop(proc)
    req = sum_metric(body, "smokeping_requests_total")
    got = sum_metric(body, "smokeping_response_duration_seconds_count")
    if not body:
        return {**m, "tool_sent": 0, "false_loss": None, "raw_loss": None, "error": "no /metrics answer"}
    # requests_total counts the echo still in flight per host (at most n): subtract it to be fair.
    return {**m, "tool_sent": int(req), "false_loss": max(0, int(req - got - n)), "raw_loss": int(req - got)}


TOOLS = {"desanet": run_desanet, "fping": run_fping, "smokeping": run_smokeping}


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}..{max(values):.{digits}f}]"


def scale(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    for n in args.targets:
        (tmp / f"targets-{n}.txt").write_text("\n".join(addresses(n)) + "\n")
    rows = []
    for rep in range(args.first_rep, args.first_rep + args.reps):
        for n in args.targets:
            tools = [t for t in args.tools if t != "smokeping" or n <= 1000]
            for tool in tools[rep % len(tools) :] + tools[: rep % len(tools)]:  # rotate the order per repetition
                r = {"rep": rep, "targets": n, "tool": tool, **TOOLS[tool](n, args.seconds, tmp)}
                print(json.dumps(r), flush=True)
                rows.append(r)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(r) + "\n")
    return rows


def summarize_scale(rows: list[dict[str, Any]]) -> None:
    print("\n| targets | tool | CPU-s / 1000 req | ratio to fping | req/s | on-schedule seconds | false loss "
          "| desanet sends > 10 ms late, max lateness ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for n in sorted({r["targets"] for r in rows}):
        fp = {r["rep"]: r["cpu_s_per_1000_req"] for r in rows if r["targets"] == n and r["tool"] == "fping"}
        for tool in TOOLS:
            rs = [r for r in rows if r["targets"] == n and r["tool"] == tool]
            if not rs:
                continue
            cpu = [r["cpu_s_per_1000_req"] for r in rs if r["cpu_s_per_1000_req"]]
            ratio = [r["cpu_s_per_1000_req"] / fp[r["rep"]] for r in rs if fp.get(r["rep"])]
            loss = sum(r["false_loss"] for r in rs if r["false_loss"] is not None)
            sent = sum(r["tool_sent"] for r in rs if r["false_loss"] is not None)
            print(
                f"| {n} | {tool} | {fmt(cpu, 4)} | {fmt(ratio, 2)} | {fmt([r['req_per_s'] for r in rs], 0)} | "
                f"{fmt([r['on_schedule_share'] for r in rs], 2)} | {loss} of {sent} | {late(rs)} |"
            )


def late(rs: list[dict[str, Any]]) -> str:
    ds = [r["driver"] for r in rs if "driver" in r]
    if not ds:
        return "-"
    over = sum(d["late_sends_over_10ms"] for d in ds)
    sends = sum(d["continuous_sends"] for d in ds)
    return f"{over} of {sends}, {fmt([d['max_send_lateness_s'] * 1e3 for d in ds], 1)}"


# --- accuracy ---------------------------------------------------------------------------------------------
CAP_RE = re.compile(r"^(\d+\.\d+) IP (\S+) > (\S+): ICMP echo (request|reply), id (\d+), seq (\d+)")


def wire_rtts(pcap: Path) -> dict[str, list[float]]:
    """Per target, the wire RTTs in request order, pairing each request with its reply by (target, id, seq)."""
    text = sh("tcpdump", "-r", str(pcap), "-n", "-tt", "--time-stamp-precision", "nano", check=False)
    req: dict[tuple[str, int, int], float] = {}
    order: dict[str, list[tuple[float, tuple[str, int, int]]]] = {}
    rep: dict[tuple[str, int, int], float] = {}
    for line in text.splitlines():
        m = CAP_RE.match(line)
        if not m:
            continue
        t, src, dst, kind, ident, seq = float(m[1]), m[2], m[3].rstrip(":"), m[4], int(m[5]), int(m[6])
        if kind == "request":
            key = (dst, ident, seq)
            req[key] = t
            order.setdefault(dst, []).append((t, key))
        elif (src, ident, seq) in req and (src, ident, seq) not in rep:
            rep[(src, ident, seq)] = t
    out: dict[str, list[float]] = {}
    for dst, reqs in order.items():
        out[dst] = [rep[k] - t if k in rep else math.nan for t, k in sorted(reqs)]
    return out


def tool_samples(tool: str, addr: str, count: int, interval: float, tmp: Path) -> list[float]:
    """The tool's per-echo RTTs (seconds) in send order; for smokeping its mean, repeated."""
    exec_ = ["ip", "netns", "exec", NOC]
    if tool == "desanet":
        f = tmp / "acc.txt"
        f.write_text(addr + "\n")
        cmd = [sys.executable, str(ROOT / "bench/icmp/drive_desanet.py"), "-f", str(f)]
        cmd += ["--train", str(count), "--interval", str(interval)]
        out = json.loads(sh(*exec_, *cmd))
        return [r if r is not None else math.nan for _, r in out[addr]["samples"]]
    if tool == "ping":
        out = sh(*exec_, "ping", "-n", "-c", str(count), "-i", str(interval), addr)
        by_seq = {int(m[1]): float(m[2]) / 1e3 for m in re.finditer(r"icmp_seq=(\d+) .*time=([\d.]+) ms", out)}
        return [by_seq.get(k, math.nan) for k in range(1, count + 1)]
    if tool == "fping":
        p = subprocess.run(
            [*exec_, "fping", "-C", str(count), "-p", str(int(interval * 1000)), "-q", addr],
            capture_output=True,
            text=True,
        )
        vals = p.stderr.split(" : ", 1)[1].split()
        return [float(v) / 1e3 if v != "-" else math.nan for v in vals]
    cfg = tmp / "sp-acc.yml"
    smokeping_config(cfg, [addr], f"{int(interval * 1000)}ms")
    argv = ["prometheus-smokeping-prober", f"--config.file={cfg}", "--privileged", f"--web.listen-address={SP_LISTEN}"]
    proc = subprocess.Popen([*exec_, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(count * interval + 1)
        body = scrape_smokeping()
    finally:
        stop(proc)
    n = sum_metric(body, "smokeping_response_duration_seconds_count")
    s = sum_metric(body, "smokeping_response_duration_seconds_sum")
    return [s / n] if n else [math.nan]


def accuracy(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    tools = ["desanet", "fping", "ping", "smokeping"]
    for rep in range(args.reps):
        pcap = tmp / f"acc-{rep}.pcap"
        cap = subprocess.Popen(
            ["ip", "netns", "exec", NOC, "tcpdump", "-i", "n0", "-j", "host", "--time-stamp-precision", "nano",
             "-w", str(pcap), "-U", "icmp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        samples: dict[str, tuple[str, list[float]]] = {}
        try:
            time.sleep(1.5)
            for k, tool in enumerate(tools):
                addr = addresses(1, base=0x10000 + 256 * (rep * 8 + k))[0]
                samples[tool] = (addr, tool_samples(tool, addr, args.count, args.interval, tmp))
            time.sleep(0.5)
        finally:
            stop(cap, signal.SIGINT)
        wire = wire_rtts(pcap)
        for tool, (addr, vals) in samples.items():
            w = wire.get(addr, [])
            if tool == "smokeping":
                ok = [x for x in w if not math.isnan(x)]
                errs = [vals[0] - statistics.fmean(ok)] if ok and not math.isnan(vals[0]) else []
                paired = len(ok)
            else:
                if len(w) != len(vals):
                    print(f"# {tool}: {len(vals)} samples, {len(w)} on the wire: pairing by order", file=sys.stderr)
                errs = [v - x for v, x in zip(vals, w, strict=False) if not math.isnan(v) and not math.isnan(x)]
                paired = len(errs)
            abs_errs = sorted(abs(e) for e in errs)
            r = {
                "rep": rep,
                "tool": tool,
                "paired": paired,
                "wire_median_us": round(statistics.median([x for x in w if not math.isnan(x)]) * 1e6, 1) if w else None,
                "median_error_us": round(statistics.median(errs) * 1e6, 1) if errs else None,
                "p95_abs_error_us": round(abs_errs[min(len(abs_errs) - 1, int(0.95 * len(abs_errs)))] * 1e6, 1)
                if abs_errs
                else None,
            }
            print(json.dumps(r), flush=True)
            rows.append(r)
    return rows


def summarize_accuracy(rows: list[dict[str, Any]]) -> None:
    print("\n| tool | wire RTT µs | median error µs | p95 abs error µs | echoes paired per run |")
    print("|---|---|---|---|---|")
    for tool in ("desanet", "fping", "ping", "smokeping"):
        rs = [r for r in rows if r["tool"] == tool and r["median_error_us"] is not None]
        if rs:
            print(
                f"| {tool} | {fmt([r['wire_median_us'] for r in rs], 1)} | {fmt([r['median_error_us'] for r in rs], 1)}"
                f" | {fmt([r['p95_abs_error_us'] for r in rs], 1)} | {fmt([r['paired'] for r in rs], 0)} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["scale", "accuracy", "summary"], help="summary: tables from --out files")
    ap.add_argument("files", nargs="*", type=Path, help="summary: JSON-lines files written by --out")
    ap.add_argument("--targets", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--first-rep", type=int, default=0, help="scale: number of the first repetition (tool order)")
    ap.add_argument("--count", type=int, default=50, help="accuracy: echoes per tool and run")
    ap.add_argument("--interval", type=float, default=0.2, help="accuracy: seconds between echoes")
    ap.add_argument("--out", type=Path, help="also append the JSON rows to this file")
    args = ap.parse_args()
    if args.mode == "summary":
        rows = [json.loads(line) for f in args.files for line in f.read_text().splitlines() if line.strip()]
        summarize_scale([r for r in rows if "targets" in r])
        summarize_accuracy([r for r in rows if "paired" in r])
        return
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    with tempfile.TemporaryDirectory() as d:
        net_up()
        try:
            if args.mode == "scale":
                rows = scale(args, Path(d))
                summarize_scale(rows)
            else:
                rows = accuracy(args, Path(d))
                summarize_accuracy(rows)
                if args.out:
                    with args.out.open("a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in rows)
        finally:
            net_down()


if __name__ == "__main__":
    main()
