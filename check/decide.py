"""What the check decides: which village and profile, which figure feeds which factor, where on the path a
step lies, and the exit code. Pure: no I/O beyond reading the inventory."""

from __future__ import annotations

import contextlib
import ipaddress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from desanet.check.report import (
    UDP_OVERSHOOT,
    CallDirection,
    CallFigure,
    CheckError,
    Location,
    Problem,
    ProfileChoice,
    Report,
    ThroughputOutcome,
)
from desanet.district import Inventory, InventoryError, Profile, Village, load_inventory
from desanet.probes.icmp import IcmpResult
from desanet.probes.stamp import StampResult
from desanet.verdict import readiness as rd
from desanet.verdict.call_outcome import OUTCOMES, Limits, Outcome
from desanet.verdict.ports import PortActivity

if TYPE_CHECKING:
    from desanet.probes.trace import TraceResult


# ---------------------------------------------------------------------------------------------- name → village
def load_village(text: str, inventory_path: Path | None = None) -> tuple[Inventory, Village]:
    """The inventory and the village `text` names (slug, name, small misspelling, or its router's address)."""
    from desanet.district import default_inventory_path
    from desanet.district.targets import TargetError, find_village

    path = inventory_path or default_inventory_path()
    try:
        inv = load_inventory(path)
    except InventoryError as exc:
        raise CheckError(Problem("inventory", "err_inventory", {"path": str(path)}, detail=str(exc))) from None
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(text.strip())
        for v in inv.villages:
            if v.router == address:
                return inv, v
        raise CheckError(Problem("unknown_village", "err_unknown_village", {"text": text}))
    try:
        return inv, find_village(inv, text)
    except TargetError as exc:
        # find_village says "ambiguous" in its message when more than one village fits equally well.
        ambiguous = "ambiguous" in str(exc)
        raise CheckError(
            Problem(
                "ambiguous_village" if ambiguous else "unknown_village",
                "err_ambiguous_village" if ambiguous else "err_unknown_village",
                {"text": text},
                detail=str(exc),
                candidates=tuple(exc.candidates),
            )
        ) from None


def choose_profile(inv: Inventory, village: Village, now: datetime, name: str | None = None) -> ProfileChoice:
    """--profile, else the profile of the village's next (or running) session, else the village's own/default."""
    if name is not None:
        try:
            return ProfileChoice(inv.profile(name), "option")
        except KeyError:
            known = ", ".join(p.name for p in inv.profiles)
            raise CheckError(
                Problem("unknown_profile", "err_unknown_profile", {"name": name, "known": known})
            ) from None
    upcoming = inv.next_session(village, now)
    if upcoming is not None and upcoming[0].profile is not None:
        session, start = upcoming
        with contextlib.suppress(KeyError):
            return ProfileChoice(
                inv.profile(session.profile or ""), "session_now" if start <= now else "session", session, start
            )
    return ProfileChoice(inv.profile_for(village), "village" if village.profile else "default")


def measurements_from(
    icmp: IcmpResult | None,
    stamp: StampResult | None,
    throughput: ThroughputOutcome | None = None,
    port: PortActivity | None = None,
) -> tuple[rd.Measurements, dict[str, str]]:
    """The readiness inputs and, per factor, which probe gave it (see the module docstring for the choices)."""
    src: dict[str, str] = {}
    icmp_ok = icmp is not None and icmp.sent > 0
    stamp_ok = stamp is not None and stamp.sent > 0
    rtt = jitter = loss = burst = None
    if icmp_ok and icmp is not None and icmp.rtt is not None:
        rtt, src["rtt"] = icmp.rtt.p95, "icmp"
    elif stamp_ok and stamp is not None and stamp.rtt is not None:
        rtt, src["rtt"] = stamp.rtt.p95, "stamp"
    if stamp_ok and stamp is not None:
        one_way = [j for j in (stamp.forward.jitter_seconds, stamp.backward.jitter_seconds) if j is not None]
        if one_way:
            jitter, src["jitter"] = max(one_way), "stamp"
    if jitter is None and icmp_ok and icmp is not None and icmp.jitter_seconds is not None:
        jitter, src["jitter"] = icmp.jitter_seconds, "icmp"
    if jitter is None and stamp_ok and stamp is not None and stamp.jitter_seconds is not None:
        jitter, src["jitter"] = stamp.jitter_seconds, "stamp"
    pools = [(r.sent, r.received, name) for r, name in ((icmp, "icmp"), (stamp, "stamp")) if r is not None and r.sent]
    if pools:
        sent = sum(p[0] for p in pools)
        received = sum(min(p[1], p[0]) for p in pools)
        loss, src["loss"] = (sent - received) / sent, "+".join(p[2] for p in pools)
    bursts = [(r.burst_loss_ratio, n) for r, n in ((icmp, "icmp"), (stamp, "stamp")) if r is not None]
    bursts_known = [(b, n) for b, n in bursts if b is not None]
    if bursts_known:
        burst, src["burst_loss"] = max(bursts_known)
    down = up = None
    if throughput is not None:
        if throughput.down is not None:
            down, src["down"] = throughput.down.bits_per_second, throughput.method
        if throughput.up is not None:
            up, src["up"] = throughput.up.bits_per_second, throughput.method
    headroom = None
    if port is not None and port.headroom_bits_per_second is not None:
        headroom, src["headroom"] = port.headroom_bits_per_second, "snmp"
    m = rd.Measurements(
        rtt_p95_seconds=rtt,
        jitter_seconds=jitter,
        loss_ratio=loss,
        burst_loss_ratio=burst,
        down_bits_per_second=down,
        up_bits_per_second=up,
        interface_headroom_bits_per_second=headroom,
    )
    return m, src


def reachable(icmp: IcmpResult | None, stamp: StampResult | None) -> bool | None:
    """True if anything answered, False if something was sent and nothing answered, None if nothing ran."""
    ran = [r for r in (icmp, stamp) if r is not None and r.sent > 0]
    if not ran:
        return None
    return any(r.received > 0 for r in ran)


LATENCY_FACTORS: Final = ("rtt", "jitter", "loss", "burst_loss")


def path_degraded(readiness: rd.Readiness) -> bool:
    """Whether latency, jitter or loss are anything but a pass: worth a path trace."""
    return any(c.state in ("warn", "fail") for c in readiness.checks if c.factor in LATENCY_FACTORS)


# ---------------------------------------------------------------------------------------------- the path
def locate_step(trace: TraceResult, router: str) -> Location | None:
    """Where the trace's degraded hop lies, in the district's terms; None for a clean path.

    Hop k degraded means the step lies on the link into k: into the village router is the village's own link;
    into the hop just before it (the kecamatan router) is the kecamatan uplink; earlier is the district network.
    Without the village router in the trace, only "before the village router" can be said.
    """
    d = trace.degradation
    if d is None:
        return None
    if d.address == router:
        return "village"
    village_ttl = next((h.ttl for h in trace.hops if h.reached or h.address == router), None)
    if village_ttl is None:
        return "upstream"
    return "kecamatan" if d.ttl == village_ttl - 1 else "core" if d.ttl < village_ttl - 1 else "village"


def exit_code(verdict: rd.Verdict, problem: Problem | None) -> int:
    """0 ready; 1 at risk or not ready; 2 could not measure (a problem, or nothing measured)."""
    if problem is not None:
        return 2
    return {"ready": 0, "at_risk": 1, "not_ready": 1}.get(verdict, 2)


def report_exit_code(report: Report) -> int:
    return exit_code(report.verdict, report.problem)


def judge(report: Report) -> None:
    report.measurements, report.sources = measurements_from(report.icmp, report.stamp, report.throughput, report.port)
    report.readiness = rd.assess(report.measurements, report.profile)


def offered_rates(profile: Profile) -> tuple[float, float]:
    """The UDP rehearsal's rate each way: 1.1 × readiness's pass line, so a clean link passes with room."""
    k = rd.BANDWIDTH_MARGIN * UDP_OVERSHOOT * 1e6
    return profile.min_down_mbit * k, profile.min_up_mbit * k


# ---------------------------------------------------------------------------------------------- the last call
CALL_LIMITS: Final = Limits()


def call_figures(d: CallDirection, profile: Profile | None, limits: Limits = CALL_LIMITS) -> list[CallFigure]:
    """Each judged figure of a call direction against the limits verdict/call_outcome.py judged it by, in the
    order it lists reasons (freeze, frame rate, height, audio). Frame rate and height are judged against the
    call's profile, so without it (a profile no longer in the inventory) only the frame-rate floor counts and
    the height is left out."""
    out: list[CallFigure] = []

    def add(figure: Any, value: float | None, hold: float, fail: float, higher_is_worse: bool) -> None:
        if value is None:
            return
        state: Outcome
        if higher_is_worse:
            state = "fails" if value > fail else "degraded" if value > hold else "holds"
        else:
            state = "fails" if value < fail else "degraded" if value < hold else "holds"
        out.append(CallFigure(figure, value, state, hold, fail, higher_is_worse))

    add("freeze", d.freeze_ratio, limits.hold_freeze_ratio, limits.fail_freeze_ratio, True)
    fps_hold = limits.fail_fps if profile is None else limits.hold_fps_ratio * profile.video_fps
    add("fps", d.frames_per_second, max(fps_hold, limits.fail_fps), limits.fail_fps, False)
    if profile is not None:
        h = profile.video_height
        add("height", d.video_height_pixels, limits.hold_height_ratio * h, limits.fail_height_ratio * h, False)
    add("concealment", d.audio_concealment_ratio, limits.hold_concealment, limits.fail_concealment, True)
    return out


def deciding_figure(d: CallDirection, profile: Profile | None, limits: Limits = CALL_LIMITS) -> CallFigure | None:
    """The figure behind the direction's outcome: the first one in that state (the judge's first reason); for a
    direction that held, the one closest to its limit. None when no figure is in the published state (no video
    arrived, or the profile changed since the call)."""
    figures = call_figures(d, profile, limits)
    if d.outcome != "holds":
        return next((f for f in figures if f.state == d.outcome), None)

    def closeness(f: CallFigure) -> float:
        if f.higher_is_worse:
            return f.value / f.limit if f.limit > 0 else 0.0
        return f.limit / f.value if f.value > 0 else float("inf")

    return max(figures, key=closeness, default=None)


def call_outcome(directions: dict[str, CallDirection]) -> str:
    """The call's outcome: its worse direction's."""
    return max((d.outcome for d in directions.values()), key=OUTCOMES.index, default="fails")
