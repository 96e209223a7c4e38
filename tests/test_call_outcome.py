"""verdict/call_outcome.py: each limit on both sides of its line, from synthetic per-second getStats() series.
No network: the series are the plain dicts the call page posts."""

from __future__ import annotations

from typing import Any

import pytest

from desanet.verdict.call_outcome import Limits, judge_call, judge_direction


def series(
    seconds: int = 30,
    fps: float = 30.0,
    height: int = 360,
    freeze_at: dict[int, float] | None = None,
    stall: range = range(0),
    conceal: float = 0.0,
    reason: str = "none",
    lost_per_s: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A sender's and a receiver's samples, one a second, with cumulative counters as browsers report them."""
    tx, rx = [], []
    frames = freezes = 0.0
    freeze_count = 0
    concealed = total = 0.0
    lost = received = 0
    for i in range(seconds):
        if i not in stall:
            frames += fps
        if freeze_at and i in freeze_at:
            freezes += freeze_at[i]
            freeze_count += 1
        total += 48000
        concealed += 48000 * conceal
        lost += lost_per_s
        received += 100
        rx.append(
            {
                "t": 100.0 + i,
                "in_video": {
                    "framesDecoded": frames,
                    "frameHeight": height,
                    "frameWidth": height * 16 // 9,
                    "totalFreezesDuration": freezes,
                    "freezeCount": freeze_count,
                    "packetsLost": lost,
                    "packetsReceived": received,
                    "jitterBufferDelay": 0.02 * frames,
                    "jitterBufferEmittedCount": frames,
                    "bytesReceived": 125_000 * i,
                },
                "in_audio": {"concealedSamples": concealed, "totalSamplesReceived": total},
            }
        )
        tx.append({"t": 50.0 + i, "out_video": {"qualityLimitationReason": reason}})
    return tx, rx


def judge(**kw: Any) -> Any:
    tx, rx = series(**kw)
    return judge_direction("down", tx, rx, profile_height=360, profile_fps=30)


def test_clean_call_holds_with_its_figures() -> None:
    d = judge()
    assert d.outcome == "holds" and d.reasons == ()
    assert d.fps == 30 and d.height == 360 and d.height_ratio == 1.0
    assert d.freeze_ratio == 0 and d.audio_concealment_ratio == 0 and d.video_loss_ratio == 0
    assert d.jitter_buffer_ms == 20.0 and d.kbit == 1000.0 and d.limitation == "none"
    assert d.seconds == 30 - 1 - Limits().warmup_s


@pytest.mark.parametrize(
    ("freeze", "outcome"),
    [(0.4, "holds"), (0.5, "degraded"), (2.1, "degraded"), (2.3, "fails")],  # judged span 21 s: 2 % and 10 %
)
def test_freeze_time_ratio(freeze: float, outcome: str) -> None:
    assert judge(freeze_at={20: freeze}).outcome == outcome


def test_freezes_in_the_warm_up_are_not_judged() -> None:
    assert judge(freeze_at={3: 5.0}).outcome == "holds"


def test_a_picture_that_stopped_counts_as_frozen_though_no_freeze_closed() -> None:
    d = judge(stall=range(15, 30))
    assert d.outcome == "fails" and d.freeze_ratio is not None and d.freeze_ratio > 0.5


@pytest.mark.parametrize(
    ("fps", "outcome"), [(30, "holds"), (24, "holds"), (23, "degraded"), (10, "degraded"), (9, "fails")]
)
def test_frame_rate_against_the_profile(fps: float, outcome: str) -> None:
    assert judge(fps=fps).outcome == outcome


@pytest.mark.parametrize(
    ("height", "outcome"), [(360, "holds"), (270, "holds"), (268, "degraded"), (180, "degraded"), (178, "fails")]
)
def test_resolution_against_the_profile(height: int, outcome: str) -> None:
    assert judge(height=height).outcome == outcome


@pytest.mark.parametrize(
    ("conceal", "outcome"), [(0.0, "holds"), (0.03, "holds"), (0.031, "degraded"), (0.1, "degraded"), (0.11, "fails")]
)
def test_audio_concealment(conceal: float, outcome: str) -> None:
    assert judge(conceal=conceal).outcome == outcome


def test_bandwidth_limitation_is_named_when_it_hurt() -> None:
    d = judge(height=270 - 2, reason="bandwidth")
    assert d.outcome == "degraded" and d.limitation == "bandwidth"
    assert "the sender was limited by bandwidth" in d.reasons


def test_repaired_wire_loss_alone_does_not_degrade() -> None:
    """5 % wire loss that NACK repaired (no freeze, full frame rate) holds: video packetsLost is wire loss."""
    d = judge(lost_per_s=5)
    assert d.outcome == "holds" and d.video_loss_ratio == pytest.approx(5 / 105)


def test_too_short_or_no_video_fails() -> None:
    tx, rx = series(seconds=12)
    assert judge_direction("up", tx, rx, 360, 30).outcome == "fails"
    assert judge_direction("up", tx, [], 360, 30).reasons == ("no video arrived after the warm-up",)
    assert judge_direction("up", tx, [{"t": 1.0}, {"t": "x"}], 360, 30).outcome == "fails"


def test_samples_out_of_order_are_sorted_by_the_page_clock() -> None:
    tx, rx = series(freeze_at={20: 1.0})
    assert judge_direction("up", tx, list(reversed(rx)), 360, 30) == judge_direction("up", tx, rx, 360, 30)


def test_call_that_did_not_connect_fails_both_ways_with_its_reason() -> None:
    o = judge_call(False, "the path to the NOC is down", None, {}, 360, 30)
    assert o.outcome == "fails" and set(o.directions) == {"up", "down"}
    assert all(d.reasons == ("the path to the NOC is down",) for d in o.directions.values())


def test_call_outcome_is_the_worse_direction() -> None:
    up_tx, up_rx = series()
    dn_tx, dn_rx = series(conceal=0.05)
    # up: village sends, far end receives; down: far end sends, village receives.
    village = [{**a, **b} for a, b in zip(up_tx, dn_rx, strict=True)]
    farend = [{**a, **b} for a, b in zip(dn_tx, up_rx, strict=True)]
    o = judge_call(True, None, 1.2, {"village": village, "farend": farend}, 360, 30)
    assert o.directions["up"].outcome == "holds" and o.directions["down"].outcome == "degraded"
    assert o.outcome == "degraded"
