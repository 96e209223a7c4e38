"""Throughput test budgets, session windows and kecamatan uplink exclusivity (budget/ledger.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from desanet.budget import (
    LEDGER_FILE,
    Ledger,
    Refused,
    acquire_test_slot,
    budget_day,
    state_dir,
)
from desanet.district import Inventory, Village, parse_inventory

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
