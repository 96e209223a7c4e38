"""Province scale on the existing engines: N `desanet serve --shard K/N` processes into one VictoriaMetrics.

Not a test (timing figures need a quiet machine): it writes one JSON line per measurement to `--out` and prints
them; docs/performance.md ("Province") and docs/operations.md ("Sizing") quote the figures.

The far side of 8,500 villages cannot be 8,500 lab namespaces on a small machine, so, as bench/icmp and
bench/serve do, one "far" namespace owns every synthetic village address through AnyIP local routes
(10.64.0.0/10 and 10.128.0.0/10: `desanet inventory synth` puts kecamatan k at 10.<100+k>.0.0/16) and answers
ICMP for all of them; net-snmp snmpd processes (lab/snmp_agent.py's agent, `--per-snmpd` addresses each, as
bench/snmp does) answer SNMP on every village address, and one `desanet reflector` answers STAMP on each.
The probing side runs in its own namespace ("noc") with only a veth to the far side; the store, the Prometheus
agents and every probe run there. Every process is started here and stopped by its PID; both namespaces are
deleted at the end. Nothing leaves the machine.

Subcommands (each appends rows to --out):

- `series`: series per village, at `--villages` (217): the landed code before the lean-series work (a git
  worktree of `--before`, default 265e3aa), the code now, prometheus-smokeping-prober and
  prometheus-blackbox-exporter (icmp module) for the same villages.
- `shards`: `--villages` split over `--shards` serve processes (probes icmp,snmp,stamp,trace; throughput is
  left out: over an unshaped veth it would measure the machine's memory bandwidth), each scraped every 15 s by
  its own Prometheus in agent mode that remote-writes into one VictoriaMetrics. Per shard: CPU, RSS, /metrics
  size and time, the agent's scrape duration; for the store: series, samples/s, bytes per sample; coverage:
  every village exactly once.
- `stamp`: one shard's STAMP schedule (probes icmp,stamp, `--metrics.detail`; no snmpd), the landed code before
  issue 16 (`--before`: 4 bursts at once) and now (bursts sized from the shard), one after the other on the same far
  side: the share of villages whose last burst is younger than 2.5 intervals (and than 1.25: on schedule), sampled
  over a window after a warm-up, the one-way STAMP jitter the bursts read (the far side adds none, so it is the
  probe's own noise), STAMP packets a second, and the CPU of the shard and the reflector. The interval defaults to
  300 s x villages / 4,250, so a smaller shard needs as many bursts under way as a 4,250-village one at 5 minutes.
- `stamp-pacing`: `--concurrent` STAMP bursts at once from one event loop to a reflector in the same process on
  127.0.0.1: how late each burst's packets leave against its own 20 ms grid, and the jitter it reads.
- `snmp`: v2c vs v3 CPU per village, by running bench/snmp/bench_snmp.py `--v3-every 0 1`.
- `queries`: dashboard refresh time with a day of history, by running bench/dashboards (when present).
- `footprint`: desanet's own bytes on one lab village's link over `--seconds`, by protocol (nftables counters in
  the village namespace) and in total (its interface counters), against budget/footprint.py.

    sudo .venv/bin/python bench/province/bench_province.py series --villages 217 --out bench/province/results.jsonl
    sudo .venv/bin/python bench/province/bench_province.py shards --villages 8500 --shards 2 4 --out ...
    sudo .venv/bin/python bench/province/bench_province.py stamp --villages 1000 --out bench/province/results.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from desanet.district.synth import village_address  # noqa: E402
from desanet.exporter.state import STAMP_FRESH_PERIODS  # noqa: E402
from desanet.lab.snmp_agent import OpticalValues, SnmpV3User, write_agent_files  # noqa: E402

NOC, FAR = "bprov-noc", "bprov-far"
NOC_IP, FAR_IP = "10.255.3.1", "10.255.3.2"
ROUTES = ("10.64.0.0/10", "10.128.0.0/10")
COMMUNITY = "bench-community"
V3 = SnmpV3User(user="bench", auth_key="bench-auth-key", priv_key="bench-priv-key")
VM_ADDR = "127.0.0.1:18428"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KECAMATAN = 38  # East Java's kabupaten/kota count, as kecamatan-like groups


# ------------------------------------------------------------------------------------------------- helpers
def sh(*argv: str, check: bool = True, input_: str | None = None, timeout: float = 120) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True, input=input_, timeout=timeout).stdout


def in_noc(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", NOC, *argv], capture_output=True, text=True, timeout=timeout)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def wait_quiet(max_load: float, max_wait: float) -> float:
    """Wait (bounded) for the 1-minute load to drop below `max_load`; return the load when we went on."""
    deadline = time.monotonic() + max_wait
    while load1() > max_load and time.monotonic() < deadline:
        time.sleep(10)
    return load1()


def addresses(n: int, kecamatan: int = KECAMATAN) -> list[str]:
    """The router addresses `desanet inventory synth --villages n --kecamatan k` gives, in village order."""
    k = min(kecamatan, n)
    return [village_address(i % k + 1, i // k) for i in range(n)]


def synth(n: int, path: Path, settings: str = "") -> list[str]:
    text = sh(
        sys.executable, "-m", "desanet.cli", "inventory", "synth", "--villages", str(n), "--kecamatan", str(KECAMATAN)
    )
    path.write_text(text + settings)
    return [f"v{i + 1:05d}" for i in range(n)]


class Procs:
    """Children started by this run, stopped by PID in reverse order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "wb") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        self.items.append((name, p))
        return p

    def stop(self, only: subprocess.Popen[bytes] | None = None) -> None:
        for _name, p in reversed(self.items):
            if only is not None and p is not only:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _name, p in reversed(self.items):
            if only is not None and p is not only:
                continue
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.items = [(n, p) for n, p in self.items if p.poll() is None]


def netns_pids(pid: int) -> list[int]:
    """`ip netns exec` execs the command, so the Popen PID is the process itself; kept for clarity."""
    return [pid]


# ------------------------------------------------------------------------------------------------- network
def net_up() -> None:
    net_down()
    sh("ip", "netns", "add", NOC)
    sh("ip", "netns", "add", FAR)
    sh("ip", "link", "add", "n0", "netns", NOC, "type", "veth", "peer", "name", "f0", "netns", FAR)
    noc = f"link set lo up\nlink set n0 up\naddr add {NOC_IP}/30 dev n0\n"
    noc += "".join(f"route add {r} via {FAR_IP}\n" for r in ROUTES)
    sh("ip", "-n", NOC, "-batch", "-", input_=noc)
    far = f"link set lo up\nlink set f0 up\naddr add {FAR_IP}/30 dev f0\n"
    far += "".join(f"route add local {r} dev lo\n" for r in ROUTES)
    # A veth pair more, so each agent serves four interfaces (lo, f0, va0, vb0): a router's uplink, LAN and two more.
    far += "link add va0 type veth peer name vb0\nlink set va0 up\nlink set vb0 up\n"
    sh("ip", "-n", FAR, "-batch", "-", input_=far)
    # Traces end in port-unreachables from the village address; don't let the far side's ICMP limits turn
    # 8,500 villages' traces into false loss.
    sh("ip", "netns", "exec", FAR, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv4.icmp_msgs_per_sec=100000")


def net_down() -> None:
    for ns in (NOC, FAR):
        sh("ip", "netns", "delete", ns, check=False)


def far_up(procs: Procs, addrs: list[str], per_snmpd: int, tmp: Path, stamp: bool = True, snmp: bool = True) -> None:
    """snmpd on every address (`per_snmpd` per process) and one desanet reflector on every address."""
    for g in range(0, len(addrs) if snmp else 0, per_snmpd):
        hosts = addrs[g : g + per_snmpd]
        argv = write_agent_files(tmp / f"snmpd{g // per_snmpd}", hosts[0], COMMUNITY, V3, OpticalValues(), port=161)
        argv[-1] = ",".join(f"udp:{h}:161" for h in hosts)
        procs.start("snmpd", ["ip", "netns", "exec", FAR, *argv], tmp / f"snmpd{g // per_snmpd}.log")
    if stamp:
        # One socket per village: 8,500 fit under this machine's 20,000 open files (ulimit -n).
        listen = [x for a in addrs for x in ("--listen", f"{a}:862")]
        procs.start(
            "reflector",
            [
                "ip",
                "netns",
                "exec",
                FAR,
                sys.executable,
                "-m",
                "desanet.cli",
                "reflector",
                "--stats-interval",
                "0",
                *listen,
            ],
            tmp / "reflector.log",
        )
    deadline = time.monotonic() + 120
    for g in range(0, len(addrs) if snmp else 0, per_snmpd):
        argv = ["snmpget", "-v2c", "-c", COMMUNITY, "-t", "0.5", "-r", "0", addrs[g], "1.3.6.1.2.1.1.3.0"]
        while "Timeticks" not in in_noc(*argv).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"snmpd for {addrs[g]} did not answer within 120 s")
            time.sleep(0.2)


def serve_argv(inv: Path, listen: str, shard: str = "1/1", probes: str = "icmp,snmp,stamp,trace") -> list[str]:
    return [
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
        probes,
        "--web.listen-address",
        listen,
        "--shard",
        shard,
        "--log.level",
        "warning",
    ]


def serve_env(tmp: Path, pythonpath: str | None = None) -> dict[str, str]:
    env = {**os.environ, "DESANET_SNMP_COMMUNITY": COMMUNITY, "DESANET_STATE_DIR": str(tmp)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def scrape(url: str, timeout: float = 120) -> tuple[float, str]:
    out = in_noc("curl", "-s", "--max-time", str(timeout), "-w", "\n%{time_total}", url, timeout=timeout + 10)
    body, _, t = out.stdout.rpartition("\n")
    return float(t or "nan"), body


def series_lines(body: str) -> list[str]:
    return [ln for ln in body.splitlines() if ln and not ln.startswith("#")]


def per_label(lines: list[str], label: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    pat = re.compile(label + r'="([^"]*)"')
    for ln in lines:
        m = pat.search(ln)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def wait_for(pred: Any, limit: float, every: float = 3.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return True
        time.sleep(every)
    return False


def emit(row: dict[str, Any], out: Path | None) -> None:
    row = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **row}
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(line + "\n")


@contextlib.contextmanager
def bench_env(addrs: list[str], per_snmpd: int, stamp: bool = True, snmp: bool = True) -> Iterator[tuple[Procs, Path]]:
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bprov-"))
    tmp.chmod(0o755)
    net_up()
    try:
        far_up(procs, addrs, per_snmpd, tmp, stamp, snmp)
        yield procs, tmp
    finally:
        procs.stop()
        net_down()
        if not os.environ.get("BPROV_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- series
FAST = (
    "settings:\n"
    "  stamp: {every_seconds: 30, duration_seconds: 0.5}\n"
    "  trace: {every_seconds: 30}\n"
)  # every village's STAMP and trace series exist within a minute or two; the series themselves are the same


def _desanet_series(
    label: str, inv: Path, slugs: list[str], procs: Procs, tmp: Path, pythonpath: str | None, wait: float
) -> dict[str, Any]:
    listen = "127.0.0.1:19961"
    # `python -m` puts the working directory first on sys.path: run the old code from its own tree.
    p = procs.start(
        label,
        serve_argv(inv, listen),
        tmp / f"serve-{label}.log",
        serve_env(tmp, pythonpath),
        cwd=pythonpath or str(ROOT),
    )
    url = f"http://{listen}/metrics"

    def complete() -> bool:
        _, body = scrape(url)
        ok = set()
        for probe in ("snmp", "stamp"):  # the trace's series are a detail in the lean output
            ok.add(len(re.findall(rf'^desanet_probe_success\{{[^}}]*probe="{probe}"[^}}]*\}} 1', body, re.M)))
        return min(ok) >= len(slugs)

    done = wait_for(complete, wait, 5)
    time.sleep(6)  # one more evaluation round
    t, body = scrape(url)
    procs.stop(p)
    lines = series_lines(body)
    by_village = per_label(lines, "village")
    counts = sorted(by_village.values())
    shared = len(lines) - sum(counts)
    return {
        "tool": label,
        "villages": len(slugs),
        "complete": done,
        "series_total": len(lines),
        "series_per_village_median": statistics.median(counts) if counts else 0,
        "series_per_village_max": max(counts) if counts else 0,
        "series_without_village": shared,
        "series_total_per_village": round(len(lines) / len(slugs), 1),
        "scrape_bytes": len(body),
        "scrape_seconds": t,
    }


def cmd_series(args: argparse.Namespace) -> None:
    n = args.villages[0]
    addrs = addresses(n)
    before = Path(args.before_tree)
    if not (before / "desanet").is_dir():
        sh("git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before)
    with bench_env(addrs, args.per_snmpd) as (procs, tmp):
        inv = tmp / "inv.yaml"
        slugs = synth(n, inv, FAST)
        common = {"kind": "series", "load1_before": load1()}
        for label, pp in (("desanet-now", None), (f"desanet-{args.before}", str(before))):
            row = _desanet_series(label, inv, slugs, procs, tmp, pp, args.wait)
            emit({**common, **row, "load1": load1()}, args.out)
        # smokeping_prober: ICMP only, one target group, 1 s interval (its README's example), every village.
        cfg = tmp / "smokeping.yml"
        cfg.write_text(json.dumps({"targets": [{"hosts": addrs, "interval": "1s", "network": "ip4"}]}))
        listen = "127.0.0.1:19962"
        p = procs.start(
            "smokeping",
            [
                "ip",
                "netns",
                "exec",
                NOC,
                "prometheus-smokeping-prober",
                "--privileged",
                f"--config.file={cfg}",
                f"--web.listen-address={listen}",
            ],
            tmp / "smokeping.log",
        )
        time.sleep(15)
        t, body = scrape(f"http://{listen}/metrics")
        procs.stop(p)
        lines = series_lines(body)
        counts = sorted(per_label(lines, "host").values())
        emit(
            {
                **common,
                "kind": "series",
                "tool": "smokeping_prober",
                "villages": n,
                "series_total": len(lines),
                "series_per_village_median": statistics.median(counts) if counts else 0,
                "series_per_village_max": max(counts) if counts else 0,
                "series_without_village": len(lines) - sum(counts),
                "series_total_per_village": round(len(lines) / n, 1),
                "scrape_bytes": len(body),
                "scrape_seconds": t,
                "load1": load1(),
            },
            args.out,
        )
        # blackbox_exporter: one /probe per village and module, as Prometheus would scrape it; icmp module.
        cfg = tmp / "blackbox.yml"
        cfg.write_text(
            json.dumps(
                {"modules": {"icmp": {"prober": "icmp", "timeout": "2s", "icmp": {"preferred_ip_protocol": "ip4"}}}}
            )
        )
        listen = "127.0.0.1:19963"
        p = procs.start(
            "blackbox",
            [
                "ip",
                "netns",
                "exec",
                NOC,
                "prometheus-blackbox-exporter",
                f"--config.file={cfg}",
                f"--web.listen-address={listen}",
            ],
            tmp / "blackbox.log",
        )
        time.sleep(2)
        counts = []
        for a in addrs[:10]:
            _t, body = scrape(f"http://{listen}/probe?target={a}&module=icmp")
            counts.append(len(series_lines(body)))
        procs.stop(p)
        emit(
            {
                **common,
                "kind": "series",
                "tool": "blackbox_exporter(icmp)",
                "villages": n,
                "series_per_village_median": statistics.median(counts),
                "series_per_village_max": max(counts),
                "note": "series per /probe?module=icmp response, 10 villages",
                "load1": load1(),
            },
            args.out,
        )


# ------------------------------------------------------------------------------------------------- shards
def vm_query(q: str, attempts: int = 3) -> list[dict[str, Any]]:
    """An instant query; a store too busy to answer (seen with 8,500 villages on 2 cores) is asked again, and after
    `attempts` the answer is empty (the row's figure is then None) rather than the run lost."""
    url = f"http://{VM_ADDR}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    for attempt in range(attempts):
        out = in_noc("curl", "-s", "--max-time", "60", url, timeout=70).stdout
        try:
            return list(json.loads(out)["data"]["result"])
        except (ValueError, KeyError, TypeError):
            print(f"store did not answer {q!r} (attempt {attempt + 1}): {out[:200]!r}", file=sys.stderr)
            time.sleep(5)
    return []


def vm_metric(name: str) -> float:
    _, body = scrape(f"http://{VM_ADDR}/metrics")
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", body, re.M))


def start_store(procs: Procs, tmp: Path) -> subprocess.Popen[bytes]:
    return procs.start(
        "victoria-metrics",
        [
            "ip",
            "netns",
            "exec",
            NOC,
            "victoria-metrics",
            f"-httpListenAddr={VM_ADDR}",
            f"-storageDataPath={tmp / 'vm'}",
            "-search.latencyOffset=1s",
            "-retentionPeriod=1d",
        ],
        tmp / "vm.log",
    )


def start_agent(procs: Procs, tmp: Path, k: int, target: str) -> subprocess.Popen[bytes]:
    cfg = tmp / f"agent{k}.yml"
    cfg.write_text(
        "global: {scrape_interval: 15s, scrape_timeout: 14s}\n"
        f"remote_write: [{{url: 'http://{VM_ADDR}/api/v1/write'}}]\n"
        f"scrape_configs: [{{job_name: desanet, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    return procs.start(
        f"agent{k}",
        [
            "ip",
            "netns",
            "exec",
            NOC,
            "prometheus",
            "--enable-feature=agent",
            f"--config.file={cfg}",
            f"--storage.agent.path={tmp / f'agent{k}'}",
            f"--web.listen-address=127.0.0.1:{19970 + k}",
        ],
        tmp / f"agent{k}.log",
    )


def cmd_shards(args: argparse.Namespace) -> None:
    for n in args.villages:
        addrs = addresses(n)
        for shards in args.shards:
            load = wait_quiet(args.max_load, args.max_wait)
            with bench_env(addrs, args.per_snmpd) as (procs, tmp):
                inv = tmp / "inv.yaml"
                synth(n, inv)
                vm = start_store(procs, tmp)
                serves, agents = [], []
                for k in range(1, shards + 1):
                    listen = f"127.0.0.1:{19980 + k}"
                    serves.append(
                        (
                            listen,
                            procs.start(
                                f"serve{k}",
                                serve_argv(inv, listen, f"{k}/{shards}"),
                                tmp / f"serve{k}.log",
                                serve_env(tmp),
                            ),
                        )
                    )
                    agents.append(start_agent(procs, tmp, k, listen))
                far = [p for name, p in procs.items if name in ("snmpd", "reflector")]
                # Up when every shard answers /metrics with its villages' info lines.
                wait_for(
                    lambda s=serves: all(
                        "desanet_village_info{" in scrape(f"http://{ls}/metrics", 30)[1] for ls, _ in s
                    ),
                    300,
                    5,
                )
                time.sleep(args.warmup)
                rows0 = vm_metric("vm_rows_inserted_total")
                watch = [p for _, p in serves] + agents + [vm] + far
                c0, t0 = {p.pid: cpu_seconds(p.pid) for p in watch}, time.monotonic()
                time.sleep(args.seconds)
                c1, t1 = {p.pid: cpu_seconds(p.pid) for p in watch}, time.monotonic()
                rows1 = vm_metric("vm_rows_inserted_total")
                dt = t1 - t0
                cores = {pid: (c1[pid] - c0[pid]) / dt for pid in c0}
                base = {
                    "kind": "shards",
                    "villages": n,
                    "shards": shards,
                    "seconds": round(dt, 1),
                    "load1_before": load,
                    "cores_machine": os.cpu_count(),
                }
                for k, (listen, p) in enumerate(serves, 1):
                    times, body = [], ""
                    for _ in range(3):
                        t, body = scrape(f"http://{listen}/metrics")
                        times.append(t)
                    lines = series_lines(body)
                    mine = len(per_label([ln for ln in lines if ln.startswith("desanet_village_info")], "village"))
                    loss = [
                        float(x)
                        for x in re.findall(r'^desanet_loss_ratio\{[^}]*method="icmp"[^}]*\} (\S+)', body, re.M)
                    ]
                    ok = {
                        probe: len(
                            re.findall(rf'^desanet_probe_success\{{[^}}]*probe="{probe}"[^}}]*\}} 1', body, re.M)
                        )
                        for probe in ("snmp", "stamp")
                    }
                    agent_scrape = vm_query(f'scrape_duration_seconds{{instance="{listen}"}}')
                    emit(
                        {
                            **base,
                            "shard": k,
                            "shard_villages": mine,
                            "cpu_cores": round(cores[p.pid], 3),
                            "rss_mb": rss_mb(p.pid),
                            "scrape_bytes": len(body),
                            "series": len(lines),
                            "series_per_village": round(len(lines) / max(1, mine), 1),
                            "curl_scrape_s_median": statistics.median(times),
                            "agent_scrape_duration_s": float(agent_scrape[0]["value"][1]) if agent_scrape else None,
                            "agent_cpu_cores": round(cores[agents[k - 1].pid], 3),
                            "agent_rss_mb": rss_mb(agents[k - 1].pid),
                            "icmp_loss_last_window_mean": round(statistics.fmean(loss), 5) if loss else None,
                            "villages_ok": ok,
                            "load1": load1(),
                        },
                        args.out,
                    )
                cover = vm_query("count(count by (village) (desanet_village_info))")
                twice = vm_query("count(count by (village) (desanet_village_info) > 1)")
                stats = json.loads(in_noc("curl", "-s", f"http://{VM_ADDR}/api/v1/status/tsdb").stdout)
                in_noc("curl", "-s", f"http://{VM_ADDR}/internal/force_flush")
                time.sleep(2)
                size = vm_metric("vm_data_size_bytes")
                rows = vm_metric("vm_rows")
                emit(
                    {
                        **base,
                        "store": "victoria-metrics",
                        "villages_covered": int(cover[0]["value"][1]) if cover else 0,
                        "villages_twice": int(twice[0]["value"][1]) if twice else 0,
                        "series": stats["data"].get("totalSeries"),
                        "samples_per_second": round((rows1 - rows0) / dt, 1),
                        "bytes_per_sample_so_far": round(size / rows, 2) if rows else None,
                        "vm_cpu_cores": round(cores[vm.pid], 3),
                        "vm_rss_mb": rss_mb(vm.pid),
                        "far_side_cpu_cores": round(sum(cores[p.pid] for p in far), 3),
                        "desanet_cpu_cores_total": round(sum(cores[p.pid] for _, p in serves), 3),
                        "desanet_rss_mb_total": round(sum(rss_mb(p.pid) for _, p in serves), 1),
                        "load1": load1(),
                    },
                    args.out,
                )


# ------------------------------------------------------------------------------------------------- stamp
SHIPPED_STAMP_EVERY = 300.0  # inventory.yaml's settings.stamp.every_seconds
PROVINCE_SHARD = 4250  # a shard of 8,500 villages over 2


def _by_village(body: str, name: str, **want: str) -> dict[str, float]:
    """village -> value, for the lines of `name` whose labels include `want`."""
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", body, re.M):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(lab.get(k) == v for k, v in want.items()):
            out[lab.get("village", "")] = float(m.group(2))
    return out


def _spread(values: list[float], scale: float = 1.0, digits: int = 1) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p95": None, "max": None}
    v = sorted(values)
    return {
        "median": round(statistics.median(v) * scale, digits),
        "p95": round(v[min(len(v) - 1, int(0.95 * len(v)))] * scale, digits),
        "max": round(v[-1] * scale, digits),
    }


def _stamp_phase(
    label: str,
    inv: Path,
    slugs: list[str],
    every: float,
    args: argparse.Namespace,
    procs: Procs,
    tmp: Path,
    pythonpath: str | None,
    far: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    """One `desanet serve --probes icmp,stamp --metrics.detail` for the warm-up and the window; what its STAMP
    schedule kept fresh, what its bursts read, and what it cost."""
    listen = "127.0.0.1:19964"
    url = f"http://{listen}/metrics"
    started, started_mono = time.time(), time.monotonic()
    p = procs.start(
        label,
        [*serve_argv(inv, listen, probes="icmp,stamp"), "--metrics.detail"],
        tmp / f"serve-{label}.log",
        serve_env(tmp, pythonpath),
        cwd=pythonpath or str(ROOT),
    )
    wait_for(lambda: "desanet_village_info{" in scrape(url, 30)[1], 120, 2)
    time.sleep(max(0.0, started + args.warmup * every - time.time()))

    def ages(body: str) -> list[float | None]:
        """Seconds since each village's last STAMP burst ended; None for one that has had none yet."""
        last = _by_village(body, "desanet_probe_last_run_timestamp_seconds", probe="stamp")
        now = time.time()
        return [now - last[v] if v in last else None for v in slugs]

    _, body = scrape(url)
    watch = [p, *far]
    c0, t0 = {q.pid: cpu_seconds(q.pid) for q in watch}, time.monotonic()
    sent0 = sum(_by_village(body, "desanet_packets_sent_total", method="stamp").values())
    fresh, on_time, oldest = [], [], []
    while time.monotonic() - t0 < args.seconds * every:
        time.sleep(args.sample)
        _, body = scrape(url)
        a = ages(body)
        fresh.append(sum(x is not None and x < STAMP_FRESH_PERIODS * every for x in a) / len(a))
        on_time.append(sum(x is not None and x < 1.25 * every for x in a) / len(a))
        oldest.append(max(x if x is not None else time.time() - started for x in a))  # none yet: since the start
    c1, t1 = {q.pid: cpu_seconds(q.pid) for q in watch}, time.monotonic()
    dt = t1 - t0
    sent = sum(_by_village(body, "desanet_packets_sent_total", method="stamp").values()) - sent0
    jitter = {
        d: list(_by_village(body, "desanet_jitter_seconds", method="stamp", direction=d).values())
        for d in ("down", "up")
    }
    loss = {
        d: list(_by_village(body, "desanet_loss_ratio", method="stamp", direction=d).values()) for d in ("down", "up")
    }
    own = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^(desanet_stamp_\w+) (\S+)$", body, re.M)
    }  # the exporter's own schedule gauges, where the code has them
    procs.stop(p)
    serve_cores = (c1[p.pid] - c0[p.pid]) / dt
    return {
        "tool": label,
        "seconds_after_start": round(t1 - started_mono, 1),
        "window_seconds": round(dt, 1),
        "samples": len(fresh),
        "never_probed": sum(x is None for x in ages(body)),
        "fresh_share_min": round(min(fresh), 4),
        "fresh_share_mean": round(statistics.fmean(fresh), 4),
        "on_time_share_min": round(min(on_time), 4),
        "oldest_age_intervals_max": round(max(oldest) / every, 2),
        "stamp_packets_per_second": round(sent / dt, 1),
        "stamp_jitter_down_us": _spread(jitter["down"], 1e6),
        "stamp_jitter_up_us": _spread(jitter["up"], 1e6),
        "stamp_jitter_villages": len(jitter["down"]),
        "stamp_loss_down_mean": round(statistics.fmean(loss["down"]), 5) if loss["down"] else None,
        "stamp_loss_up_mean": round(statistics.fmean(loss["up"]), 5) if loss["up"] else None,
        "burst_seconds": _spread(
            list(_by_village(body, "desanet_probe_duration_seconds", probe="stamp").values()), 1, 2
        ),
        "serve_cpu_cores": round(serve_cores, 3),
        "reflector_cpu_cores": round(sum(c1[q.pid] - c0[q.pid] for q in far) / dt, 3),
        "exporter_stamp_gauges": own or None,
        "load1": load1(),
    }


def cmd_stamp(args: argparse.Namespace) -> None:
    """A shard's STAMP schedule before (the landed code at --before: 4 bursts at once) and now (sized from the
    shard), one after the other against the same far side in one run. `--every` defaults to the shipped 300 s
    scaled by villages / 4,250, so villages x burst / interval, the bursts a shard needs under way, is a
    4,250-village shard's at the shipped settings while the run stays within minutes."""
    n = args.villages[0]
    every = args.every or round(SHIPPED_STAMP_EVERY * n / PROVINCE_SHARD, 1)
    before = Path(args.before_tree)
    if not (before / "desanet").is_dir():
        sh("git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before)
    addrs = addresses(n)
    load = wait_quiet(args.max_load, args.max_wait)
    with bench_env(addrs, args.per_snmpd, snmp=False) as (procs, tmp):
        inv = tmp / "inv.yaml"
        slugs = synth(n, inv, f"settings:\n  stamp: {{every_seconds: {every}, duration_seconds: 5, rate_pps: 50}}\n")
        far = [p for name, p in procs.items if name == "reflector"]
        common = {
            "kind": "stamp",
            "villages": n,
            "stamp_every_seconds": every,
            "equivalent_shard_at_300s": round(n * SHIPPED_STAMP_EVERY / every),
            "warmup_intervals": args.warmup,
            "window_intervals": args.seconds,
            "load1_before": load,
        }
        for label, pp in ((f"desanet-{args.before}", str(before)), ("desanet-now", None)):
            emit({**common, **_stamp_phase(label, inv, slugs, every, args, procs, tmp, pp, far)}, args.out)


def _pacing(n: int) -> dict[str, Any]:
    """n bursts at once, each noting its packets' send times and its length."""
    import asyncio

    from desanet.probes import stamp
    from desanet.probes.reflector import Reflector

    late_ms: list[float] = []
    elapsed: list[float] = []
    result = stamp._Sender.result

    def noting(self: Any, el: float) -> Any:
        t = [x for x in self.user_t1 if x is not None]
        step = 1e9 / self.settings.rate_pps
        late_ms.extend(((t[i] - t[0]) - i * step) / 1e6 for i in range(len(t)))
        elapsed.append(el)
        return result(self, el)

    async def run() -> tuple[list[Any], float]:
        async with Reflector() as r:
            _addr, port = await r.serve("127.0.0.1", 0)
            s = stamp.StampSettings(port=port, duration_seconds=5.0, packet_bytes=1200)
            c0 = time.process_time()
            res = await asyncio.gather(*(stamp.probe("127.0.0.1", s) for _ in range(n)))
            return list(res), time.process_time() - c0

    setattr(stamp._Sender, "result", noting)  # noqa: B010 (a bench's tap on a private method)
    try:
        load = load1()
        res, cpu = asyncio.run(run())
    finally:
        setattr(stamp._Sender, "result", result)  # noqa: B010
    late = sorted(late_ms)
    packets = sum(r.sent + r.received for r in res)
    return {
        "kind": "stamp_pacing",
        "concurrent": n,
        "load1_before": load,
        "packets": packets,
        "send_late_ms": {
            "median": round(statistics.median(late), 2),
            "p99": round(late[int(0.99 * len(late))], 2),
            "max": round(late[-1], 1),
        },
        "burst_seconds_max": round(max(elapsed), 2),
        "tx_timestamps": sorted({r.tx_timestamps for r in res}),
        "forward_jitter_us": _spread([r.forward.jitter_seconds for r in res], 1e6),
        "backward_jitter_us": _spread([r.backward.jitter_seconds for r in res], 1e6),
        "loss_ratio_mean": round(statistics.fmean(r.loss_ratio for r in res), 5),
        "cpu_us_per_packet_both_ends": round(cpu / packets * 1e6, 1),
        "load1": load1(),
    }


def cmd_stamp_pacing(args: argparse.Namespace) -> None:
    """N STAMP bursts at once from one event loop to a reflector in the same process on 127.0.0.1 (no
    namespace): how late each burst's packets leave against its own 20 ms grid, how long a burst takes, and the
    jitter it reads. Whether concurrency itself distorts a burst's timing, apart from the far side."""
    for n in args.concurrent:
        emit(_pacing(n), args.out)


# ------------------------------------------------------------------------------------------------- snmp, queries
def cmd_snmp(args: argparse.Namespace) -> None:
    """G's SNMP benchmark, v2c then v3 authPriv on the same agents, folded into this file's rows."""
    for n in args.villages:
        load = wait_quiet(args.max_load, args.max_wait)
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as f:
            sh(
                sys.executable,
                str(ROOT / "bench/snmp/bench_snmp.py"),
                "--villages",
                str(n),
                "--v3-every",
                "0",
                "1",
                "--cli-jobs",
                "0",
                "--rounds",
                str(args.rounds),
                "--out",
                f.name,
                timeout=1800,
            )
            for line in Path(f.name).read_text().splitlines():
                emit({"kind": "snmp", "load1_before": load, **json.loads(line)}, args.out)


def cmd_queries(args: argparse.Namespace) -> None:
    """Dashboard refresh with a day of history: bench/dashboards (engineer H's) does the backfill from desanet's
    own renderer and the timing; one row per village count and board."""
    tool = ROOT / "bench/dashboards/bench_dashboards.py"
    if not tool.exists():
        sys.exit(f"{tool} is not there")
    for n in args.villages:
        load = wait_quiet(args.max_load, args.max_wait)
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "q.json"
            t0 = time.monotonic()
            sh(
                sys.executable,
                str(tool),
                "--villages",
                str(n),
                "--kecamatan",
                str(min(n, KECAMATAN)),
                "--hours",
                str(args.hours),
                "--step",
                str(args.step),
                "--json",
                str(out),
                *args.extra,
                timeout=5400,
            )
            r = json.loads(out.read_text())
        common = {
            "kind": "queries",
            "villages": n,
            "hours": r["hours"],
            "step": r["step"],
            "samples": r["samples"],
            "series": r["series"],
            "rev": r["rev"],
            "load1_before": load,
            "bench_wall_s": round(time.monotonic() - t0),
            "load1": load1(),
        }
        for b in r["results"]:
            emit(
                {
                    **common,
                    **{
                        k: b[k]
                        for k in ("board", "queries", "exec_seconds", "exec_seconds_each", "wall_seconds", "slowest")
                    },
                },
                args.out,
            )


# ------------------------------------------------------------------------------------------------- footprint
NFT_COUNT = """table inet bprovcount {
  counter icmp_in {}
  counter icmp_out {}
  counter stamp_in {}
  counter stamp_out {}
  counter snmp_in {}
  counter snmp_out {}
  counter other_in {}
  counter other_out {}
  chain in {
    type filter hook input priority -400; policy accept;
    ip protocol icmp counter name icmp_in accept
    udp dport 862 counter name stamp_in accept
    udp dport 161 counter name snmp_in accept
    counter name other_in
  }
  chain out {
    type filter hook output priority -400; policy accept;
    icmp type echo-reply counter name icmp_out accept
    udp sport 862 counter name stamp_out accept
    udp sport 161 counter name snmp_out accept
    counter name other_out
  }
}
"""


def _iface_bytes(ns: str, dev: str) -> tuple[int, int]:
    st = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", dev))[0]["stats64"]
    return int(st["rx"]["bytes"]), int(st["tx"]["bytes"])


def cmd_footprint(args: argparse.Namespace) -> None:
    """desanet serve (defaults, probes icmp,snmp,stamp,trace) against one village of a one-village lab."""
    from desanet.budget.footprint import ETHERNET_HEADER, daily_footprint, stamp_burst_bytes
    from desanet.district import load_inventory

    prefix = "bprovfp"
    tmp = Path(tempfile.mkdtemp(prefix="bprov-fp-"))
    tmp.chmod(0o755)
    import yaml

    # A lab of this one village (its kecamatan, core and NOC), probed with the inventory's own settings.
    doc = yaml.safe_load((ROOT / "inventory.yaml").read_text())
    doc["villages"] = [v for v in doc["villages"] if v.get("slug") == args.village]
    doc["sessions"] = []
    inv = tmp / "one.yaml"
    inv.write_text(yaml.safe_dump(doc, sort_keys=False))
    full = load_inventory(inv)
    village = full.village(args.village)
    env = {
        **os.environ,
        "DESANET_LAB_PREFIX": prefix,
        "DESANET_STATE_DIR": str(tmp),
        "DESANET_SNMP_COMMUNITY": "desanet-test-community",
        "DESANET_SNMP_AUTH_KEY": "desanet-test-auth",
        "DESANET_SNMP_PRIV_KEY": "desanet-test-priv",
    }
    cli = [sys.executable, "-m", "desanet.cli"]
    procs = Procs()
    subprocess.run([*cli, "lab", "up", "--inventory", str(inv)], env=env, check=True, timeout=900)
    try:
        state = json.loads((Path("/run/desanet-lab") / prefix / "state.json").read_text())
        plan = state["plan"]
        vplan = next(v for v in plan["villages"] if v["slug"] == args.village)
        vns = vplan["ns"]
        dev = "up0"
        sh("ip", "netns", "exec", vns, "nft", "-f", "-", input_=NFT_COUNT)
        rx0, tx0 = _iface_bytes(vns, dev)
        t0 = time.monotonic()
        p = procs.start(
            "serve",
            [
                "ip",
                "netns",
                "exec",
                plan["noc_ns"],
                *cli,
                "serve",
                "--inventory",
                str(inv),
                "--probes",
                "icmp,snmp,stamp,trace",
                "--web.listen-address",
                "127.0.0.1:19990",
            ],
            tmp / "serve.log",
            env,
        )
        time.sleep(args.seconds)
        procs.stop(p)
        dt = time.monotonic() - t0
        rx1, tx1 = _iface_bytes(vns, dev)
        counters = json.loads(
            sh("ip", "netns", "exec", vns, "nft", "-j", "list", "counters", "table", "inet", "bprovcount")
        )["nftables"]
        by = {c["counter"]["name"]: c["counter"] for c in counters if "counter" in c}
        s = full.settings
        prof = full.profile(village.profile or full.defaults.profile)
        fp = daily_footprint(s, video_packet_bytes=prof.video_packet_bytes)
        row: dict[str, Any] = {
            "kind": "footprint",
            "village": args.village,
            "seconds": round(dt, 1),
            "iface_rx_bytes": rx1 - rx0,
            "iface_tx_bytes": tx1 - tx0,
            "load1": load1(),
        }
        for name, c in by.items():
            row[f"{name}_packets"], row[f"{name}_bytes_l3"] = c["packets"], c["bytes"]
        stamp_bursts = by["stamp_in"]["packets"] / max(1, round(s.stamp.rate_pps * s.stamp.duration_seconds))
        row["stamp_bursts"] = round(stamp_bursts, 2)
        polls = max(1, round(dt / s.snmp.every_seconds))
        row["snmp_polls"] = polls
        row["snmp_request_bytes_l3_per_poll"] = round(by["snmp_in"]["bytes"] / polls, 1)
        row["snmp_response_bytes_l3_per_poll"] = round(by["snmp_out"]["bytes"] / polls, 1)
        row["snmp_packets_per_poll"] = round(by["snmp_in"]["packets"] / polls, 2)
        # Expected over the same window from the formula (STAMP by the bursts that ran: a 5-min window holds 0-2).
        day = 86400.0
        exp_icmp = (fp.icmp.total + fp.trace.total) * dt / day  # trace probes are ICMP echoes too
        exp_stamp = 2 * stamp_burst_bytes(s, prof.video_packet_bytes) * stamp_bursts
        measured_icmp = (
            by["icmp_in"]["bytes"]
            + by["icmp_out"]["bytes"]
            + ETHERNET_HEADER * (by["icmp_in"]["packets"] + by["icmp_out"]["packets"])
        )
        measured_stamp = (
            by["stamp_in"]["bytes"]
            + by["stamp_out"]["bytes"]
            + ETHERNET_HEADER * (by["stamp_in"]["packets"] + by["stamp_out"]["packets"])
        )
        row |= {
            "expected_icmp_and_trace_bytes": round(exp_icmp),
            "measured_icmp_and_trace_bytes": measured_icmp,
            "expected_stamp_bytes": round(exp_stamp),
            "measured_stamp_bytes": measured_stamp,
            "iface_total_bytes": (rx1 - rx0) + (tx1 - tx0),
            # The formula over this window (STAMP by the bursts that ran, SNMP by the polls): against the counters.
            "expected_window_total_bytes": round(
                exp_icmp + exp_stamp + fp.snmp.total * polls / (day / s.snmp.every_seconds)
            ),
        }
        emit(row, args.out)
    finally:
        procs.stop()
        subprocess.run([*cli, "lab", "down"], env=env, timeout=600)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, villages: list[int]) -> None:
        p.add_argument("--villages", type=int, nargs="+", default=villages)
        p.add_argument("--out", type=Path)
        p.add_argument("--max-load", type=float, default=2.0, help="wait for the 1-min load to drop below this")
        p.add_argument("--max-wait", type=float, default=600, help="but no longer than this many seconds")
        p.add_argument("--per-snmpd", type=int, default=250, help="village addresses per snmpd process")

    p = sub.add_parser("series")
    common(p, [217])
    p.add_argument("--before", default="265e3aa")
    p.add_argument("--before-tree", default="/tmp/bprov-before")
    p.add_argument("--wait", type=float, default=240, help="at most this long for every village's probes")
    p.set_defaults(fn=cmd_series)
    p = sub.add_parser("shards")
    common(p, [217, 8500])
    p.add_argument("--shards", type=int, nargs="+", default=[2])
    p.add_argument("--warmup", type=float, default=60)
    p.add_argument("--seconds", type=float, default=60)
    p.set_defaults(fn=cmd_shards)
    p = sub.add_parser("stamp")
    common(p, [1000])
    p.add_argument("--every", type=float, help="STAMP interval (default: 300 s x villages / 4,250)")
    p.add_argument("--warmup", type=float, default=1.0, help="intervals after start before the window")
    p.add_argument("--seconds", type=float, default=2.0, help="the window, in intervals")
    p.add_argument("--sample", type=float, default=15.0, help="seconds between scrapes in the window")
    p.add_argument("--before", default="e3fcf22", help="the landed code with 4 STAMP bursts at once")
    p.add_argument("--before-tree", default="/tmp/bprov-stamp-before")
    p.set_defaults(fn=cmd_stamp)
    p = sub.add_parser("stamp-pacing")
    p.add_argument("--concurrent", type=int, nargs="+", default=[4, 107])
    p.add_argument("--out", type=Path)
    p.set_defaults(fn=cmd_stamp_pacing)
    p = sub.add_parser("snmp")
    common(p, [217, 1000])
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(fn=cmd_snmp)
    p = sub.add_parser("queries")
    common(p, [217, 8500])
    p.add_argument("--hours", type=float, default=24)
    p.add_argument("--step", type=float, default=60, help="seconds between simulated scrapes")
    p.add_argument("extra", nargs="*", help="passed on to bench/dashboards (after --)")
    p.set_defaults(fn=cmd_queries)
    p = sub.add_parser("footprint")
    p.add_argument("--village", default="kepatihan")
    p.add_argument("--seconds", type=float, default=330)
    p.add_argument("--out", type=Path)
    p.set_defaults(fn=cmd_footprint)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    args.fn(args)


if __name__ == "__main__":
    main()
