"""Throughput test budgets, session windows and kecamatan uplink exclusivity (budget/ledger.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from desanet.budget import (
    LEDGER_FILE,
    Ledger,
    Refused,
    Usage,
    acquire_test_slot,
    budget_day,
    state_dir,
)
from desanet.district import Inventory, InventoryError, Village, parse_inventory
from tests.test_throughput import Iperf3Server, needs_iperf3

WIB = ZoneInfo("Asia/Jakarta")
UTC = ZoneInfo("UTC")

INVENTORY = textwrap.dedent(
    """
    district: Test
    defaults:
      snmp: {version: 2c, community: {env: SNMP_COMMUNITY}}
    settings:
      throughput: {max_seconds: 5, budget_megabytes_per_day: 10, budget_seconds_per_day: 20}
    kecamatan:
      - {name: Pesanggaran, uplink_mbit: 100, lat: -8.5, lon: 114.0}
      - {name: Siliragung, uplink_mbit: 100, lat: -8.4, lon: 114.1}
    villages:
      - {name: Desa A, slug: desa-a, kind: desa, kecamatan: Pesanggaran, router: 10.101.1.1,
         lat: -8.5, lon: 114.0, contracted: {down_mbit: 20, up_mbit: 20}, iperf3: {port: 5201}}
      - {name: Desa B, slug: desa-b, kind: desa, kecamatan: Pesanggaran, router: 10.101.2.1,
         lat: -8.5, lon: 114.0, contracted: {down_mbit: 20, up_mbit: 20}}
      - {name: Desa C, slug: desa-c, kind: desa, kecamatan: Siliragung, router: 10.102.1.1,
         lat: -8.4, lon: 114.1, contracted: {down_mbit: 20, up_mbit: 20}}
    sessions:
      - title: Musrenbangdes A
        start: 2026-12-01T09:00:00
        duration_minutes: 120
        repeat: weekly
        villages: [desa-a]
    """
)

# A Tuesday like the session's first day, well away from the session.
MORNING = datetime(2026, 12, 1, 7, 0, tzinfo=WIB)


def assert_refused(match: str, inv: Inventory, village: Village, now: datetime, **kw: Any) -> None:
    with pytest.raises(Refused, match=match), acquire_test_slot(inv, village, now, **kw):
        pass


@pytest.fixture
def inv() -> Inventory:
    return parse_inventory(INVENTORY, now=datetime(2026, 11, 28, tzinfo=WIB))


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("DESANET_STATE_DIR", str(d))
    return d


def test_state_dir_from_environment(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert state_dir() == state
    monkeypatch.delenv("DESANET_STATE_DIR")
    assert state_dir() == Path("/var/lib/desanet")


def test_day_boundary_is_midnight_in_jakarta() -> None:
    # 16:59:59 UTC is 23:59:59 WIB; 17:00 UTC is already tomorrow in Banyuwangi.
    assert budget_day(datetime(2026, 12, 1, 16, 59, 59, tzinfo=UTC)).isoformat() == "2026-12-01"
    assert budget_day(datetime(2026, 12, 1, 17, 0, 0, tzinfo=UTC)).isoformat() == "2026-12-02"
    with pytest.raises(ValueError):
        budget_day(datetime(2026, 12, 1, 12, 0))


def test_slot_caps_and_charge(inv: Inventory, state: Path) -> None:
    a = inv.village("desa-a")
    with acquire_test_slot(inv, a, MORNING) as slot:
        assert slot.max_seconds == 5
        assert slot.remaining_bytes == 10_000_000
        assert slot.caps(2) == (5, 5_000_000)
        slot.charge(3_000_000, 4.0)
    with acquire_test_slot(inv, a, MORNING + timedelta(minutes=5)) as slot:
        assert slot.remaining_bytes == 7_000_000
        assert slot.remaining_seconds == pytest.approx(16.0)
        slot.charge(1_000_000, 2.0)
    usage = Ledger(state).usage("desa-a", MORNING)
    assert (usage.bytes, usage.seconds, usage.tests) == (4_000_000, 6.0, 2)
    # Other villages have their own budget.
    assert Ledger(state).usage("desa-b", MORNING).bytes == 0


def test_time_budget_caps_the_test_length(inv: Inventory, state: Path) -> None:
    a = inv.village("desa-a")
    Ledger(state).charge("desa-a", MORNING, 0, 17.0)
    with acquire_test_slot(inv, a, MORNING) as slot:
        assert slot.max_seconds == pytest.approx(3.0)
        assert slot.caps(2)[0] == pytest.approx(1.5)
        slot.charge(0, 1.0)


def test_spent_budget_refuses_in_words(inv: Inventory, state: Path) -> None:
    a = inv.village("desa-a")
    Ledger(state).charge("desa-a", MORNING, 9_500_000, 5.0)
    assert_refused(r"daily test budget is spent: 9\.5 of 10 MB .* resets at 00:00 WIB", inv, a, MORNING)
    Ledger(state).charge("desa-c", MORNING, 0, 19.0)
    with pytest.raises(Refused, match="budget is spent"), acquire_test_slot(inv, inv.village("desa-c"), MORNING):
        pass
    # Force does not override a budget.
    with pytest.raises(Refused, match="budget is spent"), acquire_test_slot(inv, a, MORNING, force=True):
        pass


def test_budget_resets_at_jakarta_midnight(inv: Inventory, state: Path) -> None:
    a = inv.village("desa-a")
    late = datetime(2026, 12, 1, 23, 59, 0, tzinfo=WIB)
    Ledger(state).charge("desa-a", late, 10_000_000, 20.0)
    assert_refused(r".", inv, a, datetime(2026, 12, 1, 16, 59, 59, tzinfo=UTC))  # 23:59:59 WIB
    with acquire_test_slot(inv, a, datetime(2026, 12, 1, 17, 0, 1, tzinfo=UTC)) as slot:  # 00:00:01 WIB
        assert slot.remaining_bytes == 10_000_000
        slot.charge(1, 1.0)
    data = json.loads((state / LEDGER_FILE).read_text())
    assert data["day"] == "2026-12-02"
    assert data["villages"] == {"desa-a": {"bytes": 1, "seconds": 1.0, "tests": 1}}


def test_clock_going_back_never_forgives_usage(state: Path) -> None:
    ledger = Ledger(state)
    ledger.charge("desa-a", datetime(2026, 12, 2, 8, 0, tzinfo=WIB), 5, 1.0)
    assert ledger.usage("desa-a", datetime(2026, 12, 1, 23, 0, tzinfo=WIB)).bytes == 5
    ledger.charge("desa-a", datetime(2026, 12, 1, 23, 0, tzinfo=WIB), 5, 1.0)
    assert ledger.usage("desa-a", datetime(2026, 12, 2, 9, 0, tzinfo=WIB)).bytes == 10


def test_ledger_writes_are_atomic_and_damage_refuses(inv: Inventory, state: Path) -> None:
    ledger = Ledger(state)
    for _i in range(20):
        ledger.charge("desa-a", MORNING, 1000, 0.1)
    assert json.loads((state / LEDGER_FILE).read_text())["villages"]["desa-a"]["tests"] == 20
    assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]
    (state / LEDGER_FILE).write_text('{"day": "2026-12-01", "villages": {"desa-a": {"by')  # a torn write
    with pytest.raises(Refused, match="damaged"), acquire_test_slot(inv, inv.village("desa-a"), MORNING):
        pass


def test_no_test_during_a_session_unless_forced(inv: Inventory, state: Path) -> None:
    a = inv.village("desa-a")
    during = datetime(2026, 12, 8, 9, 30, tzinfo=WIB)  # the weekly session, a week on
    assert_refused(r"Desa A is in its scheduled session 'Musrenbangdes A' until 11:00 WIB", inv, a, during)
    with acquire_test_slot(inv, a, during, force=True) as slot:
        slot.charge(10, 0.5)
    # Desa B shares the kecamatan but not the session.
    with acquire_test_slot(inv, inv.village("desa-b"), during) as slot:
        slot.charge(10, 0.5)
    # A test that would run into the session's start is refused too.
    just_before = datetime(2026, 12, 8, 8, 59, 50, tzinfo=WIB)
    assert_refused("starts at 09:00 WIB, within this test's window", inv, a, just_before)
    with acquire_test_slot(inv, a, datetime(2026, 12, 8, 8, 55, tzinfo=WIB)) as slot:
        slot.charge(10, 0.5)


def test_one_test_per_kecamatan_uplink(inv: Inventory, state: Path) -> None:
    a, b, c = inv.village("desa-a"), inv.village("desa-b"), inv.village("desa-c")
    with acquire_test_slot(inv, a, MORNING) as slot_a:
        assert_refused(r"uplink busy: .*kecamatan Pesanggaran's uplink \(desa-a, pid \d+", inv, b, MORNING)
        assert_refused("uplink busy", inv, a, MORNING)  # the same village twice, too
        with acquire_test_slot(inv, c, MORNING) as slot_c:  # another kecamatan, another uplink
            slot_c.charge(1, 0.1)
        slot_a.charge(1, 0.1)
    with acquire_test_slot(inv, b, MORNING) as slot_b:  # released
        slot_b.charge(1, 0.1)
    # A refused slot charges nothing.
    assert Ledger(state).usage("desa-b", MORNING).tests == 1


def test_uplink_lock_excludes_other_processes(inv: Inventory, state: Path) -> None:
    holder = textwrap.dedent(
        """
        import sys
        from datetime import datetime
        from zoneinfo import ZoneInfo
        from desanet.budget import acquire_test_slot
        from desanet.district import parse_inventory
        text = sys.stdin.readline().replace("\\\\n", "\\n")
        inv = parse_inventory(text, now=datetime(2026, 11, 28, tzinfo=ZoneInfo("UTC")))
        now = datetime(2026, 12, 1, 7, 0, tzinfo=ZoneInfo("Asia/Jakarta"))
        with acquire_test_slot(inv, inv.village("desa-a"), now) as slot:
            print("held", flush=True)
            sys.stdin.readline()
            slot.charge(1, 0.1)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DESANET_STATE_DIR": str(state)},
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(INVENTORY.replace("\n", "\\n") + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "held"
        assert_refused("uplink busy", inv, inv.village("desa-b"), MORNING)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    with acquire_test_slot(inv, inv.village("desa-b"), MORNING) as slot:
        slot.charge(1, 0.1)


def test_uncharged_slot_is_charged_its_time(inv: Inventory, state: Path) -> None:
    with pytest.raises(RuntimeError), acquire_test_slot(inv, inv.village("desa-a"), MORNING):
        raise RuntimeError("the test crashed")
    usage = Ledger(state).usage("desa-a", MORNING)
    assert usage.tests == 1 and usage.bytes == 0 and usage.seconds >= 0


def test_naive_time_is_rejected(inv: Inventory, state: Path) -> None:
    with pytest.raises(ValueError), acquire_test_slot(inv, inv.village("desa-a"), datetime(2026, 12, 1, 7, 0)):
        pass


def test_unwritable_state_dir_refuses_in_words(inv: Inventory, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_refused(
        "cannot create the state directory", inv, inv.village("desa-a"), MORNING, directory=blocker / "state"
    )


# --------------------------------------------------------------------------------------------- ledger files
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"day": "2026-12-01", "villages": {"desa-a": {"bytes": "x"}}}', r"villages\.desa-a\.bytes is 'x'"),
        ('{"day": "2026-12-01", "villages": {"desa-a": 5}}', r"villages\.desa-a is not an object"),
        ('{"day": "2026-12-01", "villages": {}, "open": {"r1": {"bytes": -1}}}', r"open\.r1\.bytes is -1"),
        ('{"day": "yesterday"}', "day 'yesterday' is not a date"),
        ('{"version": 9}', "version 9 is not one this desanet reads"),
        ("[1, 2]", "not a JSON object"),
        ('{"day": "2026-12-01", "villages": {"desa-a": {"by', "not JSON"),
    ],
)
def test_a_damaged_ledger_is_refused_naming_the_file(inv: Inventory, state: Path, text: str, problem: str) -> None:
    state.mkdir(parents=True)
    (state / LEDGER_FILE).write_text(text)
    with pytest.raises(Refused) as info, acquire_test_slot(inv, inv.village("desa-a"), MORNING):
        pass
    assert str(state / LEDGER_FILE) in str(info.value) and info.value.reason == "ledger"
    assert "damaged" in str(info.value) and re.search(problem, str(info.value)), str(info.value)


def test_version_1_ledgers_are_read(inv: Inventory, state: Path) -> None:
    state.mkdir(parents=True)
    old = {"version": 1, "timezone": "Asia/Jakarta", "day": "2026-12-01", "villages": {"desa-a": {"bytes": 4_000_000,
           "seconds": 2.0, "tests": 1}}}  # fmt: skip
    (state / LEDGER_FILE).write_text(json.dumps(old))
    with acquire_test_slot(inv, inv.village("desa-a"), MORNING) as slot:
        assert slot.remaining_bytes == 6_000_000
        slot.charge(1, 0.1)
    assert json.loads((state / LEDGER_FILE).read_text())["version"] == 2


def test_a_reservation_counts_until_settled(state: Path) -> None:
    ledger = Ledger(state)
    r = ledger.reserve("desa-a", "Pesanggaran", MORNING, 3_000_000, 4.0)
    # While the test runs (or after its process died) its bound is what it may have cost.
    assert ledger.usage("desa-a", MORNING) == Usage(3_000_000, 4.0, 0)
    ledger.settle(r, MORNING, 1_234_567, 2.5)
    assert ledger.usage("desa-a", MORNING) == Usage(1_234_567, 2.5, 1)
    assert ledger.reservations() == []


def test_abandoned_reservations_are_charged_in_full_by_the_next_slot_on_the_uplink(
    inv: Inventory, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(state)
    ledger.reserve("desa-a", "Pesanggaran", MORNING, 3_000_000, 4.0)  # a test whose process was killed
    ledger.reserve("desa-c", "Siliragung", MORNING, 5_000_000, 4.0)  # another uplink: not this slot's to settle
    caplog.set_level(logging.INFO, logger="desanet.budget")
    with acquire_test_slot(inv, inv.village("desa-b"), MORNING) as slot:  # same kecamatan, another village
        slot.charge(1, 0.1)
    assert ledger.usage("desa-a", MORNING) == Usage(3_000_000, 4.0, 1)
    assert [r.village for r in ledger.reservations()] == ["desa-c"]
    warned = [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert warned[0].__dict__["village"] == "desa-a" and warned[0].__dict__["bytes"] == 3_000_000


# --------------------------------------------------------------------------------------------- on demand
def _on_demand(inv: Inventory, **kw: Any) -> Inventory:
    tp = inv.settings.throughput
    od = tp.on_demand.model_copy(update={"enabled": True, **kw})
    settings = inv.settings.model_copy(update={"throughput": tp.model_copy(update={"on_demand": od})})
    return inv.model_copy(update={"settings": settings})


def test_on_demand_tests_are_off_unless_the_inventory_enables_them(
    inv: Inventory, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="desanet.budget")
    with pytest.raises(Refused) as info, acquire_test_slot(inv, inv.village("desa-a"), MORNING, on_demand=True):
        pass
    assert info.value.reason == "disabled" and "settings.throughput.on_demand.enabled" in str(info.value)
    assert not (state / LEDGER_FILE).exists()  # refused before anything was taken
    refused = [r for r in caplog.records if r.getMessage() == "throughput test refused"]
    assert [(r.__dict__["village"], r.__dict__["reason"]) for r in refused] == [("desa-a", "disabled")]


def test_on_demand_tests_spend_their_own_smaller_allowance(inv: Inventory, state: Path) -> None:
    inv = _on_demand(inv, budget_megabytes_per_day=4, budget_seconds_per_day=8, max_seconds=2, min_interval_seconds=0)
    a = inv.village("desa-a")
    with acquire_test_slot(inv, a, MORNING, on_demand=True) as slot:
        assert (slot.remaining_bytes, slot.remaining_seconds, slot.max_seconds) == (4_000_000, 8, 2)
        slot.charge(2_500_000, 3.0)
    with acquire_test_slot(inv, a, MORNING, on_demand=True) as slot:
        assert slot.remaining_bytes == 1_500_000
        slot.charge(600_000, 1.0)
    # 0.9 MB left of the on-demand allowance is less than a test's worth: refused, with when to retry.
    with pytest.raises(Refused) as info, acquire_test_slot(inv, a, MORNING, on_demand=True):
        pass
    assert info.value.reason == "on_demand_budget" and "allowance is spent: 3.1 of 4 MB" in str(info.value)
    assert info.value.retry_after == pytest.approx(17 * 3600)  # 07:00 to midnight WIB
    # They count against the village's daily budget too; the scheduled tests keep the rest.
    with acquire_test_slot(inv, a, MORNING) as slot:
        assert slot.remaining_bytes == 10_000_000 - 3_100_000
        slot.charge(1, 0.1)
    assert Ledger(state).usage("desa-a", MORNING, on_demand=True) == Usage(3_100_000, 4.0, 2)


def test_on_demand_tests_are_rate_limited_per_village(inv: Inventory, state: Path) -> None:
    inv = _on_demand(inv, budget_megabytes_per_day=5, min_interval_seconds=600)
    a, b = inv.village("desa-a"), inv.village("desa-b")
    Ledger(state).reserve("desa-a", "Pesanggaran", MORNING, 10, 0.1, on_demand=True)  # a test started at 07:00
    Ledger(state).settle(Ledger(state).reservations()[0], MORNING, 10, 0.1)
    later = MORNING + timedelta(seconds=200)
    with pytest.raises(Refused) as info, acquire_test_slot(inv, a, later, on_demand=True):
        pass
    assert info.value.reason == "rate_limit" and info.value.retry_after == pytest.approx(400)
    assert "at most one every 600 s" in str(info.value) and "next from 07:10:00 WIB" in str(info.value)
    with acquire_test_slot(inv, b, later, on_demand=True) as slot:  # another village has its own limit
        slot.charge(1, 0.1)
    with acquire_test_slot(inv, a, MORNING + timedelta(seconds=600), on_demand=True) as slot:
        slot.charge(1, 0.1)
    # Scheduled tests are not rate limited by on-demand ones.
    with acquire_test_slot(inv, a, later) as slot:
        slot.charge(1, 0.1)


def test_on_demand_tests_are_never_forced_into_a_session(inv: Inventory, state: Path) -> None:
    inv = _on_demand(inv)
    during = datetime(2026, 12, 8, 9, 30, tzinfo=WIB)
    with pytest.raises(Refused) as info, acquire_test_slot(inv, inv.village("desa-a"), during, True, on_demand=True):
        pass
    assert info.value.reason == "session" and info.value.retry_after == pytest.approx(90 * 60)


def test_enabling_on_demand_wants_a_part_of_the_daily_budget() -> None:
    text = INVENTORY.replace(
        "budget_seconds_per_day: 20}",
        "budget_seconds_per_day: 20, on_demand: {enabled: true, budget_megabytes_per_day: 50}}",
    )
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, now=datetime(2026, 11, 28, tzinfo=WIB))
    assert "on_demand.budget_megabytes_per_day (50) is more than budget_megabytes_per_day (10)" in str(info.value)


# --------------------------------------------------------------------------------------------- real tests
# A real iperf3 server on 127.0.0.1, the real probe, the real ledger file: what a test moved is charged when it
# is cancelled (a /probe scrape timeout) or its process is killed.
LOOPBACK = textwrap.dedent(
    """
    district: Loopback
    defaults:
      snmp: {{version: 2c, community: {{env: SNMP_COMMUNITY}}}}
    settings:
      throughput: {{max_seconds: 5, budget_megabytes_per_day: 20000, budget_seconds_per_day: 600}}
    kecamatan:
      - {{name: Pesanggaran, uplink_mbit: 100, lat: -8.5, lon: 114.0}}
    villages:
      - {{name: Sarongan, slug: sarongan, kind: desa, kecamatan: Pesanggaran, router: 127.0.0.2,
         lat: -8.5, lon: 114.0, contracted: {{down_mbit: 20, up_mbit: 20}},
         iperf3: {{address: 127.0.0.1, port: {port}}}}}
    """
)


def _server_counted(report: dict[str, Any]) -> int:
    """What the iperf3 server counted in its whole 1 s intervals: less than the test moved, never more. (3.12
    lists the last interval twice when the client stopped the test; each start is counted once.)"""
    intervals = {i["sum"]["start"]: int(i["sum"]["bytes"]) for i in report.get("intervals") or []}
    return sum(intervals.values())


@needs_iperf3
@pytest.mark.timeout(60)
@pytest.mark.parametrize("direction", ["down", "up"])
def test_a_cancelled_test_is_charged_what_it_moved(
    state: Path, make_server: Callable[..., Iperf3Server], direction: str
) -> None:
    from desanet.probes.throughput import Progress, ThroughputSettings, probe

    srv = make_server(one_off=True, json_output=True)
    inv = parse_inventory(LOOPBACK.format(port=srv.port), now=datetime(2026, 11, 28, tzinfo=WIB))
    now = datetime.now(WIB)
    finals: list[Progress] = []

    async def scenario() -> None:
        with acquire_test_slot(inv, inv.village("sarongan"), now, directions=1) as slot:
            max_seconds, max_bytes = slot.caps(1)
            settings = ThroughputSettings(
                port=srv.port,
                direction=direction,  # type: ignore[arg-type]
                max_seconds=max_seconds,
                max_bytes=max_bytes,
                converge_tolerance=1e-6,
            )

            def run(address: str, s: ThroughputSettings, meter: Callable[[Progress], None]) -> Any:
                def both(p: Progress) -> None:
                    if p.final:
                        finals.append(p)
                    meter(p)

                return probe(address, s, progress=both)

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.6):  # what a scrape timeout does to /probe
                    await slot.measure("127.0.0.1", settings, run=run)

    asyncio.run(scenario())
    usage = Ledger(state).usage("sarongan", now)
    moved = sum(p.bytes for p in finals)
    print(f"\n{direction}: charged {usage.bytes} bytes; the server counted {_server_counted(srv.report())}")
    assert usage.bytes == moved and usage.tests == 1 and 0.5 < usage.seconds < 2.0
    assert Ledger(state).reservations() == []
    assert usage.bytes >= _server_counted(srv.report()) > 0


KILLED_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import datetime
    from zoneinfo import ZoneInfo
    from desanet.budget import acquire_test_slot
    from desanet.district import load_inventory
    from desanet.probes.throughput import ThroughputSettings

    inv = load_inventory(sys.argv[1])
    village = inv.village("sarongan")

    async def main() -> None:
        with acquire_test_slot(inv, village, datetime.now(ZoneInfo("Asia/Jakarta")), directions=1) as slot:
            seconds, cap = slot.caps(1)
            settings = ThroughputSettings(port=int(sys.argv[2]), direction=sys.argv[3], max_seconds=seconds,
                                          max_bytes=cap, converge_tolerance=1e-6)
            await slot.measure("127.0.0.1", settings, progress=lambda p: print(p.seconds, flush=True))

    asyncio.run(main())
    """
)


@needs_iperf3
@pytest.mark.timeout(60)
@pytest.mark.parametrize("direction", ["down", "up"])
def test_a_killed_test_is_charged_its_reservation_before_the_next_test(
    state: Path, tmp_path: Path, make_server: Callable[..., Iperf3Server], direction: str
) -> None:
    from desanet.probes.throughput import ThroughputSettings, payload_bound, receive_buffer_max

    srv = make_server(one_off=True, json_output=True)
    path = tmp_path / "inventory.yaml"
    path.write_text(LOOPBACK.format(port=srv.port))
    inv = parse_inventory(path.read_text(), now=datetime(2026, 11, 28, tzinfo=WIB))
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(path), str(srv.port), direction],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DESANET_STATE_DIR": str(state)},
    )
    try:
        assert child.stdout is not None
        for _ in range(50):  # a progress line every 0.1 s; past 1.3 s the server has counted a whole second
            line = child.stdout.readline()
            if not line or float(line) > 1.3:
                break
        child.send_signal(signal.SIGKILL)  # no finally, no atexit: only what was on disk before counts
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    reservations = Ledger(state).reservations()
    cap = 20_000 * 1_000_000
    settings = ThroughputSettings(direction=direction, max_seconds=5, max_bytes=cap)  # type: ignore[arg-type]
    assert [(r.village, r.bytes) for r in reservations] == [("sarongan", payload_bound(settings, receive_buffer_max()))]
    now = datetime.now(WIB)
    # The next test on the uplink settles it in full before it looks at the budget: here, nothing is left.
    with pytest.raises(Refused, match="budget is spent"), acquire_test_slot(inv, inv.village("sarongan"), now):
        pass
    usage = Ledger(state).usage("sarongan", now)
    assert usage == Usage(reservations[0].bytes, reservations[0].seconds, 1) and Ledger(state).reservations() == []
    counted = _server_counted(srv.report())  # a one-off server whose client vanished reports and exits
    print(f"\n{direction}: charged {usage.bytes} bytes; the server counted {counted}")
    assert usage.bytes >= counted > 0
