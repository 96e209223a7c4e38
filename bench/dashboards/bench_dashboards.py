"""How long one refresh of the NOC overview and the sessions board takes Prometheus, at district scale.

Not a test: it prints the figures docs/performance.md quotes. No root, no lab, no network beyond 127.0.0.1:

1. Simulates `--hours` of a district of `--villages` villages (district/synth.py, plus the shipped inventory's
   kind of sessions): every village's probe results evolve (most ready, some congested in the evening, a few
   cut for hours, some jittery), the scheduler's own evaluation judges them (exporter.scheduler.Monitor) and
   desanet's own renderer writes them out (exporter.metrics.render_village), one scrape every `--step` seconds,
   as OpenMetrics with timestamps. `--rev` runs an older commit's code the same way (git archive into a
   temporary directory), so "before" and "after" come from each version's own output, dashboards and rules.
2. Backfills them into a TSDB (`promtool tsdb create-blocks-from openmetrics`), starts Prometheus on it
   (127.0.0.1, nothing scraped), and backfills the recording rules the dashboards read from it
   (`promtool tsdb create-blocks-from rules`, in dependency order: a rule over another rule's output needs that
   output in the TSDB first), restarting Prometheus after each level.
3. Sends every query of each dashboard the way Grafana 11 does for one refresh (variables at All, or one
   village; range queries over the dashboard's time range with Grafana's step; instant queries at the end) to
   Prometheus' HTTP API with `stats=all`, one after the other, and sums Prometheus' own execution time
   (execTotalTime) per dashboard; three refreshes, the median.

    python bench/dashboards/bench_dashboards.py --villages 217 --hours 24 --json after.json
    python bench/dashboards/bench_dashboards.py --villages 217 --hours 24 --rev HEAD~5 --json before.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\$(?:\{(\w+)(?:[.:][^}]*)?\}|(\w+))")  # $name, ${name}, ${name:format}
CHUNK_SECONDS = 7200  # one OpenMetrics file (and one TSDB block) per 2 h of simulated time
SESSIONS = """sessions:
  - title: Rapat koordinasi Bupati dan kepala desa
    start: 2026-12-01T13:00:00
    duration_minutes: 90
    repeat: weekly
    all: true
    profile: zoom-gallery
  - title: Musrenbang Kecamatan
    start: 2026-12-03T09:00:00
    duration_minutes: 120
    repeat: daily
    kecamatan: [K001, K002]
    profile: meet-hd
"""


# ------------------------------------------------------------------------------------------------ the code
def load_code(rev: str | None, keep: list[tempfile.TemporaryDirectory[str]]) -> Path:
    """The checkout whose desanet runs: this one, or `rev` unpacked from git (read-only on the repository)."""
    if rev is None:
        import desanet

        return Path(desanet.__file__).resolve().parent.parent
    tmp = tempfile.TemporaryDirectory(prefix="desanet-rev-")
    keep.append(tmp)
    archive = subprocess.run(["git", "-C", str(HERE), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp.name], input=archive, check=True)
    sys.path.insert(0, tmp.name)
    for name in [m for m in sys.modules if m == "desanet" or m.startswith("desanet.")]:
        del sys.modules[name]
    import desanet

    root = Path(desanet.__file__).resolve().parent.parent
    assert root == Path(tmp.name).resolve(), f"imported {root}, not the unpacked {rev}"
    return root


def make(cls: Any, **known: Any) -> Any:
    """A result dataclass from the fields this version has; fields it has and we do not know are None (so one
    simulation feeds old and new code alike)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in known:
            kwargs[f.name] = known[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs[f.name] = None
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------------ simulation
@dataclasses.dataclass
class Behaviour:
    """How one village's link behaves over the day (seeded per village, the same for every version)."""

    base_rtt: float
    jitter: float
    evening_congestion: bool
    cut_hours: tuple[int, int] | None
    jittery: bool

    @classmethod
    def draw(cls, rng: random.Random) -> Behaviour:
        cut = None
        if rng.random() < 0.03:
            start = rng.randrange(24)
            cut = (start, start + rng.randrange(1, 5))
        return cls(
            base_rtt=rng.uniform(0.002, 0.025),
            jitter=rng.uniform(0.0005, 0.004),
            evening_congestion=rng.random() < 0.12,
            cut_hours=cut,
            jittery=rng.random() < 0.05,
        )

    def at(self, hour: float) -> tuple[float, float, float]:
        """(rtt, jitter, loss) at this local hour."""
        if self.cut_hours and self.cut_hours[0] <= hour < self.cut_hours[1]:
            return self.base_rtt, self.jitter, 1.0
        if self.evening_congestion and 19 <= hour < 22:
            return 0.12, 0.02, 0.02
        if self.jittery and 8 <= hour < 12:
            return self.base_rtt + 0.01, 0.035, 0.0
        return self.base_rtt, self.jitter, 0.0


class District:
    """Every village's state, advanced a step at a time and rendered by the code under test."""

    def __init__(self, villages: int, kecamatan: int, seed: int) -> None:
        from desanet.district import parse_inventory
        from desanet.district.synth import synth_inventory
        from desanet.exporter import metrics
        from desanet.exporter.scheduler import Monitor

        self.metrics = metrics
        text = synth_inventory(villages, kecamatan) + SESSIONS
        self.inv = parse_inventory(text, strict_time=False)
        self.monitor = Monitor(self.inv)
        self.monitor.apply_inventory(self.inv)  # no probe starts: start() is never called
        self.tz = ZoneInfo(self.inv.timezone)
        rng = random.Random(seed)
        self.behaviour = {slug: Behaviour.draw(rng) for slug in self.monitor.villages}
        self.rng = random.Random(seed + 1)
        self.octets: dict[str, int] = dict.fromkeys(self.monitor.villages, 0)

    def step(self, t: float, step: float) -> dict[str, list[str]]:
        """Advance every village to time t and render it: family name -> sample lines (no timestamps)."""
        from desanet.probes.icmp import IcmpResult
        from desanet.probes.snmp import SnmpInterface, SnmpOptic, SnmpResult
        from desanet.probes.stamp import DirectionResult as StampDirection
        from desanet.probes.stamp import StampResult
        from desanet.probes.stats import summarize
        from desanet.probes.throughput import DirectionResult
        from desanet.probes.trace import Hop, TraceResult

        wall = time.time()  # the scheduler judges freshness by the wall clock: keep every result fresh for it
        local = datetime.fromtimestamp(t, self.tz)
        hour = local.hour + local.minute / 60
        out: dict[str, list[str]] = {}
        rng = self.rng
        for slug, vs in self.monitor.villages.items():
            rtt, jitter, loss = self.behaviour[slug].at(hour)
            n = max(1, int(step))  # one echo a second
            rtts = [None if rng.random() < loss else max(0.0002, rng.gauss(rtt, jitter)) for _ in range(n)]
            for r in rtts:
                vs.observe_rtt("icmp", r)
            got = [r for r in rtts if r is not None]
            vs.icmp_window = make(
                IcmpResult,
                target=vs.village.address,
                sent=n,
                received=len(got),
                duplicates=0,
                reordered=0,
                loss_ratio=(n - len(got)) / n,
                rtt=summarize(got) if got else None,
                jitter_seconds=jitter if got else None,
                ipdv_seconds=jitter * 0.9 if got else None,
                pdv_seconds=jitter * 3 if got else None,
                burst_loss_ratio=None,
                timestamping="kernel",
                socket_kind="raw",
            )
            if int(t) % 300 < step:  # STAMP and trace every 5 minutes
                d = make(
                    StampDirection,
                    loss_ratio=loss,
                    jitter_seconds=jitter * 0.7,
                    ipdv_seconds=jitter * 0.6,
                    pdv_seconds=jitter * 2,
                    hops=3,
                )
                stamp_rtts = [max(0.0002, rng.gauss(rtt, jitter)) for _ in range(20)] if loss < 1 else []
                vs.stamp = make(
                    StampResult,
                    target=vs.village.address,
                    port=862,
                    sent=250,
                    received=int(250 * (1 - loss)),
                    loss_ratio=loss,
                    rtt=summarize(stamp_rtts) if stamp_rtts else None,
                    jitter_seconds=jitter,
                    ipdv_seconds=jitter,
                    pdv_seconds=jitter * 3,
                    forward=d,
                    backward=d,
                    burst_loss_ratio=None,
                    rtts=tuple(stamp_rtts),
                )
                vs.stamp_at = wall
                vs.status("stamp").record(loss < 1, 5.0)
                hops = tuple(
                    make(
                        Hop,
                        ttl=i,
                        address=a,
                        rtt_seconds_p50=rtt * i / 3,
                        rtt_seconds=(rtt * i / 3,),
                        sent=3,
                        received=3,
                        loss_ratio=0.0,
                        reached=i == 3,
                    )
                    for i, a in enumerate(("10.255.0.1", "10.254.1.2", vs.village.address), 1)
                )
                vs.trace = make(
                    TraceResult,
                    target=vs.village.address,
                    method="icmp",
                    hops=hops,
                    reached=True,
                    degraded_hop=None,
                    degraded_address=None,
                    duration_seconds=0.1,
                    probes_sent=9,
                )
                vs.trace_at = wall
                vs.status("trace").record(True, 0.1)
            if loss < 1:
                self.octets[slug] += int(rng.uniform(1e5, 5e6) * step)
                o = self.octets[slug]
                ports = (
                    make(
                        SnmpInterface,
                        index=1,
                        name="lo",
                        alias=None,
                        oper_up=True,
                        admin_up=True,
                        speed_bits_per_second=1e7,
                        in_octets=0,
                        out_octets=0,
                        in_errors=0,
                        out_errors=0,
                        in_discards=0,
                        last_change_seconds=0.0,
                    ),
                    make(
                        SnmpInterface,
                        index=2,
                        name="sfp1",
                        alias=None,
                        oper_up=True,
                        admin_up=True,
                        speed_bits_per_second=1e9,
                        in_octets=o,
                        out_octets=o // 3,
                        in_errors=0,
                        out_errors=0,
                        in_discards=0,
                        last_change_seconds=0.0,
                    ),
                )
                optic = make(
                    SnmpOptic,
                    index=1,
                    name="sfp1",
                    rx_power_dbm=-18.0 - (hash(slug) % 70) / 10,
                    tx_power_dbm=-2.0,
                    temperature_celsius=40.0,
                    bias_amperes=0.012,
                    voltage_volts=3.3,
                    wavelength_meters=1.31e-6,
                    rx_loss=False,
                    tx_fault=False,
                    vendor="sim",
                )
                vs.snmp_prev, vs.snmp_prev_at = vs.snmp, (wall - step) if vs.snmp is not None else None
                vs.snmp = make(
                    SnmpResult,
                    target=vs.village.address,
                    success=True,
                    error=None,
                    uptime_seconds=t % 864000,
                    interfaces=ports,
                    optics=(optic,),
                    duration_seconds=0.01,
                )
                vs.snmp_at = wall
            vs.status("snmp").record(loss < 1, 0.02)
            if int(t + hash(slug) % 21600) % 21600 < step:  # a throughput test every 6 h
                down = make(
                    DirectionResult,
                    bits_per_second=18e6,
                    link_bits_per_second=18.7e6,
                    bytes=3_000_000,
                    seconds=2.0,
                    converged=True,
                    retransmits=0,
                )
                vs.throughput = {"down": (down, wall), "up": (down, wall)}
                vs.throughput_bytes += 6_000_000
                vs.status("throughput").record(True, 4.0)
            self.monitor.evaluate(vs, local)
            for name, lines in self.metrics.render_village(vs, t).out.items():
                out.setdefault(name, []).extend(lines)
        shared = getattr(self.metrics, "render_shared", None)
        if shared is not None:
            for name, lines in shared(self.inv).out.items():
                out.setdefault(name, []).extend(lines)
        return out


def openmetrics(specs: list[Any], chunk: dict[str, list[str]]) -> Iterator[str]:
    """One OpenMetrics text: each family once (OpenMetrics forbids interleaving), samples with timestamps."""
    for spec in specs:
        lines = chunk.get(spec.name)
        if not lines:
            continue
        family, kind = spec.name, spec.type
        if kind == "counter":
            family = spec.name.removesuffix("_total")
        yield f"# TYPE {family} {kind}\n"
        yield from lines
    yield "# EOF\n"


def stamp_lines(lines: list[str], t: float) -> Iterator[str]:
    """Add the scrape's target labels and the timestamp to rendered sample lines."""
    for line in lines:
        head, _, value = line.rstrip("\n").rpartition(" ")
        if head.endswith("}"):
            head = head[:-1] + ',instance="desanet:9917",job="desanet"}'
        else:
            head += '{instance="desanet:9917",job="desanet"}'
        yield f"{head} {value} {t:.3f}\n"


# ------------------------------------------------------------------------------------------------ Prometheus
class Prometheus:
    def __init__(self, tsdb: Path, work: Path) -> None:
        self.tsdb, self.work = tsdb, work
        self.proc: subprocess.Popen[bytes] | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (work / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.work / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.work / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.tsdb}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=3650d",
                "--query.max-samples=200000000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise SystemExit("Prometheus did not become ready; see prometheus.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def query(self, path: str, **params: str) -> dict[str, Any]:
        data = urllib.parse.urlencode({**params, "stats": "all"}).encode()
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{self.url}{path}", data=data, timeout=300) as r:
                body: dict[str, Any] = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422: the query is refused; its body says why
            body = json.loads(exc.read() or b"{}")
        body["wall"] = time.perf_counter() - t0
        return body


def rule_levels(rules_file: Path) -> list[dict[str, Any]]:
    """The recording rules, split into files by dependency: level 0 reads only exported series, level n reads
    rules of levels below n. Each keeps its group (and so its evaluation interval)."""
    import yaml

    doc = yaml.safe_load(rules_file.read_text())
    recorded = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    level: dict[str, int] = {}
    pending = [(g, r) for g in doc["groups"] for r in g["rules"] if "record" in r]
    while pending:
        progress = False
        for g, r in list(pending):
            deps = {name for name in recorded if re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", r["expr"])}
            deps.discard(r["record"])
            if all(d in level for d in deps):
                # A name recorded by several rules (one per label set) takes the deepest of them.
                level[r["record"]] = max([level.get(r["record"], 0), *(level[d] + 1 for d in deps)])
                pending.remove((g, r))
                progress = True
        if not progress:
            raise SystemExit(f"circular recording rules: {[r['record'] for _, r in pending]}")
    files = []
    for n in range(max(level.values(), default=-1) + 1):
        groups = []
        for g in doc["groups"]:
            rules = [r for r in g["rules"] if "record" in r and level[r["record"]] == n]
            if rules:
                groups.append({k: v for k, v in g.items() if k != "rules"} | {"rules": rules})
        files.append({"groups": groups})
    return files


# ------------------------------------------------------------------------------------------------ Grafana's requests
def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text))


def substitute(text: str, names: dict[str, str]) -> str:
    """$name and ${name} replaced by names[name], as Grafana interpolates a query; unknown names stay."""

    def one(m: re.Match[str]) -> str:
        return names.get(m.group(1) or m.group(2), m.group(0))

    return VARIABLE.sub(one, text)


def requests(
    board: dict[str, Any], values: dict[str, str], end: float, scrape: float
) -> Iterator[tuple[str, dict[str, str]]]:
    """(API path, params) for every query of one refresh, as Grafana 11 builds them."""
    span = parse_duration(board["time"]["from"].removeprefix("now-"))
    for panel in [p for p in board["panels"]] + [q for p in board["panels"] for q in p.get("panels", [])]:
        if not panel.get("targets"):
            continue
        width_px = panel["gridPos"]["w"] / 24 * 1600
        points = panel.get("maxDataPoints") or width_px
        rng = parse_duration(panel["timeFrom"]) if panel.get("timeFrom") else span
        floor = parse_duration(panel["interval"]) if panel.get("interval") else scrape
        interval = max(floor, rng / points)
        interval = max(1.0, round(interval))
        builtins = {
            "__interval": f"{int(interval)}s",
            "__rate_interval": f"{int(max(interval + scrape, 4 * scrape))}s",
            "__range": f"{int(rng)}s",
        }
        names = {**values, **builtins}
        for t in panel["targets"]:
            expr = substitute(t["expr"], names)
            if t.get("instant"):
                yield "/api/v1/query", {"query": expr, "time": f"{end:.3f}"}
            else:
                start = math.floor((end - rng) / interval) * interval
                yield (
                    "/api/v1/query_range",
                    {
                        "query": expr,
                        "start": f"{start:.0f}",
                        "end": f"{end:.0f}",
                        "step": f"{interval:.0f}",
                    },
                )


def refresh(
    prom: Prometheus, board: dict[str, Any], values: dict[str, str], end: float, scrape: float
) -> dict[str, Any]:
    total = wall = 0.0
    slowest: list[tuple[float, str]] = []
    empty: list[str] = []
    errors: list[str] = []
    n = 0
    for path, params in requests(board, values, end, scrape):
        body = prom.query(path, **params)
        if body.get("status") != "success":
            errors.append(f"{body.get('error')} in {params['query'][:150]}")
            total += body["wall"]
            wall += body["wall"]
            n += 1
            continue
        if not any(series.get("values") or series.get("value") for series in body["data"]["result"]):
            empty.append(params["query"][:100])
        timings = (body.get("data", {}).get("stats") or {}).get("timings", {})
        exec_s = float(timings.get("execTotalTime", body["wall"]))
        total += exec_s
        wall += body["wall"]
        slowest.append((exec_s, params["query"][:100]))
        n += 1
    slowest.sort(reverse=True)
    return {
        "queries": n,
        "exec_seconds": total,
        "wall_seconds": wall,
        "slowest": slowest[:3],
        "timings": slowest,
        "empty": empty,
        "errors": errors,
    }


def all_values(board: dict[str, Any], one_village: str) -> dict[str, str]:
    values = {}
    for v in board["templating"]["list"]:
        if v.get("includeAll"):
            values[v["name"]] = v.get("allValue") or ".*"
    if board["uid"] == "desanet-village":
        values.update(village=one_village, kecamatan=".*", profile=".*")
    return values


# ------------------------------------------------------------------------------------------------ main
def backfill_exports(
    district: District, specs: list[Any], tsdb: Path, work: Path, start: float, end: float, step: float
) -> tuple[int, int]:
    """Render the district scrape by scrape into OpenMetrics files of 2 h and turn each into TSDB blocks;
    (samples, series in the last scrape)."""
    samples = series = 0
    t = start
    while t < end:
        chunk: dict[str, list[str]] = {}
        chunk_end = min(end, t + CHUNK_SECONDS)
        while t < chunk_end:
            rendered = district.step(t, step)
            for name, lines in rendered.items():
                chunk.setdefault(name, []).extend(stamp_lines(lines, t))
            series = sum(len(lines) for lines in rendered.values())
            t += step
        path = work / "chunk.om"
        with path.open("w") as fh:
            fh.writelines(openmetrics(specs, chunk))
        samples += sum(len(v) for v in chunk.values())
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(path), str(tsdb)],
            check=True,
            capture_output=True,
        )
        path.unlink()
    return samples, series


def backfill_rules(prom: Prometheus, rules_file: Path, tsdb: Path, work: Path, start: float, end: float) -> None:
    """Evaluate the recording rules over the backfilled span, level by level, into the TSDB."""
    for n, level in enumerate(rule_levels(rules_file)):
        level_file = work / f"rules-{n}.yml"
        level_file.write_text(json.dumps(level))
        out = work / f"rules-{n}"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "rules", f"--start={start:.0f}", f"--end={end:.0f}",
             f"--url={prom.url}", f"--output-dir={out}", "--eval-interval=15s", str(level_file)],
            check=True, capture_output=True,
        )  # fmt: skip
        prom.stop()
        for block in out.iterdir():
            if block.is_dir():
                shutil.move(str(block), tsdb / block.name)
        prom.start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--villages", type=int, default=217)
    ap.add_argument("--kecamatan", type=int, default=25)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--step", type=float, default=60, help="seconds between simulated scrapes (default 60)")
    ap.add_argument("--rev", help="benchmark this git revision's code, dashboards and rules instead")
    ap.add_argument("--refreshes", type=int, default=3)
    ap.add_argument("--boards", nargs="+", default=["desanet-overview", "desanet-sessions", "desanet-village"])
    ap.add_argument("--keep", type=Path, help="keep the TSDB and files in this directory")
    ap.add_argument("--reuse", action="store_true", help="time the queries on --keep's TSDB again, no backfill")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--json", type=Path)
    opts = ap.parse_args()
    for tool in ("promtool", "prometheus"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} (scripts/setup.sh)")
    if opts.reuse and opts.keep is None:
        raise SystemExit("--reuse needs --keep DIR (a directory a previous run kept)")
    keep: list[tempfile.TemporaryDirectory[str]] = []
    code = load_code(opts.rev, keep)
    from desanet.exporter.metrics import SPECS

    work = opts.keep or Path(tempfile.mkdtemp(prefix="desanet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tsdb = work / "tsdb"
    marker = work / "backfill.json"
    loaded = [json.loads(p.read_text()) for p in (code / "dashboards" / "json").glob("*.json")]
    boards = {b["uid"]: b for b in loaded}
    reads_rules = any(re.search(r"\b[a-z_]+:desanet_\w+:\w+", json.dumps(b)) for b in boards.values())
    district = District(opts.villages, opts.kecamatan, opts.seed)
    print(
        f"code {code} ({opts.rev or 'working tree'}); {opts.villages} villages, {opts.hours:g} h at {opts.step:g} s",
        flush=True,
    )
    prom = Prometheus(tsdb, work)
    results = []
    try:
        if opts.reuse:
            done = json.loads(marker.read_text())
            start, end, samples, series = done["start"], done["end"], done["samples"], done["series"]
            prom.start()
        else:
            shutil.rmtree(tsdb, ignore_errors=True)
            tsdb.mkdir()
            end = (time.time() // CHUNK_SECONDS) * CHUNK_SECONDS  # whole blocks
            start = end - opts.hours * 3600
            t0 = time.monotonic()
            samples, series = backfill_exports(district, SPECS, tsdb, work, start, end, opts.step)
            print(
                f"backfilled {samples:,} samples ({series:,} series, {series / opts.villages:.1f} a village) "
                f"in {time.monotonic() - t0:.0f} s",
                flush=True,
            )
            t1 = time.monotonic()
            prom.start()
            if reads_rules:
                backfill_rules(prom, code / "alerts" / "desanet.rules.yml", tsdb, work, start, end)
                print(f"rules backfilled in {time.monotonic() - t1:.0f} s", flush=True)
            else:
                print("the dashboards read no recording rules: none backfilled", flush=True)
            marker.write_text(json.dumps({"start": start, "end": end, "samples": samples, "series": series}))
        one = next(iter(district.monitor.villages))
        for uid in opts.boards:
            board = boards[uid]
            values = all_values(board, one)
            runs = [refresh(prom, board, values, end, opts.step) for _ in range(opts.refreshes)]
            med = statistics.median(r["exec_seconds"] for r in runs)
            r = {
                "board": uid,
                "queries": runs[0]["queries"],
                "exec_seconds": med,
                "exec_seconds_each": [round(x["exec_seconds"], 3) for x in runs],
                "wall_seconds": statistics.median(x["wall_seconds"] for x in runs),
                "slowest": runs[-1]["slowest"],
                "timings": [(round(t, 4), q) for t, q in runs[-1]["timings"]],
                "empty": runs[-1]["empty"],
                "errors": runs[-1]["errors"],
            }
            results.append(r)
            print(
                f"{uid}: {r['queries']} queries ({len(r['empty'])} without data, {len(r['errors'])} refused), "
                f"{med:.3f} s of query time per refresh (runs {r['exec_seconds_each']}; wall "
                f"{r['wall_seconds']:.3f} s); slowest " + "; ".join(f"{s:.3f} s {q}" for s, q in r["slowest"]),
                flush=True,
            )
            for q in r["empty"]:
                print(f"  no data: {q}", flush=True)
            for q in r["errors"]:
                print(f"  refused (its time counted as wall time): {q}", flush=True)
    finally:
        prom.stop()
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "rev": opts.rev or "working tree",
                    "villages": opts.villages,
                    "hours": opts.hours,
                    "step": opts.step,
                    "samples": samples,
                    "series": series,
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )
    if opts.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
