"""Property tests for the ICMP packet functions: arbitrary bytes never crash the parser or the engine."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from desanet.probes.icmp import (
    ECHO_REPLY,
    ERROR,
    MALFORMED,
    OTHER,
    IcmpEngine,
    IcmpSettings,
    Train,
    build_echo,
    checksum,
    ones_sum,
    parse_icmp,
)


def naive_ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


@given(st.binary(max_size=3000))
def test_ones_sum_matches_the_textbook_loop(data: bytes) -> None:
    # Both are one's complement sums: 0 and 0xffff are the same number, and only all-zero data gives 0.
    a, b = ones_sum(data), naive_ones_sum(data)
    assert a == b or {a, b} == {0, 0xFFFF}


@given(st.binary(max_size=3000).filter(lambda d: len(d) % 2 == 0))
def test_checksum_verifies(data: bytes) -> None:
    c = checksum(data)
    assert ones_sum(data + struct.pack("!H", c)) == 0xFFFF


@given(
    st.binary(max_size=200),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
)
def test_parse_never_raises(data: bytes, v6: bool, ip_header: bool, verify: bool, length: int | None) -> None:
    verdict, ident, seq, off, info = parse_icmp(data, length, v6=v6, ip_header=ip_header, verify_checksum=verify)
    assert verdict in (ECHO_REPLY, ERROR, OTHER, MALFORMED)
    assert 0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF
    n = len(data) if length is None else min(length, len(data))
    if verdict == ECHO_REPLY:
        assert off <= n
    if verdict == ERROR:
        assert off + (16 if v6 else 4) <= n and info >> 8 > 0


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=300), st.booleans())
def test_reply_round_trip(ident: int, seq: int, payload: bytes, v6: bool) -> None:
    request = bytearray(build_echo(ident, seq, payload, v6))
    request[0] = 129 if v6 else 0  # the reply echoes the request with another type (checksum not verified)
    assert parse_icmp(bytes(request), v6=v6) == (ECHO_REPLY, ident, seq, 8, 0)


# Packets the fuzzer mutates: plausible shapes, so it gets past the first length checks.
_prefixes = st.sampled_from(
    [
        b"",
        b"\x45\x00",
        b"\x45\x00\x00\x54\x00\x00\x00\x00\x40\x01\x00\x00\x7f\x00\x00\x01\x7f\x00\x00\x01",
        b"\x00\x00\x00\x00",
        b"\x03\x01\x00\x00\x00\x00\x00\x00\x45\x00\x00\x54\x00\x00\x00\x00\x40\x01\x00\x00",
    ]
)


@pytest.mark.skipif(os.geteuid() != 0, reason="the engine needs a raw ICMP socket (root)")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_prefixes, st.binary(max_size=120)), min_size=1, max_size=20))
def test_engine_survives_arbitrary_datagrams(packets: list[tuple[bytes, bytes]]) -> None:
    async def go() -> dict[str, int]:
        async with IcmpEngine() as engine:
            t = Train(engine, "127.0.0.1", IcmpSettings(count=1))
            fs = t.fs
            for prefix, tail in packets:
                data = bytearray(prefix + tail)
                if len(data) >= 4 and data[0] == 0x45:
                    struct.pack_into("!H", data, 2, len(data))  # a consistent length, to reach deeper checks
                engine._handle_datagram(fs, data, len(data), "127.0.0.1", 1, True)
                engine._icmp_error(fs, len(data) & 0xFFFF, len(data), bytes(data[:4]))
            return dict(vars(engine.stats))

    stats = asyncio.run(go())
    assert stats["internal_errors"] == 0 and stats["replies"] == 0
