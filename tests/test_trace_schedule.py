"""Traces at province scale (issue 16): the scheduler runs as many traces at once as the shard's villages need.

With a fixed 2 traces at once, and a trace taking 3 s at a province shard's rates (through routers that
rate-limit their ICMP errors, as Linux does: bench/trace), a shard traced 200 villages per 5-minute interval, so
a 4,250-village shard saw each village's path every 106 minutes. Here the real scheduler loop runs on the virtual
clock of tests/schedule_clock.py, each trace holding its slot for the measured average
(`trace_slot_seconds`); no packet is sent. Then: traces run in the exporter's own thread pool, so as many run at
once as there are slots; and the schedule's health is exported shard-wide.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from desanet.district import Inventory, load_inventory
from desanet.exporter import scheduler
from desanet.exporter.scheduler import Monitor, trace_slot_seconds, trace_slots
from desanet.probes import trace as trace_probe
from tests.schedule_clock import Clock, Run, exported_after_one_round, install_clock, province, simulate

ROOT = Path(__file__).resolve().parent.parent
SIZES = (217, 4250, 8500)


@pytest.fixture(scope="module")
def shipped() -> Inventory:
    return load_inventory(ROOT / "inventory.yaml")


# ------------------------------------------------------------------------------------------------ the sizing
def test_a_trace_holds_its_slot_for_what_the_lab_measured() -> None:
    # bench/trace: 2.98-3.05 s mean at 14-28 traces a second through Linux routers with their default ICMP limit
    assert trace_slot_seconds(3) == 3.0
    assert trace_slot_seconds(1) == 2.0  # one fill-in round: a timeout, half a second, the rest of the timeout


@pytest.mark.parametrize("n", SIZES)
def test_slots_give_every_village_its_trace_within_its_interval(shipped: Inventory, n: int) -> None:
    t = shipped.settings.trace
    slot = trace_slot_seconds(t.probes_per_hop)
    slots = trace_slots(n, slot, t.every_seconds)
    assert slots * t.every_seconds / slot >= n * scheduler.TRACE_SLOT_MARGIN
    assert scheduler.TRACE_SLOTS_MIN <= slots <= scheduler.TRACE_SLOTS_MAX
    if n > 217:  # the old fixed 2 traced 2 x 300 / 3 = 200 villages a 5-minute interval at these rates
        assert 2 * t.every_seconds / slot < n


def test_slots_are_bounded() -> None:
    assert trace_slots(0, 3.0, 300.0) == scheduler.TRACE_SLOTS_MIN == 2
    assert trace_slots(217, 3.0, 300.0) == 3
    assert trace_slots(4250, 3.0, 300.0) == 54
    assert trace_slots(8500, 3.0, 300.0) == 107
    assert trace_slots(1_000_000, 3.0, 300.0) == scheduler.TRACE_SLOTS_MAX == 128


def test_a_reload_resizes_the_slots(shipped: Inventory) -> None:
    monitor = Monitor(shipped)
    monitor.apply_inventory(province(shipped, 4250))
    assert monitor.trace_pool.limit == 54
    monitor.apply_inventory(province(shipped, 217))
    assert monitor.trace_pool.limit == 3


# ------------------------------------------------------------------------------------------------ virtual time
@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return install_clock(monkeypatch)


def _simulate(inv: Inventory, clock: Clock, horizon: float) -> Run:
    """Each trace holds its slot for what a trace takes on average at a province shard's rates."""
    return simulate(inv, clock, horizon, "trace", trace_slot_seconds(inv.settings.trace.probes_per_hop))


@pytest.mark.parametrize("n", [217, 4250, pytest.param(8500, marks=pytest.mark.slow)])
def test_the_scheduler_keeps_every_village_traced_on_cadence(shipped: Inventory, clock: Clock, n: int) -> None:
    """Over three intervals from start: every village's first trace within the first interval, then one per
    interval (its +-10 % jitter and a few seconds' wait for a slot at most), and at the end every village
    traced within 2.5 intervals."""
    inv = province(shipped, n)
    every = inv.settings.trace.every_seconds
    run = _simulate(inv, clock, 3 * every)
    monitor, starts, waits = run.monitor, run.starts, run.waits
    assert len(starts) == n, f"{n - len(starts)} of {n} villages were never traced"
    first = [s[0] - (clock.mono - 3 * every) for s in starts.values()]
    assert max(first) <= every, f"a first trace came {max(first):.0f} s after start"
    gaps = [b - a for s in starts.values() for a, b in itertools.pairwise(s)]
    assert max(gaps) <= 1.1 * every + 30, f"a village waited {max(gaps):.0f} s between traces (interval {every})"
    assert min(len(s) for s in starts.values()) >= 2
    health = monitor.trace_health
    assert health.villages == health.fresh == n
    assert health.oldest_age_seconds < scheduler.TRACE_FRESH_PERIODS * every
    assert max(waits) <= 30
    assert run.waiting == 0


def test_the_old_fixed_two_could_not(shipped: Inventory, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run with the slots pinned to the old 2: most villages of a 4,250-village shard are never traced,
    the schedule says so, and a village's trace is never queued twice."""
    monkeypatch.setattr(scheduler, "trace_slots", lambda *_: 2)
    inv = province(shipped, 4250)
    every = inv.settings.trace.every_seconds
    run = _simulate(inv, clock, 3 * every)
    monitor, starts = run.monitor, run.starts
    health = monitor.trace_health
    assert len(starts) < 0.2 * 4250  # 2 slots x 900 s / 3 s = 600 traces in three intervals
    assert health.fresh < 0.2 * health.villages
    assert health.oldest_age_seconds >= 3 * every
    assert run.in_flight == 2 and run.waiting > 0.8 * 4250  # what the alert sees: traces wait
    assert run.tasks_peak <= 4250  # one per village waits, not one per village per interval


# ------------------------------------------------------------------------------------------------ the threads
def test_traces_run_in_their_own_pool_as_many_at_once_as_there_are_slots(
    shipped: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trace blocks a thread for its whole run. The loop's default pool has min(32, cores + 4) threads (6 on a
    2-core probe host), so slots beyond that would be traces queued for a thread, and an inventory reload (which
    runs in that pool) would wait behind them. The exporter's own pool runs every slot at once and leaves the
    default pool free."""
    slots = 40  # more than the default pool ever has (32)
    hold = 0.5
    running = 0
    peak = 0
    names: set[str] = set()
    lock = threading.Lock()
    slug = shipped.villages[0].slug

    def blocking_trace(target: str, settings: Any) -> str:  # trace_blocking's place: a thread held for `hold`
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            names.add(threading.current_thread().name)
        time.sleep(hold)
        with lock:
            running -= 1
        return target

    monkeypatch.setattr(trace_probe, "trace_blocking", blocking_trace)

    async def main() -> float:
        monitor = Monitor(shipped, enable={"trace"})
        monitor.apply_inventory(shipped)
        monitor.trace_pool.resize(slots)
        traces = [asyncio.create_task(monitor.probe_on_demand(slug, "trace", 5.0)) for _ in range(slots)]
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)  # what a reload waits for
        reload_wait = time.monotonic() - t0
        assert await asyncio.gather(*traces) == [shipped.villages[0].address] * slots
        await monitor.stop()
        return reload_wait

    t0 = time.monotonic()
    reload_wait = asyncio.run(main())
    assert peak == slots > min(32, (os.cpu_count() or 1) + 4)
    assert time.monotonic() - t0 < 3 * hold  # together, not in rounds of the default pool's size
    assert all(name.startswith("desanet-trace") for name in names)
    assert reload_wait < hold


# ------------------------------------------------------------------------------------------------ the metrics
@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (scripts/setup.sh)")
def test_the_schedule_is_exported_shard_wide_and_passes_promtool(shipped: Inventory) -> None:
    monitor = Monitor(shipped, enable={"trace"})
    monitor.apply_inventory(shipped)
    now = time.time()
    for i, vs in enumerate(monitor.villages.values()):
        if i % 3:
            vs.trace, vs.trace_at = object(), now - 120
        elif i % 2:
            vs.trace, vs.trace_at = object(), now - 3 * 300  # traced, but not within 2.5 intervals
    text = exported_after_one_round(monitor)  # no trace is due in the loop's first seconds
    assert not monitor._running
    mine = [line for line in text.splitlines() if line.startswith("desanet_trace_")]
    values = {line.split()[0]: float(line.split()[1]) for line in mine}
    n = len(shipped.villages)
    assert values["desanet_trace_villages"] == n
    assert values["desanet_trace_fresh_villages"] == sum(1 for i in range(n) if i % 3)
    assert values["desanet_trace_slots"] == trace_slots(n, 3.0, 300.0)
    assert values["desanet_trace_in_flight"] == values["desanet_trace_waiting"] == 0
    assert values["desanet_trace_interval_seconds"] == 300
    assert values["desanet_trace_oldest_result_age_seconds"] == pytest.approx(900, abs=1)
    assert len(values) == 7 and all("{" not in line for line in mine)  # one series each, no village label
    assert not any(line.startswith("desanet_stamp_") for line in text.splitlines())  # STAMP is off here
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
