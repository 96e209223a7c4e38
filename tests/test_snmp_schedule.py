"""serve's SNMP loop records each village as soon as its own poll ends, not when the round's last poll does.

`Monitor.poll_snmp` used to gather a whole round with `SnmpPoller.poll_many` and record the results only after
the slowest poll ended, so at province scale (4,250 villages a shard) a few dead agents (timeout x tries) held
back every village's SNMP figures: the province benchmark saw 0 of 8,500 villages with an SNMP success after
150 s. Here a real net-snmp agent and a black hole (a bound UDP socket that never answers, as a dead router or a
cut fibre looks) sit side by side in one inventory, and the live village must be recorded while the dead one is
still being polled. Everything is on 127.0.0.x, snmpd is started on a free port and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desanet.district import Inventory, load_inventory
from desanet.exporter.scheduler import Monitor
from desanet.probes.snmp import SnmpPoller
from tests.test_snmp_agent import COMMUNITY, start_agent

needs_snmpd = pytest.mark.skipif(shutil.which("snmpd") is None, reason="needs net-snmp's snmpd (apt install snmpd)")

TIMEOUT_SECONDS = 2.0
RETRIES = 3
DEAD_SECONDS = TIMEOUT_SECONDS * (RETRIES + 1)  # what one poll of a dead agent costs: 8 s
LIVE_WITHIN = 3.0  # a first poll (a full walk) of a live snmpd takes well under a second even on a busy box

VILLAGE = """\
  - name: {name}
    slug: {slug}
    kind: desa
    kecamatan: Pesanggaran
    router: {host}
    lat: -8.5
    lon: 114.0
    contracted: {{down_mbit: 20, up_mbit: 20}}
    snmp: {{version: 2c, community: {{env: TEST_SNMP_COMMUNITY}}, port: {port}}}
"""


def inventory(tmp_path: Path, villages: list[tuple[str, str, int]]) -> Inventory:
    """An inventory of villages (name, router address, SNMP port), written as YAML and loaded as serve does."""
    text = (
        "district: Test\n"
        f"settings: {{snmp: {{timeout_seconds: {TIMEOUT_SECONDS}, retries: {RETRIES}}}}}\n"
        "kecamatan:\n  - {name: Pesanggaran, uplink_mbit: 1000, lat: -8.5, lon: 114.0}\n"
        "villages:\n"
    )
    for name, host, port in villages:
        text += VILLAGE.format(name=name, slug=name.lower(), host=host, port=port)
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return load_inventory(path)


@contextlib.contextmanager
def black_hole(host: str) -> Iterator[int]:
    """A UDP port on `host` that receives and never answers; yields the port."""
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        hole.bind((host, 0))
        yield hole.getsockname()[1]
    finally:
        hole.close()


async def monitor_with_poller(inv: Inventory) -> Monitor:
    """A Monitor with its villages and its poller as `Monitor.start` makes them, but no loop running."""
    m = Monitor(inv, enable={"snmp"})
    m.apply_inventory(inv)
    m.poller = SnmpPoller(max_per_agent=inv.settings.snmp.max_per_agent)
    await m.poller.start()
    return m


async def wait_for_run(m: Monitor, slug: str, within: float) -> float:
    """Seconds until `slug` has an SNMP result recorded; fails after `within`."""
    t0 = time.monotonic()
    while m.villages[slug].status("snmp").runs == 0:
        assert time.monotonic() - t0 < within, f"{slug} not recorded within {within} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@pytest.fixture
def community(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SNMP_COMMUNITY", COMMUNITY)


@needs_snmpd
@pytest.mark.timeout(60)
def test_live_village_is_recorded_while_a_dead_one_is_still_polled(tmp_path: Path, community: None) -> None:
    with start_agent(tmp_path / "agent", host="127.0.0.51") as agent, black_hole("127.0.0.52") as dead_port:
        inv = inventory(tmp_path, [("Sumberagung", agent.host, agent.port), ("Sarongan", "127.0.0.52", dead_port)])

        async def go() -> tuple[Monitor, float, bool, int, float]:
            m = await monitor_with_poller(inv)
            t0 = time.monotonic()
            round_ = asyncio.create_task(m.poll_snmp())
            try:
                t_live = await wait_for_run(m, "sumberagung", LIVE_WITHIN)
                # Still inside the round: the dead village's poll has seconds of timeouts to go.
                still_polling, dead_runs = not round_.done(), m.villages["sarongan"].status("snmp").runs
                await asyncio.wait_for(round_, DEAD_SECONDS + 7)
                return m, t_live, still_polling, dead_runs, time.monotonic() - t0
            finally:
                round_.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await round_
                await m.poller.close()

        m, t_live, still_polling, dead_runs, t_round = asyncio.run(go())

    print(f"\nlive village recorded after {t_live:.2f} s; the round (dead agent) ended after {t_round:.2f} s")
    assert still_polling and dead_runs == 0 and t_live < DEAD_SECONDS / 2
    live, dead = m.villages["sumberagung"], m.villages["sarongan"]
    ls = live.status("snmp")
    assert ls.success is True and ls.error is None and ls.runs == 1
    assert live.snmp is not None and live.snmp.success and live.snmp.uptime_seconds
    assert any(i.name == "lo" for i in live.snmp.interfaces) and live.snmp.optics  # the lab agent's optical row
    assert live.snmp_at is not None and any(e.probe == "snmp" and e.ok for e in live.recent_logs())
    ds = dead.status("snmp")
    assert ds.success is False and ds.runs == 1 and dead.snmp is None and ds.error is not None
    assert f"no SNMP answer within {DEAD_SECONDS:g} s ({RETRIES + 1} tries of {TIMEOUT_SECONDS:g} s)" in ds.error
    assert ds.duration is not None and DEAD_SECONDS - 0.2 <= ds.duration < DEAD_SECONDS + 3
    assert DEAD_SECONDS - 0.2 <= t_round < DEAD_SECONDS + 5  # the round returns once the dead poll has timed out


@needs_snmpd
@pytest.mark.timeout(60)
def test_shutdown_is_not_held_by_a_dead_agent(tmp_path: Path, community: None) -> None:
    """serve's stop cancels the SNMP loop mid-round: the cancellation reaches the dead village's poll (poll()
    turns errors into words but must let CancelledError through), stop returns at once instead of after the
    dead agent's 8 s, nothing is recorded for the cancelled poll, and its request and per-agent slot are given
    back."""
    with start_agent(tmp_path / "agent", host="127.0.0.53") as agent, black_hole("127.0.0.54") as dead_port:
        inv = inventory(tmp_path, [("Sumberagung", agent.host, agent.port), ("Sarongan", "127.0.0.54", dead_port)])

        async def go() -> tuple[Monitor, float, bool, int, int]:
            m = Monitor(inv, enable={"snmp"})
            await m.start()
            try:
                await wait_for_run(m, "sumberagung", LIVE_WITHIN)
                poller = m.poller
                snmp_task = next(t for t in m._tasks if t.get_name() == "snmp")
                t0 = time.monotonic()
                snmp_task.cancel()  # what stop does first; then it awaits the task and closes the poller
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(snmp_task, 1.0)
                # Before the poller closes (which would fail and forget them anyway): no request left waiting
                # for the dead agent, and both agents' per-agent slots free again.
                pending = sum(len(s.pending) for s in poller._v2c.values())
                held = sum(sem._value != m.inventory.settings.snmp.max_per_agent for sem in poller._semaphores.values())
                await asyncio.wait_for(m.stop(), 3.0)
                t_stop = time.monotonic() - t0
                return m, t_stop, snmp_task.cancelled(), pending, held
            finally:
                await m.stop()

        m, t_stop, cancelled, pending, held = asyncio.run(go())

    print(f"\nstop with a dead agent mid-poll took {t_stop:.3f} s")
    assert cancelled and t_stop < 1.0
    assert pending == 0 and held == 0
    assert m.villages["sumberagung"].status("snmp").success is True
    assert m.villages["sarongan"].status("snmp").runs == 0


@needs_snmpd
@pytest.mark.timeout(60)
def test_agent_without_uptime_is_recorded_and_the_round_goes_on(tmp_path: Path, community: None) -> None:
    """A poll that succeeds without sysUpTime is recorded like any other; its log line says the uptime is
    unknown (formatting None used to raise in the round and end serve's SNMP loop for the whole shard).

    Both villages are polled from a real snmpd; Sarongan's answer then loses its sysUpTime, as a view-limited
    community's does. (A real view-limited snmpd gives exactly that on a host's network namespace, but in the
    bare namespace the test suite runs in, net-snmp answers its first request with genErr instead, so the
    agent's side cannot be the same everywhere.)"""
    with (
        start_agent(tmp_path / "agent", host="127.0.0.55") as agent,
        start_agent(tmp_path / "limited", host="127.0.0.56") as limited,
    ):
        inv = inventory(tmp_path, [("Sumberagung", agent.host, agent.port), ("Sarongan", limited.host, limited.port)])

        async def go() -> Monitor:
            m = await monitor_with_poller(inv)
            real_poll = m.poller.poll

            async def poll(target: str, settings: Any) -> Any:
                result = await real_poll(target, settings)
                if target == limited.host:
                    return dataclasses.replace(result, uptime_seconds=None)
                return result

            m.poller.poll = poll
            try:
                await asyncio.wait_for(m.poll_snmp(), 15)
                return m
            finally:
                await m.poller.close()

        m = asyncio.run(go())

    limited_vs, live = m.villages["sarongan"], m.villages["sumberagung"]
    assert limited_vs.status("snmp").success is True and live.status("snmp").success is True
    assert limited_vs.snmp is not None and limited_vs.snmp.uptime_seconds is None and limited_vs.snmp.interfaces
    messages = [e.message for e in limited_vs.recent_logs() if e.probe == "snmp"]
    assert messages and messages[0].endswith("uptime unknown"), messages
