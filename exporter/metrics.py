"""Every metric desanet exports, and how a village's state becomes its lines.

A reader looking for a metric's origin finds it here in one hop: the spec names it, `render_village` shows
which result field feeds it, and that field's docstring in probes/ says how it was measured.
Conventions: seconds, bytes per second (Prometheus' base unit: promtool rejects `_bits_`; multiply by 8 for
bit/s, as the dashboards do), ratios 0–1, dBm; labels `village` (slug) and `kecamatan` on every
per-village series (so Alertmanager can route by kecamatan without a join), `method` (icmp|stamp),
`direction` (down = toward the village, up = toward the NOC, round_trip), `profile`. See docs/metrics.md.

Lean by default: per village, the RTT histogram, the verdict and what it judged, what an alert needs; the finer
families (window statistics, STAMP's histogram and counters, delay variation, every router port and optical
reading, the path's hops, probe timings) only with `detail` (`desanet serve --metrics.detail`). Constants of a
profile or a session are rendered once for the exporter (`render_shared`), never once per village.
"""

from __future__ import annotations

import time
from typing import Any

from desanet.district import Inventory
from desanet.exporter.exposition import FamilySpec, LineBuilder, labels
from desanet.exporter.state import RTT_BUCKETS, VillageState
from desanet.verdict import readiness as rd
from desanet.verdict.ports import is_loopback

F = FamilySpec

VILLAGE_INFO = F("desanet_village_info", "gauge", "Inventory facts about a village; always 1.")
CONTRACTED = F("desanet_village_contracted_bytes_per_second", "gauge", "Contracted link rate per direction.")
RTT = F("desanet_rtt_seconds", "histogram", "Round-trip times of every probe packet since start.")
RTT_WINDOW = F(
    "desanet_rtt_window_seconds",
    "gauge",
    "Round-trip time statistics over the last window (min, p50, mean, p95, p99, max, stddev).",
)
SENT = F("desanet_packets_sent_total", "counter", "Probe packets sent.")
RECEIVED = F("desanet_packets_received_total", "counter", "Probe packets answered in time.")
LOSS = F("desanet_loss_ratio", "gauge", "Share of probe packets lost over the last window, per direction.")
BURST_LOSS = F("desanet_burst_loss_ratio", "gauge", "Worst loss in any 200 ms span of the last window.")
JITTER = F("desanet_jitter_seconds", "gauge", "RFC 3550 interarrival jitter (ICMP: over round-trip times).")
IPDV = F("desanet_ipdv_seconds", "gauge", "Mean absolute inter-packet delay variation (RFC 5481).")
PDV = F("desanet_pdv_seconds", "gauge", "Packet delay variation p99 minus minimum (RFC 5481).")
THROUGHPUT = F("desanet_throughput_bytes_per_second", "gauge", "Goodput of the last throughput test.")
THROUGHPUT_LINK = F(
    "desanet_throughput_link_bytes_per_second",
    "gauge",
    "Wire rate implied by the last test's goodput (headers included).",
)
THROUGHPUT_TS = F("desanet_throughput_last_test_timestamp_seconds", "gauge", "When the last test ended.")
THROUGHPUT_BYTES = F("desanet_throughput_bytes_total", "counter", "Bytes spent on throughput tests.")
IF_RX = F(
    "desanet_interface_received_bytes_total",
    "counter",
    "ifHCInOctets of a router interface (ifInOctets, carried past its 32-bit wraps, without ifXTable).",
)
IF_TX = F(
    "desanet_interface_transmitted_bytes_total",
    "counter",
    "ifHCOutOctets of a router interface (ifOutOctets, carried past its 32-bit wraps, without ifXTable).",
)
IF_SPEED = F(
    "desanet_interface_speed_bytes_per_second",
    "gauge",
    "ifHighSpeed × 10⁶ / 8 (ifSpeed / 8 without it); absent while the agent reports 0 (no link).",
)
IF_UP = F("desanet_interface_up", "gauge", "1 when ifOperStatus is up.")
IF_ADMIN = F("desanet_interface_admin_up", "gauge", "1 when ifAdminStatus is up.")
IF_ERRORS = F("desanet_interface_errors_total", "counter", "ifInErrors / ifOutErrors.")
IF_DISCARDS = F("desanet_interface_discards_total", "counter", "ifInDiscards.")
IF_LAST_CHANGE = F(
    "desanet_interface_last_change_seconds",
    "gauge",
    "Router uptime at the interface's last status change (ifLastChange).",
)
UPTIME = F("desanet_router_uptime_seconds", "gauge", "sysUpTime of the village router.")
RX_POWER = F("desanet_optical_rx_power_dbm", "gauge", "Optical receive power; absent when no light (rx_loss).")
TX_POWER = F("desanet_optical_tx_power_dbm", "gauge", "Optical transmit power.")
OPT_TEMP = F("desanet_optical_temperature_celsius", "gauge", "Optical module temperature.")
OPT_BIAS = F("desanet_optical_bias_amperes", "gauge", "Laser bias current.")
OPT_VOLT = F("desanet_optical_voltage_volts", "gauge", "Optical module supply voltage.")
OPT_RXLOSS = F(
    "desanet_optical_rx_loss",
    "gauge",
    "1 when the module receives no light (its loss-of-signal flag, or a reading below its range, 0 mW or -40 dBm).",
)
READY = F("desanet_video_ready", "gauge", "1 when the village's link is ready for this video profile.")
VERDICT = F("desanet_video_verdict", "gauge", "1 for the current verdict (ready, at_risk, not_ready, unknown).")
MOS = F(
    "desanet_video_mos",
    "gauge",
    "Mean opinion score the E-model gives the judged delay, jitter and loss (the same for every profile).",
)
LIMITING = F("desanet_video_limiting_info", "gauge", "The factor that limits the village's readiness; always 1.")
PROFILE_THRESHOLD = F(
    "desanet_profile_threshold",
    "gauge",
    "Where a profile's verdict changes per factor: past level at_risk it is at risk, past not_ready not ready "
    "(above for rtt, jitter, loss, burst_loss; below for down, up, headroom); seconds, ratios or bytes/s.",
)
SESSION_START = F("desanet_session_start_timestamp_seconds", "gauge", "Start of the village's next session.")
SESSION_DURATION = F("desanet_session_duration_seconds", "gauge", "How long each scheduled session lasts.")
TRACE_HOPS = F("desanet_trace_hops", "gauge", "Hops on the path at the last trace.")
TRACE_HOP_RTT = F("desanet_trace_hop_rtt_seconds", "gauge", "Median RTT to each hop at the last trace.")
TRACE_HOP_LOSS = F("desanet_trace_hop_loss_ratio", "gauge", "Loss to each hop at the last trace.")
TRACE_DEGRADED = F(
    "desanet_trace_degraded_hop", "gauge", "TTL of the first hop where latency or loss steps up (absent when none)."
)
PROBE_SUCCESS = F("desanet_probe_success", "gauge", "1 when the last run of this probe succeeded.")
PROBE_DURATION = F("desanet_probe_duration_seconds", "gauge", "How long the last run of this probe took.")
PROBE_LAST = F("desanet_probe_last_run_timestamp_seconds", "gauge", "When this probe last ran.")
PROBE_FAILURES = F("desanet_probe_failures_total", "counter", "Failed runs of this probe.")

SPECS: list[FamilySpec] = [
    VILLAGE_INFO,
    CONTRACTED,
    RTT,
    RTT_WINDOW,
    SENT,
    RECEIVED,
    LOSS,
    BURST_LOSS,
    JITTER,
    IPDV,
    PDV,
    THROUGHPUT,
    THROUGHPUT_LINK,
    THROUGHPUT_TS,
    THROUGHPUT_BYTES,
    IF_RX,
    IF_TX,
    IF_SPEED,
    IF_UP,
    IF_ADMIN,
    IF_ERRORS,
    IF_DISCARDS,
    IF_LAST_CHANGE,
    UPTIME,
    RX_POWER,
    TX_POWER,
    OPT_TEMP,
    OPT_BIAS,
    OPT_VOLT,
    OPT_RXLOSS,
    READY,
    VERDICT,
    MOS,
    LIMITING,
    PROFILE_THRESHOLD,
    SESSION_START,
    SESSION_DURATION,
    TRACE_HOPS,
    TRACE_HOP_RTT,
    TRACE_HOP_LOSS,
    TRACE_DEGRADED,
    PROBE_SUCCESS,
    PROBE_DURATION,
    PROBE_LAST,
    PROBE_FAILURES,
]
# Families only `detail` exports (docs/metrics.md; tests check a lean render has none of them). Others are
# lean but some of their series are detail too: STAMP's jitter and loss beyond what the verdict judges, STAMP's
# histogram, outbound interface errors, loopback ports, the trace probe's health.
DETAIL_ONLY: frozenset[str] = frozenset(
    f.name
    for f in (
        CONTRACTED,
        RTT_WINDOW,
        SENT,
        RECEIVED,
        IPDV,
        PDV,
        THROUGHPUT_LINK,
        THROUGHPUT_TS,
        THROUGHPUT_BYTES,
        IF_ADMIN,
        IF_DISCARDS,
        IF_LAST_CHANGE,
        TX_POWER,
        OPT_TEMP,
        OPT_BIAS,
        OPT_VOLT,
        READY,
        TRACE_HOPS,
        TRACE_HOP_RTT,
        TRACE_HOP_LOSS,
        PROBE_DURATION,
        PROBE_LAST,
    )
)
SHARED: frozenset[str] = frozenset({PROFILE_THRESHOLD.name, SESSION_DURATION.name})  # once per exporter
VERDICTS = ("ready", "at_risk", "not_ready", "unknown")
WINDOW_STATS = ("min", "p50", "mean", "p95", "p99", "max", "stddev")
SHARED_KEY = "\0shared"  # the Exposition key of render_shared's lines (no village slug contains NUL)
LEAN_PROBES = frozenset({"snmp", "stamp", "throughput"})  # trace feeds no verdict: its health is a detail


def _l(**kv: Any) -> str:
    return labels({k: str(v) for k, v in kv.items()})


def render_village(vs: VillageState, now: float | None = None, *, detail: bool = False) -> LineBuilder:
    """All of one village's lines. Called when its state changed; never probes anything.

    Without `detail`, only the lean set (module docstring; docs/metrics.md counts it per family)."""
    now = now or time.time()
    v = vs.village
    b = LineBuilder(vs.base_labels)
    own = vs.profiles[0].name if vs.profiles else ""  # the village's own profile; sessions may add others
    b.sample(
        VILLAGE_INFO, 1, _l(name=v.name, kind=v.kind, router=v.address, latitude=v.lat, longitude=v.lon, profile=own)
    )
    if detail:
        b.sample(CONTRACTED, v.contracted.down_mbit * 1e6 / 8, 'direction="down"')
        b.sample(CONTRACTED, v.contracted.up_mbit * 1e6 / 8, 'direction="up"')

    # The ICMP histogram is the lean RTT record (quantiles, heatmap); STAMP's bursts and the counters (received
    # equals the histogram's _count) are detail.
    for method in sorted(vs.sent):
        m = f'method="{method}"'
        h = vs.hist.get(method)
        if h is not None and (detail or method == "icmp"):
            b.histogram(RTT, RTT_BUCKETS, h.counts, h.total, m)
        if detail:
            b.sample(SENT, vs.sent[method], m)
            b.sample(RECEIVED, vs.received.get(method, 0), m)

    w = vs.icmp_window
    if w is not None:
        b.sample(LOSS, w.loss_ratio, 'method="icmp",direction="round_trip"')
        b.sample(BURST_LOSS, w.burst_loss_ratio, 'method="icmp"')
        if detail:
            b.sample(JITTER, w.jitter_seconds, 'method="icmp",direction="round_trip"')
            b.sample(IPDV, w.ipdv_seconds, 'method="icmp",direction="round_trip"')
            b.sample(PDV, w.pdv_seconds, 'method="icmp",direction="round_trip"')
            if w.rtt is not None:
                for stat in WINDOW_STATS:
                    b.sample(RTT_WINDOW, getattr(w.rtt, stat), f'method="icmp",statistic="{stat}"')
    if not detail:  # exactly the jitter readiness judges (VillageState.judged_jitter)
        for method, direction, jitter in vs.judged_jitter(now):
            b.sample(JITTER, jitter, f'method="{method}",direction="{direction}"')
    s = vs.stamp
    if detail and s is not None and vs.stamp_fresh(now):  # a result the verdict no longer counts is not shown
        _path_stats(b, "stamp", "round_trip", s.loss_ratio, s.jitter_seconds, s.ipdv_seconds, s.pdv_seconds)
        for direction, d in (("down", s.forward), ("up", s.backward)):
            _path_stats(b, "stamp", direction, d.loss_ratio, d.jitter_seconds, d.ipdv_seconds, d.pdv_seconds)
        if s.rtt is not None:
            for stat in WINDOW_STATS:
                b.sample(RTT_WINDOW, getattr(s.rtt, stat), f'method="stamp",statistic="{stat}"')

    counted = vs.counted_throughput(now)  # goodput only while readiness counts it (a day)
    for direction, (d, ts) in sorted(vs.throughput.items()):
        lbl = f'direction="{direction}"'
        if direction in counted:
            b.sample(THROUGHPUT, d.bits_per_second / 8, lbl)
            if detail:
                b.sample(THROUGHPUT_LINK, d.link_bits_per_second / 8, lbl)
        if detail:
            b.sample(THROUGHPUT_TS, ts, lbl)
    if vs.throughput and detail:
        b.sample(THROUGHPUT_BYTES, vs.throughput_bytes)

    snmp = vs.snmp
    if snmp is not None and snmp.success:
        b.sample(UPTIME, snmp.uptime_seconds)
        for i in snmp.interfaces:
            name = i.name or f"if{i.index}"
            if not detail and is_loopback(name):  # no cable, no errors: nothing a NOC acts on
                continue
            il = _l(interface=name)
            b.sample(IF_RX, i.in_octets, il)
            b.sample(IF_TX, i.out_octets, il)
            b.sample(IF_SPEED, _bytes(i.speed_bits_per_second), il)
            b.sample(IF_UP, i.oper_up, il)
            b.sample(IF_ERRORS, i.in_errors, il + ',direction="in"')  # CRC and framing errors arrive inbound
            if detail:
                b.sample(IF_ERRORS, i.out_errors, il + ',direction="out"')
                b.sample(IF_ADMIN, i.admin_up, il)
                b.sample(IF_DISCARDS, i.in_discards, il + ',direction="in"')
                b.sample(IF_LAST_CHANGE, i.last_change_seconds, il)
        for o in snmp.optics:
            ol = _l(interface=o.name or f"optic{o.index}")
            b.sample(RX_POWER, o.rx_power_dbm, ol)
            b.sample(OPT_RXLOSS, o.rx_loss, ol)
            if detail:
                b.sample(TX_POWER, o.tx_power_dbm, ol)
                b.sample(OPT_TEMP, o.temperature_celsius, ol)
                b.sample(OPT_BIAS, o.bias_amperes, ol)
                b.sample(OPT_VOLT, o.voltage_volts, ol)

    mos = None
    for prof in vs.profiles:
        r = vs.readiness.get(prof.name)
        if r is None:
            continue
        pl = _l(profile=prof.name)
        if detail:  # the same as desanet_video_verdict{verdict="ready"}
            b.sample(READY, r.ready, pl)
        for verdict in VERDICTS:
            b.sample(VERDICT, r.verdict == verdict, f'{pl},verdict="{verdict}"')
        if r.limiting is not None:
            b.sample(LIMITING, 1, f'{pl},factor="{r.limiting}"')
        mos = r.mos if mos is None else mos
    b.sample(MOS, mos)  # one per village: the E-model does not depend on the profile

    if vs.next_session is not None:
        session, start = vs.next_session
        b.sample(SESSION_START, start.timestamp(), _l(session=session.title, profile=session.profile or ""))

    t = vs.trace
    if t is not None:
        if detail:
            b.sample(TRACE_HOPS, len(t.hops))
            for hop in t.hops:
                hl = _l(ttl=hop.ttl, address=hop.address or "")
                b.sample(TRACE_HOP_RTT, hop.rtt_seconds_p50, hl)
                b.sample(TRACE_HOP_LOSS, hop.loss_ratio, hl)
        if t.degraded_hop is not None:
            hop = next((h for h in t.hops if h.ttl == t.degraded_hop), None)
            b.sample(TRACE_DEGRADED, t.degraded_hop, _l(address=(hop.address if hop else "") or ""))

    for probe, st in sorted(vs.probes.items()):
        if not detail and probe not in LEAN_PROBES:
            continue
        pl = f'probe="{probe}"'
        b.sample(PROBE_SUCCESS, st.success, pl)
        b.sample(PROBE_FAILURES, st.failures, pl)
        if detail:
            b.sample(PROBE_DURATION, st.duration, pl)
            b.sample(PROBE_LAST, st.last_run, pl)
    return b


def render_shared(inv: Inventory) -> LineBuilder:
    """What is the same for every village: each profile's thresholds (from verdict.readiness.limits, the
    numbers the verdict judges against) and each session's length. Joined by `profile` or `session`."""
    b = LineBuilder("")
    for prof in inv.profiles:
        for lim in rd.limits(prof):
            scale = 1 / 8 if lim.unit == "bits_per_second" else 1  # bytes/s, as every rate desanet exports
            for level, value in (("at_risk", lim.at_risk), ("not_ready", lim.not_ready)):
                b.sample(
                    PROFILE_THRESHOLD,
                    value * scale,
                    _l(profile=prof.name, factor=lim.factor, level=level),
                )
    for session in inv.sessions:
        b.sample(SESSION_DURATION, session.duration.total_seconds(), _l(session=session.title))
    return b


def _path_stats(
    b: LineBuilder,
    method: str,
    direction: str,
    loss: float | None,
    jitter: float | None,
    ipdv: float | None,
    pdv: float | None,
) -> None:
    lbl = f'method="{method}",direction="{direction}"'
    b.sample(LOSS, loss, lbl)
    b.sample(JITTER, jitter, lbl)
    b.sample(IPDV, ipdv, lbl)
    b.sample(PDV, pdv, lbl)


def _bytes(bits: float | None) -> float | None:
    return None if bits is None else bits / 8
