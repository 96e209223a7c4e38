"""The ICMP echo engine (probes/icmp.py) and `desanet probe icmp`.

Packets go only to 127.0.0.0/8 and ::1: on the host's loopback, or inside a private network namespace this
file creates (only `lo` in it, so nothing can leave) and deletes. Unit tests of the pure functions run
anywhere; tests that open ICMP sockets need root (raw sockets; the host's ping_group_range is "1 0") and skip
without it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desanet.probes.icmp import (
    BATCH_ECHOES,
    ECHO_REPLY,
    ERROR,
    F_KERNEL_RX,
    F_KERNEL_TX,
    F_SEND_ERROR,
    LOST,
    MALFORMED,
    OTHER,
    ContinuousTarget,
    IcmpEngine,
    IcmpPermissionError,
    IcmpResult,
    IcmpSettings,
    adaptive_batch_ns,
    build_echo,
    build_result,
    checksum,
    parse_icmp,
    ping_group_allows,
    probe,
)

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="raw ICMP sockets need root (or CAP_NET_RAW)")
needs_netns = pytest.mark.skipif(
    not IS_ROOT or shutil.which("ip") is None or shutil.which("nft") is None,
    reason="needs root, ip and nft for a private network namespace",
)
_ns_counter = itertools.count()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _icmplib_socket() -> Any:
    """icmplib's packet builder and checksum without opening its socket (the reference we check ours against)."""
    from icmplib.sockets import ICMPv4Socket

    fake = types.SimpleNamespace(_ICMP_ECHO_REQUEST=8)
    fake._checksum = lambda data: ICMPv4Socket._checksum(fake, data)
    fake._create_packet = lambda i, s, p: ICMPv4Socket._create_packet(fake, i, s, p)
    return fake


def ipv4_header(payload_len: int, proto: int = 1, src: str = "127.0.0.1", dst: str = "127.0.0.1") -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_len,
        0,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def echo_reply(ident: int, seq: int, payload: bytes, v6: bool = False) -> bytes:
    typ = 129 if v6 else 0
    head = struct.pack("!BBHHH", typ, 0, 0, ident, seq)
    if v6:
        return head + payload
    return struct.pack("!BBHHH", typ, 0, checksum(head + payload), ident, seq) + payload


# ------------------------------------------------------------------------------------------------------------
# Pure functions: packet building and parsing
# ------------------------------------------------------------------------------------------------------------


def test_checksum_matches_icmplib() -> None:
    ref = _icmplib_socket()
    rnd = random.Random(7)
    for n in [0, 1, 2, 3, 7, 8, 63, 64, 65, 1472, 4001]:
        data = bytes(rnd.randrange(256) for _ in range(n))
        assert checksum(data) == ref._checksum(data), n
    assert checksum(b"\xff\xff") == 0  # one's complement: -0
    assert checksum(b"\x00\x00") == 0xFFFF


def test_build_echo_matches_icmplib() -> None:
    ref = _icmplib_socket()
    rnd = random.Random(1)
    for _ in range(50):
        ident, seq = rnd.randrange(65536), rnd.randrange(65536)
        payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 100)))
        assert build_echo(ident, seq, payload) == ref._create_packet(ident, seq, payload)


def test_parse_echo_reply_all_socket_kinds() -> None:
    payload = bytes(range(56))
    icmp = echo_reply(0x1234, 77, payload)
    raw = ipv4_header(len(icmp)) + icmp
    assert parse_icmp(raw, ip_header=True, verify_checksum=True) == (ECHO_REPLY, 0x1234, 77, 28, 0)
    assert parse_icmp(icmp) == (ECHO_REPLY, 0x1234, 77, 8, 0)  # ping socket: no IP header
    v6 = echo_reply(9, 65535, payload, v6=True)
    assert parse_icmp(v6, v6=True) == (ECHO_REPLY, 9, 65535, 8, 0)
    # `length` limits the view (recvmsg_into leaves old bytes after it)
    assert parse_icmp(raw + b"junk", len(raw), ip_header=True) == (ECHO_REPLY, 0x1234, 77, 28, 0)


def test_parse_errors_quoting_our_echo() -> None:
    request = build_echo(0x4242, 5, bytes(56))
    quoted = ipv4_header(len(request), dst="127.0.0.9")[:20] + request[:8]
    for typ, code in [(3, 1), (11, 0), (12, 0)]:
        err = struct.pack("!BBHI", typ, code, 0, 0) + quoted
        err = err[:2] + struct.pack("!H", checksum(err)) + err[4:]
        pkt = ipv4_header(len(err), src="192.0.2.1") + err
        verdict, ident, seq, off, info = parse_icmp(pkt, ip_header=True, verify_checksum=True)
        assert (verdict, ident, seq, info) == (ERROR, 0x4242, 5, typ << 8 | code)
        assert pkt[off : off + 4] == socket.inet_aton("127.0.0.9")
    # An error quoting a UDP datagram, or an echo reply, is not about our echoes.
    udp_quoted = ipv4_header(8, proto=17)[:20] + bytes(8)
    assert parse_icmp(struct.pack("!BBHI", 3, 3, 0, 0) + udp_quoted)[0] == OTHER
    reply_quoted = ipv4_header(8)[:20] + echo_reply(1, 2, b"")
    assert parse_icmp(struct.pack("!BBHI", 3, 3, 0, 0) + reply_quoted)[0] == OTHER
    # ICMPv6 time exceeded quoting our echo request
    inner6 = struct.pack("!IHBB16s16s", 6 << 28, 8, 58, 1, bytes(16), socket.inet_pton(socket.AF_INET6, "::1"))
    err6 = struct.pack("!BBHI", 3, 0, 0, 0) + inner6 + build_echo(7, 8, b"", v6=True)
    verdict, ident, seq, off, info = parse_icmp(err6, v6=True)
    assert (verdict, ident, seq, info) == (ERROR, 7, 8, 3 << 8)
    assert err6[off : off + 16] == socket.inet_pton(socket.AF_INET6, "::1")


@pytest.mark.parametrize(
    ("name", "data", "kw", "verdict"),
    [
        ("empty", b"", {"ip_header": True}, MALFORMED),
        ("empty dgram", b"", {}, MALFORMED),
        ("short icmp", echo_reply(1, 1, b"")[:7], {}, MALFORMED),
        ("ipv6 header on v4 socket", b"\x60" + bytes(40), {"ip_header": True}, MALFORMED),
        ("ihl below 5", b"\x44" + bytes(40), {"ip_header": True}, MALFORMED),
        ("ihl beyond packet", b"\x4f" + bytes(30), {"ip_header": True}, MALFORMED),
        (
            "total length lies",
            ipv4_header(100) + echo_reply(1, 2, bytes(8)),
            {"ip_header": True},
            MALFORMED,
        ),
        (
            "bad checksum",
            ipv4_header(16) + echo_reply(1, 2, bytes(8))[:8] + b"\x01" + bytes(7),
            {"ip_header": True, "verify_checksum": True},
            MALFORMED,
        ),
        ("reply with code 1", b"\x00\x01" + bytes(14), {}, MALFORMED),
        ("not icmp", ipv4_header(8, proto=17) + bytes(8), {"ip_header": True}, OTHER),
        ("echo request (our own, on lo)", build_echo(1, 2, bytes(8)), {}, OTHER),
        ("timestamp request", b"\x0d\x00" + bytes(18), {}, OTHER),
        ("truncated error", struct.pack("!BBHI", 3, 1, 0, 0) + bytes(10), {}, OTHER),
        ("v6 reply on v4 socket", echo_reply(1, 2, b"", v6=True), {}, OTHER),
        ("v4 reply on v6 socket", echo_reply(1, 2, b""), {"v6": True}, OTHER),
    ],
)
def test_parse_malformed_and_foreign(name: str, data: bytes, kw: dict[str, bool], verdict: int) -> None:
    assert parse_icmp(data, **kw)[0] == verdict, name


def test_parse_every_truncation_of_valid_packets() -> None:
    icmp = echo_reply(3, 4, bytes(range(32)))
    raw = ipv4_header(len(icmp)) + icmp
    request = build_echo(0x4242, 5, bytes(56))
    err = struct.pack("!BBHI", 11, 0, 0, 0) + ipv4_header(len(request))[:20] + request[:8]
    err_raw = ipv4_header(len(err)) + err
    for pkt, kw in [(raw, {"ip_header": True}), (icmp, {}), (err_raw, {"ip_header": True}), (err, {})]:
        for cut in range(len(pkt)):
            out = parse_icmp(pkt[:cut], **kw)
            assert out[0] in (MALFORMED, OTHER, ERROR, ECHO_REPLY)
            if out[0] == ECHO_REPLY:
                assert out[3] <= cut


# ------------------------------------------------------------------------------------------------------------
# Pure functions: settings and the window summary
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"count": 0},
        {"interval": 0},
        {"timeout": 0},
        {"payload_bytes": -1},
        {"payload_bytes": 70000},
        {"dscp": 64},
        {"ttl": 0},
        {"ttl": 256},
    ],
)
def test_settings_reject_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        IcmpSettings(**bad)  # type: ignore[arg-type]


def test_build_result_accounting() -> None:
    ms = 1_000_000
    k = F_KERNEL_TX | F_KERNEL_RX
    # (send_ns, rtt_ns, arrival, dups, flags): 6 echoes 20 ms apart; #2 and #3 lost; #5 arrives before #4.
    echoes = [
        (0 * 20 * ms, 10 * ms, 1, 0, k),
        (1 * 20 * ms, 12 * ms, 2, 1, k),
        (2 * 20 * ms, LOST, 0, 0, 0),
        (3 * 20 * ms, LOST, 0, 0, F_SEND_ERROR),
        (4 * 20 * ms, 30 * ms, 4, 0, k),
        (5 * 20 * ms, 11 * ms, 3, 0, k),
    ]
    r = build_result("x", echoes, "raw", "send failed: boom")
    assert (r.sent, r.received, r.duplicates, r.reordered, r.send_errors) == (6, 4, 1, 1, 1)
    assert r.loss_ratio == pytest.approx(2 / 6)
    assert r.rtt is not None and r.rtt.min == pytest.approx(0.010) and r.rtt.max == pytest.approx(0.030)
    assert r.ipdv_seconds == pytest.approx((0.002 + 0.018 + 0.019) / 3)
    assert r.burst_loss_ratio is not None and r.burst_loss_ratio >= 2 / 6
    assert r.timestamping == "kernel"
    assert r.samples[2] == (0.04, None) and r.samples[0] == (0.0, 0.010)
    d = r.to_dict()
    for key in ("target", "sent", "received", "loss_ratio", "rtt_seconds", "jitter_seconds", "ipdv_seconds"):
        assert key in d
    assert set(d["rtt_seconds"]) == {"min", "p50", "mean", "p95", "p99", "max", "stddev"}
    json.dumps(d)
    # One RTT without a kernel stamp makes the whole result "user".
    echoes[0] = (0, 10 * ms, 1, 0, F_KERNEL_RX)
    assert build_result("x", echoes, "raw").timestamping == "user"
    # Nothing came back: no RTT figures at all, and no division by zero.
    r = build_result("x", [(0, LOST, 0, 0, 0)] * 3, "dgram")
    assert (r.received, r.loss_ratio, r.rtt, r.jitter_seconds, r.pdv_seconds) == (0, 1.0, None, None, None)
    assert build_result("x", [], "raw").loss_ratio is None


# ------------------------------------------------------------------------------------------------------------
# The engine on the host's loopback (root)
# ------------------------------------------------------------------------------------------------------------


@needs_root
def test_train_to_loopback() -> None:
    async def go() -> tuple[IcmpResult, IcmpEngine]:
        async with IcmpEngine() as engine:
            r = await probe("127.0.0.1", IcmpSettings(count=10, interval=0.01, timeout=1), engine)
            return r, engine

    r, engine = run(go())
    assert (r.target, r.sent, r.received, r.loss_ratio, r.duplicates) == ("127.0.0.1", 10, 10, 0.0, 0)
    assert r.rtt is not None and 0 < r.rtt.p50 < 0.001
    assert r.jitter_seconds is not None and r.pdv_seconds is not None and r.ipdv_seconds is not None
    assert r.timestamping == "kernel" and r.socket_kind == "raw"
    assert len(r.samples) == 10 and all(rtt is not None for _, rtt in r.samples)
    sends = [t for t, _ in r.samples]
    assert all(0.0045 < b - a < 0.05 for a, b in itertools.pairwise(sends))  # 10 ms apart; never a burst
    assert abs(sends[0] - time.time()) < 60
    assert engine.stats.tx_stamps == 10 and engine.stats.tx_stamps_rejected == 0
    assert engine.stats.foreign == engine.stats.malformed == engine.stats.internal_errors == 0


@needs_root
def test_probe_without_engine_and_ipv6() -> None:
    r = run(probe("127.0.0.1", IcmpSettings(count=3, interval=0.01)))
    assert r.received == 3
    r6 = run(probe("::1", IcmpSettings(count=3, interval=0.01)))
    assert r6.received == 3 and r6.target == "::1" and r6.timestamping == "kernel"


@needs_root
def test_user_space_timestamps_are_reported() -> None:
    async def go() -> tuple[IcmpResult, str | None]:
        async with IcmpEngine(kernel_timestamps=False) as engine:
            r = await engine.train("127.0.0.1", IcmpSettings(count=5, interval=0.01))
            return r, engine.timestamping()

    r, capability = run(go())
    assert r.received == 5 and r.timestamping == "user" and capability == "user"
    assert r.rtt is not None and 0 < r.rtt.p50 < 0.01


@needs_root
def test_concurrent_trains_share_one_socket() -> None:
    targets = [f"127.0.0.{i}" for i in range(1, 7)] + ["127.3.2.1"]

    async def go() -> tuple[list[IcmpResult], int, IcmpEngine]:
        async with IcmpEngine() as engine:
            rs = await asyncio.gather(
                *(engine.train(t, IcmpSettings(count=15, interval=0.005 + 0.001 * i)) for i, t in enumerate(targets))
            )
            return list(rs), len(engine.sockets), engine

    rs, nsockets, engine = run(go())
    assert nsockets == 1
    assert [r.target for r in rs] == targets
    for r in rs:
        assert (r.sent, r.received, r.duplicates) == (15, 15, 0), r
    assert engine.stats.replies == 15 * len(targets)
    assert engine.stats.foreign == engine.stats.late == engine.stats.malformed == 0


@needs_root
def test_trains_started_together_are_staggered() -> None:
    async def go() -> list[IcmpResult]:
        async with IcmpEngine(batch_window=0.002) as engine:
            settings = IcmpSettings(count=3, interval=0.1)
            return list(await asyncio.gather(*(engine.train(f"127.0.4.{i}", settings) for i in range(1, 21))))

    rs = run(go())
    assert all(r.received == 3 for r in rs)
    firsts = sorted(r.samples[0][0] for r in rs)
    assert max(firsts) - min(firsts) > 0.05  # spread over the interval, not 20 echoes at once
    assert statistics.median(b - a for a, b in itertools.pairwise(firsts)) > 0.001


@needs_root
def test_forged_and_stray_replies_are_counted_and_ignored() -> None:
    """Replies with the right sequence but the wrong source, token, length or identifier must not count."""

    async def go() -> dict[str, Any]:
        async with IcmpEngine() as engine:
            from desanet.probes.icmp import Train

            t = Train(engine, "127.0.0.9", IcmpSettings(count=1, timeout=2))
            engine._trains.add(t)
            fs = t.fs
            fs.ensure_bufsize(t.payload_len)
            engine._send(t, time.monotonic_ns())  # the real reply now waits in the socket, unread
            seq = next(i for i, s in enumerate(fs.slot_stream) if s is t)
            serial = fs.slot_serial[seq]
            payload = bytearray(t.template[8:])
            struct.pack_into("!I", payload, 0, serial)
            good = echo_reply(fs.ident, seq, bytes(payload))
            now = time.time_ns()

            def inject(icmp: bytes, src: str = "127.0.0.9") -> None:
                pkt = ipv4_header(len(icmp), src=src) + icmp
                engine._handle_datagram(fs, pkt, len(pkt), src, now, True)

            inject(good, src="127.0.0.1")  # right id/seq/token, wrong source
            inject(echo_reply(fs.ident, seq, bytes(len(payload))))  # wrong token
            inject(echo_reply(fs.ident, seq, bytes(payload) + b"x"))  # wrong length
            inject(echo_reply(fs.ident ^ 1, seq, bytes(payload)))  # another process's identifier
            inject(echo_reply(fs.ident, (seq + 1) & 0xFFFF, bytes(payload)))  # nobody's sequence number
            inject(b"\x45" + bytes(3))  # garbage
            # An ICMP error quoting our echo to another destination is not about us.
            quoted = ipv4_header(len(good), dst="127.0.0.8")[:20] + build_echo(fs.ident, seq, b"")
            inject(struct.pack("!BBHI", 3, 1, 0, 0) + quoted)
            before = dict(vars(engine.stats))
            assert t.rtt_ns[0] < 0, "a forged reply was accepted"
            r = await asyncio.wait_for(t.future, 2)
            inject(good)  # a duplicate of the real reply
            return {"before": before, "r": r, "dups": t.dups[0], "stats": vars(engine.stats)}

    out = run(go())
    b = out["before"]
    assert b["foreign"] == 3 and b["malformed"] == 3 and b["late"] == 1 and b["replies"] == 0
    r: IcmpResult = out["r"]
    assert (r.sent, r.received, r.timestamping) == (1, 1, "kernel")
    assert out["dups"] == 1


@needs_root
@pytest.mark.parametrize("batch_window", [0.002, 0.01])
def test_continuous_targets_spread_evenly_and_summarise_windows(batch_window: float) -> None:
    n, interval = 40, 0.2  # one echo every 5 ms on the wire
    samples: list[tuple[str, float, float | None]] = []

    async def go() -> tuple[list[ContinuousTarget], IcmpEngine, list[IcmpResult], int]:
        async with IcmpEngine(batch_window=batch_window) as engine:
            ts = [
                engine.add_target(
                    f"127.0.1.{i + 1}",
                    interval,
                    settings=IcmpSettings(timeout=0.1),
                    capacity=64,
                    on_sample=lambda t, s, r: samples.append((t.address, s, r)),
                )
                for i in range(n)
            ]
            await asyncio.sleep(1.35)
            windows = [t.window(1.0) for t in ts]
            engine.remove_target(ts[0])
            sent_before = ts[0].sent
            await asyncio.sleep(0.5)
            return ts, engine, windows, ts[0].sent - sent_before

    ts, engine, windows, sent_after_removal = run(go())
    assert sent_after_removal == 0
    for w in windows:
        assert 4 <= w.sent <= 6 and w.received == w.sent and w.loss_ratio == 0.0, w
        assert w.timestamping == "kernel"
    # Every target's first echo at its own phase: the sends cover the interval with no gap much longer than
    # the batch window; a window below the spacing sends them one by one, 5 ms apart.
    # The schedule itself is exact: phases i/m of the interval, re-spread over the m = n - 1 targets left
    # after one was removed. What the wire saw depends on the event loop, so it gets loose bounds.
    assert sorted(t.phase_ns for t in ts[1:]) == [round(interval * 1e9) * i // (n - 1) for i in range(n - 1)]
    firsts = sorted(t.samples()[0][0] for t in ts[1:])
    gaps = [b - a for a, b in itertools.pairwise(firsts)]
    assert interval * 0.75 < max(firsts) - min(firsts) < interval * 1.5
    assert statistics.median(gaps) < 2 * batch_window + 0.005
    if batch_window < interval / n:
        assert statistics.median(gaps) == pytest.approx(interval / n, abs=0.002)
    else:  # batched: far fewer timer wakeups than echoes
        assert engine.stats.wakeups < sum(t.sent for t in ts) / 1.5
    assert {a for a, _, _ in samples} == {t.address for t in ts}
    assert all(r is not None for _, _, r in samples)


@pytest.mark.parametrize("rate", [0, 1, 217, 400, 800, 999, 1000, 1001, 2000, 5000, 10_000, 1e6])
def test_adaptive_batch_window_caps_the_batch_and_divides_a_second(rate: float) -> None:
    w = adaptive_batch_ns(rate)
    assert 10_000_000 <= w <= 50_000_000
    assert 1_000_000_000 % w == 0  # grid batches then put the same count of echoes in every second
    assert rate * w / 1e9 <= max(BATCH_ECHOES, rate * 0.01)  # a batch: 20 echoes, or 1 % of a second's
    assert adaptive_batch_ns(rate * 2) <= w  # more load, no longer window
    if rate * 0.05 <= BATCH_ECHOES:
        assert w == 50_000_000  # a light load wakes 20 times a second


def test_adaptive_batch_window_at_a_district_and_at_province_scale() -> None:
    assert [adaptive_batch_ns(r) for r in (217, 800, 1000, 10_000)] == [50_000_000, 25_000_000, 20_000_000, 10_000_000]


@needs_root
def test_batch_window_follows_targets_added_and_removed() -> None:
    async def go() -> list[float]:
        async with IcmpEngine() as engine:
            seen = [engine.batch_window]
            ts = [engine.add_target(f"127.0.9.{i + 1}", 0.1, capacity=32) for i in range(250)]  # 2,500 echoes/s
            seen.append(engine.batch_window)
            await asyncio.sleep(0.05)
            for t in ts[10:]:
                engine.remove_target(t)
            seen.append(engine.batch_window)
            await asyncio.sleep(0.05)  # the next wakeup re-spreads the group; the window stays
            seen.append(engine.batch_window)
            return seen

    assert run(go()) == [0.05, 0.01, 0.05, 0.05]


@needs_root
def test_default_engine_batches_continuous_echoes_on_a_grid() -> None:
    """The default window follows the load, and each target's echoes keep their interval to within a window:
    batched sends go early, never late, and the wakeups are about one per window, not one per echo."""
    n, interval, seconds = 100, 0.5, 2.5  # 200 echoes a second: 50 ms windows of 10 echoes

    async def go() -> tuple[list[ContinuousTarget], IcmpEngine, float]:
        async with IcmpEngine() as engine:
            ts = [engine.add_target(f"127.0.6.{i + 1}", interval, capacity=32) for i in range(n)]
            window = engine.batch_window
            await asyncio.sleep(seconds)
            return ts, engine, window

    ts, engine, window = run(go())
    assert window == 0.05
    gaps = []
    for t in ts:
        sends = [s for s, r in t.samples()]
        assert all(r is not None for _, r in t.samples()), t.label
        assert len(sends) >= seconds / interval - 1
        gaps += [b - a for a, b in itertools.pairwise(sends)]
    # Every gap is the interval give or take one window (loose for a shared CI machine), most of them within
    # a few ms: a target's batch sits at the same grid point every cycle.
    assert all(abs(g - interval) < 0.05 + 0.03 for g in gaps), max(gaps, key=lambda g: abs(g - interval))
    assert statistics.median(abs(g - interval) for g in gaps) < 0.01
    sends_total = sum(t.sent for t in ts)
    assert engine.stats.wakeups < sends_total / 4, (engine.stats.wakeups, sends_total)
    assert engine.stats.continuous_sends == sends_total


@needs_root
def test_a_target_faster_than_the_window_keeps_its_interval_without_spinning() -> None:
    """A continuous target probed more often than twice the batch window goes out at most half an interval
    early; the timer waits for that moment instead of firing again and again until it comes."""

    async def go() -> tuple[ContinuousTarget, IcmpEngine]:
        async with IcmpEngine() as engine:
            t = engine.add_target("127.0.8.1", 0.04, settings=IcmpSettings(timeout=0.03))
            assert engine.batch_window == 0.05  # one target: the longest window
            await asyncio.sleep(1.0)
            return t, engine

    t, engine = run(go())
    sends = [s for s, _ in t.samples()]
    assert len(sends) >= 20 and all(r is not None for _, r in t.samples())
    assert all(0.015 < b - a < 0.07 for a, b in itertools.pairwise(sends)), sends
    assert engine.stats.wakeups < 3 * t.sent, (engine.stats.wakeups, t.sent)


@needs_root
def test_small_receive_buffer_for_the_rate_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    """A receive buffer that holds under half a second of replies at the probing rate turns a busy host into
    false loss: the engine says so, once, with the fix; a buffer that is big enough draws no warning."""

    async def go(rcvbuf: int) -> None:
        async with IcmpEngine(rcvbuf=rcvbuf) as engine:
            for i in range(200):  # 400 echoes/s: ~0.26 MB of replies in half a second
                engine.add_target(f"127.0.7.{i + 1}", 0.5)
            await asyncio.sleep(0.05)

    with caplog.at_level("WARNING", logger="desanet.icmp"):
        run(go(1 << 20))
    assert not [r for r in caplog.records if "receive buffer" in r.getMessage()]
    with caplog.at_level("WARNING", logger="desanet.icmp"):
        run(go(64 << 10))
    warned = [r.getMessage() for r in caplog.records if "receive buffer" in r.getMessage()]
    assert len(warned) == 1 and "net.core.rmem_max" in warned[0], warned


@needs_root
def test_accuracy_against_iputils_ping() -> None:
    """On loopback, kernel-stamped RTTs sit at or below ping's (ping adds its own user-space path)."""
    out = subprocess.run(
        ["ping", "-n", "-c", "30", "-i", "0.01", "127.0.0.1"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    ping = [float(m) / 1e3 for m in re.findall(r"time=([0-9.]+) ms", out.stdout)]
    assert len(ping) == 30
    r = run(probe("127.0.0.1", IcmpSettings(count=30, interval=0.01)))
    assert r.rtt is not None and r.received == 30
    ping_p50 = statistics.median(ping)
    assert 0 < r.rtt.p50 <= ping_p50 + 30e-6, (r.rtt.p50, ping_p50)


# ------------------------------------------------------------------------------------------------------------
# In a private network namespace: loss, errors, ping sockets, send errors
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"desanet-t-icmp-{os.getpid()}-{next(_ns_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(ns: str, rules: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)


LOSS_RULES = """
table inet desanet_t {
  chain input {
    type filter hook input priority 0; policy accept;
    ip daddr 127.0.0.9 icmp type echo-request drop
    ip daddr 127.0.0.10 icmp type echo-request numgen inc mod 2 == 0 drop
    ip daddr 127.0.0.11 icmp type echo-request reject with icmp type host-unreachable
    ip6 daddr ::1 icmpv6 type echo-request ip6 hoplimit 7 drop
  }
}
"""


def in_ns(ns: str, coro_fn: Any) -> Any:
    from desanet.lab.netns import run_in_netns

    return run_in_netns(ns, lambda: asyncio.run(coro_fn()))


@needs_netns
def test_loss_accounting_without_cross_contamination(netns: str) -> None:
    nft(netns, LOSS_RULES)
    settings = IcmpSettings(count=20, interval=0.005, timeout=0.3)

    async def go() -> tuple[dict[str, IcmpResult], dict[str, int]]:
        async with IcmpEngine() as engine:
            names = ["127.0.0.1", "127.0.0.9", "127.0.0.10", "127.0.0.11"]
            rs = await asyncio.gather(*(engine.train(a, settings) for a in names))
            return dict(zip(names, rs, strict=True)), dict(vars(engine.stats))

    rs, stats = in_ns(netns, go)
    assert rs["127.0.0.1"].loss_ratio == 0.0
    assert rs["127.0.0.9"].received == 0 and rs["127.0.0.9"].loss_ratio == 1.0
    assert rs["127.0.0.9"].rtt is None and rs["127.0.0.9"].burst_loss_ratio == 1.0
    assert rs["127.0.0.10"].loss_ratio == pytest.approx(0.5)  # nft drops exactly every second request
    assert rs["127.0.0.10"].burst_loss_ratio == pytest.approx(0.5, abs=0.1)
    assert rs["127.0.0.11"].received == 0 and rs["127.0.0.11"].icmp_errors == 20
    assert stats["foreign"] == stats["malformed"] == stats["internal_errors"] == 0


@needs_netns
def test_ping_socket_when_the_group_range_allows(netns: str) -> None:
    from desanet.lab.netns import run_in_netns, write_sysctls

    write_sysctls(netns, {"ipv4/ping_group_range": "0 2147483647"})
    nft(netns, LOSS_RULES)
    assert run_in_netns(netns, ping_group_allows)

    async def go() -> tuple[IcmpResult, IcmpResult, IcmpResult, str | None]:
        async with IcmpEngine() as engine:
            # Concurrently: a healthy target and one whose echoes draw ICMP errors. On a ping socket those
            # errors also surface as a pending socket error on the next send, to any destination.
            settings = IcmpSettings(count=10, interval=0.005, timeout=0.3)
            ok, rejected = await asyncio.gather(
                engine.train("127.0.0.1", settings), engine.train("127.0.0.11", settings)
            )
            six = await engine.train("::1", IcmpSettings(count=5, interval=0.005))
            return ok, rejected, six, engine.socket_kind()

    ok, rejected, six, kind = in_ns(netns, go)
    assert kind == "dgram"
    assert (ok.socket_kind, ok.received, ok.send_errors, ok.timestamping) == ("dgram", 10, 0, "kernel")
    assert (rejected.received, rejected.send_errors, rejected.icmp_errors) == (0, 0, 10)  # via IP_RECVERR
    assert (six.socket_kind, six.received) == ("dgram", 5)


class DelayedResponder:
    """Answers echo requests to some 127.0.0.x addresses `delay` seconds late, from a thread, inside a namespace
    whose kernel does not answer pings itself: replies then trickle in between the engine's ticks, as they do
    on a real link (loopback answers during sendto)."""

    def __init__(self, ns: str, addresses: list[str], delay: float):
        import threading

        from desanet.lab.netns import socket_in_netns

        self.delay = delay
        self.socks: dict[str, socket.socket] = {}
        for a in addresses:
            sk = socket_in_netns(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            sk.bind((a, 0))  # replies leave from the address that was pinged
            sk.setblocking(False)
            self.socks[a] = sk
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import heapq
        import select

        due: list[tuple[float, str, bytes]] = []
        deadline = time.monotonic() + 30  # bounded whatever the test does
        while not self.stop.is_set() and time.monotonic() < deadline:
            timeout = max(0.0, min(0.002, due[0][0] - time.monotonic())) if due else 0.002
            ready, _, _ = select.select(list(self.socks.values()), [], [], timeout)
            for sk in ready:
                while True:
                    try:
                        pkt = sk.recv(4096)
                    except BlockingIOError:
                        break
                    ihl = (pkt[0] & 15) * 4
                    dst = socket.inet_ntoa(pkt[16:20])
                    icmp = bytearray(pkt[ihl:])
                    if icmp[0] != 8 or dst not in self.socks or sk is not self.socks[dst]:
                        continue
                    icmp[0] = 0
                    icmp[2:4] = b"\0\0"
                    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
                    heapq.heappush(due, (time.monotonic() + self.delay, dst, bytes(icmp)))
            while due and due[0][0] <= time.monotonic():
                _, dst, reply = heapq.heappop(due)
                self.socks[dst].sendto(reply, ("127.0.0.1", 0))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sk in self.socks.values():
            sk.close()


@needs_netns
def test_replies_arriving_between_ticks(netns: str) -> None:
    """20 ms replies: continuous targets (dense ticks, reader off) and a sparse train (reader on) both match
    every reply, and no RTT comes out below the responder's delay (TX and RX stamps belong together)."""
    from desanet.lab.netns import write_sysctls

    write_sysctls(netns, {"ipv4/icmp_echo_ignore_all": "1"})
    addresses = [f"127.0.0.{i}" for i in range(2, 12)]
    responder = DelayedResponder(netns, addresses, 0.020)

    async def go() -> tuple[list[IcmpResult], IcmpResult, dict[str, int]]:
        async with IcmpEngine() as engine:
            ts = [engine.add_target(a, 0.05, settings=IcmpSettings(timeout=0.5), capacity=100) for a in addresses]
            train = await engine.train("127.0.0.2", IcmpSettings(count=5, interval=0.2, timeout=0.5))
            await asyncio.sleep(0.6)
            return [t.window(1.0) for t in ts], train, dict(vars(engine.stats))

    try:
        windows, train, stats = in_ns(netns, go)
    finally:
        responder.close()
    for r in [*windows, train]:
        assert r.sent >= 5 and r.received == r.sent, r
        assert r.rtt is not None and r.rtt.min >= 0.020 and r.rtt.p50 < 0.035, r.rtt
        assert r.timestamping == "kernel"
    assert stats["late"] == stats["foreign"] == stats["malformed"] == stats["internal_errors"] == 0
    # 200 echoes a second with replies in between: the ticks drain them, the reader rarely has to wake.
    assert stats["reader_wakeups"] < stats["replies"] / 4


@needs_root
def test_no_permission_is_a_clear_error() -> None:
    if ping_group_allows():
        pytest.skip("ping_group_range admits us here")

    async def go() -> None:
        async with IcmpEngine("dgram") as engine:
            await engine.train("127.0.0.1", IcmpSettings(count=1))

    with pytest.raises(IcmpPermissionError, match="ping_group_range"):
        run(go())


@needs_netns
def test_send_errors_then_tx_stamps_stay_in_step(netns: str) -> None:
    """DF echoes bigger than the MTU fail locally; the TX-stamp key counter must not slip afterwards."""
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "mtu", "1500"], check=True)

    async def go() -> tuple[IcmpResult, IcmpResult, dict[str, int]]:
        async with IcmpEngine() as engine:
            big = await engine.train(
                "127.0.0.1", IcmpSettings(count=4, interval=0.005, payload_bytes=2000, dont_fragment=True)
            )
            fine = await engine.train("127.0.0.1", IcmpSettings(count=10, interval=0.005))
            return big, fine, dict(vars(engine.stats))

    big, fine, stats = in_ns(netns, go)
    assert (big.sent, big.received, big.send_errors, big.loss_ratio) == (4, 0, 4, 1.0)
    assert big.error is not None and "too long" in big.error.lower()
    assert fine.received == 10 and fine.timestamping == "kernel"
    assert stats["tx_stamps"] == 10 and stats["tx_stamps_rejected"] == 0


@needs_netns
def test_ttl_and_dscp_reach_the_wire(netns: str) -> None:
    """TTL/hop limit and DSCP are per train on a shared socket: nft sees them on the packets it matches."""
    nft(
        netns,
        """
table inet desanet_t {
  chain input {
    type filter hook input priority 0; policy accept;
    ip daddr 127.0.0.12 icmp type echo-request ip dscp != ef drop
    ip daddr 127.0.0.13 icmp type echo-request ip ttl != 3 drop
  }
}
""",
    )

    async def go() -> list[IcmpResult]:
        async with IcmpEngine() as engine:
            return list(
                await asyncio.gather(
                    engine.train("127.0.0.12", IcmpSettings(count=5, interval=0.005, timeout=0.3, dscp=46)),
                    engine.train("127.0.0.12", IcmpSettings(count=5, interval=0.005, timeout=0.3)),
                    engine.train("127.0.0.13", IcmpSettings(count=5, interval=0.005, timeout=0.3, ttl=3)),
                    engine.train("127.0.0.13", IcmpSettings(count=5, interval=0.005, timeout=0.3)),
                )
            )

    ef, plain, ttl3, ttl64 = in_ns(netns, go)
    assert (ef.received, plain.received, ttl3.received, ttl64.received) == (5, 0, 5, 0)


# ------------------------------------------------------------------------------------------------------------
# `desanet probe icmp`
# ------------------------------------------------------------------------------------------------------------


def desanet(*args: str, ns: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "desanet.cli", "probe", "icmp", *args]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


@needs_root
def test_cli_json_end_to_end() -> None:
    p = desanet("127.0.0.1", "--count", "5", "--interval", "0.05", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert (d["target"], d["sent"], d["received"], d["loss_ratio"]) == ("127.0.0.1", 5, 5, 0.0)
    assert set(d["rtt_seconds"]) == {"min", "p50", "mean", "p95", "p99", "max", "stddev"}
    for key in ("jitter_seconds", "ipdv_seconds", "pdv_seconds", "duplicates", "reordered", "burst_loss_ratio"):
        assert key in d
    assert d["timestamping"] == "kernel" and d["village"] is None


@needs_root
def test_cli_table() -> None:
    p = desanet("127.0.0.1", "--count", "3", "--interval", "0.02", "--dscp", "46", "--ttl", "9", "--size", "100")
    assert p.returncode == 0, p.stderr
    assert "127.0.0.1" in p.stdout and "p50" in p.stdout and "DSCP 46" in p.stdout and "TTL 9" in p.stdout


def test_cli_unknown_village_exits_2_without_probing() -> None:
    p = desanet("no-such-village-anywhere", "--count", "1")
    assert p.returncode == 2
    assert "no village" in p.stderr


def test_cli_bad_option_exits_2() -> None:
    assert desanet("127.0.0.1", "--dscp", "99").returncode == 2


@needs_netns
def test_cli_all_lost_exits_1(netns: str) -> None:
    nft(netns, LOSS_RULES)
    p = desanet("127.0.0.9", "--count", "3", "--interval", "0.01", "--timeout", "0.2", ns=netns)
    assert p.returncode == 1, p.stderr
    assert "no replies" in p.stdout


@needs_netns
def test_cli_village_name_resolves_inside_an_isolated_namespace(netns: str) -> None:
    """A village resolves to its inventory address; in a namespace with only lo nothing can leave, the send
    fails (no route) and that is "all lost", exit 1."""
    p = desanet("pesanggaran", "--count", "2", "--interval", "0.01", "--timeout", "0.2", "--json", ns=netns)
    assert p.returncode == 1, p.stderr
    d = json.loads(p.stdout)
    assert d["village"] == "pesanggaran" and d["send_errors"] == 2
    assert "unreachable" in (d["error"] or "").lower()


@needs_root
def test_cli_without_permission_exits_2() -> None:
    if shutil.which("setpriv") is None or ping_group_allows(65534):
        pytest.skip("needs setpriv and a ping_group_range that excludes nobody")
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]
    cmd += [sys.executable, "-m", "desanet.cli", "probe", "icmp", "127.0.0.1", "--count", "1"]
    env = {**os.environ, "HOME": "/tmp"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env, check=False)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "permission" in p.stderr.lower()
