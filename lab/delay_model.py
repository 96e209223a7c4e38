"""What delay the lab's emulator gives each packet of one direction, and when it lets the packet go.

Pure: no sockets, no clock. The emulator (lab/emulator.py) feeds it kernel arrival stamps and a random source
and does the netlink I/O; tests/test_emulator_pure.py checks this module without a network.

The model, per impaired direction:

- **Drawn delay**: `delay + jitter × X`, clamped at 0, where X is a standardised deviate of the asked
  distribution (netem's vocabulary): `uniform` on [-1, 1], so jitter is the half-width (netem's default and
  the lab's behaviour so far); `normal`, `pareto` and `pareto-normal` with mean 0 and standard deviation 1,
  so jitter is the standard deviation and delay the mean. The pareto shapes are netem's tables (iproute2
  netem/pareto.c and paretonormal.c: a Pareto of shape 3, and 1/4 normal + 3/4 that Pareto at the same
  quantile, its Pareto term saturating where netem's 16-bit table entries do), written here as continuous
  quantile functions and re-centred and re-scaled, so every distribution means what `--delay` and
  `--jitter` say.
- **Correlation**: consecutive draws come from a Gaussian AR(1) in normal scores (a Gaussian copula), so each
  draw still has exactly the asked distribution and consecutive draws have Spearman rank correlation equal
  to the asked correlation, whatever the distribution. netem instead mixes each uniform random number with
  the previous one, (1 - ρ)·random + ρ·last, which keeps the lag-1 correlation but shrinks the spread by
  sqrt((1 - ρ)/(1 + ρ)) and bends the shape (its manual: "not true statistical correlation, but an
  approximation"); here `--jitter 10 --delay-correlation 50` still spreads ±10 ms.
- **Release**: by default the direction is a FIFO, like the queue that makes a village link's jitter (a busy
  uplink, a bloated router buffer): a packet leaves at max(arrival + drawn delay, the previous packet's
  release), never before the packet ahead of it. So the applied delay equals the drawn delay for packets
  spaced wider than the drawn delays' spread and exceeds it for closer ones, which wait behind a packet that
  drew a longer delay. With `reorder` each packet leaves at arrival + drawn delay (netem's behaviour), and
  packets closer together than the spread overtake each other.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cache
from statistics import NormalDist

DISTRIBUTIONS = ("uniform", "normal", "pareto", "pareto-normal")
_N = NormalDist()
# netem's tables hold int16 multiples of 1/8192 standard deviation (NETEM_DIST_SCALE), so its Pareto term
# saturates at 32767/8192 (netem/pareto.c clips there); the Pareto quantile reaches it at survival 1/c³.
_PARETO_CAP = 32767 / 8192
_PARETO_X_CAP = 1.5 + 0.75 * _PARETO_CAP  # the Pareto(shape 3, scale 1) value where the term saturates
_PARETO_SURVIVAL_CAP = _PARETO_X_CAP**-3


def _pareto_term(z: float) -> float:
    """netem's Pareto table entry (in standard deviations) at the quantile Φ(z): (4/3)(x - 1.5), x ~ Pareto(3)."""
    survival = _N.cdf(-z)  # 1 - Φ(z) computed directly: no cancellation in the tail that matters here
    if survival <= _PARETO_SURVIVAL_CAP:
        return _PARETO_CAP
    return 4 / 3 * (survival ** (-1 / 3) - 1.5)


def _raw(distribution: str, z: float) -> float:
    """The distribution's deviate at normal score z, before standardising (a non-decreasing function of z)."""
    if distribution == "uniform":
        return 2 * _N.cdf(z) - 1
    if distribution == "normal":
        return z
    if distribution == "pareto":
        return _pareto_term(z)
    if distribution == "pareto-normal":
        return (z + 3 * _pareto_term(z)) / 4
    raise ValueError(f"unknown delay distribution {distribution!r}: one of {', '.join(DISTRIBUTIONS)}")


@cache
def _moments(distribution: str) -> tuple[float, float]:
    """(mean, standard deviation) of the raw deviate, by Simpson's rule over the normal score.

    Hand-written because SciPy is not a dependency; z in [-12, 12] in steps of 1/1000 holds all but 1e-32 of
    the mass, and the one kink (where the Pareto term saturates) costs under 1e-6 of accuracy."""
    if distribution in ("uniform", "normal"):
        return 0.0, 1.0  # uniform keeps netem's half-width meaning; see the module docstring
    lo, hi, steps = -12.0, 12.0, 24_000
    h = (hi - lo) / steps
    m1 = m2 = 0.0
    for i in range(steps + 1):
        z = lo + i * h
        w = 1 if i in (0, steps) else (4 if i % 2 else 2)
        x = _raw(distribution, z)
        p = _N.pdf(z) * w
        m1 += p * x
        m2 += p * x * x
    m1 *= h / 3
    m2 *= h / 3
    return m1, math.sqrt(m2 - m1 * m1)


def deviate(distribution: str, z: float) -> float:
    """The standardised deviate (uniform: on [-1, 1]; others: mean 0, sd 1) at normal score z."""
    mean, sd = _moments(distribution)
    return (_raw(distribution, z) - mean) / sd


def deviate_cdf(distribution: str, x: float) -> float:
    """P(deviate <= x): Φ of the largest normal score whose deviate is <= x (the deviate is monotone in z)."""
    if distribution == "uniform":
        return min(1.0, max(0.0, (x + 1) / 2))
    if distribution == "normal":
        return _N.cdf(x)
    lo, hi = -40.0, 40.0
    if deviate(distribution, lo) > x:
        return 0.0
    if deviate(distribution, hi) <= x:
        return 1.0
    for _ in range(100):  # bisection to below 1e-12 in z
        mid = (lo + hi) / 2
        if deviate(distribution, mid) <= x:
            lo = mid
        else:
            hi = mid
    return _N.cdf(lo)


def gaussian_correlation(rank_correlation: float) -> float:
    """The normal scores' correlation r that gives consecutive draws Spearman correlation ρ: r = 2 sin(πρ/6).

    For a Gaussian copula Spearman's ρ = (6/π) arcsin(r/2) (Pearson 1907); rank correlation survives any
    monotone map, so the asked ρ holds for every distribution (and is the Pearson correlation for uniform)."""
    return 2 * math.sin(math.pi * rank_correlation / 6)


@dataclass(frozen=True)
class DelaySpec:
    """What one direction is asked to do, in seconds (the lab's state keeps milliseconds and percent)."""

    delay: float = 0.0
    jitter: float = 0.0
    distribution: str = "uniform"
    correlation: float = 0.0  # Spearman rank correlation of consecutive drawn delays, 0..1
    reorder: bool = False  # independent releases (netem's behaviour) instead of a FIFO

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown delay distribution {self.distribution!r}: one of {', '.join(DISTRIBUTIONS)}")
        if not 0 <= self.correlation <= 1:
            raise ValueError(f"delay correlation must be between 0 and 1, not {self.correlation}")
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter cannot be negative")

    def cdf(self, seconds: float) -> float:
        """P(drawn delay <= seconds), the clamp at 0 included: what a KS test holds drawn delays to."""
        if seconds < 0:
            return 0.0
        if self.jitter <= 0:
            return 1.0 if seconds >= self.delay else 0.0
        return deviate_cdf(self.distribution, (seconds - self.delay) / self.jitter)


def release_time(arrival: float, drawn: float, previous_release: float, keep_order: bool) -> float:
    """When a packet may leave: arrival + drawn delay, and, in a FIFO, never before the packet ahead of it."""
    due = arrival + drawn
    return max(due, previous_release) if keep_order else due


class DelayLine:
    """One direction's state: the correlated draw, the FIFO's last release, and the reordering count.

    `admit` numbers packets in arrival order; `release` is told the number of each packet as it actually
    leaves, and counts a packet as reordered when a packet that arrived after it has already left (RFC 4737's
    "reordered" singleton, with release order standing for arrival order at the far end)."""

    def __init__(self, spec: DelaySpec | None = None):
        self.spec = spec or DelaySpec()
        self.last_release = -math.inf
        self.admitted = 0
        self.reordered = 0
        self._z: float | None = None  # the last normal score, for the AR(1)
        self._next_expected = 0  # one past the highest arrival number released so far

    def draw(self, rng: random.Random) -> float:
        """The next drawn delay in seconds (>= 0)."""
        spec = self.spec
        if spec.jitter <= 0:
            return spec.delay
        if spec.correlation > 0 and self._z is not None:
            r = gaussian_correlation(spec.correlation)
            z = r * self._z + math.sqrt(max(0.0, 1 - r * r)) * rng.gauss(0.0, 1.0)
        else:
            z = rng.gauss(0.0, 1.0)
        self._z = z
        return max(0.0, spec.delay + spec.jitter * deviate(spec.distribution, z))

    def admit(self, arrival: float, rng: random.Random) -> tuple[int, float, float]:
        """(arrival number, drawn delay, release time) for a packet that arrived at `arrival`."""
        drawn = self.draw(rng)
        due = release_time(arrival, drawn, self.last_release, not self.spec.reorder)
        self.last_release = max(self.last_release, due)
        number = self.admitted
        self.admitted += 1
        return number, drawn, due

    def release(self, number: int) -> bool:
        """Note that packet `number` left now; True when it left after a packet that arrived after it."""
        if number < self._next_expected:
            self.reordered += 1
            return True
        self._next_expected = number + 1
        return False
