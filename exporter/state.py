"""What the exporter knows about each village: the latest result of every probe, the running histograms, and
a short log. The scheduler writes it; the metrics renderer, the status page and /probe read it."""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from desanet.district import Profile, Session, Village
from desanet.exporter.exposition import labels

# SmokePing-like resolution where video cares (1–400 ms; 0.2 and 0.4 are the shipped profiles' RTT lines),
# coarse beyond: anything under 1 ms is one bucket,
# and nothing above 1 s (a 1 s round trip is no call; the default timeout is 2 s, so a 2 s bound would only
# repeat +Inf). 14 bounds: 17 series a village with _sum and _count.
RTT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    1.0,
)
LOG_KEEP_OK = 20
LOG_KEEP_FAILED = 50  # failures outlive successes, as in blackbox_exporter's history
STAMP_FRESH_PERIODS = 2.5  # a STAMP result counts for 2.5 of its intervals: one late or failed run is forgiven
THROUGHPUT_MAX_AGE_SECONDS = 86400.0  # a throughput test counts for a day (a few run per day)
LOG_KEEP_ON_DEMAND = 20  # /probe results apart, so a burst of requests cannot push scheduled failures out


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(RTT_BUCKETS, value)] += 1
        self.total += value


@dataclass
class ProbeStatus:
    success: bool | None = None
    duration: float | None = None
    last_run: float | None = None
    runs: int = 0
    failures: int = 0
    error: str | None = None

    def record(self, ok: bool, duration: float, error: str | None = None) -> None:
        self.success = ok
        self.duration = duration
        self.last_run = time.time()
        self.runs += 1
        if not ok:
            self.failures += 1
        self.error = error


@dataclass(frozen=True)
class LogEntry:
    when: float
    probe: str
    ok: bool
    message: str


@dataclass
class VillageState:
    village: Village
    base_labels: str
    hist: dict[str, Histogram] = field(default_factory=dict)  # by method
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    icmp_target: Any = None  # probes.icmp.ContinuousTarget
    icmp_window: Any = None  # probes.icmp.IcmpResult
    stamp: Any = None  # probes.stamp.StampResult
    stamp_at: float | None = None
    throughput: dict[str, tuple[Any, float]] = field(default_factory=dict)  # direction -> (DirectionResult, ts)
    throughput_bytes: int = 0
    snmp: Any = None  # probes.snmp.SnmpResult
    snmp_prev: Any = None
    snmp_at: float | None = None
    snmp_prev_at: float | None = None
    trace: Any = None  # probes.trace.TraceResult
    trace_at: float | None = None
    readiness: dict[str, Any] = field(default_factory=dict)  # profile name -> desanet.verdict.readiness.Readiness
    probes: dict[str, ProbeStatus] = field(default_factory=dict)
    ok_log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_KEEP_OK))
    failed_log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_KEEP_FAILED))
    on_demand_log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_KEEP_ON_DEMAND))
    next_session: tuple[Session, datetime] | None = None
    profiles: list[Profile] = field(default_factory=list)
    next_due: dict[str, float] = field(default_factory=dict)  # probe -> monotonic due time
    stamp_max_age: float = 750.0  # seconds a STAMP result counts; the Monitor sets it from the inventory
    added_at: float = field(default_factory=time.time)  # when it joined the shard (how long it has waited for STAMP)

    @classmethod
    def create(cls, village: Village) -> VillageState:
        return cls(village=village, base_labels=labels({"village": village.slug, "kecamatan": village.kecamatan}))

    @property
    def slug(self) -> str:
        return self.village.slug

    def status(self, probe: str) -> ProbeStatus:
        return self.probes.setdefault(probe, ProbeStatus())

    def log(self, probe: str, ok: bool, message: str, *, on_demand: bool = False) -> None:
        entry = LogEntry(time.time(), probe, ok, message)
        if on_demand:
            self.on_demand_log.append(entry)
        else:
            (self.ok_log if ok else self.failed_log).append(entry)

    def recent_logs(self) -> list[LogEntry]:
        return sorted([*self.ok_log, *self.failed_log, *self.on_demand_log], key=lambda e: e.when, reverse=True)

    def stamp_fresh(self, now: float) -> bool:
        """Whether the last STAMP result still counts (for the verdict, and so for what is exported)."""
        return self.stamp is not None and self.stamp_at is not None and now - self.stamp_at < self.stamp_max_age

    def judged_jitter(self, now: float) -> list[tuple[str, str, float]]:
        """The jitter figures readiness judges, as (method, direction, seconds): STAMP's one-way jitter per
        direction while its result is fresh (what a video receiver lives with; the verdict takes the worse),
        else ICMP's round-trip jitter. One place, so the verdict and the exported series cannot disagree."""
        if self.stamp_fresh(now):
            s = self.stamp
            one_way = [
                ("stamp", direction, d.jitter_seconds)
                for direction, d in (("down", s.forward), ("up", s.backward))
                if d.jitter_seconds is not None
            ]
            if one_way:
                return one_way
        w = self.icmp_window
        if w is not None and w.sent > 0 and w.jitter_seconds is not None:
            return [("icmp", "round_trip", w.jitter_seconds)]
        return []

    def counted_throughput(self, now: float) -> dict[str, Any]:
        """direction -> the last test's DirectionResult, for tests recent enough to count (a day)."""
        return {k: d for k, (d, ts) in self.throughput.items() if now - ts < THROUGHPUT_MAX_AGE_SECONDS}

    def observe_rtt(self, method: str, rtt: float | None) -> None:
        self.sent[method] = self.sent.get(method, 0) + 1
        if rtt is not None:
            self.received[method] = self.received.get(method, 0) + 1
            self.hist.setdefault(method, Histogram()).observe(rtt)
