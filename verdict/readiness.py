"""Will this village's video call hold up? Profile thresholds → verdict, limiting factor, MOS.

Pure: no I/O, no clocks, no Prometheus, so the exporter, the technician's check and the tests share one
judgement. Inputs and outputs are SI (seconds, ratios 0-1, bits per second); profiles speak ms, % and Mbit/s
and are converted here. docs/readiness.md gives the reasoning and sources; the short form:

- rtt, jitter, loss: pass up to the profile's max_*, warn up to fail_*, fail beyond. The shipped figures were
  calibrated against real calls through the lab (bench/verdict, docs/readiness.md); a fail_* below its max_* is
  raised to it.
- burst loss: pass up to 10 % in any 200 ms (Teams, client → edge [S20]), fail beyond 50 % (calibrated).
- down, up: fail below half the profile's minimum (calibrated: calls adapted above it), warn below
  1.25 × minimum (a margin we chose, not a source).
- headroom (interface capacity minus use, no direction): like bandwidth, against the larger minimum.
- 100 % loss fails whatever the profile says.

At a threshold a factor takes the better state. Unmeasured factors are listed but never change the verdict;
nothing measured at all is "unknown".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Final, Literal

from desanet.district import Profile

Factor = Literal["rtt", "jitter", "loss", "burst_loss", "down", "up", "headroom"]
State = Literal["pass", "warn", "fail", "unmeasured"]
Verdict = Literal["ready", "at_risk", "not_ready", "unknown"]
Unit = Literal["seconds", "ratio", "bits_per_second"]
# Machine-readable why, for the CLI's words and for alert labels.
Reason = Literal[
    "within",  # pass
    "above_limit",  # warn: above max_* (or the burst limit)
    "above_fail",  # fail: above fail_* (or the burst fail)
    "total_loss",  # fail: nothing came back
    "below_margin",  # warn: at or above the not-ready line (half the minimum) but under the margin
    "below_minimum",  # fail: under the not-ready line, half the minimum (BANDWIDTH_FAIL_FRACTION)
    "not_measured",  # unmeasured
]

FACTORS: Final[tuple[Factor, ...]] = ("rtt", "jitter", "loss", "burst_loss", "down", "up", "headroom")

BURST_LIMIT_RATIO: Final = 0.10  # Teams: < 10 % in any 200 ms, client → Microsoft edge [S20]
BURST_FAIL_RATIO: Final = 0.50  # 100 of 200 ms lost; 0.30 (G.711 PLC's 60 ms) failed calls Opus held: docs/readiness.md
BANDWIDTH_MARGIN: Final = 1.25  # warn below 1.25 × minimum: one throughput test is one sample of a moving link
# Not ready only below half the minimum: between, real calls adapted (a lower resolution: degraded), docs/readiness.md.
BANDWIDTH_FAIL_FRACTION: Final = 0.5

# E-model reduced to delay and loss (Cole & Rosenbluth 2001, anchors §7.5), G.711 fit.
R0: Final = 94.2
DELAY_KNEE_MS: Final = 177.3
CODEC_DELAY_MS: Final = 10.0  # packetisation/protocol allowance, as in PingPlotter's widely copied formula
JITTER_BUFFER_FACTOR: Final = 2.0  # a de-jitter buffer about twice the jitter, same source

_RANK: Final[dict[State, int]] = {"unmeasured": -1, "pass": 0, "warn": 1, "fail": 2}
_VERDICT: Final[dict[State, Verdict]] = {"pass": "ready", "warn": "at_risk", "fail": "not_ready"}
_REASONS_UP: Final[dict[State, Reason]] = {"pass": "within", "warn": "above_limit", "fail": "above_fail"}
_REASONS_DOWN: Final[dict[State, Reason]] = {"pass": "within", "warn": "below_margin", "fail": "below_minimum"}


@dataclass(frozen=True, slots=True)
class Measurements:
    """What the probes saw for one village; None means not measured (not zero)."""

    rtt_p95_seconds: float | None = None
    jitter_seconds: float | None = None  # RFC 3550-style, over RTTs or one-way delays
    loss_ratio: float | None = None
    burst_loss_ratio: float | None = None  # worst loss in any 200 ms, probes.stats.burst_loss
    down_bits_per_second: float | None = None  # toward the village
    up_bits_per_second: float | None = None  # toward the NOC
    interface_headroom_bits_per_second: float | None = None  # capacity minus current use, from SNMP

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, bool) or not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{f.name} = {v!r}: need a finite number >= 0 or None")
            if f.name.endswith("_ratio") and v > 1:
                raise ValueError(f"{f.name} = {v!r}: a ratio is at most 1")

    def measured(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass(frozen=True, slots=True)
class Check:
    """One factor against its thresholds.

    `limit` is where pass ends and `fail_limit` where fail begins, both in `unit`. `higher_is_worse` says
    which way (RTT: True; bandwidth: False). `excess` is how far beyond the threshold that set the state,
    relative to it: past `fail_limit` for fail, past `limit` otherwise, so it is <= 0 for a pass (how close
    to warning) and None when unmeasured; math.inf for total loss or a zero threshold exceeded.
    """

    factor: Factor
    state: State
    reason: Reason
    value: float | None
    unit: Unit
    limit: float
    fail_limit: float
    higher_is_worse: bool
    excess: float | None


@dataclass(frozen=True, slots=True)
class Readiness:
    """The verdict for one village and profile. `limiting` drives the verdict (for ready: the factor nearest
    its limit); None only when unknown. `mos` is None unless RTT, jitter and loss were all measured (or loss
    was total)."""

    profile: str
    verdict: Verdict
    ready: bool
    checks: tuple[Check, ...]
    limiting: Factor | None
    mos: float | None

    def __post_init__(self) -> None:
        if self.ready != (self.verdict == "ready"):
            raise ValueError("ready must equal verdict == 'ready'")

    def check(self, factor: Factor) -> Check:
        return next(c for c in self.checks if c.factor == factor)


# ---------------------------------------------------------------------------------------------- checks
def _relative(value: float, threshold: float, higher_is_worse: bool) -> float:
    diff = value - threshold if higher_is_worse else threshold - value
    if threshold == 0:
        return 0.0 if diff <= 0 else math.inf
    return diff / threshold


def _judge(
    factor: Factor, value: float | None, unit: Unit, limit: float, fail_limit: float, higher_is_worse: bool
) -> Check:
    """Pass within `limit`, warn up to `fail_limit`, fail beyond; a threshold itself counts as the better side."""
    if value is None:
        return Check(factor, "unmeasured", "not_measured", None, unit, limit, fail_limit, higher_is_worse, None)
    if higher_is_worse:
        fail_limit = max(fail_limit, limit)
        state: State = "fail" if value > fail_limit else "warn" if value > limit else "pass"
    else:
        fail_limit = min(fail_limit, limit)
        state = "fail" if value < fail_limit else "warn" if value < limit else "pass"
    reason = (_REASONS_UP if higher_is_worse else _REASONS_DOWN)[state]
    excess = _relative(value, fail_limit if state == "fail" else limit, higher_is_worse)
    return Check(factor, state, reason, value, unit, limit, fail_limit, higher_is_worse, excess)


@dataclass(frozen=True, slots=True)
class Limit:
    """Where a factor's verdict changes, in SI units: past `at_risk` it is at risk, past `not_ready` not ready
    ("past" is above when `higher_is_worse`, below otherwise). `not_ready` is never on the better side of
    `at_risk` (a profile's fail_* below its max_* is raised to it)."""

    factor: Factor
    at_risk: float
    not_ready: float
    higher_is_worse: bool
    unit: Unit


def limits(profile: Profile) -> tuple[Limit, ...]:
    """Every factor's two boundaries for `profile`, in FACTORS order: what `checks` judges against, and what
    the exporter publishes once per profile so rules and dashboards compare figures with the same numbers."""
    down_min = profile.min_down_mbit * 1e6
    up_min = profile.min_up_mbit * 1e6
    need = max(down_min, up_min)
    raw: tuple[tuple[Factor, float, float, bool, Unit], ...] = (
        ("rtt", profile.max_rtt_ms / 1000, profile.fail_rtt_ms / 1000, True, "seconds"),
        ("jitter", profile.max_jitter_ms / 1000, profile.fail_jitter_ms / 1000, True, "seconds"),
        ("loss", profile.max_loss_pct / 100, profile.fail_loss_pct / 100, True, "ratio"),
        ("burst_loss", BURST_LIMIT_RATIO, BURST_FAIL_RATIO, True, "ratio"),
        ("down", down_min * BANDWIDTH_MARGIN, down_min * BANDWIDTH_FAIL_FRACTION, False, "bits_per_second"),
        ("up", up_min * BANDWIDTH_MARGIN, up_min * BANDWIDTH_FAIL_FRACTION, False, "bits_per_second"),
        ("headroom", need * BANDWIDTH_MARGIN, need * BANDWIDTH_FAIL_FRACTION, False, "bits_per_second"),
    )
    return tuple(
        Limit(f, at_risk, max(fail, at_risk) if worse_up else min(fail, at_risk), worse_up, unit)
        for f, at_risk, fail, worse_up, unit in raw
    )


def checks(m: Measurements, profile: Profile) -> tuple[Check, ...]:
    """Every factor, in FACTORS order, measured or not."""
    values: dict[Factor, float | None] = {
        "rtt": m.rtt_p95_seconds,
        "jitter": m.jitter_seconds,
        "loss": m.loss_ratio,
        "burst_loss": m.burst_loss_ratio,
        "down": m.down_bits_per_second,
        "up": m.up_bits_per_second,
        "headroom": m.interface_headroom_bits_per_second,
    }
    out: list[Check] = []
    for lim in limits(profile):
        c = _judge(lim.factor, values[lim.factor], lim.unit, lim.at_risk, lim.not_ready, lim.higher_is_worse)
        if lim.factor == "loss" and m.loss_ratio is not None and m.loss_ratio >= 1.0:
            c = Check("loss", "fail", "total_loss", 1.0, "ratio", c.limit, c.fail_limit, True, math.inf)
        out.append(c)
    return tuple(out)


def limiting_factor(cs: tuple[Check, ...] | list[Check]) -> Factor | None:
    """Worst state first, then the largest relative excess, then FACTORS order; None if nothing measured."""
    ranked = [
        (_RANK[c.state], c.excess, -FACTORS.index(c.factor), c.factor)
        for c in cs
        if c.state != "unmeasured" and c.excess is not None
    ]
    return max(ranked)[3] if ranked else None


# ---------------------------------------------------------------------------------------------- MOS
def effective_delay_ms(rtt_seconds: float, jitter_seconds: float) -> float:
    """One-way mouth-to-ear delay d for the E-model: RTT/2 + 2 × jitter (de-jitter buffer) + 10 ms codec.

    Half the RTT assumes a symmetric path. Buffer and codec allowances follow PingPlotter's formula (copied
    by NetBeez and others); there the sum feeds a simplified curve, here Cole & Rosenbluth's.
    """
    return rtt_seconds * 1000 / 2 + JITTER_BUFFER_FACTOR * jitter_seconds * 1000 + CODEC_DELAY_MS


def r_factor(delay_ms: float, loss_ratio: float) -> float:
    """Cole & Rosenbluth: R = 94.2 − 0.024 d − 0.11 (d − 177.3) H(d − 177.3) − 30 ln(1 + 15 e) (G.711)."""
    delay_impairment = 0.024 * delay_ms + 0.11 * max(0.0, delay_ms - DELAY_KNEE_MS)
    loss_impairment = 30.0 * math.log1p(15.0 * loss_ratio)
    return R0 - delay_impairment - loss_impairment


def mos_from_r(r: float) -> float:
    """G.107 R → MOS, clamped to 1..4.5 (the cubic dips just below 1 for R under ~6.5)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return min(4.5, max(1.0, 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)))


def mos(rtt_seconds: float, jitter_seconds: float, loss_ratio: float) -> float:
    """Estimated MOS of a G.711 call over the measured path alone; 1.0 when nothing gets through.

    The rest of the call's path (uplink, internet, the far side) only lowers it: read it as a ceiling.
    """
    if loss_ratio >= 1.0:
        return 1.0
    return mos_from_r(r_factor(effective_delay_ms(rtt_seconds, jitter_seconds), loss_ratio))


# ---------------------------------------------------------------------------------------------- verdict
def assess(m: Measurements, profile: Profile) -> Readiness:
    """The verdict: not_ready on any fail, at_risk on any warn, ready if all measured pass, else unknown."""
    cs = checks(m, profile)
    measured = [c for c in cs if c.state != "unmeasured"]
    verdict: Verdict = "unknown"
    if measured:
        verdict = _VERDICT[max((c.state for c in measured), key=_RANK.__getitem__)]
    score: float | None = None
    if m.loss_ratio is not None and m.loss_ratio >= 1.0:
        score = 1.0
    elif m.rtt_p95_seconds is not None and m.jitter_seconds is not None and m.loss_ratio is not None:
        score = mos(m.rtt_p95_seconds, m.jitter_seconds, m.loss_ratio)
    return Readiness(
        profile=profile.name,
        verdict=verdict,
        ready=verdict == "ready",
        checks=cs,
        limiting=limiting_factor(cs),
        mos=score,
    )
