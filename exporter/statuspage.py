"""`/`: every village with its verdict and last figures, and a village's recent probe log.

Plain server-rendered HTML with inline CSS, so it works on a technician's phone over a weak hotspot and
needs nothing but the exporter. Escaped throughout: village names and errors come from outside."""

from __future__ import annotations

import html
import time
from datetime import datetime
from typing import Any

from desanet.exporter.state import VillageState

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;padding:.5rem;background:#fafafa;color:#222}
h1{font-size:1.2rem;margin:.3rem 0} h2{font-size:1rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;width:100%;font-size:.85rem;background:#fff}
th,td{padding:.3rem .4rem;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}
th{background:#eee;position:sticky;top:0} td.n{text-align:right;font-variant-numeric:tabular-nums}
.v{font-weight:600;border-radius:.3rem;padding:.1rem .4rem;color:#fff}
.ready{background:#2e7d32}.at_risk{background:#ef8f00}.not_ready{background:#c62828}.unknown{background:#777}
.wrap{overflow-x:auto} .bad{color:#c62828} .summary span{margin-right:.8rem}
a{color:#1565c0;text-decoration:none} small{color:#666}
@media (max-width:600px){.opt{display:none}}
"""


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1e3:.1f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f}"


def _mbit(v: float | None) -> str:
    return "–" if v is None else f"{v / 1e6:.1f}"


def _verdict(vs: VillageState) -> tuple[str, str, Any]:
    if not vs.readiness:
        return "unknown", "", None
    worst = max(vs.readiness.values(), key=lambda r: ("ready", "unknown", "at_risk", "not_ready").index(r.verdict))
    # A ready village's "limiting" factor is only the one nearest its limit: not worth a NOC's attention here.
    return worst.verdict, "" if worst.verdict == "ready" else (worst.limiting or ""), worst


def render_index(villages: list[VillageState], district: str, started: float, reload_ok: bool) -> str:
    rows = []
    counts = {"ready": 0, "at_risk": 0, "not_ready": 0, "unknown": 0}
    order = {"not_ready": 0, "at_risk": 1, "unknown": 2, "ready": 3}
    ranked = sorted(villages, key=lambda vs: (order[_verdict(vs)[0]], vs.village.kecamatan, vs.slug))
    for vs in ranked:
        verdict, limiting, r = _verdict(vs)
        counts[verdict] += 1
        w = vs.icmp_window
        rtt = w.rtt if w is not None else None
        down = vs.throughput.get("down")
        up = vs.throughput.get("up")
        session = ""
        if vs.next_session is not None:
            s, start = vs.next_session
            session = f"{html.escape(s.title)} <small>{start:%a %d %b %H:%M}</small>"
        rows.append(
            "<tr>"
            f'<td><a href="/?village={html.escape(vs.slug)}">{html.escape(vs.village.name)}</a></td>'
            f'<td class="opt">{html.escape(vs.village.kecamatan)}</td>'
            f'<td><span class="v {verdict}">{verdict.replace("_", " ")}</span></td>'
            f"<td>{html.escape(limiting)}</td>"
            f'<td class="n">{_ms(rtt.p50 if rtt else None)}</td><td class="n">{_ms(rtt.p95 if rtt else None)}</td>'
            f'<td class="n">{_pct(w.loss_ratio if w else None)}</td>'
            f'<td class="n">{_ms(w.jitter_seconds if w else None)}</td>'
            f'<td class="n">{"–" if r is None or r.mos is None else f"{r.mos:.2f}"}</td>'
            f'<td class="n opt">{_mbit(down[0].bits_per_second if down else None)}</td>'
            f'<td class="n opt">{_mbit(up[0].bits_per_second if up else None)}</td>'
            f'<td class="opt">{session}</td>'
            "</tr>"
        )
    summary = " ".join(f'<span><span class="v {k}">{k.replace("_", " ")}</span> {n}</span>' for k, n in counts.items())
    up_for = int(time.time() - started)
    warn = "" if reload_ok else '<p class="bad">The last inventory reload failed; serving the previous one.</p>'
    return _page(
        f"desanet — {district}",
        f"<h1>desanet — {html.escape(district)}</h1>{warn}<p class=summary>{summary}</p>"
        f"<small>{len(villages)} villages, up {up_for // 3600} h {up_for % 3600 // 60} min. "
        'Worst first. <a href="/metrics">metrics</a></small>'
        '<div class=wrap><table><tr><th>Village</th><th class="opt">Kecamatan</th><th>Verdict</th>'
        "<th>Limiting</th><th>RTT p50 ms</th><th>p95 ms</th><th>Loss %</th><th>Jitter ms</th><th>MOS</th>"
        '<th class="opt">Down Mbit/s</th><th class="opt">Up Mbit/s</th><th class="opt">Next session</th></tr>'
        + "".join(rows)
        + "</table></div>",
    )


def render_village_page(vs: VillageState) -> str:
    verdict, _limiting, _ = _verdict(vs)
    checks = []
    for profile, r in vs.readiness.items():
        for c in r.checks:
            value = "–" if c.value is None else f"{c.value:g} {c.unit}"
            checks.append(
                f"<tr><td>{html.escape(profile)}</td><td>{c.factor}</td><td>{value}</td>"
                f"<td>{c.limit:g} / {c.fail_limit:g} {c.unit}</td><td>{c.state}</td></tr>"
            )
    logs = []
    for e in vs.recent_logs():
        cls = "" if e.ok else ' class="bad"'
        logs.append(
            f"<tr{cls}><td>{datetime.fromtimestamp(e.when):%H:%M:%S}</td><td>{e.probe}</td>"
            f"<td>{'ok' if e.ok else 'FAILED'}</td><td>{html.escape(e.message)}</td></tr>"
        )
    v = vs.village
    return _page(
        f"desanet — {v.name}",
        f'<p><a href="/">← all villages</a></p><h1>{html.escape(v.name)} <span class="v {verdict}">'
        f"{verdict.replace('_', ' ')}</span></h1><small>{v.kind} in kecamatan {html.escape(v.kecamatan)}, "
        f"router {v.address}</small><h2>Checks</h2><div class=wrap><table><tr><th>Profile</th><th>Factor</th>"
        "<th>Measured</th><th>Limit / fail</th><th>State</th></tr>" + "".join(checks) + "</table></div>"
        "<h2>Recent probes</h2><small>Failures are kept longer than successes.</small><div class=wrap><table>"
        "<tr><th>Time</th><th>Probe</th><th>Result</th><th>Detail</th></tr>" + "".join(logs) + "</table></div>",
    )


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta http-equiv="refresh" content="30"><title>{html.escape(title)}</title><style>{_CSS}</style>'
        f"</head><body>{body}</body></html>"
    )
