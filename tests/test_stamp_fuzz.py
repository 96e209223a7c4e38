"""Fuzz both STAMP parsers and both state machines: random bytes, truncations, spoofed sequence numbers and
timestamps, odd ancillary data. Nothing may raise, and the counters must account for every datagram.

Live packets go to 127.0.0.1 only; hypothesis keeps every run bounded.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from desanet.probes import stamp
from desanet.probes.reflector import Reflector, ReflectorOptions, _Listener
from desanet.probes.stamp import (
    MIN_PACKET_BYTES,
    Reply,
    StampSettings,
    _Sender,
    analyse,
    build_reflector_packet,
    ns_to_ntp,
    ntp_to_ns,
    parse_reflector_packet,
    parse_rx_ancillary,
    parse_sender_packet,
)

LOOPBACK = "127.0.0.1"
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
u16 = st.integers(0, 2**16 - 1)
ancillary = st.lists(
    st.tuples(
        st.sampled_from([socket.SOL_SOCKET, socket.IPPROTO_IP, socket.IPPROTO_IPV6, 0, 255]),
        st.sampled_from([1, 2, 11, 35, 37, 52, 67, 0, 999]),
        st.binary(max_size=64),
    ),
    max_size=6,
)


# ------------------------------------------------------------------------------------------------ parsers
@given(st.binary(max_size=2048))
def test_sender_parser_never_raises(data: bytes) -> None:
    p = parse_sender_packet(data)
    assert (p is None) == (len(data) < 14)
    if p is not None:
        assert p.length == len(data) and 0 <= p.seq < 2**32


@given(st.binary(max_size=2048))
def test_reflector_parser_never_raises(data: bytes) -> None:
    p = parse_reflector_packet(data)
    assert (p is None) == (len(data) < 38)
    if p is not None:
        assert (p.sender_ttl is None) == (len(data) < 41 or data[38:40] != b"\0\0")
    if p is not None:
        p.t2_ns, p.t3_ns  # any 64-bit value decodes, in either timestamp format  # noqa: B018


@given(st.binary(min_size=44, max_size=200), st.integers(0, 200))
def test_truncations_of_a_real_reply(tail: bytes, cut: int) -> None:
    sender = parse_sender_packet(tail)
    assert sender is not None
    reply = bytes(build_reflector_packet(sender, seq=1, receive_timestamp=2, timestamp=3))
    p = parse_reflector_packet(reply[:cut])
    assert (p is None) == (min(cut, len(reply)) < 38)
    if p is not None:
        assert p.sender_seq == sender.seq and p.sender_timestamp == sender.timestamp
        assert p.sender_ttl == (None if cut < 41 else 0)


@given(ancillary)
def test_ancillary_parser_never_raises(anc: list[tuple[int, int, bytes]]) -> None:
    meta = parse_rx_ancillary(anc)
    assert meta.tos is None or 0 <= meta.tos <= 255


@given(st.integers(0, 2**62))
def test_ntp_round_trip(ns: int) -> None:
    if 0 <= ns < (2**32 - stamp.NTP_UNIX_OFFSET + 2**31) * 10**9:  # within the eras we decode
        assert abs(ntp_to_ns(ns_to_ntp(ns)) - ns) <= 1


@given(u64, u16)
def test_any_timestamp_decodes(ts: int, err: int) -> None:
    assert isinstance(stamp.timestamp_to_ns(ts, err), int)
    assert stamp.error_estimate_seconds(err) >= 0


# ------------------------------------------------------------------------------------------------ the reflector
class _Sink:
    """Where the fuzzed reflector's replies go: a socket on 127.0.0.1 that we drain and close."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()

    def drain(self) -> int:
        n = 0
        for _ in range(10_000):
            try:
                self.sock.recv(65536)
            except BlockingIOError:
                break
            n += 1
        return n


_SINK = _Sink()
_OUT = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_OUT.bind((LOOPBACK, 0))
_OUT.setblocking(False)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    packets=st.lists(
        st.tuples(st.binary(max_size=300), ancillary, st.sampled_from([0, 0, 0, socket.MSG_TRUNC])), max_size=20
    ),
    max_sessions=st.integers(1, 3),
    drop_in=st.integers(0, 3),
    drop_out=st.integers(0, 3),
    ports=st.lists(st.integers(1, 65535), min_size=1, max_size=4),
)
def test_reflector_handles_anything(
    packets: list[tuple[bytes, list[tuple[int, int, bytes]], int]],
    max_sessions: int,
    drop_in: int,
    drop_out: int,
    ports: list[int],
) -> None:
    options = ReflectorOptions(max_sessions=max_sessions, drop_incoming_every=drop_in, drop_reply_every=drop_out)
    r = Reflector(options)
    listener = _Listener(0, _OUT)
    for i, (data, anc, flags) in enumerate(packets):
        # replies go to the sink whatever port the "sender" claims: only the session key uses the port
        r._session(0, LOOPBACK, ports[i % len(ports)])  # exercise the table with several peers
        r.handle(listener, data, anc, flags, _SINK.addr)
    _SINK.drain()
    c = r.counters()
    assert c["received"] == len(packets)
    dealt = c["reflected"] + c["malformed"] + c["foreign"] + c["send_errors"]
    dealt += c["test_dropped_incoming"] + c["test_dropped_replies"]
    assert dealt == len(packets)
    assert c["internal_errors"] == 0
    assert c["sessions_active"] <= max_sessions


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=30))
def test_live_reflector_survives_random_datagrams(payloads: list[bytes]) -> None:
    async def go() -> dict[str, int]:
        async with Reflector() as reflector:
            _h, port = await reflector.serve(LOOPBACK, 0)
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((LOOPBACK, 0))
            c.setblocking(False)
            try:
                for p in payloads:
                    c.sendto(p, (LOOPBACK, port))
                c.sendto(stamp.build_sender_packet(0, 0), (LOOPBACK, port))  # then a real one: still answered
                for _ in range(200):
                    if reflector.received == len(payloads) + 1:
                        break
                    await asyncio.sleep(0.005)
            finally:
                c.close()
            return reflector.counters()

    c = asyncio.run(asyncio.wait_for(go(), 10))
    assert c["received"] == len(payloads) + 1
    assert c["malformed"] == sum(1 for p in payloads if len(p) < 14)
    assert c["reflected"] == len(payloads) + 1 - c["malformed"] and c["internal_errors"] == 0


# ------------------------------------------------------------------------------------------------ the sender
def _sender(n: int = 8) -> _Sender:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.close()  # _on_datagram never touches it
    sender = _Sender(s, LOOPBACK, StampSettings(port=862, rate_pps=n, duration_seconds=1), kernel_tx=True)
    now = time.time_ns()
    for i in range(n):
        sender.user_t1[i] = now + i * 1000
        sender.wire_t1[i] = ns_to_ntp(now + i * 1000)
        sender.kernel_t1[i] = now + i * 1000 + 5
        sender.tx_order.append(i)
        sender.sent_ok += 1
    return sender


@given(st.lists(st.tuples(st.binary(max_size=200), ancillary, st.sampled_from([0, socket.MSG_TRUNC])), max_size=30))
def test_sender_ignores_random_datagrams(datagrams: list[tuple[bytes, list[tuple[int, int, bytes]], int]]) -> None:
    sender = _sender()
    for data, anc, flags in datagrams:
        sender._on_datagram(data, anc, flags)
    result = sender.result(0.1)
    assert result.malformed + result.foreign + result.duplicates + len(sender.arrival) == len(datagrams)
    assert result.received <= result.sent


@given(
    st.lists(
        st.tuples(u32, u64, u32, u64, u64, st.booleans(), st.integers(0, 255)),
        max_size=40,
    )
)
def test_sender_with_spoofed_sequence_numbers(fields: list[tuple[int, int, int, int, int, bool, int]]) -> None:
    """Replies with random reflector and sender sequence numbers; some echo a timestamp we really sent."""
    sender = _sender()
    for rseq, t3, sseq, t2, rnd_ts, echo_real, ttl in fields:
        seq = sseq % 12 if echo_real else sseq  # near our range, or anywhere
        ts = sender.wire_t1[seq] if echo_real and seq < 8 else rnd_ts
        pkt = struct.pack("!IQHHQIQHHB3x", rseq, t3, 0, 0, t2, seq, ts, 0, 0, ttl)
        sender._on_datagram(pkt, [], 0)
    result = sender.result(0.1)
    d = result.to_dict()
    for ratio in (d["loss_ratio"], d["forward"]["loss_ratio"], d["backward"]["loss_ratio"]):
        assert ratio is None or 0 <= ratio <= 1
    assert result.received + result.late == len(sender.arrival) <= 8


@given(
    st.lists(
        st.tuples(st.integers(0, 50), u32, *(st.integers(-(2**62), 2**62) for _ in range(4))),
        max_size=40,
        unique_by=lambda t: t[0],
    ),
    st.integers(1, 60),
)
def test_analysis_never_raises(rows: list[tuple[int, int, int, int, int, int]], sent: int) -> None:
    replies = [Reply(s % sent, r, t1, t2, t3, t4, 0, None, None) for s, r, t1, t2, t3, t4 in rows]
    uniq = list({x.sender_seq: x for x in replies}.values())
    res = analyse("x", StampSettings(), sent, uniq, [i * 10**7 for i in range(sent)])
    assert res.loss_ratio is not None and 0 <= res.loss_ratio <= 1
    for ratio in (res.forward.loss_ratio, res.backward.loss_ratio):
        assert ratio is None or 0 <= ratio <= 1
    res.to_dict()


def test_reply_length_is_max_of_request_and_44() -> None:
    for n in (14, 20, 43, 44, 45, 1500):
        sender = parse_sender_packet(bytes(n))
        assert sender is not None
        assert len(build_reflector_packet(sender, seq=0, receive_timestamp=0)) == max(n, MIN_PACKET_BYTES)
