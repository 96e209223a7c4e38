"""Exposition text of a village's last rehearsal call, in the families agreed with the exporter side of issue 14
(desanet_call_*: outcome, info, the judged figures per direction, setup time, when the call ended; the received
video rate in bytes per second, as exporter/call_metrics.py exports it for promtool's sake), so tests can
feed a real Prometheus the series the village dashboard and `desanet check --prometheus` read. A test serves this
text and lets Prometheus scrape it, as it scrapes the exporter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# family → (type, help); "direction" marks the families with a direction label.
FAMILIES: dict[str, tuple[str, str]] = {
    "desanet_call_outcome": ("gauge", "Last rehearsal call per direction: 0 holds, 1 degraded, 2 fails."),
    "desanet_call_info": ("gauge", "Last rehearsal call's profile and the sender's limitation, per direction."),
    "desanet_call_frames_per_second": ("gauge", "Median received frame rate of the last rehearsal call."),
    "desanet_call_video_height_pixels": ("gauge", "Median received picture height of the last rehearsal call."),
    "desanet_call_freeze_ratio": ("gauge", "Share of the last rehearsal call the received video was frozen."),
    "desanet_call_audio_concealment_ratio": ("gauge", "Share of received audio samples concealed."),
    "desanet_call_video_loss_ratio": ("gauge", "Video packets lost on the wire, NACK-repaired ones included."),
    "desanet_call_jitter_buffer_delay_seconds": ("gauge", "Mean video jitter buffer delay."),
    "desanet_call_video_received_bytes_per_second": ("gauge", "Video received per second, in bytes."),
    "desanet_call_setup_seconds": ("gauge", "Time the last rehearsal call took to connect."),
    "desanet_call_last_timestamp_seconds": ("gauge", "Unix time the last rehearsal call ended."),
}
# A direction's figures, by the family's name after "desanet_call_".
FIGURES = (
    "frames_per_second",
    "video_height_pixels",
    "freeze_ratio",
    "audio_concealment_ratio",
    "video_loss_ratio",
    "jitter_buffer_delay_seconds",
    "video_received_bytes_per_second",
)


@dataclass(frozen=True)
class Direction:
    outcome: int  # 0 holds, 1 degraded, 2 fails
    limitation: str = "none"
    figures: Mapping[str, float] = field(default_factory=dict)  # FIGURES → value; absent when not measured


@dataclass(frozen=True)
class Call:
    village: str
    kecamatan: str
    ended: float  # unix time
    profile: str
    setup_seconds: float | None  # None: the call did not connect
    up: Direction
    down: Direction


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def exposition(calls: Iterable[Call]) -> str:
    """The text format, each family's HELP and TYPE once, then its samples."""
    samples: dict[str, list[str]] = {name: [] for name in FAMILIES}
    for c in calls:
        where = {"village": c.village, "kecamatan": c.kecamatan}
        samples["desanet_call_last_timestamp_seconds"].append(f"{_labels(**where)} {c.ended:.3f}")
        if c.setup_seconds is not None:
            samples["desanet_call_setup_seconds"].append(f"{_labels(**where)} {c.setup_seconds:g}")
        for name, d in (("up", c.up), ("down", c.down)):
            at = {**where, "direction": name}
            samples["desanet_call_outcome"].append(f"{_labels(**at)} {d.outcome}")
            info = _labels(**at, profile=c.profile, limitation=d.limitation)
            samples["desanet_call_info"].append(f"{info} 1")
            for figure, value in d.figures.items():
                assert figure in FIGURES, figure
                samples[f"desanet_call_{figure}"].append(f"{_labels(**at)} {value:g}")
    lines: list[str] = []
    for name, (kind, text) in FAMILIES.items():
        if samples[name]:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{s}" for s in samples[name]]
    return "\n".join(lines) + "\n"
