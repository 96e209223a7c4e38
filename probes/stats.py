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
- burst loss: the worst loss ratio in any span of `span` seconds (Teams asks < 10 % in any 200 ms).
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
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


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
    mean = math.fsum(s) / n
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
    """Worst loss ratio among the packets sent within any `span`-second window.

    Needs at least two packets inside a span to mean anything ("dense enough"): returns None when the
    train is sparser than that, because one lost echo a second says nothing about 200 ms bursts.
    """
    if len(send_times) != len(lost):
        raise ValueError("send_times and lost differ in length")
    n = len(send_times)
    if n < 2:
        return None
    order = sorted(range(n), key=lambda i: send_times[i])
    t = [send_times[i] for i in order]
    x = [1 if lost[i] else 0 for i in order]
    worst: float | None = None
    lo = 0
    lost_in = 0
    for hi in range(n):
        lost_in += x[hi]
        while t[hi] - t[lo] >= span:
            lost_in -= x[lo]
            lo += 1
        count = hi - lo + 1
        if count >= 2:
            ratio = lost_in / count
            worst = ratio if worst is None or ratio > worst else worst
    return worst


def loss_ratio(sent: int, received: int) -> float | None:
    """Share of probes without an answer; None when nothing was sent. Duplicates never make it negative."""
    if sent <= 0:
        return None
    return max(0.0, (sent - min(received, sent)) / sent)


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
    p = lost / sent
    denom = 1 + z * z / sent
    centre = (p + z * z / (2 * sent)) / denom
    half = z * math.sqrt(p * (1 - p) / sent + z * z / (4 * sent * sent)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
