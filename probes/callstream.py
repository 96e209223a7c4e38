"""Call-like stream: STAMP packets at a video call's rate, with a call's congestion control deciding the rate.

Why this exists: a constant-rate UDP rehearsal (probes/throughput.py) takes its share of a queue whatever else
fills it, and so passes where real calls fail. Chromium's congestion control (GCC) reads the one-way delay of
its own packets and backs off as soon as a queue grows, so against an office's TCP upload in a deep buffer, or
neighbours' downloads on a kecamatan uplink, a real call drops to 180 lines and freezes (bench/verdict, run 1
and 2, docs/performance.md). This stream yields the way a call does, so the rate it can hold is the rate a
call would get.

How: session-sender packets (RFC 8762, the wire format of probes/stamp.py) go to the village's STAMP reflector,
paced every 5 ms at the controller's rate, starting at the profile's call rate and never above it. Every 0.1 s
the replies that came in feed two delay-based controllers (probes/rate_control.py, after
draft-ietf-rmcat-gcc-02): one for the way out (T1 → T2, sender and reflector clocks), one for the way back
(T3 → T4). The stream sends at the lower of their rates, as a call is held back by whichever side congests.
A reply missing `timeout_seconds` after its packet left counts as lost on the way out (the controller's loss
part); a gap in the reflector's own numbering is a loss on the way back (RFC 8762 §4.2.2 stateful reflector).

What it reports: the rate the controllers still allowed over the last half of the stream (`sent_bps`), the
part of it that made the round trip (`held_bps`, and `held_ratio` against the rate asked: a path that answers
nothing holds nothing, whatever was sent), the controllers' overuse signals per direction, loss, and how far each
direction's one-way delay rose under the stream's own load (p95 minus minimum: the queue the call would sit in).

Limits: both directions carry the same rate (a STAMP reply is as large as the packet), so a congested way back
also slows the way out; T1 is taken in user space just before send(), which adds tens of microseconds of noise,
far below GCC's 12.5 ms detection threshold. No Prometheus and no inventory here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from desanet.probes.rate_control import DelayBasedController, PacketFate
from desanet.probes.stamp import (
    DEFAULT_ERROR_ESTIMATE,
    MAX_DATAGRAM_BYTES,
    MIN_PACKET_BYTES,
    RX_ANCILLARY_BYTES,
    SENDER_HEADER,
    STAMP_PORT,
    enable_rx_metadata,
    ns_to_ntp,
    parse_reflector_packet,
    parse_rx_ancillary,
    set_ttl_and_tos,
)

PACING_SECONDS = 0.005  # Chromium's pacer sends in 5 ms slots; so do we
FEEDBACK_SECONDS = 0.1  # transport-wide feedback about every 100 ms (RTP/RTCP transport-cc)
MAX_TTL = 255
_NS = 1_000_000_000


@dataclass(frozen=True)
class CallStreamSettings:
    """One stream: at most `rate_bps` (the call's video rate) for `duration_seconds`."""

    rate_bps: float
    duration_seconds: float = 4.0
    min_rate_bps: float = 50_000.0  # a call keeps its audio and a thumbnail even when starved
    packet_bytes: int = 1200
    dscp: int = 34
    port: int = STAMP_PORT
    timeout_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_bps) and 10_000 <= self.rate_bps <= 100e6):
            raise ValueError(f"rate {self.rate_bps} bit/s outside 10 kbit/s - 100 Mbit/s")
        if not (0 < self.min_rate_bps <= self.rate_bps):
            raise ValueError(f"minimum rate {self.min_rate_bps} bit/s must be > 0 and <= the rate")
        if not 0.5 <= self.duration_seconds <= 60:
            raise ValueError(f"duration {self.duration_seconds} s outside 0.5-60 s")
        if not MIN_PACKET_BYTES <= self.packet_bytes <= 1472:
            raise ValueError(f"packet size {self.packet_bytes} outside {MIN_PACKET_BYTES}-1472 octets")
        if not 0 <= self.dscp <= 63:
            raise ValueError(f"DSCP {self.dscp} outside 0-63")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} outside 1-65535")
        if not 0 < self.timeout_seconds <= 10:
            raise ValueError(f"timeout {self.timeout_seconds} s outside (0, 10]")

    def max_bytes(self) -> int:
        """The most the stream can send (and the reflector send back, each): the budget reserves this."""
        return math.ceil(self.rate_bps * self.duration_seconds / 8) + self.packet_bytes


@dataclass(frozen=True)
class CallStreamResult:
    """What a call-like stream held. Ratios 0-1, seconds, bits/s; None where nothing came back."""

    target: str
    rate_bps: float  # asked: the profile's call rate
    duration_seconds: float  # how long it sent
    sent_bps: float | None  # sent over the last half of the stream: the rate the controllers allowed
    held_bps: float | None  # of that, what made the round trip
    held_ratio: float | None  # held_bps / rate_bps
    sent: int
    received: int
    bytes_sent: int
    loss_ratio: float | None  # round trip
    overuse_forward: int  # the way-out controller's overuse signals
    overuse_backward: int
    delay_rise_forward_seconds: float | None  # p95 - min of the one-way delays under the stream's load
    delay_rise_backward_seconds: float | None
    lowest_bps: float  # the lowest rate the controllers set
    elapsed_seconds: float
    bytes_received: int = 0  # every datagram that came back, padding and late replies too
    rates: tuple[tuple[float, float], ...] = field(default=(), repr=False)  # (seconds from start, bit/s) per feedback

    def to_dict(self) -> dict[str, Any]:
        """Every field under its own name (the calibration reads them), the rate timeline rounded."""
        return {**dataclasses.asdict(self), "rates": [[round(t, 3), round(r)] for t, r in self.rates]}

    def moved_bytes(self) -> int:
        """What the stream moved over the village's link, out and back, for the budget: a reflector may pad its
        replies beyond the packet's size (TWAMP-light responders do), so the way back counts what came back,
        and at least the packets' size (replies lost on the way back were not smaller)."""
        return self.bytes_sent + max(self.bytes_sent, self.bytes_received)


def delay_rise(delays_ns: list[int]) -> float | None:
    """p95 minus minimum of one-way delays, in seconds (the clock offset cancels): how much queue built up."""
    if len(delays_ns) < 2:
        return None
    s = sorted(delays_ns)
    p95 = s[min(len(s) - 1, math.ceil(0.95 * len(s)) - 1)]
    return (p95 - s[0]) / _NS


def held_rate(
    sends: list[tuple[float, int]], start: float, end: float, counted: Callable[[int], bool] = lambda i: True
) -> float | None:
    """Bits per second of the packets sent between `start` and `end` (seconds from the stream's start) for which
    `counted(index)` holds (all of them by default)."""
    if end <= start:
        return None
    sent = sum(size for i, (t, size) in enumerate(sends) if start <= t < end and counted(i))
    return sent * 8 / (end - start)


class _Stream:
    """The socket's bookkeeping; the loop calls `on_readable` when replies wait."""

    RX_BATCH = 256

    def __init__(self, sock: socket.socket, settings: CallStreamSettings) -> None:
        self.sock = sock
        self.settings = settings
        self.buf = bytearray(settings.packet_bytes)
        self.sent_at: dict[int, int] = {}  # seq -> T1 (ns), until its fate is known
        self.wire_t1: dict[int, int] = {}
        self.sends: list[tuple[float, int]] = []  # (seconds from start, bytes) for the held rate
        self.seq = 0
        self.send_errors = 0
        self.received = 0
        self.bytes_received = 0
        self.answered: set[int] = set()  # seqs whose reply came in time (seq = index into sends)
        self.forward: list[PacketFate] = []  # fates not yet fed to the controller
        self.backward: list[PacketFate] = []
        self.forward_delays: list[int] = []
        self.backward_delays: list[int] = []
        self.last_reflector_seq: int | None = None  # in our own count: the reflector's seq + reflector_offset
        self.reflector_offset = 0  # grows when the reflector's numbering restarts (restart, new session, wrap)
        self.missing: dict[int, tuple[int, int, int]] = {}  # reflector seq skipped -> (noticed ns, T3, size)
        self.backward_lost = 0
        self.forward_lost = 0

    def send(self, now_s: float) -> bool:
        t1 = time.time_ns()
        wire = ns_to_ntp(t1)
        SENDER_HEADER.pack_into(self.buf, 0, self.seq & 0xFFFFFFFF, wire, DEFAULT_ERROR_ESTIMATE)
        try:
            self.sock.send(self.buf)
        except OSError:  # EAGAIN, ENOBUFS, an ICMP error pending: the packet did not leave
            self.send_errors += 1
            return False
        self.sent_at[self.seq] = t1
        self.wire_t1[self.seq] = wire
        self.sends.append((now_s, len(self.buf)))
        self.seq += 1
        return True

    def on_readable(self) -> None:
        for _ in range(self.RX_BATCH):
            try:
                data, anc, flags, _addr = self.sock.recvmsg(MAX_DATAGRAM_BYTES, RX_ANCILLARY_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error (nothing listening): the missing replies say it
                continue
            self.bytes_received += len(data)
            t4 = parse_rx_ancillary(anc).rx_ns or time.time_ns()
            pkt = parse_reflector_packet(data) if not flags & socket.MSG_TRUNC else None
            if pkt is None:
                continue
            t1 = self.sent_at.get(pkt.sender_seq)
            if t1 is None or self.wire_t1.get(pkt.sender_seq) != pkt.sender_timestamp:
                continue  # already answered or counted lost, or not ours (and then ours is still on its way)
            if t4 - t1 > self.settings.timeout_seconds * _NS:
                continue  # late, whenever we read it: expire() counts it lost
            del self.sent_at[pkt.sender_seq], self.wire_t1[pkt.sender_seq]
            self.received += 1
            self.answered.add(pkt.sender_seq)
            t2, t3 = pkt.t2_ns, pkt.t3_ns
            self.forward.append(PacketFate(pkt.sender_seq, t1, t2, len(self.buf)))
            self.forward_delays.append(t2 - t1)
            self.backward_delays.append(t4 - t3)
            # A gap in the reflector's numbering is a loss on the way back only if the reply never comes: one
            # overtaken on the way back fills it. A number at or below the last that fills no gap, or a jump
            # past all we ever sent, is a new numbering (the reflector restarted, a new session, a wrap).
            last, rseq = self.last_reflector_seq, pkt.seq + self.reflector_offset
            if rseq in self.missing:
                del self.missing[rseq]
            elif last is not None and (rseq <= last or rseq - last - 1 > self.seq):
                self.reflector_offset += last + 1 - rseq
                rseq = last + 1
            elif last is not None:
                noticed = time.time_ns()
                self.missing.update((s, (noticed, t3, len(self.buf))) for s in range(last + 1, rseq))
            # Sized as our packet, not the reply: the way-back controller sets our sending rate, so its received
            # rate must be in the same units (a short-form reply of 38 octets read R_hat at 3 % of the rate).
            self.backward.append(PacketFate(rseq, t3, t4, len(self.buf)))
            if last is None or rseq > last:
                self.last_reflector_seq = rseq

    def expire(self, now_ns: int) -> None:
        """Packets without a reply after the timeout are lost (on the way out, as far as the controller knows), and
        so are replies missing from the reflector's numbering for as long (on the way back)."""
        limit = now_ns - int(self.settings.timeout_seconds * _NS)
        for seq in [s for s, t1 in self.sent_at.items() if t1 < limit]:
            t1 = self.sent_at.pop(seq)
            self.wire_t1.pop(seq, None)
            self.forward_lost += 1
            self.forward.append(PacketFate(seq, t1, None, len(self.buf)))
        for rseq in [s for s, (noticed, _t3, _size) in self.missing.items() if noticed < limit]:
            _noticed, t3, size = self.missing.pop(rseq)
            self.backward_lost += 1
            self.backward.append(PacketFate(rseq, t3, None, size))

    def take(self) -> tuple[list[PacketFate], list[PacketFate]]:
        f, b = self.forward, self.backward
        self.forward, self.backward = [], []
        return f, b


def _open_socket(target: str, settings: CallStreamSettings) -> socket.socket:
    addr = ipaddress.ip_address(target)
    sock = socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        set_ttl_and_tos(sock, ttl=MAX_TTL, tos=settings.dscp << 2)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        enable_rx_metadata(sock)
        sock.connect((str(addr), settings.port))
    except BaseException:
        sock.close()
        raise
    return sock


async def probe(target: str, settings: CallStreamSettings) -> CallStreamResult:
    """Run one call-like stream to the STAMP reflector at `target` (an IP address) and say what rate it held.

    Raises ValueError for a target that is not an IP address and OSError when no socket can be made; a
    reflector that does not answer is a result with loss 1.0 and the rate driven down by the loss part.
    """
    sock = _open_socket(target, settings)
    loop = asyncio.get_running_loop()
    stream = _Stream(sock, settings)
    fwd = DelayBasedController(settings.rate_bps, min_bps=settings.min_rate_bps, max_bps=settings.rate_bps)
    bwd = DelayBasedController(settings.rate_bps, min_bps=settings.min_rate_bps, max_bps=settings.rate_bps)
    rate = lowest = settings.rate_bps
    rates: list[tuple[float, float]] = [(0.0, rate)]
    loop.add_reader(sock.fileno(), stream.on_readable)
    t0 = loop.time()
    started = time.monotonic()
    try:
        credit = float(settings.packet_bytes)  # the first packet leaves at once
        last = t0
        next_feedback = t0 + FEEDBACK_SECONDS
        end = t0 + settings.duration_seconds
        while (now := loop.time()) < end:
            credit = min(credit + rate / 8 * (now - last), 4.0 * settings.packet_bytes + rate / 8 * PACING_SECONDS)
            last = now
            while credit >= settings.packet_bytes:
                if not stream.send(now - t0):
                    break
                credit -= settings.packet_bytes
            if now >= next_feedback:
                next_feedback += FEEDBACK_SECONDS
                stream.on_readable()
                now_ns = time.time_ns()
                stream.expire(now_ns)
                f, b = stream.take()
                rate = min(fwd.on_feedback(now_ns, f), bwd.on_feedback(now_ns, b))
                lowest = min(lowest, rate)
                rates.append((now - t0, rate))
            await asyncio.sleep(max(0.0, min(PACING_SECONDS, end - loop.time())))
        # the last replies: up to the timeout, or until every packet has its answer
        wait_until = loop.time() + settings.timeout_seconds
        while stream.sent_at and loop.time() < wait_until:
            await asyncio.sleep(0.02)
            stream.on_readable()
            stream.expire(time.time_ns())  # those without hope too: the wait ends once each is answered or lost
        stream.on_readable()
        stream.expire(time.time_ns() + int(settings.timeout_seconds * _NS))
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    sent = stream.seq
    half, whole = settings.duration_seconds / 2, settings.duration_seconds
    held = held_rate(stream.sends, half, whole, stream.answered.__contains__)
    return CallStreamResult(
        target=str(ipaddress.ip_address(target)),
        rate_bps=settings.rate_bps,
        duration_seconds=settings.duration_seconds,
        sent_bps=held_rate(stream.sends, half, whole),
        held_bps=held,
        held_ratio=None if held is None else min(1.0, held / settings.rate_bps),
        sent=sent,
        received=stream.received,
        bytes_sent=sum(size for _t, size in stream.sends),
        loss_ratio=None if sent == 0 else 1 - stream.received / sent,
        overuse_forward=fwd.overuse_events,
        overuse_backward=bwd.overuse_events,
        delay_rise_forward_seconds=delay_rise(stream.forward_delays),
        delay_rise_backward_seconds=delay_rise(stream.backward_delays),
        lowest_bps=lowest,
        elapsed_seconds=time.monotonic() - started,
        bytes_received=stream.bytes_received,
        rates=tuple(rates),
    )
