"""Paris-traceroute-style path trace with scapy: per-hop RTT and loss, and the hop where the path degrades.

Why Paris: routers that balance load over equal-cost paths hash a flow's header fields (addresses, protocol,
ports; for ICMP the first four octets: type, code and checksum). Classic traceroute changes those fields from
probe to probe, so its probes wander over different paths and the "path" it prints may not exist. Here every
probe of one trace carries the same flow identifier and only the TTL changes:

- ICMP echo: the identifier is fixed and the sequence number numbers the probe; the first two payload octets
  are the one's complement of the sequence number, so the ICMP checksum is the same in every probe (the trick
  Paris traceroute uses). Replies are matched on the sequence number, which echo replies return and ICMP errors
  quote.
- UDP: source and destination ports and the payload are fixed, so the UDP checksum is fixed too (the IP ID is
  not in the pseudo-header). Probes are numbered by the IP ID, which ICMP errors quote with the IP header.
- TCP SYN: fixed ports; probes are numbered by the sequence number, which ICMP errors quote (it is in the first
  eight octets of the TCP header) and a SYN-ACK or RST returns as its acknowledgement number minus one.

How it sends: one scapy L3 raw socket per trace (an IPPROTO_RAW socket the kernel routes, so it works in
whatever network namespace the calling thread is in; scapy's own routing table is never consulted, and the
source address is set explicitly from the kernel's route lookup). Replies come through the socket's PF_PACKET
side, narrowed in the kernel by a classic BPF program to the trace's own replies (`bpf_program`: neither the
exporter's echoes nor other traces' replies reach Python), and carry the kernel receive stamp (SO_TIMESTAMPNS,
scapy's `.time`); the send time is time.time() taken just before sendto. RTT = receive stamp - send time.

The schedule:
1. discovery: TTL 1, 2, ... one probe each; the next TTL goes out as soon as the previous one is answered (or
   after min(timeout, max(50 ms, 2 x the largest RTT seen)) if it is silent), and discovery stops at the first
   TTL the target itself answers. So no probe is wasted beyond the target, and a target that rate-limits its
   ICMP port-unreachables keeps its budget for the UDP probes that count.
2. rounds 2..N: one probe per TTL up to the target's TTL (or max_hops if it was not reached), packets
   `send_interval_seconds` apart, rounds at least `round_interval_seconds` apart.
3. wait for outstanding replies up to `timeout_seconds` after the last send.
4. fill-in: a hop before the last one that answered, which answered none of its probes, is asked again, one
   probe every half second, up to N more times. Such a hop is nearly always a router whose ICMP budget an
   earlier trace spent, and one answer is enough to place a latency step.
Everything stops at the deadline; probes the deadline prevented are not counted as sent.

ICMP rate limiting. Routers limit the ICMP errors they send: Linux by default to a burst of 6 time-exceeded (or
unreachable) messages per destination, then one a second (net.ipv4.icmp_ratelimit = 1000 ms, icmp_ratemask
6168); echo replies are not limited. N probes per hop within a second, or traces of several villages back to
back through the same core and kecamatan routers, therefore see "loss" at intermediate hops that is only the
routers' control plane. It does not slow anything down (RTTs of the answers are true), and loss that does not
persist to later hops is ignored by the rule below. What it can do: a router that rate-limits *before* a real
loss step shows at least that step's loss itself, so the step can be named one or more hops too early. To place
a loss step exactly on Linux routers, keep them under budget: a few probes per hop, or round_interval_seconds of
1 s (with a deadline to match).

The degraded-hop rule (pure: `degraded_hop`), so the NOC can tell a village's last mile from a kecamatan uplink:

- Only hops that answered at least once take part; a silent hop ("* * *") says nothing about the path.
- Each responding hop's *effective* median RTT and loss are the minimum over it and every responding hop after
  it. Whatever a link does is seen by every hop beyond it, so a real step persists downstream; what does not
  persist is that router's own reply path (ICMP rate limiting, slow ICMP generation on a busy CPU), which is not
  a problem for the calls crossing it. The suffix minimum discards exactly that, and makes the effective values
  non-decreasing along the path.
- The degraded hop is the first responding hop whose effective median RTT exceeds the previous responding
  hop's by more than max(rtt_step_seconds (5 ms), rtt_step_ratio (0.5) x previous), or whose effective loss
  exceeds the previous hop's by more than loss_step (10 percentage points). Before hop 1 stands the NOC itself
  (TTL 0): RTT 0, loss 0.
- Naming hop k after hop j (`after_ttl`) means the step lies between them: on the link into k when j = k - 1,
  somewhere in between when silent hops separate them. On the district's network, naming the kecamatan router
  (10.254.<k>.2 in the lab) means its uplink; naming the village router means the village's own last mile.

No Prometheus and no inventory here: `probe(target, settings)` measures and returns plain numbers in SI units.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import ipaddress
import logging
import math
import random
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from desanet.probes import stats

if TYPE_CHECKING:
    from scapy.packet import Packet

Protocol = Literal["icmp", "udp", "tcp"]
PROTOCOLS: tuple[Protocol, ...] = ("icmp", "udp", "tcp")
DEFAULT_PORTS = {"udp": 33434, "tcp": 80}
MAX_HOPS_LIMIT = 64
MAX_PROBES_PER_HOP = 100
PAYLOAD = b"desanet-trace\x00"  # fixed UDP payload; ICMP prepends the two checksum-fixing octets
DISCOVERY_MIN_WAIT = 0.05
FILL_IN_INTERVAL = 0.5  # Linux routers earn one ICMP error a second per destination


class TraceError(Exception):
    """The trace cannot start: a bad target or setting, or no route to the target."""


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TraceSettings:
    """What one trace does. `port` defaults to 33434 for UDP and 80 for TCP (unused for ICMP)."""

    protocol: Protocol = "icmp"
    max_hops: int = 16
    probes_per_hop: int = 3
    timeout_seconds: float = 1.0  # a reply later than this after its probe counts as lost
    port: int | None = None
    deadline_seconds: float = 10.0  # the whole trace, sockets included (not scapy's one-time import)
    send_interval_seconds: float = 0.001  # gap between two consecutive probes
    round_interval_seconds: float = 0.0  # least time between two probes to the same TTL
    # the degraded-hop rule (see the module docstring)
    rtt_step_seconds: float = 0.005
    rtt_step_ratio: float = 0.5
    loss_step: float = 0.10

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if not 1 <= self.max_hops <= MAX_HOPS_LIMIT:
            raise ValueError(f"max_hops must be 1..{MAX_HOPS_LIMIT}")
        if not 1 <= self.probes_per_hop <= MAX_PROBES_PER_HOP:
            raise ValueError(f"probes_per_hop must be 1..{MAX_PROBES_PER_HOP}")
        for name in ("timeout_seconds", "deadline_seconds"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        for name in ("send_interval_seconds", "round_interval_seconds", "rtt_step_seconds", "rtt_step_ratio"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.loss_step < 1:
            raise ValueError("loss_step must be a ratio in [0, 1)")
        if self.port is None and self.protocol in DEFAULT_PORTS:
            object.__setattr__(self, "port", DEFAULT_PORTS[self.protocol])
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError("port must be 1..65535")


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Hop:
    """One TTL: who answered, how fast (kernel-stamped RTTs of the answered probes), and how many were lost."""

    ttl: int
    address: str | None  # the most frequent responder; None if nobody answered
    rtt_seconds_p50: float | None
    rtt_seconds: tuple[float, ...]  # in send order
    sent: int
    received: int
    loss_ratio: float | None  # None when nothing was sent at this TTL (the deadline came first)
    reached: bool  # the target itself answered at this TTL
    unreachable: bool = False  # a router answered "destination unreachable" (traceroute's !H, !N, !X)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "address": self.address,
            "rtt_seconds_p50": self.rtt_seconds_p50,
            "rtt_seconds": list(self.rtt_seconds),
            "sent": self.sent,
            "received": self.received,
            "loss_ratio": self.loss_ratio,
            "reached": self.reached,
            "unreachable": self.unreachable,
        }


@dataclass(frozen=True)
class Degradation:
    """Where the path steps up, and by how much (effective values, see the module docstring)."""

    ttl: int
    address: str | None
    reasons: tuple[str, ...]  # "latency", "loss"
    rtt_step_seconds: float
    loss_step: float
    after_ttl: int = 0  # the previous responding hop; 0 is the NOC. The step lies between the two.
    after_address: str | None = None


@dataclass(frozen=True)
class TraceResult:
    target: str
    protocol: str
    hops: tuple[Hop, ...]
    reached: bool
    degraded_hop: int | None  # the TTL of the first hop where latency or loss steps up
    degraded_address: str | None
    duration_seconds: float
    probes_sent: int  # including any that went beyond the target before it was known
    degradation: Degradation | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self.degradation
        return {
            "target": self.target,
            "protocol": self.protocol,
            "reached": self.reached,
            "duration_seconds": self.duration_seconds,
            "probes_sent": self.probes_sent,
            "hops": [h.to_dict() for h in self.hops],
            "degraded_hop": None
            if d is None
            else {
                "ttl": d.ttl,
                "address": d.address,
                "reasons": list(d.reasons),
                "rtt_step_seconds": d.rtt_step_seconds,
                "loss_step": d.loss_step,
                "after_ttl": d.after_ttl,
                "after_address": d.after_address,
            },
        }


# ---------------------------------------------------------------------------------------------- pure analysis
def degraded_hop(
    hops: Sequence[Hop],
    *,
    rtt_step_seconds: float = 0.005,
    rtt_step_ratio: float = 0.5,
    loss_step: float = 0.10,
) -> Degradation | None:
    """The first hop where latency or loss steps up and stays up; None for a clean path. See the module doc."""
    answered = [
        (h, h.rtt_seconds_p50, h.loss_ratio)
        for h in hops
        if h.received > 0 and h.rtt_seconds_p50 is not None and h.loss_ratio is not None
    ]
    eff_rtt: list[float] = []
    eff_loss: list[float] = []
    low_rtt = low_loss = math.inf
    # Suffix minima: loss at one intermediate hop that later hops do not show is that router rate-limiting its
    # ICMP (or a busy CPU), not loss on the path, and so is a slow answer that later hops do not show.
    for _, rtt, loss in reversed(answered):
        low_rtt = min(low_rtt, rtt)
        low_loss = min(low_loss, loss)
        eff_rtt.append(low_rtt)
        eff_loss.append(low_loss)
    eff_rtt.reverse()
    eff_loss.reverse()
    prev: Hop | None = None  # None: the NOC itself, RTT 0 and loss 0
    prev_rtt, prev_loss = 0.0, 0.0
    for (h, _, _), rtt, loss in zip(answered, eff_rtt, eff_loss, strict=True):
        reasons = []
        if rtt - prev_rtt > max(rtt_step_seconds, rtt_step_ratio * prev_rtt):
            reasons.append("latency")
        if loss - prev_loss > loss_step:
            reasons.append("loss")
        if reasons:
            return Degradation(
                ttl=h.ttl,
                address=h.address,
                reasons=tuple(reasons),
                rtt_step_seconds=rtt - prev_rtt,
                loss_step=loss - prev_loss,
                after_ttl=0 if prev is None else prev.ttl,
                after_address=None if prev is None else prev.address,
            )
        prev, prev_rtt, prev_loss = h, rtt, loss
    return None


@dataclass(frozen=True)
class Observation:
    """One probe as sent and, if it was, answered in time."""

    ttl: int
    rtt_seconds: float | None = None
    responder: str | None = None
    reached: bool = False
    unreachable: bool = False


def build_hops(observations: Iterable[Observation]) -> tuple[Hop, ...]:
    """Group probes by TTL. A reached trace ends at the smallest TTL the target answered (probes sent beyond it
    before it was known are left out); otherwise every TTL that was probed is listed, silent ones too."""
    by_ttl: dict[int, list[Observation]] = {}
    for o in observations:
        by_ttl.setdefault(o.ttl, []).append(o)
    reached_at = [ttl for ttl, obs in by_ttl.items() if any(o.reached for o in obs)]
    last = min(reached_at) if reached_at else max(by_ttl, default=0)
    hops = []
    for ttl in range(1, last + 1):
        obs = by_ttl.get(ttl, [])
        answered = [o for o in obs if o.rtt_seconds is not None]
        rtts = tuple(o.rtt_seconds for o in answered if o.rtt_seconds is not None)
        who = Counter(o.responder for o in answered if o.responder is not None)
        hops.append(
            Hop(
                ttl=ttl,
                address=who.most_common(1)[0][0] if who else None,
                rtt_seconds_p50=stats.quantile(sorted(rtts), 0.5) if rtts else None,
                rtt_seconds=rtts,
                sent=len(obs),
                received=len(answered),
                loss_ratio=stats.loss_ratio(len(obs), len(answered)),
                reached=any(o.reached for o in answered),
                unreachable=any(o.unreachable for o in answered),
            )
        )
    return tuple(hops)


def analyse(
    target: str,
    settings: TraceSettings,
    observations: Sequence[Observation],
    duration_seconds: float,
) -> TraceResult:
    hops = build_hops(observations)
    d = degraded_hop(
        hops,
        rtt_step_seconds=settings.rtt_step_seconds,
        rtt_step_ratio=settings.rtt_step_ratio,
        loss_step=settings.loss_step,
    )
    return TraceResult(
        target=target,
        protocol=settings.protocol,
        hops=hops,
        reached=any(h.reached for h in hops),
        degraded_hop=None if d is None else d.ttl,
        degraded_address=None if d is None else d.address,
        duration_seconds=duration_seconds,
        probes_sent=len(observations),
        degradation=d,
    )


# ---------------------------------------------------------------------------------------------- packets
def _scapy() -> Any:
    """Import only the scapy parts we use, quietly (scapy logs a warning per address-less interface)."""
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    import scapy.layers.inet as inet

    return inet


@dataclass(frozen=True)
class Flow:
    """The constant identity of one trace's probes, and how probe number k is written into them."""

    protocol: Protocol
    src: str
    dst: str
    port: int | None  # destination port (UDP, TCP)
    sport: int  # source port (UDP, TCP)
    ident: int  # ICMP identifier
    ip_id_base: int
    tcp_seq_base: int
    count: int  # probe numbers run 0..count-1

    @classmethod
    def new(cls, protocol: Protocol, src: str, dst: str, port: int | None, count: int) -> Flow:
        rnd = random.SystemRandom()
        return cls(
            protocol=protocol,
            src=src,
            dst=dst,
            port=port,
            sport=rnd.randrange(33000, 61000),
            ident=rnd.randrange(1, 0x10000),
            ip_id_base=rnd.randrange(0x10000),
            tcp_seq_base=rnd.randrange(1 << 32),
            count=count,
        )


def build_probe(flow: Flow, k: int, ttl: int) -> bytes:
    """Probe number k at this TTL, as IP bytes, built by scapy. Only TTL, IP ID and the probe number differ
    between probes; the fields load balancers hash stay constant (see the module docstring). The engine builds
    one with scapy and patches the rest (`ProbeFactory`): scapy takes milliseconds per packet."""
    inet = _scapy()
    from scapy.packet import Raw

    ip = inet.IP(src=flow.src, dst=flow.dst, ttl=ttl, id=(flow.ip_id_base + k) & 0xFFFF)
    pkt: Packet
    if flow.protocol == "icmp":
        seq = k & 0xFFFF
        # seq + ~seq is 0xFFFF, one's complement zero: the checksum does not depend on seq.
        pkt = ip / inet.ICMP(type=8, code=0, id=flow.ident, seq=seq) / Raw(struct.pack("!H", ~seq & 0xFFFF) + PAYLOAD)
    elif flow.protocol == "udp":
        pkt = ip / inet.UDP(sport=flow.sport, dport=flow.port) / Raw(PAYLOAD)
    else:
        pkt = ip / inet.TCP(sport=flow.sport, dport=flow.port, flags="S", seq=(flow.tcp_seq_base + k) & 0xFFFFFFFF)
    return bytes(pkt)


def internet_checksum(data: bytes) -> int:
    """RFC 1071."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class ProbeFactory:
    """Probe bytes identical to `build_probe`'s, from one scapy-built template and a few patched fields."""

    def __init__(self, flow: Flow):
        self.flow = flow
        self.template = bytearray(build_probe(flow, 0, 1))
        self.ihl = (self.template[0] & 0x0F) * 4

    def __call__(self, k: int, ttl: int) -> bytes:
        b = self.template.copy()
        f, h = self.flow, self.ihl
        struct.pack_into("!H", b, 4, (f.ip_id_base + k) & 0xFFFF)
        b[8] = ttl
        if f.protocol == "icmp":
            seq = k & 0xFFFF
            struct.pack_into("!HH", b, h + 6, seq, ~seq & 0xFFFF)  # the checksum stays as it is
        elif f.protocol == "tcp":
            struct.pack_into("!I", b, h + 4, (f.tcp_seq_base + k) & 0xFFFFFFFF)
            struct.pack_into("!H", b, h + 16, 0)
            pseudo = bytes(b[12:20]) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(b) - h)
            struct.pack_into("!H", b, h + 16, internet_checksum(pseudo + bytes(b[h:])))
        struct.pack_into("!H", b, 10, 0)
        struct.pack_into("!H", b, 10, internet_checksum(bytes(b[:h])))
        return bytes(b)


@dataclass(frozen=True)
class Reply:
    k: int  # which probe it answers
    responder: str
    reached: bool  # sent by the target itself
    unreachable: bool  # destination unreachable from a router on the way


def match_reply(pkt: Packet, flow: Flow) -> Reply | None:
    """Which of this trace's probes a received IP packet answers, if any."""
    inet = _scapy()
    if not isinstance(pkt, inet.IP) or pkt.dst != flow.src or pkt.frag or pkt.flags.MF:
        return None
    src = str(pkt.src)
    k: int | None = None
    reached = unreachable = False
    if isinstance(pkt.payload, inet.ICMP):
        icmp = pkt.payload
        if icmp.type == 0:  # echo reply
            if flow.protocol != "icmp" or src != flow.dst or icmp.id != flow.ident:
                return None
            k, reached = icmp.seq, True
        elif (icmp.type == 11 and icmp.code == 0) or icmp.type == 3:
            inner = icmp.payload
            if not isinstance(inner, inet.IPerror) or inner.src != flow.src or inner.dst != flow.dst:
                return None
            l4 = inner.payload
            if flow.protocol == "icmp" and isinstance(l4, inet.ICMPerror) and l4.type == 8 and l4.id == flow.ident:
                k = l4.seq
            elif (
                flow.protocol == "udp"
                and isinstance(l4, inet.UDPerror)
                and (l4.sport, l4.dport)
                == (
                    flow.sport,
                    flow.port,
                )
            ):
                k = (inner.id - flow.ip_id_base) & 0xFFFF
            elif (
                flow.protocol == "tcp"
                and isinstance(l4, inet.TCPerror)
                and (l4.sport, l4.dport)
                == (
                    flow.sport,
                    flow.port,
                )
            ):
                k = (l4.seq - flow.tcp_seq_base) & 0xFFFFFFFF
            else:
                return None
            if icmp.type == 3:
                # From the target: the probe arrived (UDP's port-unreachable is the usual way to say so).
                reached = src == flow.dst
                unreachable = not reached
        else:
            return None
    elif isinstance(pkt.payload, inet.TCP):
        tcp = pkt.payload
        if flow.protocol != "tcp" or src != flow.dst or (tcp.sport, tcp.dport) != (flow.port, flow.sport):
            return None
        if not (tcp.flags.S and tcp.flags.A) and not tcp.flags.R:
            return None
        k, reached = (tcp.ack - 1 - flow.tcp_seq_base) & 0xFFFFFFFF, True
    else:
        return None
    if k is None or not 0 <= k < flow.count:
        return None
    return Reply(k=k, responder=src, reached=reached, unreachable=unreachable)


# ---------------------------------------------------------------------------------------------- kernel filter
SO_ATTACH_FILTER = 26
_SKF_AD_PKTTYPE = -0x1000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE
_SKF_NET = -0x100000  # SKF_NET_OFF: offsets from the network header, whatever the link layer
_PACKET_OUTGOING = 4


def bpf_program(flow: Flow) -> list[tuple[int, int, int, int]]:
    """Classic BPF: keep only this trace's replies, unfragmented and incoming: the target's echo replies with
    the trace's identifier (ICMP traces), ICMP unreachable/time-exceeded quoting one of its probes (an option-less
    IPv4 header to the target, then the trace's identifier or source port), and, for TCP traces, TCP from the
    probed port of the target to its source port. Python still matches every packet it gets.

    Why this exact: every trace's packet socket sees every packet the host receives, and Python parses what the
    filter lets through at a fraction of a millisecond each. With a filter by type alone, a trace read the echo
    replies of the exporter's ICMP engine (thousands a second at province scale) and every other trace's replies,
    so n traces at once cost n^2 parses (bench/trace, in the lab): beside 4,250 echoes a second, none of 22 traces
    at 0.72 a second ended within a minute; at 14 a second, 270 of 426 had not ended a minute after the last was
    due, and the rest took 11 s and 121 ms of CPU on average. With this filter: 3.0 s and 7 ms (21 ms beside
    the echoes, which the kernel still offers every socket)."""
    ld_w_abs, ld_h_abs, ld_b_abs = 0x20, 0x28, 0x30
    ld_w_ind, ld_h_ind, ld_b_ind = 0x40, 0x48, 0x50
    ldx_msh, jeq, jset, ret = 0xB1, 0x15, 0x45, 0x06
    accept, drop, error, tcp = ("A",), ("D",), ("E",), ("T",)
    dst = int(ipaddress.IPv4Address(flow.dst))
    inner = _SKF_NET + 8  # X + this: the quoted IP header (X is the outer header's length)
    inner_l4 = inner + 20  # our probes carry no IP options, so the quoted one is 20 octets
    prog: list[tuple[int, Any, Any, int]] = [
        (ld_w_abs, 0, 0, _SKF_AD_PKTTYPE),
        (jeq, drop, 0, _PACKET_OUTGOING),
        (ld_h_abs, 0, 0, _SKF_NET + 6),
        (jset, drop, 0, 0x3FFF),  # MF or a fragment offset
        (ldx_msh, 0, 0, _SKF_NET),  # X = IP header length
        (ld_b_abs, 0, 0, _SKF_NET + 9),
        (jeq, 0, tcp, socket.IPPROTO_ICMP),
        (ld_b_ind, 0, 0, _SKF_NET),  # ICMP type
        (jeq, error, 0, 11),
        (jeq, error, 0, 3),
        (jeq, 0, drop, 0),
    ]
    # an echo reply: only ICMP traces get one, from the target, with their identifier
    if flow.protocol == "icmp":
        prog += [
            (ld_w_abs, 0, 0, _SKF_NET + 12),
            (jeq, 0, drop, dst),
            (ld_h_ind, 0, 0, _SKF_NET + 4),
            (jeq, accept, drop, flow.ident),
        ]
    else:
        prog.append((ret, 0, 0, 0))
    # an ICMP error quoting one of our probes: IPv4 without options, to the target, our protocol and flow
    labels = {error: len(prog)}
    proto = {"icmp": socket.IPPROTO_ICMP, "udp": socket.IPPROTO_UDP, "tcp": socket.IPPROTO_TCP}[flow.protocol]
    prog += [
        (ld_b_ind, 0, 0, inner),
        (jeq, 0, drop, 0x45),
        (ld_w_ind, 0, 0, inner + 16),
        (jeq, 0, drop, dst),
        (ld_b_ind, 0, 0, inner + 9),
        (jeq, 0, drop, proto),
    ]
    if flow.protocol == "icmp":
        prog += [(ld_h_ind, 0, 0, inner_l4 + 4), (jeq, accept, drop, flow.ident)]  # echo identifier
    else:
        prog += [(ld_h_ind, 0, 0, inner_l4), (jeq, accept, drop, flow.sport)]  # UDP/TCP source port
    # TCP: the target's SYN-ACK or RST, from the probed port to our source port
    labels[tcp] = len(prog)
    if flow.protocol == "tcp" and flow.port is not None:
        prog += [
            (jeq, 0, drop, socket.IPPROTO_TCP),
            (ld_w_abs, 0, 0, _SKF_NET + 12),
            (jeq, 0, drop, dst),
            (ld_h_ind, 0, 0, _SKF_NET),  # TCP source port
            (jeq, 0, drop, flow.port),
            (ld_h_ind, 0, 0, _SKF_NET + 2),  # TCP destination port
            (jeq, accept, drop, flow.sport),
        ]
    else:
        prog.append((ret, 0, 0, 0))
    labels[accept] = len(prog)
    prog.append((ret, 0, 0, 0x40000))
    labels[drop] = len(prog)
    prog.append((ret, 0, 0, 0))

    def rel(i: int, target: Any) -> int:
        return target if isinstance(target, int) else labels[target] - i - 1

    return [(code, rel(i, jt), rel(i, jf), k & 0xFFFFFFFF) for i, (code, jt, jf, k) in enumerate(prog)]


def attach_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> bool:
    """Attach a classic BPF program; False (and every packet reaches Python) if the kernel refuses it."""
    code = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- the engine
def source_address(target: str) -> str:
    """The address the kernel would send from toward target, in this thread's network namespace.
    Connecting a UDP socket sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((target, 9))
        except OSError as exc:
            raise TraceError(f"no route to {target}: {exc.strerror or exc}") from None
        return str(s.getsockname()[0])


class _Tracer:
    def __init__(self, target: str, settings: TraceSettings, t0: float):
        self.s = settings
        self.t0 = t0
        self.end = self.t0 + settings.deadline_seconds
        self.flow = Flow.new(
            settings.protocol,
            source_address(target),
            target,
            settings.port,
            # discovery and rounds send at most max_hops x N probes, the fill-in at most as many again
            2 * settings.max_hops * settings.probes_per_hop,
        )
        self.packet = ProbeFactory(self.flow)
        self.obs: list[Observation] = []
        self.sent_at: list[float] = []
        self.answered: set[int] = set()
        self.answered_ttls: set[int] = set()
        self.target_ttl: int | None = None
        self.max_rtt = 0.0
        self.last_send = self.t0
        _scapy()
        from scapy.supersocket import L3RawSocket

        self.sock = L3RawSocket()  # PermissionError without CAP_NET_RAW
        assert self.sock.outs is not None
        self.out: socket.socket = self.sock.outs
        self.sock.ins.setblocking(False)
        attach_filter(self.sock.ins, bpf_program(self.flow))

    def close(self) -> None:
        self.sock.close()

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def send(self, ttl: int) -> None:
        k = len(self.obs)
        data = self.packet(k, ttl)
        t = time.time()
        try:
            self.out.sendto(data, (self.flow.dst, 0))
        except OSError as exc:
            if k == 0:
                raise TraceError(f"cannot send to {self.flow.dst}: {exc.strerror or exc}") from None
            # a transient error (ENOBUFS): the probe counts as sent and lost
        self.obs.append(Observation(ttl))
        self.sent_at.append(t)
        self.last_send = time.monotonic()

    def _drain(self) -> None:
        for i in range(10_000):  # bounded: a flood cannot keep us here, nor past the deadline
            if i % 256 == 255 and self.expired():
                return
            try:
                pkt = self.sock.recv()
            except BlockingIOError:
                return
            except OSError:
                return
            if pkt is None:
                continue
            r = match_reply(pkt, self.flow)
            if r is None or r.k in self.answered or r.k >= len(self.obs):
                continue
            rtt = float(pkt.time) - self.sent_at[r.k]
            if not 0 <= rtt <= self.s.timeout_seconds:
                continue  # late: it counts as lost, as it would for a call
            self.answered.add(r.k)
            o = self.obs[r.k]
            self.obs[r.k] = Observation(o.ttl, rtt, r.responder, r.reached, r.unreachable)
            self.answered_ttls.add(o.ttl)
            self.max_rtt = max(self.max_rtt, rtt)
            if r.reached and (self.target_ttl is None or o.ttl < self.target_ttl):
                self.target_ttl = o.ttl

    def wait_until(self, when: float, done: Callable[[], bool] | None = None) -> None:
        """Process replies until `when` (capped by the deadline) or until done() is true."""
        while True:
            self._drain()
            if done is not None and done():
                return
            left = min(when, self.end) - time.monotonic()
            if left <= 0:
                return
            select.select([self.sock.ins], [], [], left)

    def _heard_from(self, ttl: int) -> Callable[[], bool]:
        return lambda: ttl in self.answered_ttls or self.target_ttl is not None

    def run(self) -> list[Observation]:
        s = self.s
        # 1. discovery: TTL by TTL, stop at the target
        for ttl in range(1, s.max_hops + 1):
            if self.expired() or (self.target_ttl is not None and ttl > self.target_ttl):
                break
            self.send(ttl)
            wait = min(s.timeout_seconds, max(DISCOVERY_MIN_WAIT, 2 * self.max_rtt))
            self.wait_until(time.monotonic() + wait, self._heard_from(ttl))
        top = max((o.ttl for o in self.obs), default=0)
        # 2. the other rounds, one probe per TTL up to the target
        round_start = self.t0
        for _ in range(1, s.probes_per_hop):
            round_start = max(time.monotonic(), round_start + s.round_interval_seconds)
            self.wait_until(round_start)
            for ttl in range(1, top + 1):
                if self.expired():
                    break
                if self.target_ttl is not None and ttl > self.target_ttl:
                    break
                self.send(ttl)
                self.wait_until(time.monotonic() + s.send_interval_seconds)
            if self.expired():
                break
        # 3. the stragglers
        self.wait_until(self.last_send + s.timeout_seconds, self._all_answered)
        # 4. fill-in: silent hops before the last answering one are most likely out of ICMP budget
        for _ in range(s.probes_per_hop):
            silent = self._silent_hops()
            if not silent or self.expired():
                break
            for ttl in silent:
                if len(self.obs) < self.flow.count:
                    self.send(ttl)
            self.wait_until(time.monotonic() + FILL_IN_INTERVAL, lambda: not self._silent_hops())
        self.wait_until(self.last_send + s.timeout_seconds, self._all_answered)
        return self.obs

    def _all_answered(self) -> bool:
        return len(self.answered) == len(self.obs)

    def _silent_hops(self) -> list[int]:
        last = self.target_ttl or max(self.answered_ttls, default=0)
        return [ttl for ttl in range(1, last) if ttl not in self.answered_ttls]


def trace_blocking(target: str, settings: TraceSettings) -> TraceResult:
    """The whole trace, blocking, in the calling thread's network namespace."""
    try:
        addr = ipaddress.ip_address(target)
    except ValueError:
        raise TraceError(f"{target!r} is not an IP address") from None
    if addr.version != 4:
        raise TraceError("only IPv4 targets can be traced")
    _scapy()  # the first import takes most of a second: a cost of the process, not of the trace
    t0 = time.monotonic()
    tracer = _Tracer(str(addr), settings, t0)
    try:
        observations = tracer.run()
    finally:
        tracer.close()
    return analyse(str(addr), settings, observations, time.monotonic() - t0)


async def probe(
    target: str, settings: TraceSettings | None = None, *, executor: concurrent.futures.Executor | None = None
) -> TraceResult:
    """Trace the path to target (an IPv4 address) off the event loop, in a thread of `executor` (the loop's
    default one if None: a few threads, shared with whatever else runs there; the exporter gives its traces a
    pool as large as their slots). Raises PermissionError without CAP_NET_RAW, TraceError when the trace cannot
    start."""
    call = functools.partial(trace_blocking, target, settings or TraceSettings())
    return await asyncio.get_running_loop().run_in_executor(executor, call)
