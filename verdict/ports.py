"""The router's busiest port between two SNMP polls: its rate and the headroom a video call would share.

One computation for the exporter's readiness (scheduler) and the technician's check. Pure: two results and
the seconds between them in, figures out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pysnmp is a heavy import; only the types are needed here
    from desanet.probes.snmp import SnmpInterface, SnmpResult


@dataclass(frozen=True)
class PortActivity:
    """The router's busiest port between two polls: what the call would share."""

    name: str
    up: bool | None
    speed_bits_per_second: float | None
    rate_bits_per_second: float | None  # the busier direction
    headroom_bits_per_second: float | None
    new_errors: int | None


_LOOPBACK = re.compile(r"(lo|loopback)[\d.:]*", re.IGNORECASE)


def is_loopback(name: str | None) -> bool:
    """A loopback by its name (lo, lo0, Loopback0; Linux, RouterOS, Junos, IOS): IF-MIB's ifType would say so,
    but the poller reads names only."""
    return bool(name) and _LOOPBACK.fullmatch(name or "") is not None


def busiest_port(before: SnmpResult | None, after: SnmpResult | None, seconds: float) -> PortActivity | None:
    """Speed minus the busier direction's rate on the busiest non-loopback port.

    With one poll only, the first non-loopback port is reported without rates."""
    cur = after if after is not None and after.success else before
    if cur is None or not cur.success:
        return None
    ports = [i for i in cur.interfaces if not is_loopback(i.name)]
    if not ports:
        return None
    prev = {i.index: i for i in before.interfaces} if before is not None and before.success and cur is after else {}
    best: tuple[float, SnmpInterface, SnmpInterface | None] | None = None
    for i in ports:
        p = prev.get(i.index)
        rate = -1.0
        if p is not None and seconds > 0 and None not in (i.in_octets, p.in_octets, i.out_octets, p.out_octets):
            moved = max((i.in_octets or 0) - (p.in_octets or 0), (i.out_octets or 0) - (p.out_octets or 0), 0)
            rate = moved * 8 / seconds
        if best is None or rate > best[0]:
            best = (rate, i, p)
    assert best is not None
    rate, i, p = best
    known_rate = rate if rate >= 0 else None
    headroom = None
    if known_rate is not None and i.speed_bits_per_second:
        headroom = max(0.0, i.speed_bits_per_second - known_rate)
    new_errors = None
    if p is not None:
        pairs = [(i.in_errors, p.in_errors), (i.out_errors, p.out_errors)]
        if all(a is not None and b is not None for a, b in pairs):
            new_errors = sum(max(0, (a or 0) - (b or 0)) for a, b in pairs)
    return PortActivity(i.name or f"if{i.index}", i.oper_up, i.speed_bits_per_second, known_rate, headroom, new_errors)
