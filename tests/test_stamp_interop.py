"""desanet's STAMP sender and reflector against a TWAMP-light peer that shares no code with desanet.

No foreign STAMP or TWAMP-light implementation installs here from a package registry: Nokia's twampy is published
only as source (not on PyPI), and no TWAMP or STAMP responder (perfSONAR's twampd/twping included) is packaged in
Debian 12. So this file carries its own minimal peer, written from the unauthenticated TWAMP-Test packet formats of
RFC 5357 §4.1.2 and §4.2.1 (which STAMP, RFC 8762 §4.2 and §4.3, keeps for its first 41 octets), importing nothing
from desanet, and behaving like the senders and responders met in the field:

- `TwampLightResponder`: a stateful session-reflector (its own numbering per sender address and port, started over
  after its own idle time) that answers in the full form (up to Sender TTL, 41 octets) or in the short form some
  responders send (38 octets: no trailing MBZ, no Sender TTL), with whatever padding it likes, unrelated to the
  request's length.
- `twamp_light_send`: a session-sender from a fixed source port with 14-octet packets plus padding, whose loss split
  reads the reflector's numbering the way such senders do: lost on the way out = sent - (last reflector seq + 1).

Every packet goes to 127.0.0.1; each peer runs for a bounded time and is stopped by the test that started it.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from desanet.probes.stamp import probe
from tests.test_stamp import LOOPBACK, desanet, fast, free_udp_port, reflector_process, run

# ------------------------------------------------------------------------------------------------ the peer
# Written from the RFC text, not from desanet's code: that is the point of these tests.
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
ERROR_ESTIMATE = 0x0001  # RFC 4656 §4.1.2: S=0 (not synchronised), Z=0 (NTP format), Scale 0, Multiplier 1
IP_RECVTTL = 12  # Linux <netinet/in.h>; Python's socket module lacks it
RECV_BYTES = 65535


def ntp_now() -> int:
    """The time as a 64-bit NTP timestamp (RFC 5905 §6): 32-bit seconds since 1900, 32-bit fraction."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    return ((sec + NTP_UNIX_OFFSET) << 32) | ((ns << 32) // 1_000_000_000)


def ntp_seconds(ts: int) -> float:
    return (ts >> 32) - NTP_UNIX_OFFSET + (ts & 0xFFFFFFFF) / 2**32


def received_ttl(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return 0


class TwampLightResponder:
    """RFC 5357 §4.2.1 session-reflector, unauthenticated, stateful, in a thread on 127.0.0.1 (bounded lifetime).

    The reply: Sequence Number (its own, per sender), Timestamp (T3), Error Estimate, MBZ (2), Receive Timestamp
    (T2), then the request's Sequence Number, Timestamp and Error Estimate as they came (its first 14 octets), then
    - full form: MBZ (2) and Sender TTL (the TTL the request arrived with), 41 octets;
    - short form: nothing more, 38 octets;
    and `padding` octets whatever the request's length: zeros, or pseudo-random with `random_padding` (RFC 4656
    §4.1.2, which RFC 5357 follows, says padding SHOULD be pseudo-random).
    """

    def __init__(
        self,
        *,
        short: bool,
        padding: int = 0,
        random_padding: bool = False,
        idle_seconds: float = 30.0,
        lifetime: float = 30.0,
    ) -> None:
        self.short = short
        self.padding = padding
        self.random_padding = random_padding
        self.idle_seconds = idle_seconds
        self.lifetime = lifetime
        self.answered = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        self.sock.bind((LOOPBACK, 0))
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TwampLightResponder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        sessions: dict[Any, tuple[int, float]] = {}  # (address, port) -> (next number, last seen)
        deadline = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            data, anc, _flags, addr = self.sock.recvmsg(RECV_BYTES, 64)
            t2 = ntp_now()
            if len(data) < 14:  # not even Sequence Number, Timestamp and Error Estimate
                continue
            now = time.monotonic()
            number, last_seen = sessions.get(addr, (0, now))
            if now - last_seen > self.idle_seconds:
                number = 0
            sessions[addr] = (number + 1, now)
            reply = struct.pack("!IQHHQ", number, ntp_now(), ERROR_ESTIMATE, 0, t2) + data[:14]
            if not self.short:
                reply += struct.pack("!HB", 0, received_ttl(anc))
            pad = os.urandom(self.padding) if self.random_padding else bytes(self.padding)
            self.sock.sendto(reply + pad, addr)
            self.answered += 1


@dataclass
class ReplySeen:
    reflector_seq: int
    sender_seq: int
    rtt: float  # (T4 - T1) - (T3 - T2), seconds
    t1_echoed: int
    sender_ttl: int | None  # None in a short reply
    length: int
    tos: int | None


@dataclass
class SenderRun:
    sent: int
    sent_t1: dict[int, int] = field(default_factory=dict)
    replies: list[ReplySeen] = field(default_factory=list)

    @property
    def forward_loss(self) -> float:
        """What a simple TWAMP-light sender reports: packets the stateful reflector did not number were lost."""
        return (self.sent - (max(r.reflector_seq for r in self.replies) + 1)) / self.sent

    @property
    def backward_loss(self) -> float:
        return (max(r.reflector_seq for r in self.replies) + 1 - len(self.replies)) / self.sent


def twamp_light_send(
    port: int, *, count: int, source_port: int, size: int = 14, tos: int = 0, timeout: float = 2.0
) -> SenderRun:
    """RFC 5357 §4.1.2 session-sender: `count` packets of `size` octets (Sequence Number, Timestamp, Error Estimate,
    zero padding) from 127.0.0.1:source_port, 10 ms apart; then waits up to `timeout` for the replies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        sock.bind((LOOPBACK, source_port))
        out = SenderRun(count)

        def receive(until: float) -> None:
            while len(out.replies) < count and (left := until - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    continue
                data, anc, _flags, _addr = sock.recvmsg(RECV_BYTES, 64)
                t4 = ntp_seconds(ntp_now())
                if len(data) < 38:
                    continue
                rseq, t3, _err, _mbz, t2, sseq, t1 = struct.unpack_from("!IQHHQIQ", data)
                rtt = (t4 - ntp_seconds(t1)) - (ntp_seconds(t3) - ntp_seconds(t2))
                tos_seen = next(
                    (d[0] for lvl, kind, d in anc if (lvl, kind) == (socket.IPPROTO_IP, socket.IP_TOS)), None
                )
                ttl = data[40] if len(data) >= 41 else None
                out.replies.append(ReplySeen(rseq, sseq, rtt, t1, ttl, len(data), tos_seen))

        for seq in range(count):
            t1 = ntp_now()
            sock.sendto(struct.pack("!IQH", seq, t1, ERROR_ESTIMATE) + bytes(size - 14), (LOOPBACK, port))
            out.sent_t1[seq] = t1
            receive(time.monotonic() + 0.01)  # replies as they come, so T4 is when each one arrived
        receive(time.monotonic() + timeout)
        return out
    finally:
        sock.close()


# ------------------------------------------------------------------------ foreign sender -> desanet reflector
def test_foreign_sender_gets_correct_replies_from_desanet_reflector() -> None:
    port = free_udp_port()
    with reflector_process(port) as proc:
        for size in (14, 44, 1200, 8986):
            # AF41 with ECT(1): the reply must carry the DSCP back, not the ECN bits
            got = twamp_light_send(port, count=5, source_port=free_udp_port(), size=size, tos=(34 << 2) | 1)
            assert [r.sender_seq for r in got.replies] == list(range(5)), size
            assert [r.reflector_seq for r in got.replies] == list(range(5)), size  # consecutive within the run
            for r in got.replies:
                assert r.t1_echoed == got.sent_t1[r.sender_seq]
                assert 0 <= r.rtt < 0.05 and r.sender_ttl == 64 and r.tos == 34 << 2
                assert r.length == max(size, 44)
        rc, stdout, stderr = proc.stop()
    assert rc == 0, stderr
    counters = dict(line.split() for line in stdout.splitlines())
    assert counters["reflected"] == "20" and counters["malformed"] == "0"


def test_foreign_sender_rerun_from_the_same_port_after_the_idle_time() -> None:
    """A TWAMP-light sender re-run from its fixed port after the reflector's idle time: the reflector numbers the
    new run from 0, so the sender's own loss split reads 0, not -(first run)/(second run)."""
    port = free_udp_port()
    source = free_udp_port()
    with reflector_process(port, "--session-idle", "0.5") as proc:
        first = twamp_light_send(port, count=4, source_port=source)
        time.sleep(1.5)
        second = twamp_light_send(port, count=4, source_port=source)
        rc, stdout, stderr = proc.stop()
    assert rc == 0, stderr
    assert [r.reflector_seq for r in first.replies] == [0, 1, 2, 3]
    assert [r.reflector_seq for r in second.replies] == [0, 1, 2, 3]
    assert second.forward_loss == 0 and second.backward_loss == 0
    counters = dict(line.split() for line in stdout.splitlines())
    assert counters["sessions_created"] == "2" and counters["sessions_expired"] == "1"


# ------------------------------------------------------------------------ desanet sender -> foreign responder
def test_desanet_sender_accepts_short_replies_without_sender_ttl() -> None:
    with TwampLightResponder(short=True) as responder:
        result = run(probe(LOOPBACK, fast(responder.port)))
    assert result.sent == 100 and result.received == 100 and result.malformed == 0
    assert result.short_replies == 100  # said so: these replies carry no Sender TTL
    assert result.forward.hops is None  # unknown, not 0
    assert result.backward.hops == 0  # our own reading of the reply's TTL still works
    assert result.forward.loss_ratio == 0 and result.backward.loss_ratio == 0
    assert result.rtt is not None and 0 < result.rtt.p50 < 0.01
    assert result.to_dict()["short_replies"] == 100


def test_desanet_sender_reads_the_full_form_sender_ttl() -> None:
    with TwampLightResponder(short=False) as responder:
        result = run(probe(LOOPBACK, fast(responder.port)))
    assert result.received == 100 and result.short_replies == 0 and result.malformed == 0
    assert result.forward.hops == 0 and result.backward.hops == 0  # TTL 255 arrived: no router in between


def test_random_padding_after_a_short_reply_is_not_read_as_a_sender_ttl() -> None:
    """Octet 40 of a padded short-form reply is padding: read as a Sender TTL it would make up a forward hop count.
    Octets 38-39, MBZ in the full form, give the short form away."""
    with TwampLightResponder(short=True, padding=30, random_padding=True) as responder:
        result = run(probe(LOOPBACK, fast(responder.port)))
    assert result.received == 100 and result.malformed == 0
    assert result.forward.hops is None and result.short_replies >= 98  # 1 in 65,536 pads starts with two zeros


@pytest.mark.parametrize("padding", [1000, 60000])
def test_desanet_sender_takes_replies_larger_than_its_request(padding: int) -> None:
    """A responder pads its replies as it likes (RFC 5357 lets it): a 38 + 60,000-octet reply to a 44-octet
    request is a reply, not a malformed datagram."""
    with TwampLightResponder(short=True, padding=padding) as responder:
        result = run(probe(LOOPBACK, fast(responder.port, packet_bytes=44, duration_seconds=0.1)))
    assert result.sent == 20 and result.received == 20 and result.malformed == 0


def test_cli_says_when_the_replies_carry_no_sender_ttl(tmp_path: Path) -> None:
    with TwampLightResponder(short=True) as responder:
        table = desanet("probe", "stamp", LOOPBACK, "--port", str(responder.port), "--duration", "0.2")
        as_json = desanet("probe", "stamp", LOOPBACK, "--port", str(responder.port), "--duration", "0.2", "--json")
    assert table.returncode == 0, table.stderr
    said = " ".join(table.stdout.split())  # rich wraps at the terminal width
    assert "10 replies in the short TWAMP-light form (no Sender TTL): forward hops unknown" in said, said
    assert as_json.returncode == 0, as_json.stderr
    d = json.loads(as_json.stdout)
    assert d["short_replies"] == d["received"] == d["sent"] == 10 and d["forward"]["hops"] is None
