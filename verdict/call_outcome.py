"""What a real call did, per direction: `holds`, `degraded` or `fails`, from its per-second `getStats()` series.

Pure: the samples come in as the plain dicts the call page posts (desanet/calls), the judgement goes out as
frozen dataclasses. docs/calls.md gives the source or the argument for every limit in `Limits`.

A direction is named by where the media goes: `up` is the village's camera seen at the NOC, `down` the NOC's
seen in the village. The receiver's inbound stats say what arrived (frames, freezes, concealment); the
sender's outbound stats say why it sent less (`qualityLimitationReason`).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["holds", "degraded", "fails"]
OUTCOMES: tuple[Outcome, ...] = ("holds", "degraded", "fails")
# direction -> (sender role, receiver role)
DIRECTIONS: dict[str, tuple[str, str]] = {"up": ("village", "farend"), "down": ("farend", "village")}


@dataclass(frozen=True)
class Limits:
    """The lines between the outcomes (docs/calls.md, "What holds means", says where each comes from)."""

    warmup_s: float = 8.0  # bandwidth estimate and resolution settle; judged only after
    min_judged_s: float = 5.0  # fewer seconds of stats than this after warm-up: the call did not last
    hold_freeze_ratio: float = 0.02  # frozen time over judged time (W3C freeze definition)
    fail_freeze_ratio: float = 0.10
    hold_fps_ratio: float = 0.8  # median received frame rate over the profile's
    fail_fps: float = 10.0  # frames per second below which motion is no longer read as motion
    hold_height_ratio: float = 0.75  # median received height over the profile's: one step of the 3/4 ladder
    fail_height_ratio: float = 0.5
    hold_concealment: float = 0.03  # concealed audio samples over received
    fail_concealment: float = 0.10
    limitation_share: float = 0.2  # a limitation reason counts when the sender named it this share of seconds


@dataclass(frozen=True)
class DirectionOutcome:
    """One direction's outcome, why, and the figures it was judged on (None where the stats had none)."""

    direction: str
    outcome: Outcome
    reasons: tuple[str, ...]
    seconds: float  # judged, after warm-up
    freeze_ratio: float | None = None
    freeze_count: int | None = None
    fps: float | None = None  # median of per-second decoded frame rates
    width: int | None = None  # median received
    height: int | None = None
    height_ratio: float | None = None
    audio_concealment_ratio: float | None = None
    video_loss_ratio: float | None = None  # wire loss; NACK may have repaired it
    audio_loss_ratio: float | None = None
    jitter_buffer_ms: float | None = None  # video, mean over emitted frames
    kbit: float | None = None  # video received
    limitation: str = "none"  # the sender's dominant qualityLimitationReason


@dataclass(frozen=True)
class CallOutcome:
    """The call: connected or not (and why), its setup time, and both directions."""

    connected: bool
    error: str | None
    setup_s: float | None
    directions: dict[str, DirectionOutcome] = field(default_factory=dict)

    @property
    def outcome(self) -> Outcome:
        """The worse direction's outcome (a call that did not connect fails)."""
        if not self.connected or not self.directions:
            return "fails"
        return max((d.outcome for d in self.directions.values()), key=OUTCOMES.index)


def _num(d: Mapping[str, Any] | None, key: str) -> float | None:
    v = (d or {}).get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _delta(first: Mapping[str, Any] | None, last: Mapping[str, Any] | None, key: str) -> float | None:
    a, b = _num(first, key), _num(last, key)
    return None if a is None or b is None else b - a


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den <= 0 else num / den


def _judged(samples: Sequence[Mapping[str, Any]], warmup_s: float) -> list[Mapping[str, Any]]:
    """Samples after the warm-up, ordered by the page's own clock (posts can arrive out of order)."""
    timed = sorted((s for s in samples if _num(s, "t") is not None), key=lambda s: float(s["t"]))
    if not timed:
        return []
    start = float(timed[0]["t"]) + warmup_s
    return [s for s in timed if float(s["t"]) >= start]


def judge_direction(
    direction: str,
    sender: Sequence[Mapping[str, Any]],
    receiver: Sequence[Mapping[str, Any]],
    profile_height: int,
    profile_fps: float,
    limits: Limits = Limits(),
) -> DirectionOutcome:
    """One direction from the sender's and the receiver's per-second samples."""
    rx = [s for s in _judged(receiver, limits.warmup_s) if isinstance(s.get("in_video"), Mapping)]
    if len(rx) < 2 or float(rx[-1]["t"]) - float(rx[0]["t"]) < limits.min_judged_s:
        return DirectionOutcome(direction, "fails", ("no video arrived after the warm-up",), 0.0)
    first, last = rx[0], rx[-1]
    span = float(last["t"]) - float(first["t"])
    v0, v1 = first["in_video"], last["in_video"]
    a0, a1 = first.get("in_audio"), last.get("in_audio")

    # Per-second frame rates from framesDecoded, and seconds in which no frame came at all: the W3C freeze
    # counter only closes a freeze when the next frame arrives, so a picture that stopped is counted here.
    rates: list[float] = []
    stalled = 0.0
    for a, b in itertools.pairwise(rx):
        dt = float(b["t"]) - float(a["t"])
        frames = _delta(a["in_video"], b["in_video"], "framesDecoded")
        if dt <= 0 or frames is None:
            continue
        rates.append(frames / dt)
        if frames <= 0:
            stalled += dt
    frozen = _delta(v0, v1, "totalFreezesDuration") or 0.0
    freeze_ratio = max(frozen, stalled) / span
    fps = statistics.median(rates) if rates else 0.0
    heights = [int(h) for s in rx if (h := _num(s["in_video"], "frameHeight")) is not None]
    widths = [int(w) for s in rx if (w := _num(s["in_video"], "frameWidth")) is not None]
    height = int(statistics.median(heights)) if heights else None
    width = int(statistics.median(widths)) if widths else None
    height_ratio = None if height is None else height / profile_height
    concealed = _ratio(_delta(a0, a1, "concealedSamples"), _delta(a0, a1, "totalSamplesReceived"))

    def loss(k0: Mapping[str, Any] | None, k1: Mapping[str, Any] | None) -> float | None:
        lost, got = _delta(k0, k1, "packetsLost"), _delta(k0, k1, "packetsReceived")
        return None if lost is None or got is None else _ratio(max(lost, 0.0), max(lost, 0.0) + got)

    jb = _ratio(_delta(v0, v1, "jitterBufferDelay"), _delta(v0, v1, "jitterBufferEmittedCount"))
    rx_bytes = _delta(v0, v1, "bytesReceived")
    tx = _judged(sender, limits.warmup_s)
    reasons_seen = [str(s["out_video"].get("qualityLimitationReason", "none")) for s in tx if "out_video" in s]
    limitation = "none"
    named = [r for r in reasons_seen if r != "none"]
    if named and len(named) >= limits.limitation_share * len(reasons_seen):
        limitation = statistics.mode(named)

    fails: list[str] = []
    degraded: list[str] = []
    if freeze_ratio > limits.fail_freeze_ratio:
        fails.append(f"video frozen {freeze_ratio:.0%} of the time")
    elif freeze_ratio > limits.hold_freeze_ratio:
        degraded.append(f"video frozen {freeze_ratio:.0%} of the time")
    if fps < limits.fail_fps:
        fails.append(f"{fps:.0f} frames per second")
    elif fps < limits.hold_fps_ratio * profile_fps:
        degraded.append(f"{fps:.0f} of {profile_fps:.0f} frames per second")
    if height_ratio is None or height_ratio < limits.fail_height_ratio:
        fails.append(f"picture {height or 0} lines high of the profile's {profile_height}")
    elif height_ratio < limits.hold_height_ratio:
        degraded.append(f"picture {height} lines high of the profile's {profile_height}")
    if concealed is not None and concealed > limits.fail_concealment:
        fails.append(f"{concealed:.0%} of the audio concealed")
    elif concealed is not None and concealed > limits.hold_concealment:
        degraded.append(f"{concealed:.0%} of the audio concealed")
    outcome: Outcome = "fails" if fails else "degraded" if degraded else "holds"
    reasons = fails + degraded  # the failing ones first, then what was merely degraded
    if reasons and limitation != "none":
        reasons.append(f"the sender was limited by {limitation}")
    return DirectionOutcome(
        direction=direction,
        outcome=outcome,
        reasons=tuple(reasons),
        seconds=round(span, 3),
        freeze_ratio=round(freeze_ratio, 4),
        freeze_count=None if (fc := _delta(v0, v1, "freezeCount")) is None else int(fc),
        fps=round(fps, 2),
        width=width,
        height=height,
        height_ratio=None if height_ratio is None else round(height_ratio, 3),
        audio_concealment_ratio=None if concealed is None else round(concealed, 4),
        video_loss_ratio=loss(v0, v1),
        audio_loss_ratio=loss(a0, a1),
        jitter_buffer_ms=None if jb is None else round(jb * 1000, 1),
        kbit=None if rx_bytes is None else round(rx_bytes * 8 / span / 1000, 1),
        limitation=limitation,
    )


def judge_call(
    connected: bool,
    error: str | None,
    setup_s: float | None,
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    profile_height: int,
    profile_fps: float,
    limits: Limits = Limits(),
) -> CallOutcome:
    """Both directions of a call; one that did not connect fails both ways with the reason it gave."""
    if not connected:
        reason = error or "the call did not connect"
        dirs = {d: DirectionOutcome(d, "fails", (reason,), 0.0) for d in DIRECTIONS}
        return CallOutcome(False, reason, setup_s, dirs)
    dirs = {
        d: judge_direction(d, samples.get(tx, ()), samples.get(rx, ()), profile_height, profile_fps, limits)
        for d, (tx, rx) in DIRECTIONS.items()
    }
    return CallOutcome(True, error, setup_s, dirs)
