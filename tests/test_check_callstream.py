"""`desanet check --call-stream`: the call-like stream runs after the throughput test, in its budget slot, is
charged what it moved both ways, shows in --json and in a note, and does not change the verdict (not judged until
a calibration run has placed its lines: docs/readiness.md). The probes are faked here (tests/test_check.py's
FakeProbers); the stream itself is tested on sockets in tests/test_callstream.py and end to end in the lab."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from desanet import check as ck
from desanet.budget import Ledger
from desanet.check.messages import render
from desanet.district import Inventory, Village
from desanet.probes.callstream import CallStreamResult, CallStreamSettings
from tests.conftest import LAB_SECRETS
from tests.test_check import SATURDAY, FakeProbers, run


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ledger of the test's own (never the host's), and the lab's SNMP secrets."""
    monkeypatch.setenv("DESANET_STATE_DIR", str(tmp_path / "state"))
    for name, value in LAB_SECRETS.items():
        monkeypatch.setenv(name, value)


def streamed(settings: CallStreamSettings, held_ratio: float = 0.25) -> CallStreamResult:
    sent = int(settings.rate_bps * settings.duration_seconds / 8 / settings.packet_bytes)
    return CallStreamResult(
        target="10.0.0.1",
        rate_bps=settings.rate_bps,
        duration_seconds=settings.duration_seconds,
        sent_bps=settings.rate_bps * held_ratio,
        held_bps=settings.rate_bps * held_ratio,
        held_ratio=held_ratio,
        sent=sent,
        received=sent,
        bytes_sent=sent * settings.packet_bytes,
        loss_ratio=0.0,
        overuse_forward=3,
        overuse_backward=0,
        delay_rise_forward_seconds=0.12,
        delay_rise_backward_seconds=0.001,
        lowest_bps=settings.rate_bps * held_ratio,
        elapsed_seconds=settings.duration_seconds,
    )


class Streaming(FakeProbers):
    def __init__(self, *, error: Exception | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.error = error
        self.stream_settings: CallStreamSettings | None = None

    async def call_stream(self, address: str, settings: CallStreamSettings) -> CallStreamResult:
        self.calls.append("call_stream")
        self.stream_settings = settings
        if self.error is not None:
            raise self.error
        return streamed(settings)


def charged(where: Village, now: datetime) -> int:
    return Ledger().usage(where.slug, now).bytes


def test_the_stream_runs_last_at_the_profiles_call_rate_and_is_charged(inv: Inventory, village: Village) -> None:
    plain = run(inv, village, Streaming())
    plain_bytes = charged(village, SATURDAY)
    probers = Streaming()
    report = run(inv, village, probers, call_stream=True)
    assert probers.calls[-1] == "call_stream" and probers.calls[-3:-1] == ["throughput-down", "throughput-up"]
    s = probers.stream_settings
    assert s is not None
    profile = inv.profile("meet-hd")
    assert s.rate_bps == profile.video_kbit * 1000 and s.dscp == profile.dscp
    assert s.port == village.stamp_address()[1]  # type: ignore[index]
    # the ledger holds both checks now: the second one's throughput plus the stream out and back
    assert charged(village, SATURDAY) - plain_bytes == plain_bytes + 2 * report.call_stream.bytes_sent  # type: ignore[union-attr]
    # not judged yet: the verdict and limiting factor are what the check says without it
    assert (report.verdict, report.limiting) == (plain.verdict, plain.limiting)
    doc = ck.to_json(report, "en")
    assert doc["call_stream"]["held_ratio"] == 0.25 and doc["call_stream"]["overuse_forward"] == 3
    assert doc["verdict"] == ck.to_json(plain, "en")["verdict"]
    note = next(n for n in report.notes if n.key == "note_call_stream")
    assert "25" in render(note.key, note.values, "en") and "25" in render(note.key, note.values, "id")
    assert report.timings.get("call_stream") is not None


def test_without_the_flag_no_stream(inv: Inventory, village: Village) -> None:
    probers = Streaming()
    report = run(inv, village, probers)
    assert "call_stream" not in probers.calls
    assert ck.to_json(report, "en")["call_stream"] is None


def test_no_stream_without_a_throughput_slot(inv: Inventory, village: Village) -> None:
    probers = Streaming()
    run(inv, village, probers, call_stream=True, throughput=False)
    assert "call_stream" not in probers.calls


@pytest.mark.parametrize("error", [OSError("Network is unreachable"), ValueError("bad target")])
def test_a_stream_that_cannot_run_is_a_note_not_a_crash(inv: Inventory, village: Village, error: Exception) -> None:
    probers = Streaming(error=error)
    report = run(inv, village, probers, call_stream=True)
    assert report.verdict in ("ready", "at_risk", "not_ready")
    assert report.call_stream is None
    assert any(n.key == "note_call_stream_failed" and str(error) in (n.detail or "") for n in report.notes)
    # what it might have moved is charged: its whole bound, both ways
    assert probers.stream_settings is not None
    assert charged(village, SATURDAY) >= 2 * probers.stream_settings.max_bytes()


class SlowThroughput(Streaming):
    """A throughput test that overruns its data phase by `extra` seconds, as one on a bloated link does while it
    waits for the last data to drain (probes/throughput.py)."""

    def __init__(self, extra: float) -> None:
        super().__init__()
        self.extra = extra

    async def throughput(self, address: str, settings: Any, progress: Any = None) -> Any:
        await asyncio.sleep(settings.max_seconds + self.extra)
        return await super().throughput(address, settings, progress)


# A 9 s budget: phase 1 (~0.1 s here) and two 1.5 s rehearsals leave 5.9 s, less twice the overrun, for the stream.
def test_a_throughput_test_that_overran_leaves_a_shorter_stream(inv: Inventory, village: Village) -> None:
    """The stream runs for what is left, down to 2 s, rather than not at all: the bloated-upload rows it is for
    are the ones whose throughput test drains longest."""
    probers = SlowThroughput(extra=1.0)
    report = run(inv, village, probers, call_stream=True, limit=9.0)
    assert probers.stream_settings is not None, [n.key for n in report.notes]
    assert 2.0 <= probers.stream_settings.duration_seconds < 3.5
    assert report.call_stream is not None and report.call_stream.duration_seconds < 3.5


def test_too_little_time_left_skips_the_stream_with_a_note(inv: Inventory, village: Village) -> None:
    probers = SlowThroughput(extra=1.8)
    report = run(inv, village, probers, call_stream=True, limit=9.0)
    assert "throughput-up" in probers.calls and "call_stream" not in probers.calls
    assert report.call_stream is None
    assert any(n.key == "note_call_stream_time" for n in report.notes)
    assert report.verdict in ("ready", "at_risk", "not_ready")  # judged on what was measured
