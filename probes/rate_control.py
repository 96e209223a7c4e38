"""A congestion controller that yields like a WebRTC call's, so a probe stream fails where a real call would.

Chromium's calls run Google Congestion Control (GCC): when another flow fills a queue, the one-way delay grows,
GCC cuts its rate and the picture degrades, while a constant-rate rehearsal pushes through and passes. This
module is GCC's sender-side logic as pure computation (no I/O, no clock): feed it packet fates, read a rate.

Source: S. Holmer et al., "A Google Congestion Control Algorithm for Real-Time Communication",
draft-ietf-rmcat-gcc-02 (July 2016), section numbers below:

- §5.1 arrival-time model: d(i) = t(i) - t(i-1) - (T(i) - T(i-1)) between packet groups, t the arrival of a
  group's last packet on the receiver's clock, T its send time on the sender's; only these differences of
  differences are used, so the two clocks' offset cancels. Packets sent before the current group are ignored.
- §4, §5.2 pre-filtering: packets sent within burst_time = 5 ms form a group; a packet arriving < 5 ms after the
  group with d < 0 (a burst released after an outage) joins it; one arriving before the group's last arrival
  only within 100 ms of sending (libwebrtc bounds bursts to 100 ms; without a bound a receiver clock stepping
  back made every later packet join one group forever). A d(i) over 3 s is a clock step, not a queue, and is
  skipped (libwebrtc resets there too).
- §5.3 arrival-time filter: "any adaptive filter". We use the trendline filter that replaced the draft's Kalman
  filter in libwebrtc (modules/congestion_controller/goog_cc/trendline_estimator.cc; its constants, not its code):
  the accumulated d(i) smoothed with 0.9, a least-squares slope over the last 20 groups, and
  m(i) = slope * min(groups seen, 60) * 4, i.e. roughly the delay growth over 240 ms. The draft's Kalman
  estimate is a per-group delay variation, which with 5 ms groups stays below the 12.5 ms threshold even for a
  2.6x overload and never sees a TCP queue rising 0.1 ms per ms; the trendline sees both.
- §5.4 over-use detector: m(i) > del_var_th for >= overuse_time_th = 10 ms and not falling -> over-use;
  m(i) < -del_var_th -> under-use. del_var_th(0) = 12.5 ms, adapted with Chromium's K_u = 0.0087 and K_d = 0.039 per ms
  (the draft's Table 1 has 0.01 and 0.00018; see K_U below),
  not adapted when |m(i)| - del_var_th > 15, clamped to [6, 600] ms.
- §5.5 rate control (AIMD): the Hold/Increase/Decrease table; increase by 1.08^min(dt/1 s, 1), or additively by
  half a packet per response time near the average max bitrate (EMA 0.95, three standard deviations);
  decrease to beta = 0.85 of R_hat, the received rate over T = 0.5 s of arrival time (started afresh when arrival
  time goes back or jumps past T, as libwebrtc's); A_hat < 1.5 * R_hat.
- §6 loss-based control: loss p > 10 % -> As_hat * (1 - 0.5 p); p < 2 % -> As_hat * 1.05; the rate sent is
  min(A_hat, As_hat).

Choices the draft leaves open, and ours: the round-trip time is unknown to a one-way controller, so the response
time is 100 ms + an assumed 100 ms RTT; a decrease is repeated at most once per response time (libwebrtc also
spaces them), so the queue can answer the previous one; loss is judged over 1 s of feedback, like an RTCP
receiver report, because a 100 ms batch holds too few packets for 5 % loss to read as 5 %; As_hat starts at
max_bps, since nothing is known about loss before the first report.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

BURST_NS = 5_000_000  # §4, §5.2, Table 1 burst_time
MAX_BURST_NS = 100_000_000  # after libwebrtc's kMaxBurstDurationMs: how long a group takes packets that arrive early
CLOCK_STEP_MS = 3000.0  # libwebrtc kArrivalTimeOffsetThreshold: a delay change this large is a clock step
TRENDLINE_WINDOW = 20  # libwebrtc trendline window (groups)
TRENDLINE_SMOOTHING = 0.9  # libwebrtc kDefaultTrendlineSmoothingCoeff
TRENDLINE_GAIN = 4.0  # libwebrtc kDefaultTrendlineThresholdGain
TRENDLINE_MAX_DELTAS = 60  # libwebrtc kMinNumDeltas: cap on the group count the slope is scaled by
THRESHOLD_INIT_MS = 12.5  # §5.4 del_var_th(0)
THRESHOLD_MIN_MS, THRESHOLD_MAX_MS = 6.0, 600.0  # §5.4 clamp
THRESHOLD_MAX_ADAPT_MS = 15.0  # §5.4: no adaptation when |m| - del_var_th exceeds this
# Chromium (the calls this stream stands in for) adapts faster than the draft's Table 1 (0.01, 0.00018): libwebrtc
# overuse_detector.cc k_up 0.0087, k_down 0.039 (constants only). With the draft's, a 1 Mbit/s bottleneck let queues
# peak at ~256 ms before each cut (tests/test_rate_control.py), far more than Chromium tolerates.
K_U, K_D = 0.0087, 0.039  # per ms
OVERUSE_TIME_MS = 10.0  # §5.4 overuse_time_th
MAX_GROUP_GAP_MS = 100.0  # a pause in the stream must not swing the threshold in one step
RATE_WINDOW_NS = 500_000_000  # §5.5 T, from [0.5, 1] s
MIN_RATE_SPAN_NS = 100_000_000  # R_hat needs this much arrival history to mean anything
BETA = 0.85  # §5.5, Table 1
ETA = 1.08  # §5.5 multiplicative increase per second
MAX_EST_SMOOTHING = 0.95  # §5.5 average max bitrate EMA
RESPONSE_TIME_MS = 100.0 + 100.0  # §5.5 100 ms + RTT; the RTT is assumed (one-way feedback carries none)
PACKET_BITS = 1200 * 8  # §5.5 expected packet size at 30 frames/s
FRAME_RATE = 30.0
LOSS_REPORT_NS = 1_000_000_000  # §6 runs per receiver report; we gather 1 s of fates per report
LOSS_HIGH, LOSS_LOW = 0.10, 0.02  # §6
LOSS_INCREASE = 1.05  # §6
SEEN_KEEP_NS = 30_000_000_000  # duplicates older than this (send time) can no longer be recognised
SEEN_PRUNE_AT = 20_000  # seqs remembered before the old ones are forgotten

State = Literal["normal", "overuse", "underuse"]


@dataclass(frozen=True, slots=True)
class PacketFate:
    """One packet in one direction: when its sender sent it and when its receiver got it, each on its own clock (ns)."""

    seq: int
    send_ns: int
    arrival_ns: int | None  # None: lost
    size_bytes: int


@dataclass(slots=True)
class _Group:
    """Packets sent within one burst (§5.2): first and last send time, last arrival."""

    first_send: int
    last_send: int
    last_arrival: int


class DelayBasedController:
    """GCC's delay-based (§5) and loss-based (§6) controllers behind one call: fates in, target rate out."""

    def __init__(self, start_bps: float, *, min_bps: float, max_bps: float) -> None:
        for name, value in (("start_bps", start_bps), ("min_bps", min_bps), ("max_bps", max_bps)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number of bits/s, got {value!r}")
        if not min_bps <= start_bps <= max_bps:
            raise ValueError(f"need min_bps <= start_bps <= max_bps, got {min_bps} <= {start_bps} <= {max_bps}")
        self._min, self._max = float(min_bps), float(max_bps)
        self._rate = self._a_hat = float(start_bps)
        self._as_hat = float(max_bps)
        self._seen: dict[int, int] = {}
        self._prune_at = SEEN_PRUNE_AT
        self._newest_send: int | None = None
        # Arrival-time model and trendline (§5.1-5.3).
        self._group: _Group | None = None
        self._prev_group: _Group | None = None
        self._origin: int | None = None
        self._acc_ms = self._smoothed_ms = 0.0
        self._window: deque[tuple[float, float]] = deque(maxlen=TRENDLINE_WINDOW)
        self._deltas = 0
        self._trend = 0.0
        # Over-use detector (§5.4).
        self._threshold = THRESHOLD_INIT_MS
        self._m = 0.0
        self._over_ms = 0.0
        self._state: State = "normal"
        self._signal: State = "normal"
        self._overuse_events = 0
        # Received rate (§5.5) on the receiver's clock.
        self._arrivals: deque[tuple[int, int]] = deque()
        self._first_arrival: int | None = None
        self._last_arrival: int | None = None
        # Rate controller (§5.5).
        self._ctrl: Literal["increase", "decrease", "hold"] = "increase"
        self._last_update: int | None = None
        self._last_decrease: int | None = None
        self._avg_max: float | None = None
        self._var_max = 0.0
        # Loss-based controller (§6).
        self._report_start: int | None = None
        self._report_sent = self._report_lost = 0

    @property
    def rate_bps(self) -> float:
        return self._rate

    @property
    def state(self) -> State:
        return self._state

    @property
    def overuse_events(self) -> int:
        return self._overuse_events

    def on_feedback(self, now_ns: int, fates: Sequence[PacketFate]) -> float:
        """Feed the fates that became known since the last call (any order; duplicates by seq ignored), return
        the new target rate in bits/s, clamped to [min_bps, max_bps]. `now_ns` is on the sender's clock."""
        if isinstance(now_ns, bool) or not isinstance(now_ns, int):
            raise ValueError(f"now_ns must be an int (ns on the sender's clock), got {now_ns!r}")
        fresh: dict[int, PacketFate] = {}
        for fate in fates:
            if not isinstance(fate, PacketFate):
                raise ValueError(f"fates must be PacketFate, got {type(fate).__name__}")
            if fate.size_bytes < 0:
                raise ValueError(f"packet {fate.seq}: negative size {fate.size_bytes}")
            if fate.seq not in self._seen and fate.seq not in fresh:
                fresh[fate.seq] = fate
        overused = False
        for fate in sorted(fresh.values(), key=lambda f: (f.send_ns, f.seq)):
            self._remember(fate)
            self._report_sent += 1
            if fate.arrival_ns is None:
                self._report_lost += 1
                continue
            self._count_arrival(fate.arrival_ns, fate.size_bytes)
            signal = self._on_arrival(fate.send_ns, fate.arrival_ns)
            if signal is not None:
                self._signal = signal
                overused |= signal == "overuse"
        # One over-use in the batch is congestion even if the batch's last group no longer shows it.
        self._update_delay_based(now_ns, "overuse" if overused else self._signal)
        self._update_loss_based(now_ns)
        self._rate = min(max(min(self._a_hat, self._as_hat), self._min), self._max)
        return self._rate

    def _remember(self, fate: PacketFate) -> None:
        """Keep recent seqs so a repeated report is ignored; forget old ones so a long call stays small."""
        self._seen[fate.seq] = fate.send_ns
        if self._newest_send is None or fate.send_ns > self._newest_send:
            self._newest_send = fate.send_ns
        if len(self._seen) > self._prune_at:
            horizon = self._newest_send - SEEN_KEEP_NS
            self._seen = {s: t for s, t in self._seen.items() if t >= horizon}
            # Above ~700 packets/s, 30 s hold more than SEEN_PRUNE_AT: prune again only when the dict has doubled,
            # not on every packet (that made each fate cost a copy of the whole dict).
            self._prune_at = max(SEEN_PRUNE_AT, 2 * len(self._seen))

    def _count_arrival(self, arrival: int, size: int) -> None:
        last = self._last_arrival
        if last is not None and not last - RATE_WINDOW_NS <= arrival <= last + RATE_WINDOW_NS:
            # As libwebrtc's BitrateEstimator: time going back (the receiver's clock stepped) or a gap longer than
            # the window starts R_hat afresh. Else a step back keeps every later packet in the window (R_hat grows
            # without bound, decreases stop cutting) and one ahead reads a whole window holding one packet.
            self._arrivals.clear()
            self._first_arrival = self._last_arrival = None
        self._arrivals.append((arrival, size))
        if self._first_arrival is None:
            self._first_arrival = arrival
        if self._last_arrival is None or arrival > self._last_arrival:
            self._last_arrival = arrival
        while self._arrivals and self._arrivals[0][0] <= self._last_arrival - RATE_WINDOW_NS:
            self._arrivals.popleft()

    def _received_bps(self) -> float | None:
        """R_hat (§5.5): bits that arrived in the last T of arrival time, or None before there is T's worth."""
        if self._first_arrival is None or self._last_arrival is None:
            return None
        span = min(RATE_WINDOW_NS, self._last_arrival - self._first_arrival)
        if span < MIN_RATE_SPAN_NS:
            return None
        return sum(size for _, size in self._arrivals) * 8 * 1e9 / span

    def _on_arrival(self, send: int, arrival: int) -> State | None:
        """Group the packet (§5.2); when it closes a group, run filter and detector and return their signal."""
        group = self._group
        if group is None:
            self._group = _Group(send, send, arrival)
            return None
        if send < group.first_send:
            return None  # §5.1: out of order for the arrival-time model
        if send - group.first_send <= BURST_NS:
            group.last_send, group.last_arrival = max(group.last_send, send), max(group.last_arrival, arrival)
            return None
        gap = arrival - group.last_arrival
        early = gap < 0 and send - group.first_send > MAX_BURST_NS  # arrived before the group, sent long after
        if gap < BURST_NS and gap - (send - group.last_send) < 0 and not early:
            group.last_send, group.last_arrival = send, max(group.last_arrival, arrival)
            return None
        prev, self._prev_group, self._group = self._prev_group, group, _Group(send, send, arrival)
        if prev is None:
            return None
        d_ms = ((group.last_arrival - prev.last_arrival) - (group.last_send - prev.last_send)) / 1e6
        if abs(d_ms) > CLOCK_STEP_MS:
            return None  # the receiver's clock stepped (a queue cannot grow or drain 3 s between groups): skip it
        dt_ms = min(max((group.last_arrival - prev.last_arrival) / 1e6, 0.0), MAX_GROUP_GAP_MS)
        return self._detect(self._filter(d_ms, group.last_arrival), dt_ms)

    def _filter(self, d_ms: float, arrival: int) -> float:
        """Trendline (§5.3 via libwebrtc): the slope of smoothed accumulated delay, scaled to a delay in ms."""
        if self._origin is None:
            self._origin = arrival
        self._deltas = min(self._deltas + 1, 1000)
        self._acc_ms += d_ms
        self._smoothed_ms = TRENDLINE_SMOOTHING * self._smoothed_ms + (1 - TRENDLINE_SMOOTHING) * self._acc_ms
        self._window.append(((arrival - self._origin) / 1e6, self._smoothed_ms))
        slope = _slope(self._window) if len(self._window) == TRENDLINE_WINDOW else None
        if slope is not None:
            self._trend = slope
        return self._trend * min(self._deltas, TRENDLINE_MAX_DELTAS) * TRENDLINE_GAIN

    def _detect(self, m: float, dt_ms: float) -> State:
        """Over-use detector with adaptive threshold (§5.4): this group's signal. The state stays "overuse" while
        m(i) is above the threshold, but a falling m(i) signals no over-use: the queue is already draining."""
        prev_m, self._m = self._m, m
        previous = self._state
        signal: State = "normal"
        if m > self._threshold:
            self._over_ms += dt_ms
            if self._over_ms >= OVERUSE_TIME_MS and m >= prev_m:
                self._state = signal = "overuse"
            elif previous == "underuse":
                self._state = "normal"
        else:
            self._over_ms = 0.0
            self._state = signal = "underuse" if m < -self._threshold else "normal"
        if self._state == "overuse" and previous != "overuse":
            self._overuse_events += 1
        excess = abs(m) - self._threshold
        if excess <= THRESHOLD_MAX_ADAPT_MS:
            k = K_D if excess < 0 else K_U
            self._threshold += dt_ms * k * excess
            self._threshold = min(max(self._threshold, THRESHOLD_MIN_MS), THRESHOLD_MAX_MS)
        return signal

    def _update_delay_based(self, now: int, signal: State) -> None:
        """AIMD rate controller (§5.5): state table first, then the state's action on A_hat."""
        dt_ms = 0.0 if self._last_update is None else max((now - self._last_update) / 1e6, 0.0)
        self._last_update = now
        if signal == "overuse":
            self._ctrl = "decrease"
        elif signal == "underuse":
            self._ctrl = "hold"
        elif self._ctrl == "hold":
            self._ctrl = "increase"
        elif self._ctrl == "decrease":
            self._ctrl = "hold"
        r_hat = self._received_bps()
        if self._ctrl == "decrease":
            if self._last_decrease is None or (now - self._last_decrease) / 1e6 >= RESPONSE_TIME_MS:
                self._last_decrease = now
                self._a_hat = min(self._a_hat, BETA * (r_hat if r_hat is not None else self._a_hat))
                if r_hat is not None:
                    self._note_max(r_hat)
        elif self._ctrl == "increase":
            self._a_hat = self._increased(dt_ms, r_hat)
        self._a_hat = min(max(self._a_hat, self._min), self._max)

    def _note_max(self, r_hat: float) -> None:
        """Average and variance of R_hat at decreases (§5.5), what 'close to convergence' is measured against."""
        if self._avg_max is None:
            self._avg_max, self._var_max = r_hat, 0.0
            return
        self._avg_max = MAX_EST_SMOOTHING * self._avg_max + (1 - MAX_EST_SMOOTHING) * r_hat
        self._var_max = MAX_EST_SMOOTHING * self._var_max + (1 - MAX_EST_SMOOTHING) * (r_hat - self._avg_max) ** 2

    def _increased(self, dt_ms: float, r_hat: float | None) -> float:
        """Multiplicative far from the last congestion point, additive near it; never above 1.5 R_hat (§5.5)."""
        spread = 3 * math.sqrt(self._var_max)
        if self._avg_max is not None and r_hat is not None and r_hat > self._avg_max + spread:
            self._avg_max, self._var_max = None, 0.0  # the bottleneck moved: multiplicative again
        if self._avg_max is not None and r_hat is not None and abs(r_hat - self._avg_max) <= spread:
            bits_per_frame = self._a_hat / FRAME_RATE
            packet_bits = bits_per_frame / math.ceil(bits_per_frame / PACKET_BITS)
            alpha = 0.5 * min(dt_ms / RESPONSE_TIME_MS, 1.0)
            raised = self._a_hat + max(1000.0, alpha * packet_bits)
        else:
            raised = self._a_hat * ETA ** min(dt_ms / 1000.0, 1.0)
        if r_hat is not None:
            raised = min(raised, max(self._a_hat, 1.5 * r_hat))
        return raised

    def _update_loss_based(self, now: int) -> None:
        """§6 over one report's worth (1 s) of fates: cut above 10 % loss, grow 5 % below 2 %, hold between."""
        if self._report_start is None:
            self._report_start = now
        if now - self._report_start < LOSS_REPORT_NS or self._report_sent == 0:
            return
        p = self._report_lost / self._report_sent
        if p > LOSS_HIGH:
            self._as_hat = min(self._as_hat, self._rate) * (1 - 0.5 * p)
        elif p < LOSS_LOW:
            self._as_hat = self._as_hat * LOSS_INCREASE
        self._as_hat = min(max(self._as_hat, self._min), self._max)
        self._report_start, self._report_sent, self._report_lost = now, 0, 0


def _slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x, None when all x coincide."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den if den > 0 else None
