"""probes.stats against independent reference formulas and hand-computed examples.

References are written differently from the code on purpose: exact Fractions instead of floats, the statistics
module, closed forms instead of recurrences, brute force instead of two-pointer sweeps. Burst-loss comparisons
use integer or dyadic times (exact in floats) so float rounding cannot blur a window edge.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from desanet.probes import stats

# Delays in seconds as desanet sees them: 0 to 10 s, finite, no NaN.
delay = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)
delays = st.lists(delay, max_size=200)
nonempty = st.lists(delay, min_size=1, max_size=200)
probability = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def close(a: float, b: float, scale: float = 1.0) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12 * max(1.0, scale))


# ---------------------------------------------------------------------------------------------- quantile
def ref_quantile(values: list[float], q: float) -> float:
    """Type 7 in exact rational arithmetic: h = (n - 1) q, interpolate between floor(h) and floor(h) + 1."""
    s = sorted(Fraction(v) for v in values)
    h = (len(s) - 1) * Fraction(q)
    lo = math.floor(h)
    if lo + 1 >= len(s):
        return float(s[lo])
    return float(s[lo] + (h - lo) * (s[lo + 1] - s[lo]))


@given(nonempty, probability)
def test_quantile_matches_exact_type7(values: list[float], q: float) -> None:
    got = stats.quantile(sorted(values), q)
    assert close(got, ref_quantile(values, q), max(values))


@given(st.lists(delay, min_size=2, max_size=200))
def test_quantile_matches_statistics_inclusive_percentiles(values: list[float]) -> None:
    cuts = statistics.quantiles(values, n=100, method="inclusive")  # Hyndman & Fan type 7
    s = sorted(values)
    for k in (1, 25, 50, 75, 95, 99):
        assert close(stats.quantile(s, k / 100), cuts[k - 1], max(values))


@given(nonempty, probability, probability)
def test_quantile_is_monotone_in_q_and_bounded(values: list[float], q1: float, q2: float) -> None:
    s = sorted(values)
    lo, hi = sorted((q1, q2))
    assert s[0] <= stats.quantile(s, lo) <= stats.quantile(s, hi) <= s[-1]


def test_quantile_hand_examples() -> None:
    assert stats.quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5  # even sample: mean of the middle two
    assert stats.quantile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert stats.quantile([5.0], 0.99) == 5.0
    assert stats.quantile([0.0, 10.0], 0.95) == 9.5
    assert stats.quantile([1.0, 2.0], 0.0) == 1.0
    assert stats.quantile([1.0, 2.0], 1.0) == 2.0


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_quantile_rejects_q_outside_unit_interval(q: float) -> None:
    with pytest.raises(ValueError):
        stats.quantile([1.0], q)


def test_quantile_of_empty_sample_raises() -> None:
    with pytest.raises(ValueError):
        stats.quantile([], 0.5)


# ---------------------------------------------------------------------------------------------- summarize
@given(nonempty)
def test_summarize_matches_statistics_module(values: list[float]) -> None:
    s = stats.summarize(values)
    assert s is not None
    top = max(values)
    assert s.min == min(values)
    assert s.max == top
    assert close(s.mean, statistics.fmean(values), top)
    assert close(s.p50, statistics.median(values), top)
    assert math.isclose(s.stddev, statistics.pstdev(values), rel_tol=1e-7, abs_tol=1e-9 * max(1.0, top))
    assert close(s.p95, ref_quantile(values, 0.95), top)
    assert close(s.p99, ref_quantile(values, 0.99), top)


@given(nonempty)
def test_summarize_is_ordered_and_order_free(values: list[float]) -> None:
    s = stats.summarize(values)
    assert s is not None
    assert s.min <= s.p50 <= s.p95 <= s.p99 <= s.max
    assert s.min <= s.mean <= s.max
    assert s.stddev >= 0
    shuffled = values[:]
    random.Random(len(values)).shuffle(shuffled)
    assert stats.summarize(shuffled) == s


def iputils_mdev(values: list[float]) -> float:
    """iputils ping: mdev = sqrt(tsum2/n - (tsum/n)^2), i.e. the population standard deviation."""
    n = len(values)
    tsum = sum(values)
    tsum2 = sum(v * v for v in values)
    return math.sqrt(max(0.0, tsum2 / n - (tsum / n) ** 2))


@given(st.lists(st.floats(min_value=0.001, max_value=2.0), min_size=1, max_size=100))
def test_stddev_is_iputils_mdev(values: list[float]) -> None:
    s = stats.summarize(values)
    assert s is not None
    # iputils' one-pass formula cancels catastrophically for near-equal values; hold it to its own precision.
    assert math.isclose(s.stddev, iputils_mdev(values), abs_tol=2e-7 * max(values))


def test_summarize_hand_example() -> None:
    # ping -c 4 with RTTs 1, 2, 3, 4 ms prints avg 2.500, mdev 1.118.
    s = stats.summarize([0.004, 0.001, 0.003, 0.002])
    assert s is not None
    assert (s.min, s.max) == (0.001, 0.004)
    assert math.isclose(s.mean, 0.0025)
    assert math.isclose(s.p50, 0.0025)
    assert math.isclose(s.stddev, math.sqrt(1.25) / 1000)
    assert math.isclose(s.p95, 0.00385)  # h = 3 * 0.95 = 2.85 -> 3 + 0.85 * (4 - 3) ms
    assert set(s.to_dict()) == {"min", "p50", "mean", "p95", "p99", "max", "stddev"}


@given(delay, st.integers(min_value=1, max_value=50))
def test_summarize_constant_sample_has_zero_spread(v: float, n: int) -> None:
    s = stats.summarize([v] * n)
    assert s is not None
    assert s.min == s.p50 == s.mean == s.p95 == s.p99 == s.max == v
    assert s.stddev == 0.0


def test_summarize_single_and_empty() -> None:
    assert stats.summarize([]) is None
    s = stats.summarize([0.05])
    assert s is not None
    assert s.min == s.max == s.mean == s.p99 == 0.05
    assert s.stddev == 0.0


# ---------------------------------------------------------------------------------------------- RFC 3550 jitter
def ref_jitter_closed_form(values: list[float]) -> float:
    """Unrolled recurrence: J_n = sum_k (1/16) (15/16)^(n-k) |D_k|, exactly."""
    d = [abs(Fraction(b) - Fraction(a)) for a, b in itertools.pairwise(values)]
    n = len(d)
    return float(sum(Fraction(1, 16) * Fraction(15, 16) ** (n - k) * dk for k, dk in enumerate(d, start=1)))


def rfc3550_a8_integer(timestamps: list[int]) -> float:
    """RFC 3550 A.8's scaled-integer form: jitter held as 16 J, updated with a rounding shift."""
    j16 = 0
    for a, b in itertools.pairwise(timestamps):
        j16 += abs(b - a) - ((j16 + 8) >> 4)
    return j16 / 16


@given(st.lists(delay, min_size=2, max_size=200))
def test_jitter_matches_closed_form(values: list[float]) -> None:
    got = stats.rfc3550_jitter(values)
    assert got is not None
    assert math.isclose(got, ref_jitter_closed_form(values), rel_tol=1e-9, abs_tol=1e-12)


@given(st.lists(st.integers(min_value=0, max_value=100_000), min_size=2, max_size=300))
def test_jitter_agrees_with_rfc3550_integer_form(ts: list[int]) -> None:
    # The integer form rounds at every step; the error stays within half a timestamp unit.
    got = stats.rfc3550_jitter([float(t) for t in ts])
    assert got is not None
    assert abs(got - rfc3550_a8_integer(ts)) <= 0.5 + 1e-9


@given(st.lists(delay, min_size=2, max_size=100), st.floats(min_value=-5, max_value=5))
def test_jitter_ignores_a_constant_offset(values: list[float], offset: float) -> None:
    # A clock offset between sender and receiver cancels in D (RFC 3550 §6.4.1).
    a = stats.rfc3550_jitter(values)
    b = stats.rfc3550_jitter([v + offset for v in values])
    assert a is not None and b is not None
    assert math.isclose(a, b, abs_tol=1e-9)


@given(st.lists(delay, min_size=2, max_size=100))
def test_jitter_is_bounded_by_the_largest_step(values: list[float]) -> None:
    got = stats.rfc3550_jitter(values)
    assert got is not None
    assert 0.0 <= got <= max(abs(b - a) for a, b in itertools.pairwise(values)) + 1e-12


@given(delay, st.integers(min_value=2, max_value=100))
def test_jitter_of_constant_series_is_zero(v: float, n: int) -> None:
    assert stats.rfc3550_jitter([v] * n) == 0.0


@pytest.mark.parametrize("n", [2, 3, 17, 200])
def test_jitter_of_alternating_series_converges_to_the_step(n: int) -> None:
    d = 0.010
    series = [0.050 + (d if k % 2 else 0.0) for k in range(n)]  # D alternates +d, -d
    got = stats.rfc3550_jitter(series)
    assert got is not None
    assert math.isclose(got, d * (1 - (15 / 16) ** (n - 1)), rel_tol=1e-9)


def test_jitter_hand_example() -> None:
    # D = 16 ms once: J = 16/16 = 1 ms. Then D = 0: J = 1 - 1/16 = 0.9375 ms.
    got = stats.rfc3550_jitter([0.0, 0.016, 0.016])
    assert got is not None
    assert math.isclose(got, 0.0009375)


def test_jitter_needs_two_delays() -> None:
    assert stats.rfc3550_jitter([]) is None
    assert stats.rfc3550_jitter([0.1]) is None


# ---------------------------------------------------------------------------------------------- IPDV, PDV
@given(st.lists(delay, min_size=2, max_size=200))
def test_ipdv_is_mean_absolute_consecutive_difference(values: list[float]) -> None:
    got = stats.ipdv_mean_abs(values)
    ref = statistics.fmean([abs(values[k + 1] - values[k]) for k in range(len(values) - 1)])
    assert got is not None
    assert close(got, ref, max(values))


def test_ipdv_hand_examples() -> None:
    assert stats.ipdv_mean_abs([1.0, 3.0, 2.0]) == 1.5
    assert stats.ipdv_mean_abs([0.2] * 5) == 0.0
    assert stats.ipdv_mean_abs([0.2]) is None
    assert stats.ipdv_mean_abs([]) is None


@given(st.lists(delay, min_size=2, max_size=200))
def test_pdv_is_p99_minus_min(values: list[float]) -> None:
    got = stats.pdv(values)
    ref = statistics.quantiles(values, n=100, method="inclusive")[98] - min(values)
    assert got is not None
    assert close(got, ref, max(values))
    assert 0.0 <= got <= max(values) - min(values)


@given(st.lists(delay, min_size=1, max_size=100))
def test_pdv_is_order_free(values: list[float]) -> None:
    assert stats.pdv(values) == stats.pdv(sorted(values, reverse=True))


def test_pdv_hand_examples() -> None:
    # 101 delays 0..100 ms: p99 is exactly 99 ms, min 0.
    got = stats.pdv([k / 1000 for k in range(101)])
    assert got is not None
    assert math.isclose(got, 0.099)
    assert stats.pdv([0.030]) == 0.0
    assert stats.pdv([0.030, 0.030, 0.030]) == 0.0
    assert stats.pdv([]) is None


# ---------------------------------------------------------------------------------------------- burst loss
def ref_burst(times: list[float], lost: list[bool], span: float) -> float | None:
    """Brute force in exact Fractions, straight from the definition, without sorting or pointers.

    Windows: [t, t + span) for each packet with t_last - t >= span, (t - span, t] for each packet with
    t - t_first >= span; the whole train when it is shorter than span. Score those with >= 2 packets.
    """
    if len(times) < 2:
        return None
    t = [Fraction(v) for v in times]
    sp = Fraction(span)
    first, last = min(t), max(t)
    windows: list[list[bool]] = []
    if last - first < sp:
        windows.append(list(lost))
    for a in t:
        if last - a >= sp:
            windows.append([x for v, x in zip(t, lost, strict=True) if a <= v < a + sp])
        if a - first >= sp:
            windows.append([x for v, x in zip(t, lost, strict=True) if a - sp < v <= a])
    ratios = [Fraction(sum(w), len(w)) for w in windows if len(w) >= 2]
    return float(max(ratios)) if ratios else None


@st.composite
def trains(draw: st.DrawFn, max_size: int = 60) -> tuple[list[float], list[bool], float]:
    """Unsorted integer send times (ms, exact in floats), with duplicates, and an integer span."""
    n = draw(st.integers(min_value=0, max_value=max_size))
    times = draw(st.lists(st.integers(min_value=0, max_value=1000), min_size=n, max_size=n))
    lost = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    span = draw(st.integers(min_value=1, max_value=400))
    return [float(v) for v in times], lost, float(span)


@settings(max_examples=500)
@given(trains())
def test_burst_loss_matches_brute_force(train: tuple[list[float], list[bool], float]) -> None:
    times, lost, span = train
    assert stats.burst_loss(times, lost, span) == ref_burst(times, lost, span)


@given(
    st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=2, max_size=80).map(
        lambda ts: [round(v * 1024) / 1024 for v in ts]  # dyadic: differences are exact
    ),
    st.data(),
    st.sampled_from([0.2, 0.25, 1.0]),
)
def test_burst_loss_matches_brute_force_in_seconds(times: list[float], data: st.DataObject, span: float) -> None:
    lost = data.draw(st.lists(st.booleans(), min_size=len(times), max_size=len(times)))
    assert stats.burst_loss(times, lost, span) == ref_burst(times, lost, span)


@given(trains(), st.randoms(use_true_random=False))
def test_burst_loss_ignores_send_order(train: tuple[list[float], list[bool], float], rnd: random.Random) -> None:
    times, lost, span = train
    pairs = list(zip(times, lost, strict=True))
    rnd.shuffle(pairs)
    shuffled = stats.burst_loss([p[0] for p in pairs], [p[1] for p in pairs], span)
    assert shuffled == stats.burst_loss(times, lost, span)


@given(trains(), st.integers(min_value=-10_000, max_value=10_000))
def test_burst_loss_is_symmetric_in_time_and_shift_free(
    train: tuple[list[float], list[bool], float], offset: int
) -> None:
    times, lost, span = train
    got = stats.burst_loss(times, lost, span)
    assert stats.burst_loss([-t for t in times], lost, span) == got
    assert stats.burst_loss([t + offset for t in times], lost, span) == got


@given(trains(), st.data())
def test_burst_loss_never_falls_when_a_packet_is_lost(
    train: tuple[list[float], list[bool], float], data: st.DataObject
) -> None:
    times, lost, span = train
    assume(times)
    k = data.draw(st.integers(min_value=0, max_value=len(times) - 1))
    worse = lost[:]
    worse[k] = True
    before, after = stats.burst_loss(times, lost, span), stats.burst_loss(times, worse, span)
    assert (before is None) == (after is None)
    if before is not None and after is not None:
        assert after >= before


@given(trains())
def test_burst_loss_extremes(train: tuple[list[float], list[bool], float]) -> None:
    times, _, span = train
    n = len(times)
    assert stats.burst_loss(times, [True] * n, span) in (None, 1.0)
    assert stats.burst_loss(times, [False] * n, span) in (None, 0.0)


@given(
    st.lists(st.floats(min_value=0, max_value=600, allow_nan=False), max_size=300),
    st.data(),
    st.floats(min_value=0.001, max_value=2.0),
)
def test_burst_loss_on_arbitrary_float_times_is_a_ratio(times: list[float], data: st.DataObject, span: float) -> None:
    lost = data.draw(st.lists(st.booleans(), min_size=len(times), max_size=len(times)))
    got = stats.burst_loss(times, lost, span)
    assert got is None or 0.0 <= got <= 1.0
    if len(times) >= 2 and max(times) - min(times) < span:
        assert got == sum(lost) / len(lost)  # the whole train is one window


# A 50 pps train (20 ms) whose send times wobble by up to +-1 ms, as a scheduler on a busy host sends.
jittered_50pps = st.integers(min_value=12, max_value=250).flatmap(
    lambda n: st.lists(st.floats(min_value=-0.001, max_value=0.001), min_size=n, max_size=n).map(
        lambda wobble: [k * 0.02 + w for k, w in enumerate(wobble)]
    )
)


@given(jittered_50pps, st.data())
def test_one_isolated_loss_at_50pps_never_reads_above_ten_percent(times: list[float], data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=len(times) - 1))
    got = stats.burst_loss(times, [i == k for i in range(len(times))])
    assert got is not None and 1 / 12 <= got <= 0.1


@given(jittered_50pps, st.data())
def test_two_losses_within_100ms_at_50pps_read_above_ten_percent(times: list[float], data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=len(times) - 2))
    m = data.draw(st.integers(min_value=k + 1, max_value=min(k + 5, len(times) - 1)))
    got = stats.burst_loss(times, [i in (k, m) for i in range(len(times))])
    assert got is not None and 2 / 12 <= got <= 0.2


def test_burst_loss_hand_examples() -> None:
    t = [k * 0.02 for k in range(50)]  # one second at 50 pps
    assert stats.burst_loss(t, [False] * 50) == 0.0
    got = stats.burst_loss(t, [20 <= k < 23 for k in range(50)])
    assert got is not None and 3 / 11 <= got <= 0.3
    # Integer milliseconds, exact: windows of 10 packets; three consecutive losses are 30 %.
    ms = [float(20 * k) for k in range(50)]
    assert stats.burst_loss(ms, [20 <= k < 23 for k in range(50)], span=200.0) == 0.3
    assert stats.burst_loss(ms, [k == 20 for k in range(50)], span=200.0) == 0.1


def test_burst_loss_train_ends_are_not_bursts() -> None:
    # Losing only the first or only the last echo is one loss in a full window, not a 50 % burst.
    ms = [float(20 * k) for k in range(12)]
    assert stats.burst_loss(ms, [True] + [False] * 11, span=200.0) == 0.1
    assert stats.burst_loss(ms, [False] * 11 + [True], span=200.0) == 0.1


def test_burst_loss_judges_sparse_probes_only_over_anchored_windows() -> None:
    # [30, 230] ms would hold just the two lost echoes, but no probe marks it; the windows at 10 and 250 do.
    got = stats.burst_loss([0.0, 10.0, 150.0, 190.0, 250.0], [False, False, True, True, False], span=200.0)
    assert got == pytest.approx(2 / 3)


def test_burst_loss_window_edges_and_duplicates() -> None:
    assert stats.burst_loss([0.0, 200.0], [True, False], span=200.0) is None  # half-open: one packet each
    assert stats.burst_loss([0.0, 199.0], [True, False], span=200.0) == 0.5  # shorter than span: one window
    assert stats.burst_loss([5.0, 5.0, 5.0], [True, False, False], span=1.0) == pytest.approx(1 / 3)
    assert stats.burst_loss([0.0, 0.0, 1.0, 1.0], [True, True, False, False], span=0.5) == 1.0


def test_burst_loss_sparse_or_tiny_trains_are_none() -> None:
    assert stats.burst_loss([], []) is None
    assert stats.burst_loss([0.0], [True]) is None
    assert stats.burst_loss([float(k) for k in range(60)], [k % 2 == 0 for k in range(60)]) is None  # 1 pps


def test_burst_loss_short_train_is_one_window() -> None:
    assert stats.burst_loss([0.1, 0.0, 0.05], [False, True, False]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("span", [0.0, -0.1, math.nan, math.inf])
def test_burst_loss_rejects_bad_span(span: float) -> None:
    with pytest.raises(ValueError):
        stats.burst_loss([0.0, 1.0], [True, False], span=span)


def test_burst_loss_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        stats.burst_loss([0.0, 1.0], [True])


@pytest.mark.timeout(10)
def test_burst_loss_is_fast_for_five_minutes_at_50pps() -> None:
    n = 15_000
    rnd = random.Random(7)
    times = [k * 0.02 + rnd.uniform(0, 0.002) for k in range(n)]
    lost = [rnd.random() < 0.02 for _ in range(n)]
    got = stats.burst_loss(times, lost)
    assert got is not None and 0.0 < got < 1.0


# ---------------------------------------------------------------------------------------------- loss ratio
@given(st.integers(min_value=1, max_value=10**6), st.integers(min_value=0, max_value=2 * 10**6))
def test_loss_ratio_reference(sent: int, received: int) -> None:
    got = stats.loss_ratio(sent, received)
    assert got is not None
    assert got == max(0, sent - received) / sent
    assert 0.0 <= got <= 1.0


def test_loss_ratio_hand_examples() -> None:
    assert stats.loss_ratio(10, 9) == 0.1
    assert stats.loss_ratio(10, 0) == 1.0
    assert stats.loss_ratio(10, 12) == 0.0  # duplicates never make it negative
    assert stats.loss_ratio(0, 0) is None
    assert stats.loss_ratio(-1, 0) is None
    with pytest.raises(ValueError):
        stats.loss_ratio(10, -1)


# ---------------------------------------------------------------------------------------------- reordering
@given(st.lists(st.integers(min_value=0, max_value=50), max_size=200))
def test_count_reordered_brute_force(seqs: list[int]) -> None:
    ref = sum(1 for k in range(len(seqs)) if any(seqs[m] > seqs[k] for m in range(k)))
    assert stats.count_reordered(seqs) == ref


def test_count_reordered_hand_examples() -> None:
    assert stats.count_reordered([]) == 0
    assert stats.count_reordered([1, 2, 3]) == 0
    assert stats.count_reordered([1, 2, 4, 3, 5]) == 1
    assert stats.count_reordered([3, 2, 1]) == 2
    assert stats.count_reordered([1, 1, 2]) == 0  # a duplicate of the highest is not late


# ---------------------------------------------------------------------------------------------- Wilson interval
def ref_wilson(sent: int, lost: int, z: float) -> tuple[float, float]:
    """Roots of (p_hat - p)^2 = z^2 p (1 - p) / n, solved as a quadratic a p^2 + b p + c = 0."""
    p_hat = lost / sent
    a = 1 + z * z / sent
    b = -(2 * p_hat + z * z / sent)
    c = p_hat * p_hat
    disc = math.sqrt(max(0.0, b * b - 4 * a * c))
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@given(st.integers(min_value=1, max_value=100_000), st.data(), st.sampled_from([1.0, 1.645, 1.96, 2.576]))
def test_wilson_matches_quadratic_roots(sent: int, data: st.DataObject, z: float) -> None:
    lost = data.draw(st.integers(min_value=0, max_value=sent))
    lo, hi = stats.binomial_interval(sent, lost, z)
    rlo, rhi = ref_wilson(sent, lost, z)
    assert math.isclose(lo, max(0.0, rlo), abs_tol=1e-9)
    assert math.isclose(hi, min(1.0, rhi), abs_tol=1e-9)
    assert 0.0 <= lo <= lost / sent + 1e-12
    assert lost / sent - 1e-12 <= hi <= 1.0


@given(st.integers(min_value=1, max_value=1000), st.integers(min_value=2, max_value=20), st.data())
def test_wilson_narrows_with_more_packets(sent: int, k: int, data: st.DataObject) -> None:
    lost = data.draw(st.integers(min_value=0, max_value=sent))
    lo1, hi1 = stats.binomial_interval(sent, lost)
    lo2, hi2 = stats.binomial_interval(sent * k, lost * k)
    assert hi2 - lo2 <= hi1 - lo1 + 1e-12


def test_wilson_hand_examples() -> None:
    lo, hi = stats.binomial_interval(100, 0)
    assert lo == 0.0
    assert math.isclose(hi, 1.96**2 / (100 + 1.96**2))  # 0/100: upper bound z^2 / (n + z^2) ~ 3.7 %
    lo, hi = stats.binomial_interval(100, 100)
    assert math.isclose(lo, 100 / (100 + 1.96**2)) and hi == 1.0
    # 10/1000 by hand: centre (0.01 + 1.9208e-3) / 1.0038416 = 0.011875, half-width 0.0064345.
    lo, hi = stats.binomial_interval(1000, 10)
    assert math.isclose(lo, 0.005441, abs_tol=1e-6) and math.isclose(hi, 0.018310, abs_tol=1e-6)


@pytest.mark.parametrize(("sent", "lost"), [(0, 0), (-5, 0), (10, -1), (10, 11)])
def test_wilson_rejects_impossible_counts(sent: int, lost: int) -> None:
    with pytest.raises(ValueError):
        stats.binomial_interval(sent, lost)
