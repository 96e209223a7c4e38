"""STAMP session-reflector (RFC 8762), unauthenticated, stateful; answers TWAMP-light senders as well.

Stateful (RFC 8762 §4.2.2): every (listening socket, sender address, sender port) is a session with its own
sequence counter, starting at 0 and incremented for every reply, so a sender can tell a packet lost on the way
in (no gap in our numbering) from a reply lost on the way back (a gap). Sessions idle for `session_idle_seconds`
are forgotten (a sender back after such a pause, even from the same port, is numbered from 0 again), and at most
`max_sessions` are kept (the least recently used goes first).

Per packet: T2 is the kernel's receive stamp (SO_TIMESTAMPNS; user-space time if the kernel gives none), T3 is
read just before sendmsg(). The reply is max(received length, 44) octets, the Sender TTL field carries the TTL the
packet arrived with (IP_RECVTTL), the reply leaves with TTL 255, and its DSCP is the one the packet arrived with
(IP_RECVTOS; ECN bits cleared). Octets 14-15 of the sender packet (the RFC 8972 SSID) are copied; everything after
the 44-octet header is zero. A TWAMP-light sender packet (RFC 5357: the same first 14 octets) gets the same reply.

Datagrams shorter than 14 octets or truncated are `malformed`; senders outside `allow` (when given) are
`foreign`; both are counted and dropped. Nothing a sender can put in a datagram makes the reflector raise.

One process can serve several sockets, including sockets made inside other network namespaces (a socket stays
in the namespace it was created in):

    reflector = Reflector(ReflectorOptions())
    await reflector.serve("0.0.0.0", 862)       # create and bind here
    reflector.attach(sock_made_in_other_netns)  # or hand over a bound UDP socket
    ...
    reflector.close()

The counters are plain int attributes (`received`, `reflected`, `malformed`, `foreign`, ...), see `counters()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from desanet.probes.stamp import (
    DEFAULT_ERROR_ESTIMATE,
    IPV6_TCLASS,
    MAX_TTL,
    MIN_PACKET_BYTES,
    RX_ANCILLARY_BYTES,
    build_reflector_packet,
    enable_rx_metadata,
    ns_to_ntp,
    parse_rx_ancillary,
    parse_sender_packet,
    set_reflector_timestamp,
    set_ttl_and_tos,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_INT_BYTES = 4


@dataclass(frozen=True)
class ReflectorOptions:
    allow: tuple[Network, ...] = ()  # senders allowed; empty = anyone
    max_sessions: int = 65536
    session_idle_seconds: float = 60.0
    reply_ttl: int = MAX_TTL
    reflect_dscp: bool = True
    # Test hooks (never in production): hold each reply this long before T3 and sending; drop every Nth incoming
    # packet of a session before numbering it (forward loss); number but do not send every Nth reply (backward).
    dwell_seconds: float = 0.0
    drop_incoming_every: int = 0
    drop_reply_every: int = 0

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if self.session_idle_seconds <= 0:
            raise ValueError("session_idle_seconds must be positive")
        if not 1 <= self.reply_ttl <= 255:
            raise ValueError("reply_ttl outside 1-255")
        if self.dwell_seconds < 0 or self.dwell_seconds > 10:
            raise ValueError("dwell_seconds outside [0, 10]")
        if self.drop_incoming_every < 0 or self.drop_reply_every < 0:
            raise ValueError("drop hooks must be >= 0")


class Session:
    """One sender's session: our own reply numbering plus what we saw of it."""

    __slots__ = ("created", "last_seen", "last_tos", "last_ttl", "next_seq", "peer", "received", "reflected")

    def __init__(self, peer: tuple[str, int], now: float) -> None:
        self.peer = peer
        self.next_seq = 0
        self.received = 0
        self.reflected = 0
        self.created = now
        self.last_seen = now
        self.last_ttl: int | None = None
        self.last_tos: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer": f"{self.peer[0]}:{self.peer[1]}",
            "received": self.received,
            "reflected": self.reflected,
            "next_seq": self.next_seq,
            "last_ttl": self.last_ttl,
            "last_tos": self.last_tos,
        }


class _Listener:
    __slots__ = ("closed", "family", "index", "local", "send_tos", "sock")

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.family = sock.family
        self.local: tuple[str, int] = sock.getsockname()[:2]
        self.send_tos = True
        self.closed = False


class Reflector:
    """An asyncio STAMP reflector serving any number of UDP sockets from one event loop."""

    RX_BATCH = 256  # datagrams per wake-up per socket: bounded work, fair to the other sockets
    RX_BUFSIZE = 65536

    COUNTERS = (
        "received",  # datagrams read
        "reflected",  # replies sent
        "malformed",  # too short (< 14 octets) or truncated
        "foreign",  # sender not in `allow`
        "send_errors",
        "internal_errors",
        "sessions_created",
        "sessions_expired",
        "sessions_evicted",
        "user_rx_timestamps",  # T2 from user space: the kernel gave no receive stamp
        "test_dropped_incoming",
        "test_dropped_replies",
    )

    def __init__(self, options: ReflectorOptions | None = None, *, logger: logging.Logger | None = None) -> None:
        self.options = options or ReflectorOptions()
        self.log = logger or logging.getLogger("desanet.reflector")
        self._listeners: list[_Listener] = []
        self._sessions: OrderedDict[tuple[int, str, int], Session] = OrderedDict()
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0
        self.reflected = 0
        self.malformed = 0
        self.foreign = 0
        self.send_errors = 0
        self.internal_errors = 0
        self.sessions_created = 0
        self.sessions_expired = 0
        self.sessions_evicted = 0
        self.user_rx_timestamps = 0
        self.test_dropped_incoming = 0
        self.test_dropped_replies = 0

    # ------------------------------------------------------------------------------------------- lifecycle
    @classmethod
    def from_socket(
        cls, sock: socket.socket, options: ReflectorOptions | None = None, *, logger: logging.Logger | None = None
    ) -> Reflector:
        """A reflector serving an already bound UDP socket (call inside the running event loop)."""
        reflector = cls(options, logger=logger)
        reflector.attach(sock)
        return reflector

    def attach(self, sock: socket.socket) -> tuple[str, int]:
        """Serve a bound UDP socket (it may belong to another network namespace); the reflector owns it from now
        on and closes it in close(). Returns the local (address, port). Call inside the running event loop."""
        if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError("a STAMP reflector needs an IPv4 or IPv6 UDP socket")
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise RuntimeError("all of a reflector's sockets must be served by one event loop")
        self._loop = loop
        sock.setblocking(False)
        if not enable_rx_metadata(sock):
            self.log.warning("no kernel receive timestamps on this socket: T2 will be read in user space")
        set_ttl_and_tos(sock, ttl=self.options.reply_ttl)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, 1 << 21)
        listener = _Listener(len(self._listeners), sock)
        self._listeners.append(listener)
        loop.add_reader(sock.fileno(), self._on_readable, listener)
        self.log.info("listening", extra={"fields": {"address": _fmt(listener.local)}})
        return listener.local

    async def serve(self, address: str, port: int) -> tuple[str, int]:
        """Create a UDP socket, bind it to (address, port) in this process's network namespace and serve it.
        "::" listens on IPv4 too. Port 0 picks a free port; the bound (address, port) is returned."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6 and ip.is_unspecified:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((str(ip), port))
            return self.attach(sock)
        except BaseException:
            sock.close()
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [lst.local for lst in self._listeners if not lst.closed]

    def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for lst in self._listeners:
            if lst.closed:
                continue
            lst.closed = True
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(lst.sock.fileno())
            lst.sock.close()
            self.log.info("closed", extra={"fields": {"address": _fmt(lst.local)}})

    async def __aenter__(self) -> Reflector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- metrics
    @property
    def sessions_active(self) -> int:
        """Sessions within the idle time. Packets sweep the table as they come; with none coming, a session idle
        past the limit must still leave the count, so reading it sweeps too."""
        self._expire(time.monotonic())
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        self._expire(time.monotonic())
        return list(self._sessions.values())

    def counters(self) -> dict[str, int]:
        out = {name: getattr(self, name) for name in self.COUNTERS}
        out["sessions_active"] = self.sessions_active
        return out

    # ------------------------------------------------------------------------------------------- the work
    def _on_readable(self, lst: _Listener) -> None:
        for _ in range(self.RX_BATCH):
            if lst.closed:
                return
            try:
                data, anc, flags, addr = lst.sock.recvmsg(self.RX_BUFSIZE, RX_ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. a queued ICMP error: nothing to reflect
                self.log.debug("recv error", extra={"fields": {"error": str(exc)}})
                continue
            try:
                self.handle(lst, data, anc, flags, addr)
            except Exception:  # a bug must cost one packet, not the reflector
                self.internal_errors += 1
                if self.internal_errors <= 10:
                    self.log.exception("internal error on a packet")

    def handle(
        self,
        lst: _Listener,
        data: bytes,
        anc: Sequence[tuple[int, int, bytes]],
        flags: int,
        addr: Any,
    ) -> None:
        """One received datagram (the unit the fuzz tests drive)."""
        self.received += 1
        meta = parse_rx_ancillary(anc)
        t2 = meta.rx_ns
        if t2 is None:
            t2 = time.time_ns()
            self.user_rx_timestamps += 1
        if flags & socket.MSG_TRUNC:
            self.malformed += 1
            return
        pkt = parse_sender_packet(data)
        if pkt is None:
            self.malformed += 1
            return
        peer_ip, peer_port = str(addr[0]), int(addr[1])
        if self.options.allow and not self._allowed(peer_ip):
            self.foreign += 1
            return
        session = self._session(lst.index, peer_ip, peer_port)
        session.received += 1
        session.last_ttl, session.last_tos = meta.ttl, meta.tos
        opts = self.options
        if opts.drop_incoming_every and session.received % opts.drop_incoming_every == 0:
            self.test_dropped_incoming += 1
            return
        seq = session.next_seq
        session.next_seq = (seq + 1) & 0xFFFFFFFF
        if opts.drop_reply_every and session.next_seq % opts.drop_reply_every == 0:
            self.test_dropped_replies += 1
            return
        buf = build_reflector_packet(
            pkt, seq=seq, receive_timestamp=ns_to_ntp(t2), err=DEFAULT_ERROR_ESTIMATE, sender_ttl=meta.ttl or 0
        )
        tos = meta.tos if opts.reflect_dscp and meta.tos is not None else None
        if opts.dwell_seconds > 0 and self._loop is not None:
            handle: asyncio.TimerHandle | None = None

            def later() -> None:
                if handle is not None:
                    self._timers.discard(handle)
                self._send(lst, session, buf, addr, tos)

            handle = self._loop.call_later(opts.dwell_seconds, later)
            self._timers.add(handle)
            return
        self._send(lst, session, buf, addr, tos)

    def _send(self, lst: _Listener, session: Session, buf: bytearray, addr: Any, tos: int | None) -> None:
        if lst.closed:
            return
        anc = self._tos_cmsg(lst, addr, tos) if tos is not None and lst.send_tos else []
        set_reflector_timestamp(buf, ns_to_ntp(time.time_ns()))  # T3: as late as we can read a clock
        try:
            if anc:
                try:
                    lst.sock.sendmsg([buf], anc, 0, addr)
                except OSError as exc:
                    if exc.errno not in (22, 95):  # EINVAL / EOPNOTSUPP: the kernel takes no TOS per packet
                        raise
                    lst.send_tos = False
                    set_reflector_timestamp(buf, ns_to_ntp(time.time_ns()))
                    lst.sock.sendto(buf, addr)
            else:
                lst.sock.sendto(buf, addr)
        except OSError as exc:
            self.send_errors += 1
            if self.send_errors <= 10:
                self.log.warning("send failed", extra={"fields": {"peer": _fmt(addr), "error": str(exc)}})
            return
        self.reflected += 1
        session.reflected += 1

    @staticmethod
    def _tos_cmsg(lst: _Listener, addr: Any, tos: int) -> list[tuple[int, int, bytes]]:
        dscp = tos & 0xFC  # reflect the DSCP, not the ECN bits
        if lst.family == socket.AF_INET6 and not str(addr[0]).startswith("::ffff:"):
            return [(socket.IPPROTO_IPV6, IPV6_TCLASS, dscp.to_bytes(_INT_BYTES, "little"))]
        return [(socket.IPPROTO_IP, socket.IP_TOS, bytes([dscp]))]

    def _allowed(self, peer_ip: str) -> bool:
        try:
            ip = ipaddress.ip_address(peer_ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.options.allow)

    def _session(self, index: int, peer_ip: str, peer_port: int) -> Session:
        now = time.monotonic()
        sessions = self._sessions
        key = (index, peer_ip, peer_port)
        session = sessions.get(key)
        if session is not None and session.last_seen < now - self.options.session_idle_seconds:
            # Idle past the limit: whoever sends now (often the same sender re-run from the same port) starts a new
            # session numbered from 0. Checked before last_seen is refreshed, which would hide the pause.
            del sessions[key]
            self.sessions_expired += 1
            session = None
        if session is not None:
            session.last_seen = now
            sessions.move_to_end(key)
        else:
            session = Session((peer_ip, peer_port), now)
            sessions[key] = session
            self.sessions_created += 1
            self.log.debug("session", extra={"fields": {"peer": _fmt((peer_ip, peer_port))}})
        self._expire(now, limit=16, keep=session)  # amortised O(1) per packet
        return session

    def _expire(self, now: float, *, limit: int | None = None, keep: Session | None = None) -> None:
        """Forget sessions idle past the limit and keep the table within max_sessions, from the least recently
        seen end (the table is in last_seen order, so the first session still in time ends the sweep)."""
        sessions = self._sessions
        idle_before = now - self.options.session_idle_seconds
        swept = 0
        while sessions and (limit is None or swept < limit):
            oldest_key = next(iter(sessions))
            oldest = sessions[oldest_key]
            if oldest is keep:
                break
            if oldest.last_seen < idle_before:
                del sessions[oldest_key]
                self.sessions_expired += 1
            elif len(sessions) > self.options.max_sessions:
                del sessions[oldest_key]
                self.sessions_evicted += 1
            else:
                break
            swept += 1


def _fmt(addr: Any) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str, default_port: int = 862) -> tuple[str, int]:
    """ "ADDR:PORT", "[V6]:PORT", "ADDR" or ":PORT" -> (address, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:  # a bare IPv6 address
        host, port_text = text, ""
    else:
        host, port_text = text, ""
    host = host or "0.0.0.0"
    ipaddress.ip_address(host)  # ValueError for names: the reflector binds addresses
    port = int(port_text) if port_text else default_port
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} outside 0-65535")
    return host, port


__all__ = ["MIN_PACKET_BYTES", "Reflector", "ReflectorOptions", "Session", "parse_listen"]
