"""lab/delay_model.py (and the emulator's per-direction record) without a network or a clock.

The release rule is checked against a brute-force reference written from its definition (a FIFO releases packet
i at the latest arrival + drawn delay among packets 0..i) and the reordering count against RFC 4737's words
(a packet is reordered when a packet that arrived after it left before it), both over random traffic. The
distributions are held to their CDFs by a Kolmogorov-Smirnov statistic (hand-written: SciPy is not a
dependency) at α = 0.001, whose critical value is sqrt(ln(2/α)/2)/sqrt(n) = 1.9495/sqrt(n) for n draws; the
pareto shapes are also compared with netem's table formulas (iproute2 netem/pareto.c, paretonormal.c)
re-derived here from their description in quantile space, independently of the module's normal-score form.
Every random source is seeded, so a run is repeatable; the bounds are set so that a correct implementation
fails about one seed in a thousand or less.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desanet.cli.lab import DelayDistribution
from desanet.lab.delay_model import (
    DISTRIBUTIONS,
    DelayLine,
    DelaySpec,
    deviate,
    deviate_cdf,
    gaussian_correlation,
    release_time,
)
from desanet.lab.emulator import Direction, spec_from_state

KS_C_0001 = math.sqrt(math.log(2 / 0.001) / 2)  # 1.9495: the asymptotic KS critical value at α = 0.001


def ks_statistic(sample: Sequence[float], cdf: Callable[[float], float]) -> float:
    """The one-sample Kolmogorov-Smirnov statistic sup |F_n(x) - F(x)|, exact also where F has atoms (the
    clamp at 0, pareto's saturated tail) and the sample has ties: between two sample points F_n is flat and F
    rises, so the sup is at F(x) and at the left limit F(x-) of each distinct sample point x."""
    xs = sorted(sample)
    n = len(xs)
    d = 0.0
    i = 0
    while i < n:
        x = xs[i]
        j = i
        while j < n and xs[j] == x:
            j += 1
        d = max(d, abs(j / n - cdf(x)), abs(i / n - cdf(math.nextafter(x, -math.inf))))
        i = j
    return d


def ks_critical(n: int) -> float:
    return KS_C_0001 / math.sqrt(n)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (no ties in continuous draws)."""

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    return statistics.correlation(ranks(xs), ranks(ys))


def simulate(arrivals: Sequence[float], draws: Sequence[float], keep_order: bool) -> list[float]:
    """Release times from the module's rule, one packet after another."""
    out: list[float] = []
    last = -math.inf
    for a, d in zip(arrivals, draws, strict=True):
        due = release_time(a, d, last, keep_order)
        last = max(last, due)
        out.append(due)
    return out


# ---------------------------------------------------------------------------------------------- release rule
def test_release_rule_by_hand() -> None:
    # A packet that drew less than the one ahead of it waits for it in a FIFO, and overtakes it with reorder.
    assert release_time(1.0, 0.010, 1.050, keep_order=True) == 1.050
    assert release_time(1.0, 0.010, 1.050, keep_order=False) == 1.010
    # One that drew more, or came later than the previous release, goes at its own time either way.
    assert release_time(1.0, 0.080, 1.050, keep_order=True) == 1.080
    assert release_time(1.0, 0.080, 1.050, keep_order=False) == 1.080
    assert release_time(2.0, 0.0, 1.050, keep_order=True) == 2.0
    # The first packet of a direction has nothing ahead of it.
    assert release_time(5.0, 0.02, -math.inf, keep_order=True) == 5.02


arrivals_and_draws = st.lists(
    st.tuples(st.floats(0, 0.05, allow_nan=False), st.floats(0, 0.2, allow_nan=False)), min_size=1, max_size=60
)


@settings(max_examples=400, deadline=None)
@given(arrivals_and_draws)
def test_fifo_release_is_the_running_max_and_never_reorders(gaps_draws: list[tuple[float, float]]) -> None:
    arrivals = list(itertools.accumulate(g for g, _ in gaps_draws))
    draws = [d for _, d in gaps_draws]
    got = simulate(arrivals, draws, keep_order=True)
    # The reference, straight from the definition: no earlier than any packet ahead of it, else its own due.
    for i, r in enumerate(got):
        assert r == max(a + d for a, d in zip(arrivals[: i + 1], draws[: i + 1], strict=True))
        assert r >= arrivals[i] + draws[i]  # the applied delay is never less than the drawn one
    assert got == sorted(got)
    # independent releases are each packet's own due time
    assert simulate(arrivals, draws, keep_order=False) == [a + d for a, d in zip(arrivals, draws, strict=True)]


def _run_line(line: DelayLine, arrivals: Sequence[float], rng: random.Random) -> tuple[list[int], list[bool]]:
    """Admit packets, release them in due order (ties in admission order, as the emulator's heap does)."""
    admitted = [line.admit(a, rng) for a in arrivals]
    order = sorted(range(len(admitted)), key=lambda i: (admitted[i][2], i))
    flags = [line.release(admitted[i][0]) for i in order]
    return order, flags


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0, 0.02, allow_nan=False), min_size=1, max_size=80),
    st.integers(0, 2**32 - 1),
    st.sampled_from(DISTRIBUTIONS),
    st.floats(0, 1),
    st.booleans(),
)
def test_reordered_count_matches_rfc4737(
    gaps: list[float], seed: int, distribution: str, correlation: float, reorder: bool
) -> None:
    arrivals = list(itertools.accumulate(gaps))
    line = DelayLine(DelaySpec(0.05, 0.04, distribution, correlation, reorder))
    order, flags = _run_line(line, arrivals, random.Random(seed))
    # RFC 4737: reordered if some packet that arrived after it left before it.
    expected = [any(later > packet for later in order[:pos]) for pos, packet in enumerate(order)]
    assert flags == expected
    assert line.reordered == sum(expected)
    if not reorder:
        assert line.reordered == 0 and order == sorted(order)


def test_reorder_brings_back_overtaking_and_fifo_removes_it() -> None:
    """Packets 2 ms apart with ±10 ms uniform jitter: independent releases reorder most of them; a FIFO none."""
    arrivals = [i * 0.002 for i in range(500)]
    fifo = DelayLine(DelaySpec(0.02, 0.01))
    _run_line(fifo, arrivals, random.Random(1))
    iid = DelayLine(DelaySpec(0.02, 0.01, reorder=True))
    _run_line(iid, arrivals, random.Random(1))
    assert fifo.reordered == 0
    assert iid.reordered > 200, iid.reordered


def test_fifo_applied_delay_equals_drawn_when_spaced_beyond_the_spread() -> None:
    line = DelayLine(DelaySpec(0.02, 0.005))
    rng = random.Random(2)
    for i in range(1000):
        arrival = i * 0.0101  # wider than the 10 ms spread
        _n, drawn, due = line.admit(arrival, rng)
        assert due == arrival + drawn


# ---------------------------------------------------------------------------------------------- distributions
def test_cli_offers_exactly_the_model_distributions() -> None:
    assert [d.value for d in DelayDistribution] == list(DISTRIBUTIONS)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_standardised_deviate_has_the_promised_mean_and_spread(distribution: str) -> None:
    """Mean 0 and sd 1 (uniform: on [-1, 1], sd 1/sqrt 3), by a midpoint rule over 200,000 quantiles.

    The grid is in quantile space u, the module's own moments are in normal-score space: two routes."""
    n = 200_000
    xs = [deviate(distribution, NormalDist().inv_cdf((k + 0.5) / n)) for k in range(n)]
    sd = 1 / math.sqrt(3) if distribution == "uniform" else 1.0
    # the midpoint rule misses the last 1/(2n) of each tail: about 1e-4 of the variance for pareto-normal
    assert abs(statistics.fmean(xs)) < 2e-3
    assert abs(statistics.pstdev(xs) / sd - 1) < 5e-3
    assert xs == sorted(xs)  # monotone in the normal score: the CDF inversion and the copula rely on it


def _netem_pareto(u: float) -> float:
    """netem/pareto.c's entry at quantile u, in table units of one sigma: (4/3)(x - 1.5), x = (1-u)^(-1/3),
    saturating at the largest int16 entry, 32767/8192."""
    return min(4 / 3 * ((1 - u) ** (-1 / 3) - 1.5), 32767 / 8192)


def _netem_paretonormal(u: float) -> float:
    """netem/paretonormal.c's entry at quantile u: a quarter of the normal quantile, three quarters Pareto."""
    return (NormalDist().inv_cdf(u) + 3 * _netem_pareto(u)) / 4


@pytest.mark.parametrize(("distribution", "netem"), [("pareto", _netem_pareto), ("pareto-normal", _netem_paretonormal)])
def test_pareto_shapes_are_netems_tables_recentred(distribution: str, netem: Callable[[float], float]) -> None:
    """At every 1/4096 quantile, the module's deviate is netem's table value, shifted and scaled by constants."""
    us = [(k + 0.5) / 4096 for k in range(4096)]
    ours = [deviate(distribution, NormalDist().inv_cdf(u)) for u in us]
    theirs = [netem(u) for u in us]
    # ours = (theirs - m) / s for one (m, s): fit on two points, then check them all
    s = (theirs[-100] - theirs[100]) / (ours[-100] - ours[100])
    m = theirs[100] - s * ours[100]
    assert 0.8 < s < 0.85  # netem's pareto-normal spreads 0.835 sigma, its pareto 0.821 sigma
    for u, a, b in zip(us, ours, theirs, strict=True):
        assert abs(a * s + m - b) < 1e-9, (u, a, b)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_drawn_delays_follow_the_asked_cdf(distribution: str) -> None:
    """20,000 independent draws of 40 ms ± 5 ms against DelaySpec.cdf: KS below 1.9495/sqrt(n) = 0.0138."""
    spec = DelaySpec(0.040, 0.005, distribution)
    line = DelayLine(spec)
    rng = random.Random(f"ks-{distribution}")
    draws = [line.draw(rng) for _ in range(20_000)]
    assert ks_statistic(draws, spec.cdf) < ks_critical(len(draws))
    # mean: 40 ms within 5 standard errors (sd/sqrt(n) = 0.035 ms; uniform's sd is 5/sqrt(3) ms)
    assert abs(statistics.fmean(draws) - 0.040) < 5 * 0.005 / math.sqrt(len(draws))


@pytest.mark.parametrize("distribution", ["normal", "pareto-normal"])
def test_the_ks_check_tells_distributions_apart(distribution: str) -> None:
    """The same statistic must reject the wrong shape, or the lab test that uses it would prove nothing."""
    spec = DelaySpec(0.040, 0.005, distribution)
    other = DelaySpec(0.040, 0.005, "uniform" if distribution == "normal" else "normal")
    line = DelayLine(other)
    rng = random.Random(7)
    draws = [line.draw(rng) for _ in range(2000)]
    assert ks_statistic(draws, spec.cdf) > ks_critical(len(draws))


def test_cdf_inverts_the_deviate() -> None:
    for distribution in DISTRIBUTIONS:
        for z in [x / 10 for x in range(-50, 23)]:  # below where the pareto term saturates (z = 2.29)
            assert abs(deviate_cdf(distribution, deviate(distribution, z)) - NormalDist().cdf(z)) < 1e-9
    # pareto's saturated tail is an atom: the CDF reaches 1 exactly at its largest value
    top = deviate("pareto", 10.0)
    assert deviate_cdf("pareto", top) == 1.0
    assert deviate_cdf("pareto", top - 1e-6) < 0.99


def test_negative_draws_apply_as_zero() -> None:
    """Normal with sd = the delay: 15.9 % of draws fall below 0 and apply as 0 (netem does the same)."""
    spec = DelaySpec(0.010, 0.010, "normal")
    line = DelayLine(spec)
    rng = random.Random(3)
    draws = [line.draw(rng) for _ in range(20_000)]
    assert min(draws) == 0.0
    zero = sum(1 for d in draws if d == 0) / len(draws)
    assert abs(zero - NormalDist().cdf(-1)) < 0.01  # 5 binomial standard errors (0.0026)
    assert spec.cdf(0.0) == pytest.approx(NormalDist().cdf(-1)) and spec.cdf(-1e-9) == 0.0
    assert ks_statistic(draws, spec.cdf) < ks_critical(len(draws))


def test_no_jitter_is_the_constant_delay() -> None:
    line = DelayLine(DelaySpec(0.02, 0.0, "pareto-normal", 0.5))
    rng = random.Random(0)
    assert {line.draw(rng) for _ in range(100)} == {0.02}
    assert DelaySpec(0.02).cdf(0.0199) == 0.0 and DelaySpec(0.02).cdf(0.02) == 1.0


# ---------------------------------------------------------------------------------------------- correlation
def test_gaussian_correlation_endpoints_and_monotone() -> None:
    assert gaussian_correlation(0) == 0 and gaussian_correlation(1) == pytest.approx(1)
    values = [gaussian_correlation(k / 100) for k in range(101)]
    assert values == sorted(values)
    # the classic relation back: Spearman = (6/π) asin(r/2)
    for rho in (0.1, 0.25, 0.5, 0.9):
        assert 6 / math.pi * math.asin(gaussian_correlation(rho) / 2) == pytest.approx(rho)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("rho", [0.25, 0.5, 0.9])
def test_correlation_is_the_rank_correlation_of_consecutive_draws(distribution: str, rho: float) -> None:
    """Spearman of (draw i, draw i+1) over 20,000 draws is the asked ρ within 0.03 (its sd here is < 0.01)."""
    line = DelayLine(DelaySpec(0.05, 0.01, distribution, rho))
    rng = random.Random(f"{distribution}-{rho}")
    draws = [line.draw(rng) for _ in range(20_000)]
    assert abs(spearman(draws[:-1], draws[1:]) - rho) < 0.03


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_correlated_draws_keep_the_asked_distribution(distribution: str) -> None:
    """Every 40th draw of a ρ = 0.5 chain (normal-score correlation 0.518^40 ≈ 4e-12: independent) is KS-tested,
    and the whole chain's spread is the asked one, where netem's mixing would narrow it by sqrt(1/3) at ρ = 0.5."""
    spec = DelaySpec(0.05, 0.01, distribution, 0.5)
    line = DelayLine(spec)
    rng = random.Random(f"marginal-{distribution}")
    chain = [line.draw(rng) for _ in range(200_000)]
    thinned = chain[::40]
    assert ks_statistic(thinned, spec.cdf) < ks_critical(len(thinned))
    sd = 0.01 / math.sqrt(3) if distribution == "uniform" else 0.01
    assert abs(statistics.pstdev(chain) / sd - 1) < 0.03


def test_correlation_one_holds_the_first_draw() -> None:
    line = DelayLine(DelaySpec(0.05, 0.01, "normal", 1.0))
    rng = random.Random(5)
    first = line.draw(rng)
    assert all(line.draw(rng) == pytest.approx(first) for _ in range(100))


# ---------------------------------------------------------------------------------------------- settings
def test_spec_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="unknown delay distribution 'gamma'"):
        DelaySpec(0.01, 0.001, "gamma")
    with pytest.raises(ValueError, match="between 0 and 1"):
        DelaySpec(0.01, 0.001, correlation=1.5)
    with pytest.raises(ValueError, match="negative"):
        DelaySpec(-0.01)


def test_spec_from_the_lab_state() -> None:
    assert spec_from_state({}) == DelaySpec()
    assert spec_from_state(
        {
            "delay_ms": 60,
            "jitter_ms": 50,
            "delay_distribution": "pareto-normal",
            "delay_correlation_pct": 25,
            "reorder": True,
        }
    ) == DelaySpec(0.060, 0.050, "pareto-normal", 0.25, True)
    # a state written before these settings existed: uniform, uncorrelated, FIFO
    assert spec_from_state({"delay_ms": 20, "jitter_ms": 5}) == DelaySpec(0.020, 0.005)


# ---------------------------------------------------------------------------------------------- truth record
def test_direction_summary_reports_drawn_applied_and_reordered() -> None:
    d = Direction("v:x:down")
    # (arrival, drawn, applied, reordered): two held behind a long draw, one overtaking
    d.passed.extend(
        [
            (10.0, 0.050, 0.050, False),
            (10.01, 0.010, 0.040, False),
            (10.02, 0.020, 0.030, False),
            (10.03, 0.030, 0.031, True),
        ]
    )
    d.drops.append(10.025)
    s = d.summary(since=9.0)
    assert s["packets"] == 5 and s["dropped"] == 1 and s["reordered"] == 1
    assert s["delay_ms_mean"] == pytest.approx(37.75)
    assert s["drawn_delay_ms_mean"] == pytest.approx(27.5)
    assert s["drawn_delay_ms_p50"] == pytest.approx(25.0)
    assert s["ipdv_ms_mean_abs"] == pytest.approx((10 + 10 + 1) / 3)
    assert d.summary(since=10.015)["reordered"] == 1 and d.summary(since=10.015)["packets"] == 3
    empty = d.summary(since=11.0)
    assert empty["packets"] == 0 and empty["drawn_delay_ms_mean"] is None and empty["reordered"] == 0
    assert d.packets(since=10.02) == [(10.02, 0.020, 0.030, False), (10.03, 0.030, 0.031, True)]


# ---------------------------------------------------------------------------------------------- lab impair
def test_impair_values_merge_and_refuse_bad_input() -> None:
    """What `lab impair` keeps of the new flags: the default distribution and --no-reorder clear them."""
    from desanet.lab.lab import LabError, _empty_direction, _merged_value, _validate

    assert _merged_value("delay_distribution", "uniform") is None
    assert _merged_value("delay_distribution", "pareto-normal") == "pareto-normal"
    assert _merged_value("reorder", False) is None and _merged_value("reorder", True) is True
    assert _merged_value("delay_correlation_pct", 0) is None and _merged_value("delay_correlation_pct", 25) == 25.0
    cur = {"down": _empty_direction(), "up": _empty_direction(), "blackholed": False}
    cur["down"].update(delay_ms=30.0, jitter_ms=5.0, delay_distribution="normal", delay_correlation_pct=50.0)
    _validate(cur)
    cur["up"]["delay_correlation_pct"] = 150.0
    with pytest.raises(LabError, match="delay correlation must be between 0 and 100 %"):
        _validate(cur)
    cur["up"]["delay_correlation_pct"] = None
    cur["up"]["delay_distribution"] = "gamma"
    with pytest.raises(LabError, match="no delay distribution 'gamma': one of uniform, normal, pareto, pareto-normal"):
        _validate(cur)
