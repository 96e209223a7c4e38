"""lab/linkstats.py's arithmetic, without a lab: counters that restart, drops by cause, the window's edges.

The sampler's figures are ground truth for the lab's caps, so the bookkeeping that turns cumulative kernel
counters into per-window figures is held to exact numbers here (the lab tests check it against iperf3 and ping).
"""

from __future__ import annotations

from desanet.lab.linkstats import TC_H_ROOT, Direction, DirSpec, Raw, summarise


def _spec(*, rate: float | None = 20.0, rules_after: bool = False) -> DirSpec:
    return DirSpec(
        key="v:x:down",
        ns="dn-k1",
        qdisc_if="v1",
        qdisc_parent=TC_H_ROOT,
        iface="v1",
        iface_rx=False,
        rules_after_count=rules_after,
        rate_mbit=rate,
        buffer_ms=30.0 if rate else None,
        loss_counter="loss_v1_down",
        cut_counter="cut_v1_down",
    )


def test_window_differences_and_a_recreated_qdisc() -> None:
    d = Direction(_spec())
    d.add(Raw(100.0, (1000, 10, 0, 0, 0), None, None, None))
    d.add(Raw(101.0, (3000, 30, 2, 0, 0), None, None, None))
    # The qdisc was replaced (an impair from uncapped): its counters start again from zero and count anew.
    d.add(Raw(102.0, (500, 5, 1, 0, 0), None, None, None))
    s = summarise(d, since=100.5)  # from the last sample at or before 100.5 (t=100) to the latest
    assert s["seconds"] == 2.0
    assert (s["passed_bytes"], s["passed_packets"], s["dropped_queue_packets"]) == (2500, 25, 3)
    assert s["offered_packets"] == 25 + 3
    assert s["offered_bytes"] == 2500 + 3 * 100  # queue drops estimated at the passed frames' mean size
    assert s["passed_mbit"] == 2500 * 8 / 2 / 1e6


def test_queue_delay_is_backlog_over_the_cap_while_busy() -> None:
    d = Direction(_spec(rate=8.0))  # 1 MB/s
    busy = [
        d.add(Raw(10.0, (0, 0, 0, 0, 0), None, None, None)),
        d.add(Raw(10.05, (50_000, 40, 0, 30_000, 20), None, None, None)),  # 30 kB queued: 30 ms
        d.add(Raw(10.10, (100_000, 80, 0, 10_000, 7), None, None, None)),  # 10 ms
        d.add(Raw(11.10, (100_000, 80, 0, 0, 0), None, None, None)),  # idle: not a queue sample
    ]
    assert busy == [False, True, True, False]
    s = summarise(d, since=0)
    assert s["queue_samples"] == 2
    assert abs(s["queue_delay_ms_p50"] - 20.0) < 1e-9 and abs(s["queue_delay_ms_max"] - 30.0) < 1e-9
    assert s["backlog_bytes"] == 0


def test_rule_drops_counted_before_the_cap_are_not_passed() -> None:
    """An upward uplink is counted at the ifb, before the core's loss and cut rules: their drops come off."""
    d = Direction(_spec(rules_after=True))
    d.add(Raw(0.0, (0, 0, 0, 0, 0), None, (0, 0), (0, 0)))
    d.add(Raw(1.0, (15_140, 10, 0, 0, 0), None, None, None))  # rule counters not read this time
    d.add(Raw(2.0, (30_280, 20, 0, 0, 0), None, (4, 4 * 1500), None))
    s = summarise(d, since=0)
    assert (s["dropped_loss_packets"], s["dropped_loss_bytes"]) == (4, 4 * 1514)
    assert (s["passed_packets"], s["passed_bytes"]) == (16, 30_280 - 4 * 1514)
    assert s["offered_packets"] == 20


def test_uncapped_direction_counts_the_interface_and_has_no_queue() -> None:
    d = Direction(_spec(rate=None))
    d.add(Raw(0.0, None, (0, 0), None, None))
    d.add(Raw(1.0, None, (1_000_000, 700), None, (3, 300)))  # a cut set after the sampler started
    s = summarise(d, since=0)
    assert (s["passed_bytes"], s["dropped_blackhole_packets"], s["dropped_queue_packets"]) == (1_000_000, 3, 0)
    assert s["cap_mbit"] is None and s["queue_delay_source"] is None and s["queue_samples"] == 0


def test_too_little_history_gives_nulls_not_zeros() -> None:
    d = Direction(_spec())
    assert summarise(d, since=0)["passed_bytes"] is None
    d.add(Raw(0.0, (0, 0, 0, 0, 0), None, None, None))
    assert summarise(d, since=0)["offered_packets"] is None
