"""The village dashboard's "Last rehearsal call" row: what a real WebRTC call from the village did, per direction.

The verdict says whether a call *should* hold; a rehearsal call (docs/calls.md) says whether one *did*. The
exporter turns the judged call record (verdict/call_outcome.py) into the `desanet_call_*` families and keeps a
village's series for 24 h after its last call, so every panel here is an instant query of one village's
series and shows "no call" when there is none. Up is the village's camera as the NOC receives it, down the
NOC's as the village receives it.

Colours sit where the outcome changes, read from `verdict.call_outcome.Limits` rather than written again here:
freeze and audio concealment at the hold and fail ratios, frame rate at the fail floor and at the hold share of
the frame rate every shipped profile asks for. The height limits are shares of the call profile's own height,
which Prometheus does not carry, so the height is coloured only where it is degraded (orange) or failing (red)
whatever shipped profile was called: below those shares of the smallest picture a shipped profile asks for.
Above that it stays uncoloured, and the outcome panel says how it was judged against its profile.
"""

from __future__ import annotations

from typing import Any, Final

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import stat
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from desanet.dashboards.panels import (
    AT_RISK_COLOUR,
    NOT_READY_COLOUR,
    Grid,
    coloured_stat,
    higher_is_worse,
    lower_is_worse,
    query,
    steps,
    thresholds_colour,
    value_mappings,
)
from desanet.dashboards.promql import ONE_VILLAGE, VERDICT_COLOUR, sel
from desanet.verdict.call_outcome import OUTCOMES, Limits

LIMITS: Final = Limits()
# The families the row reads (agreed with the exporter side, issue 14; exporter/call_metrics.py defines them).
OUTCOME = "desanet_call_outcome"
INFO = "desanet_call_info"
FPS = "desanet_call_frames_per_second"
HEIGHT = "desanet_call_video_height_pixels"
FREEZE = "desanet_call_freeze_ratio"
CONCEALMENT = "desanet_call_audio_concealment_ratio"
LOSS = "desanet_call_video_loss_ratio"
JITTER_BUFFER = "desanet_call_jitter_buffer_delay_seconds"
BITRATE = "desanet_call_video_received_bytes_per_second"  # promtool wants bytes; shown × 8 in bit/s
LAST = "desanet_call_last_timestamp_seconds"
CALL_METRICS: Final = (OUTCOME, INFO, FPS, HEIGHT, FREEZE, CONCEALMENT, LOSS, JITTER_BUFFER, BITRATE, LAST)

# The exporter's desanet_call_outcome values: holds 0, degraded 1, fails 2 (OUTCOMES' order).
OUTCOME_VALUE: Final = {name: i for i, name in enumerate(OUTCOMES)}
OUTCOME_COLOUR: Final = {"holds": VERDICT_COLOUR[0], "degraded": AT_RISK_COLOUR, "fails": NOT_READY_COLOUR}
# Every shipped profile calls at 30 fps and at 360 lines or more (district/model.py, inventory.yaml;
# tests/test_dashboards.py compares these with every profile), so these limits hold for each of them.
PROFILE_FPS: Final = 30
SMALLEST_PROFILE_HEIGHT: Final = 360
FPS_STEPS: Final = (LIMITS.hold_fps_ratio * PROFILE_FPS, LIMITS.fail_fps)  # (orange below, red below)
HEIGHT_STEPS: Final = (
    LIMITS.hold_height_ratio * SMALLEST_PROFILE_HEIGHT,
    LIMITS.fail_height_ratio * SMALLEST_PROFILE_HEIGHT,
)
NO_CALL: Final = "no rehearsal call in the last 24 h"
NO_FIGURE: Final = "—"
V = ONE_VILLAGE


def per_direction(metric: str, scale: str = "") -> str:
    """One value per direction (times `scale`, e.g. " * 8"); an HA pair's twin series count once."""
    return f"max by (direction) ({metric}{sel(V)}){scale}"


def _stat(title: str, description: str, expr: str, legend: str, *, no_value: str = NO_FIGURE) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .with_target(query(expr, "A", legend, instant=True))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .no_value(no_value)
    )


def figure(title: str, description: str, metric: str, unit: str, colours: Any = None, scale: str = "") -> stat.Panel:
    """A figure of the last call per direction, coloured at its outcome limits or plain."""
    p = (
        _stat(title, description, per_direction(metric, scale), "{{direction}}")
        .unit(unit)
        .color_mode(cm.BigValueColorMode.VALUE)
    )
    return coloured_stat(p, colours)


def outcome_mappings() -> list[dm.ValueMapping]:
    return value_mappings({value: (name, OUTCOME_COLOUR[name]) for name, value in OUTCOME_VALUE.items()})


def outcome_thresholds() -> Any:
    return steps(*((None if v == 0 else v, OUTCOME_COLOUR[name]) for name, v in OUTCOME_VALUE.items()))


def height_thresholds() -> Any:
    """Red below the fail share, orange below the hold share of the smallest shipped profile's height, and no
    colour above: there the judgement depends on the profile called, which the outcome panel gives."""
    degraded, fails = HEIGHT_STEPS
    return steps((None, NOT_READY_COLOUR), (fails, AT_RISK_COLOUR), (degraded, "text"))


def add_row(g: Grid) -> None:
    """The row: outcome, when, what limited the sender, the judged figures, then the wire's figures."""
    g.row("Last rehearsal call")
    outcome = (
        _stat(
            "Outcome",
            "The last rehearsal call per direction (up: the village's camera at the NOC; down: the NOC's in the "
            "village): holds, degraded or fails, judged by verdict/call_outcome.py against the call's profile. "
            "The worst figure decides; a call that did not connect fails both ways. Series are kept 24 h after "
            "a call.",
            per_direction(OUTCOME),
            "{{direction}}",
            no_value=NO_CALL,
        )
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .mappings(outcome_mappings())
        .thresholds(outcome_thresholds())
        .color_scheme(thresholds_colour())
    )
    g.add(outcome, 5, 4)
    last = (
        _stat(
            "Last call",
            "When the last rehearsal call ended.",
            f"max({LAST}{sel(V)}) * 1000",
            "ended",
            no_value=NO_CALL,
        )
        .unit("dateTimeFromNow")
        .color_mode(cm.BigValueColorMode.NONE)
    )
    g.add(last, 3, 4)
    limited = (
        _stat(
            "Sender limited by",
            "The sender's dominant qualityLimitationReason per direction (bandwidth, cpu, other, or none) and "
            "the profile the call was made with.",
            f"max by (direction, limitation, profile) ({INFO}{sel(V)})",
            "{{direction}}: {{limitation}} · {{profile}}",
        )
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.NAME)
    )
    g.add(limited, 4, 4)
    fps_hold, fps_fail = FPS_STEPS
    g.add(
        figure(
            "Frame rate",
            f"Median frames decoded per second. Red below {fps_fail:g} (motion reads as stills), orange below "
            f"{LIMITS.hold_fps_ratio:.0%} of the profile's {PROFILE_FPS} fps.",
            FPS,
            "fps",
            lower_is_worse(fps_hold, fps_fail),
        ).decimals(0),
        3,
        4,
    )
    g.add(
        figure(
            "Received height",
            f"Median lines of the received picture, judged against the profile's own height (degraded below "
            f"{LIMITS.hold_height_ratio:g} of it, fails below {LIMITS.fail_height_ratio:g}). Prometheus does not "
            f"know that height, so only what holds for every shipped profile is coloured: under "
            f"{HEIGHT_STEPS[0]:g} lines degraded or worse (orange), under {HEIGHT_STEPS[1]:g} failing (red).",
            HEIGHT,
            "none",
            height_thresholds(),
        ).decimals(0),
        3,
        4,
    )
    g.add(
        figure(
            "Frozen",
            f"Share of the judged time the picture stood still (W3C freezes, and seconds with no frame). Orange "
            f"above {LIMITS.hold_freeze_ratio:.0%}, red above {LIMITS.fail_freeze_ratio:.0%}.",
            FREEZE,
            "percentunit",
            higher_is_worse(LIMITS.hold_freeze_ratio, LIMITS.fail_freeze_ratio),
        ).decimals(1),
        3,
        4,
    )
    g.add(
        figure(
            "Audio concealed",
            f"Share of received audio samples the decoder had to invent. Orange above "
            f"{LIMITS.hold_concealment:.0%}, red above {LIMITS.fail_concealment:.0%}.",
            CONCEALMENT,
            "percentunit",
            higher_is_worse(LIMITS.hold_concealment, LIMITS.fail_concealment),
        ).decimals(1),
        3,
        4,
    )
    g.add(
        figure(
            "Video loss on the wire",
            "Video packets lost per direction, including those NACK repaired: it does not decide the outcome by "
            "itself (what hurts shows as freezes, frame rate or concealment).",
            LOSS,
            "percentunit",
        ).decimals(1),
        8,
        4,
    )
    g.add(
        figure(
            "Jitter buffer delay",
            "Mean time a video frame waited in the receiver's jitter buffer: how much delay the receiver added to "
            "smooth out the path's jitter.",
            JITTER_BUFFER,
            "s",
        ),
        8,
        4,
    )
    g.add(
        figure(
            "Received video bitrate",
            "Video bits per second that arrived over the judged time (the exporter's bytes per second × 8).",
            BITRATE,
            "bps",
            scale=" * 8",
        ),
        8,
        4,
    )
