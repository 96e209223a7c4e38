"""STAMP (RFC 8762) session-sender, unauthenticated mode, plus the wire format the reflector shares.

What one probe does: send a video-like stream (rate, size and DSCP from `StampSettings`) to a session-reflector,
and from the four timestamps of each reply compute

- RTT without the reflector's dwell time: (T4 - T1) - (T3 - T2);
- forward (sender -> reflector, "down" toward a village) and backward delay *variation*: forward delays T2 - T1 and
  backward delays T4 - T3 each carry an unknown constant clock offset, which cancels in jitter (RFC 3550), IPDV and
  PDV (RFC 5481). Absolute one-way delay is never reported: the clocks are not assumed synchronised;
- loss per direction from the reflector's own sequence numbers. In stateful mode (RFC 8762 §4.2.2) the reflector
  numbers its replies consecutively per session, so a packet lost on the way out leaves no gap in the reflector's
  numbering while a reply lost on the way back does (details at `_split_loss`).

Timestamps are CLOCK_REALTIME nanoseconds internally (the clock kernel stamps use), NTP 64-bit on the wire.
T1 is the kernel's SOF_TIMESTAMPING_TX_SCHED stamp (taken as the packet enters the egress queue, so queueing in
this host's qdisc counts as path delay, as it does for a call) when the kernel gives one for every packet, else the
user-space time written into the packet. T4 (and the reflector's T2) is the SO_TIMESTAMPNS receive stamp, taken
when the packet enters the stack: delay added by netfilter or NFQUEUE on the receiving host itself is not seen.

Limits: over a few seconds the clocks' frequency difference (tens of ppm) adds a slope of tens of microseconds to
the one-way series; PDV includes it, jitter and IPDV barely notice. The loss split assumes a stateful reflector
that starts a new count for a new (address, port) session, as RFC 8762 §4.2.2 and probes/reflector.py do; against
a stateless reflector (which copies the sender's sequence number) all loss looks backward. A reply in the short
TWAMP-light form (38 octets and padding, without MBZ and Sender TTL, as some responders send) counts like any
other, with the forward hop count unknown (`short_replies` says how many came so); a reply may be larger than our
packet (its padding is the reflector's choice) up to what a UDP datagram holds.

No Prometheus, no inventory here: `probe(target, settings)` measures and returns plain numbers in SI units.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from desanet.probes import stats

# ------------------------------------------------------------------------------------------------ constants
STAMP_PORT = 862  # RFC 8762 §4: UDP 862 by default
MIN_PACKET_BYTES = 44  # RFC 8762 §4.2: unauthenticated packets, both directions
MAX_PACKET_BYTES = 9000  # a jumbo frame's worth; video packets are ~1200
TWAMP_MIN_SENDER_BYTES = 14  # RFC 5357 §4.1.2: Seq, Timestamp, Error Estimate; the padding may be empty
TWAMP_MIN_REFLECTOR_BYTES = 41  # RFC 5357 §4.2.1: up to and including Sender TTL
# Some TWAMP-light responders stop after Sender Error Estimate (no trailing MBZ, no Sender TTL): everything we need
# but the forward TTL is there, so such a reply counts, with the forward hop count unknown.
SHORT_REFLECTOR_BYTES = 38
MAX_DATAGRAM_BYTES = 65536  # read buffer: a reflector pads its reply as it likes, up to what UDP carries
MAX_TTL = 255  # both ends send with TTL 255, so 255 - received TTL = hops

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_NS = 1_000_000_000

# Error Estimate (RFC 4656 §4.1.2, RFC 8762 §4.2.1): S(ynchronised) | Z (0 = NTP, 1 = PTPv2) | Scale 6 | Multiplier 8
ERR_S = 0x8000
ERR_Z = 0x4000

# Linux numbers Python 3.11 does not export (asm-generic values, x86-64 and arm64; see research/libs.md §4).
SO_TIMESTAMPNS = 35
SO_TIMESTAMPING = 37
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_TX_SCHED = 1 << 8
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
IP_RECVERR = 11
IP_RECVTTL = 12
IP_RECVTOS = 13
IPV6_RECVERR = 25
IPV6_RECVHOPLIMIT = 51
IPV6_HOPLIMIT = 52
IPV6_RECVTCLASS = 66
IPV6_TCLASS = 67
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
SO_EE_ORIGIN_TIMESTAMPING = 4

# Wire layouts, network byte order.
SENDER_HEADER = struct.Struct("!IQH")  # Seq, Timestamp, Error Estimate (+ SSID/MBZ and MBZ to 44 octets)
SSID_FIELD = struct.Struct("!H")  # octets 14-15: MBZ in RFC 8762, the SSID of RFC 8972 (0 = none)
# Seq, Timestamp, Error Estimate, SSID/MBZ, Receive Timestamp, Sender Seq, Sender Timestamp,
# Sender Error Estimate, MBZ, Sender TTL (+ 3 MBZ octets in STAMP; TWAMP-light may stop here)
REFLECTOR_HEADER = struct.Struct("!IQHHQIQHHB")
SHORT_REFLECTOR_HEADER = struct.Struct("!IQHHQIQH")  # the same up to Sender Error Estimate: 38 octets
_MBZ_BEFORE_TTL = slice(38, 40)
_SENDER_TTL_OFFSET = 40
_TIMESPEC = struct.Struct("qq")
_EXTENDED_ERR = struct.Struct("IBBBBII")  # struct sock_extended_err
_INT = struct.Struct("i")
_RECVERR_CMSGS = ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR))


# ------------------------------------------------------------------------------------------------ timestamps
def ns_to_ntp(ns: int) -> int:
    """Unix nanoseconds to the 64-bit NTP format (32-bit seconds since 1900, modulo the era; 32-bit fraction)."""
    sec, rem = divmod(ns, _NS)
    frac = (rem << 32) // _NS
    return (((sec + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32) | frac


def ntp_to_ns(ntp: int) -> int:
    """64-bit NTP to Unix nanoseconds; seconds below 2**31 are read as NTP era 1 (after February 2036)."""
    sec = (ntp >> 32) & 0xFFFFFFFF
    frac = ntp & 0xFFFFFFFF
    if sec < 0x80000000:
        sec += 1 << 32
    return (sec - NTP_UNIX_OFFSET) * _NS + ((frac * _NS + (1 << 31)) >> 32)


def ptp_to_ns(ts: int) -> int:
    """Truncated PTPv2 (32-bit seconds, 32-bit nanoseconds since 1970, TAI): offsets cancel in what we compute."""
    return ((ts >> 32) & 0xFFFFFFFF) * _NS + (ts & 0xFFFFFFFF)


def timestamp_to_ns(ts: int, error_estimate: int) -> int:
    """Decode a timestamp in the format the Z bit of its Error Estimate announces."""
    return ptp_to_ns(ts) if error_estimate & ERR_Z else ntp_to_ns(ts)


def error_estimate(seconds: float, *, synchronized: bool = False) -> int:
    """RFC 4656 Error Estimate for an NTP-format clock: Multiplier * 2**(Scale - 32) seconds, Multiplier >= 1."""
    target = max(seconds, 2.0**-32) * 2.0**32
    scale = 0
    while target / (1 << scale) > 255 and scale < 63:
        scale += 1
    multiplier = max(1, min(255, math.ceil(target / (1 << scale))))
    return (ERR_S if synchronized else 0) | (scale << 8) | multiplier


def error_estimate_seconds(value: int) -> float:
    return (value & 0xFF) * 2.0 ** (((value >> 8) & 0x3F) - 32)


# We do not read the kernel's NTP state: S stays clear (not known to be synchronised) and we claim 1 ms.
DEFAULT_ERROR_ESTIMATE = error_estimate(1e-3)


# ------------------------------------------------------------------------------------------------ packets
@dataclass(frozen=True, slots=True)
class SenderPacket:
    """A session-sender test packet (STAMP, or TWAMP-light which has the same first 14 octets)."""

    seq: int
    timestamp: int  # raw 64-bit, format per error_estimate's Z bit
    error_estimate: int
    ssid: int  # octets 14-15 when present (RFC 8972 SSID; MBZ in RFC 8762; padding in TWAMP-light)
    length: int


@dataclass(frozen=True, slots=True)
class ReflectorPacket:
    """A session-reflector test packet, unauthenticated (RFC 8762 §4.3.1 / RFC 5357 §4.2.1)."""

    seq: int
    timestamp: int  # T3
    error_estimate: int
    ssid: int
    receive_timestamp: int  # T2
    sender_seq: int
    sender_timestamp: int  # T1 as the sender wrote it
    sender_error_estimate: int
    sender_ttl: int | None  # None: a short reply without the field (0: the reflector could not read it)
    length: int

    @property
    def t2_ns(self) -> int:
        return timestamp_to_ns(self.receive_timestamp, self.error_estimate)

    @property
    def t3_ns(self) -> int:
        return timestamp_to_ns(self.timestamp, self.error_estimate)


def build_sender_packet(
    seq: int, timestamp: int, *, size: int = MIN_PACKET_BYTES, err: int = DEFAULT_ERROR_ESTIMATE
) -> bytes:
    """A sender packet of `size` octets (>= 44), zero after the header (MBZ and padding)."""
    if size < MIN_PACKET_BYTES:
        raise ValueError(f"STAMP packets are at least {MIN_PACKET_BYTES} octets, not {size}")
    buf = bytearray(size)
    SENDER_HEADER.pack_into(buf, 0, seq & 0xFFFFFFFF, timestamp, err)
    return bytes(buf)


def parse_sender_packet(data: bytes | bytearray | memoryview) -> SenderPacket | None:
    """Parse what a sender sent; None when it is too short even for TWAMP-light. Never raises."""
    if len(data) < TWAMP_MIN_SENDER_BYTES:
        return None
    seq, ts, err = SENDER_HEADER.unpack_from(data, 0)
    ssid = SSID_FIELD.unpack_from(data, 14)[0] if len(data) >= 16 else 0
    return SenderPacket(seq, ts, err, ssid, len(data))


def build_reflector_packet(
    sender: SenderPacket,
    *,
    seq: int,
    receive_timestamp: int,
    timestamp: int = 0,
    err: int = DEFAULT_ERROR_ESTIMATE,
    sender_ttl: int = 0,
) -> bytearray:
    """The reply to `sender`: max(sender length, 44) octets, zero past the header. `timestamp` (T3) may be
    filled in later with `set_reflector_timestamp`, just before sending."""
    buf = bytearray(max(sender.length, MIN_PACKET_BYTES))
    REFLECTOR_HEADER.pack_into(
        buf,
        0,
        seq & 0xFFFFFFFF,
        timestamp,
        err,
        sender.ssid,
        receive_timestamp,
        sender.seq,
        sender.timestamp,
        sender.error_estimate,
        0,
        sender_ttl & 0xFF,
    )
    return buf


_T3 = struct.Struct("!Q")


def set_reflector_timestamp(buf: bytearray, timestamp: int) -> None:
    _T3.pack_into(buf, 4, timestamp)


def parse_reflector_packet(data: bytes | bytearray | memoryview) -> ReflectorPacket | None:
    """Parse a reply; None when shorter than the short TWAMP-light form (38 octets). Never raises.

    Sender TTL is None when the reply is in the short form: under 41 octets, or with octets 38-39 (MBZ before Sender
    TTL) not zero, which is a short-form reply's padding (RFC 4656 §4.1.2 wants it pseudo-random); reading octet 40
    of such padding as a TTL would invent a hop count."""
    if len(data) < SHORT_REFLECTOR_BYTES:
        return None
    f = SHORT_REFLECTOR_HEADER.unpack_from(data, 0)
    full = len(data) >= TWAMP_MIN_REFLECTOR_BYTES and not any(data[_MBZ_BEFORE_TTL])
    ttl = data[_SENDER_TTL_OFFSET] if full else None
    return ReflectorPacket(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], ttl, len(data))


# ------------------------------------------------------------------------------------------------ sockets
@dataclass(frozen=True, slots=True)
class RxMeta:
    """What the kernel told us about a received datagram."""

    rx_ns: int | None  # kernel receive stamp, CLOCK_REALTIME ns
    ttl: int | None  # IPv4 TTL or IPv6 hop limit
    tos: int | None  # IPv4 TOS or IPv6 traffic class (DSCP << 2 | ECN)


def parse_rx_ancillary(ancdata: Iterable[tuple[int, int, bytes]]) -> RxMeta:
    rx_ns = rx_ns_ts = ttl = tos = None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET:
            if kind == SO_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(data)
                rx_ns = sec * _NS + nsec
            elif kind == SO_TIMESTAMPING and len(data) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(data)  # ts[0]: the software stamp
                if sec or nsec:
                    rx_ns_ts = sec * _NS + nsec
        elif level == socket.IPPROTO_IP:
            if kind == socket.IP_TTL and len(data) >= 4:
                ttl = _INT.unpack_from(data)[0]
            elif kind == socket.IP_TOS and len(data) >= 1:
                tos = data[0]
        elif level == socket.IPPROTO_IPV6:
            if kind == IPV6_HOPLIMIT and len(data) >= 4:
                ttl = _INT.unpack_from(data)[0]
            elif kind == IPV6_TCLASS and len(data) >= 4:
                tos = _INT.unpack_from(data)[0] & 0xFF
    return RxMeta(rx_ns if rx_ns is not None else rx_ns_ts, ttl, tos)


RX_ANCILLARY_BYTES = 256  # timestamps (16 + 48), TTL, TOS, with headers and alignment


def enable_rx_metadata(sock: socket.socket) -> bool:
    """Ask for the kernel receive stamp, TTL and TOS on every datagram; True if the stamp is available."""
    stamped = True
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        stamped = False
    opts = [(socket.IPPROTO_IP, IP_RECVTTL), (socket.IPPROTO_IP, IP_RECVTOS)]
    if sock.family == socket.AF_INET6:
        opts += [(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT), (socket.IPPROTO_IPV6, IPV6_RECVTCLASS)]
    for level, opt in opts:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, opt, 1)
    return stamped


def set_ttl_and_tos(sock: socket.socket, *, ttl: int | None = None, tos: int | None = None) -> None:
    """TTL / hop limit and TOS / traffic class for everything the socket sends (v4-mapped peers included)."""
    if ttl is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    if tos is not None:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, tos)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class StampSettings:
    """One probe: a `duration_seconds` stream at `rate_pps` of `packet_bytes` UDP payloads marked `dscp`.

    The defaults look like one video call's packets: 50 packets/s of 1200 octets, AF41 (DSCP 34).
    A reply later than `timeout_seconds` after its packet left counts as lost (RFC 2681 style).
    """

    port: int = STAMP_PORT
    rate_pps: float = 50.0
    duration_seconds: float = 5.0
    packet_bytes: int = 1200
    dscp: int = 34
    timeout_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} outside 1-65535")
        if not 0 < self.rate_pps <= 10_000:
            raise ValueError(f"rate {self.rate_pps} packets/s outside (0, 10000]")
        if not 0 < self.duration_seconds <= 3600:
            raise ValueError(f"duration {self.duration_seconds} s outside (0, 3600]")
        if not MIN_PACKET_BYTES <= self.packet_bytes <= MAX_PACKET_BYTES:
            raise ValueError(f"packet size {self.packet_bytes} outside {MIN_PACKET_BYTES}-{MAX_PACKET_BYTES} octets")
        if not 0 <= self.dscp <= 63:
            raise ValueError(f"DSCP {self.dscp} outside 0-63")
        if not 0 < self.timeout_seconds <= 60:
            raise ValueError(f"timeout {self.timeout_seconds} s outside (0, 60]")
        if self.count > 1_000_000:
            raise ValueError("more than a million packets in one probe")

    @property
    def count(self) -> int:
        """Packets in one probe: at least one."""
        return max(1, round(self.rate_pps * self.duration_seconds))


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class DirectionResult:
    """One direction. Delay variation only (the clock offset cancels); loss from the reflector's numbering."""

    loss_ratio: float | None
    jitter_seconds: float | None  # RFC 3550 interarrival jitter of the one-way delays, in arrival order
    ipdv_seconds: float | None  # mean |IPDV| (RFC 5481), in sending order
    pdv_seconds: float | None  # p99 - min of the one-way delays (RFC 5481 PDV)
    hops: int | None = None  # from TTLs: 255 - TTL at arrival (forward: the reflector's Sender TTL)

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss_ratio": self.loss_ratio,
            "jitter_seconds": self.jitter_seconds,
            "ipdv_seconds": self.ipdv_seconds,
            "pdv_seconds": self.pdv_seconds,
            "hops": self.hops,
        }


_NO_DIRECTION = DirectionResult(None, None, None, None, None)


@dataclass(frozen=True)
class StampResult:
    """One STAMP probe. Seconds and ratios; None where nothing could be measured."""

    target: str
    port: int
    sent: int
    received: int  # distinct replies within the timeout
    loss_ratio: float | None
    rtt: stats.Summary | None  # (T4 - T1) - (T3 - T2): the reflector's dwell time taken out
    jitter_seconds: float | None  # RFC 3550 over RTTs: a two-way approximation
    ipdv_seconds: float | None
    pdv_seconds: float | None
    forward: DirectionResult = _NO_DIRECTION  # sender -> reflector
    backward: DirectionResult = _NO_DIRECTION  # reflector -> sender
    burst_loss_ratio: float | None = None  # worst loss in any 200 ms of sending
    late: int = 0  # replies that came after the timeout (counted as lost)
    duplicates: int = 0
    reordered: int = 0  # replies that arrived after one for a later packet
    malformed: int = 0  # datagrams too short or truncated, ignored
    short_replies: int = 0  # replies in the short TWAMP-light form (no Sender TTL): forward hops unknown
    foreign: int = 0  # well-formed replies to packets we did not send (unknown seq, wrong echoed timestamp)
    icmp_errors: int = 0  # e.g. port unreachable: nothing listening
    send_errors: int = 0
    reply_dscp: int | None = None  # the DSCP most replies carried (our reflector reflects what it received)
    tx_timestamps: str = "user"  # "kernel" when every T1 came from the kernel's TX stamp
    rx_timestamps: str = "user"  # "kernel" when every T4 came from the kernel's RX stamp
    elapsed_seconds: float = 0.0
    rtts: tuple[float, ...] = field(default=(), repr=False)  # every on-time RTT in send order (for histograms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "port": self.port,
            "sent": self.sent,
            "received": self.received,
            "loss_ratio": self.loss_ratio,
            "rtt_seconds": self.rtt.to_dict() if self.rtt else None,
            "jitter_seconds": self.jitter_seconds,
            "ipdv_seconds": self.ipdv_seconds,
            "pdv_seconds": self.pdv_seconds,
            "forward": self.forward.to_dict(),
            "backward": self.backward.to_dict(),
            "burst_loss_ratio": self.burst_loss_ratio,
            "late": self.late,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "malformed": self.malformed,
            "short_replies": self.short_replies,
            "foreign": self.foreign,
            "icmp_errors": self.icmp_errors,
            "send_errors": self.send_errors,
            "reply_dscp": self.reply_dscp,
            "tx_timestamps": self.tx_timestamps,
            "rx_timestamps": self.rx_timestamps,
            "elapsed_seconds": self.elapsed_seconds,
        }


# ------------------------------------------------------------------------------------------------ analysis
@dataclass(frozen=True, slots=True)
class Reply:
    """One reply as the sender saw it: all times in Unix ns on the clock of whoever took them."""

    sender_seq: int
    reflector_seq: int
    t1: int  # sender, leaving
    t2: int  # reflector, arriving
    t3: int  # reflector, leaving
    t4: int  # sender, arriving
    sender_ttl: int | None  # TTL the reflector saw on our packet (None or 0 = not reported)
    ttl: int | None  # TTL we saw on the reply
    tos: int | None


def _hops(ttls: Iterable[int | None], initial: int | None = None) -> int | None:
    seen = [t for t in ttls if t]
    if not seen:
        return None
    ttl = Counter(seen).most_common(1)[0][0]
    if initial is None:  # the usual initial TTLs; the smallest that fits
        initial = next(i for i in (64, 128, 255) if ttl <= i)
    return max(0, initial - ttl)


def _seconds(ns: Sequence[int]) -> list[float]:
    return [v / _NS for v in ns]


def _direction(delays_send_order: list[int], delays_arrival_order: list[int]) -> tuple[float | None, ...]:
    """Jitter, IPDV and PDV of one direction's delays (ns, with the unknown clock offset in them). The minimum
    is taken out in integers first: the offset can be hours, and floats of that size would lose the microseconds."""
    if not delays_send_order:
        return None, None, None
    low = min(delays_send_order)
    return (
        stats.rfc3550_jitter(_seconds([d - low for d in delays_arrival_order])),
        stats.ipdv_mean_abs(_seconds([d - low for d in delays_send_order])),
        stats.pdv(_seconds([d - low for d in delays_send_order])),
    )


def _split_loss(sent: int, replies: Sequence[Reply]) -> tuple[float | None, float | None]:
    """Forward and backward loss ratios from a stateful reflector's numbering.

    The reflector numbers the packets it received (and answers) base, base+1, ... in arrival order. Let S be the
    highest sender seq and R the highest reflector seq among the replies that came back. Up to S the sender sent
    S + 1 packets and, barring reordering across that edge, the reflector got R - base + 1 of them: the rest were
    lost forward. The reflector sent R - base + 1 replies and we got some of them: the rest were lost backward.
    Packets after S are the tail: nothing came back to say which way they were lost, so the ratios are over the
    window up to S (the total loss_ratio still counts the tail).

    base is 0 for a fresh session; a reflector whose count started higher shows it (reflector seq - sender seq
    can exceed 0 only then), so base = max(0, max(reflector seq - sender seq)).
    """
    if not replies:
        return None, None
    s_max = max(r.sender_seq for r in replies)
    base = max(0, max(r.reflector_seq - r.sender_seq for r in replies))
    reflected = max(r.reflector_seq for r in replies) - base + 1
    window = min(sent, s_max + 1)
    forward = max(0, window - reflected) / window
    distinct_rseq = len({r.reflector_seq for r in replies})
    backward = max(0, reflected - distinct_rseq) / reflected if reflected > 0 else None
    return forward, backward


def analyse(
    target: str,
    settings: StampSettings,
    sent: int,
    replies_in_arrival_order: Sequence[Reply],
    send_times_ns: Sequence[int],
    **counts: Any,
) -> StampResult:
    """Turn the raw replies of one probe into a StampResult (pure: no clocks, no I/O)."""
    timeout_ns = round(settings.timeout_seconds * _NS)
    on_time = [r for r in replies_in_arrival_order if r.t4 - r.t1 <= timeout_ns]
    late = len(replies_in_arrival_order) - len(on_time)
    received = len(on_time)

    rtts_arrival = [(r.t4 - r.t1) - (r.t3 - r.t2) for r in on_time]
    by_send = sorted(on_time, key=lambda r: r.sender_seq)
    rtts_send = [(r.t4 - r.t1) - (r.t3 - r.t2) for r in by_send]

    fwd_arrival = [r.t2 - r.t1 for r in sorted(on_time, key=lambda r: r.t2)]
    fwd_send = [r.t2 - r.t1 for r in by_send]
    bwd_arrival = [r.t4 - r.t3 for r in on_time]
    bwd_send = [r.t4 - r.t3 for r in sorted(on_time, key=lambda r: r.t3)]

    f_loss, b_loss = _split_loss(sent, replies_in_arrival_order)
    f_jit, f_ipdv, f_pdv = _direction(fwd_send, fwd_arrival)
    b_jit, b_ipdv, b_pdv = _direction(bwd_send, bwd_arrival)

    answered = {r.sender_seq for r in on_time}
    burst = None
    if send_times_ns:
        t0 = send_times_ns[0]
        burst = stats.burst_loss(
            [(t - t0) / _NS for t in send_times_ns], [i not in answered for i in range(len(send_times_ns))]
        )
    tos = Counter(r.tos for r in on_time if r.tos is not None).most_common(1)
    rtt_s = _seconds(rtts_send)
    return StampResult(
        target=target,
        port=settings.port,
        sent=sent,
        received=received,
        loss_ratio=stats.loss_ratio(sent, received),
        rtt=stats.summarize(rtt_s),
        jitter_seconds=stats.rfc3550_jitter(_seconds(rtts_arrival)),
        ipdv_seconds=stats.ipdv_mean_abs(rtt_s),
        pdv_seconds=stats.pdv(rtt_s),
        forward=DirectionResult(f_loss, f_jit, f_ipdv, f_pdv, _hops((r.sender_ttl for r in on_time), MAX_TTL)),
        backward=DirectionResult(b_loss, b_jit, b_ipdv, b_pdv, _hops(r.ttl for r in on_time)),
        burst_loss_ratio=burst,
        late=late,
        reordered=stats.count_reordered([r.sender_seq for r in on_time]),
        reply_dscp=tos[0][0] >> 2 if tos else None,
        rtts=tuple(rtt_s),
        **counts,
    )


# ------------------------------------------------------------------------------------------------ the sender
class _Sender:
    """One probe's socket and bookkeeping; the event loop calls `_on_readable` whenever replies (or TX stamps on
    the error queue, which epoll reports as readable too) are waiting."""

    RX_BATCH = 256  # datagrams read per wake-up, so one busy socket cannot starve the loop

    def __init__(self, sock: socket.socket, target: str, settings: StampSettings, kernel_tx: bool) -> None:
        self.sock = sock
        self.target = target
        self.settings = settings
        self.count = settings.count
        self.kernel_tx = kernel_tx
        self.buf = bytearray(settings.packet_bytes)
        self.user_t1: list[int | None] = [None] * self.count
        self.wire_t1: list[int] = [0] * self.count  # the NTP timestamp we wrote, echoed back by the reflector
        self.kernel_t1: list[int | None] = [None] * self.count
        self.tx_order: list[int] = []  # OPT_ID key k -> sender seq tx_order[k]
        self.replies: dict[int, tuple[ReflectorPacket, RxMeta, int]] = {}
        self.arrival: list[int] = []
        self.sent_ok = 0
        self.duplicates = self.malformed = self.foreign = self.icmp_errors = self.send_errors = 0
        self.short_replies = 0
        self.user_rx = 0
        self.done_sending = False
        self.all_in = asyncio.Event()
        self.rx_bufsize = MAX_DATAGRAM_BYTES  # not our packet size: the reply's padding is the reflector's choice

    # -- sending
    def send(self, seq: int) -> None:
        for _attempt in range(2):  # a pending ICMP error fails one send; the second attempt goes out
            t1 = time.time_ns()
            wire = ns_to_ntp(t1)
            SENDER_HEADER.pack_into(self.buf, 0, seq, wire, DEFAULT_ERROR_ESTIMATE)
            try:
                self.sock.send(self.buf)
            except ConnectionRefusedError:
                self.icmp_errors += 1
                continue
            except OSError:  # EAGAIN (buffer full), ENOBUFS, unreachable...
                self.send_errors += 1
                return
            self.user_t1[seq] = t1
            self.wire_t1[seq] = wire
            self.tx_order.append(seq)
            self.sent_ok += 1
            return
        self.send_errors += 1

    # -- receiving
    def on_readable(self) -> None:
        self._drain_errqueue()
        for _ in range(self.RX_BATCH):
            try:
                data, anc, flags, _addr = self.sock.recvmsg(self.rx_bufsize, RX_ANCILLARY_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                self.icmp_errors += 1
                continue
            except OSError:
                break
            self._on_datagram(data, anc, flags)
        if self.done_sending and len(self.replies) >= self.sent_ok:
            self.all_in.set()

    def _on_datagram(self, data: bytes, anc: list[tuple[int, int, bytes]], flags: int) -> None:
        meta = parse_rx_ancillary(anc)
        t4 = meta.rx_ns
        if t4 is None:
            t4 = time.time_ns()
            self.user_rx += 1
        pkt = parse_reflector_packet(data) if not flags & socket.MSG_TRUNC else None
        if pkt is None:
            self.malformed += 1
            return
        seq = pkt.sender_seq
        if seq >= self.count or self.user_t1[seq] is None or pkt.sender_timestamp != self.wire_t1[seq]:
            self.foreign += 1
            return
        if seq in self.replies:
            self.duplicates += 1
            return
        self.replies[seq] = (pkt, meta, t4)
        self.arrival.append(seq)
        if pkt.sender_ttl is None:
            self.short_replies += 1

    def _drain_errqueue(self) -> None:
        for _ in range(self.RX_BATCH):
            try:
                _d, anc, _f, _a = self.sock.recvmsg(0, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            stamp = None
            origin = key = None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    stamp = sec * _NS + nsec if (sec or nsec) else None
                elif (level, kind) in _RECVERR_CMSGS and len(data) >= _EXTENDED_ERR.size:
                    _errno, origin, _t, _c, _p, _info, key = _EXTENDED_ERR.unpack_from(data)
            if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                self.icmp_errors += 1
            elif (
                origin == SO_EE_ORIGIN_TIMESTAMPING
                and stamp is not None
                and key is not None
                and key < len(self.tx_order)
            ):
                self.kernel_t1[self.tx_order[key]] = stamp

    # -- result
    def result(self, elapsed: float) -> StampResult:
        # Kernel T1 for all or for none: mixing two clocks' reading points would show up as jitter. A kernel stamp
        # must also fall just after the user-space time read before send(), or the key mapping is off.
        use_kernel = self.kernel_tx and bool(self.arrival)
        for seq in self.arrival:
            k, u = self.kernel_t1[seq], self.user_t1[seq]
            if k is None or u is None or not (u - 1_000_000 <= k <= u + _NS):
                use_kernel = False
                break
        replies = []
        for seq in self.arrival:
            pkt, meta, t4 = self.replies[seq]
            t1 = self.kernel_t1[seq] if use_kernel else self.user_t1[seq]
            assert t1 is not None
            replies.append(Reply(seq, pkt.seq, t1, pkt.t2_ns, pkt.t3_ns, t4, pkt.sender_ttl, meta.ttl, meta.tos))
        send_times = [t for t in self.user_t1 if t is not None]
        return analyse(
            self.target,
            self.settings,
            self.sent_ok,
            replies,
            send_times,
            duplicates=self.duplicates,
            malformed=self.malformed,
            short_replies=self.short_replies,
            foreign=self.foreign,
            icmp_errors=self.icmp_errors,
            send_errors=self.send_errors,
            tx_timestamps="kernel" if use_kernel else "user",
            rx_timestamps="kernel" if self.user_rx == 0 and self.arrival else "user",
            elapsed_seconds=elapsed,
        )


def open_sender_socket(target: str, settings: StampSettings) -> tuple[socket.socket, bool]:
    """A connected, non-blocking UDP socket marked with the DSCP and TTL 255, with kernel stamps where the kernel
    gives them. Returns the socket and whether TX stamps are on. Connected: the kernel drops datagrams from
    anyone but the reflector, and ICMP errors (nothing listening) reach us."""
    addr = ipaddress.ip_address(target)
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        set_ttl_and_tos(sock, ttl=MAX_TTL, tos=settings.dscp << 2)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        enable_rx_metadata(sock)
        with contextlib.suppress(OSError):
            sock.setsockopt(
                *((socket.IPPROTO_IPV6, IPV6_RECVERR) if addr.version == 6 else (socket.IPPROTO_IP, IP_RECVERR)), 1
            )
        kernel_tx = True
        try:
            sock.setsockopt(
                socket.SOL_SOCKET,
                SO_TIMESTAMPING,
                SOF_TIMESTAMPING_TX_SCHED
                | SOF_TIMESTAMPING_SOFTWARE
                | SOF_TIMESTAMPING_OPT_ID
                | SOF_TIMESTAMPING_OPT_TSONLY,
            )
        except OSError:
            kernel_tx = False
        sock.connect((str(addr), settings.port))
    except BaseException:
        sock.close()
        raise
    return sock, kernel_tx


async def probe(target: str, settings: StampSettings | None = None) -> StampResult:
    """Send one STAMP stream to `target` (an IP address; the port is in settings) and measure it.

    Raises ValueError for a target that is not an IP address and OSError when no socket can be made; a target
    that does not answer is a result with loss_ratio 1.0, not an exception.
    """
    settings = settings or StampSettings()
    sock, kernel_tx = open_sender_socket(target, settings)
    loop = asyncio.get_running_loop()
    sender = _Sender(sock, str(ipaddress.ip_address(target)), settings, kernel_tx)
    started = time.monotonic()
    loop.add_reader(sock.fileno(), sender.on_readable)
    try:
        interval = 1.0 / settings.rate_pps
        t0 = loop.time()
        for seq in range(sender.count):
            delay = t0 + seq * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sender.send(seq)
        sender.done_sending = True
        if len(sender.replies) < sender.sent_ok:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sender.all_in.wait(), settings.timeout_seconds)
        sender.on_readable()  # whatever is still queued
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    return sender.result(time.monotonic() - started)
