"""Pure statistics over probe samples: no I/O, no clocks, so every formula can be tested exhaustively.

Units are whatever the caller passes (desanet passes seconds everywhere). Definitions:

- quantiles: linear interpolation between closest ranks (numpy's default "linear", Hyndman & Fan type 7),
  so p50 of an even sample is the mean of the two middle values, as iputils and most readers expect.
- RFC 3550 §6.4.1 interarrival jitter: J += (|D| - J) / 16 over consecutive delays, in arrival order.
  Applied to round-trip times it is a two-way approximation; applied to one-way delays (STAMP) it is the
  RFC's own quantity, since a constant clock offset cancels in D.
- IPDV (RFC 5481 §4.1): the difference between consecutive delays; we report the mean of its absolute value,
  the lower-variance estimate of the same quantity the RFC 3550 filter tracks.
- PDV (RFC 5481 §4.2): delay minus the minimum delay of the sample; we report p99 - min, which approximates
  the de-jitter buffer a receiver needs.
- burst loss: the worst loss ratio in any `span`-second window that starts or ends at a packet and lies
  within the train (Teams asks < 10 % in any 200 ms); burst_loss says why windows are anchored so.

Inputs are finite numbers; NaN has no order, so no result about it is promised.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Type-7 quantile of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("quantile of an empty sample")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    a, b = sorted_values[lo], sorted_values[hi]
    # Clamped because a + (b - a) * frac can round a hair past b; p99 must never exceed max.
    return min(max(a + (b - a) * frac, a), b)


@dataclass(frozen=True, slots=True)
class Summary:
    """Distribution of one window of delays (or RTTs)."""

    min: float
    p50: float
    mean: float
    p95: float
    p99: float
    max: float
    stddev: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary | None:
    """Summary of a sample, or None when nothing came back (a window with total loss has no RTT)."""
    if not values:
        return None
    s = sorted(values)
    n = len(s)
    # Clamped because fsum/n of a constant sample can round one ulp off the constant (then stddev > 0).
    mean = min(max(math.fsum(s) / n, s[0]), s[-1])
    # Population standard deviation, as iputils ping's mdev reports it.
    var = math.fsum((v - mean) ** 2 for v in s) / n
    return Summary(
        min=s[0],
        p50=quantile(s, 0.5),
        mean=mean,
        p95=quantile(s, 0.95),
        p99=quantile(s, 0.99),
        max=s[-1],
        stddev=math.sqrt(var),
    )


def rfc3550_jitter(delays: Sequence[float]) -> float | None:
    """RFC 3550 interarrival jitter after the last packet; None with fewer than two delays."""
    if len(delays) < 2:
        return None
    j = 0.0
    prev = delays[0]
    for d in delays[1:]:
        j += (abs(d - prev) - j) / 16.0
        prev = d
    return j


def ipdv_mean_abs(delays: Sequence[float]) -> float | None:
    """Mean absolute difference of consecutive delays (RFC 5481 IPDV); None with fewer than two."""
    if len(delays) < 2:
        return None
    return math.fsum(abs(b - a) for a, b in itertools.pairwise(delays)) / (len(delays) - 1)


def pdv(delays: Sequence[float]) -> float | None:
    """RFC 5481 PDV reported as p99 minus the minimum delay; None for an empty sample."""
    if not delays:
        return None
    s = sorted(delays)
    return quantile(s, 0.99) - s[0]


def burst_loss(send_times: Sequence[float], lost: Sequence[bool], span: float = 0.2) -> float | None:
    """Worst loss ratio among the packets sent within any `span`-second window anchored at a packet.

    Windows are the `span` seconds starting at a packet, [t, t + span), and the `span` seconds ending at one,
    (t - span, t]; they count only when they lie inside the train, and a train shorter than `span` is one
    window. Anchoring at packets keeps the count steady: at 50 pps every window holds 10 or 11 packets, so
    one isolated loss reads at most 10 % and two in 200 ms at least 18 %, whatever the send-time jitter. (A
    window allowed to start anywhere could fall between two probes, hold 9 and read one loss as 11 %.)
    Keeping windows inside the train stops its ends from reading as bursts: a window hanging past the first
    echo would hold two packets and read one loss as 50 %. Both directions make the result the same when
    time runs backwards.

    A window needs at least two packets to count: None when none has (a sparse train, one echo a second,
    says nothing about 200 ms bursts). Send times need not be sorted.
    """
    if len(send_times) != len(lost):
        raise ValueError("send_times and lost differ in length")
    if not 0 < span < math.inf:
        raise ValueError(f"span {span} is not a positive finite number")
    n = len(send_times)
    if n < 2:
        return None
    order = sorted(range(n), key=send_times.__getitem__)
    t = [send_times[k] for k in order]
    lost_before = [0, *itertools.accumulate(1 if lost[k] else 0 for k in order)]
    worst: float | None = None

    def score(lo: int, hi: int) -> None:  # packets lo..hi-1
        nonlocal worst
        if hi - lo >= 2:
            ratio = (lost_before[hi] - lost_before[lo]) / (hi - lo)
            worst = ratio if worst is None or ratio > worst else worst

    first, last = t[0], t[-1]
    if last - first < span:
        score(0, n)
        return worst
    hi = 0
    for i in range(n):  # [t_i, t_i + span), only while the train lasts that long
        if last - t[i] < span:
            break
        if i and t[i] == t[i - 1]:
            continue  # same window as the first packet sent at this instant
        hi = max(hi, i)
        while hi < n and t[hi] - t[i] < span:
            hi += 1
        score(i, hi)
    lo = 0
    for j in range(n):  # (t_j - span, t_j], only once the train has lasted that long
        if t[j] - first < span or (j + 1 < n and t[j + 1] == t[j]):
            continue
        while t[j] - t[lo] >= span:
            lo += 1
        score(lo, j + 1)
    return worst


def loss_ratio(sent: int, received: int) -> float | None:
    """Share of probes without an answer; None when nothing was sent. Duplicates never make it negative."""
    if received < 0:
        raise ValueError(f"received {received} < 0")
    if sent <= 0:
        return None
    return (sent - min(received, sent)) / sent


def count_reordered(sequence_in_arrival_order: Sequence[int]) -> int:
    """Packets that arrived after a packet with a higher sequence number (RFC 4737's reordered count)."""
    highest = None
    reordered = 0
    for seq in sequence_in_arrival_order:
        if highest is not None and seq < highest:
            reordered += 1
        else:
            highest = seq
    return reordered


def binomial_interval(sent: int, lost: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95 % interval for a loss ratio: the bound tests hold measured loss to."""
    if sent <= 0:
        raise ValueError("no packets")
    if not 0 <= lost <= sent:
        raise ValueError(f"lost {lost} outside 0..{sent}")
    p = lost / sent
    denom = 1 + z * z / sent
    centre = (p + z * z / (2 * sent)) / denom
    half = z * math.sqrt(p * (1 - p) / sent + z * z / (4 * sent * sent)) / denom
    # At 0 or all lost the bound is exactly 0 or 1; rounding would otherwise leave 1 - 1e-16.
    lo = 0.0 if lost == 0 else max(0.0, centre - half)
    hi = 1.0 if lost == sent else min(1.0, centre + half)
    return lo, hi
