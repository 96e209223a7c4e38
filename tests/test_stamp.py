"""STAMP sender and reflector on 127.0.0.1: wire format, timestamps, loss split, DSCP, sizes, the CLI.

Every packet here goes to 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desanet.probes import stamp
from desanet.probes.reflector import Reflector, ReflectorOptions, parse_listen
from desanet.probes.stamp import (
    MIN_PACKET_BYTES,
    Reply,
    StampSettings,
    analyse,
    build_reflector_packet,
    build_sender_packet,
    ns_to_ntp,
    ntp_to_ns,
    open_sender_socket,
    parse_reflector_packet,
    parse_sender_packet,
    probe,
)

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def fast(port: int, **kw: Any) -> StampSettings:
    """A short stream: 100 packets in 0.5 s."""
    args: dict[str, Any] = {"port": port, "rate_pps": 200, "duration_seconds": 0.5, "timeout_seconds": 0.5}
    args.update(kw)
    return StampSettings(**args)


async def with_reflector(options: ReflectorOptions, settings_kw: dict[str, Any] | None = None) -> tuple[Any, Any]:
    async with Reflector(options) as reflector:
        _host, port = await reflector.serve(LOOPBACK, 0)
        result = await probe(LOOPBACK, fast(port, **(settings_kw or {})))
        return result, reflector.counters()


def eventually(check: Any, timeout: float = 2.0) -> bool:
    """True once check() is, polling for at most `timeout` seconds (counters are bumped after the send)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return bool(check())


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------ wire format
def test_ntp_round_trip_and_known_values() -> None:
    assert ns_to_ntp(0) == 2_208_988_800 << 32
    assert ntp_to_ns(2_208_988_800 << 32) == 0
    half = ns_to_ntp(1_700_000_000_500_000_000)
    assert half & 0xFFFFFFFF == 1 << 31
    for ns in (1, 999_999_999, 1_795_000_000_123_456_789, 2_100_000_000 * 10**9 + 7):  # 2036 rollover included
        assert abs(ntp_to_ns(ns_to_ntp(ns)) - ns) <= 1


def test_ptp_timestamps_follow_the_z_bit() -> None:
    ts = (1_700_000_000 << 32) | 250_000_000
    assert stamp.timestamp_to_ns(ts, stamp.ERR_Z) == 1_700_000_000_250_000_000
    assert stamp.timestamp_to_ns(ns_to_ntp(5 * 10**9), 0) == 5 * 10**9


def test_error_estimate_encoding() -> None:
    e = stamp.error_estimate(1e-3)
    assert e & stamp.ERR_S == 0 and e & stamp.ERR_Z == 0 and e & 0xFF >= 1
    assert 1e-3 <= stamp.error_estimate_seconds(e) < 1.01e-3
    assert stamp.error_estimate(1e-6, synchronized=True) & stamp.ERR_S


def test_sender_packet_layout_rfc8762() -> None:
    pkt = build_sender_packet(0x01020304, 0x1112131415161718, err=0x0102)
    assert len(pkt) == 44
    assert pkt[:4] == bytes([1, 2, 3, 4])
    assert pkt[4:12] == bytes.fromhex("1112131415161718")
    assert pkt[12:14] == bytes([1, 2])
    assert pkt[14:] == bytes(30)  # MBZ
    with pytest.raises(ValueError):
        build_sender_packet(1, 2, size=43)
    assert len(build_sender_packet(1, 2, size=1200)) == 1200


def test_reflector_packet_layout_rfc8762() -> None:
    sender = parse_sender_packet(build_sender_packet(7, 0xAAAAAAAABBBBBBBB, err=0x0203))
    assert sender is not None
    buf = build_reflector_packet(sender, seq=3, receive_timestamp=0x1111111122222222, err=0x0101, sender_ttl=61)
    stamp.set_reflector_timestamp(buf, 0x3333333344444444)
    assert len(buf) == 44
    seq, t3, err, ssid, t2, s_seq, t1, s_err, mbz, ttl = struct.unpack_from("!IQHHQIQHHB", buf)
    assert (seq, t3, err, ssid) == (3, 0x3333333344444444, 0x0101, 0)
    assert (t2, s_seq, t1, s_err, mbz, ttl) == (0x1111111122222222, 7, 0xAAAAAAAABBBBBBBB, 0x0203, 0, 61)
    assert buf[41:44] == bytes(3)
    # field offsets as the RFC draws them
    assert buf[16:24] == bytes.fromhex("1111111122222222") and buf[24:28] == (7).to_bytes(4, "big")
    assert buf[40] == 61
    parsed = parse_reflector_packet(bytes(buf))
    assert parsed is not None and parsed.sender_seq == 7 and parsed.sender_ttl == 61 and parsed.seq == 3


def test_twamp_light_packets_parse() -> None:
    # RFC 5357 unauthenticated sender packet with no padding: 14 octets.
    p = parse_sender_packet(struct.pack("!IQH", 9, 123, 1))
    assert p is not None and p.seq == 9 and p.length == 14 and p.ssid == 0
    assert parse_sender_packet(b"\0" * 13) is None
    # RFC 5357 reflector packet stops at Sender TTL (41 octets) when there is no padding.
    r = parse_reflector_packet(struct.pack("!IQHHQIQHHB", 1, 2, 3, 0, 4, 5, 6, 7, 0, 64))
    assert r is not None and r.sender_ttl == 64 and r.length == 41
    # Some TWAMP-light responders stop after Sender Error Estimate (38 octets): a reply, with no Sender TTL.
    short = parse_reflector_packet(struct.pack("!IQHHQIQH", 1, 2, 3, 0, 4, 5, 6, 7))
    assert short is not None and short.sender_seq == 5 and short.sender_timestamp == 6 and short.sender_ttl is None
    assert parse_reflector_packet(b"\0" * 37) is None


def test_settings_validation() -> None:
    s = StampSettings()
    assert (s.port, s.rate_pps, s.duration_seconds, s.packet_bytes, s.dscp, s.timeout_seconds) == (
        862,
        50,
        5,
        1200,
        34,
        1,
    )
    assert s.count == 250
    for bad in ({"packet_bytes": 43}, {"dscp": 64}, {"rate_pps": 0}, {"port": 0}, {"timeout_seconds": 0}):
        with pytest.raises(ValueError):
            StampSettings(**bad)


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8620") == ("127.0.0.1", 8620)
    assert parse_listen("[::]:862") == ("::", 862)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    assert parse_listen("127.0.0.1") == ("127.0.0.1", 862)
    for bad in ("localhost:862", "127.0.0.1:70000", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# ------------------------------------------------------------------------------------------------ pure analysis
def _replies(
    n: int,
    fwd: list[int],
    bwd: list[int],
    *,
    offset: int = 0,
    dwell: int = 50_000,
    lost_forward: set[int] | None = None,
    lost_backward: set[int] | None = None,
) -> list[Reply]:
    """Synthetic replies: packet i leaves at i*20 ms; forward/backward delays in ns; reflector clock +offset."""
    out: list[Reply] = []
    rseq = 0
    for i in range(n):
        if lost_forward and i in lost_forward:
            continue
        this = rseq
        rseq += 1
        if lost_backward and this in lost_backward:
            continue
        t1 = 10**18 + i * 20_000_000
        t2 = t1 + fwd[i] + offset
        t3 = t2 + dwell
        t4 = t3 - offset + bwd[i]
        out.append(Reply(i, this, t1, t2, t3, t4, 250, 60, 136))
    return out


def test_clock_offset_cancels_and_jitter_shows_in_its_own_direction() -> None:
    n = 200
    fwd = [5_000_000 + (3_000_000 if i % 2 else 0) for i in range(n)]  # 3 ms alternating, forward only
    bwd = [7_000_000] * n
    settings = StampSettings(port=862, rate_pps=50, duration_seconds=4)
    sends = [10**18 + i * 20_000_000 for i in range(n)]
    a = analyse("x", settings, n, _replies(n, fwd, bwd), sends)
    b = analyse("x", settings, n, _replies(n, fwd, bwd, offset=-3_600 * 10**9), sends)  # reflector an hour behind
    assert a.to_dict() == b.to_dict()
    assert a.forward.ipdv_seconds == pytest.approx(3e-3)
    assert a.forward.pdv_seconds == pytest.approx(3e-3)
    assert a.forward.jitter_seconds is not None and a.forward.jitter_seconds > 2.5e-3
    assert a.backward.jitter_seconds == 0 and a.backward.ipdv_seconds == 0 and a.backward.pdv_seconds == 0
    assert a.rtt is not None and a.rtt.min == pytest.approx(12e-3) and a.rtt.max == pytest.approx(15e-3)
    assert a.forward.hops == 5 and a.backward.hops == 4 and a.reply_dscp == 34


def test_loss_split_synthetic() -> None:
    n = 100
    flat = [1_000_000] * n
    settings = StampSettings(port=862, rate_pps=50, duration_seconds=2)
    sends = [10**18 + i * 20_000_000 for i in range(n)]
    fwd_lost = {3, 10, 50}
    bwd_lost = {0, 20, 21, 22}  # reflector numbers
    r = analyse("x", settings, n, _replies(n, flat, flat, lost_forward=fwd_lost, lost_backward=bwd_lost), sends)
    assert r.received == n - 7
    assert r.loss_ratio == pytest.approx(0.07)
    assert r.forward.loss_ratio == pytest.approx(3 / 100)
    assert r.backward.loss_ratio == pytest.approx(4 / 97)
    # A reflector whose count did not start at 0 for us: the base is found from the data.
    shifted = [Reply(x.sender_seq, x.reflector_seq + 1000, x.t1, x.t2, x.t3, x.t4, 0, None, None) for x in r_list(n)]
    s = analyse("x", settings, n, shifted, sends)
    assert s.forward.loss_ratio == 0 and s.backward.loss_ratio == 0 and s.forward.hops is None


def r_list(n: int) -> list[Reply]:
    flat = [1_000_000] * n
    return _replies(n, flat, flat)


def test_no_replies_means_unknown_not_zero() -> None:
    r = analyse("x", StampSettings(), 10, [], [i * 10**7 for i in range(10)])
    assert r.loss_ratio == 1.0 and r.rtt is None and r.forward.loss_ratio is None and r.backward.jitter_seconds is None
    assert r.to_dict()["rtt_seconds"] is None


# ------------------------------------------------------------------------------------------------ live, in-process
def test_round_trip_on_loopback() -> None:
    result, counters = run(with_reflector(ReflectorOptions()))
    d = result.to_dict()
    for key in ("target", "sent", "received", "loss_ratio", "rtt_seconds", "jitter_seconds", "ipdv_seconds"):
        assert key in d
    assert set(d["rtt_seconds"]) == {"min", "p50", "mean", "p95", "p99", "max", "stddev"}
    for direction in ("forward", "backward"):
        assert {"loss_ratio", "jitter_seconds", "ipdv_seconds", "pdv_seconds"} <= set(d[direction])
    assert d["target"] == LOOPBACK and d["sent"] == 100 and d["received"] == 100 and d["loss_ratio"] == 0
    assert d["forward"]["loss_ratio"] == 0 and d["backward"]["loss_ratio"] == 0
    assert 0 < d["rtt_seconds"]["min"] <= d["rtt_seconds"]["p50"] < 0.01
    assert d["forward"]["hops"] == 0 and d["backward"]["hops"] == 0  # TTL 255 both ways, nothing in between
    assert d["malformed"] == 0 and d["foreign"] == 0 and d["duplicates"] == 0
    assert d["rx_timestamps"] == "kernel"
    assert d["tx_timestamps"] in ("kernel", "user")
    assert counters["received"] == 100 and counters["reflected"] == 100 and counters["sessions_created"] == 1
    json.dumps(d)


def test_rtt_excludes_the_reflectors_dwell_time() -> None:
    result, _ = run(with_reflector(ReflectorOptions(dwell_seconds=0.02), {"timeout_seconds": 1.0}))
    assert result.received == result.sent
    assert result.rtt.p50 < 0.005, result.rtt  # the 20 ms spent inside the reflector is not path delay
    assert result.rtt.max < 0.015
    assert result.elapsed_seconds >= 0.495 + 0.02  # the last packet leaves at 99/200 s, then waits out the dwell


@pytest.mark.parametrize(
    ("options", "forward", "backward"),
    [
        (ReflectorOptions(drop_incoming_every=7), 14 / 100, 0.0),
        (ReflectorOptions(drop_reply_every=7), 0.0, 14 / 100),
    ],
)
def test_loss_is_split_by_direction(options: ReflectorOptions, forward: float, backward: float) -> None:
    result, counters = run(with_reflector(options))
    assert result.sent == 100 and result.received == 86 and result.loss_ratio == pytest.approx(0.14)
    assert result.forward.loss_ratio == pytest.approx(forward)
    assert result.backward.loss_ratio == pytest.approx(backward)
    assert counters["test_dropped_incoming"] + counters["test_dropped_replies"] == 14


def test_loss_both_ways_at_once() -> None:
    result, _ = run(with_reflector(ReflectorOptions(drop_incoming_every=5, drop_reply_every=4)))
    assert result.loss_ratio == pytest.approx(1 - 0.8 * 0.75)
    # the tail (packets after the last answered one) is left out of the split, so allow for it
    assert result.forward.loss_ratio == pytest.approx(0.2, abs=0.02)
    assert result.backward.loss_ratio == pytest.approx(0.25, abs=0.02)


def test_each_sender_gets_its_own_numbering() -> None:
    async def two() -> tuple[Any, Any, dict[str, int]]:
        async with Reflector() as reflector:
            _h, port = await reflector.serve(LOOPBACK, 0)
            a, b = await asyncio.gather(probe(LOOPBACK, fast(port)), probe(LOOPBACK, fast(port)))
            return a, b, reflector.counters()

    a, b, counters = run(two())
    # one shared counter would interleave: every gap would look like backward loss
    for r in (a, b):
        assert r.received == r.sent and r.backward.loss_ratio == 0 and r.forward.loss_ratio == 0
    assert counters["sessions_active"] == 2


def test_one_reflector_serves_several_sockets() -> None:
    async def many() -> tuple[list[Any], dict[str, int]]:
        async with Reflector() as reflector:
            ports = [(await reflector.serve(LOOPBACK, 0))[1] for _ in range(2)]
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a socket made elsewhere (e.g. in a netns)
            s.bind(("127.0.0.2", 0))
            ports.append(Reflector.attach(reflector, s)[1])
            results = [
                await probe(host, fast(p)) for host, p in zip((LOOPBACK, LOOPBACK, "127.0.0.2"), ports, strict=True)
            ]
            return results, reflector.counters()

    results, counters = run(many())
    assert all(r.received == r.sent == 100 for r in results)
    assert counters["sessions_active"] == 3


def test_from_socket() -> None:
    async def go() -> Any:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((LOOPBACK, 0))
        reflector = Reflector.from_socket(s)
        try:
            return await probe(LOOPBACK, fast(s.getsockname()[1], duration_seconds=0.1))
        finally:
            reflector.close()

    assert run(go()).received == 20


@pytest.mark.parametrize("size", [44, 45, 200, 1200, 1472, 4000, 9000])
def test_packet_sizes(size: int) -> None:
    result, _ = run(with_reflector(ReflectorOptions(), {"packet_bytes": size, "duration_seconds": 0.1}))
    assert result.received == result.sent == 20


def test_dscp_is_set_on_the_socket_and_reflected() -> None:
    for dscp in (34, 46, 0):
        sock, _ = open_sender_socket(LOOPBACK, StampSettings(port=9, dscp=dscp))
        try:
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == dscp << 2
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 255
        finally:
            sock.close()

    async def go() -> tuple[Any, list[Any]]:
        async with Reflector() as reflector:
            _h, port = await reflector.serve(LOOPBACK, 0)
            r = await probe(LOOPBACK, fast(port, dscp=46, duration_seconds=0.1))
            return r, reflector.sessions()

    result, sessions = run(go())
    assert result.reply_dscp == 46  # the reflector sent back the DSCP it received
    assert sessions[0].last_tos >> 2 == 46 and sessions[0].last_ttl == 255


# ------------------------------------------------------------------------------------------------ raw packets
class RawClient:
    """A plain UDP socket for hand-made packets, with bounded waits."""

    def __init__(self, ttl: int = 64) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(2.0)

    def ask(self, port: int, payload: bytes) -> bytes | None:
        self.sock.sendto(payload, (LOOPBACK, port))
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def reflector_thread(options: ReflectorOptions | None = None) -> Iterator[tuple[int, Reflector]]:
    """A reflector on its own loop in a thread, for tests that use blocking sockets."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        async def serve() -> None:
            reflector = Reflector(options)
            box["port"] = (await reflector.serve(LOOPBACK, 0))[1]
            box["reflector"] = reflector
            box["stop"] = asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            try:
                await asyncio.wait_for(box["stop"].wait(), 60)
            finally:
                reflector.close()

        asyncio.run(serve())

    t = threading.Thread(target=main, daemon=True)
    t.start()
    assert ready.wait(5)
    try:
        yield box["port"], box["reflector"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(5)


def test_twamp_light_sender_gets_a_44_octet_reply() -> None:
    client = RawClient(ttl=64)
    try:
        with reflector_thread() as (port, reflector):
            t1 = ns_to_ntp(time.time_ns())
            seqs = []
            for payload in (struct.pack("!IQH", 5, t1, 0x0001), struct.pack("!IQH", 6, t1, 0x0001) + b"\x7f" * 27):
                reply = client.ask(port, payload)
                assert reply is not None and len(reply) == MIN_PACKET_BYTES  # max(received, 44)
                r = parse_reflector_packet(reply)
                assert r is not None
                assert r.sender_seq == struct.unpack("!I", payload[:4])[0] and r.sender_timestamp == t1
                assert r.sender_error_estimate == 1
                assert r.sender_ttl == 64  # the TTL the packet arrived with
                assert r.t2_ns <= r.t3_ns and abs(r.t2_ns - time.time_ns()) < 10**9
                seqs.append(r.seq)
            assert seqs == [0, 1]  # stateful: our own numbering for this (address, port), from 0
            long = client.ask(port, struct.pack("!IQH", 7, t1, 1) + b"\xff" * 986)
            assert long is not None and len(long) == 1000 and long[44:] == bytes(956)  # zero past the header
            assert eventually(lambda: reflector.reflected == 3) and reflector.received == 3
    finally:
        client.close()


def test_reflector_counts_and_ignores_junk() -> None:
    client = RawClient()
    try:
        with reflector_thread() as (port, reflector):
            for junk in (b"", b"x", b"\0" * 13):
                client.sock.sendto(junk, (LOOPBACK, port))
            good = client.ask(port, build_sender_packet(1, 2))  # answered after the junk was dealt with
            assert good is not None and len(good) == 44
            assert eventually(lambda: reflector.reflected == 1)
            assert reflector.malformed == 3 and reflector.received == 4
            assert reflector.internal_errors == 0
    finally:
        client.close()


def test_reflector_allow_list() -> None:
    client = RawClient()
    client.sock.settimeout(0.3)
    try:
        import ipaddress

        with reflector_thread(ReflectorOptions(allow=(ipaddress.ip_network("10.0.0.0/8"),))) as (port, reflector):
            assert client.ask(port, build_sender_packet(1, 2)) is None
            assert reflector.foreign == 1 and reflector.reflected == 0
    finally:
        client.close()


def test_reflector_forgets_idle_and_evicts_old_sessions() -> None:
    clients = [RawClient() for _ in range(4)]
    try:
        with reflector_thread(ReflectorOptions(max_sessions=2, session_idle_seconds=0.2)) as (port, reflector):
            for c in clients[:3]:
                assert c.ask(port, build_sender_packet(0, 1)) is not None
            assert reflector.sessions_active == 2 and reflector.sessions_evicted == 1
            time.sleep(0.3)
            assert clients[3].ask(port, build_sender_packet(0, 1)) is not None
            assert reflector.sessions_expired == 2 and reflector.sessions_active == 1
    finally:
        for c in clients:
            c.close()


def test_a_sender_back_after_the_idle_time_starts_a_new_numbering() -> None:
    """A sender re-run from the same port after a pause longer than the idle time is a new session: its replies
    are numbered from 0 again, or a foreign sender reads forward loss of -(previous run) / (this run)."""
    client = RawClient()
    try:
        with reflector_thread(ReflectorOptions(session_idle_seconds=0.3)) as (port, reflector):
            first = [client.ask(port, build_sender_packet(seq, 1)) for seq in range(2)]
            time.sleep(0.6)
            again = [client.ask(port, build_sender_packet(seq, 1)) for seq in range(2)]
            numbers = [parse_reflector_packet(r).seq for r in first + again if r is not None]  # type: ignore[union-attr]
            assert numbers == [0, 1, 0, 1]
            assert reflector.sessions_created == 2 and reflector.sessions_expired == 1
            assert reflector.sessions_active == 1
    finally:
        client.close()


def test_idle_sessions_leave_the_count_without_new_traffic() -> None:
    """sessions_active (logged, and read by whoever watches the reflector) counts only sessions within the idle
    time, even when no packet arrives to sweep the table."""
    clients = [RawClient() for _ in range(3)]
    try:
        with reflector_thread(ReflectorOptions(session_idle_seconds=0.2)) as (port, reflector):
            for c in clients:
                assert c.ask(port, build_sender_packet(0, 1)) is not None
            assert reflector.counters()["sessions_active"] == 3
            time.sleep(0.4)
            assert reflector.counters()["sessions_active"] == 0 and reflector.sessions() == []
            assert reflector.sessions_expired == 3
    finally:
        for c in clients:
            c.close()


def fake_reflector(port_box: dict[str, int], stop: threading.Event, *, short: bool, spoof: bool, dup: bool) -> None:
    """A deliberately bad reflector: junk, spoofed and duplicated replies around each real one, and TWAMP-light
    41-octet replies. Bounded: stops after 10 s or when told."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LOOPBACK, 0))
    port_box["port"] = s.getsockname()[1]
    seq = 0
    deadline = time.monotonic() + 10
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([s], [], [], 0.05)
            if not ready:
                continue
            data, addr = s.recvfrom(65536)
            p = parse_sender_packet(data)
            if p is None:
                continue
            t = ns_to_ntp(time.time_ns())
            real = build_reflector_packet(p, seq=seq, receive_timestamp=t, timestamp=t)
            if short:
                s.sendto(b"\0" * 20, addr)
                s.sendto(bytes(real[:37]), addr)  # one octet short of the shortest TWAMP-light reply
            if spoof:
                bogus = bytearray(real)
                struct.pack_into("!Q", bogus, 28, p.timestamp ^ 1)  # echo a timestamp we never sent
                s.sendto(bytes(bogus), addr)
            s.sendto(bytes(real[:41]), addr)  # a TWAMP-light reflector may stop at Sender TTL
            if dup:
                s.sendto(bytes(real), addr)
            seq += 1
    finally:
        s.close()


def test_sender_ignores_malformed_foreign_and_duplicate_replies() -> None:
    box: dict[str, int] = {}
    stop = threading.Event()
    t = threading.Thread(target=fake_reflector, args=(box, stop), kwargs={"short": True, "spoof": True, "dup": True})
    t.start()
    try:
        for _ in range(100):
            if "port" in box:
                break
            time.sleep(0.01)
        result = run(probe(LOOPBACK, fast(box["port"], duration_seconds=0.2)))
    finally:
        stop.set()
        t.join(5)
    assert result.sent == 40 and result.received == 40 and result.loss_ratio == 0
    assert result.malformed == 80  # 20-octet junk and 37-octet truncated replies
    assert result.foreign == 40  # echoed timestamps we never sent
    assert result.duplicates == 40
    assert result.forward.hops is None  # a reflector that does not report TTL


def test_no_reflector_is_total_loss_with_icmp_errors() -> None:
    result = run(probe(LOOPBACK, fast(free_udp_port(), duration_seconds=0.1, timeout_seconds=0.2)))
    assert result.received == 0 and result.loss_ratio == 1.0 and result.icmp_errors > 0


def test_late_replies_count_as_lost() -> None:
    result, _ = run(with_reflector(ReflectorOptions(dwell_seconds=0.3), {"timeout_seconds": 0.2}))
    assert result.received == 0 and result.late > 0 and result.loss_ratio == 1.0


# ------------------------------------------------------------------------------------------------ the CLI
def desanet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desanet.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


class ReflectorProcess:
    """`desanet reflector` as a child process; stderr is collected by a thread so no read can block."""

    def __init__(self, port: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "desanet.cli", "reflector", "--listen", f"{LOOPBACK}:{port}", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # ends at EOF, when the child exits
            self.stderr_lines.append(line)

    def wait_ready(self, timeout: float = 20) -> None:
        assert eventually(
            lambda: any("msg=ready" in x for x in self.stderr_lines) or self.proc.poll() is not None, timeout
        )
        assert any("msg=listening" in x for x in self.stderr_lines), self.stderr_lines

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM to our child (by PID), then its exit status, stdout and stderr."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(10)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self._reader.join(5)
        return rc, out, "".join(self.stderr_lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@contextlib.contextmanager
def reflector_process(port: int, *extra: str) -> Iterator[ReflectorProcess]:
    child = ReflectorProcess(port, *extra)
    try:
        child.wait_ready()
        yield child
    finally:
        child.kill()


def inventory_file(tmp_path: Path, port: int) -> Path:
    text = f"""district: Test
defaults:
  snmp: {{version: 2c, community: {{env: DESANET_SNMP_COMMUNITY}}}}
kecamatan:
  - {{name: Bangorejo, uplink_mbit: 1000, lat: -8.477, lon: 114.237}}
villages:
  - name: Loopback Desa
    slug: loopback-desa
    kind: desa
    kecamatan: Bangorejo
    router: 127.0.0.1
    lat: -8.48
    lon: 114.22
    contracted: {{down_mbit: 20, up_mbit: 20}}
    stamp: {{port: {port}}}
"""
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def test_cli_against_a_reflector_subprocess(tmp_path: Path) -> None:
    port = free_udp_port()
    with reflector_process(port) as proc:
        out = desanet("probe", "stamp", LOOPBACK, "--port", str(port), "--rate", "100", "--duration", "0.5", "--json")
        assert out.returncode == 0, out.stderr
        d = json.loads(out.stdout)
        assert d["sent"] == 50 and d["received"] == 50 and d["forward"]["loss_ratio"] == 0

        # a village name from the inventory, its STAMP port from there too; the readable table
        inv = inventory_file(tmp_path, port)
        out = desanet("probe", "stamp", "Loopback Desa", "--inventory", str(inv), "--duration", "0.2", "--size", "44")
        assert out.returncode == 0, out.stderr
        assert "loopback-desa" in out.stdout and "forward" in out.stdout and "RTT" in out.stdout

        rc, stdout, stderr = proc.stop()
    assert rc == 0, stderr
    counters = dict(line.split() for line in stdout.splitlines())
    assert int(counters["reflected"]) >= 60 and int(counters["sessions_created"]) == 2
    assert "msg=stopped" in stderr


def test_cli_test_hooks_split_loss() -> None:
    port = free_udp_port()
    with reflector_process(port, "--test.drop-incoming-every", "10") as proc:
        out = desanet("probe", "stamp", LOOPBACK, "-p", str(port), "--rate", "200", "--duration", "0.5", "--json")
        proc.stop()
    d = json.loads(out.stdout)
    assert d["forward"]["loss_ratio"] == pytest.approx(0.1, abs=0.011) and d["backward"]["loss_ratio"] == 0


def test_cli_exit_codes(tmp_path: Path) -> None:
    port = free_udp_port()
    out = desanet("probe", "stamp", LOOPBACK, "--port", str(port), "--duration", "0.1", "--timeout", "0.2")
    assert out.returncode == 1 and "no replies" in out.stdout
    inv = inventory_file(tmp_path, port)
    out = desanet("probe", "stamp", "no-such-desa", "--inventory", str(inv))
    assert out.returncode == 2 and "no village" in out.stderr
    out = desanet("probe", "stamp", LOOPBACK, "--size", "20")
    assert out.returncode == 2
    out = desanet("reflector", "--listen", "nonsense:1")
    assert out.returncode == 2
