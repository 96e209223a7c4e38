"""How long one refresh of the NOC overview and the sessions board takes Prometheus, at district or province scale.

Not a test: it prints the figures docs/performance.md quotes. No root, no lab, no network beyond 127.0.0.1:

1. Simulates `--hours` of a district of `--villages` villages (district/synth.py, plus the shipped inventory's
   kind of sessions): every village's probe results evolve (most ready, some congested in the evening, a few
   cut for hours, some jittery), the scheduler's own evaluation judges them (exporter.scheduler.Monitor) and
   desanet's own renderer writes them out (exporter.metrics.render_village), one scrape every `--step` seconds,
   as OpenMetrics with timestamps. `--rev` runs an older commit's code the same way (git archive into a
   temporary directory), so "before" and "after" come from each version's own output, dashboards and rules.
   `--jobs N` splits the villages over N worker processes (the simulation is Python: one core each).
2. Backfills them into a TSDB (`promtool tsdb create-blocks-from openmetrics`), starts Prometheus on it
   (127.0.0.1, nothing scraped), and backfills the recording rules the dashboards read from it
   (`promtool tsdb create-blocks-from rules`, in dependency order: a rule over another rule's output needs that
   output in the TSDB first), restarting Prometheus after each level. `--rules read` backfills only the rules
   the dashboards read (and the rules those read); `--rules-interval` evaluates them less often than every
   15 s. Both are for province scale, where evaluating every rule every 15 s over a day takes hours here.
3. Waits until Prometheus is idle (its first compaction, a minute after start, merges the overlapping blocks),
   then sends every query of each dashboard the way Grafana 11 does for one refresh (variables at All, or one
   village; range queries over the dashboard's time range with Grafana's step; instant queries at the end) to
   Prometheus' HTTP API with `stats=all`, one after the other, and sums Prometheus' own execution time
   (execTotalTime) per dashboard; three refreshes, the median.

    python bench/dashboards/bench_dashboards.py --villages 217 --hours 24 --json after.json
    python bench/dashboards/bench_dashboards.py --villages 217 --hours 24 --rev HEAD~5 --json before.json
    python bench/dashboards/bench_dashboards.py --villages 8500 --kecamatan 38 --hours 24 --step 150 --jobs 2 \
        --rules read --rules-interval 60 --keep /var/tmp/desanet-bd8500 --json results-8500.json
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import math
import os
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
NORMALS = 1 << 18  # standard normal draws the echoes' RTTs are taken from (District.echoes)
CHUNK_SECONDS = 7200
BACKFILL_OPTIONS = (
    "villages",
    "kecamatan",
    "hours",
    "step",
    "jobs",
    "rules",
    "rules_interval",
    "prototypes",
    "seed",
)  # one OpenMetrics file (and one TSDB block) per 2 h of simulated time
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


_FIELDS: dict[Any, list[tuple[str, bool]]] = {}


def make(cls: Any, **known: Any) -> Any:
    """A result dataclass from the fields this version has; fields it has and we do not know are None (so one
    simulation feeds old and new code alike)."""
    fields = _FIELDS.get(cls)
    if fields is None:  # dataclasses.fields() per call was a tenth of the simulation at 8,500 villages
        fields = _FIELDS[cls] = [
            (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        ]
    kwargs = {}
    for name, required in fields:
        if name in known:
            kwargs[name] = known[name]
        elif required:
            kwargs[name] = None
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
    """Every village's state, advanced a step at a time and rendered by the code under test. With `parts` > 1
    this one advances and renders only every parts-th village from `part` (one worker's share); the villages'
    behaviour is drawn for the whole district either way, the per-step noise from the part's own seed."""

    def __init__(
        self, villages: int, kecamatan: int, seed: int, part: int = 0, parts: int = 1, prototypes: int = 0
    ) -> None:
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
        self.rng = random.Random(seed + 1 + part)
        # Echo RTTs are rtt + jitter × z for a run of z from this table of standard normal draws, at a random
        # offset: one multiply-add an echo instead of random.gauss (a third of the simulation at one echo a
        # second); every village reads its own runs, and no query depends on the noise being fresher than that.
        table = random.Random(seed + 2)
        self.normals = [table.gauss(0.0, 1.0) for _ in range(NORMALS)]
        self.octets: dict[str, int] = dict.fromkeys(self.monitor.villages, 0)
        self.part = part
        slugs = list(self.monitor.villages)
        # With `prototypes` P (a multiple of the kecamatan count), village i is written with the values of
        # village i mod P, which is in the same kecamatan (synth deals villages round-robin), so it has the same
        # sessions and profiles: only P villages go through the scheduler and renderer, each of the others is
        # that text with its own labels (village, name, router, position). Series, labels and samples are the
        # district's; values repeat every P villages.
        p = prototypes if 0 < prototypes < len(slugs) else len(slugs)
        if p < len(slugs) and p % min(kecamatan, villages):
            raise SystemExit(f"--prototypes must be a multiple of the kecamatan count ({min(kecamatan, villages)})")
        self.slugs = slugs[:p][part::parts]
        self.copies: dict[str, list[tuple[tuple[str, str], ...]]] = {}
        if p < len(slugs):
            info = {slug: self._info_labels(self.monitor.villages[slug]) for slug in slugs}
            for i, slug in enumerate(slugs[p:], p):
                proto = slugs[i % p]
                a, b = self.monitor.villages[proto], self.monitor.villages[slug]
                self.copies.setdefault(proto, []).append(
                    ((info[proto], info[slug]), ("{" + a.base_labels, "{" + b.base_labels))
                )
        self.bulk_icmp = self._bulk_matches()

    def _info_labels(self, vs: Any) -> str:
        """The labels of a village's desanet_village_info line, as this version renders them."""
        line = self.metrics.render_village(vs, time.time()).out[self.metrics.VILLAGE_INFO.name][0]
        return line[line.index("{") : line.rindex("}") + 1]

    def _bulk_matches(self) -> bool:
        """Whether this version's VillageState.observe_rtt only counts (sent, received, histogram), so a step's
        echoes can be counted in one go (3 times faster at one echo a second); checked on two scratch states."""
        from desanet.exporter import state

        vs = next(iter(self.monitor.villages.values()))
        if not hasattr(state, "RTT_BUCKETS") or not hasattr(vs, "hist"):
            return False
        a, b = state.VillageState.create(vs.village), state.VillageState.create(vs.village)
        rtts = [0.0005, None, 0.001, 0.0123, 0.03, None, 2.5, 0.001]
        for r in rtts:
            a.observe_rtt("icmp", r)
        try:
            self._observe_icmp(b, rtts, [r for r in rtts if r is not None])
        except (AttributeError, TypeError):
            return False
        return bool((a.sent, a.received, a.hist) == (b.sent, b.received, b.hist))

    @staticmethod
    def _observe_icmp(vs: Any, rtts: list[float | None], got: list[float]) -> None:
        """What observe_rtt("icmp", r) does for each r, in one go (same counts, same float sum order)."""
        from desanet.exporter.state import RTT_BUCKETS, Histogram

        vs.sent["icmp"] = vs.sent.get("icmp", 0) + len(rtts)
        if not got:
            return
        vs.received["icmp"] = vs.received.get("icmp", 0) + len(got)
        h = vs.hist.setdefault("icmp", Histogram())
        counts, total = h.counts, h.total
        for r in got:
            counts[bisect.bisect_left(RTT_BUCKETS, r)] += 1
            total += r
        h.total = total

    def echoes(self, n: int, rtt: float, jitter: float, loss: float) -> tuple[list[float | None], list[float]]:
        """n echoes' round-trip times (None: lost) and the answered ones."""
        rng = self.rng
        if loss >= 1:
            return [None] * n, []
        if n > NORMALS // 4:
            got = [max(0.0002, rng.gauss(rtt, jitter)) for _ in range(n)]
        else:
            o = rng.randrange(NORMALS - n)
            got = [r if r > 0.0002 else 0.0002 for r in [rtt + jitter * z for z in self.normals[o : o + n]]]
        if loss <= 0:
            return list(got), got
        rtts: list[float | None] = [None if rng.random() < loss else r for r in got]
        return rtts, [r for r in rtts if r is not None]

    def step(self, t: float, step: float) -> dict[str, list[str]]:
        """Advance every village to time t and render it: family name -> sample lines (no timestamps; a
        village copied from a prototype is one string of several lines)."""
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
        villages = self.monitor.villages
        for slug in self.slugs:
            vs = villages[slug]
            rtt, jitter, loss = self.behaviour[slug].at(hour)
            n = max(1, int(step))  # one echo a second
            rtts, got = self.echoes(n, rtt, jitter, loss)
            if self.bulk_icmp:
                self._observe_icmp(vs, rtts, got)
            else:
                for r in rtts:
                    vs.observe_rtt("icmp", r)
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
            copies = self.copies.get(slug)
            for name, lines in self.metrics.render_village(vs, t).out.items():
                family = out.setdefault(name, [])
                family.extend(lines)
                if copies:
                    text = "".join(lines)
                    for (info, info_copy), (base, base_copy) in copies:
                        family.append(text.replace(info, info_copy).replace(base, base_copy))
        shared = getattr(self.metrics, "render_shared", None)
        if shared is not None and self.part == 0:  # once for the district, as one exporter renders it
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


TARGET_LABELS = ',instance="desanet:9917",job="desanet"}'


def stamp_block(lines: list[str], t: float) -> str:
    """stamp_lines for one family's lines of one scrape, as one string: two str.replace calls instead of a
    Python loop a line (the same text; it was a fifth of the time at 8,500 villages). Every rendered line has
    labels, so each holds one "} " (before its value) and one newline; if the counts say otherwise, the loop."""
    text = "".join(lines)
    n = text.count("\n")
    if text.count("} ") != n or text.count("{") != n:
        return "".join(stamp_lines(text.splitlines(keepends=True), t))
    return text.replace("} ", TARGET_LABELS[:-1] + "} ").replace("\n", f" {t:.3f}\n")


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
                "--query.timeout=1h",  # a rule's 2 h backfill query at 8,500 villages outlasted the default 2 min
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

    def metric(self, name: str) -> float:
        """One sample of Prometheus' own /metrics (0 when absent)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def settle(self, limit: float = 3600) -> tuple[float, int]:
        """Wait until Prometheus is idle, so the timing does not share the CPU with it: a minute after start its
        TSDB compacts (merging overlapping blocks, the rules' and the workers', at 8,500 villages for minutes).
        Idle: the first compaction has begun, and in the last 15 s under 0.3 s of CPU went and the count of
        loaded blocks did not change. (seconds waited, blocks)."""
        t0 = time.monotonic()
        prev = (self.metric("process_cpu_seconds_total"), self.metric("prometheus_tsdb_blocks_loaded"))
        while time.monotonic() - t0 < limit:
            time.sleep(15)
            cur = (self.metric("process_cpu_seconds_total"), self.metric("prometheus_tsdb_blocks_loaded"))
            triggered = self.metric("prometheus_tsdb_compactions_triggered_total") >= 1
            if triggered and cur[0] - prev[0] < 0.3 and cur[1] == prev[1]:
                break
            prev = cur
        return time.monotonic() - t0, int(self.metric("prometheus_tsdb_blocks_loaded"))

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


def uses(expr: str, name: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr) is not None


def rule_levels(rules_file: Path, read_by: str | None = None) -> list[dict[str, Any]]:
    """The recording rules, split into files by dependency: level 0 reads only exported series, level n reads
    rules of levels below n. Each keeps its group (and so its evaluation interval). With `read_by` (the
    dashboards' text), only the rules it names and the rules those read, and so on."""
    import yaml

    doc = yaml.safe_load(rules_file.read_text())
    recorded = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    if read_by is not None:
        wanted = {name for name in recorded if uses(read_by, name)}
        while True:
            more = {
                name
                for g in doc["groups"]
                for r in g["rules"]
                if r.get("record") in wanted
                for name in recorded
                if uses(r["expr"], name)
            }
            if more <= wanted:
                break
            wanted |= more
        for g in doc["groups"]:
            g["rules"] = [r for r in g["rules"] if r.get("record") in wanted]
        recorded = wanted
    level: dict[str, int] = {}
    pending = [(g, r) for g in doc["groups"] for r in g["rules"] if "record" in r]
    while pending:
        progress = False
        for g, r in list(pending):
            deps = {name for name in recorded if uses(r["expr"], name)}
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
@dataclasses.dataclass(frozen=True)
class Part:
    """One worker's share of the export backfill (`--jobs`): every parts-th village, into its own directory."""

    villages: int
    kecamatan: int
    seed: int
    part: int
    parts: int
    out: Path
    start: float
    end: float
    step: float
    max_chars: int
    prototypes: int


def backfill_part(job: Part) -> tuple[int, int]:
    """Render this part's villages scrape by scrape into OpenMetrics files (each inside one 2 h block range,
    and at most `max_chars` of text, so memory stays bounded) and turn each into TSDB blocks in job.out;
    (samples, series in the last scrape). Several files for one 2 h range give overlapping blocks, which
    Prometheus merges (vertical compaction), as it does the rules' blocks."""
    from desanet.exporter.metrics import SPECS

    district = District(job.villages, job.kecamatan, job.seed, job.part, job.parts, job.prototypes)
    job.out.mkdir(parents=True, exist_ok=True)
    samples = series = 0
    t = job.start
    n = 0
    while t < job.end:
        block_end = min(job.end, (t // CHUNK_SECONDS + 1) * CHUNK_SECONDS)
        chunk: dict[str, list[str]] = {}
        chars = 0
        while t < block_end and chars < job.max_chars:
            rendered = district.step(t, job.step)
            series = 0
            for name, lines in rendered.items():
                text = stamp_block(lines, t)
                chunk.setdefault(name, []).append(text)
                chars += len(text)
                series += text.count("\n")
            samples += series
            t += job.step
        path = job.out / f"chunk-{n}.om"
        n += 1
        with path.open("w") as fh:
            fh.writelines(openmetrics(SPECS, chunk))
        del chunk
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(path), str(job.out)],
            check=True,
            capture_output=True,
        )
        path.unlink()
    return samples, series


def backfill_exports(jobs: list[Part], tsdb: Path) -> tuple[int, int]:
    """Run the parts (in worker processes when there are several: the simulation is Python, one core each)
    and move their blocks into the TSDB; (samples, series)."""
    if len(jobs) == 1:
        results = [backfill_part(jobs[0])]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("fork")  # the workers inherit the imported code (--rev) as it is
        with ProcessPoolExecutor(len(jobs), mp_context=ctx) as pool:
            results = list(pool.map(backfill_part, jobs))
    for job in jobs:
        for block in job.out.iterdir():
            if block.is_dir():
                shutil.move(str(block), tsdb / block.name)
        shutil.rmtree(job.out)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def backfill_rules(
    prom: Prometheus, levels: list[dict[str, Any]], tsdb: Path, work: Path, start: float, end: float,
    interval: float, jobs: int,
) -> None:  # fmt: skip
    """Evaluate the recording rules over the backfilled span, level by level, into the TSDB; groups without
    their own interval every `interval` seconds; a level's rules split over `jobs` promtool processes (each
    query runs on one core in Prometheus)."""
    for n, level in enumerate(levels):
        rules = [(g, r) for g in level["groups"] for r in g["rules"]]
        procs = []
        outs = []
        for k in range(min(jobs, len(rules))):
            mine = rules[k::jobs]
            groups = []
            for g in level["groups"]:
                rs = [r for gg, r in mine if gg is g]
                if rs:
                    groups.append({key: v for key, v in g.items() if key != "rules"} | {"rules": rs})
            level_file = work / f"rules-{n}-{k}.yml"
            level_file.write_text(json.dumps({"groups": groups}))
            out = work / f"rules-{n}-{k}"
            shutil.rmtree(out, ignore_errors=True)
            outs.append(out)
            procs.append(subprocess.Popen(
                ["promtool", "tsdb", "create-blocks-from", "rules", f"--start={start:.0f}", f"--end={end:.0f}",
                 f"--url={prom.url}", f"--output-dir={out}", f"--eval-interval={interval:g}s", str(level_file)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            ))  # fmt: skip
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"promtool rules backfill failed: {err.decode()[-2000:]}")
        prom.stop()
        for out in outs:
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
    ap.add_argument("--jobs", type=int, default=1, help="simulate in this many processes, each a share of the villages")
    ap.add_argument(
        "--max-chunk-mb", type=int, default=1000, help="OpenMetrics text a worker holds before backfilling it"
    )
    ap.add_argument(
        "--prototypes",
        type=int,
        default=0,
        help="simulate this many villages (a multiple of --kecamatan) and write the others as relabelled copies",
    )
    ap.add_argument(
        "--rules-interval",
        type=float,
        default=15,
        help="seconds between rule evaluations in the backfill, for groups without their own (default 15)",
    )
    ap.add_argument(
        "--rules",
        choices=("all", "read"),
        default="all",
        help="backfill every recording rule, or only those the dashboards read and the rules they read",
    )
    ap.add_argument(
        "--resume-rules",
        action="store_true",
        help="keep --keep's exported blocks (exports.json) and backfill the rules again",
    )
    ap.add_argument(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="time at once, instead of after Prometheus' first compaction (a minute after start) has finished",
    )
    opts = ap.parse_args()
    if opts.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    for tool in ("promtool", "prometheus"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} (scripts/setup.sh)")
    if opts.reuse and opts.keep is None:
        raise SystemExit("--reuse needs --keep DIR (a directory a previous run kept)")
    keep: list[tempfile.TemporaryDirectory[str]] = []
    code = load_code(opts.rev, keep)

    work = opts.keep or Path(tempfile.mkdtemp(prefix="desanet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tsdb = work / "tsdb"
    marker = work / "backfill.json"
    loaded = [json.loads(p.read_text()) for p in (code / "dashboards" / "json").glob("*.json")]
    boards = {b["uid"]: b for b in loaded}
    reads_rules = any(re.search(r"\b[a-z_]+:desanet_\w+:\w+", json.dumps(b)) for b in boards.values())
    if opts.reuse:
        done = json.loads(marker.read_text())
        for key in BACKFILL_OPTIONS:  # what the backfill was made with, not this command line's defaults
            if key in done:
                setattr(opts, key, done[key])
    district = District(opts.villages, opts.kecamatan, opts.seed)
    print(
        f"code {code} ({opts.rev or 'working tree'}); {opts.villages} villages, {opts.hours:g} h at {opts.step:g} s",
        flush=True,
    )
    prom = Prometheus(tsdb, work)
    results = []
    phases: dict[str, float] = {}
    started = time.monotonic()
    try:
        if opts.reuse:
            done = json.loads(marker.read_text())
            start, end, samples, series = done["start"], done["end"], done["samples"], done["series"]
            phases = done.get("phases", {})
            prom.start()
        else:
            exported = work / "exports.json"
            if opts.resume_rules:  # the exports are in the TSDB: drop any rule blocks, keep theirs
                done = json.loads(exported.read_text())
                start, end, samples, series, phases = (done[k] for k in ("start", "end", "samples", "series", "phases"))
                if any(not (tsdb / b).is_dir() for b in done["blocks"]):  # Prometheus merged them with rules'
                    raise SystemExit("the exported blocks were compacted since; backfill again without --resume-rules")
                for meta in tsdb.glob("*/meta.json"):
                    if json.loads(meta.read_text()).get("ulid") not in done["blocks"]:
                        shutil.rmtree(meta.parent)
            else:
                shutil.rmtree(tsdb, ignore_errors=True)
                tsdb.mkdir()
                end = (time.time() // CHUNK_SECONDS) * CHUNK_SECONDS  # whole blocks
                start = end - opts.hours * 3600
                t0 = time.monotonic()
                parts = [
                    Part(opts.villages, opts.kecamatan, opts.seed, k, opts.jobs, work / f"part-{k}", start, end,
                         opts.step, opts.max_chunk_mb * 1_000_000, opts.prototypes)
                    for k in range(opts.jobs)
                ]  # fmt: skip
                samples, series = backfill_exports(parts, tsdb)
                phases["exports_seconds"] = round(time.monotonic() - t0)
                blocks = [m.parent.name for m in tsdb.glob("*/meta.json")]
                exported.write_text(json.dumps(
                    {"start": start, "end": end, "samples": samples, "series": series, "phases": phases}
                    | {"blocks": blocks}
                ))  # fmt: skip
            print(
                f"backfilled {samples:,} samples ({series:,} series, {series / opts.villages:.1f} a village) "
                f"in {phases['exports_seconds']} s ({opts.jobs} jobs)",
                flush=True,
            )
            t1 = time.monotonic()
            prom.start()
            if reads_rules:
                read_by = json.dumps(loaded) if opts.rules == "read" else None
                levels = rule_levels(code / "alerts" / "desanet.rules.yml", read_by)
                n_rules = sum(len(g["rules"]) for lv in levels for g in lv["groups"])
                print(f"backfilling {n_rules} recording rules in {len(levels)} levels", flush=True)
                backfill_rules(prom, levels, tsdb, work, start, end, opts.rules_interval, opts.jobs)
                phases["rules_seconds"] = round(time.monotonic() - t1)
                print(f"rules backfilled in {phases['rules_seconds']} s", flush=True)
            else:
                print("the dashboards read no recording rules: none backfilled", flush=True)
            phases["backfill_wall_seconds"] = round(time.monotonic() - started)
            marker.write_text(
                json.dumps(
                    {"start": start, "end": end, "samples": samples, "series": series, "phases": phases}
                    | {key: getattr(opts, key) for key in BACKFILL_OPTIONS}
                )
            )
        if opts.settle:
            waited, n_blocks = prom.settle()
            print(f"Prometheus idle after {waited:.0f} s ({n_blocks} blocks loaded)", flush=True)
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
                    "jobs": opts.jobs,
                    "rules": opts.rules,
                    "prototypes": opts.prototypes,
                    "rules_interval": opts.rules_interval,
                    "phases": phases,
                    "timed_at": datetime.now(ZoneInfo("UTC")).isoformat(timespec="seconds"),
                    "load1_at_end": round(os.getloadavg()[0], 2),
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
