"""probes.rate_control against a small packet-level model of a path, the way callstream.py will drive it.

The model: a sender paces 1200-byte packets at the controller's rate (a call's video packets are near the MTU),
the path gives each packet an arrival time or loses it, and every 100 ms the sender learns the fates whose
report reached it (arrival + the return delay; a loss 500 ms after sending) and asks for a new rate. Arrival
times are reported on the receiver's own clock, offset from the sender's. Paths are built from physics
(serialisation on a bottleneck, a FIFO shared with a TCP-like flow, seeded jitter and loss), never from
expected numbers; the assertions are what a technician relies on.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest

from desanet.probes.rate_control import DelayBasedController, PacketFate

PACKET_BYTES = 1200
FEEDBACK_NS = 100_000_000
MS = 1_000_000
S = 1_000_000_000
CALL_BPS = 2.6e6  # a 720p call's rate, the start and ceiling of the stream
MIN_BPS = 50e3

# A path: (seq, send_ns, size_bytes) -> true one-way arrival time in ns on the sender's timeline, or None (lost).
Path = Callable[[int, int, int], int | None]


@dataclass
class Run:
    """What the simulation recorded: the rate after each feedback, and each packet's true one-way delay."""

    times_s: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    delays_ms: list[tuple[float, float]] = field(default_factory=list)  # (send time s, delay ms)

    def mean_rate(self, from_s: float, to_s: float = float("inf")) -> float:
        return statistics.fmean(r for t, r in zip(self.times_s, self.rates, strict=True) if from_s <= t < to_s)

    def first_time(self, predicate: Callable[[float], bool]) -> float | None:
        return next((t for t, r in zip(self.times_s, self.rates, strict=True) if predicate(r)), None)


def simulate(
    ctrl: DelayBasedController, path: Path, seconds: float, *, offset_ns: int = 0, return_ms: float = 20.0
) -> Run:
    """Pace packets at ctrl's rate through `path` and feed back their fates every 100 ms."""
    run = Run()
    pending: list[tuple[int, PacketFate]] = []
    seq, next_send, now = 0, 0.0, FEEDBACK_NS
    while now <= seconds * S:
        while next_send < now:
            send = int(next_send)
            arrival = path(seq, send, PACKET_BYTES)
            if arrival is None:
                pending.append((send + 500 * MS, PacketFate(seq, send, None, PACKET_BYTES)))
            else:
                run.delays_ms.append((send / S, (arrival - send) / MS))
                known = arrival + int(return_ms * MS)
                pending.append((known, PacketFate(seq, send, arrival + offset_ns, PACKET_BYTES)))
            seq += 1
            next_send += PACKET_BYTES * 8 / ctrl.rate_bps * S
        ready = [fate for known, fate in pending if known <= now]
        pending = [(known, fate) for known, fate in pending if known > now]
        run.rates.append(ctrl.on_feedback(now, ready))
        run.times_s.append(now / S)
        now += FEEDBACK_NS
    return run


def constant(delay_ms: float, *, jitter_ms: float = 0.0, loss: float = 0.0, seed: int = 1) -> Path:
    """A path with a fixed delay, uniform jitter in [0, jitter_ms) and independent random loss."""
    rng = random.Random(seed)

    def path(seq: int, send: int, size: int) -> int | None:
        if rng.random() < loss:
            return None
        return send + int((delay_ms + rng.random() * jitter_ms) * MS)

    return path


def bottleneck(capacity_bps: float, *, prop_ms: float = 20.0, buffer_ms: float = 1000.0) -> Path:
    """A FIFO link: each packet waits for the one before it, then takes size/capacity; tail drop past buffer_ms."""
    free_at = 0.0

    def path(seq: int, send: int, size: int) -> int | None:
        nonlocal free_at
        if free_at - send > buffer_ms * MS:
            return None
        free_at = max(free_at, float(send)) + size * 8 / capacity_bps * S
        return int(free_at + prop_ms * MS)

    return path


@dataclass
class TcpQueue:
    """A FIFO link shared with a TCP-like flow (fluid): its rate grows `ramp_bps_per_s` until the queue reaches
    buffer_ms, then halves (the tail drop is its loss signal), so the queue delay saws up and drops, repeated."""

    capacity_bps: float
    ramp_bps_per_s: float
    buffer_ms: float = 300.0
    prop_ms: float = 20.0
    tcp_bps: float = 0.0
    backlog_bits: float = 0.0
    clock_ns: int = 0
    queue_ms: list[float] = field(default_factory=list)

    def __call__(self, seq: int, send: int, size: int) -> int | None:
        dt = (send - self.clock_ns) / S
        self.clock_ns = send
        self.tcp_bps += self.ramp_bps_per_s * dt
        self.backlog_bits = max(0.0, self.backlog_bits + (self.tcp_bps - self.capacity_bps) * dt)
        limit = self.capacity_bps * self.buffer_ms / 1000
        if self.backlog_bits >= limit:
            self.backlog_bits, self.tcp_bps = limit, self.tcp_bps / 2
        self.queue_ms.append(self.backlog_bits / self.capacity_bps * 1000)
        if self.backlog_bits + size * 8 > limit:
            return None
        self.backlog_bits += size * 8
        return send + int((self.prop_ms + self.backlog_bits / self.capacity_bps * 1000) * MS)


def saw_teeth(queue_ms: list[float]) -> int:
    """How often the queue rose by 100 ms or more from its last low (a new low is armed by a 50 ms fall)."""
    teeth, low, peak, armed = 0, float("inf"), 0.0, True
    for q in queue_ms:
        if armed:
            low = min(low, q)
            if q >= low + 100.0:
                teeth, peak, armed = teeth + 1, q, False
        else:
            peak = max(peak, q)
            if q <= peak - 50.0:
                low, armed = q, True
    return teeth


def controller(start: float = CALL_BPS) -> DelayBasedController:
    return DelayBasedController(start, min_bps=MIN_BPS, max_bps=CALL_BPS)


@pytest.mark.parametrize("offset_ns", [0, 7 * 10**17, -(3 * 10**18), 123_456_789])
def test_clean_path_keeps_the_rate_at_max_for_any_clock_offset(offset_ns: int) -> None:
    ctrl = controller()
    run = simulate(ctrl, constant(30.0), 30.0, offset_ns=offset_ns)
    assert min(run.rates) == CALL_BPS
    assert ctrl.overuse_events == 0
    assert ctrl.state == "normal"


def test_clean_path_climbs_from_a_low_start_to_max() -> None:
    """No congestion: the rate climbs (8 %/s delay-based, §5.5) and reaches the ceiling."""
    ctrl = controller(start=1.0e6)
    run = simulate(ctrl, constant(30.0), 20.0)
    assert run.rates[-1] == CALL_BPS
    assert ctrl.overuse_events == 0
    reached = run.first_time(lambda r: r >= CALL_BPS)
    assert reached is not None and reached < 15.0  # 1.08^t = 2.6 at t = 12.4 s


def test_long_constant_delay_is_not_growth() -> None:
    ctrl = controller()
    run = simulate(ctrl, constant(300.0), 30.0, offset_ns=-(10**15))
    assert min(run.rates) == CALL_BPS
    assert ctrl.overuse_events == 0


@pytest.mark.parametrize("jitter_ms", [5.0, 10.0])
def test_jitter_around_a_constant_delay_is_not_overuse(jitter_ms: float) -> None:
    """Uniform jitter of 0-5 and 0-10 ms per packet (sd 1.4 and 2.9 ms; 10 ms reorders packets 3 ms apart)."""
    ctrl = controller()
    run = simulate(ctrl, constant(40.0, jitter_ms=jitter_ms, seed=7), 60.0)
    assert ctrl.overuse_events == 0
    assert min(run.rates) == CALL_BPS


def test_bottleneck_below_the_rate_cuts_to_about_the_bottleneck_and_holds() -> None:
    """2.6 Mbit/s into a 1 Mbit/s link: overuse, the rate falls to 0.7-1.1x the link and stays near it."""
    capacity = 1.0e6
    ctrl = controller()
    run = simulate(ctrl, bottleneck(capacity), 60.0)
    assert ctrl.overuse_events >= 1
    cut = run.first_time(lambda r: r <= 1.1 * capacity)
    assert cut is not None and cut <= 1.0
    late = [r for t, r in zip(run.times_s, run.rates, strict=True) if t >= 20.0]
    assert 0.7 * capacity <= statistics.fmean(late) <= 1.05 * capacity
    assert max(late) <= 1.25 * capacity
    # Holding saws the queue, it does not grow it: after 20 s it peaks below 300 ms (the first 0.5 s at
    # 2.6 Mbit/s built 800 ms) and drains to within 25 ms of the 20 ms propagation in every 10 s.
    assert max(d for t, d in run.delays_ms) > 700.0
    assert max(d for t, d in run.delays_ms if t >= 20.0) < 300.0
    for start in range(20, 60, 10):
        assert min(d for t, d in run.delays_ms if start <= t < start + 10) < 45.0


def test_the_rate_returns_when_the_bottleneck_goes_away() -> None:
    link = bottleneck(3.0e6)
    slow = bottleneck(1.0e6)

    def path(seq: int, send: int, size: int) -> int | None:
        return (slow if send < 20 * S else link)(seq, send, size)

    ctrl = controller()
    run = simulate(ctrl, path, 50.0)
    assert run.mean_rate(10.0, 20.0) < 1.1e6
    assert run.rates[-1] == CALL_BPS


def test_tcp_sawing_the_queue_drives_the_rate_far_down() -> None:
    """A 4 Mbit/s link; a TCP-like flow ramps the queue by 100-300 ms in 1-2 s and drops it, again and again.
    A constant 2.6 Mbit/s stream would pass (it fits the link); the call-like stream yields far below it."""
    tcp = TcpQueue(capacity_bps=4.0e6, ramp_bps_per_s=1.0e6)
    ctrl = controller()
    run = simulate(ctrl, tcp, 60.0)
    assert saw_teeth(tcp.queue_ms) >= 10  # the saw really repeats
    assert ctrl.overuse_events >= 5
    assert run.mean_rate(30.0) < 0.5 * CALL_BPS


def test_the_same_link_without_tcp_keeps_the_call_at_max() -> None:
    ctrl = controller()
    run = simulate(ctrl, TcpQueue(capacity_bps=4.0e6, ramp_bps_per_s=0.0), 30.0)
    assert min(run.rates) == CALL_BPS
    assert ctrl.overuse_events == 0


def test_five_percent_random_loss_does_not_cut_the_rate() -> None:
    ctrl = controller()
    run = simulate(ctrl, constant(30.0, loss=0.05, seed=3), 60.0)
    assert min(run.rates) >= 0.95 * CALL_BPS
    assert ctrl.overuse_events == 0


def test_twenty_percent_random_loss_cuts_the_rate() -> None:
    """§6: above 10 % loss, As_hat *= 1 - 0.5 p once per 1 s report: about -10 % a second at 20 %."""
    ctrl = controller()
    run = simulate(ctrl, constant(30.0, loss=0.20, seed=3), 20.0)
    assert run.rates[-1] < 0.4 * CALL_BPS
    assert run.mean_rate(4.0, 6.0) < 0.85 * CALL_BPS
    assert ctrl.overuse_events == 0  # loss, not delay


@pytest.mark.parametrize(
    ("start", "low", "high"),
    [(1e6, 2e6, 3e6), (0.0, 0.0, 1e6), (-1.0, -2.0, 1e6), (float("nan"), 1.0, 2.0), (5e6, 1e6, float("inf"))],
)
def test_bad_rates_are_refused_with_a_clear_message(start: float, low: float, high: float) -> None:
    with pytest.raises(ValueError, match="bps"):
        DelayBasedController(start, min_bps=low, max_bps=high)


def test_start_may_equal_min_and_max() -> None:
    assert DelayBasedController(1e6, min_bps=1e6, max_bps=1e6).rate_bps == 1e6


class Recording(DelayBasedController):
    """Keeps every batch it was fed, so the same feedback can be replayed shuffled and repeated."""

    def __init__(self) -> None:
        super().__init__(CALL_BPS, min_bps=MIN_BPS, max_bps=CALL_BPS)
        self.batches: list[tuple[int, list[PacketFate]]] = []

    def on_feedback(self, now_ns: int, fates: Sequence[PacketFate]) -> float:
        self.batches.append((now_ns, list(fates)))
        return super().on_feedback(now_ns, fates)


def test_unordered_and_duplicated_fates_give_the_same_result_as_ordered() -> None:
    """Feedback shuffled within each batch and every report repeated in the next batch: same rates exactly."""
    ctrl = Recording()
    run = simulate(ctrl, bottleneck(1.0e6), 15.0)
    assert ctrl.overuse_events >= 1

    rng = random.Random(5)
    messy = controller()
    previous: list[PacketFate] = []
    rates = []
    for now_ns, fates in ctrl.batches:
        batch = fates + previous + fates[: len(fates) // 2]
        rng.shuffle(batch)
        rates.append(messy.on_feedback(now_ns, batch))
        previous = fates
    assert rates == run.rates
    assert messy.overuse_events == ctrl.overuse_events


def test_bad_fates_are_refused() -> None:
    ctrl = controller()
    with pytest.raises(ValueError, match="negative size"):
        ctrl.on_feedback(0, [PacketFate(1, 0, 5, -1)])
    with pytest.raises(ValueError, match="PacketFate"):
        ctrl.on_feedback(0, [(1, 0, 5, 1200)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="now_ns"):
        ctrl.on_feedback(0.5, [])  # type: ignore[arg-type]
    assert ctrl.rate_bps == CALL_BPS  # refused input changed nothing


def test_a_fast_long_stream_costs_little_per_packet() -> None:
    """The controller remembers 30 s of seqs to ignore repeats; at 4,000 packets/s (48 Mbit/s, within what
    callstream accepts) that is more than it prunes at, and each packet used to copy the whole memory. 15 s of
    such a stream must take well under its own duration."""
    ctrl = DelayBasedController(48e6, min_bps=MIN_BPS, max_bps=48e6)
    started, seq = time.monotonic(), 0
    for batch in range(150):
        fates = [
            PacketFate(seq + i, (seq + i) * 250_000, (seq + i) * 250_000 + 5 * MS, PACKET_BYTES) for i in range(400)
        ]
        seq += 400
        ctrl.on_feedback(batch * FEEDBACK_NS, fates)
        assert time.monotonic() - started < 5.0, f"{seq} packets took over 5 s"
    assert ctrl.rate_bps == 48e6  # a clean path: nothing to cut


class SteppedClock(DelayBasedController):
    """A controller whose fates come from a receiver whose clock steps by `step_ns` for packets sent from
    `at_ns` on (what a router's NTP client does when it corrects the clock)."""

    def __init__(self, step_ns: int, at_ns: int) -> None:
        super().__init__(CALL_BPS, min_bps=MIN_BPS, max_bps=CALL_BPS)
        self.step_ns, self.at_ns = step_ns, at_ns

    def on_feedback(self, now_ns: int, fates: Sequence[PacketFate]) -> float:
        stepped = [
            replace(f, arrival_ns=f.arrival_ns + self.step_ns)
            if f.arrival_ns is not None and f.send_ns >= self.at_ns
            else f
            for f in fates
        ]
        return super().on_feedback(now_ns, stepped)


@pytest.mark.parametrize("step_s", [-5.0, 5.0])
def test_a_receiver_clock_step_does_not_stop_the_controller_from_yielding(step_s: float) -> None:
    """The reflector's clock (the way out's arrival times) steps by 5 s at 1 s; from 3 s the path is a 1 Mbit/s
    link. The call still yields to it: the received rate starts again after the step instead of keeping every
    later packet in its window (clock back) or reading a window with one packet in it (clock ahead)."""
    link = bottleneck(1.0e6)

    def path(seq: int, send: int, size: int) -> int | None:
        return send + 20 * MS if send < 3 * S else link(seq, send, size)

    ctrl = SteppedClock(int(step_s * S), 1 * S)
    run = simulate(ctrl, path, 8.0)
    assert run.mean_rate(0.5, 1.0) == CALL_BPS  # clean before the step
    cut = run.first_time(lambda r: r <= 1.1e6)
    assert cut is not None and 3.0 <= cut <= 4.5, run.rates
    assert run.mean_rate(5.0) >= 0.4e6  # yields to the link, does not crash to the floor
