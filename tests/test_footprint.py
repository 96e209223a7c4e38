"""budget/footprint.py: desanet's own bytes per day on a village link, worked out by hand from the defaults."""

from __future__ import annotations

import pytest

from desanet.budget.footprint import daily_footprint
from desanet.district.model import ProbeSettings, ThroughputSettings


def test_defaults_by_hand() -> None:
    fp = daily_footprint(ProbeSettings())
    # ICMP: one 56-octet echo a second each way; 14 Ethernet + 20 IP + 8 ICMP + 56 = 98 octets.
    assert fp.icmp.down == fp.icmp.up == 86400 * 98
    # STAMP: 288 bursts a day of 5 s x 50 pps, 1200-octet payloads: 14 + 20 + 8 + 1200 = 1242 octets each way.
    assert fp.stamp.down == fp.stamp.up == 288 * 250 * 1242
    # Trace: 288 a day; the discovery probe and 3 probes reach the village, 14 + 20 + 8 + 16 octets, echoed.
    assert fp.trace.down == fp.trace.up == 288 * 4 * 58
    # Throughput: 4 tests of at most 5 s each way at 20 Mbit/s = 12.5 MB a direction a test, under the 500 MB.
    assert fp.throughput_max.down == fp.throughput_max.up == 4 * 12.5e6
    # SNMP: 2,880 polls; the request goes down, the answer up.
    assert fp.snmp.up > fp.snmp.down > 0
    assert fp.total_max.total == pytest.approx(fp.continuous.total + 100e6)


def test_budget_bounds_throughput() -> None:
    s = ProbeSettings(throughput=ThroughputSettings(budget_megabytes_per_day=60))
    fp = daily_footprint(s, contracted_down_mbit=100, contracted_up_mbit=20)
    # Wanted 4 x 5 s x (100 + 20) Mbit/s / 8 = 300 MB; the budget allows 60 MB, in the same 5:1 proportion.
    assert fp.throughput_max.total == pytest.approx(60e6)
    assert fp.throughput_max.down == pytest.approx(50e6)


def test_off_probes_cost_nothing() -> None:
    s = ProbeSettings(throughput=ThroughputSettings(tests_per_day=0))
    fp = daily_footprint(s, snmp=False, stamp=False)
    assert fp.throughput_max.total == fp.snmp.total == fp.stamp.total == 0
