"""The call-like stream (probes/callstream.py) on 127.0.0.1: it holds a call's rate where nothing competes, keeps
it over a long but steady delay, yields to a queue that grows, and ends cleanly when nobody answers.

The bottleneck is emulated by a reflector of our own in this file: each packet leaves a virtual queue served at a
fixed rate, and the reply carries the time it left the queue as its receive time (T2) and is sent then, so the
way out looks like a link of that rate with a deep buffer. A foreign TWAMP-light responder (tests/
test_stamp_interop.py, written from RFC 5357 alone) answers in the short form.
"""

from __future__ import annotations

import asyncio
import heapq
import select
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from desanet.probes.callstream import CallStreamResult, CallStreamSettings, _Stream, delay_rise, held_rate, probe
from desanet.probes.reflector import Reflector, ReflectorOptions
from desanet.probes.stamp import build_reflector_packet, ns_to_ntp, parse_sender_packet, set_reflector_timestamp
from tests.test_stamp import LOOPBACK, free_udp_port
from tests.test_stamp_interop import TwampLightResponder

RATE = 2_600_000.0  # meet-hd's call picture


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class BottleneckReflector:
    """A STAMP reflector behind an emulated link: `rate_bps` with an unbounded FIFO and `delay_s` more each way
    (a thread on 127.0.0.1, stopped by the test; bounded lifetime)."""

    def __init__(self, rate_bps: float | None, delay_s: float = 0.0, lifetime: float = 20.0) -> None:
        self.rate_bps, self.delay_s, self.lifetime = rate_bps, delay_s, lifetime
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.answered = 0

    def __enter__(self) -> BottleneckReflector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        pending: list[tuple[float, int, bytes, Any]] = []  # (send at, seq, sender packet, peer)
        busy_until = 0.0
        seq = 0
        end = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < end:
            wait = 0.05 if not pending else max(0.0, pending[0][0] - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], min(wait, 0.05))
            now = time.monotonic()
            if ready:
                data, peer = self.sock.recvfrom(65536)
                service = 0.0 if self.rate_bps is None else len(data) * 8 / self.rate_bps
                busy_until = max(now, busy_until) + service
                heapq.heappush(pending, (busy_until + self.delay_s, seq, data, peer))
                seq += 1
            while pending and pending[0][0] <= time.monotonic():
                due, _n, data, peer = heapq.heappop(pending)
                pkt = parse_sender_packet(data)
                if pkt is None:
                    continue
                # T2: when the packet came out of the link (wall clock, as a real reflector's would read)
                t2 = time.time_ns() - int((time.monotonic() - due) * 1e9)
                buf = build_reflector_packet(pkt, seq=self.answered, receive_timestamp=ns_to_ntp(t2))
                set_reflector_timestamp(buf, ns_to_ntp(time.time_ns()))
                self.sock.sendto(bytes(buf), peer)
                self.answered += 1


def settings(port: int, **kw: Any) -> CallStreamSettings:
    args: dict[str, Any] = {"rate_bps": RATE, "duration_seconds": 3.0, "port": port, "timeout_seconds": 1.0}
    args.update(kw)
    return CallStreamSettings(**args)


def test_settings_refuse_nonsense() -> None:
    for bad in (
        {"rate_bps": 0},
        {"rate_bps": float("nan")},
        {"rate_bps": 1e6, "min_rate_bps": 2e6},
        {"rate_bps": 1e6, "duration_seconds": 0.1},
        {"rate_bps": 1e6, "packet_bytes": 20},
        {"rate_bps": 1e6, "packet_bytes": 9000},
        {"rate_bps": 1e6, "dscp": 64},
        {"rate_bps": 1e6, "port": 0},
    ):
        with pytest.raises(ValueError):
            CallStreamSettings(**bad)
    s = CallStreamSettings(rate_bps=1e6, duration_seconds=4)
    assert s.max_bytes() == 500_000 + 1200  # the budget's bound: 4 s at 1 Mbit/s and one packet


def test_pure_helpers() -> None:
    assert delay_rise([]) is None and delay_rise([5]) is None
    # a clock offset of an hour cancels; p95 of 0..99 ms above the minimum is 94 ms
    base = 3_600 * 10**9
    assert delay_rise([base + i * 1_000_000 for i in range(100)]) == pytest.approx(0.094)
    sends = [(i * 0.01, 1000) for i in range(400)]  # 1000 B every 10 ms = 800 kbit/s over 4 s
    assert held_rate(sends, 2.0, 4.0) == pytest.approx(800_000)
    assert held_rate(sends, 2.0, 2.0) is None
    assert held_rate(sends, 2.0, 4.0, lambda i: i % 2 == 0) == pytest.approx(400_000)  # half of them answered


class FakeSocket:
    """What _Stream needs of a socket, without a network: sends are kept, replies are queued by the test."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.inbox: list[bytes | OSError] = []

    def send(self, data: bytes) -> int:
        self.out.append(bytes(data))
        return len(data)

    def recvmsg(self, _size: int, _anc: int, _flags: int) -> tuple[bytes, list[Any], int, Any]:
        if not self.inbox:
            raise BlockingIOError
        item = self.inbox.pop(0)
        if isinstance(item, OSError):
            raise item
        return item, [], 0, None

    def reply(self, index: int, reflector_seq: int, padding: int = 0, length: int | None = None) -> None:
        """Queue the reflector's answer to our `index`th packet, numbered `reflector_seq` by the reflector, cut to
        `length` octets (a short-form TWAMP-light reply is 38) and `padding` octets longer."""
        pkt = parse_sender_packet(self.out[index])
        assert pkt is not None
        buf = build_reflector_packet(pkt, seq=reflector_seq, receive_timestamp=ns_to_ntp(time.time_ns()))
        set_reflector_timestamp(buf, ns_to_ntp(time.time_ns()))
        self.inbox.append(bytes(buf)[:length] + bytes(padding))


STAMP_PORT_UNUSED = 862  # _Stream never connects: FakeSocket stands in for the connected socket
LATER_NS = 10 * 10**9  # past every timeout: whatever is still missing is lost


def pure_stream(packets: int) -> tuple[_Stream, FakeSocket]:
    sock = FakeSocket()
    stream = _Stream(sock, settings(STAMP_PORT_UNUSED))  # type: ignore[arg-type]
    for i in range(packets):
        assert stream.send(i * 0.005)
    return stream, sock


def test_pure_replies_overtaken_on_the_way_back_are_not_lost() -> None:
    """netem jitter reorders replies: the reflector numbered them 0, 1, 2, 3, we get 0, 2, 1, 3. The gap at 2
    is filled by 1 arriving next, so nothing is lost on the way back and the controller gets four arrivals."""
    stream, sock = pure_stream(4)
    for index, rseq in ((0, 0), (2, 2), (1, 1), (3, 3)):
        sock.reply(index, rseq)
    stream.on_readable()
    stream.expire(time.time_ns() + LATER_NS)
    _f, back = stream.take()
    assert stream.received == 4 and stream.backward_lost == 0
    assert sorted(f.seq for f in back) == [0, 1, 2, 3]
    assert all(f.arrival_ns is not None for f in back)


def test_pure_a_reply_that_never_comes_is_lost_on_the_way_back_after_the_timeout() -> None:
    stream, sock = pure_stream(4)
    for index, rseq in ((0, 0), (2, 2), (3, 3)):
        sock.reply(index, rseq)
    stream.on_readable()
    stream.expire(time.time_ns())
    assert stream.backward_lost == 0  # it may still be on its way
    stream.expire(time.time_ns() + LATER_NS)
    _f, back = stream.take()
    assert stream.backward_lost == 1
    assert [f.seq for f in back if f.arrival_ns is None] == [1]


def test_pure_a_reflector_that_restarts_its_numbering_is_still_heard() -> None:
    """After a restart the reflector counts from 0 again: those replies must reach the way-back controller as new
    packets, not as repeats of numbers it has seen (it would ignore them and go blind)."""
    stream, sock = pure_stream(6)
    for index, rseq in ((0, 0), (1, 1), (2, 2), (3, 3), (4, 0), (5, 1)):
        sock.reply(index, rseq)
    stream.on_readable()
    stream.expire(time.time_ns() + LATER_NS)
    _f, back = stream.take()
    assert len({f.seq for f in back}) == 6 and all(f.arrival_ns is not None for f in back)
    assert stream.backward_lost == 0


def test_pure_a_jump_in_the_numbering_beyond_all_we_sent_is_not_loss() -> None:
    """A reflector that starts a new count somewhere else (or wraps) did not lose a million replies we never sent."""
    stream, sock = pure_stream(3)
    for index, rseq in ((0, 5), (1, 1_000_000), (2, 1_000_001)):
        sock.reply(index, rseq)
    stream.on_readable()
    stream.expire(time.time_ns() + LATER_NS)
    _f, back = stream.take()
    assert stream.backward_lost == 0 and len(back) == 3


def test_pure_a_reply_later_than_the_timeout_is_lost_whenever_it_is_read() -> None:
    """The same timeout for every packet: a reply that came 1.5 s after its packet is lost, also when it is read
    in the wait after the last packet (where expire() had not run on it yet and it used to count as held)."""
    stream, sock = pure_stream(2)
    stream.sent_at[0] -= 1_500_000_000  # packet 0 left 1.5 s ago
    sock.reply(0, 0)
    sock.reply(1, 1)
    stream.on_readable()
    assert stream.received == 1 and stream.answered == {1}
    stream.expire(time.time_ns())
    fwd, _b = stream.take()
    assert stream.forward_lost == 1 and [f.seq for f in fwd if f.arrival_ns is None] == [0]


def test_pure_a_reply_that_is_not_ours_leaves_ours_pending() -> None:
    """A datagram with our number but not our timestamp (a stale session, a confused reflector) is not our
    reply; ours, coming next, must still count."""
    stream, sock = pure_stream(1)
    sock.reply(0, 0)
    genuine = sock.inbox.pop()
    assert isinstance(genuine, bytes)
    forged = bytearray(genuine)
    forged[28:36] = bytes(8)  # the echoed sender timestamp (RFC 8762 §4.3.1, octets 28-35)
    sock.inbox.append(bytes(forged))
    sock.reply(0, 0)
    stream.on_readable()
    assert stream.received == 1 and stream.answered == {0} and not stream.sent_at


def test_pure_the_way_back_is_measured_in_our_packets_whatever_the_reply_size() -> None:
    """The way-back controller sets our sending rate; a foreign responder answering 1200 octets with 38 (short
    form) or 2200 (padded) must not make the rate it received read 30 times lower or twice higher than ours."""
    stream, sock = pure_stream(6)
    for index in range(6):
        sock.reply(index, index, length=38 if index % 2 else None, padding=0 if index % 2 else 1000)
    stream.on_readable()
    stream.expire(time.time_ns() + LATER_NS)
    _f, back = stream.take()
    assert stream.received == 6 and {f.size_bytes for f in back} == {1200}


def test_pure_padded_replies_are_charged_as_they_came_back() -> None:
    """A TWAMP-light responder may pad its replies past the packet's size: the budget is charged what came back,
    not twice what went out."""
    stream, sock = pure_stream(3)
    for index in range(3):
        sock.reply(index, index, padding=1000)
    stream.on_readable()
    assert stream.received == 3
    assert stream.bytes_received == sum(len(p) for p in sock.out) + 3 * 1000
    sent = sum(len(p) for p in sock.out)
    result = CallStreamResult(
        target=LOOPBACK,
        rate_bps=RATE,
        duration_seconds=3.0,
        sent_bps=None,
        held_bps=None,
        held_ratio=None,
        sent=3,
        received=3,
        bytes_sent=sent,
        loss_ratio=0.0,
        overuse_forward=0,
        overuse_backward=0,
        delay_rise_forward_seconds=None,
        delay_rise_backward_seconds=None,
        lowest_bps=RATE,
        elapsed_seconds=0.1,
        bytes_received=stream.bytes_received,
    )
    assert result.moved_bytes() == 2 * sent + 3 * 1000
    assert result.to_dict()["bytes_received"] == sent + 3 * 1000
    # replies lost on the way back are charged as large as the packets
    assert replace(result, bytes_received=0).moved_bytes() == 2 * sent


def test_a_clean_path_holds_the_calls_rate() -> None:
    async def go() -> Any:
        async with Reflector(ReflectorOptions()) as reflector:
            _h, port = await reflector.serve(LOOPBACK, 0)
            return await probe(LOOPBACK, settings(port))

    r = run(go())
    assert r.loss_ratio == 0 and r.received == r.sent > 0
    assert r.held_ratio is not None and r.held_ratio > 0.9, r
    assert r.overuse_forward == 0 and r.overuse_backward == 0
    assert r.delay_rise_forward_seconds is not None and r.delay_rise_forward_seconds < 0.01
    # it never sends above the call's rate: about 3 s at 2.6 Mbit/s, one pacing credit of slack
    assert r.bytes_sent <= RATE * 3.0 / 8 + 6 * 1200


def test_a_long_steady_delay_is_not_congestion() -> None:
    with BottleneckReflector(rate_bps=None, delay_s=0.3) as refl:
        r = run(probe(LOOPBACK, settings(refl.port)))
    assert r.loss_ratio == 0
    assert r.held_ratio is not None and r.held_ratio > 0.9, r
    assert r.overuse_forward == 0


def test_it_yields_to_a_link_below_the_calls_rate() -> None:
    cap = 0.4 * RATE
    with BottleneckReflector(rate_bps=cap) as refl:
        r = run(probe(LOOPBACK, settings(refl.port, duration_seconds=4.0, timeout_seconds=2.0)))
    assert r.overuse_forward >= 1, r
    assert r.held_bps is not None and r.held_bps < 0.75 * RATE, r
    # ... without starving itself: a call on that link still sends something like the link's rate
    assert r.held_bps > 0.15 * cap, r
    assert r.delay_rise_forward_seconds is not None and r.delay_rise_forward_seconds > 0.02


def test_nobody_answering_ends_cleanly_at_a_low_rate() -> None:
    port = free_udp_port()
    t0 = time.monotonic()
    r = run(probe(LOOPBACK, settings(port, duration_seconds=2.0)))
    assert time.monotonic() - t0 < 2.0 + 1.0 + 1.5
    assert r.received == 0 and r.loss_ratio == 1.0
    assert r.held_ratio == 0.0, r  # nothing made the round trip
    assert r.sent_bps is not None and r.sent_bps < 0.75 * RATE, r  # and the loss part backed off, as a call's does
    assert r.delay_rise_forward_seconds is None


def test_a_foreign_twamp_light_responder_in_the_short_form() -> None:
    with TwampLightResponder(short=True, padding=0, lifetime=15) as peer:
        r = run(probe(LOOPBACK, settings(peer.port, duration_seconds=2.0)))
    assert r.received == r.sent > 0
    assert r.held_ratio is not None and r.held_ratio > 0.9
