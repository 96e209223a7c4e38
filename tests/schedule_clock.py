"""The scheduler's real loop (`Monitor._periodic_loop`, its slots and its first-run spreading) on an event loop
whose clock is virtual, shared by tests/test_stamp_schedule.py and tests/test_trace_schedule.py: minutes of a
province shard's schedule take seconds, and no packet is sent. Each run of the probe under test only holds its
slot for as long as the caller says a real one does, then leaves a result behind.
"""

from __future__ import annotations

import asyncio
import random
import selectors
import time
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from desanet.district import Inventory
from desanet.exporter import scheduler
from desanet.exporter.scheduler import Monitor
from desanet.exporter.server import ReloadState, SelfCollector
from desanet.exporter.state import VillageState

Probe = Literal["stamp", "trace"]


def province(inv: Inventory, n: int) -> Inventory:
    """The shipped inventory (its settings, profiles, sessions) with `n` villages made from its own."""
    base = [v for v in inv.villages if v.stamp is not None]
    villages = []
    for i in range(n):
        v = base[i % len(base)]
        address = f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"
        villages.append(v.model_copy(update={"slug": f"v{i:05d}", "router": address}))
    return inv.model_copy(update={"villages": villages})


# ------------------------------------------------------------------------------------------------ virtual time
class Clock:
    def __init__(self) -> None:
        self.mono = 1_000.0
        self.wall0 = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall0 + self.mono


class VirtualSelector(selectors.SelectSelector):
    """Waiting advances the clock instead of sleeping: nothing here waits on a file descriptor."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("the loop would wait forever")
        self.clock.mono += max(0.0, timeout)
        return []


def install_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A virtual clock behind `time.monotonic` and `time.time`, and the scheduler's jitter seeded, so a run is
    the same every time."""
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c.monotonic)
    monkeypatch.setattr(time, "time", c.time)
    monkeypatch.setattr(scheduler, "random", random.Random(16))
    return c


@dataclass
class Run:
    """What a simulated schedule did: each run's start time per village, how long each run waited for a slot,
    the most tasks ever alive at once, and the slots' state at the end."""

    monitor: Monitor
    starts: dict[str, list[float]]
    waits: list[float]
    tasks_peak: int
    waiting: int
    in_flight: int


def simulate(inv: Inventory, clock: Clock, horizon: float, probe: Probe, hold: float) -> Run:
    """Run the scheduler's loop for `horizon` virtual seconds with `probe` only, each run holding its slot for
    `hold` seconds."""
    monitor = Monitor(inv, enable={probe})
    pool = monitor.stamp_pool if probe == "stamp" else monitor.trace_pool
    starts: dict[str, list[float]] = {}
    spawned: dict[str, float] = {}
    waits: list[float] = []
    tasks_peak = 0
    spawn = monitor._spawn

    def spawn_and_note(make: Any, sem: Any) -> None:
        spawned[make.args[0].slug] = clock.mono
        spawn(make, sem)

    async def run_probe(vs: VillageState) -> str:
        starts.setdefault(vs.slug, []).append(clock.mono)
        waits.append(clock.mono - spawned[vs.slug])
        await asyncio.sleep(hold)
        setattr(vs, probe, object())
        setattr(vs, f"{probe}_at", time.time())
        return "ok"

    async def main() -> Run:
        nonlocal tasks_peak
        monitor.apply_inventory(inv)
        setattr(monitor, f"_run_{probe}", run_probe)
        monitor._spawn = spawn_and_note  # type: ignore[method-assign]
        loop_task = asyncio.create_task(monitor._periodic_loop())
        end = clock.mono + horizon
        while clock.mono < end:
            await asyncio.sleep(1.0)
            tasks_peak = max(tasks_peak, len(monitor._running))
        run = Run(monitor, starts, waits, tasks_peak, pool.waiting, pool.in_use)
        for t in [loop_task, *monitor._running]:
            t.cancel()
        await asyncio.gather(loop_task, *monitor._running, return_exceptions=True)
        return run

    loop = asyncio.SelectorEventLoop(VirtualSelector(clock))
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


# ------------------------------------------------------------------------------------------------ the metrics
def exported_after_one_round(monitor: Monitor) -> str:
    """The shard-wide exposition once the scheduler's loop has taken stock (once a second; in real time, so
    before any run is due)."""

    async def one_round() -> None:
        task = asyncio.create_task(monitor._periodic_loop())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(one_round())
    registry = CollectorRegistry()
    registry.register(SelfCollector(monitor, ReloadState(), "test"))
    return generate_latest(registry).decode()
