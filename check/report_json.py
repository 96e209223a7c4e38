"""What the check says to a script (`--json`): the same report as stable keys and plain numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from desanet.check.decide import call_outcome, deciding_figure, report_exit_code
from desanet.check.messages import (
    Lang,
    render,
)
from desanet.check.report import Problem, Report
from desanet.check.words import explain
from desanet.district import Profile

if TYPE_CHECKING:
    pass


# ---------------------------------------------------------------------------------------------- JSON
def to_json(report: Report, lang: Lang) -> dict[str, Any]:
    """The same figures for scripts, plus `verdict`, `limiting` and `exit_code`. SI units throughout."""
    ex = explain(report, lang)
    v, r, ch = report.village, report.readiness, report.choice
    m = report.measurements
    icmp = report.icmp.to_dict() if report.icmp is not None else None
    stamp = report.stamp.to_dict() if report.stamp is not None else None
    throughput: dict[str, Any] | None = None
    if report.throughput is not None:
        tp = report.throughput
        throughput = {"method": tp.method}
        for name, d, offered in (
            ("down", tp.down, tp.offered_down_bits_per_second),
            ("up", tp.up, tp.offered_up_bits_per_second),
        ):
            throughput[name] = None if d is None else {**d.to_dict(), "offered_bits_per_second": offered}
    snmp = None
    if report.snmp is not None:
        s = report.snmp
        snmp = {
            "success": s.success,
            "error": s.error,
            "uptime_seconds": s.uptime_seconds,
            "port": None
            if report.port is None
            else {
                "name": report.port.name,
                "up": report.port.up,
                "speed_bits_per_second": report.port.speed_bits_per_second,
                "rate_bits_per_second": report.port.rate_bits_per_second,
                "headroom_bits_per_second": report.port.headroom_bits_per_second,
                "new_errors": report.port.new_errors,
            },
            "optics": [
                {"name": o.name, "rx_power_dbm": o.rx_power_dbm, "tx_power_dbm": o.tx_power_dbm, "rx_loss": o.rx_loss}
                for o in s.optics
            ],
        }
    return {
        "village": v.slug,
        "name": v.name,
        "kecamatan": v.kecamatan,
        "address": v.address,
        "profile": report.profile.name,
        "profile_source": ch.source,
        "session": None
        if ch.session is None
        else {"title": ch.session.title, "start": ch.start.isoformat() if ch.start else None},
        "verdict": report.verdict,
        "limiting": report.limiting,
        "exit_code": report_exit_code(report),
        "error": None
        if report.problem is None
        else {
            "code": report.problem.code,
            "message": render(report.problem.key, report.problem.values, lang),
            "detail": report.problem.detail,
            "candidates": list(report.problem.candidates),
        },
        "explanation": ex.why,
        "also": ex.also,
        "advice": ex.advice,
        "notes": ex.notes,
        "notes_detail": [{"key": n.key, "detail": n.detail} for n in report.notes],
        "mos": r.mos if r is not None else None,
        "figures": {
            "rtt_p95_seconds": m.rtt_p95_seconds,
            "jitter_seconds": m.jitter_seconds,
            "loss_ratio": m.loss_ratio,
            "burst_loss_ratio": m.burst_loss_ratio,
            "down_bits_per_second": m.down_bits_per_second,
            "up_bits_per_second": m.up_bits_per_second,
            "interface_headroom_bits_per_second": m.interface_headroom_bits_per_second,
        },
        "sources": report.sources,
        "checks": [
            {
                "factor": c.factor,
                "state": c.state,
                "reason": c.reason,
                "value": c.value,
                "unit": c.unit,
                "limit": c.limit,
                "fail_limit": c.fail_limit,
            }
            for c in (r.checks if r is not None else ())
        ],
        "icmp": icmp,
        "stamp": stamp,
        "throughput": throughput,
        "snmp": snmp,
        "trace": report.trace.to_dict() if report.trace is not None else None,
        "call_stream": report.call_stream.to_dict() if report.call_stream is not None else None,
        "history": None
        if report.history is None
        else [
            {"days_ago": d.days_ago, "at": d.day.isoformat(), "ready_share": d.ready_share, "loss_ratio": d.loss_ratio}
            for d in report.history
        ],
        "call": call_json(report),
        "timings": report.timings,
        "elapsed_seconds": report.elapsed_seconds,
        "lang": lang,
    }


def call_json(report: Report) -> dict[str, Any] | None:
    """The village's last rehearsal call as Prometheus had it, or None (no call in the last 24 h, or no
    `--prometheus`). Per direction: the outcome, the figure that decided it, and every figure, SI units."""
    c = report.call
    if c is None:
        return None
    try:
        profile: Profile | None = report.inventory.profile(c.profile or "")
    except KeyError:
        profile = None
    directions: dict[str, Any] = {}
    for name, d in c.directions.items():
        f = deciding_figure(d, profile)
        directions[name] = {
            "outcome": d.outcome,
            "deciding": None
            if f is None
            else {
                "figure": f.figure,
                "value": f.value,
                "state": f.state,
                "limit": f.limit,
                "fail_limit": f.fail_limit,
                "higher_is_worse": f.higher_is_worse,
            },
            "limitation": d.limitation,
            "frames_per_second": d.frames_per_second,
            "video_height_pixels": d.video_height_pixels,
            "freeze_ratio": d.freeze_ratio,
            "audio_concealment_ratio": d.audio_concealment_ratio,
            "video_loss_ratio": d.video_loss_ratio,
            "jitter_buffer_delay_seconds": d.jitter_buffer_delay_seconds,
            "video_received_bits_per_second": d.video_received_bits_per_second,
        }
    return {
        "ended": c.ended.isoformat(),
        "ago_seconds": round(max(0.0, (report.started - c.ended).total_seconds()), 1),
        "profile": c.profile,
        "connected": c.connected,
        "setup_seconds": c.setup_seconds,
        "outcome": call_outcome(c.directions),
        "directions": directions,
    }


def problem_json(problem: Problem, lang: Lang) -> dict[str, Any]:
    """The JSON of a check that could not start (bad name, inventory, profile)."""
    return {
        "village": None,
        "verdict": "unknown",
        "limiting": None,
        "exit_code": 2,
        "error": {
            "code": problem.code,
            "message": render(problem.key, problem.values, lang),
            "detail": problem.detail,
            "candidates": list(problem.candidates),
        },
        "lang": lang,
    }
