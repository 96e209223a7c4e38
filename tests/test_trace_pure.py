"""probes/trace.py without a network: the degraded-hop rule, hop building, the Paris probes and reply matching.

The rule is checked three ways: hand-picked cases for each clause (thresholds, persistence, the NOC baseline,
silent hops), a brute-force reference written straight from the docstring's words (for every hop, take the
minimum over it and all later answering hops; compare each answering hop with the one before) against random
paths, and the lab scenarios in numbers. Packets are checked against scapy's own dissection and checksums,
and the kernel filter is run in a small classic-BPF interpreter over the packets it must keep and drop.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desanet.probes import trace
from desanet.probes.trace import (
    Degradation,
    Flow,
    Hop,
    Observation,
    ProbeFactory,
    TraceResult,
    TraceSettings,
    analyse,
    bpf_program,
    build_hops,
    build_probe,
    degraded_hop,
    match_reply,
)

inet = trace._scapy()
from scapy.packet import Raw  # noqa: E402

MS = 0.001
NOC, CORE, KEC, ROUTER = "10.255.0.1", "10.255.0.2", "10.254.15.2", "10.115.1.1"


def hop(ttl: int, rtt_ms: float | None, loss: float = 0.0, sent: int = 10, address: str | None = None) -> Hop:
    received = 0 if rtt_ms is None else round(sent * (1 - loss))
    rtts = () if rtt_ms is None else tuple([rtt_ms * MS] * received)
    return Hop(
        ttl=ttl,
        address=address if address is not None else (None if rtt_ms is None else f"10.0.0.{ttl}"),
        rtt_seconds_p50=rtts[0] if rtts else None,
        rtt_seconds=rtts,
        sent=sent,
        received=received,
        loss_ratio=(sent - received) / sent,
        reached=False,
    )


def path(*specs: tuple[float | None, float]) -> list[Hop]:
    return [hop(i, rtt, loss) for i, (rtt, loss) in enumerate(specs, 1)]


# ---------------------------------------------------------------------------------------------- the rule
def test_nothing_to_judge() -> None:
    assert degraded_hop([]) is None
    assert degraded_hop(path((None, 1.0), (None, 1.0))) is None


def test_clean_path_names_no_hop() -> None:
    assert degraded_hop(path((0.1, 0), (0.2, 0), (0.3, 0))) is None


@pytest.mark.parametrize("length", range(1, 7))
def test_latency_step_is_named_wherever_it_is(length: int) -> None:
    for k in range(1, length + 1):
        hops = path(*[(0.2 * i + (30 if i >= k else 0), 0.0) for i in range(1, length + 1)])
        d = degraded_hop(hops)
        assert d is not None and d.ttl == k and d.reasons == ("latency",)
        assert d.after_ttl == k - 1
        assert d.rtt_step_seconds == pytest.approx(0.030 + 0.0002)


@pytest.mark.parametrize("length", range(1, 7))
def test_persistent_loss_step_is_named_wherever_it_is(length: int) -> None:
    for k in range(1, length + 1):
        hops = path(*[(0.2, 0.3 if i >= k else 0.0) for i in range(1, length + 1)])
        d = degraded_hop(hops)
        assert d is not None and d.ttl == k and d.reasons == ("loss",)
        assert d.loss_step == pytest.approx(0.3)


def test_latency_threshold_is_absolute_below_10ms_and_relative_above() -> None:
    # 5 ms absolute floor: exactly 5 ms is not a step ("more than"), 5.1 ms is
    assert degraded_hop(path((1.0, 0), (6.0, 0))) is None
    d = degraded_hop(path((1.0, 0), (6.1, 0)))
    assert d is not None and d.ttl == 2
    # above 10 ms the step must exceed half the previous hop's RTT (4 ms a hop never is a step)
    climb = [(4.0, 0), (8.0, 0), (12.0, 0), (16.0, 0), (20.0, 0)]
    assert degraded_hop(path(*climb)) is None
    assert degraded_hop(path(*climb, (29.9, 0))) is None
    d = degraded_hop(path(*climb, (30.1, 0)))
    assert d is not None and d.ttl == 6 and d.after_ttl == 5
    # the thresholds are parameters
    assert degraded_hop(path(*climb, (30.1, 0)), rtt_step_ratio=1.0) is None
    d = degraded_hop(path((1.0, 0), (3.0, 0)), rtt_step_seconds=0.001)
    assert d is not None and d.ttl == 2


def test_loss_threshold_is_ten_points_over_the_previous_hop() -> None:
    assert degraded_hop(path((0.1, 0.0), (0.2, 0.1))) is None
    d = degraded_hop(path((0.1, 0.0), (0.2, 0.2)))
    assert d is not None and d.ttl == 2 and d.reasons == ("loss",)
    # steps count from the previous hop, not from the NOC
    assert degraded_hop(path((0.1, 0.0), (0.2, 0.1), (0.3, 0.2))) is None
    assert degraded_hop(path((0.1, 0.0), (0.2, 0.2)), loss_step=0.25) is None


def test_the_noc_is_the_baseline_of_hop_one() -> None:
    d = degraded_hop(path((30.0, 0), (30.2, 0)))
    assert d is not None and (d.ttl, d.after_ttl, d.after_address) == (1, 0, None)
    d = degraded_hop(path((0.1, 0.5), (0.2, 0.5)))
    assert d is not None and d.ttl == 1 and d.reasons == ("loss",)


def test_loss_only_at_an_intermediate_hop_is_rate_limiting_not_a_problem() -> None:
    # A router that answers 3 of 10 time-exceeded: the hops behind it lose nothing, so the path does not.
    assert degraded_hop(path((0.1, 0.0), (0.2, 0.7), (0.3, 0.0))) is None
    assert degraded_hop(path((0.1, 0.7), (0.2, 0.7), (0.3, 0.0))) is None


def test_rate_limited_hop_counts_only_the_loss_that_persists() -> None:
    # the kecamatan router rate-limits (70 %) on top of a real 30 % on its uplink, the village shows 30 %
    d = degraded_hop(path((0.1, 0.0), (0.2, 0.7), (0.3, 0.3)))
    assert d is not None and d.ttl == 2 and d.loss_step == pytest.approx(0.3)


def test_a_slow_answer_that_does_not_persist_is_the_routers_cpu() -> None:
    assert degraded_hop(path((0.1, 0), (40.0, 0), (0.3, 0))) is None
    d = degraded_hop(path((0.1, 0), (40.0, 0), (30.3, 0)))
    assert d is not None and d.ttl == 2 and d.rtt_step_seconds == pytest.approx(0.0302)


def test_silent_hops_are_skipped_and_the_gap_is_reported() -> None:
    hops = path((0.1, 0), (None, 1.0), (None, 1.0), (30.0, 0))
    d = degraded_hop(hops)
    assert d is not None and (d.ttl, d.after_ttl, d.after_address) == (4, 1, "10.0.0.1")
    assert degraded_hop(path((0.1, 0), (None, 1.0), (0.3, 0))) is None


def test_first_step_wins_and_both_reasons_are_given_at_one_hop() -> None:
    d = degraded_hop(path((0.1, 0), (30.0, 0), (30.2, 0.5)))
    assert d is not None and d.ttl == 2 and d.reasons == ("latency",)
    d = degraded_hop(path((0.1, 0), (30.0, 0.5), (30.2, 0.5)))
    assert d is not None and d.ttl == 2 and d.reasons == ("latency", "loss")


def test_lab_scenarios_in_numbers() -> None:
    # kecamatan uplink +30 ms: the kecamatan router and everything behind it
    uplink = [hop(1, 0.06, address=CORE), hop(2, 30.2, address=KEC), hop(3, 30.1, address=ROUTER)]
    d = degraded_hop(uplink)
    assert d is not None and (d.ttl, d.address, d.after_address) == (2, KEC, CORE)
    # the village's own link +30 ms, 20 % loss: only the router
    last_mile = [hop(1, 0.06, address=CORE), hop(2, 0.09, address=KEC), hop(3, 31.3, 0.2, address=ROUTER)]
    d = degraded_hop(last_mile)
    assert d is not None and (d.ttl, d.address, d.reasons) == (3, ROUTER, ("latency", "loss"))


def reference(hops: list[Hop], step: float, ratio: float, loss_step: float) -> tuple[int, tuple[str, ...]] | None:
    """The rule, written out the slow way from its description."""
    answering = [(h, h.rtt_seconds_p50 or 0.0, h.loss_ratio or 0.0) for h in hops if h.received > 0]
    rows: list[tuple[Hop, float, float]] = []
    for i, (h, _, _) in enumerate(answering):
        later = answering[i:]
        rows.append((h, min(x[1] for x in later), min(x[2] for x in later)))
    for i, (h, rtt, loss) in enumerate(rows):
        prev_rtt, prev_loss = (0.0, 0.0) if i == 0 else (rows[i - 1][1], rows[i - 1][2])
        why = []
        if rtt - prev_rtt > max(step, ratio * prev_rtt):
            why.append("latency")
        if loss - prev_loss > loss_step:
            why.append("loss")
        if why:
            return h.ttl, tuple(why)
    return None


hop_spec = st.one_of(
    st.none(),
    st.tuples(st.sampled_from([0.05, 0.1, 2.0, 5.0, 6.0, 10.0, 20.0, 30.0, 45.0]), st.sampled_from([0, 1, 2, 5, 9])),
)


GRID = [None, *((rtt, loss) for rtt in (0.1, 4.0, 6.0, 30.0) for loss in (0, 3))]


@pytest.mark.parametrize("length", range(5))
def test_rule_matches_its_description_on_every_short_path(length: int) -> None:
    """Every path of up to 4 hops over a grid of silent / fast / +4 / +6 / +30 ms hops with 0 or 30 % loss."""
    for specs in itertools.product(GRID, repeat=length):
        hops = [hop(i, None, 1.0) if s is None else hop(i, s[0], s[1] / 10) for i, s in enumerate(specs, 1)]
        d = degraded_hop(hops)
        assert (None if d is None else (d.ttl, d.reasons)) == reference(hops, 0.005, 0.5, 0.1), specs


@settings(max_examples=300, deadline=None)
@given(st.lists(hop_spec, max_size=8), st.sampled_from([0.0, 0.005]), st.sampled_from([0.0, 0.5]))
def test_rule_matches_its_description(specs: list[Any], step: float, ratio: float) -> None:
    hops = [hop(i, None, 1.0) if s is None else hop(i, s[0], s[1] / 10) for i, s in enumerate(specs, 1)]
    d = degraded_hop(hops, rtt_step_seconds=step, rtt_step_ratio=ratio, loss_step=0.1)
    want = reference(hops, step, ratio, 0.1)
    assert (None if d is None else (d.ttl, d.reasons)) == want
    if d is not None:
        # the step is never negative and the named hop answered
        assert d.rtt_step_seconds >= 0 and d.loss_step >= 0
        named = next(h for h in hops if h.ttl == d.ttl)
        assert named.received > 0 and named.address == d.address
        assert d.after_ttl < d.ttl


# ---------------------------------------------------------------------------------------------- hops
def test_build_hops_stops_at_the_target_and_keeps_silent_hops() -> None:
    obs = [
        Observation(1, 0.001, CORE),
        Observation(2),
        Observation(3, 0.004, ROUTER, reached=True),
        Observation(4, 0.004, ROUTER, reached=True),  # sent beyond the target before it was known
        Observation(1, 0.002, CORE),
        Observation(2),
        Observation(3),
        Observation(1, 0.003, "10.9.9.9"),
    ]
    hops = build_hops(obs)
    assert [h.ttl for h in hops] == [1, 2, 3]
    h1, h2, h3 = hops
    assert (h1.address, h1.sent, h1.received, h1.loss_ratio) == (CORE, 3, 3, 0.0)
    assert h1.rtt_seconds == (0.001, 0.002, 0.003) and h1.rtt_seconds_p50 == 0.002
    assert (h2.address, h2.received, h2.loss_ratio, h2.rtt_seconds_p50) == (None, 0, 1.0, None)
    assert h3.reached and h3.sent == 2 and h3.loss_ratio == 0.5
    assert not h1.reached


def test_build_hops_unreached_lists_every_probed_ttl() -> None:
    hops = build_hops([Observation(1, 0.001, CORE), Observation(2), Observation(3), Observation(4)])
    assert [h.ttl for h in hops] == [1, 2, 3, 4]
    assert not any(h.reached for h in hops)
    assert build_hops([]) == ()


def test_the_target_answering_early_ends_the_path_there() -> None:
    # TTL 3's probes were all lost on the first round, TTL 4 reached, then TTL 3 reached: the path is 3 hops
    hops = build_hops([Observation(3), Observation(4, 0.01, ROUTER, reached=True), Observation(3, 0.01, ROUTER, True)])
    assert [h.ttl for h in hops] == [1, 2, 3]
    assert hops[0].sent == 0 and hops[0].loss_ratio is None


def test_analyse_and_to_dict() -> None:
    obs = [Observation(1, 0.0001, CORE), Observation(2, 0.030, KEC), Observation(3, 0.030, ROUTER, reached=True)]
    r = analyse(ROUTER, TraceSettings(), obs * 3, 0.25)
    assert isinstance(r, TraceResult)
    assert r.reached and r.degraded_hop == 2 and r.degraded_address == KEC and r.probes_sent == 9
    d = r.to_dict()
    assert d["target"] == ROUTER and d["reached"] is True
    assert d["degraded_hop"]["ttl"] == 2 and d["degraded_hop"]["address"] == KEC
    assert d["degraded_hop"]["reasons"] == ["latency"] and d["degraded_hop"]["after_ttl"] == 1
    assert [h["ttl"] for h in d["hops"]] == [1, 2, 3]
    assert set(d["hops"][0]) >= {"ttl", "address", "rtt_seconds_p50", "loss_ratio", "sent", "received", "reached"}
    clean = analyse(ROUTER, TraceSettings(), [Observation(1, 0.0001, CORE)], 0.1)
    assert clean.to_dict()["degraded_hop"] is None and clean.reached is False


def test_settings_defaults_and_validation() -> None:
    assert TraceSettings().protocol == "icmp" and TraceSettings().port is None
    assert TraceSettings(protocol="udp").port == 33434
    assert TraceSettings(protocol="tcp").port == 80
    assert TraceSettings(protocol="tcp", port=443).port == 443
    s = TraceSettings()
    assert (s.max_hops, s.probes_per_hop, s.timeout_seconds, s.deadline_seconds) == (16, 3, 1.0, 10)
    for bad in (
        {"protocol": "sctp"},
        {"max_hops": 0},
        {"max_hops": 65},
        {"probes_per_hop": 0},
        {"probes_per_hop": 101},
        {"timeout_seconds": 0},
        {"deadline_seconds": math.inf},
        {"send_interval_seconds": -1},
        {"loss_step": 1.0},
        {"protocol": "udp", "port": 0},
    ):
        with pytest.raises(ValueError):
            TraceSettings(**bad)


def test_targets_must_be_ipv4_addresses() -> None:
    with pytest.raises(trace.TraceError, match="not an IP address"):
        trace.trace_blocking("pesanggaran", TraceSettings())
    with pytest.raises(trace.TraceError, match="IPv4"):
        trace.trace_blocking("2001:db8::1", TraceSettings())


# ---------------------------------------------------------------------------------------------- packets
def flow(protocol: str, count: int = 1000) -> Flow:
    port = {"udp": 33434, "tcp": 80}.get(protocol)
    return Flow.new(protocol, NOC, ROUTER, port, count)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["icmp", "udp", "tcp"])
def test_paris_probes_keep_the_flow_identifier_constant(protocol: str) -> None:
    f = flow(protocol)
    make = ProbeFactory(f)
    keys: set[tuple[Any, ...]] = set()
    seen: set[int] = set()
    for k in [0, 1, 2, 3, 100, 999]:
        for ttl in [1, 2, 3, 16, 64]:
            raw = make(k, ttl)
            assert raw == build_probe(f, k, ttl)  # the fast path writes what scapy writes
            p = inet.IP(raw)
            assert p.ttl == ttl and p.src == NOC and p.dst == ROUTER
            # every checksum is right: scapy recomputes them when the field is cleared
            q = inet.IP(raw)
            del q.chksum
            del q.payload.chksum
            assert bytes(q) == raw
            l4 = p.payload
            if protocol == "icmp":
                keys.add((l4.type, l4.code, l4.chksum, l4.id))
                seen.add(l4.seq)
            elif protocol == "udp":
                keys.add((l4.sport, l4.dport, l4.chksum, len(l4)))
                seen.add(p.id)
            else:
                keys.add((l4.sport, l4.dport, l4.flags.value))
                seen.add(l4.seq)
    assert len(keys) == 1  # what ECMP hashes never changes within a trace
    assert len(seen) == 6  # and every probe number is told apart


def time_exceeded(probe: bytes, router: str, quote: int | None = None) -> Any:
    quoted = probe if quote is None else probe[:quote]
    return inet.IP(bytes(inet.IP(src=router, dst=NOC) / inet.ICMP(type=11, code=0) / Raw(quoted)))


def unreachable(probe: bytes, router: str, code: int) -> Any:
    return inet.IP(bytes(inet.IP(src=router, dst=NOC) / inet.ICMP(type=3, code=code) / Raw(probe)))


@pytest.mark.parametrize("protocol", ["icmp", "udp", "tcp"])
@pytest.mark.parametrize("quote", [None, 28])  # RFC 792 routers quote only the IP header and 8 octets
def test_time_exceeded_is_matched_to_its_probe(protocol: str, quote: int | None) -> None:
    f = flow(protocol)
    make = ProbeFactory(f)
    for k in (0, 7, 999):
        r = match_reply(time_exceeded(make(k, 2), KEC, quote), f)
        assert r is not None and (r.k, r.responder, r.reached, r.unreachable) == (k, KEC, False, False)
    other = flow(protocol)  # another trace's probes, or an earlier one's
    assert match_reply(time_exceeded(ProbeFactory(other)(5, 2), KEC, quote), f) is None


def test_the_target_answers_each_protocol_its_own_way() -> None:
    f = flow("icmp")
    req = inet.IP(ProbeFactory(f)(42, 3))
    echo = inet.IP(bytes(inet.IP(src=ROUTER, dst=NOC) / inet.ICMP(type=0, id=f.ident, seq=req.payload.seq)))
    r = match_reply(echo, f)
    assert r is not None and (r.k, r.reached) == (42, True)
    assert (
        match_reply(inet.IP(bytes(inet.IP(src=ROUTER, dst=NOC) / inet.ICMP(type=0, id=f.ident ^ 1, seq=42))), f) is None
    )
    assert match_reply(inet.IP(bytes(inet.IP(src=KEC, dst=NOC) / inet.ICMP(type=0, id=f.ident, seq=42))), f) is None

    f = flow("udp")
    r = match_reply(unreachable(ProbeFactory(f)(9, 3), ROUTER, 3), f)
    assert r is not None and (r.k, r.reached, r.unreachable) == (9, True, False)
    r = match_reply(unreachable(ProbeFactory(f)(9, 3), KEC, 1), f)  # host unreachable from the kecamatan router
    assert r is not None and (r.k, r.reached, r.unreachable, r.responder) == (9, False, True, KEC)

    f = flow("tcp")
    syn = inet.IP(ProbeFactory(f)(11, 3))
    for flags in ("RA", "SA"):
        reply = inet.IP(src=ROUTER, dst=NOC) / inet.TCP(sport=80, dport=f.sport, flags=flags, ack=syn.payload.seq + 1)
        r = match_reply(inet.IP(bytes(reply)), f)
        assert r is not None and (r.k, r.reached) == (11, True)
    stray = inet.IP(src=ROUTER, dst=NOC) / inet.TCP(sport=80, dport=f.sport, flags="A", ack=syn.payload.seq + 1)
    assert match_reply(inet.IP(bytes(stray)), f) is None
    wrong_port = inet.IP(src=ROUTER, dst=NOC) / inet.TCP(sport=81, dport=f.sport, flags="RA", ack=syn.payload.seq + 1)
    assert match_reply(inet.IP(bytes(wrong_port)), f) is None


def test_replies_to_probe_numbers_never_sent_are_ignored() -> None:
    f = flow("icmp", count=10)
    big = Flow(**{**f.__dict__, "count": 100})
    assert match_reply(time_exceeded(ProbeFactory(big)(50, 1), CORE), f) is None
    assert match_reply(time_exceeded(ProbeFactory(big)(9, 1), CORE), f) is not None
    not_for_us = inet.IP(bytes(inet.IP(src=CORE, dst="10.255.0.9") / inet.ICMP(type=11) / Raw(ProbeFactory(f)(1, 1))))
    assert match_reply(not_for_us, f) is None


# ---------------------------------------------------------------------------------------------- kernel filter
def run_bpf(program: list[tuple[int, int, int, int]], ip: bytes, pkttype: int = 0) -> int:
    """A classic-BPF interpreter for the instructions bpf_program uses; offsets relative to the IP header. A load
    past the packet's end drops it, as the kernel does."""
    net = -0x100000

    class Short(Exception):
        pass

    def load(off: int, size: int) -> int:
        if off == -0x1000 + 4:
            return pkttype
        o = off - net
        if not 0 <= o <= len(ip) - size:
            raise Short
        return int.from_bytes(ip[o : o + size], "big")

    try:
        return _run(program, load)
    except Short:
        return 0


def _run(program: list[tuple[int, int, int, int]], load: Any) -> int:
    a = x = 0
    pc = 0
    for _ in range(100):
        code, jt, jf, k = program[pc]
        k_signed = k - (1 << 32) if k & 0x80000000 else k
        pc += 1
        if code == 0x20:
            a = load(k_signed, 4)
        elif code == 0x28:
            a = load(k_signed, 2)
        elif code == 0x30:
            a = load(k_signed, 1)
        elif code == 0x50:
            a = load(x + k_signed, 1)
        elif code == 0x40:
            a = load(x + k_signed, 4)
        elif code == 0x48:
            a = load(x + k_signed, 2)
        elif code == 0xB1:
            x = (load(k_signed, 1) & 0x0F) * 4
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")
    raise AssertionError("runaway program")


@pytest.mark.parametrize("protocol", ["icmp", "udp", "tcp"])
def test_kernel_filter_keeps_replies_and_drops_the_rest(protocol: str) -> None:
    f = flow(protocol)
    prog = bpf_program(f)
    jumps = [(pc, jt, jf) for pc, (code, jt, jf, _) in enumerate(prog) if code & 0x07 == 0x05]
    assert all(pc + 1 + max(jt, jf) < len(prog) for pc, jt, jf in jumps)
    assert prog[-1][0] == 0x06  # it ends in a return
    probe = ProbeFactory(f)(3, 2)
    # another trace at the same time: its own identifier and source port (to this target and to another)
    other = Flow(**{**f.__dict__, "ident": f.ident ^ 1, "sport": f.sport ^ 1})
    elsewhere = Flow.new(protocol, NOC, "10.115.1.2", f.port, 1000)  # type: ignore[arg-type]
    echo_reply = bytes(inet.IP(src=ROUTER, dst=NOC) / inet.ICMP(type=0, id=f.ident, seq=1))
    keep = [
        bytes(time_exceeded(probe, KEC)),
        bytes(time_exceeded(probe, KEC, quote=28)),  # RFC 792's quote: the IP header and 8 octets
        bytes(unreachable(probe, ROUTER, 3)),
    ]
    drop = [
        bytes(inet.IP(src=ROUTER, dst=NOC) / inet.ICMP(type=8)),  # someone pinging us
        bytes(inet.IP(src=ROUTER, dst=NOC) / inet.UDP(sport=53, dport=5353)),
        bytes(inet.IP(src=ROUTER, dst=NOC) / inet.TCP(sport=22, dport=5000, flags="A")),
        bytes(inet.IP(src=ROUTER, dst=NOC, flags="MF") / inet.ICMP(type=0, id=f.ident)),  # a fragment
        # the exporter's ICMP engine: echo replies with its own identifier, from the target and from others
        bytes(inet.IP(src=ROUTER, dst=NOC) / inet.ICMP(type=0, id=f.ident ^ 1, seq=1)),
        bytes(inet.IP(src="10.115.1.2", dst=NOC) / inet.ICMP(type=0, id=f.ident, seq=1)),
        # other traces' replies: a router's time-exceeded quoting their probes, a target's unreachable
        bytes(time_exceeded(ProbeFactory(other)(3, 2), KEC)),
        bytes(time_exceeded(ProbeFactory(elsewhere)(3, 2), KEC)),
        bytes(unreachable(ProbeFactory(elsewhere)(3, 2), "10.115.1.2", 3)),
        bytes(time_exceeded(probe, KEC, quote=20)),  # a quote too short to say whose probe it was
    ]
    (keep if protocol == "icmp" else drop).append(echo_reply)  # only ICMP traces get echo replies
    tcp_reply = bytes(inet.IP(src=ROUTER, dst=NOC) / inet.TCP(sport=80, dport=f.sport, flags="RA"))
    (keep if protocol == "tcp" else drop).append(tcp_reply)
    if protocol == "tcp":
        drop += [
            bytes(inet.IP(src=ROUTER, dst=NOC) / inet.TCP(sport=80, dport=f.sport ^ 1, flags="SA")),  # another's
            bytes(inet.IP(src="10.115.1.2", dst=NOC) / inet.TCP(sport=80, dport=f.sport, flags="RA")),
        ]
    for pkt in keep:
        assert run_bpf(prog, pkt) > 0, inet.IP(pkt).summary()
        assert run_bpf(prog, pkt, pkttype=4) == 0  # our own outgoing copy
    for pkt in drop:
        assert run_bpf(prog, pkt) == 0, inet.IP(pkt).summary()
    # with IP options the ICMP type and TCP port sit further in
    opt = bytes(inet.IP(src=ROUTER, dst=NOC, options=[inet.IPOption_NOP()] * 4) / inet.ICMP(type=11) / Raw(probe))
    assert (opt[0] & 0x0F) == 6 and run_bpf(prog, opt) > 0


def test_internet_checksum() -> None:
    # RFC 1071's example words sum to 0xddf2 and the checksum is its complement
    assert trace.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF
    assert trace.internet_checksum(b"\x01") == ~0x0100 & 0xFFFF
    assert struct.pack("!H", trace.internet_checksum(b"")) == b"\xff\xff"


def test_degradation_is_a_plain_value() -> None:
    d = Degradation(ttl=2, address=KEC, reasons=("loss",), rtt_step_seconds=0.0, loss_step=0.3)
    assert d.after_ttl == 0 and d.after_address is None


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_exit_codes_without_a_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from desanet.cli.app import app

    runner = CliRunner()

    async def no_permission(target: str, settings: TraceSettings) -> TraceResult:
        raise PermissionError(1, "Operation not permitted")

    async def no_route(target: str, settings: TraceSettings) -> TraceResult:
        raise trace.TraceError(f"no route to {target}: Network is unreachable")

    async def reached(target: str, settings: TraceSettings) -> TraceResult:
        obs = [Observation(1, 0.0001, CORE), Observation(2, 0.03, KEC), Observation(3, 0.03, target, reached=True)]
        return analyse(target, settings, obs, 0.1)

    async def lost(target: str, settings: TraceSettings) -> TraceResult:
        return analyse(target, settings, [Observation(1, 0.0001, CORE), Observation(2)], 0.1)

    for fake, code, text in [
        (no_permission, 2, "CAP_NET_RAW"),
        (no_route, 2, "no route"),
        (reached, 0, "degraded at hop 2 (10.254.15.2)"),
        (lost, 1, "NOT reached"),
    ]:
        monkeypatch.setattr(trace, "probe", fake)
        res = runner.invoke(app, ["probe", "trace", "10.115.1.1"])
        assert res.exit_code == code, res.output
        assert text in res.output
    monkeypatch.setattr(trace, "probe", reached)
    res = runner.invoke(app, ["probe", "trace", "pesanggaran", "--json", "--protocol", "tcp"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["village"] == "pesanggaran" and out["protocol"] == "tcp"
    assert out["degraded_hop"]["ttl"] == 2 and out["degraded_hop"]["address"] == KEC
    res = runner.invoke(app, ["probe", "trace", "no-such-village-anywhere"])
    assert res.exit_code == 2 and "no village" in res.output
    res = runner.invoke(app, ["probe", "trace", "10.115.1.1", "--max-hops", "0"])
    assert res.exit_code == 2
