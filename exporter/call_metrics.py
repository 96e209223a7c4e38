"""The rehearsal calls' metrics: each rehearsed village's last judged call (verdict/call_outcome.py) for a day,
and the exporter's counts of calls and refusals. Names as agreed for the dashboards and `check --prometheus`,
but one: promtool rejects `_bits_` in a name, so the received video rate is
`desanet_call_video_received_bytes_per_second` (bytes, as every rate desanet exports; dashboards multiply by 8).

A village's series exist only for KEEP_SECONDS after its last rehearsal, so the 216 villages not rehearsed
today add nothing to the lean per-village budget (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from desanet.exporter.exposition import FamilySpec, LineBuilder, labels, render_families
from desanet.verdict.call_outcome import OUTCOMES, CallOutcome

F = FamilySpec
KEEP_SECONDS = 86400.0  # a rehearsal's per-village series, after the call ended
REFUSAL_REASONS = ("unknown_village", "session", "budget", "uplink_busy", "busy")

OUTCOME = F(
    "desanet_call_outcome",
    "gauge",
    "The last rehearsal call per direction: 0 holds, 1 degraded, 2 fails (a call that did not connect: 2 both ways).",
)
INFO = F(
    "desanet_call_info",
    "gauge",
    "The last rehearsal call's profile and each direction's sender limitation (bandwidth, cpu, other, none); 1.",
)
FPS = F("desanet_call_frames_per_second", "gauge", "Median received frame rate of the last rehearsal call.")
HEIGHT = F("desanet_call_video_height_pixels", "gauge", "Median received picture height of the last rehearsal call.")
FREEZE = F("desanet_call_freeze_ratio", "gauge", "Share of the judged time the received video was frozen (0-1).")
CONCEALMENT = F("desanet_call_audio_concealment_ratio", "gauge", "Share of received audio samples concealed (0-1).")
LOSS = F(
    "desanet_call_video_loss_ratio", "gauge", "Video packets lost on the wire (0-1), including what NACK repaired."
)
JITTER_BUFFER = F(
    "desanet_call_jitter_buffer_delay_seconds", "gauge", "Mean time a received video frame waited in the jitter buffer."
)
RATE = F(
    "desanet_call_video_received_bytes_per_second",
    "gauge",
    "Video received per second over the judged time, bytes per second (multiply by 8 for bit/s).",
)
SETUP = F(
    "desanet_call_setup_seconds", "gauge", "How long the last rehearsal call took to connect (absent if it did not)."
)
LAST = F("desanet_call_last_timestamp_seconds", "gauge", "When the village's last rehearsal call ended.")
CALLS = F("desanet_rehearsal_calls_total", "counter", "Rehearsal calls judged, by their worse direction's outcome.")
REFUSALS = F(
    "desanet_rehearsal_refusals_total",
    "counter",
    "Rehearsals refused: unknown_village, session, budget (daily test budget or ledger), uplink_busy, busy "
    "(another call on the host).",
)
SPECS: list[FamilySpec] = [
    OUTCOME,
    INFO,
    FPS,
    HEIGHT,
    FREEZE,
    CONCEALMENT,
    LOSS,
    JITTER_BUFFER,
    RATE,
    SETUP,
    LAST,
    CALLS,
    REFUSALS,
]


@dataclass(frozen=True)
class CallRecord:
    """One judged rehearsal call, as the metrics need it."""

    village: str
    kecamatan: str
    profile: str
    ended: float  # unix time
    outcome: CallOutcome


def render(
    records: Iterable[CallRecord],
    calls: Mapping[str, int],
    refusals: Mapping[str, int],
    now: float,
    villages: Collection[str] | None = None,
) -> str:
    """Every family's lines: the records of the last KEEP_SECONDS (of `villages` still in the inventory, when
    given), then both counters with every label value (0 included, so rate() has a start)."""
    built: list[LineBuilder] = []
    for r in sorted(records, key=lambda r: r.village):
        if now - r.ended >= KEEP_SECONDS or (villages is not None and r.village not in villages):
            continue
        b = LineBuilder(labels({"village": r.village, "kecamatan": r.kecamatan}))
        o = r.outcome
        for direction, d in o.directions.items():
            dl = labels({"direction": direction})
            b.sample(OUTCOME, OUTCOMES.index(d.outcome), dl)
            b.sample(INFO, 1, labels({"profile": r.profile, "direction": direction, "limitation": d.limitation}))
            b.sample(FPS, d.fps, dl)
            b.sample(HEIGHT, d.height, dl)
            b.sample(FREEZE, d.freeze_ratio, dl)
            b.sample(CONCEALMENT, d.audio_concealment_ratio, dl)
            b.sample(LOSS, d.video_loss_ratio, dl)
            b.sample(JITTER_BUFFER, None if d.jitter_buffer_ms is None else round(d.jitter_buffer_ms / 1000, 6), dl)
            b.sample(RATE, None if d.kbit is None else d.kbit * 1000 / 8, dl)
        if o.connected:
            b.sample(SETUP, o.setup_s)
        b.sample(LAST, r.ended)
        built.append(b)
    totals = LineBuilder("")
    for outcome in OUTCOMES:
        totals.sample(CALLS, calls.get(outcome, 0), labels({"outcome": outcome}))
    for reason in REFUSAL_REASONS:
        totals.sample(REFUSALS, refusals.get(reason, 0), labels({"reason": reason}))
    built.append(totals)
    return render_families(SPECS, built)
