"""What desanet itself puts on one village link per day, from the probe settings: for the sizing table in
docs/operations.md and for anyone asking what monitoring costs a 20 Mbit/s village.

Pure arithmetic, no I/O. Bytes are counted as a Linux interface counts them (rx_bytes/tx_bytes: the IP packet
plus a 14-octet Ethernet header, no FCS or preamble), so the figure can be checked against the lab's counters
(bench/province/bench_province.py footprint). "down" is toward the village, "up" toward the NOC.

- ICMP: one echo request down and one reply up per `icmp.interval_seconds`, `payload_bytes` each.
- STAMP: a burst of `rate_pps × duration_seconds` test packets every `every_seconds`, each the profile's
  `video_packet_bytes` of UDP payload; the reflector answers with as many octets (RFC 8762: max(received, 44)).
- SNMP: one poll per `snmp.every_seconds`; its size depends on the router (interfaces, optics), so it is a
  parameter, by default what polls of a lab router (SNMPv3 authPriv) measured.
- Trace (ICMP echo, probes/trace.py's default): only the probes that reach the village cross its link:
  `probes_per_hop` per trace plus the one discovery probe, each answered by an echo reply of its size.
- Throughput: at most `tests_per_day` tests, each direction at most `max_seconds` at the contracted rate, and
  never more than the daily budget (the ledger refuses beyond it). An upper bound: the probe stops as soon as
  its readings agree, typically after 2 s (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from desanet.district.model import ProbeSettings

ETHERNET_HEADER = 14
IPV4_HEADER = 20
UDP_HEADER = 8
ICMP_HEADER = 8
DAY = 86400.0
# One SNMPv3 authPriv poll of a lab router (the shipped inventory's setting), measured with nftables counters in
# the village's namespace over 11 polls, the first walk included (bench/province footprint, 2026-12-06): layer-3
# octets and packets each way.
SNMP_POLL_REQUEST_BYTES = 760.0
SNMP_POLL_RESPONSE_BYTES = 915.0
SNMP_POLL_PACKETS = 1.2
TRACE_PROBE_PAYLOAD = 2 + 14  # probes/trace.py: two checksum-fixing octets + PAYLOAD


@dataclass(frozen=True)
class Flow:
    """Bytes per day one way of the link, as its interface counts them."""

    down: float
    up: float

    @property
    def total(self) -> float:
        return self.down + self.up


@dataclass(frozen=True)
class LinkFootprint:
    """desanet's own bytes per day on one village link, by probe."""

    icmp: Flow
    stamp: Flow
    snmp: Flow
    trace: Flow
    throughput_max: Flow

    @property
    def continuous(self) -> Flow:
        """Everything but throughput tests: what the link carries whatever the budget."""
        parts = (self.icmp, self.stamp, self.snmp, self.trace)
        return Flow(sum(p.down for p in parts), sum(p.up for p in parts))

    @property
    def total_max(self) -> Flow:
        c = self.continuous
        return Flow(c.down + self.throughput_max.down, c.up + self.throughput_max.up)


def stamp_burst_bytes(settings: ProbeSettings, video_packet_bytes: int) -> float:
    """One STAMP burst, one way (both ways carry the same)."""
    s = settings.stamp
    packets = round(s.rate_pps * s.duration_seconds)
    return packets * (ETHERNET_HEADER + IPV4_HEADER + UDP_HEADER + max(44, video_packet_bytes))


def daily_footprint(
    settings: ProbeSettings,
    *,
    video_packet_bytes: int = 1200,
    contracted_down_mbit: float = 20.0,
    contracted_up_mbit: float = 20.0,
    snmp_request_bytes: float = SNMP_POLL_REQUEST_BYTES,
    snmp_response_bytes: float = SNMP_POLL_RESPONSE_BYTES,
    snmp: bool = True,
    stamp: bool = True,
) -> LinkFootprint:
    """Bytes per day on one village link with these settings (see the module docstring for each term)."""
    icmp_frame = ETHERNET_HEADER + IPV4_HEADER + ICMP_HEADER + settings.icmp.payload_bytes
    echoes = DAY / settings.icmp.interval_seconds
    icmp = Flow(echoes * icmp_frame, echoes * icmp_frame)

    bursts = DAY / settings.stamp.every_seconds if stamp else 0.0
    burst = stamp_burst_bytes(settings, video_packet_bytes)
    stamp_flow = Flow(bursts * burst, bursts * burst)

    polls = DAY / settings.snmp.every_seconds if snmp else 0.0
    snmp_flow = Flow(
        polls * (snmp_request_bytes + ETHERNET_HEADER * SNMP_POLL_PACKETS),
        polls * (snmp_response_bytes + ETHERNET_HEADER * SNMP_POLL_PACKETS),
    )

    traces = DAY / settings.trace.every_seconds
    probes = settings.trace.probes_per_hop + 1
    probe_frame = ETHERNET_HEADER + IPV4_HEADER + ICMP_HEADER + TRACE_PROBE_PAYLOAD
    trace = Flow(traces * probes * probe_frame, traces * probes * probe_frame)

    t = settings.throughput
    per_test_down = t.max_seconds * contracted_down_mbit * 1e6 / 8
    per_test_up = t.max_seconds * contracted_up_mbit * 1e6 / 8
    budget = t.budget_megabytes_per_day * 1e6
    tests = t.tests_per_day
    wanted = tests * (per_test_down + per_test_up)
    scale = min(1.0, budget / wanted) if wanted else 0.0
    throughput = Flow(tests * per_test_down * scale, tests * per_test_up * scale)
    return LinkFootprint(icmp=icmp, stamp=stamp_flow, snmp=snmp_flow, trace=trace, throughput_max=throughput)
