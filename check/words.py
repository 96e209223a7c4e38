"""What the check says to a person: the verdict's reasons, advice and notes in English or Bahasa Indonesia."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from desanet.check.decide import deciding_figure, locate_step
from desanet.check.messages import (
    Lang,
    fmt_day,
    fmt_dbm,
    fmt_duration,
    fmt_mos,
    fmt_ms,
    fmt_number,
    fmt_pct,
    fmt_rate,
    fmt_when,
    join_words,
    render,
    t,
)
from desanet.check.report import (
    HISTORY_READY_SHARE,
    OPTICAL_RX_WEAK_DBM,
    CallDirection,
    CallFigure,
    Problem,
    ProfileChoice,
    Report,
)
from desanet.district import Profile
from desanet.verdict import readiness as rd

if TYPE_CHECKING:
    pass


# ---------------------------------------------------------------------------------------------- words
@dataclass(frozen=True)
class Explanation:
    """Everything a person reads, in one language. `headline` is the verdict line."""

    header: str
    profile_line: str
    rows: list[tuple[str, str, str, str, str, rd.State]]  # factor, measured, ready if, fails if, state label, state
    headline: str
    why: str
    also: list[str]
    advice: list[str]
    mos: str | None
    path: str | None
    router: list[str]
    history: list[str]
    notes: list[str]
    call: list[str] = field(default_factory=list)  # the last rehearsal call, with --prometheus


def _value(check: rd.Check, x: float, lang: Lang, *, compact: bool = False) -> str:
    if check.unit == "seconds":
        return fmt_ms(x, lang, compact=compact)
    if check.unit == "ratio":
        return fmt_pct(x, lang, compact=compact)
    return fmt_rate(x, lang, compact=compact)


def factor_label(factor: str, lang: Lang) -> str:
    return t(f"factor_{factor}", lang)


def why_line(check: rd.Check, lang: Lang) -> str:
    """The plain-words reason for one non-passing check."""
    if check.reason == "total_loss":
        return t("why_loss_total", lang)
    state = "fail" if check.state == "fail" else "warn"
    assert check.value is not None
    # Bandwidth passes from 1.25 x the profile's minimum and fails only well under it (half, since the
    # calibration against real calls), so neither line is what the profile needs: name that figure too.
    need = check.limit if check.higher_is_worse else check.limit / rd.BANDWIDTH_MARGIN
    return t(
        f"why_{check.factor}_{state}",
        lang,
        value=_value(check, check.value, lang),
        limit=_value(check, check.limit, lang, compact=True),
        fail=_value(check, check.fail_limit, lang, compact=True),
        need=_value(check, need, lang, compact=True),
    )


def bounds_text(check: rd.Check, lang: Lang) -> tuple[str, str]:
    """("≤ 100 ms", "> 150 ms"): where ready ends and not ready begins, in symbols any reader knows."""
    limit = _value(check, check.limit, lang, compact=True)
    fail = _value(check, check.fail_limit, lang, compact=True)
    if check.higher_is_worse:
        return f"≤ {limit}", f"> {fail}"
    return f"≥ {limit}", f"< {fail}"


def _optics_advice(report: Report, lang: Lang) -> list[str]:
    out = []
    snmp = report.snmp
    if snmp is not None and snmp.success:
        for o in snmp.optics:
            name = o.name or f"optic{o.index}"
            if o.rx_loss:
                out.append(t("advice_optics_lost", lang, port=name))
            elif o.rx_power_dbm is not None and o.rx_power_dbm < OPTICAL_RX_WEAK_DBM:
                out.append(
                    t(
                        "advice_optics_weak",
                        lang,
                        rx=fmt_dbm(o.rx_power_dbm, lang),
                        port=name,
                        weak=fmt_dbm(OPTICAL_RX_WEAK_DBM, lang),
                    )
                )
    port = report.port
    if port is not None and port.new_errors:
        out.append(t("advice_port_errors", lang, port=port.name, count=port.new_errors))
    return out


def advice_lines(report: Report, lang: Lang) -> list[str]:
    """What to try, most useful first; each line once."""
    out: list[str] = []
    problem, trace, r = report.problem, report.trace, report.readiness
    if problem is not None and problem.code == "no_permission":
        return [t("advice_permission", lang)]
    if problem is not None and problem.code == "unreachable":
        if trace is not None:
            heard = [h for h in trace.hops if h.received > 0]
            if heard:
                last = heard[-1]
                out.append(t("advice_path_ends", lang, ttl=last.ttl, address=last.address or "*"))
            else:
                out.append(t("advice_path_silent", lang))
        out.append(t("advice_unreachable", lang))
        out += _optics_advice(report, lang)
        return out
    if r is None or r.verdict == "unknown":
        return out
    if trace is not None and trace.degradation is not None and r.verdict != "ready":
        d = trace.degradation
        where = locate_step(trace, report.village.address)
        key = {
            "village": "advice_last_mile",
            "kecamatan": "advice_upstream_kecamatan",
            "core": "advice_upstream_core",
            "upstream": "advice_upstream",
        }[where or "upstream"]
        out.append(t(key, lang, ttl=d.ttl, address=d.address or "*"))
    bad = sorted(
        (c for c in r.checks if c.state in ("warn", "fail")),
        key=lambda c: (c.factor != r.limiting, c.state != "fail", rd.FACTORS.index(c.factor)),
    )
    contracted = report.village.contracted
    for c in bad:
        if c.factor in ("loss", "burst_loss"):
            out += _optics_advice(report, lang)
            out.append(t("advice_fibre" if c.factor == "loss" else "advice_burst", lang))
        elif c.factor == "jitter":
            out.append(t("advice_congestion", lang))
        elif c.factor == "rtt":
            out.append(t("advice_latency", lang))
        elif c.factor in ("down", "up"):
            out.append(t("advice_rate", lang))
            have = contracted.down_mbit if c.factor == "down" else contracted.up_mbit
            need = report.profile.min_down_mbit if c.factor == "down" else report.profile.min_up_mbit
            contract = fmt_rate(have * 1e6, lang, compact=True)
            if have < need:
                out.append(
                    t("advice_contract_low", lang, contract=contract, need=fmt_rate(need * 1e6, lang, compact=True))
                )
            else:
                out.append(t("advice_contract_ok", lang, contract=contract))
        elif c.factor == "headroom":
            out.append(t("advice_headroom", lang))
    if r.verdict == "ready":
        out.append(t("advice_ready", lang))
        out += _optics_advice(report, lang)  # an early warning while it still works
    return list(dict.fromkeys(out))


def path_line(report: Report, lang: Lang) -> str | None:
    trace = report.trace
    if trace is None:
        return None
    d = trace.degradation
    heard = [h for h in trace.hops if h.received > 0]
    if not trace.reached:
        if not heard:
            return t("path_silent", lang)
        last = heard[-1]
        if d is None:
            return t("path_not_reached", lang, ttl=last.ttl, address=last.address or "*")
    if d is None:
        return t("path_clean", lang, hops=len(trace.hops))
    what = "step_both" if len(d.reasons) > 1 else f"step_{d.reasons[0]}" if d.reasons else "step_latency"
    where = locate_step(trace, report.village.address) or "upstream"
    return t(
        "path_step",
        lang,
        what=t(what, lang),
        ttl=d.ttl,
        address=d.address or "*",
        where=t(f"where_{where}", lang),
    )


def router_lines(report: Report, lang: Lang) -> list[str]:
    snmp, port = report.snmp, report.port
    if snmp is None or not snmp.success:
        return []
    out = []
    if port is not None:
        out.append(
            t(
                "router_line" if port.new_errors is not None else "router_line_short",
                lang,
                uptime=fmt_duration(snmp.uptime_seconds or 0.0, lang),
                port=port.name,
                state=t("port_up" if port.up else "port_down", lang),
                speed=fmt_rate(port.speed_bits_per_second, lang) if port.speed_bits_per_second else "?",
                errors=port.new_errors,
            )
        )
    for o in snmp.optics:
        where = o.name or f"optic{o.index}"
        tx = "?" if o.tx_power_dbm is None else fmt_dbm(o.tx_power_dbm, lang)
        if o.rx_loss:  # a dead fibre: no reading (or one at the DOM's floor); "weak" would undersell it
            out.append(t("optics_line_no_light", lang, port=where, tx=tx))
            continue
        rx = "?" if o.rx_power_dbm is None else fmt_dbm(o.rx_power_dbm, lang)
        if o.rx_power_dbm is not None and o.rx_power_dbm < OPTICAL_RX_WEAK_DBM:
            rx += " " + t("optics_weak", lang)
        out.append(t("optics_line", lang, port=where, rx=rx, tx=tx))
    return out


def history_lines(report: Report, lang: Lang) -> list[str]:
    days = report.history
    if days is None:
        return []
    with_data = [d for d in days if d.ready_share is not None or d.loss_ratio is not None]
    if not with_data:
        return [t("history_empty", lang, days=len(days))]
    out = [t("history_title", lang)]
    for d in days:
        label = fmt_day(d.day, lang)
        if d.ready_share is None and d.loss_ratio is None:
            out.append(t("history_row_no_data", lang, day=label))
        else:
            out.append(
                t(
                    "history_row",
                    lang,
                    day=label,
                    ready="?" if d.ready_share is None else fmt_pct(d.ready_share, lang),
                    loss="?" if d.loss_ratio is None else fmt_pct(d.loss_ratio, lang),
                )
            )
    judged = [d for d in days if d.ready_share is not None]
    good = sum(1 for d in judged if (d.ready_share or 0) >= HISTORY_READY_SHARE)
    out.append(t("history_summary", lang, good=good, days=len(judged)))
    return out


def call_figure_text(f: CallFigure, profile: Profile | None, lang: Lang) -> str:
    """ "video frozen 3.4 % of the time (holds up to 2 %, fails above 10 %)" and the like."""
    if f.figure in ("freeze", "concealment"):
        value, limit, fail = (
            fmt_pct(f.value, lang),
            fmt_pct(f.limit, lang, compact=True),
            fmt_pct(f.fail_limit, lang, compact=True),
        )
    else:
        value, limit, fail = (fmt_number(x, lang) for x in (f.value, f.limit, f.fail_limit))
    bound = t("call_bound_le" if f.higher_is_worse else "call_bound_ge", lang, limit=limit, fail=fail)
    extra = {"profile_height": profile.video_height} if f.figure == "height" and profile is not None else {}
    return t(f"call_fig_{f.figure}", lang, value=value, bound=bound, **extra)


def call_direction_line(d: CallDirection, connected: bool, profile: Profile | None, lang: Lang) -> str:
    """One direction: its outcome and the figure that decided it, and what held its sender back."""
    direction = t(f"call_dir_{d.direction}", lang)
    outcome = t(f"call_outcome_{d.outcome}", lang)
    f = deciding_figure(d, profile)
    if not connected and d.outcome == "fails":
        line = t("call_line_not_connected", lang, direction=direction, outcome=outcome)
    elif f is not None:
        key = "call_line_holds" if d.outcome == "holds" else "call_line"
        line = t(key, lang, direction=direction, outcome=outcome, figure=call_figure_text(f, profile, lang))
    elif d.outcome == "fails" and d.frames_per_second is None and d.video_height_pixels is None:
        line = t("call_line_no_video", lang, direction=direction, outcome=outcome)
    else:
        line = t("call_line_plain", lang, direction=direction, outcome=outcome)
    if d.limitation in ("bandwidth", "cpu", "other"):
        line += " " + t("call_limited", lang, reason=t(f"limitation_{d.limitation}", lang))
    return line


def call_lines(report: Report, lang: Lang) -> list[str]:
    """The village's last rehearsal call (with --prometheus): when, and each direction's outcome and why."""
    if not report.call_fetched:
        return []
    c = report.call
    if c is None:
        return [t("call_none", lang)]
    try:
        profile: Profile | None = report.inventory.profile(c.profile or "")
    except KeyError:
        profile = None  # no longer in the inventory: frame rate and height are not judged again
    ago = max(0.0, (report.started - c.ended).total_seconds())
    out = [
        t(
            "call_title",
            lang,
            profile=c.profile or "?",
            when=fmt_when(c.ended.astimezone(report.started.tzinfo), lang),
            ago=fmt_duration(ago, lang),
        )
    ]
    for name in ("up", "down"):
        if name in c.directions:
            out.append(call_direction_line(c.directions[name], c.connected, profile, lang))
    return out


def note_lines(report: Report, lang: Lang) -> list[str]:
    out = []
    english_details = False
    for n in report.notes:
        line = render(n.key, n.values, lang)
        if n.detail:
            if lang == "en":
                line += f" ({n.detail})"
            else:
                english_details = True
        out.append(line)
    r = report.readiness
    if r is not None and r.verdict != "unknown" and report.problem is None:
        missing = [factor_label(c.factor, lang) for c in r.checks if c.state == "unmeasured"]
        if missing:
            out.append(t("note_unmeasured", lang, factors=join_words(missing, lang)))
    if english_details:
        out.append(t("detail_elsewhere", lang))
    return out


def problem_text(problem: Problem, lang: Lang) -> str:
    text = render(problem.key, problem.values, lang)
    if problem.detail and lang == "en" and problem.code == "inventory":
        text += ":\n" + problem.detail
    return text


def profile_source_text(choice: ProfileChoice, lang: Lang) -> str:
    if choice.source in ("session", "session_now") and choice.session is not None:
        values: dict[str, Any] = {"title": choice.session.title}
        if choice.source == "session" and choice.start is not None:
            values["when"] = fmt_when(choice.start, lang)
        return t(f"source_{choice.source}", lang, **values)
    return t(f"source_{choice.source}", lang)


def explain(report: Report, lang: Lang) -> Explanation:
    """The report in words: header, table rows, verdict line, why, what to try, notes."""
    v, p, r = report.village, report.profile, report.readiness
    header = t("header", lang, kind=v.kind, name=v.name, slug=v.slug, kecamatan=v.kecamatan, address=v.address)
    profile_line = t(
        "profile_line",
        lang,
        profile=p.name,
        source=profile_source_text(report.choice, lang),
        down=fmt_rate(p.min_down_mbit * 1e6, lang, compact=True),
        up=fmt_rate(p.min_up_mbit * 1e6, lang, compact=True),
    )
    rows = []
    for c in r.checks if r is not None else ():
        measured = "—" if c.value is None else _value(c, c.value, lang)
        ready_if, fails_if = bounds_text(c, lang)
        rows.append((factor_label(c.factor, lang), measured, ready_if, fails_if, t(f"state_{c.state}", lang), c.state))
    why, also = t("why_unknown", lang), []
    if report.problem is not None:
        headline = t("cannot_measure_line", lang, name=v.name, reason=problem_text(report.problem, lang))
        if r is not None and r.verdict != "unknown" and report.problem.code == "unreachable":
            why = t("why_loss_total", lang)
    else:
        verdict = report.verdict
        headline = t("verdict_line", lang, verdict=t(f"verdict_{verdict}", lang), profile=p.name, name=v.name)
        if r is not None and r.limiting is not None:
            lim = r.check(r.limiting)
            if r.verdict == "ready":
                assert lim.value is not None
                why = t(
                    "why_ready",
                    lang,
                    factor=factor_label(lim.factor, lang),
                    value=_value(lim, lim.value, lang),
                    limit=_value(lim, lim.limit, lang, compact=True),
                )
            else:
                why = why_line(lim, lang)
                also = [why_line(c, lang) for c in r.checks if c.state in ("warn", "fail") and c.factor != r.limiting]
    mos = None
    if r is not None and r.mos is not None and report.problem is None:
        mos = t("mos_line", lang, mos=fmt_mos(r.mos, lang))
    return Explanation(
        header=header,
        profile_line=profile_line,
        rows=rows,
        headline=headline,
        why=why,
        also=also,
        advice=advice_lines(report, lang),
        mos=mos,
        path=path_line(report, lang),
        router=router_lines(report, lang),
        history=history_lines(report, lang),
        notes=note_lines(report, lang),
        call=call_lines(report, lang),
    )
