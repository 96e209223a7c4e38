"""ICMP echo engine: one shared socket per address family, kernel timestamps, trains and continuous probing.

Why not icmplib's sockets: icmplib opens one socket per host. Every raw ICMP socket receives a copy of every
ICMP packet on the host, so N hosts cost O(N²): measured here with `async_multiping`, 200 concurrent hosts on
loopback gave 45 % false loss and RTTs inflated to 0.6 s. It also stamps with `time.time()` in user space,
which a busy event loop delays by milliseconds. This engine keeps one socket per family for all targets,
demultiplexes replies by (identifier, sequence, source address, payload token) and takes RX and TX times from
the kernel (SO_TIMESTAMPING). icmplib still serves for name resolution (`async_resolve`) and as the reference
packet builder/parser the tests check ours against; its checksum is a per-byte Python loop, too slow for the
send path, so ours adds precomputed 16-bit sums.

Shape of the engine
-------------------
- Sockets: the unprivileged ping socket (SOCK_DGRAM, IPPROTO_ICMP) where net.ipv4.ping_group_range allows it
  (the kernel then demultiplexes replies by identifier, and no root is needed), else SOCK_RAW (root or
  CAP_NET_RAW) with an ICMP_FILTER so that only echo replies and errors wake us. `socket_kind` reports which.
- Timestamps: SO_TIMESTAMPING (37) with software RX and TX stamps, OPT_ID and OPT_TSONLY. The TX stamp comes
  back on the error queue (MSG_ERRQUEUE) keyed by a per-socket counter (OPT_ID) that we mirror; after a send
  error we reset the counter, since kernels differ on whether a failed send consumes a key. Each TX stamp is
  checked against the user-space time taken just before `sendto` (it must not precede it) before it is used.
  Where SO_TIMESTAMPING is refused we fall back to SO_TIMESTAMPNS (RX only), then to `time.time_ns()`.
  Every RTT records whether both ends were kernel-stamped; a result says `timestamping="kernel"` only when
  all of its RTTs were, else "user". Kernel stamps are CLOCK_REALTIME, so the user-space fallback uses
  `time.time_ns()` too and mixed pairs stay comparable.
- Asyncio: `loop.add_reader` on the socket (DatagramProtocol drops ancillary data). EPOLLERR (a TX stamp or
  an ICMP error on the error queue) wakes the same reader, which drains the error queue, then the data queue.
  With kernel RX stamps, the time we read a reply does not change its RTT, so after a wakeup the reader is
  paused until the next tick: at most about one reader wakeup per batch window, however many replies.
- Scheduling: one heap of due echoes and one timer. Continuous echoes go out in batches on a grid of the batch
  window: the wakeup at grid point g sends every echo due in [g, g + window), so each second carries the same
  count and no echo leaves late for want of a wakeup (only early, by less than a window, and never more than
  half its own interval early). The window adapts to the continuous rate (`adaptive_batch_ns`): 50 ms for a
  district's few hundred villages, 20 ms at 1,000 echoes a second, 10 ms above that, so 10,000 targets a
  second cost 100 wakeups a second, not 10,000. Trains keep their own spacing (at most 10 ms early).
  Continuous targets with the same interval are spread evenly over it (target i of N at phase i·T/N); trains
  started together are staggered over theirs. A batch is sent back to back, each echo to a different village:
  that is the price of the wakeups saved. On the 2-vCPU VM this was measured on a wakeup costs 100-300 µs of
  CPU in Python, the work of 10-20 echoes, which is why the window grows when the rate is low.
- Per-packet state lives in preallocated arrays indexed by the 16-bit ICMP sequence number (the "slot");
  a serial number and an engine cookie in the payload tell a reply to this echo from a late reply to the
  slot's previous echo, or from another process's. Replies are read with `recvmsg_into` into one reused
  buffer. At most 65,536 echoes can be in flight per family (rate x timeout); beyond that sends are skipped
  and counted as `overruns`.
- A ping socket with IP_RECVERR reports an ICMP error about any destination as a pending error on the next
  send, which the kernel then drops: such a send is retried once, so one unreachable village cannot cost
  another an echo.
- Loss: an echo is lost when no reply came within its timeout; a reply after that is counted as late, not
  received (as ping does). Echoes the local stack refuses (no route, too big with DF) count as sent and
  lost, with `send_errors` and the error text in the result.

The measuring code never imports Prometheus: results are frozen dataclasses of plain numbers in SI units.

Why one file over 800 lines: the engine is one piece. Its scheduler, the shared socket, the kernel TX/RX
stamp bookkeeping and the matching of replies to echoes share one state (the in-flight table keyed by id,
sequence and stamp key) that is touched on every echo; split across modules, that table would become an
interface for no reader's benefit, and the hot path (profiled in docs/performance.md) would gain calls.
The pure statistics are already apart, in probes/stats.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import ipaddress
import itertools
import logging
import os
import platform
import random
import socket
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from desanet.probes.stats import (
    Summary,
    burst_loss,
    count_reordered,
    ipdv_mean_abs,
    loss_ratio,
    pdv,
    rfc3550_jitter,
    summarize,
)

log = logging.getLogger("desanet.icmp")

# --- kernel constants Python does not define (asm-generic values: x86-64, arm64, riscv64, ...) -------------
SO_TIMESTAMPNS = 35
SO_TIMESTAMPING = 37
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
TS_FLAGS_NO_ID = (
    SOF_TIMESTAMPING_TX_SOFTWARE
    | SOF_TIMESTAMPING_RX_SOFTWARE
    | SOF_TIMESTAMPING_SOFTWARE
    | SOF_TIMESTAMPING_OPT_TSONLY
)
TS_FLAGS = TS_FLAGS_NO_ID | SOF_TIMESTAMPING_OPT_ID
SO_RCVBUFFORCE = 33
SOL_IP = 0
SOL_IPV6 = 41
SOL_RAW = 255
IP_TOS = 1
IP_TTL = 2
IP_MTU_DISCOVER = 10
IP_RECVERR = 11
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_DO = 2
IPV6_UNICAST_HOPS = 16
IPV6_RECVERR = 25
IPV6_DONTFRAG = 62
IPV6_TCLASS = 67
ICMP_FILTER = 1
ICMP6_FILTER = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
SO_EE_ORIGIN_TIMESTAMPING = 4

# Architectures whose SO_TIMESTAMP* numbers are the asm-generic ones and whose timespec is two int64s.
_GENERIC_64 = {"x86_64", "amd64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x", "loongarch64"}
KERNEL_STAMPS_POSSIBLE = platform.system() == "Linux" and platform.machine().lower() in _GENERIC_64

ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
_V4_ERRORS = frozenset({3, 4, 5, 11, 12})  # unreachable, source quench, redirect, time exceeded, parameter
_V6_ERRORS = frozenset({1, 2, 3, 4})  # unreachable, packet too big, time exceeded, parameter problem

# parse_icmp() verdicts
ECHO_REPLY = 0  # an echo reply: (ECHO_REPLY, ident, seq, payload offset, 0)
ERROR = 1  # an ICMP error quoting an echo request: (ERROR, ident, seq, offset of quoted dst, type<<8|code)
OTHER = 2  # well-formed but nothing we asked for (echo requests, other types)
MALFORMED = 3  # too short, wrong version, bad checksum, inconsistent lengths

# Per-echo state in the ring buffers
PENDING = -2
LOST = -1
F_KERNEL_TX = 1
F_KERNEL_RX = 2
F_SEND_ERROR = 4
F_ICMP_ERROR = 8

SLOT_FREE, SLOT_PENDING, SLOT_ANSWERED = 0, 1, 2
NSLOTS = 1 << 16
TOKEN_BYTES = 8  # serial (4) + engine cookie (4) at the start of the payload, when the payload has room

SocketKind = Literal["raw", "dgram"]
Timestamping = Literal["kernel", "user"]


class IcmpError(Exception):
    """Base class for engine errors."""


class IcmpPermissionError(IcmpError, PermissionError):
    """Neither a ping socket nor a raw socket could be opened."""


class EngineClosed(IcmpError):
    """The engine was closed while a train was running."""


# ------------------------------------------------------------------------------------------------------------
# Settings and results
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IcmpSettings:
    """One echo train: `count` echoes `interval` seconds apart, each given `timeout` seconds to come back."""

    count: int = 20
    interval: float = 0.2
    timeout: float = 2.0
    payload_bytes: int = 56
    dscp: int = 0
    ttl: int = 64
    dont_fragment: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 1_000_000:
            raise ValueError(f"count {self.count} outside 1..1000000")
        if not 0.0001 <= self.interval <= 3600:
            raise ValueError(f"interval {self.interval} s outside 0.0001..3600")
        if not 0.001 <= self.timeout <= 60:
            raise ValueError(f"timeout {self.timeout} s outside 0.001..60")
        if not 0 <= self.payload_bytes <= 65507:
            raise ValueError(f"payload {self.payload_bytes} B outside 0..65507")
        if not 0 <= self.dscp <= 63:
            raise ValueError(f"DSCP {self.dscp} outside 0..63")
        if not 1 <= self.ttl <= 255:
            raise ValueError(f"TTL {self.ttl} outside 1..255")


@dataclass(frozen=True)
class IcmpResult:
    """What a train (or a window of continuous probing) saw. Seconds, ratios 0..1, counts."""

    target: str
    sent: int
    received: int
    duplicates: int
    reordered: int
    loss_ratio: float | None
    rtt: Summary | None
    jitter_seconds: float | None  # RFC 3550 filter over consecutive RTTs (send order)
    ipdv_seconds: float | None  # mean |RTT[i+1] - RTT[i]|
    pdv_seconds: float | None  # p99 - min
    burst_loss_ratio: float | None  # worst loss in any 200 ms span; None when the train is sparser than that
    timestamping: Timestamping
    socket_kind: SocketKind
    icmp_errors: int = 0  # ICMP errors (unreachable, TTL exceeded, ...) quoting our echoes
    send_errors: int = 0  # echoes the local stack refused (no route, too big with DF); counted as lost
    error: str | None = None  # the last such error, for a person to read
    samples: tuple[tuple[float, float | None], ...] = field(default=(), repr=False)  # (send time epoch s, RTT s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "sent": self.sent,
            "received": self.received,
            "loss_ratio": self.loss_ratio,
            "rtt_seconds": self.rtt.to_dict() if self.rtt else None,
            "jitter_seconds": self.jitter_seconds,
            "ipdv_seconds": self.ipdv_seconds,
            "pdv_seconds": self.pdv_seconds,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "burst_loss_ratio": self.burst_loss_ratio,
            "timestamping": self.timestamping,
            "socket_kind": self.socket_kind,
            "icmp_errors": self.icmp_errors,
            "send_errors": self.send_errors,
            "error": self.error,
        }


def build_result(
    target: str,
    echoes: Sequence[tuple[int, int, int, int, int]],
    socket_kind: SocketKind,
    error: str | None = None,
    kernel_capable: bool = True,
) -> IcmpResult:
    """Summarise decided echoes, given in send order as (send_ns, rtt_ns or LOST, arrival_no, dups, flags).

    This is the window summary: trains call it on all their echoes, continuous targets on a time window.
    `timestamping` is "kernel" when every RTT had kernel stamps at both ends; with no RTT at all it is what
    the socket was able to do (`kernel_capable`).
    """
    send_s = [e[0] / 1e9 for e in echoes]
    rtts: list[float] = []
    lost: list[bool] = []
    arrivals: list[tuple[int, int]] = []
    dups = icmp_errors = send_errors = 0
    all_kernel = True
    for i, (_, rtt_ns, arrival, d, flags) in enumerate(echoes):
        dups += d
        icmp_errors += bool(flags & F_ICMP_ERROR)
        send_errors += bool(flags & F_SEND_ERROR)
        if rtt_ns >= 0:
            rtts.append(rtt_ns / 1e9)
            lost.append(False)
            arrivals.append((arrival, i))
            if flags & (F_KERNEL_TX | F_KERNEL_RX) != F_KERNEL_TX | F_KERNEL_RX:
                all_kernel = False
        else:
            lost.append(True)
    arrivals.sort()
    sent = len(echoes)
    return IcmpResult(
        target=target,
        sent=sent,
        received=len(rtts),
        duplicates=dups,
        reordered=count_reordered([i for _, i in arrivals]),
        loss_ratio=loss_ratio(sent, len(rtts)),
        rtt=summarize(rtts),
        jitter_seconds=rfc3550_jitter(rtts),
        ipdv_seconds=ipdv_mean_abs(rtts),
        pdv_seconds=pdv(rtts),
        burst_loss_ratio=burst_loss(send_s, lost, 0.2),
        timestamping="kernel" if all_kernel and (rtts or kernel_capable) else "user",
        socket_kind=socket_kind,
        icmp_errors=icmp_errors,
        send_errors=send_errors,
        error=error,
        samples=tuple((s, (e[1] / 1e9 if e[1] >= 0 else None)) for s, e in zip(send_s, echoes, strict=True)),
    )


# ------------------------------------------------------------------------------------------------------------
# Pure packet functions (fuzzed in tests/test_icmp_parse_fuzz.py)
# ------------------------------------------------------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """16-bit one's complement sum (not inverted) of big-endian words, the odd byte padded with zero."""
    n = len(data)
    total = int.from_bytes(data[: n - (n & 1)], "big") if n > 1 else 0
    # Fold a big integer of 16-bit words: summing words equals the integer modulo 0xffff (since 2^16 ≡ 1).
    s = total % 0xFFFF if total else 0
    if total and s == 0:
        s = 0xFFFF
    if n & 1:
        s += data[n - 1] << 8
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 Internet checksum of `data`."""
    return ~ones_sum(data) & 0xFFFF


def build_echo(ident: int, seq: int, payload: bytes, v6: bool = False) -> bytes:
    """An echo request (ICMP header + payload) with its checksum (ICMPv6's is the kernel's job: left 0)."""
    typ = ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    head = struct.pack("!BBHHH", typ, 0, 0, ident, seq)
    if v6:
        return head + payload
    c = checksum(head + payload)
    return struct.pack("!BBHHH", typ, 0, c, ident, seq) + payload


def parse_icmp(
    data: bytes | bytearray | memoryview,
    length: int | None = None,
    *,
    v6: bool = False,
    ip_header: bool = False,
    verify_checksum: bool = False,
) -> tuple[int, int, int, int, int]:
    """Classify one received datagram; never raises on any input.

    Returns (verdict, ident, seq, offset, info): see ECHO_REPLY / ERROR / OTHER / MALFORMED. For a reply,
    `offset` is where the payload starts; for an error, where the quoted destination address starts (4 or 16
    bytes) and `info` is type << 8 | code. `ip_header` is True for IPv4 raw sockets (Linux hands them the IP
    header); ICMPv6 and ping sockets get the ICMP message alone.
    """
    n = len(data) if length is None else min(length, len(data))
    try:
        off = 0
        if ip_header:
            if n < 20:
                return (MALFORMED, 0, 0, 0, 0)
            vihl = data[0]
            ihl = (vihl & 0x0F) * 4
            if vihl >> 4 != 4 or ihl < 20 or n < ihl:
                return (MALFORMED, 0, 0, 0, 0)
            if data[9] != socket.IPPROTO_ICMP:
                return (OTHER, 0, 0, 0, 0)
            tot_len = (data[2] << 8) | data[3]
            if tot_len != n:  # truncated by our buffer, or a lying header
                return (MALFORMED, 0, 0, 0, 0)
            off = ihl
        if n - off < 8:
            return (MALFORMED, 0, 0, 0, 0)
        typ = data[off]
        if verify_checksum and not v6 and ones_sum(memoryview(data)[off:n]) != 0xFFFF:
            return (MALFORMED, 0, 0, 0, 0)
        ident = (data[off + 4] << 8) | data[off + 5]
        seq = (data[off + 6] << 8) | data[off + 7]
        if typ == (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY):
            if data[off + 1] != 0:
                return (MALFORMED, 0, 0, 0, 0)
            return (ECHO_REPLY, ident, seq, off + 8, 0)
        if typ in (_V6_ERRORS if v6 else _V4_ERRORS):
            info = (typ << 8) | data[off + 1]
            inner = off + 8
            if v6:
                # Quoted IPv6 header (40 bytes) then our echo request's first 8 bytes.
                if n - inner < 48 or data[inner] >> 4 != 6 or data[inner + 6] != socket.IPPROTO_ICMPV6:
                    return (OTHER, 0, 0, 0, 0)
                q = inner + 40
                dst = inner + 24
                want = ICMP6_ECHO_REQUEST
            else:
                if n - inner < 28 or data[inner] >> 4 != 4:
                    return (OTHER, 0, 0, 0, 0)
                qihl = (data[inner] & 0x0F) * 4
                if qihl < 20 or data[inner + 9] != socket.IPPROTO_ICMP or n - inner < qihl + 8:
                    return (OTHER, 0, 0, 0, 0)
                q = inner + qihl
                dst = inner + 16
                want = ICMP_ECHO_REQUEST
            if data[q] != want:
                return (OTHER, 0, 0, 0, 0)
            return (ERROR, (data[q + 4] << 8) | data[q + 5], (data[q + 6] << 8) | data[q + 7], dst, info)
        return (OTHER, 0, 0, 0, 0)
    except IndexError:  # belt and braces: every index above is bounds-checked
        return (MALFORMED, 0, 0, 0, 0)


def _filled(code: str, value: int, n: int) -> array[int]:
    return array(code, [value]) * n


# ------------------------------------------------------------------------------------------------------------
# Streams: a train (count echoes) or a continuous target (forever, ring buffer)
# ------------------------------------------------------------------------------------------------------------


class _Stream:
    """Echoes to one address with one set of packet settings; the engine fills its ring buffer."""

    continuous = False

    def __init__(self, engine: IcmpEngine, address: str, settings: IcmpSettings, interval: float, capacity: int):
        ip = ipaddress.ip_address(address)
        self.address = str(ip)
        self.v6 = ip.version == 6
        self.family = socket.AF_INET6 if self.v6 else socket.AF_INET
        self.sockaddr: tuple[Any, ...] = (self.address, 0, 0, 0) if self.v6 else (self.address, 0)
        self.addr_packed = ip.packed
        self.settings = settings
        self.interval_ns = max(1, round(interval * 1e9))
        self.timeout_ns = round(settings.timeout * 1e9)
        self.payload_len = settings.payload_bytes
        self.opts = (settings.dscp << 2, settings.ttl, settings.dont_fragment)
        self.fs = engine._family_socket(self.family)
        self.capacity = capacity
        # The ring: echo number e lives at e % capacity.
        self.send_ns = _filled("q", 0, capacity)  # epoch ns: kernel TX stamp, else user time before sendto
        self.rtt_ns = _filled("q", PENDING, capacity)
        self.arrival = _filled("q", 0, capacity)  # order of first replies, for reordering
        self.dups = _filled("H", 0, capacity)
        self.flags = _filled("B", 0, capacity)
        self.serial = _filled("I", 0, capacity)  # the engine-wide serial of the echo in this ring slot
        self.sent = 0  # echoes handed to the socket (or refused by it)
        self.decided = 0  # echoes answered or timed out
        self.arrivals = 0
        self.last_error: str | None = None
        self.closed = False
        self.gen = 0
        # Packet template: header, token (serial, filled per echo, + cookie), then a fixed pattern.
        payload = bytearray((i & 0xFF) for i in range(self.payload_len))
        self.has_token = self.payload_len >= TOKEN_BYTES
        if self.has_token:
            payload[0:4] = b"\0\0\0\0"  # serial, right after the header so one pack_into writes both
            payload[4:8] = engine._cookie.to_bytes(4, "big")
        self.template = bytearray(build_echo(0, 0, bytes(payload), self.v6))
        self.template[2:4] = b"\0\0"  # the checksum is filled per echo (IPv4 raw only; else the kernel's job)
        if self.fs.kind == "raw":
            self.template[4:6] = self.fs.ident.to_bytes(2, "big")
        self.base_sum = ones_sum(self.template)
        self.checksum = self.fs.kind == "raw" and not self.v6

    def _decided_one(self, i: int) -> None:
        self.decided += 1

    def _echoes(self, idx: Sequence[int]) -> list[tuple[int, int, int, int, int]]:
        return [(self.send_ns[i], self.rtt_ns[i], self.arrival[i], self.dups[i], self.flags[i]) for i in idx]


class Train(_Stream):
    """`count` echoes; `await train` (or `train.future`) gives the IcmpResult once every echo is decided."""

    def __init__(self, engine: IcmpEngine, address: str, settings: IcmpSettings, label: str | None = None):
        super().__init__(engine, address, settings, settings.interval, settings.count)
        self.count = settings.count
        self.label = label or self.address
        self.future: asyncio.Future[IcmpResult] = engine._loop_or_raise().create_future()

    def _decided_one(self, i: int) -> None:
        self.decided += 1
        if self.decided >= self.count and not self.future.done():
            self.future.set_result(self.result())

    def result(self) -> IcmpResult:
        done = [i for i in range(min(self.sent, self.count)) if self.rtt_ns[i] != PENDING]
        return build_result(self.label, self._echoes(done), self.fs.kind, self.last_error, self.fs.kernel_capable)

    def __await__(self) -> Any:
        return self.future.__await__()


SampleCallback = Callable[["ContinuousTarget", float, "float | None"], None]


class ContinuousTarget(_Stream):
    """A target probed every `interval` seconds until removed; the last `capacity` echoes are kept."""

    continuous = True

    def __init__(
        self,
        engine: IcmpEngine,
        address: str,
        settings: IcmpSettings,
        interval: float,
        capacity: int,
        on_sample: SampleCallback | None,
        label: str | None,
    ):
        super().__init__(engine, address, settings, interval, capacity)
        self.on_sample = on_sample
        self.label = label or self.address
        self.phase_ns = 0
        self.skipped = 0  # echoes not sent because the loop fell more than an interval behind

    def _decided_one(self, i: int) -> None:
        self.decided += 1
        if self.on_sample is not None and not self.closed:
            r = self.rtt_ns[i]
            try:
                self.on_sample(self, self.send_ns[i] / 1e9, r / 1e9 if r >= 0 else None)
            except Exception:  # a broken callback must not stop the engine
                log.exception("on_sample callback failed for %s", self.label)

    def _decided_in(self, start_ns: int, end_ns: int) -> list[int]:
        cap = self.capacity
        out = []
        for e in range(max(0, self.sent - cap), self.sent):
            i = e % cap
            if start_ns <= self.send_ns[i] < end_ns and self.rtt_ns[i] != PENDING:
                out.append(i)
        return out

    def window(self, seconds: float, end: float | None = None) -> IcmpResult:
        """Summary of the echoes sent in [end - seconds, end), epoch seconds.

        `end` defaults to now - timeout: the latest send time whose echoes are all decided, so an echo still
        in flight is never counted as lost (smokeping_prober's `1 - count/requests` has that bias). Echoes
        still pending are left out whatever `end` is.
        """
        end_ns = round(end * 1e9) if end is not None else time.time_ns() - self.timeout_ns
        idx = self._decided_in(end_ns - round(seconds * 1e9), end_ns)
        return build_result(self.label, self._echoes(idx), self.fs.kind, self.last_error, self.fs.kernel_capable)

    def samples(self, since: float = 0.0) -> list[tuple[float, float | None]]:
        """Decided (send time, RTT or None) pairs sent at or after `since` (epoch seconds), oldest first."""
        out: list[tuple[float, float | None]] = []
        for i in self._decided_in(round(since * 1e9), 1 << 62):
            r = self.rtt_ns[i]
            out.append((self.send_ns[i] / 1e9, r / 1e9 if r >= 0 else None))
        return out


# ------------------------------------------------------------------------------------------------------------
# The per-family socket and its slot table
# ------------------------------------------------------------------------------------------------------------


class _FamilySocket:
    def __init__(self, family: int, kind: SocketKind | Literal["auto"], rcvbuf: int, kernel_timestamps: bool = True):
        self.family = family
        self.v6 = family == socket.AF_INET6
        proto = socket.IPPROTO_ICMPV6 if self.v6 else socket.IPPROTO_ICMP
        sock: socket.socket | None = None
        errors: list[str] = []
        for k in ("dgram", "raw") if kind == "auto" else (kind,):
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM if k == "dgram" else socket.SOCK_RAW, proto)
                self.kind: SocketKind = "dgram" if k == "dgram" else "raw"
                break
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
                    errors.append(f"{k}: {exc.strerror}")
                else:
                    raise
        if sock is None:
            raise IcmpPermissionError(
                "cannot open an ICMP socket ("
                + "; ".join(errors)
                + "): run as root, grant CAP_NET_RAW (setcap cap_net_raw+ep), or allow this group in "
                "net.ipv4.ping_group_range"
            )
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.raw4 = self.kind == "raw" and not self.v6  # Linux hands IPv4 raw sockets the IP header
        self.reply_type = ICMP6_ECHO_REPLY if self.v6 else ICMP_ECHO_REPLY
        if self.kind == "dgram":
            sock.bind(("::", 0) if self.v6 else ("0.0.0.0", 0))
            self.ident = sock.getsockname()[1]  # the kernel rewrites the identifier to our "port"
            # ICMP errors come back on the error queue, with the quoted echo, instead of the data queue.
            sock.setsockopt(SOL_IPV6 if self.v6 else SOL_IP, IPV6_RECVERR if self.v6 else IP_RECVERR, 1)
        else:
            self.ident = random.randrange(1, 0xFFFF)
            self._install_filter()
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:  # without CAP_NET_ADMIN the kernel caps SO_RCVBUF at net.core.rmem_max
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # bytes of skbs (the kernel doubles it)
        # Timestamping: SO_TIMESTAMPING (RX + TX) > SO_TIMESTAMPNS (RX) > user space.
        self.tx_stamping = False
        self.rx_stamping = False
        if KERNEL_STAMPS_POSSIBLE and kernel_timestamps:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TS_FLAGS)
                self.tx_stamping = self.rx_stamping = True
            except OSError:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    self.rx_stamping = True
                except OSError:
                    pass
        # The kernel turns RX stamping on for the whole host through a deferred work item when the first
        # socket asks for it (net_enable_timestamp), so replies in the next moments may come unstamped and would
        # be timed in user space. No echo goes out before this; in a process that probes for long it costs
        # nothing, and a technician's one-off check starts 20 ms later.
        self.ready_ns = time.monotonic_ns() + (STAMP_WARMUP_NS if self.rx_stamping else 0)
        self.tx_counter = 0  # mirrors the kernel's OPT_ID key
        self.tx_key_slot = _filled("i", -1, NSLOTS)  # OPT_ID key & 0xffff -> sequence number
        self.tx_key_serial = _filled("I", 0, NSLOTS)
        self.tx_seen = 0  # TX stamps matched so far
        self.tx_pending = 0  # sends whose TX stamp we have not read yet
        self.tx_missing = 0  # answered echoes that never got one
        # Socket options currently set: (tos, ttl, df)
        self.opts: tuple[int, int, bool] | None = None
        # Slot table, indexed by ICMP sequence number. The echo's user send time lives in its stream's ring.
        self.slot_stream: list[_Stream | None] = [None] * NSLOTS
        self.slot_index = _filled("i", 0, NSLOTS)  # ring index in the stream
        self.slot_serial = _filled("I", 0, NSLOTS)
        self.slot_tx_ns = _filled("q", 0, NSLOTS)
        self.slot_state = bytearray(NSLOTS)
        self.next_seq = random.randrange(NSLOTS)
        self.expiry: dict[int, deque[tuple[int, int]]] = {}  # timeout_ns -> (deadline mono ns, seq), in order
        self.bufsize = 2048
        self.buf = bytearray(self.bufsize)
        self.bufs = [self.buf]
        self.ancsize = socket.CMSG_SPACE(48) + socket.CMSG_SPACE(16) + 64
        self.rcvbuf_warned = False
        self.reader_on = False
        self.reader_off_at = 0  # monotonic ns when the reader was paused (throttling)

    @property
    def kernel_capable(self) -> bool:
        return self.tx_stamping and self.rx_stamping

    def _install_filter(self) -> None:
        try:
            if self.v6:
                # struct icmp6_filter: 256 bits, a set bit blocks the type.
                words = [0xFFFFFFFF] * 8
                for t in (ICMP6_ECHO_REPLY, *_V6_ERRORS):
                    words[t >> 5] &= ~(1 << (t & 31)) & 0xFFFFFFFF
                self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *words))
            else:
                # ICMP_FILTER: a set bit drops that type (so we no longer see our own echo requests on lo).
                mask = 0xFFFFFFFF
                for t in (ICMP_ECHO_REPLY, *_V4_ERRORS):
                    mask &= ~(1 << t)
                self.sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", mask & 0xFFFFFFFF))
        except OSError as exc:  # an optimisation only
            log.debug("no ICMP filter: %s", exc)

    def set_opts(self, opts: tuple[int, int, bool]) -> None:
        old = self.opts
        s = self.sock
        tos, ttl, df = opts
        if self.v6:
            if old is None or old[0] != tos:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, tos)
            if old is None or old[1] != ttl:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_UNICAST_HOPS, ttl)
            if old is None or old[2] != df:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1 if df else 0)
        else:
            if old is None or old[0] != tos:
                s.setsockopt(SOL_IP, IP_TOS, tos)
            if old is None or old[1] != ttl:
                s.setsockopt(SOL_IP, IP_TTL, ttl)
            if old is None or old[2] != df:
                s.setsockopt(SOL_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)
        self.opts = opts

    def reset_tx_keys(self) -> None:
        """Turn OPT_ID off and on: the kernel restarts the key at 0, wherever a failed send left it."""
        if not self.tx_stamping:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TS_FLAGS_NO_ID)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TS_FLAGS)
        except OSError:
            self.disable_tx_stamps()
        self.tx_counter = 0
        self.tx_pending = 0
        self.tx_key_slot = _filled("i", -1, NSLOTS)

    def disable_tx_stamps(self) -> None:
        """This path never returns TX stamps (some drivers do not stamp): keep RX stamps, stop asking."""
        self.tx_stamping = False
        with contextlib.suppress(OSError):
            self.sock.setsockopt(
                socket.SOL_SOCKET, SO_TIMESTAMPING, SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
            )

    def ensure_bufsize(self, payload_len: int) -> None:
        need = payload_len + 8 + 60 + 64
        if need > self.bufsize:
            self.bufsize = need
            self.buf = bytearray(need)
            self.bufs = [self.buf]

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------------------


# The batch window ladder (`adaptive_batch_ns`): each divides one second.
BATCH_LADDER_NS = (50_000_000, 25_000_000, 20_000_000, 10_000_000)
BATCH_ECHOES = 20
STAMP_WARMUP_NS = 20_000_000
REPLY_TRUESIZE_BYTES = 1280  # one queued echo reply in a receive buffer (~830 bytes on loopback; NICs take more)
TRAIN_EARLY_NS = 10_000_000  # how early a train's echo may go out with a batch (a train keeps its spacing)


def adaptive_batch_ns(rate: float) -> int:
    """The batch window for `rate` continuous echoes a second: the longest of 50, 25, 20 and 10 ms that puts
    at most BATCH_ECHOES echoes in one wakeup, and 10 ms above that rate.

    Why: each timer wakeup costs ~100-300 µs of CPU in Python on a small VM, the work of ten echoes or more,
    so at 1,000 targets a second a 10 ms window spends more on waking than on probing (measured: 1.3x fping's
    CPU per echo at 10 ms, 1.0x at 20 ms). A longer window trades that for echoes sent earlier (never later)
    than due and larger back-to-back batches on the wire; 20 echoes, each to a different village, is a batch
    no link notices. Every window divides a second, so the grid-aligned batches (IcmpEngine._tick_inner) put
    the same count of echoes in every second."""
    return next((w for w in BATCH_LADDER_NS if rate * w <= BATCH_ECHOES * 1e9), BATCH_LADDER_NS[-1])


# Upper bounds of the lateness histogram (cumulative counts are the caller's job); the last bucket is +Inf.
LATENESS_BUCKETS_SECONDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0, float("inf"))
_LATENESS_BOUNDS_NS = tuple(round(b * 1e9) if b != float("inf") else 1 << 62 for b in LATENESS_BUCKETS_SECONDS)


@dataclass
class EngineStats:
    """Counters of everything the engine ignored or could not do, for the exporter's self-metrics."""

    sent: int = 0
    replies: int = 0
    malformed: int = 0  # bad length, token or IP header
    foreign: int = 0  # not ours: another identifier, or a reply from an address we did not ask
    late: int = 0  # replies to an echo that had already timed out (or a stray sequence number)
    icmp_errors: int = 0
    send_errors: int = 0
    tx_stamps: int = 0
    tx_stamps_rejected: int = 0
    overruns: int = 0  # no free sequence number: rate x timeout exceeds 65536 echoes in flight
    wakeups: int = 0
    reader_wakeups: int = 0
    internal_errors: int = 0  # bugs: exceptions caught so that the engine keeps running
    # Schedule lateness of continuous targets' sends (time of sendto minus due time; early sends count as 0).
    # The isolation promise (one dead village delays no other's echo by more than 10 ms) is checked on these;
    # `reset_lateness()` starts a new measuring period.
    continuous_sends: int = 0
    late_sends_over_10ms: int = 0
    max_send_lateness_seconds: float = 0.0
    lateness_sum_seconds: float = 0.0
    lateness_histogram: list[int] = field(default_factory=lambda: [0] * len(LATENESS_BUCKETS_SECONDS))

    def reset_lateness(self) -> None:
        self.continuous_sends = self.late_sends_over_10ms = 0
        self.max_send_lateness_seconds = self.lateness_sum_seconds = 0.0
        self.lateness_histogram = [0] * len(LATENESS_BUCKETS_SECONDS)


_MSG_TRUNC = int(socket.MSG_TRUNC)  # IntFlag arithmetic costs microseconds; plain ints do not
_MSG_ERRQUEUE = int(socket.MSG_ERRQUEUE)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_TX_MISSING_LIMIT = 64


class IcmpEngine:
    """One engine serves every train and continuous target of a process, over one socket per family.

    Use inside a running asyncio loop::

        async with IcmpEngine() as engine:
            result = await engine.train("127.0.0.1", IcmpSettings(count=5))     # or probe(..., engine=engine)
            t = engine.add_target("127.0.0.2", interval=1.0)
            ...
            print(t.window(60).loss_ratio)
            engine.remove_target(t)
    """

    def __init__(
        self,
        socket_kind: SocketKind | Literal["auto"] = "auto",
        *,
        batch_window: float | None = None,
        rcvbuf: int = 4 << 20,
        kernel_timestamps: bool = True,
    ):
        """`socket_kind` "auto" takes a ping socket where allowed, else a raw one. `kernel_timestamps=False`
        forces user-space stamps (for comparison and tests). `batch_window` is how far ahead of time a wakeup
        sends due echoes (the coarseness of the send schedule) and, with kernel RX stamps, how long replies
        may wait in the socket before we read them (which does not change their RTT). None (the default)
        adapts it to the continuous load: see `adaptive_batch_ns`."""
        self._kind_pref = socket_kind
        self._kernel_ts = kernel_timestamps
        self._batch_fixed = batch_window is not None
        self._batch_ns = max(0, round(batch_window * 1e9)) if batch_window is not None else BATCH_LADDER_NS[0]
        self._rcvbuf = rcvbuf
        self._sockets: dict[int, _FamilySocket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heap: list[tuple[int, int, int, _Stream]] = []
        self._tiebreak = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._cookie = random.getrandbits(32)
        self._serial = random.getrandbits(32)
        self._groups: dict[int, list[ContinuousTarget]] = {}
        self._dirty_groups: set[int] = set()
        self._epoch_ns = time.monotonic_ns()
        self._ready_ns = 0  # no echo before the newest socket's stamps are on (_FamilySocket.ready_ns)
        self._trains: set[Train] = set()
        self._train_burst = 0
        self._closed = False
        self.stats = EngineStats()

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def __aenter__(self) -> IcmpEngine:
        self._loop_or_raise()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer:
            self._timer.cancel()
        for fs in self._sockets.values():
            if fs.reader_on and self._loop and not self._loop.is_closed():
                self._loop.remove_reader(fs.fd)
            fs.close()
        self._sockets.clear()
        for t in list(self._trains):
            if not t.future.done():
                t.future.set_exception(EngineClosed("engine closed"))
        self._trains.clear()

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("an IcmpEngine is bound to the event loop it was first used in")
        return loop

    def _family_socket(self, family: int) -> _FamilySocket:
        if self._closed:
            raise EngineClosed("engine closed")
        fs = self._sockets.get(family)
        if fs is None:
            self._loop_or_raise()
            fs = _FamilySocket(family, self._kind_pref, self._rcvbuf, self._kernel_ts)
            self._sockets[family] = fs
            self._ready_ns = max(self._ready_ns, fs.ready_ns)
            self._reader(fs, True)
        return fs

    def _reader(self, fs: _FamilySocket, on: bool) -> None:
        if on == fs.reader_on or self._loop is None:
            return
        if on:
            self._loop.add_reader(fs.fd, self._on_readable, fs)
        else:
            self._loop.remove_reader(fs.fd)
            fs.reader_off_at = time.monotonic_ns()
        fs.reader_on = on

    def open(self, family: int = socket.AF_INET) -> SocketKind:
        """Open the socket for `family` now (raises IcmpPermissionError) and say which kind it is."""
        return self._family_socket(family).kind

    def socket_kind(self, family: int = socket.AF_INET) -> SocketKind | None:
        fs = self._sockets.get(family)
        return fs.kind if fs else None

    def timestamping(self, family: int = socket.AF_INET) -> Timestamping | None:
        """What this socket can do: "kernel" when the kernel stamps both send and receive."""
        fs = self._sockets.get(family)
        if fs is None:
            return None
        return "kernel" if fs.kernel_capable else "user"

    @property
    def sockets(self) -> dict[int, socket.socket]:
        return {f: fs.sock for f, fs in self._sockets.items()}

    # --- public API ------------------------------------------------------------------------------------------
    def train(self, address: str, settings: IcmpSettings, label: str | None = None) -> Train:
        """Start a train now; await the returned Train for its IcmpResult. `address` must be an IP literal."""
        t = Train(self, address, settings, label)
        t.fs.ensure_bufsize(t.payload_len)
        self._trains.add(t)
        t.future.add_done_callback(lambda _f: self._trains.discard(t))
        now = max(time.monotonic_ns(), self._ready_ns)
        # Trains started together (a district-wide check starts hundreds) would send in lockstep: the k-th
        # train started in the same event-loop iteration begins k·φ (mod 1) of its interval later. A lone
        # train starts at once.
        if self._train_burst == 0:
            self._loop_or_raise().call_soon(self._end_train_burst)
        offset = round(((self._train_burst * 0.6180339887498949) % 1.0) * t.interval_ns)
        self._train_burst += 1
        self._push(now + offset, t)
        self._arm()
        return t

    def _end_train_burst(self) -> None:
        self._train_burst = 0

    def add_target(
        self,
        address: str,
        interval: float = 1.0,
        *,
        settings: IcmpSettings | None = None,
        capacity: int = 300,
        on_sample: SampleCallback | None = None,
        label: str | None = None,
    ) -> ContinuousTarget:
        """Probe `address` (an IP literal) every `interval` seconds until removed.

        Packet shape and timeout come from `settings` (its count and interval are ignored; the default timeout
        is min(2 s, interval)). The last `capacity` echoes stay in the target's ring buffer, for `window()`
        and `samples()`; `on_sample(target, send_time, rtt_or_None)` is called as each echo is decided.
        Targets with the same interval are spread evenly over it.
        """
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        s = settings or IcmpSettings(timeout=min(2.0, max(0.001, interval)))
        if capacity * interval <= s.timeout:
            raise ValueError(
                f"a ring of {capacity} echoes every {interval} s is reused before the {s.timeout} s timeout"
            )
        t = ContinuousTarget(self, address, s, interval, capacity, on_sample, label)
        t.fs.ensure_bufsize(t.payload_len)
        self._groups.setdefault(t.interval_ns, []).append(t)
        self._dirty_groups.add(t.interval_ns)
        self._adapt_batch()
        self._arm(soon=True)
        return t

    def remove_target(self, target: ContinuousTarget) -> None:
        target.closed = True
        group = self._groups.get(target.interval_ns)
        if group and target in group:
            group.remove(target)
            if group:
                self._dirty_groups.add(target.interval_ns)
            else:
                del self._groups[target.interval_ns]
            self._adapt_batch()

    @property
    def targets(self) -> list[ContinuousTarget]:
        return [t for g in self._groups.values() for t in g]

    # --- scheduling ------------------------------------------------------------------------------------------
    def _push(self, due: int, s: _Stream) -> None:
        heapq.heappush(self._heap, (due, next(self._tiebreak), s.gen, s))

    @property
    def batch_window(self) -> float:
        """The batch window in use, seconds (fixed by the constructor, or adapted to the load)."""
        return self._batch_ns / 1e9

    def _adapt_batch(self) -> None:
        """Called whenever the set of continuous targets changes (add_target, remove_target), so the window
        and the buffer warning always match the targets in place."""
        rate = sum(len(g) * 1e9 / interval for interval, g in self._groups.items())
        # Replies wait in the socket between wakeups, and for as long as the process is starved of CPU. Below half
        # a second of replies a busy host turns into false loss: say so once, with the fix.
        for fs in self._sockets.values():
            if not fs.rcvbuf_warned and rate * REPLY_TRUESIZE_BYTES * 0.5 > fs.rcvbuf:
                fs.rcvbuf_warned = True
                log.warning(
                    "the ICMP receive buffer (%d bytes) holds %.2f s of replies at %.0f echoes/s: a stall longer than"
                    " that drops replies (false loss). Raise net.core.rmem_max to at least %d"
                    " (deploy/sysctl.d/60-desanet.conf) or grant CAP_NET_ADMIN.",
                    fs.rcvbuf,
                    fs.rcvbuf / (rate * REPLY_TRUESIZE_BYTES),
                    rate,
                    self._rcvbuf,
                )
        if not self._batch_fixed:
            self._batch_ns = adaptive_batch_ns(rate)

    def _rebalance(self, now: int) -> None:
        """Spread each changed group of continuous targets evenly over its interval: target i of n at i/n."""
        now = max(now, self._ready_ns)
        for interval in self._dirty_groups:
            group = self._groups.get(interval)
            if not group:
                continue
            n = len(group)
            for i, t in enumerate(group):
                t.gen += 1  # its old heap entry is now stale
                t.phase_ns = i * interval // n
                base = self._epoch_ns + t.phase_ns
                k = -((base - now) // interval)  # ceil((now - base) / interval)
                self._push(base + max(0, k) * interval, t)
        self._dirty_groups.clear()

    def _arm(self, soon: bool = False) -> None:
        """Make sure the timer fires by the next due echo, expiry, or paused reader, whichever is first."""
        if self._closed:
            return
        loop = self._loop or self._loop_or_raise()
        now = time.monotonic_ns()
        if soon:
            wake = now
        elif self._heap:
            wake, _, _, top = self._heap[0]
            if top.continuous and self._batch_ns:  # its batch starts at the grid point before it is due,
                # but not more than half its interval early (a target faster than twice the window)
                wake = max(wake - (wake - self._epoch_ns) % self._batch_ns, wake - (top.interval_ns >> 1))
        else:
            wake = 1 << 62
        for fs in self._sockets.values():
            if not fs.reader_on:  # a paused reader: drain within two batch windows
                wake = min(wake, fs.reader_off_at + 2 * self._batch_ns)
            for q in fs.expiry.values():
                if q:
                    wake = min(wake, q[0][0] + self._batch_ns)  # coalesce expiries with later sends
        if wake == 1 << 62:
            return
        if self._timer is not None:
            if self._timer_at <= wake:
                return
            self._timer.cancel()
        self._timer_at = wake
        self._timer = loop.call_later(max(0, wake - now) / 1e9, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = 0
        if self._closed:
            return
        try:
            self._tick_inner()
        except Exception:  # never let one bad echo stop the schedule
            self.stats.internal_errors += 1
            log.exception("icmp engine tick failed")
        self._arm()

    def _tick_inner(self) -> None:
        self.stats.wakeups += 1
        now = time.monotonic_ns()
        if self._dirty_groups:
            self._rebalance(now)
        batch = self._batch_ns
        heap = self._heap
        pop = heapq.heappop
        send = self._send
        stats = self.stats
        monotonic_ns = time.monotonic_ns
        # Continuous echoes go out in batches aligned to a grid of the batch window: the wakeup at grid point g
        # sends those due in [g, g + window). The cadence on the wire is then steady (the same count every
        # window) instead of drifting with the event loop's latency. Trains keep their own spacing: at most
        # TRAIN_EARLY_NS (and half their interval) early. Nothing is sent more than half its interval early.
        # (+1 ms: a timer that fires a hair before its grid point still takes that point's batch.)
        horizon_c = now + 1_000_000 - (now + 1_000_000 - self._epoch_ns) % batch + batch if batch else now
        horizon_t = now + min(batch, TRAIN_EARLY_NS)
        deferred = []
        while heap:
            top = heap[0]
            due = top[0]
            if due >= horizon_c and due > horizon_t:
                break
            s = top[3]
            if (due >= horizon_c if s.continuous else due > horizon_t) or due > now + (s.interval_ns >> 1):
                deferred.append(pop(heap))
                continue
            due, _, gen, s = pop(heap)
            if s.closed or gen != s.gen:
                continue
            send(s, now)
            if s.continuous:
                late = monotonic_ns() - due  # one clock read per send: ~0.1 µs, against ~10 µs for the send
                if late > 0:
                    self._note_lateness(late)
                else:
                    stats.lateness_histogram[0] += 1
                stats.continuous_sends += 1
                nxt = due + s.interval_ns
                if nxt < now - s.interval_ns:  # fell behind by more than an interval: skip, do not burst
                    missed = (now - nxt) // s.interval_ns
                    nxt += missed * s.interval_ns
                    s.skipped += missed  # type: ignore[attr-defined]
                self._push(nxt, s)
            elif s.sent < s.capacity:
                # A train: when late, slip rather than catch up, so that two echoes are never closer than half
                # an interval (the early-send allowance) on the wire.
                self._push(max(due + s.interval_ns, now + s.interval_ns), s)
        for item in deferred:
            heapq.heappush(heap, item)
        # Collect TX stamps and the replies already here (on loopback and LANs they come back during sendto).
        # While the next tick is at most two batch windows away anyway, with kernel RX stamps, the ticks alone
        # drain the socket and the reader stays off: no wakeup per reply. Otherwise listen again.
        dense = self._batch_ns > 0 and bool(heap) and heap[0][0] - now <= 2 * self._batch_ns
        for fs in self._sockets.values():
            self._receive(fs)
            if dense and fs.rx_stamping:
                self._reader(fs, False)
                fs.reader_off_at = now
            else:
                self._reader(fs, True)
        self._expire(now)

    def _note_lateness(self, late_ns: int) -> None:
        """Account one continuous send `late_ns` after its due time (the rare path: most sends are early)."""
        stats = self.stats
        stats.lateness_sum_seconds += late_ns / 1e9
        if late_ns > 10_000_000:
            stats.late_sends_over_10ms += 1
        if late_ns > stats.max_send_lateness_seconds * 1e9:
            stats.max_send_lateness_seconds = late_ns / 1e9
        for b, bound in enumerate(_LATENESS_BOUNDS_NS):
            if late_ns <= bound:
                stats.lateness_histogram[b] += 1
                break

    # --- sending ---------------------------------------------------------------------------------------------
    def _send(self, s: _Stream, now_mono: int) -> None:
        fs = s.fs
        state = fs.slot_state
        seq = fs.next_seq
        if state[seq]:  # not free: look for one that is
            for _ in range(NSLOTS):
                seq = (seq + 1) & 0xFFFF
                if not state[seq]:
                    break
            else:
                self.stats.overruns += 1
                return
        fs.next_seq = (seq + 1) & 0xFFFF
        serial = self._serial = (self._serial + 1) & 0xFFFFFFFF
        e = s.sent
        s.sent = e + 1
        i = e % s.capacity
        s.serial[i] = serial
        s.rtt_ns[i] = PENDING
        s.arrival[i] = 0
        s.dups[i] = 0
        s.flags[i] = 0
        pkt = s.template
        if s.checksum:
            c = s.base_sum + seq + (serial >> 16) + (serial & 0xFFFF)
            c = (c & 0xFFFF) + (c >> 16)
            c = (c & 0xFFFF) + (c >> 16)
            if s.has_token:
                struct.pack_into("!HHHI", pkt, 2, ~c & 0xFFFF, fs.ident, seq, serial)  # "xx" would write zeros
            else:
                struct.pack_into("!HHH", pkt, 2, ~c & 0xFFFF, fs.ident, seq)
        elif s.has_token:
            struct.pack_into("!HI", pkt, 6, seq, serial)
        else:
            struct.pack_into("!H", pkt, 6, seq)
        if fs.opts != s.opts:
            try:
                fs.set_opts(s.opts)
            except OSError as exc:
                self._send_failed(s, i, exc)
                return
        s.send_ns[i] = time.time_ns()
        try:
            fs.sock.sendto(pkt, s.sockaddr)
        except BlockingIOError as exc:
            self._send_failed(s, i, exc)
            return
        except OSError as exc:
            if fs.kind != "dgram":
                self._send_failed(s, i, exc)
                return
            # A ping socket with IP_RECVERR reports the last ICMP error, whatever destination it was about,
            # on the next send, and drops that send. The failed call cleared it: try once more, so that one
            # unreachable village cannot cost another village an echo.
            if fs.tx_stamping:
                self._drain_errqueue(fs)
                fs.reset_tx_keys()
            s.send_ns[i] = time.time_ns()
            try:
                fs.sock.sendto(pkt, s.sockaddr)
            except OSError as exc2:
                self._send_failed(s, i, exc2)
                return
        self.stats.sent += 1
        fs.slot_stream[seq] = s
        fs.slot_index[seq] = i
        fs.slot_serial[seq] = serial
        fs.slot_tx_ns[seq] = 0
        state[seq] = SLOT_PENDING
        if fs.tx_stamping:
            k = fs.tx_counter & 0xFFFF
            fs.tx_key_slot[k] = seq
            fs.tx_key_serial[k] = serial
            fs.tx_counter += 1
            fs.tx_pending += 1
        q = fs.expiry.get(s.timeout_ns)
        if q is None:
            q = fs.expiry[s.timeout_ns] = deque()
        q.append((now_mono + s.timeout_ns, seq))

    def _send_failed(self, s: _Stream, i: int, exc: OSError) -> None:
        self.stats.send_errors += 1
        s.last_error = f"send failed: {exc.strerror or exc}"
        s.flags[i] |= F_SEND_ERROR
        s.rtt_ns[i] = LOST
        if s.fs.tx_stamping:
            self._drain_errqueue(s.fs)
            s.fs.reset_tx_keys()
        s._decided_one(i)

    # --- receiving -------------------------------------------------------------------------------------------
    def _on_readable(self, fs: _FamilySocket) -> None:
        self.stats.reader_wakeups += 1
        try:
            got = self._receive(fs)
            if not got:  # woken by EPOLLERR alone: something waits on the error queue
                self._drain_errqueue(fs)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("icmp engine receive failed")
        if fs.rx_stamping and self._batch_ns:
            # RX times come from the kernel, so reading later costs no accuracy: pause the reader until the
            # next tick (at most two batch windows away) and take a whole batch of replies per wakeup.
            self._reader(fs, False)
            self._arm()

    def _receive(self, fs: _FamilySocket) -> int:
        """Drain TX stamps, then every queued datagram; returns how many datagrams were read."""
        if (fs.tx_pending > 0 and fs.tx_stamping) or fs.kind == "dgram":  # ping sockets: ICMP errors wait there
            self._drain_errqueue(fs)
        recv = fs.sock.recvmsg_into
        buf = fs.buf
        bufs = fs.bufs
        ancsize = fs.ancsize
        rx_kernel = fs.rx_stamping
        raw4 = fs.raw4
        reply_type = fs.reply_type
        ident = fs.ident
        slot_stream = fs.slot_stream
        unpack_from = struct.unpack_from
        match = self._match_reply
        got = 0
        for got in range(1, 10_001):  # bounded: yield to the loop now and then even under a flood
            try:
                n, anc, flags, addr = recv(bufs, ancsize)
            except (BlockingIOError, InterruptedError):
                return got - 1
            except OSError as exc:  # a pending socket error (ping sockets report ICMP errors this way too)
                log.debug("recv: %s", exc)
                self._drain_errqueue(fs)
                continue
            rx_ns = 0
            if rx_kernel:
                for level, _typ, cd in anc:
                    if level == _SOL_SOCKET and len(cd) >= 16:  # SCM_TIMESTAMPING or SCM_TIMESTAMPNS
                        sec, nsec = unpack_from("qq", cd)
                        rx_ns = sec * 1_000_000_000 + nsec
                        break
            kernel = rx_ns != 0
            if not kernel:
                rx_ns = time.time_ns()
            src = addr[0] if addr else ""
            # Fast path: a well-formed echo reply carrying our identifier.
            off = (buf[0] & 0x0F) << 2 if raw4 else 0
            if (
                not flags & _MSG_TRUNC
                and n >= off + 8
                and buf[off] == reply_type
                and buf[off + 1] == 0
                and (not raw4 or (buf[0] >> 4 == 4 and off >= 20 and buf[9] == 1 and (buf[2] << 8 | buf[3]) == n))
            ):
                rid, seq = unpack_from("!HH", buf, off + 4)
                if rid != ident:
                    self.stats.foreign += 1
                    continue
                s = slot_stream[seq]
                if s is None:
                    self.stats.late += 1
                    continue
                match(fs, s, seq, src, buf, off + 8, n, rx_ns, kernel)
            else:
                try:
                    self._handle_datagram(fs, buf, n, src, rx_ns, kernel, flags)
                except Exception:  # a packet we failed to foresee must not stop the reader
                    self.stats.internal_errors += 1
                    log.exception("icmp engine could not handle a datagram")
        return got

    def _match_reply(
        self,
        fs: _FamilySocket,
        s: _Stream,
        seq: int,
        src: str,
        data: bytes | bytearray,
        off: int,
        n: int,
        rx_ns: int,
        kernel_rx: bool,
    ) -> None:
        """An echo reply for sequence `seq`, whose slot belongs to `s`: check it, then record its RTT."""
        if src != s.address:
            self.stats.foreign += 1
            return
        if n - off != s.payload_len:
            self.stats.malformed += 1
            return
        serial = fs.slot_serial[seq]
        if s.has_token and struct.unpack_from("!II", data, off) != (serial, self._cookie):
            self.stats.malformed += 1
            return
        i = fs.slot_index[seq]
        if s.serial[i] != serial:  # ring slot already reused (capacity smaller than timeout / interval)
            self.stats.late += 1
            return
        self.stats.replies += 1
        if fs.slot_state[seq] == SLOT_ANSWERED:
            s.dups[i] += 1
            return
        tx = fs.slot_tx_ns[seq]
        if not tx and fs.tx_stamping:
            self._drain_errqueue(fs)  # the TX stamp may be queued behind the reply
            tx = fs.slot_tx_ns[seq]
        f = s.flags[i]
        if tx:
            f |= F_KERNEL_TX
            s.send_ns[i] = tx
        else:
            tx = s.send_ns[i]
        if kernel_rx:
            f |= F_KERNEL_RX
        s.flags[i] = f
        fs.slot_state[seq] = SLOT_ANSWERED
        s.arrivals += 1
        s.arrival[i] = s.arrivals
        s.rtt_ns[i] = rx_ns - tx if rx_ns > tx else 0
        s._decided_one(i)

    def _handle_datagram(
        self, fs: _FamilySocket, data: bytes | bytearray, n: int, src: str, rx_ns: int, kernel_rx: bool, flags: int = 0
    ) -> None:
        """The general path for one received datagram (the fast path in _receive takes plain replies)."""
        if flags & _MSG_TRUNC:
            self.stats.malformed += 1
            return
        verdict, ident, seq, off, _info = parse_icmp(data, n, v6=fs.v6, ip_header=fs.raw4)
        if verdict == ECHO_REPLY:
            s = fs.slot_stream[seq]
            if ident != fs.ident:
                self.stats.foreign += 1
            elif s is None:
                self.stats.late += 1
            else:
                self._match_reply(fs, s, seq, src, data, off, n, rx_ns, kernel_rx)
        elif verdict == ERROR:
            self._icmp_error(fs, ident, seq, bytes(data[off : off + (16 if fs.v6 else 4)]))
        elif verdict == MALFORMED:
            self.stats.malformed += 1
        # OTHER: somebody else's traffic the filter let through; not worth a counter

    def _icmp_error(self, fs: _FamilySocket, ident: int, seq: int, dst: bytes | None) -> None:
        s = fs.slot_stream[seq]
        if ident != fs.ident or s is None or fs.slot_state[seq] != SLOT_PENDING:
            self.stats.foreign += 1
            return
        if dst is not None and dst != s.addr_packed:
            self.stats.foreign += 1
            return
        self.stats.icmp_errors += 1
        i = fs.slot_index[seq]
        if s.serial[i] == fs.slot_serial[seq]:
            s.flags[i] |= F_ICMP_ERROR

    def _drain_errqueue(self, fs: _FamilySocket) -> None:
        """TX timestamps (and, on ping sockets, ICMP errors) from the socket's error queue."""
        recv = fs.sock.recvmsg
        unpack_from = struct.unpack_from
        stats = self.stats
        key_slot = fs.tx_key_slot
        key_serial = fs.tx_key_serial
        slot_stream = fs.slot_stream
        slot_state = fs.slot_state
        slot_serial = fs.slot_serial
        for _ in range(100_000):
            try:
                data, anc, _flags, addr = recv(256, 512, _MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: empty
                if fs.tx_pending > 0:
                    fs.tx_pending = 0  # what has not come yet comes with EPOLLERR, or never
                return
            ts = 0
            ee: tuple[int, ...] | None = None
            for level, typ, cd in anc:
                if level == _SOL_SOCKET:
                    if typ == SO_TIMESTAMPING and len(cd) >= 16:
                        sec, nsec = unpack_from("qq", cd)
                        ts = sec * 1_000_000_000 + nsec
                elif typ in (IP_RECVERR, IPV6_RECVERR) and level in (SOL_IP, SOL_IPV6) and len(cd) >= 16:
                    ee = unpack_from("=IBBBBII", cd)
            if ee is None:
                continue
            origin = ee[1]
            if origin == SO_EE_ORIGIN_TIMESTAMPING:
                fs.tx_pending -= 1
                key = ee[6]
                k = key & 0xFFFF
                seq = key_slot[k]
                # The key must be one of the last 65536 we issued, its echo still in flight, and the stamp no
                # earlier than the time read just before sendto, nor later than the echo's timeout.
                if seq < 0 or not ts or (fs.tx_counter - 1 - key) & 0xFFFFFFFF >= NSLOTS:
                    stats.tx_stamps_rejected += 1
                    continue
                key_slot[k] = -1
                s = slot_stream[seq]
                if s is None or slot_state[seq] != SLOT_PENDING or slot_serial[seq] != key_serial[k]:
                    stats.tx_stamps_rejected += 1
                    continue
                user = s.send_ns[fs.slot_index[seq]]
                if ts < user or ts > user + s.timeout_ns:
                    stats.tx_stamps_rejected += 1
                    continue
                fs.slot_tx_ns[seq] = ts
                fs.tx_seen += 1
                stats.tx_stamps += 1
            elif origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6) and len(data) >= 8:
                # Ping sockets: the payload is the echo request we sent, `addr` its destination.
                dst = None
                if addr:
                    with contextlib.suppress(ValueError):
                        dst = ipaddress.ip_address(addr[0].split("%")[0]).packed
                self._icmp_error(fs, (data[4] << 8) | data[5], (data[6] << 8) | data[7], dst)

    # --- timeouts --------------------------------------------------------------------------------------------
    def _expire(self, now_mono: int) -> None:
        for fs in self._sockets.values():
            state = fs.slot_state
            slot_stream = fs.slot_stream
            for q in fs.expiry.values():
                while q and q[0][0] <= now_mono:
                    seq = q.popleft()[1]
                    st = state[seq]
                    s = slot_stream[seq]
                    state[seq] = SLOT_FREE
                    slot_stream[seq] = None
                    if s is None:
                        continue
                    i = fs.slot_index[seq]
                    if s.serial[i] != fs.slot_serial[seq]:
                        continue
                    if st == SLOT_PENDING and s.rtt_ns[i] == PENDING:
                        s.rtt_ns[i] = LOST
                        s._decided_one(i)
                    elif st == SLOT_ANSWERED and fs.tx_stamping and not fs.slot_tx_ns[seq]:
                        fs.tx_missing += 1
            if fs.tx_stamping and fs.tx_missing > _TX_MISSING_LIMIT and not fs.tx_seen:
                log.warning("no TX timestamps from the kernel on this path: RTTs use user-space send times")
                fs.disable_tx_stamps()


# ------------------------------------------------------------------------------------------------------------
# The probe-module face shared by every probe: probe(target, settings) -> Result
# ------------------------------------------------------------------------------------------------------------
async def resolve(target: str) -> str:
    """An IP literal as is; a host name through icmplib's resolver (A first, then AAAA)."""
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        pass
    from icmplib import async_resolve
    from icmplib.exceptions import NameLookupError

    try:
        return str((await async_resolve(target))[0])
    except NameLookupError as exc:
        raise ValueError(f"cannot resolve {target!r}") from exc


async def probe(target: str, settings: IcmpSettings | None = None, engine: IcmpEngine | None = None) -> IcmpResult:
    """Send one echo train to `target` and summarise it. Without `engine`, a private one is opened and closed."""
    settings = settings or IcmpSettings()
    address = await resolve(target)
    if engine is not None:
        return await engine.train(address, settings, label=target)
    async with IcmpEngine() as own:
        return await own.train(address, settings, label=target)


def ping_group_allows(gid: int | None = None) -> bool:
    """Whether net.ipv4.ping_group_range lets `gid` (default: ours) open unprivileged ping sockets."""
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return False
    gids = {gid} if gid is not None else {os.getegid(), *os.getgroups()}
    return any(lo <= g <= hi for g in gids)
