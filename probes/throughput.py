"""Throughput probe: a native asyncio client for the iperf3 protocol (TCP up/down, UDP video rehearsal).

Any standard `iperf3 -s` is the far end; the probe host needs no iperf3 binary. The wire protocol is the
one in research/libs.md §8 (verified against Debian's iperf3 3.12):

    client → cookie (37 bytes)          server → PARAM_EXCHANGE (9)
    client → params (4-byte BE length + JSON)
    server → CREATE_STREAMS (10)        client opens the data streams (TCP: connect + cookie; UDP: "9876"/"6789")
    server → TEST_START (1), TEST_RUNNING (2)        data flows; the *client's* clock ends the test
    client → TEST_END (4)               server → EXCHANGE_RESULTS (13)
    client → its results JSON           server → its results JSON
    server → DISPLAY_RESULTS (14)       client → IPERF_DONE (16), closes

Directions follow the project's convention (DESIGN.md): "down" is toward the village and "up" toward the
NOC. The probe runs at the NOC and the iperf3 server at the village, so "down" is the client sending and
"up" is iperf3's reverse mode (-R), the server sending.

How the TCP figure is measured (and why it can stop early):

* The client samples the kernel's count of data that reached the far end every 0.1 s — the server's byte
  count only arrives at the end, too late to decide when to stop. Counting in-order data alone (bytes read,
  or bytes cumulatively acknowledged) is not enough: after a loss the receiver holds everything above the
  hole until the retransmission fills it, then releases it at once, and a window that starts or ends in that
  recovery reads several per cent high or low at 5–20 Mbit/s (measured on the lab, 0.5–1.5 s windows). So:
  when the client sends ("down"), bytes acknowledged (written minus ioctl SIOCOUTQ = write_seq − snd_una)
  plus the segments the receiver has SACKed above the hole (TCP_INFO tcpi_sacked × MSS); when the client
  receives ("up"), the data segments that arrived (TCP_INFO tcpi_data_segs_in × MSS, Linux ≥ 4.6), whatever
  their order; where TCP_INFO lacks the field, the in-order count.
* The first `omit_seconds` (slow start) are left out of the figure, like iperf3 --omit. After that the
  rate is checked over the last three 0.5 s intervals; once the fastest and the slowest differ by at most
  converge_tolerance of their mean, the test stops and the figure is the rate over those 1.5 s
  (`converged=True`). (Agreeing within ±tolerance of the mean would let a sagging rate — 0.99, 0.97, 0.96
  of the cap, seen on the lab under CPU contention — pass as steady, 3 % low.) Otherwise the test runs to
  `max_seconds` and the figure is the rate from the end of the omit period to the stop.
* `link_bits_per_second` is the rate on the wire that the goodput implies: tbf and policers count whole
  frames, so each segment's payload (the MSS the connection really used, from TCP_INFO) carries TCP (20 +
  12 with timestamps), IP (20 or 40) and Ethernet (14) headers: 10 Mbit/s of cap → 9.56 Mbit/s of goodput
  with MSS 1448 = cap × 1448/1514. UDP adds 8 + IP + Ethernet per datagram (per fragment if it fragments).

The UDP rehearsal sends at a fixed bitrate and packet size for the whole `max_seconds` (a rehearsal has no
slow start to omit and nothing to converge: `converged` is None). "down" figures (the client sends) are
what the server saw (its results JSON: bytes, jitter, errors, packets; out-of-order from its output, which
the probe asks for). "up" figures (the server sends) are computed here from the iperf3 UDP header (sec,
usec, 64-bit pcount) with kernel receive timestamps (SO_TIMESTAMPNS): RFC 3550 jitter, loss against the
packets the server says it sent, and reordering counted like iperf3 (a sequence number below the highest
seen).

Every test is bounded: `connect_timeout` bounds each wait for the far end outside the data phase,
`max_seconds` the data phase, `max_bytes` the payload. Timeouts, cancellation (Ctrl-C), a far end that
dies or goes silent all end in a clean stop: CLIENT_TERMINATE on the control connection when the test did
not finish, every socket closed, no callback left on the loop. Failures raise ThroughputError in words.

What a test cost the link is counted whatever ends it, because the budget (desanet.budget) charges it:

* `bytes` is the payload that crossed the link: sent by us and not still sitting unsent in our socket when
  it closes (SIOCOUTQNSD), or received by us, read or still queued (SIOCINQ). At the end — finished,
  failed or cancelled — a receiving stream is kept open until the far end's last data has landed (a gap of
  DRAIN_QUIET_SECONDS or a few RTTs, at most DRAIN_SECONDS), then every data stream is reset (SO_LINGER 0),
  so nothing we did not count leaves our send queue afterwards. Measured on the lab against the counters of
  the receiving interfaces (the village's, the NOC's): within 0.6 % (tests/test_budget_lab.py).
* Each test reports a last Progress with `final=True` after its sockets are closed, also when it failed or
  was cancelled, so a caller that counts through the progress callback has the exact figure in every
  ending a Python `finally` sees.
* `payload_bound(settings)` is the most a test can move however it ends, even if this process is killed:
  we never write past max_bytes; receiving over TCP we stop reading at max_bytes, so flow control lets the
  far end send at most one receive window more per stream; a UDP sender at the far end paces at the bitrate
  until its own timer. The budget reserves that bound before the test starts.

Why one file over 800 lines: one prober per protocol in one file, as blackbox_exporter keeps them. The
iperf3 control channel is one state machine whose states (parameter exchange, data phases up and down,
results) share the running byte counts and the caps the budget hands in; the pure helpers (link rate from
MSS, convergence) sit at the end, and the wire format notes above say which state sends what.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import itertools
import json
import math
import os
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DirectionResult",
    "Progress",
    "ProgressCallback",
    "ServerBusy",
    "ThroughputError",
    "ThroughputResult",
    "ThroughputSettings",
    "link_rate",
    "payload_bound",
    "probe",
    "receive_buffer_max",
    "tcp_frame_bytes",
    "udp_wire_bytes",
]

# ------------------------------------------------------------------------------------------ protocol
COOKIE_SIZE = 37
_COOKIE_CHARS = "abcdefghijklmnopqrstuvwxyz234567"
TEST_START = 1
TEST_RUNNING = 2
TEST_END = 4
PARAM_EXCHANGE = 9
CREATE_STREAMS = 10
SERVER_TERMINATE = 11
CLIENT_TERMINATE = 12
EXCHANGE_RESULTS = 13
DISPLAY_RESULTS = 14
IPERF_START = 15
IPERF_DONE = 16
ACCESS_DENIED = -1
SERVER_ERROR = -2
_STATE_NAMES = {
    TEST_START: "TEST_START",
    TEST_RUNNING: "TEST_RUNNING",
    TEST_END: "TEST_END",
    PARAM_EXCHANGE: "PARAM_EXCHANGE",
    CREATE_STREAMS: "CREATE_STREAMS",
    SERVER_TERMINATE: "SERVER_TERMINATE",
    CLIENT_TERMINATE: "CLIENT_TERMINATE",
    EXCHANGE_RESULTS: "EXCHANGE_RESULTS",
    DISPLAY_RESULTS: "DISPLAY_RESULTS",
    IPERF_START: "IPERF_START",
    IPERF_DONE: "IPERF_DONE",
    ACCESS_DENIED: "ACCESS_DENIED",
    SERVER_ERROR: "SERVER_ERROR",
}
UDP_CONNECT_MSG = b"9876"  # host-order 0x36373839 as a little-endian iperf3 client sends it
_UDP_HEADER = struct.Struct("!IIQ")  # sec, usec, pcount (we ask for udp_counters_64bit)
_TCP_BLOCK = 128 * 1024  # iperf3's default TCP block ("len")
_MAX_RESULTS_JSON = 4 * 1024 * 1024  # server output of a 60 s test fits many times over

# ------------------------------------------------------------------------------------------ kernel
SIOCOUTQ = 0x5411  # = TIOCOUTQ: bytes in a TCP socket's send queue not yet acknowledged
SIOCOUTQNSD = 0x894B  # bytes in a TCP socket's send queue not yet sent (linux/sockios.h)
SIOCINQ = 0x541B  # = FIONREAD: bytes received and not yet read
SO_TIMESTAMPNS = 35  # Python has no constant (research/libs.md §4)
_TCP_INFO = struct.Struct("=8B24I")  # struct tcp_info up to tcpi_total_retrans (104 bytes)
_TCPI_DATA_SEGS_IN = struct.Struct("=I")  # tcpi_data_segs_in, at byte 152 (Linux >= 4.6)
_TCPI_DATA_SEGS_IN_OFFSET = 152
_TCPI_OPT_TIMESTAMPS = 1
_IP_MTU = 14
_IPV6_MTU = 24
ETHERNET_HEADER = 14
TCP_HEADER = 20
TCP_TIMESTAMP_OPTION = 12
UDP_HEADER = 8

TICK = 0.1  # sampling period of the client's byte counts
DRAIN_SECONDS = 2.0  # longest wait at the end for the far end's last data, so that it is counted
DRAIN_QUIET_SECONDS = 0.3  # a gap this long ends the wait: more than TCP's shortest retransmission timeout
DEFAULT_TCP_RMEM_MAX = 6 * 1024 * 1024  # Linux's default net.ipv4.tcp_rmem maximum
_UDP_TIMER_SLACK = 1.01  # iperf3 paces on the average since the start: at most a packet or so ahead
INTERVAL = 0.5  # convergence interval
INTERVALS = 3  # consecutive intervals that must agree


# ------------------------------------------------------------------------------------------ public face
class ThroughputError(Exception):
    """A test that could not be run or finished, in words. `bytes_moved`/`seconds` are what it cost anyway."""

    def __init__(self, message: str, *, bytes_moved: int = 0, seconds: float = 0.0):
        super().__init__(message)
        self.bytes_moved = bytes_moved
        self.seconds = seconds


class ServerBusy(ThroughputError):
    """The iperf3 server answered ACCESS_DENIED: it is running another client's test."""


Direction = Literal["both", "down", "up"]
Protocol = Literal["tcp", "udp"]


@dataclass(frozen=True)
class ThroughputSettings:
    port: int = 5201
    direction: Direction = "both"
    protocol: Protocol = "tcp"
    max_seconds: float = 5.0  # per direction, data phase
    omit_seconds: float = 0.5  # TCP slow start left out of the figure
    parallel: int = 1
    udp_bitrate_bps: float = 4_000_000.0  # total over the streams, per direction
    udp_packet_bytes: int = 1200  # UDP payload (iperf3 "len"), header included
    dscp: int = 0
    converge_tolerance: float = 0.02
    connect_timeout: float = 3.0  # each wait for the far end outside the data phase
    max_bytes: int | None = None  # per direction payload cap (a budget's remainder); None = no cap

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.port <= 65535:
            problems.append(f"port {self.port} is not 1–65535")
        if self.direction not in ("both", "down", "up"):
            problems.append(f"direction {self.direction!r} is not both, down or up")
        if self.protocol not in ("tcp", "udp"):
            problems.append(f"protocol {self.protocol!r} is not tcp or udp")
        if not 0 < self.max_seconds <= 60:
            problems.append(f"max_seconds {self.max_seconds} is not in (0, 60]")
        if not 0 <= self.omit_seconds < self.max_seconds:
            problems.append(f"omit_seconds {self.omit_seconds} is not in [0, max_seconds)")
        if not 1 <= self.parallel <= 16:
            problems.append(f"parallel {self.parallel} is not 1–16")
        if not 1_000 <= self.udp_bitrate_bps <= 1e9:
            problems.append(f"udp_bitrate_bps {self.udp_bitrate_bps:g} is not 1 kbit/s – 1 Gbit/s")
        if not _UDP_HEADER.size <= self.udp_packet_bytes <= 65507:
            problems.append(f"udp_packet_bytes {self.udp_packet_bytes} is not {_UDP_HEADER.size}–65507")
        if not 0 <= self.dscp <= 63:
            problems.append(f"dscp {self.dscp} is not 0–63")
        if not 0 < self.converge_tolerance < 0.5:
            problems.append(f"converge_tolerance {self.converge_tolerance} is not in (0, 0.5)")
        if not 0 < self.connect_timeout <= 60:
            problems.append(f"connect_timeout {self.connect_timeout} is not in (0, 60]")
        if self.max_bytes is not None and self.max_bytes <= 0:
            problems.append(f"max_bytes {self.max_bytes} must be positive")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class DirectionResult:
    """One direction of one test. SI units; None where a figure does not apply or is not known.

    bits_per_second       goodput over the measurement window (after omit; the converged window if converged)
    link_bits_per_second  the rate on the wire that goodput implies (payload + TCP/UDP + IP + Ethernet headers)
    bytes, seconds        payload carried and time data flowed in the whole test: what it cost the link
    converged             TCP: the rate held within the tolerance for three 0.5 s intervals; UDP: None
    retransmits           TCP segments the sender retransmitted (down: this client's TCP_INFO; up: the server)
    jitter_seconds, loss_ratio, reordered   UDP, as the receiving end saw them
    """

    bits_per_second: float
    link_bits_per_second: float
    bytes: int
    seconds: float
    converged: bool | None
    retransmits: int | None = None
    jitter_seconds: float | None = None
    loss_ratio: float | None = None
    reordered: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits_per_second": self.bits_per_second,
            "link_bits_per_second": self.link_bits_per_second,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "converged": self.converged,
            "retransmits": self.retransmits,
            "jitter_seconds": self.jitter_seconds,
            "loss_ratio": self.loss_ratio,
            "reordered": self.reordered,
        }


@dataclass(frozen=True)
class ThroughputResult:
    target: str
    down: DirectionResult | None
    up: DirectionResult | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "down": self.down.to_dict() if self.down else None,
            "up": self.up.to_dict() if self.up else None,
        }


@dataclass(frozen=True)
class Progress:
    """Reported every tick while data flows (for a progress line); rate is the last 0.5 s.

    `bytes` is what the test has cost the link so far. `test` tells apart the tests of one probe() call (two
    for "both", more if the server was busy and a test was retried); each ends with one report with
    `final=True` and its exact count, whatever ended it (success, error, cancellation)."""

    direction: Literal["down", "up"]
    seconds: float
    bytes: int
    bits_per_second: float
    test: int = 0
    final: bool = False


ProgressCallback = Callable[[Progress], None]


async def probe(
    target: str, settings: ThroughputSettings, *, progress: ProgressCallback | None = None
) -> ThroughputResult:
    """Measure `target` (an address or host name) with an iperf3 server listening on settings.port.

    With direction "both" the two directions are two tests in a row, "down" (toward the village) first.
    """
    down = up = None
    moved, spent = 0, 0.0
    for direction in ("down", "up"):
        if settings.direction not in (direction, "both"):
            continue
        try:
            res = await _run_direction(target, settings, direction, progress, after_own_test=down is not None)
        except ThroughputError as exc:
            exc.bytes_moved += moved
            exc.seconds += spent
            raise
        moved += res.bytes
        spent += res.seconds
        if direction == "down":
            down = res
        else:
            up = res
    return ThroughputResult(target=target, down=down, up=up)


async def _run_direction(
    target: str,
    settings: ThroughputSettings,
    direction: Literal["down", "up"],
    progress: ProgressCallback | None,
    *,
    after_own_test: bool,
) -> DirectionResult:
    """One direction's test. Right after our own test on the same server, the server may still be closing it:
    iperf3 then answers the new connection with ACCESS_DENIED, or resets it before reading the cookie (seen on
    the lab: "the far end broke the control connection (Connection reset by peer)" for "up" right after "down").
    So the second test retries while the server has not taken it, for at most connect_timeout."""
    deadline = time.monotonic() + settings.connect_timeout
    delay = 0.05
    while True:
        test = _Test(target, settings, direction, progress)
        try:
            return await test.run()
        except ThroughputError:
            if not after_own_test or test.started or test.t0 or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(0.5, delay * 2)


# ------------------------------------------------------------------------------------------ pure helpers
def tcp_frame_bytes(mss: int, *, timestamps: bool, ipv6: bool = False) -> int:
    """Bytes of one full-sized TCP segment as tbf counts it (Ethernet header, no FCS/preamble)."""
    return mss + TCP_HEADER + (TCP_TIMESTAMP_OPTION if timestamps else 0) + (40 if ipv6 else 20) + ETHERNET_HEADER


def udp_wire_bytes(payload: int, *, mtu: int = 1500, ipv6: bool = False) -> int:
    """Bytes on the wire for one UDP datagram of `payload` bytes, counting IP fragments if it fragments."""
    ip = 40 if ipv6 else 20
    l4 = payload + UDP_HEADER
    if l4 + ip <= mtu:
        return l4 + ip + ETHERNET_HEADER
    per_fragment = (mtu - ip - (8 if ipv6 else 0)) // 8 * 8  # IPv6 fragments carry an 8-byte extension header
    fragments = math.ceil(l4 / per_fragment)
    return l4 + fragments * (ip + (8 if ipv6 else 0) + ETHERNET_HEADER)


def link_rate(goodput_bps: float, payload: int, wire: int) -> float:
    return goodput_bps * wire / payload if payload > 0 else 0.0


def payload_bound(settings: ThroughputSettings, receive_buffer: int = DEFAULT_TCP_RMEM_MAX) -> int:
    """The most payload one probe() call with these settings can put on the link, however it ends (even if
    this process is killed mid-test): what the budget reserves before the test starts.

    Down: we never write past max_bytes. Up over TCP: we stop reading at max_bytes and flow control lets the
    far end send at most one receive window (< `receive_buffer`, the tcp_rmem maximum) more per stream. Up
    over UDP: the far end paces at the bitrate until its own timer (`time`: ceil(max_seconds) + 1) ends it.
    """
    s = settings
    if s.max_bytes is None:
        raise ValueError("a test without max_bytes has no bound")
    total = 0
    if s.direction in ("both", "down"):
        total += s.max_bytes
    if s.direction in ("both", "up"):
        if s.protocol == "tcp":
            total += s.max_bytes + s.parallel * receive_buffer
        else:
            seconds = math.ceil(s.max_seconds) + 1
            total += math.ceil(s.udp_bitrate_bps / 8 * seconds * _UDP_TIMER_SLACK) + s.parallel * s.udp_packet_bytes
    return total


def receive_buffer_max() -> int:
    """The largest TCP receive buffer this host's autotuning may reach (net.ipv4.tcp_rmem, third field), in
    the network namespace of the calling thread (net sysctls are read in the opener's namespace)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as fh:
            return int(fh.read().split()[2])
    except (OSError, ValueError, IndexError):
        return DEFAULT_TCP_RMEM_MAX


def _bytes_at(samples: list[tuple[float, int]], t: float) -> float:
    """Cumulative bytes at time t, interpolated linearly between samples (clamped at the ends)."""
    if t <= samples[0][0]:
        return float(samples[0][1])
    for (t0, b0), (t1, b1) in zip(reversed(samples[:-1]), reversed(samples[1:]), strict=True):
        if t0 <= t <= t1:
            return b0 + (b1 - b0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return float(samples[-1][1])


def _rate(samples: list[tuple[float, int]], start: float, end: float) -> float:
    if end <= start:
        return 0.0
    return (_bytes_at(samples, end) - _bytes_at(samples, start)) * 8 / (end - start)


def steady_rate(
    samples: list[tuple[float, int]],
    not_before: float,
    tolerance: float,
    *,
    interval: float = INTERVAL,
    count: int = INTERVALS,
) -> float | None:
    """The rate (bit/s) over the last `count` intervals if they differ by at most tolerance × their mean.

    `samples` are (time, cumulative bytes); the intervals must all start at or after `not_before`.
    """
    if len(samples) < 2:
        return None
    end = samples[-1][0]
    start = end - interval * count
    if start < not_before - 1e-9:
        return None
    rates = [_rate(samples, start + i * interval, start + (i + 1) * interval) for i in range(count)]
    mean = sum(rates) / count
    if mean <= 0 or max(rates) - min(rates) > tolerance * mean:
        return None
    return mean


def _tcp_info(sock: socket.socket) -> dict[str, int] | None:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    if len(raw) < _TCP_INFO.size:
        return None
    v = _TCP_INFO.unpack_from(raw)
    u = v[8:]
    info = {
        "options": v[5],
        "snd_mss": u[2],
        "rcv_mss": u[3],
        "sacked": u[5],
        "pmtu": u[13],
        "rtt_us": u[15],
        "total_retrans": u[23],
    }
    if len(raw) >= _TCPI_DATA_SEGS_IN_OFFSET + _TCPI_DATA_SEGS_IN.size:
        (info["data_segs_in"],) = _TCPI_DATA_SEGS_IN.unpack_from(raw, _TCPI_DATA_SEGS_IN_OFFSET)
    return info


def _outq(sock: socket.socket) -> int:
    return _sockios(sock, SIOCOUTQ)


def _sockios(sock: socket.socket, request: int) -> int:
    """One of the socket queue-size ioctls (SIOCOUTQ, SIOCOUTQNSD, SIOCINQ)."""
    buf = fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def _valid_count(v: Any) -> int | None:
    """iperf3 writes -1 for 'unknown', and 3.12's cJSON prints it as 2**64 - 1."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if v < 0 or v >= 2**63:
        return None
    return int(v)


_OOO_SUM = re.compile(r"^\[SUM\].*?(\d+) datagrams received out-of-order", re.M)
_OOO_STREAM = re.compile(r"^\[\s*\d+\].*?(\d+) datagrams received out-of-order", re.M)


def _reordered_from_server_output(results: dict[str, Any]) -> int | None:
    """Out-of-order count from the server's own report (JSON if it runs with -J, else its text)."""
    out = results.get("server_output_json")
    if isinstance(out, dict):
        streams = (out.get("end") or {}).get("streams") or []
        counts = [_valid_count((s.get("udp") or {}).get("out_of_order")) for s in streams if isinstance(s, dict)]
        if counts and all(c is not None for c in counts):
            return sum(c for c in counts if c is not None)
        return None
    text = results.get("server_output_text")
    if isinstance(text, str):
        m = _OOO_SUM.findall(text)
        if m:
            return int(m[-1])
        per_stream = _OOO_STREAM.findall(text)
        return sum(int(x) for x in per_stream)  # iperf3 prints nothing when there were none
    return None


# ------------------------------------------------------------------------------------------ one test
@dataclass
class _Stream:
    id: int
    sock: socket.socket
    bytes: int = 0  # payload written (client sends: down) or read (client receives: up)
    # settled at the close (_settle): written but never sent (down), arrived but not read (up)
    unsent: int = 0
    queued: int = 0
    eof: bool = False
    # TCP, client receiving: data that arrived, in any order (see _Test._reached)
    arrived: int = 0
    segs_seen: int | None = None
    # UDP
    pcount: int = 0  # datagrams sent (down)
    packets: int = 0  # datagrams received (up)
    max_seq: int = 0
    reordered: int = 0
    jitter: float = 0.0
    prev_transit: float | None = None
    first_arrival: float | None = None
    last_arrival: float | None = None
    first_bytes: int = 0


_test_ids = itertools.count(1)


class _Test:
    """One iperf3 test in one direction. Not reusable."""

    def __init__(
        self,
        host: str,
        settings: ThroughputSettings,
        direction: Literal["down", "up"],
        progress: ProgressCallback | None,
    ):
        self.host = host
        self.s = settings
        self.direction = direction
        self.reverse = direction == "up"  # toward the NOC: the server at the village sends (iperf3 -R)
        self.udp = settings.protocol == "udp"
        self.progress = progress
        self.id = next(_test_ids)
        self.rate = 0.0  # the last 0.5 s, for the final progress report
        self.loop = asyncio.get_running_loop()
        self.cookie = ("".join(secrets.choice(_COOKIE_CHARS) for _ in range(COOKIE_SIZE - 1))).encode() + b"\0"
        self.ctrl: socket.socket | None = None
        self.family = socket.AF_INET
        self.addr: tuple[Any, ...] = ()
        self.streams: list[_Stream] = []
        self.started = False  # the server has created the test (CREATE_STREAMS seen)
        self.finished = False  # IPERF_DONE sent
        self.terminated = False  # CLIENT_TERMINATE sent
        self.sending = False  # our TCP writers / UDP sender are active
        self.ending = False  # the data phase is over (drain quietly)
        self.failure: ThroughputError | None = None
        self.limit_hit = False
        self.wake = asyncio.Event()
        self.wbuf = memoryview(os.urandom(_TCP_BLOCK))
        self.rbuf = bytearray(256 * 1024)
        self.udp_task: asyncio.Task[None] | None = None
        self.ctrl_task: asyncio.Task[int] | None = None
        self.t0 = 0.0  # data phase start
        self.t_stop = 0.0
        self.cpu0 = (0.0, 0.0, 0.0)
        self.infos: list[dict[str, int] | None] = []

    # ---------------------------------------------------------------- running
    async def run(self) -> DirectionResult:
        s = self.s
        # Backstop: setup (connect, 3 replies, stream set-up), data phase, teardown (3 replies), grace.
        bound = s.max_seconds + (8 + 2 * s.parallel) * s.connect_timeout + 1.0
        try:
            try:
                async with asyncio.timeout(bound):
                    result = await self._run()
            finally:
                await self._aclose()  # counts what the link carried (_settle), then closes
        except TimeoutError:
            raise self._error(f"the test did not finish within its {bound:.0f} s bound; stopped it") from None
        except ThroughputError as exc:
            exc.bytes_moved = max(exc.bytes_moved, self._moved())
            exc.seconds = max(exc.seconds, self._elapsed())
            raise
        finally:
            if self.progress is not None:  # the exact cost, whatever ended the test (cancellation too)
                self.progress(Progress(self.direction, self._elapsed(), self._moved(), self.rate, self.id, True))
        return dataclasses.replace(result, bytes=self._moved())

    async def _run(self) -> DirectionResult:
        s = self.s
        await self._connect_control()
        assert self.ctrl is not None
        await self._send(self.cookie)
        state = await self._expect_state("starting the test")
        if state != PARAM_EXCHANGE:
            raise self._unexpected(state, "asked for the test parameters")
        self.started = True
        await self._send_json(self._params())
        state = await self._expect_state("accepting the parameters")
        if state != CREATE_STREAMS:
            raise self._unexpected(state, "created the data streams")
        for i in range(s.parallel):
            await self._open_stream(1 if i == 0 else i + 2)
        state = await self._expect_state("starting the data streams")
        if state == TEST_START:
            state = await self._expect_state("starting the data streams")
        if state != TEST_RUNNING:
            raise self._unexpected(state, "started the test")
        samples, steady = await self._data_phase()
        server = await self._finish()
        return self._result(samples, steady, server)

    async def _connect_control(self) -> None:
        s = self.s
        try:
            async with asyncio.timeout(s.connect_timeout):
                infos = await self.loop.getaddrinfo(self.host, s.port, type=socket.SOCK_STREAM)
        except (TimeoutError, socket.gaierror) as exc:
            raise ThroughputError(
                f"cannot resolve {self.host!r}: {getattr(exc, 'strerror', None) or 'timeout'}"
            ) from None
        family, _, _, _, addr = infos[0]
        self.family, self.addr = family, addr
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ctrl = sock
        try:
            async with asyncio.timeout(s.connect_timeout):
                await self.loop.sock_connect(sock, addr)
        except TimeoutError:
            raise ThroughputError(
                f"no answer from {self._where()} within {s.connect_timeout:g} s (host down or port filtered)"
            ) from None
        except ConnectionRefusedError:
            raise ThroughputError(f"nothing is listening at {self._where()} (is `iperf3 -s` running there?)") from None
        except OSError as exc:
            raise ThroughputError(f"cannot connect to {self._where()}: {exc.strerror or exc}") from None

    def _params(self) -> dict[str, Any]:
        s = self.s
        p: dict[str, Any] = {
            "udp" if self.udp else "tcp": True,
            "omit": 0,  # the client omits slow start itself; the server counts everything
            "time": math.ceil(s.max_seconds) + 1,  # the client ends the test; the server's safety timer is later
            "parallel": s.parallel,
            "len": s.udp_packet_bytes if self.udp else _TCP_BLOCK,
            "pacing_timer": 1000,
            "client_version": "3.12",
        }
        if self.reverse:
            p["reverse"] = True
        if self.udp:
            p["bandwidth"] = max(1, round(s.udp_bitrate_bps / s.parallel))  # iperf3's -b is per stream
            p["udp_counters_64bit"] = 1
            if not self.reverse:
                p["get_server_output"] = 1  # its report carries the out-of-order count
        if s.dscp:
            p["TOS"] = s.dscp << 2
        return p

    async def _open_stream(self, stream_id: int) -> None:
        s = self.s
        kind = socket.SOCK_DGRAM if self.udp else socket.SOCK_STREAM
        sock = socket.socket(self.family, kind)
        sock.setblocking(False)
        st = _Stream(stream_id, sock)
        self.streams.append(st)
        if s.dscp:
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, s.dscp << 2)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, s.dscp << 2)
        try:
            async with asyncio.timeout(s.connect_timeout):
                await self.loop.sock_connect(sock, self.addr)
                if self.udp:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                    await self.loop.sock_sendall(sock, UDP_CONNECT_MSG)
                    reply = await self.loop.sock_recv(sock, 64)
                    if len(reply) != 4:
                        raise ThroughputError(f"the far end answered the UDP stream set-up with {len(reply)} bytes")
                else:
                    await self.loop.sock_sendall(sock, self.cookie)
        except TimeoutError:
            raise self._error(
                f"the far end did not accept data stream {len(self.streams)} within {s.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise self._error(f"cannot open data stream {len(self.streams)}: {exc.strerror or exc}") from None

    # ---------------------------------------------------------------- data phase
    async def _data_phase(self) -> tuple[list[tuple[float, int]], float | None]:
        s = self.s
        self.ctrl_task = asyncio.ensure_future(self._read_state())
        self.cpu0 = (time.monotonic(), *os.times()[:2])
        t0 = time.monotonic()
        self.t0 = t0
        self.sending = True
        for st in self.streams:
            fd = st.sock.fileno()
            if self.reverse:
                self.loop.add_reader(fd, self._on_udp_readable if self.udp else self._on_tcp_readable, st)
            elif not self.udp:
                self.loop.add_writer(fd, self._on_tcp_writable, st)
        if self.udp and not self.reverse:
            self.udp_task = asyncio.ensure_future(self._udp_sender(t0))
        deadline = t0 + s.max_seconds
        stall = max(2.0, s.connect_timeout)
        self._measured()  # arrival baselines
        samples: list[tuple[float, int]] = [(t0, 0)]
        last_progress = t0
        steady: float | None = None
        omit_end = t0 + (0.0 if self.udp else s.omit_seconds)
        tick = t0
        while True:
            tick += TICK
            with contextlib.suppress(TimeoutError):  # a hit byte cap or a broken stream wakes us at once
                await asyncio.wait_for(self.wake.wait(), max(0.0, min(tick, deadline) - time.monotonic()))
            now = time.monotonic()
            if self.ctrl_task.done():  # first: a dead server also breaks the streams, but this says why
                raise self._control_ended_early()
            if self.failure:
                raise self.failure
            if self.udp_task is not None and self.udp_task.done():
                self.udp_task.result()  # raises what the sender hit
            measured = self._measured()
            if measured > samples[-1][1]:
                last_progress = now
            samples.append((now, measured))
            if self.progress is not None:
                self.rate = _rate(samples, max(t0, now - INTERVAL), now)
                self.progress(Progress(self.direction, now - t0, self._moved(), self.rate, self.id))
            if now >= deadline or self.limit_hit:
                break
            if now - last_progress > stall and not (self.udp and not self.reverse):
                raise self._error(f"no data moved for {now - last_progress:.1f} s: the far end or the path stopped")
            if not self.udp:
                steady = steady_rate(samples, omit_end, s.converge_tolerance)
                if steady is not None:
                    break
        self.t_stop = samples[-1][0]
        self._stop_sending()
        return samples, steady

    def _measured(self) -> int:
        """The client's running byte count: TCP data that reached the receiver (_reached), UDP bytes sent
        (down) or received (up)."""
        if self.udp:
            return sum(st.bytes for st in self.streams)
        return sum(self._reached(st) for st in self.streams)

    def _reached(self, st: _Stream) -> int:
        """Bytes of one TCP stream that reached the receiver, counting data above a hole (module docstring).

        The first call (at the start of the data phase) sets the arrival baseline for a receiving stream.
        """
        info = _tcp_info(st.sock)
        if self.reverse:
            segs = info.get("data_segs_in") if info else None
            mss = info["rcv_mss"] if info else 0
            if segs is None or not mss:
                return st.bytes
            if st.segs_seen is not None:
                st.arrived += ((segs - st.segs_seen) % 2**32) * mss
            st.segs_seen = segs
            return st.arrived
        try:
            acked = st.bytes - _outq(st.sock)
        except OSError:
            return st.bytes
        sacked = info["sacked"] * info["snd_mss"] if info else 0
        return min(st.bytes, acked + sacked)

    def _written(self) -> int:
        """Payload written (down) or read (up) so far: what max_bytes caps."""
        return sum(st.bytes for st in self.streams)

    def _moved(self) -> int:
        """Payload that crossed the link: written less what never left our send queue, read plus what arrived
        unread (both known once _settle has run; before, the written or read count)."""
        return sum(st.bytes - st.unsent + st.queued for st in self.streams)

    def _elapsed(self) -> float:
        if self.t_stop:
            return self.t_stop - self.t0
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def _on_tcp_writable(self, st: _Stream) -> None:
        limit = self.s.max_bytes
        for _ in range(16):
            if not self.sending:
                self.loop.remove_writer(st.sock.fileno())
                return
            n = len(self.wbuf)
            if limit is not None:
                room = limit - self._written()
                if room <= 0:
                    self.limit_hit = True
                    self.wake.set()
                    self.loop.remove_writer(st.sock.fileno())
                    return
                n = min(n, room)
            try:
                sent = st.sock.send(self.wbuf[:n])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.loop.remove_writer(st.sock.fileno())
                self._fail(f"the far end broke data stream {st.id} during the test ({exc.strerror or exc})")
                return
            st.bytes += sent

    def _on_tcp_readable(self, st: _Stream) -> None:
        limit = self.s.max_bytes
        for _ in range(16):
            want = len(self.rbuf)
            if limit is not None:
                # Stop reading at the cap: the receive window then closes and the far end can send at most one
                # window more (payload_bound), even if this process dies before it can say stop.
                want = min(want, limit - self._written())
                if want <= 0:
                    self.loop.remove_reader(st.sock.fileno())
                    self._check_limit()
                    return
            try:
                n = st.sock.recv_into(self.rbuf, want)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.loop.remove_reader(st.sock.fileno())
                if not self.ending:
                    self._fail(f"the far end broke data stream {st.id} during the test ({exc.strerror or exc})")
                return
            if n == 0:
                self.loop.remove_reader(st.sock.fileno())
                if not self.ending:
                    self._fail(f"the far end closed data stream {st.id} in the middle of the test")
                return
            st.bytes += n
            self._check_limit()

    def _on_udp_readable(self, st: _Stream) -> None:
        size = self.s.udp_packet_bytes + 64
        for _ in range(256):
            try:
                data, anc, _flags, _addr = st.sock.recvmsg(size, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if not self.ending:
                    self.loop.remove_reader(st.sock.fileno())
                    self._fail(f"the far end stopped data stream {st.id} during the test ({exc.strerror or exc})")
                return
            arrival = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack_from("qq", payload)
                    arrival = sec + nsec * 1e-9
            self._udp_packet(st, data, time.time() if arrival is None else arrival)

    def _udp_packet(self, st: _Stream, data: bytes, arrival: float) -> None:
        if len(data) < _UDP_HEADER.size:
            return
        sec, usec, pcount = _UDP_HEADER.unpack_from(data)
        st.packets += 1
        st.bytes += len(data)
        if st.first_arrival is None:
            st.first_arrival, st.first_bytes = arrival, len(data)
        st.last_arrival = arrival
        if pcount > st.max_seq:
            st.max_seq = pcount
        else:
            st.reordered += 1
        transit = arrival - (sec + usec * 1e-6)
        if st.prev_transit is not None:
            st.jitter += (abs(transit - st.prev_transit) - st.jitter) / 16.0
        st.prev_transit = transit
        self._check_limit()

    def _check_limit(self) -> None:
        if self.s.max_bytes is not None and not self.limit_hit and self._written() >= self.s.max_bytes:
            self.limit_hit = True
            self.wake.set()

    async def _udp_sender(self, t0: float) -> None:
        """Paces datagrams at the configured bitrate, like a video sender's pacer.

        After a stall (a busy CPU or event loop) the backlog is sent at most ~2.5x the rate, as WebRTC's pacer
        does, rather than in one burst a shaper would drop; a backlog over 0.5 s is forgiven. If the host still
        falls short of the pace, _finish says so instead of reporting a throughput the link was never offered.
        """
        s = self.s
        size = s.udp_packet_bytes
        pps = s.udp_bitrate_bps / s.parallel / (size * 8)  # per stream
        buf = bytearray(os.urandom(size))
        start = last = t0
        sent = 0  # per stream
        while self.sending:
            now = time.monotonic()
            backlog = math.floor((now - start) * pps) + 1 - sent
            if backlog > pps * 0.5 + 2:
                start += (backlog - pps * 0.5) / pps
                backlog = math.floor((now - start) * pps) + 1 - sent
            n = min(backlog, max(2, math.ceil(2.5 * pps * (now - last))))
            last = now
            for _ in range(n):
                if s.max_bytes is not None and self._written() + size * len(self.streams) > s.max_bytes:
                    self.limit_hit = True
                    self.wake.set()
                    return
                for st in self.streams:
                    wall = time.time()
                    sec = int(wall)
                    _UDP_HEADER.pack_into(buf, 0, sec, int((wall - sec) * 1e6), st.pcount + 1)
                    try:
                        st.sock.send(buf)
                    except (BlockingIOError, InterruptedError):
                        await self.loop.sock_sendall(st.sock, bytes(buf))
                    except OSError as exc:
                        if exc.errno == errno.ENOBUFS:  # the local queue is full; this datagram is lost here
                            continue
                        raise self._error(f"the far end refused UDP stream {st.id} ({exc.strerror or exc})") from None
                    st.pcount += 1
                    st.bytes += size
            sent += max(0, n)
            behind = sent < math.floor((time.monotonic() - start) * pps) + 1
            await asyncio.sleep(0.001 if behind else max(0.0, start + sent / pps - time.monotonic()))

    def _stop_sending(self) -> None:
        self.sending = False
        self.ending = True
        if not self.reverse and not self.udp:
            for st in self.streams:
                self.loop.remove_writer(st.sock.fileno())
        if self.udp_task is not None and not self.udp_task.done():
            self.udp_task.cancel()

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = self._error(message)
        self.wake.set()

    # ---------------------------------------------------------------- end of test
    async def _finish(self) -> dict[str, Any]:
        s = self.s
        assert self.ctrl_task is not None
        if self.udp_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.udp_task
        if self.udp and not self.reverse:
            planned = self.s.udp_bitrate_bps * (self.t_stop - self.t0) / (8 * self.s.udp_packet_bytes)
            packets = sum(st.pcount for st in self.streams)
            if not self.limit_hit and packets < 0.9 * planned:
                raise self._error(
                    f"this host could not keep the pace: it sent {packets} of {planned:.0f} datagrams "
                    f"({packets / planned:.0%}; CPU too busy?), so the rehearsal says nothing about the link"
                )
            await asyncio.sleep(self._grace())  # let the last datagrams reach the server before it stops counting
        await self._send(bytes([TEST_END]))
        try:
            async with asyncio.timeout(s.connect_timeout):
                state = await asyncio.shield(self.ctrl_task)
        except TimeoutError:
            raise self._error(
                f"the far end did not answer the end of the test within {s.connect_timeout:g} s"
            ) from None
        except _ControlClosed:
            raise self._error("the far end closed the control connection at the end of the test") from None
        state = await self._check_state(state)
        if state != EXCHANGE_RESULTS:
            raise self._unexpected(state, "asked for the results")
        if not self.udp:
            self.infos = [_tcp_info(st.sock) for st in self.streams]  # before the sockets close
        if self.udp and self.reverse:
            await asyncio.sleep(self._grace())  # datagrams still in flight when the server stopped
        await self._send_json(self._our_results())
        server = await self._read_json("sending its results", limit=_MAX_RESULTS_JSON)
        state = await self._expect_state("closing the test")
        if state != DISPLAY_RESULTS:
            raise self._unexpected(state, "closed the test")
        # The data streams stay open until _settle has counted the far end's last data.
        self.finished = True  # the results are in: a far end that leaves now does not spoil them
        if self.ctrl is not None:
            with contextlib.suppress(OSError):
                self.ctrl.send(bytes([IPERF_DONE]))  # one byte into an idle socket: never blocks
        return server

    def _grace(self) -> float:
        info = _tcp_info(self.ctrl) if self.ctrl is not None else None
        rtt = info["rtt_us"] * 1e-6 if info else 0.05
        return min(0.25, max(0.02, 2 * rtt))

    def _our_results(self) -> dict[str, Any]:
        t, user, system = self.cpu0
        now = time.monotonic()
        cpu = os.times()
        wall = max(now - t, 1e-9)
        du, ds = (cpu[0] - user) / wall * 100, (cpu[1] - system) / wall * 100
        streams = []
        for i, st in enumerate(self.streams):
            info = self.infos[i] if not self.reverse and i < len(self.infos) else None
            streams.append(
                {
                    "id": st.id,
                    "bytes": st.bytes,
                    "retransmits": info["total_retrans"] if info else -1,
                    "jitter": st.jitter,
                    "errors": 0,
                    "omitted_errors": 0,
                    "packets": st.pcount if not self.reverse else st.packets,
                    "omitted_packets": 0,
                    "start_time": 0,
                    "end_time": self.t_stop - self.t0,
                }
            )
        return {
            "cpu_util_total": du + ds,
            "cpu_util_user": du,
            "cpu_util_system": ds,
            "sender_has_retransmits": 1 if not self.udp and not self.reverse else -1,
            "streams": streams,
        }

    # ---------------------------------------------------------------- result
    def _result(
        self, samples: list[tuple[float, int]], steady: float | None, server: dict[str, Any]
    ) -> DirectionResult:
        s = self.s
        seconds = self.t_stop - self.t0
        sstreams = [x for x in server.get("streams") or [] if isinstance(x, dict)]
        ipv6 = self.family == socket.AF_INET6
        if self.udp:
            return self._udp_result(sstreams, server, seconds, ipv6)
        if steady is not None:
            goodput = steady
        else:
            omit_end = self.t0 + s.omit_seconds
            start = omit_end if self.t_stop - omit_end >= INTERVAL else self.t0
            goodput = _rate(samples, start, self.t_stop)
        info = self.infos[0] if self.infos else None
        mss, ts = 1448, True
        if info:
            mss = (info["rcv_mss"] if self.reverse else info["snd_mss"]) or info["snd_mss"] or mss
            ts = bool(info["options"] & _TCPI_OPT_TIMESTAMPS)
        if self.reverse:
            counts = [_valid_count(x.get("retransmits")) for x in sstreams]
            retrans = sum(c for c in counts if c is not None) if counts and None not in counts else None
            if _valid_count(server.get("sender_has_retransmits")) != 1:
                retrans = None
        else:
            infos = self.infos
            retrans = sum(i["total_retrans"] for i in infos if i) if infos and all(infos) else None
        return DirectionResult(
            bits_per_second=goodput,
            link_bits_per_second=link_rate(goodput, mss, tcp_frame_bytes(mss, timestamps=ts, ipv6=ipv6)),
            bytes=self._moved(),
            seconds=seconds,
            converged=steady is not None,
            retransmits=retrans,
        )

    def _udp_result(
        self, sstreams: list[dict[str, Any]], server: dict[str, Any], seconds: float, ipv6: bool
    ) -> DirectionResult:
        size = self.s.udp_packet_bytes
        mtu = 1500
        if self.streams:
            with contextlib.suppress(OSError):
                mtu = self.streams[0].sock.getsockopt(
                    socket.IPPROTO_IPV6 if ipv6 else socket.IPPROTO_IP, _IPV6_MTU if ipv6 else _IP_MTU
                )
        wire = udp_wire_bytes(size, mtu=mtu, ipv6=ipv6)
        if self.reverse:
            sent_counts = [_valid_count(x.get("packets")) for x in sstreams]
            if not sent_counts or None in sent_counts:
                raise self._error("the far end's results do not say how many datagrams it sent")
            sent = sum(c for c in sent_counts if c is not None)
            received = sum(st.packets for st in self.streams)
            got = sum(st.bytes for st in self.streams)
            arrivals = [st for st in self.streams if st.first_arrival is not None and st.last_arrival is not None]
            span = 0.0
            if arrivals:
                span = max(st.last_arrival or 0.0 for st in arrivals) - min(st.first_arrival or 0.0 for st in arrivals)
            first = sum(st.first_bytes for st in arrivals)
            goodput = (got - first) * 8 / span if span > 0 else 0.0
            jitter = max((st.jitter for st in self.streams), default=0.0)
            loss = max(0, sent - received) / sent if sent else 1.0
            reordered: int | None = sum(st.reordered for st in self.streams)
        else:
            got_counts = [_valid_count(x.get("bytes")) for x in sstreams]
            pk = [_valid_count(x.get("packets")) for x in sstreams]
            er = [_valid_count(x.get("errors")) for x in sstreams]
            if not sstreams or None in got_counts or None in pk or None in er:
                raise self._error("the far end's results lack the bytes, packets and errors it counted")
            got = sum(c or 0 for c in got_counts)
            received = sum(
                pk_i - er_i for pk_i, er_i in zip(pk, er, strict=True) if pk_i is not None and er_i is not None
            )
            sent = sum(st.pcount for st in self.streams)
            goodput = got * 8 / seconds if seconds > 0 else 0.0
            jitters = [float(x.get("jitter") or 0.0) for x in sstreams]
            jitter = max(jitters, default=0.0)
            loss = max(0, sent - received) / sent if sent else 1.0
            reordered = _reordered_from_server_output(server)
        return DirectionResult(
            bits_per_second=goodput,
            link_bits_per_second=link_rate(goodput, size, wire),
            bytes=self._moved(),
            seconds=seconds,
            converged=None,
            retransmits=None,
            jitter_seconds=jitter,
            loss_ratio=min(1.0, loss),
            reordered=reordered,
        )

    # ---------------------------------------------------------------- control connection
    async def _send(self, data: bytes) -> None:
        assert self.ctrl is not None
        try:
            async with asyncio.timeout(self.s.connect_timeout):
                await self.loop.sock_sendall(self.ctrl, data)
        except TimeoutError:
            raise self._error("the far end stopped reading the control connection") from None
        except OSError as exc:
            raise self._error(f"the far end closed the control connection ({exc.strerror or exc})") from None

    async def _send_json(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode()
        await self._send(struct.pack("!I", len(data)) + data)

    async def _recv_exact(self, n: int) -> bytes:
        assert self.ctrl is not None
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = await self.loop.sock_recv(self.ctrl, min(n - len(buf), 65536))
            except OSError as exc:
                raise self._error(f"the far end broke the control connection ({exc.strerror or exc})") from None
            if not chunk:
                raise _ControlClosed()
            buf += chunk
        return bytes(buf)

    async def _read_state(self) -> int:
        return struct.unpack("b", await self._recv_exact(1))[0]

    async def _expect_state(self, doing: str) -> int:
        try:
            async with asyncio.timeout(self.s.connect_timeout):
                state = await self._read_state()
        except TimeoutError:
            raise self._error(f"the far end did not answer within {self.s.connect_timeout:g} s while {doing}") from None
        except _ControlClosed:
            raise self._error(f"the far end closed the control connection while {doing}") from None
        return await self._check_state(state)

    async def _check_state(self, state: int) -> int:
        if state == ACCESS_DENIED:
            raise ServerBusy(f"server busy: the iperf3 server at {self._where()} is running another test; try later")
        if state == SERVER_ERROR:
            try:
                async with asyncio.timeout(self.s.connect_timeout):
                    i_errno, err = struct.unpack("!ii", await self._recv_exact(8))
            except (TimeoutError, _ControlClosed):
                raise self._error("the iperf3 server reported an error (no details)") from None
            detail = f"iperf3 error {i_errno}" + (f", {os.strerror(err)}" if err else "")
            raise self._error(f"the iperf3 server at {self._where()} refused the test ({detail})")
        if state == SERVER_TERMINATE:
            raise self._error("the iperf3 server was stopped during the test")
        return state

    async def _read_json(self, doing: str, *, limit: int) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.s.connect_timeout):
                (n,) = struct.unpack("!I", await self._recv_exact(4))
                if n > limit:
                    raise self._error(
                        f"the far end sent {n} bytes of JSON while {doing}; more than the {limit} allowed"
                    )
                raw = await self._recv_exact(n)
        except TimeoutError:
            raise self._error(f"the far end did not answer within {self.s.connect_timeout:g} s while {doing}") from None
        except _ControlClosed:
            raise self._error(f"the far end closed the control connection while {doing}") from None
        try:
            obj = json.loads(raw)
        except ValueError:
            raise self._error(f"the far end sent malformed JSON while {doing}") from None
        if not isinstance(obj, dict):
            raise self._error(f"the far end sent unexpected JSON while {doing}")
        return obj

    def _control_ended_early(self) -> ThroughputError:
        assert self.ctrl_task is not None
        exc = self.ctrl_task.exception()
        if isinstance(exc, _ControlClosed):
            return self._error(
                "the far end closed the control connection in the middle of the test (server stopped or crashed)"
            )
        if isinstance(exc, ThroughputError):
            return exc
        if exc is not None:
            return self._error(f"the control connection failed: {exc}")
        state = self.ctrl_task.result()
        if state == SERVER_TERMINATE:
            return self._error("the iperf3 server was stopped in the middle of the test")
        if state == SERVER_ERROR:
            return self._error("the iperf3 server reported an error in the middle of the test")
        return self._unexpected(state, "kept the test running")

    def _unexpected(self, state: int, expected: str) -> ThroughputError:
        name = _STATE_NAMES.get(state, str(state))
        if state == ACCESS_DENIED:
            return ServerBusy(f"server busy: the iperf3 server at {self._where()} is running another test; try later")
        return self._error(f"protocol error: the far end sent {name} when it should have {expected}")

    def _error(self, message: str) -> ThroughputError:
        return ThroughputError(f"{self.direction}: {message}", bytes_moved=self._moved(), seconds=self._elapsed())

    def _where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.s.port}"

    # ---------------------------------------------------------------- cleanup
    def _close_streams(self) -> None:
        for st in self.streams:
            with contextlib.suppress(Exception):
                fd = st.sock.fileno()
                if fd >= 0:
                    self.loop.remove_reader(fd)
                    self.loop.remove_writer(fd)
            st.sock.close()

    async def _aclose(self) -> None:
        """Let cancelled socket operations unregister their fds *before* the sockets close, and count what the
        link carried before closing (_settle).

        asyncio removes a cancelled sock_recv/sock_sendall's reader or writer by fd number in a callback on the
        next loop pass; if the socket were closed first, that number could already belong to another probe's
        socket in the same loop. So: cancel our tasks, let them and those callbacks run, then close.
        """
        try:
            tasks = [t for t in (self.udp_task, self.ctrl_task) if t is not None and not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)
            await asyncio.sleep(0)
            await self._settle()
        finally:
            self._close()

    async def _settle(self) -> None:
        """Fix the byte count at what crossed the link, whatever ended the test.

        Sending: what is still unsent in our queue (SIOCOUTQNSD) never left; the close resets the stream
        (SO_LINGER 0), so it never will. Receiving over TCP: the far end has been told to stop (test ended,
        or CLIENT_TERMINATE sent here) and flushes what it had queued; we keep reading, up to max_bytes, until
        the streams end or go quiet (DRAIN_QUIET_SECONDS or 4 RTTs; at most DRAIN_SECONDS in all), and count what
        arrived unread.
        """
        if self.t0 and not self.t_stop:
            self.t_stop = time.monotonic()
        self.sending = False
        self.ending = True
        if self.udp or not self.streams:
            return
        for st in self.streams:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(st.sock.fileno())
                self.loop.remove_writer(st.sock.fileno())
        if not self.reverse:
            for st in self.streams:
                with contextlib.suppress(OSError):
                    st.unsent = min(st.bytes, _sockios(st.sock, SIOCOUTQNSD))
            self._reset_streams()
            return
        if self.started and not self.finished and self.ctrl is not None:
            with contextlib.suppress(OSError):
                self.ctrl.send(bytes([CLIENT_TERMINATE]))  # the far end stops sending now
            self.terminated = True
        # The control connection carries our sends, so its RTT is measured; a lost segment pauses the flow
        # for a retransmission timeout (>= 200 ms on Linux), which must not pass for the end.
        info = _tcp_info(self.ctrl) if self.ctrl is not None else None
        rtt = info["rtt_us"] * 1e-6 if info else 0.0
        quiet = min(DRAIN_SECONDS / 2, max(DRAIN_QUIET_SECONDS, 4 * rtt))
        deadline = time.monotonic() + DRAIN_SECONDS
        last, changed = -1, time.monotonic()
        while True:
            total = sum(self._drain(st) for st in self.streams)
            now = time.monotonic()
            if total != last:
                last, changed = total, now
            if all(st.eof for st in self.streams) or now - changed >= quiet or now >= deadline:
                break
            await asyncio.sleep(0.01)
        for st in self.streams:
            with contextlib.suppress(OSError):
                st.queued = 0 if st.eof else _sockios(st.sock, SIOCINQ)
        self._reset_streams()

    def _drain(self, st: _Stream) -> int:
        """Read what has arrived on a receiving stream, up to max_bytes; return what arrived so far."""
        limit = self.s.max_bytes
        while not st.eof:
            want = len(self.rbuf) if limit is None else min(len(self.rbuf), limit - self._written())
            if want <= 0:
                break
            try:
                n = st.sock.recv_into(self.rbuf, want)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                st.eof = True
                break
            if n == 0:
                st.eof = True
                break
            st.bytes += n
        inq = 0
        if not st.eof:
            with contextlib.suppress(OSError):
                inq = _sockios(st.sock, SIOCINQ)
        return st.bytes + inq

    def _reset_streams(self) -> None:
        """Close data streams with a reset (SO_LINGER 0): nothing left in our send queue goes out uncounted."""
        for st in self.streams:
            with contextlib.suppress(OSError):
                st.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close_streams()

    def _close(self) -> None:
        """Always runs: no callbacks, tasks or sockets outlive the test; tell the server if we stop early."""
        self.sending = False
        self.ending = True
        for task in (self.udp_task, self.ctrl_task):
            if task is not None and not task.done():
                task.cancel()
            elif task is not None and not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it
        self._close_streams()
        if self.ctrl is not None:
            if self.started and not self.finished and not self.terminated:
                with contextlib.suppress(OSError):
                    self.ctrl.send(bytes([CLIENT_TERMINATE]))
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.ctrl.fileno())
                self.loop.remove_writer(self.ctrl.fileno())
            self.ctrl.close()


class _ControlClosed(Exception):
    """EOF on the control connection (internal)."""
