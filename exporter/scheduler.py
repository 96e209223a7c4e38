"""Who is probed when: continuous ICMP for every village, and the heavier probes spread over their intervals.

Self-scheduled (smokeping_prober's argument: probes paced by the prober give smooth data, not by scrapes).
Every village's probes run isolated from each other: a probe that times out or raises costs that village
that result, is counted in desanet_probe_success and logged with its reason, and nothing else waits for it.

- ICMP: one engine, one socket, every village's echo spread evenly over the interval (the engine does it).
- SNMP: all villages polled every `settings.snmp.every_seconds` through one poller with per-agent limits, each
  recorded as soon as its own poll ends (a dead agent's timeouts hold back only its own village).
- STAMP: each village with a reflector every `settings.stamp.every_seconds`, first run spread at random, with as
  many bursts at once as the shard's villages need (`stamp_slots`); a burst still waiting or running is not doubled.
- Trace: each village every `settings.trace.every_seconds`, and at once when its verdict worsens, with as many
  traces at once as the shard's villages need (`trace_slots`), each in a thread of the traces' own pool; a trace
  still waiting or running is not doubled.
- Throughput: `tests_per_day` per village within its byte/time budget, never two on one kecamatan uplink,
  never during a session (budget/ledger.py enforces all three).
- Evaluation: every few seconds each village's window is summarised and its readiness re-assessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from desanet.district import Inventory, SecretError, Village, resolve_secret
from desanet.exporter.admission import Busy
from desanet.exporter.exposition import Exposition
from desanet.exporter.metrics import SHARED_KEY, SPECS, render_shared, render_village
from desanet.exporter.slots import Slots
from desanet.exporter.state import STAMP_FRESH_PERIODS, VillageState
from desanet.verdict import readiness as rd
from desanet.verdict.ports import busiest_port

log = logging.getLogger("desanet.scheduler")

EVAL_SECONDS = 5.0
EVAL_VILLAGES_PER_SECOND = 1000.0
EVAL_BATCH = 20
THROUGHPUT_CHECK_SECONDS = 10.0
REFUSED_RETRY_SECONDS = 900.0
VERDICT_RANK = {"ready": 0, "unknown": 1, "at_risk": 2, "not_ready": 3}

# How many probes of one kind run at once (issue 16): by Little's law a shard has villages x slot time / interval
# of them under way on average; the slots are that times a margin, between two bounds (`probe_slots`).
#
# STAMP bursts at once. A fixed 4 gave a shard 0.8 villages a second: 240 per 5-minute interval, so a
# 4,250-village shard saw each village every 88 minutes and judged ICMP's jitter instead of STAMP's. The slots
# now follow the shard's own work: n villages x one burst's slot time / the interval is the average number of
# bursts under way, and the slots are that times the margin, between the two bounds.
STAMP_SLOT_MARGIN = 1.25  # the +-10 % interval jitter, on-demand /probe bursts sharing the slots, and clumping
# (bursts due at once vary by about the square root of their mean) are absorbed without a lasting queue
STAMP_SLOTS_MIN = 4  # what a district always had: a few hundred villages, and /probe?module=stamp rarely waits
STAMP_SLOTS_MAX = 256  # 256 slots cover 10,240 villages a shard at the shipped 5 s every 5 min (the province's
# 8,500 fit one shard); at 50 packets/s each that is 12,800 packets/s each way, and a shard spends about 50 us of
# CPU per STAMP packet and its reply (bench/province `stamp`, docs/performance.md): 0.64 cores, which with ICMP
# and evaluation is what one Python process has. Past that, shard. Kernel TX/RX stamps keep the jitter read right
# however late a crowded loop sends (`stamp-pacing`: p99 50 ms late at 213 bursts, jitter still in microseconds).
STAMP_FIRST_DELAY = 5.0  # no burst in the first seconds: the ICMP engine and the first evaluation come first

# Traces at once. A fixed 2 fell behind the same way: through routers that rate-limit their ICMP errors, as
# Linux does by default (one time-exceeded a second to the NOC, after a burst of 6), a trace takes 1.0 s at a
# district's rate (one probe to the core router unanswered: the trace waits its 1 s timeout for it) and 3.0 s at
# a province shard's 14-28 traces a second (the core router silent: three fill-in rounds besides), measured in the
# lab (bench/trace, docs/performance.md "Trace at province scale"). 2 slots then trace 200 villages per 5-minute
# interval, so a 4,250-village shard saw each village's path every 106 minutes.
TRACE_SLOT_MARGIN = 1.25  # as STAMP's; traces to cut villages take no longer on average (3.05 s with a tenth cut)
TRACE_SLOTS_MIN = 2  # what a district always had: 217 villages keep 0.7 traces under way at 1 s each
TRACE_SLOTS_MAX = 128  # 10,240 villages a shard at the shipped 3 probes every 5 min, as STAMP's 256. A trace costs
# 6-7 ms of CPU (0.3 cores at the cap's 43 traces a second), and each one under way holds a thread (the pool is
# this size, so a slot is a running trace, never one queued for a thread) and a packet socket the kernel offers
# every packet the host receives, about 0.45 us each before the trace's filter drops it: at a 4,250-village shard
# with its 4,250 echoes a second, 42 traces under way cost 0.18 cores more (bench/trace). Past that, shard.
TRACE_FIRST_DELAY = 10.0  # no trace in the first seconds
TRACE_FRESH_PERIODS = 2.5  # a village traced within 2.5 intervals keeps its cadence (STAMP's allowance)
FIRST_WINDOW_MIN = 60.0  # seconds over which at least the first runs after start are spread


def probe_slots(
    villages: int, slot_seconds: float, every_seconds: float, margin: float, bounds: tuple[int, int]
) -> int:
    """Runs to allow at once so that `villages` each get one every `every_seconds`, with the margin."""
    lo, hi = bounds
    return max(lo, min(hi, math.ceil(villages * slot_seconds * margin / every_seconds)))


def stamp_slot_seconds(duration_seconds: float) -> float:
    """How long one burst holds its slot at most: the stream, then the wait for its last replies."""
    from desanet.probes.stamp import StampSettings

    return duration_seconds + StampSettings.timeout_seconds


def stamp_slots(villages: int, slot_seconds: float, every_seconds: float) -> int:
    """Bursts to allow at once so that `villages` each get one every `every_seconds`, with the margin."""
    return probe_slots(villages, slot_seconds, every_seconds, STAMP_SLOT_MARGIN, (STAMP_SLOTS_MIN, STAMP_SLOTS_MAX))


def trace_slot_seconds(probes_per_hop: int) -> float:
    """How long a trace holds its slot on average at a province shard's rates: the core router's ICMP budget is
    spent, so the trace waits its timeout for the stragglers, asks the silent hop again `probes_per_hop` times
    half a second apart and waits out the last: 2 x 1 s + 2 x 0.5 s = 3 s at the defaults, measured 2.98-3.05 s
    mean at 14-28 traces a second (bench/trace). Less at a district's rate (1.0 s), which the bound covers."""
    from desanet.probes.trace import FILL_IN_INTERVAL, TraceSettings

    return 2 * TraceSettings.timeout_seconds + (probes_per_hop - 1) * FILL_IN_INTERVAL


def trace_slots(villages: int, slot_seconds: float, every_seconds: float) -> int:
    """Traces to allow at once so that `villages` each get one every `every_seconds`, with the margin."""
    return probe_slots(villages, slot_seconds, every_seconds, TRACE_SLOT_MARGIN, (TRACE_SLOTS_MIN, TRACE_SLOTS_MAX))


def first_run_window(villages: int, slot_seconds: float, slots: int, every_seconds: float) -> float:
    """Seconds over which the first runs are spread: as long as the slots need for every village anyway
    (at scale about every_seconds / margin, so the steady schedule starts evenly spread instead of queued),
    at least a minute, at most one interval."""
    return min(every_seconds, max(FIRST_WINDOW_MIN, villages * slot_seconds / slots))


@dataclass(frozen=True)
class ScheduleHealth:
    """One probe's schedule at one moment: the villages it covers, how many have a result recent enough
    (STAMP: to count for the verdict; trace: to keep its cadence), and the longest any has gone without one
    (since it joined the shard, if it has had none)."""

    villages: int = 0
    fresh: int = 0
    oldest_age_seconds: float = 0.0
    interval_seconds: float = 0.0


@dataclass
class _Tally:
    """ScheduleHealth counted up over one round of the scheduler's loop."""

    interval_seconds: float
    villages: int = 0
    fresh: int = 0
    oldest_age_seconds: float = 0.0

    def add(self, fresh: bool, age_seconds: float) -> None:
        self.villages += 1
        self.fresh += fresh
        self.oldest_age_seconds = max(self.oldest_age_seconds, age_seconds)

    def health(self) -> ScheduleHealth:
        return ScheduleHealth(self.villages, self.fresh, self.oldest_age_seconds, self.interval_seconds)


def in_shard(slug: str, shard: tuple[int, int]) -> bool:
    """Deterministic K-of-N split by a hash of the slug: N probe hosts cover the district exactly once."""
    k, n = shard
    if n <= 1:
        return True
    h = int.from_bytes(hashlib.sha256(slug.encode()).digest()[:8], "big")
    return h % n == k - 1


class Monitor:
    def __init__(
        self,
        inventory: Inventory,
        *,
        shard: tuple[int, int] = (1, 1),
        enable: set[str] | None = None,
        detail: bool = False,
    ):
        self.inventory = inventory
        self.shard = shard
        self.detail = detail  # --metrics.detail: the finer families too (docs/metrics.md)
        self.enable = enable or {"icmp", "snmp", "stamp", "trace", "throughput"}
        self.villages: dict[str, VillageState] = {}
        self.exposition = Exposition(list(SPECS))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.engine: Any = None
        self.poller: Any = None
        self.started = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[Any]] = set()
        self.stamp_pool = Slots(STAMP_SLOTS_MIN)  # bursts at once, sized from the shard by apply_inventory
        self._stamp_pending: set[str] = set()  # villages whose scheduled burst waits for a slot or runs
        self.stamp_health = ScheduleHealth()
        self.trace_pool = Slots(TRACE_SLOTS_MIN)  # traces at once, sized from the shard by apply_inventory
        self._trace_pending: set[str] = set()
        self.trace_health = ScheduleHealth()
        # Traces block a thread each (probes/trace.py): their own pool, as large as their slots can grow, so that a
        # slot is a running trace and not one queued for a thread, and the loop's default pool (inventory reloads)
        # never waits behind them. Threads start on demand and number at most the traces ever under way at once.
        self._trace_threads = ThreadPoolExecutor(max_workers=TRACE_SLOTS_MAX, thread_name_prefix="desanet-trace")
        self._tp_kec_busy: set[str] = set()
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from desanet.probes.icmp import IcmpEngine
        from desanet.probes.snmp import SnmpPoller

        self.loop = asyncio.get_running_loop()
        if "icmp" in self.enable:
            self.engine = IcmpEngine()
            self.engine.open()
        if "snmp" in self.enable:
            self.poller = SnmpPoller(max_per_agent=self.inventory.settings.snmp.max_per_agent)
            await self.poller.start()
        self.apply_inventory(self.inventory)
        self._tasks = [asyncio.create_task(self._evaluate_loop(), name="evaluate")]
        if "snmp" in self.enable:
            self._tasks.append(asyncio.create_task(self._snmp_loop(), name="snmp"))
        if self.enable & {"stamp", "trace", "throughput"}:
            self._tasks.append(asyncio.create_task(self._periodic_loop(), name="periodic"))
        self.ready.set()

    async def stop(self) -> None:
        for t in [*self._tasks, *self._running]:
            t.cancel()
        for t in [*self._tasks, *self._running]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._trace_threads.shutdown(wait=False, cancel_futures=True)  # a running trace ends by its deadline
        if self.engine is not None:
            self.engine.close()
        if self.poller is not None:
            await self.poller.close()

    def apply_inventory(self, inv: Inventory) -> None:
        """Adopt a (re)loaded inventory: add new villages, drop removed ones, keep the history of the rest."""
        self.inventory = inv
        wanted = {v.slug: v for v in inv.villages if in_shard(v.slug, self.shard)}
        for slug in list(self.villages):
            if slug not in wanted:
                vs = self.villages.pop(slug)
                if vs.icmp_target is not None and self.engine is not None:
                    self.engine.remove_target(vs.icmp_target)
                self.exposition.drop(slug)
        now = time.monotonic()
        s = inv.settings.stamp
        with_stamp = sum(1 for v in wanted.values() if v.stamp is not None)
        slot_seconds = stamp_slot_seconds(s.duration_seconds)
        slots = stamp_slots(with_stamp, slot_seconds, s.every_seconds)
        if slots != self.stamp_pool.limit:
            log.info("STAMP bursts at once: %d for %d villages with a reflector", slots, with_stamp)
        self.stamp_pool.resize(slots)
        first = first_run_window(with_stamp, slot_seconds, slots, s.every_seconds)
        t = inv.settings.trace
        trace_seconds = trace_slot_seconds(t.probes_per_hop)
        traces = trace_slots(len(wanted), trace_seconds, t.every_seconds)
        if traces != self.trace_pool.limit:
            log.info("traces at once: %d for %d villages", traces, len(wanted))
        self.trace_pool.resize(traces)
        trace_first = first_run_window(len(wanted), trace_seconds, traces, t.every_seconds)
        for slug, village in wanted.items():
            old = self.villages.get(slug)
            if old is None or old.village.address != village.address:
                if old is not None and old.icmp_target is not None and self.engine is not None:
                    self.engine.remove_target(old.icmp_target)
                vs = VillageState.create(village)
                self.villages[slug] = vs
                vs.next_due = {
                    "stamp": now + STAMP_FIRST_DELAY + random.uniform(0, first),
                    "trace": now + TRACE_FIRST_DELAY + random.uniform(0, trace_first),
                    "throughput": now + random.uniform(30, 30 + self._throughput_period(inv)),
                }
                if self.engine is not None:
                    vs.icmp_target = self._add_icmp(vs, village)
            else:
                vs = old
                vs.village = village
            vs.profiles = self._profiles_for(inv, village)
            vs.stamp_max_age = STAMP_FRESH_PERIODS * inv.settings.stamp.every_seconds
        # Per-profile and per-session constants, once for the whole exporter instead of once per village.
        self.exposition.put(SHARED_KEY, render_shared(inv))

    def _add_icmp(self, vs: VillageState, village: Village) -> Any:
        from desanet.probes.icmp import IcmpSettings

        s = self.inventory.settings.icmp
        settings = IcmpSettings(
            timeout=min(s.timeout_seconds, max(0.001, s.window_seconds)), payload_bytes=s.payload_bytes
        )
        capacity = max(10, int(s.window_seconds / s.interval_seconds * 1.5) + 10)

        def on_sample(_t: Any, _sent: float, rtt: float | None) -> None:
            vs.observe_rtt("icmp", rtt)

        return self.engine.add_target(
            village.address,
            s.interval_seconds,
            settings=settings,
            capacity=capacity,
            on_sample=on_sample,
            label=village.slug,
        )

    @staticmethod
    def _profiles_for(inv: Inventory, village: Village) -> list[Any]:
        names = [village.profile or inv.defaults.profile]
        names += [s.profile for s in inv.sessions_for(village) if s.profile]
        seen: list[Any] = []
        for n in names:
            with contextlib.suppress(KeyError):
                p = inv.profile(n)
                if p not in seen:
                    seen.append(p)
        return seen

    @staticmethod
    def _throughput_period(inv: Inventory) -> float:
        per_day = inv.settings.throughput.tests_per_day
        return 86400.0 / per_day if per_day else float("inf")

    # ------------------------------------------------------------------------------------------ evaluation
    def eval_period(self) -> float:
        """Seconds per evaluation round: 5 s for a district, stretched at province scale so that judging and
        rendering every village costs a bounded share of a core (about 0.3 ms a village)."""
        return max(EVAL_SECONDS, len(self.villages) / EVAL_VILLAGES_PER_SECOND)

    async def _evaluate_loop(self) -> None:
        """Evaluate and render every village once a period, in small batches spread over it, so the loop never
        stalls long enough to delay an echo (a batch costs a few milliseconds) and a scrape only joins text."""
        while True:
            t0 = time.monotonic()
            period = self.eval_period()
            slugs = list(self.villages)
            batches = max(1, -(-len(slugs) // EVAL_BATCH))
            for b in range(batches):
                self.evaluate_all(slugs[b * EVAL_BATCH : (b + 1) * EVAL_BATCH])
                await asyncio.sleep(max(0.0, t0 + period * (b + 1) / batches - time.monotonic()))

    def evaluate_all(self, slugs: list[str] | None = None) -> None:
        now = datetime.now(ZoneInfo(self.inventory.timezone))
        wall = time.time()
        for slug in slugs if slugs is not None else list(self.villages):
            vs = self.villages.get(slug)
            if vs is None:
                continue
            try:
                self.evaluate(vs, now)
                self.exposition.put(slug, render_village(vs, wall, detail=self.detail))
            except Exception:  # one village's bad data must not stop the others' verdicts
                log.exception("evaluating %s failed", vs.slug)

    def evaluate(self, vs: VillageState, now: datetime) -> None:
        inv = self.inventory
        if vs.icmp_target is not None:
            vs.icmp_window = vs.icmp_target.window(inv.settings.icmp.window_seconds)
        vs.next_session = inv.next_session(vs.village, now)
        m = self.measurements(vs)
        before = {p: r.verdict for p, r in vs.readiness.items()}
        vs.readiness = {p.name: rd.assess(m, p) for p in vs.profiles}
        worse = any(
            VERDICT_RANK[r.verdict] > VERDICT_RANK.get(before.get(p, "ready"), 0)
            and r.verdict in ("at_risk", "not_ready")
            for p, r in vs.readiness.items()
        )
        if worse and "trace" in self.enable and (vs.trace_at is None or time.time() - vs.trace_at > 60):
            vs.next_due["trace"] = time.monotonic()  # find the hop now, while it is degraded

    def measurements(self, vs: VillageState) -> rd.Measurements:
        w = vs.icmp_window
        rtt_p95 = loss = burst = None
        if w is not None and w.sent > 0:
            loss = w.loss_ratio
            burst = w.burst_loss_ratio
            if w.rtt is not None:
                rtt_p95 = w.rtt.p95
        now = time.time()
        # STAMP's worse one-way direction while fresh, else ICMP's round trip (VillageState.judged_jitter).
        judged = vs.judged_jitter(now)
        jitter = max(j for _, _, j in judged) if judged else None
        tp = vs.counted_throughput(now)
        down = tp["down"].bits_per_second if "down" in tp else None
        up = tp["up"].bits_per_second if "up" in tp else None
        return rd.Measurements(
            rtt_p95_seconds=rtt_p95,
            jitter_seconds=jitter,
            loss_ratio=loss,
            burst_loss_ratio=burst,
            down_bits_per_second=down,
            up_bits_per_second=up,
            interface_headroom_bits_per_second=self._headroom(vs),
        )

    @staticmethod
    def _headroom(vs: VillageState) -> float | None:
        """Spare capacity on the router's busiest port between the last two SNMP polls (verdict/ports.py)."""
        if vs.snmp is None or vs.snmp_prev is None or vs.snmp_at is None or vs.snmp_prev_at is None:
            return None
        port = busiest_port(vs.snmp_prev, vs.snmp, vs.snmp_at - vs.snmp_prev_at)
        return port.headroom_bits_per_second if port is not None else None

    # ------------------------------------------------------------------------------------------ rendering
    def render(self) -> str:
        """Join the villages' pre-rendered text (called from the HTTP thread; villages are rendered on the loop
        as they are evaluated, so a scrape at 10,000 villages costs a join, not 10,000 renders)."""
        return self.exposition.render()

    # ------------------------------------------------------------------------------------------ SNMP
    def snmp_settings(self, village: Village) -> Any:
        from desanet.probes.snmp import settings_from_config

        cfg = self.inventory.snmp_for(village)
        if cfg is None:
            return None
        s = self.inventory.settings.snmp
        return settings_from_config(cfg, resolve_secret, timeout_seconds=s.timeout_seconds, retries=s.retries)

    async def _snmp_loop(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await self.poll_snmp()
            except Exception:  # a bug in one round must not end SNMP polling for the whole shard
                log.exception("SNMP round failed")
            await asyncio.sleep(max(1.0, self.inventory.settings.snmp.every_seconds - (time.monotonic() - t0)))

    async def poll_snmp(self) -> None:
        items: list[tuple[VillageState, Any]] = []
        for vs in list(self.villages.values()):
            try:
                settings = self.snmp_settings(vs.village)
            except (SecretError, ValueError) as exc:
                vs.status("snmp").record(False, 0.0, str(exc))
                vs.log("snmp", False, str(exc))
                log.warning("probe failed", extra={"village": vs.slug, "probe": "snmp", "reason": str(exc)})
                continue
            if settings is not None:
                items.append((vs, settings))
        if not items:
            return
        # Each village's result is recorded as soon as its poll ends: with thousands of agents in one round, a
        # few slow or dead ones (timeouts and retries) must not hold back everyone else's figures until the
        # last answer is in.
        await asyncio.gather(*(self._poll_one(vs, s) for vs, s in items))

    async def _poll_one(self, vs: VillageState, settings: Any) -> None:
        """Poll one village and record the result at once (`poll` answers failures in words, not exceptions)."""
        r = await self.poller.poll(vs.village.address, settings)
        vs.status("snmp").record(bool(r.success), r.duration_seconds, r.error)
        if r.success:
            vs.snmp_prev, vs.snmp_prev_at = vs.snmp, vs.snmp_at
            vs.snmp, vs.snmp_at = r, time.time()
            # An agent whose view leaves out sysUpTime answers without it (net-snmp with an OID-limited
            # community does): formatting None would raise here and end the round.
            up = "unknown" if r.uptime_seconds is None else f"{r.uptime_seconds:.0f} s"
            vs.log("snmp", True, f"{len(r.interfaces)} interfaces, uptime {up}")
        else:
            vs.log("snmp", False, r.error or "failed")
            log.warning("probe failed", extra={"village": vs.slug, "probe": "snmp", "reason": r.error or "failed"})

    # ------------------------------------------------------------------------------------------ periodic
    async def _periodic_loop(self) -> None:
        while True:
            now = time.monotonic()
            wall = time.time()
            inv = self.inventory
            s, t = inv.settings.stamp, inv.settings.trace
            stamp = _Tally(s.every_seconds)
            trace = _Tally(t.every_seconds)
            for vs in list(self.villages.values()):
                due = vs.next_due
                if "stamp" in self.enable and vs.village.stamp is not None:
                    self._start_if_due(vs, "stamp", now, s.every_seconds, self._run_stamp)
                    stamp.add(vs.stamp_fresh(wall), wall - (vs.stamp_at or vs.added_at))
                if "trace" in self.enable:
                    self._start_if_due(vs, "trace", now, t.every_seconds, self._run_trace)
                    age = wall - (vs.trace_at or vs.added_at)
                    trace.add(vs.trace_at is not None and age < TRACE_FRESH_PERIODS * t.every_seconds, age)
                if (
                    "throughput" in self.enable
                    and vs.village.iperf3 is not None
                    and due.get("throughput", 0) <= now
                    and vs.village.kecamatan not in self._tp_kec_busy
                ):
                    due["throughput"] = now + self._throughput_period(inv)
                    self._tp_kec_busy.add(vs.village.kecamatan)
                    self._spawn(functools.partial(self._throughput_then_release, vs), None)
            # whether each schedule keeps up, for the exporter's own metrics
            if "stamp" in self.enable:
                self.stamp_health = stamp.health()
            if "trace" in self.enable:
                self.trace_health = trace.health()
            await asyncio.sleep(1.0)

    def _start_if_due(
        self, vs: VillageState, probe: str, now: float, every: float, run: Callable[[VillageState], Awaitable[str]]
    ) -> None:
        """Start a STAMP burst or a trace that is due, in its slots. One per village at a time: a run still
        waiting for a slot is not queued twice (a shard that falls behind would otherwise pile up a task per
        village per interval)."""
        if vs.next_due.get(probe, 0) > now:
            return
        vs.next_due[probe] = now + every * random.uniform(0.9, 1.1)
        pending, pool = (
            (self._stamp_pending, self.stamp_pool) if probe == "stamp" else (self._trace_pending, self.trace_pool)
        )
        if vs.slug not in pending:
            pending.add(vs.slug)
            self._spawn(functools.partial(self._scheduled, vs, probe, run, pending), pool)

    async def _scheduled(
        self, vs: VillageState, probe: str, run: Callable[[VillageState], Awaitable[str]], pending: set[str]
    ) -> None:
        try:
            await self._guarded(vs, probe, run)
        finally:
            pending.discard(vs.slug)

    def _spawn(self, make: Callable[[], Awaitable[None]], sem: Slots | None) -> None:
        """Run a probe as its own task; the coroutine is made only when it may start, so cancelling a queued
        task leaves nothing un-awaited."""

        async def run() -> None:
            if sem is None:
                await make()
                return
            async with sem:
                await make()

        task = asyncio.create_task(run())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _guarded(self, vs: VillageState, probe: str, fn: Callable[[VillageState], Awaitable[str]]) -> None:
        """Run one probe for one village; whatever happens stays with that village."""
        t0 = time.monotonic()
        try:
            message = await fn(vs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            dt = time.monotonic() - t0
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            vs.status(probe).record(False, dt, reason)
            vs.log(probe, False, reason)
            log.warning("probe failed", extra={"village": vs.slug, "probe": probe, "reason": reason})
        else:
            dt = time.monotonic() - t0
            vs.status(probe).record(True, dt)
            vs.log(probe, True, message)

    async def _run_stamp(self, vs: VillageState) -> str:
        from desanet.probes.stamp import StampSettings, probe

        endpoint = vs.village.stamp_address()
        assert endpoint is not None
        addr, port = endpoint
        s = self.inventory.settings.stamp
        prof = vs.profiles[0] if vs.profiles else None
        settings = StampSettings(
            port=port,
            rate_pps=s.rate_pps,
            duration_seconds=s.duration_seconds,
            packet_bytes=prof.video_packet_bytes if prof else 1200,
            dscp=prof.dscp if prof else 34,
        )
        r = await probe(addr, settings)
        vs.stamp, vs.stamp_at = r, time.time()
        for rtt in getattr(r, "rtts", ()):
            vs.observe_rtt("stamp", rtt)
        lost = r.sent - r.received
        for _ in range(max(0, lost)):
            vs.observe_rtt("stamp", None)
        if r.received == 0:
            raise RuntimeError(f"no STAMP reply from {addr}:{port} ({r.sent} sent)")
        return f"{r.received}/{r.sent} replies, RTT p50 {r.rtt.p50 * 1e3:.2f} ms" if r.rtt else "ok"

    async def _run_trace(self, vs: VillageState) -> str:
        from desanet.probes.trace import TraceSettings, probe

        s = self.inventory.settings.trace
        settings = TraceSettings(max_hops=s.max_hops, probes_per_hop=s.probes_per_hop)
        r = await probe(vs.village.address, settings, executor=self._trace_threads)
        vs.trace, vs.trace_at = r, time.time()
        deg = f", degraded at hop {r.degraded_hop}" if r.degraded_hop is not None else ""
        return f"{len(r.hops)} hops, {'reached' if r.reached else 'NOT reached'}{deg}"

    async def _throughput_then_release(self, vs: VillageState) -> None:
        try:
            await self._guarded(vs, "throughput", self._run_throughput)
        finally:
            self._tp_kec_busy.discard(vs.village.kecamatan)

    async def _run_throughput(self, vs: VillageState) -> str:
        from desanet.budget import Refused, acquire_test_slot
        from desanet.probes.throughput import ThroughputSettings

        endpoint = vs.village.iperf3_address()
        assert endpoint is not None
        addr, port = endpoint
        now = datetime.now(ZoneInfo(self.inventory.timezone))
        try:
            with acquire_test_slot(self.inventory, vs.village, now) as slot:
                max_seconds, max_bytes = slot.caps(2)
                settings = ThroughputSettings(port=port, direction="both", max_seconds=max_seconds, max_bytes=max_bytes)
                try:
                    r = await slot.measure(addr, settings)
                finally:
                    vs.throughput_bytes += slot.charged_bytes  # failed and cancelled tests cost bytes too
        except Refused as exc:
            vs.next_due["throughput"] = time.monotonic() + REFUSED_RETRY_SECONDS
            return f"not run: {exc}"
        ts = time.time()
        for direction, d in (("down", r.down), ("up", r.up)):
            if d is not None:
                vs.throughput[direction] = (d, ts)
        parts = [f"{k} {d.bits_per_second / 1e6:.2f} Mbit/s" for k, d in (("down", r.down), ("up", r.up)) if d]
        return ", ".join(parts)

    # ------------------------------------------------------------------------------------------ on demand
    async def probe_on_demand(self, slug: str, module: str, wait_seconds: float) -> Any:
        """probe_now within the schedule's concurrency limits: a STAMP or trace waits at most `wait_seconds`
        for one of the slots the scheduled probes share, then raises Busy instead of adding to the load."""
        sem = {"stamp": self.stamp_pool, "trace": self.trace_pool}.get(module)
        if sem is None:
            return await self.probe_now(slug, module)
        try:
            async with asyncio.timeout(max(0.0, wait_seconds)):
                await sem.acquire()
        except TimeoutError:
            raise Busy(f"every {module} slot is in use (the schedule's limit) for {wait_seconds:.1f} s") from None
        try:
            return await self.probe_now(slug, module)
        finally:
            sem.release()

    async def probe_now(self, slug: str, module: str, origin: str = "on-demand") -> Any:
        """One probe of one village, for /probe: same probes, same settings as the schedule. A throughput test
        is on-demand (its own allowance and rate limit); its refusal raises desanet.budget.Refused."""
        vs = self.villages.get(slug)
        village = vs.village if vs else self.inventory.village(slug)
        if module == "icmp":
            from desanet.probes.icmp import IcmpSettings
            from desanet.probes.icmp import probe as icmp_probe

            return await icmp_probe(village.address, IcmpSettings(count=10, interval=0.1), engine=self.engine)
        if module == "snmp":
            from desanet.probes.snmp import probe as snmp_probe

            return await snmp_probe(village.address, self.snmp_settings(village), poller=self.poller)
        if module == "stamp":
            from desanet.probes.stamp import StampSettings
            from desanet.probes.stamp import probe as stamp_probe

            ep = village.stamp_address()
            if ep is None:
                raise ValueError(f"{slug} has no STAMP reflector in the inventory")
            return await stamp_probe(ep[0], StampSettings(port=ep[1], duration_seconds=2.0))
        if module == "trace":
            from desanet.probes.trace import TraceSettings
            from desanet.probes.trace import probe as trace_probe

            return await trace_probe(village.address, TraceSettings(), executor=self._trace_threads)
        if module == "throughput":
            return await self._throughput_now(village, vs, origin)
        raise ValueError(f"unknown module {module!r}")

    async def _throughput_now(self, village: Village, vs: VillageState | None, origin: str) -> Any:
        """An on-demand throughput test: off unless the inventory enables it; its own allowance, its own caps."""
        from desanet.budget import acquire_test_slot
        from desanet.probes.throughput import ThroughputSettings

        ep = village.iperf3_address()
        if ep is None and self.inventory.settings.throughput.on_demand.enabled:
            raise ValueError(f"{village.slug} has no iperf3 server in the inventory")
        now = datetime.now(ZoneInfo(self.inventory.timezone))
        with acquire_test_slot(self.inventory, village, now, on_demand=True, origin=origin) as slot:
            assert ep is not None  # refused above when on-demand tests are off
            max_seconds, max_bytes = slot.caps(2)
            settings = ThroughputSettings(port=ep[1], max_seconds=max_seconds, max_bytes=max_bytes)
            try:
                return await slot.measure(ep[0], settings)
            finally:
                if vs is not None:
                    vs.throughput_bytes += slot.charged_bytes
