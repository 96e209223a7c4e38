"""What `/probe?target=VILLAGE&module=M` returns: blackbox_exporter's shape (probe_success,
probe_duration_seconds) plus the same desanet_* figures the continuous schedule exports, without the village
labels (Prometheus adds instance/target from the scrape config, as with blackbox)."""

from __future__ import annotations

from typing import Any

from desanet.exporter.exposition import FamilySpec, LineBuilder, render_families
from desanet.exporter.metrics import (
    IF_ERRORS,
    IF_RX,
    IF_SPEED,
    IF_TX,
    IF_UP,
    IPDV,
    JITTER,
    LOSS,
    OPT_RXLOSS,
    PDV,
    RTT_WINDOW,
    RX_POWER,
    THROUGHPUT,
    THROUGHPUT_LINK,
    TRACE_DEGRADED,
    TRACE_HOP_LOSS,
    TRACE_HOP_RTT,
    TRACE_HOPS,
    TX_POWER,
    UPTIME,
    WINDOW_STATS,
)

PROBE_SUCCESS = FamilySpec("probe_success", "gauge", "Whether the probe succeeded.")
PROBE_DURATION = FamilySpec("probe_duration_seconds", "gauge", "How long the probe took.")
SPECS = [
    PROBE_SUCCESS,
    PROBE_DURATION,
    RTT_WINDOW,
    LOSS,
    JITTER,
    IPDV,
    PDV,
    THROUGHPUT,
    THROUGHPUT_LINK,
    IF_RX,
    IF_TX,
    IF_SPEED,
    IF_UP,
    IF_ERRORS,
    UPTIME,
    RX_POWER,
    TX_POWER,
    OPT_RXLOSS,
    TRACE_HOPS,
    TRACE_HOP_RTT,
    TRACE_HOP_LOSS,
    TRACE_DEGRADED,
]


def render_probe(module: str, result: Any, success: bool, duration: float) -> str:
    b = LineBuilder("")
    b.sample(PROBE_SUCCESS, success)
    b.sample(PROBE_DURATION, duration)
    if result is not None:
        _module_lines(b, module, result)
    return render_families(SPECS, [b])


def _module_lines(b: LineBuilder, module: str, r: Any) -> None:
    if module in ("icmp", "stamp"):
        m = f'method="{module}"'
        for direction, d in [
            ("round_trip", r),
            *((("down", r.forward), ("up", r.backward)) if module == "stamp" else ()),
        ]:
            lbl = f'{m},direction="{direction}"'
            b.sample(LOSS, d.loss_ratio, lbl)
            b.sample(JITTER, d.jitter_seconds, lbl)
            b.sample(IPDV, d.ipdv_seconds, lbl)
            b.sample(PDV, d.pdv_seconds, lbl)
        if r.rtt is not None:
            for stat in WINDOW_STATS:
                b.sample(RTT_WINDOW, getattr(r.rtt, stat), f'{m},statistic="{stat}"')
    elif module == "throughput":
        for direction, d in (("down", r.down), ("up", r.up)):
            if d is not None:
                b.sample(THROUGHPUT, d.bits_per_second / 8, f'direction="{direction}"')
                b.sample(THROUGHPUT_LINK, d.link_bits_per_second / 8, f'direction="{direction}"')
    elif module == "snmp":
        b.sample(UPTIME, r.uptime_seconds)
        for i in r.interfaces:
            il = f'interface="{i.name or i.index}"'
            b.sample(IF_RX, i.in_octets, il)
            b.sample(IF_TX, i.out_octets, il)
            b.sample(IF_SPEED, None if i.speed_bits_per_second is None else i.speed_bits_per_second / 8, il)
            b.sample(IF_UP, i.oper_up, il)
            b.sample(IF_ERRORS, i.in_errors, il + ',direction="in"')
            b.sample(IF_ERRORS, i.out_errors, il + ',direction="out"')
        for o in r.optics:
            ol = f'interface="{o.name or o.index}"'
            b.sample(RX_POWER, o.rx_power_dbm, ol)
            b.sample(TX_POWER, o.tx_power_dbm, ol)
            b.sample(OPT_RXLOSS, o.rx_loss, ol)  # no light has no rx power: this says so
    elif module == "trace":
        b.sample(TRACE_HOPS, len(r.hops))
        for h in r.hops:
            hl = f'ttl="{h.ttl}",address="{h.address or ""}"'
            b.sample(TRACE_HOP_RTT, h.rtt_seconds_p50, hl)
            b.sample(TRACE_HOP_LOSS, h.loss_ratio, hl)
        if r.degraded_hop is not None:
            b.sample(TRACE_DEGRADED, r.degraded_hop)


def probe_succeeded(module: str, r: Any) -> bool:
    if module in ("icmp", "stamp"):
        return bool(r.received > 0)
    if module == "snmp":
        return bool(r.success)
    if module == "trace":
        return bool(r.reached)
    if module == "throughput":
        return r.down is not None or r.up is not None
    return False
