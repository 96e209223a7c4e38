"""Benchmark `desanet serve` at district and province scale: CPU, memory, /metrics render time, false loss.

Not a test: it prints medians for docs/performance.md. Villages are answered by one "far" namespace that
owns their whole address range (an AnyIP local route), so 10,000 villages cost 2 namespaces, not 10,000; the
probing side runs in its own namespace with no default route. ICMP only: SNMP/STAMP at 10,000 agents would
measure the agents, not desanet.

    python bench/serve/bench_serve.py --villages 217 1000 10000 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOC, FAR = "bsrv-noc", "bsrv-far"
LISTEN = "127.0.0.1:19950"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def sh(*argv: str, check: bool = True, input_: str | None = None) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True, input=input_).stdout


def net_up() -> None:
    net_down()
    sh("ip", "netns", "add", NOC)
    sh("ip", "netns", "add", FAR)
    sh("ip", "link", "add", "n0", "netns", NOC, "type", "veth", "peer", "name", "f0", "netns", FAR)
    sh(
        "ip",
        "-n",
        NOC,
        "-batch",
        "-",
        input_="link set lo up\nlink set n0 up\naddr add 10.255.0.1/30 dev n0\nroute add 10.96.0.0/11 via 10.255.0.2\n",
    )
    sh(
        "ip",
        "-n",
        FAR,
        "-batch",
        "-",
        input_="link set lo up\nlink set f0 up\naddr add 10.255.0.2/30 dev f0\nroute add local 10.96.0.0/11 dev lo\n",
    )


def net_down() -> None:
    for ns in (NOC, FAR):
        sh("ip", "netns", "delete", ns, check=False)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape() -> tuple[float, str]:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            NOC,
            "curl",
            "-s",
            "-o",
            "/dev/stdout",
            "-w",
            "\n%{time_total}",
            f"http://{LISTEN}/metrics",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, _, t = out.stdout.rpartition("\n")
    return float(t), body


def run(n: int, seconds: float, tmp: Path) -> dict[str, float]:
    inv = tmp / f"synth-{n}.yaml"
    text = sh(sys.executable, "-m", "desanet.cli", "inventory", "synth", "--villages", str(n), "--kecamatan", "25")
    inv.write_text(text)
    env = {**os.environ, "DESANET_SNMP_COMMUNITY": "bench", "DESANET_STATE_DIR": str(tmp)}
    log = open(tmp / f"serve-{n}.log", "w")  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            NOC,
            sys.executable,
            "-m",
            "desanet.cli",
            "serve",
            "--inventory",
            str(inv),
            "--probes",
            "icmp",
            "--web.listen-address",
            LISTEN,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(20)  # start-up and a first window
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss = rss_mb(proc.pid)
        times, body = [], ""
        for _ in range(5):
            t, body = scrape()
            times.append(t)
        sent = sum(float(x) for x in re.findall(r"^desanet_packets_sent_total\{[^}]*\} (\S+)", body, re.M))
        recv = sum(float(x) for x in re.findall(r"^desanet_packets_received_total\{[^}]*\} (\S+)", body, re.M))
        echoes = sent  # decided echoes since start, start-up included
        window = [
            float(x)
            for x in re.findall(r'^desanet_loss_ratio\{[^}]*method="icmp",direction="round_trip"\} (\S+)', body, re.M)
        ]
        return {
            "villages": n,
            "cpu_cores": round((c1 - c0) / (t1 - t0), 3),
            "cpu_s_per_1000_echoes": round((c1 - c0) / ((t1 - t0) * n) * 1000, 4),
            "rss_mb": round(rss, 1),
            "metrics_render_s_median": round(statistics.median(times), 3),
            "metrics_render_s_max": round(max(times), 3),
            "metrics_bytes": len(body),
            "metrics_lines": body.count("\n"),
            "false_loss_ratio_since_start": round(1 - recv / echoes, 6) if echoes else -1,
            "false_loss_ratio_last_window": round(statistics.fmean(window), 6) if window else -1,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--villages", type=int, nargs="+", default=[217, 10000])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    results = []
    with tempfile.TemporaryDirectory() as d:
        net_up()
        try:
            for _ in range(args.repeat):
                for n in args.villages:
                    r = run(n, args.seconds, Path(d))
                    print(json.dumps(r), flush=True)
                    results.append(r)
        finally:
            net_down()


if __name__ == "__main__":
    main()
