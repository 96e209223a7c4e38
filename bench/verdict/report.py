"""The confusion matrix of bench_verdict.py's rows: the check's verdict against the real call's outcome.

    python bench/verdict/report.py bench/verdict/run-1.jsonl            # the verdicts the check gave then
    python bench/verdict/report.py bench/verdict/run-1.jsonl --rejudge  # the same figures, today's readiness model

`--rejudge` re-runs verdict.readiness.assess on the figures each check measured, with the inventory's profiles as
they are now, so a threshold change can be read against rows measured before it (the figures themselves do not
change; a check run after the change may measure what it skipped before, e.g. throughput).

A verdict "matches" a call when ready ↔ holds, at_risk ↔ degraded, not_ready ↔ fails; the call's outcome is its
worse direction. Rows whose call was made on a busy host (`quiet` false) are left out and counted.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from desanet.district import load_inventory
from desanet.verdict.readiness import Measurements, assess

ROOT = Path(__file__).resolve().parents[2]
VERDICTS = ("ready", "at_risk", "not_ready", "unknown")
OUTCOMES = ("holds", "degraded", "fails")
MATCH = {"ready": "holds", "at_risk": "degraded", "not_ready": "fails"}


def rejudge(row: dict[str, Any], inventory: Any) -> tuple[str, str | None, dict[str, str]]:
    figures = row["check"].get("figures") or {}
    r = assess(Measurements(**{k: v for k, v in figures.items() if v is not None}), inventory.profile(row["profile"]))
    return r.verdict, r.limiting, {c.factor: c.state for c in r.checks}


def load(paths: list[Path], rejudged: bool) -> tuple[list[dict[str, Any]], Counter[str]]:
    inventory = load_inventory(ROOT / "inventory.yaml") if rejudged else None
    rows, left_out = [], Counter[str]()
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if not row.get("quiet", True):
                left_out["busy host"] += 1
                continue
            if not row["check"].get("verdict"):
                left_out["check gave no verdict"] += 1
                continue
            if row["call"].get("outcome") not in OUTCOMES:
                left_out["no call outcome"] += 1
                continue
            if rejudged:
                row["check"]["verdict"], row["check"]["limiting"], row["check"]["states"] = rejudge(row, inventory)
            rows.append(row)
    return rows, left_out


def call_summary(row: dict[str, Any]) -> str:
    call = row["call"]
    if not call.get("connected"):
        return f"did not connect ({call.get('error')})"
    parts = []
    for d in ("up", "down"):
        x = call["directions"][d]
        why = "; ".join(x.get("reasons") or []) or "ok"
        parts.append(
            f"{d} {x['outcome']} ({x.get('height')}p {x.get('fps')} fps, {100 * (x.get('freeze_ratio') or 0):.1f} % "
            f"frozen, {100 * (x.get('audio_concealment_ratio') or 0):.1f} % audio concealed, "
            f"{x.get('kbit')} kbit/s: {why})"
        )
    return "; ".join(parts)


def matrix(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    n = Counter((r["check"]["verdict"], r["call"]["outcome"]) for r in rows)
    out.append("| check ↓ / call → | holds | degraded | fails | total |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for v in VERDICTS:
        total = sum(n[(v, o)] for o in OUTCOMES)
        if v == "unknown" and not total:
            continue
        cells = [f"**{n[(v, o)]}**" if MATCH.get(v) == o else str(n[(v, o)]) for o in OUTCOMES]
        out.append(f"| {v} | " + " | ".join(cells) + f" | {total} |")
    totals = [sum(n[(v, o)] for v in VERDICTS) for o in OUTCOMES]
    out.append("| total | " + " | ".join(map(str, totals)) + f" | {len(rows)} |")
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    agree = sum(1 for r in rows if MATCH.get(r["check"]["verdict"]) == r["call"]["outcome"])
    ready_fails = sum(1 for r in rows if r["check"]["verdict"] == "ready" and r["call"]["outcome"] == "fails")
    return {
        "rows": len(rows),
        "agree": agree,
        "agree_pct": round(100 * agree / len(rows), 1) if rows else None,
        "ready_but_fails": ready_fails,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", type=Path, nargs="+")
    ap.add_argument("--rejudge", action="store_true", help="judge the measured figures with today's model")
    ap.add_argument("--json", action="store_true", help="the summary as JSON")
    opts = ap.parse_args()
    rows, left_out = load(opts.rows, opts.rejudge)
    by_profile: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_profile[r["profile"]].append(r)
    if opts.json:
        doc = {"all": summary(rows), **{p: summary(rs) for p, rs in sorted(by_profile.items())}}
        print(json.dumps({**doc, "left_out": dict(left_out)}, indent=1))
        return
    print(f"{len(rows)} scenarios" + (f"; left out: {dict(left_out)}" if left_out else ""))
    for profile, rs in sorted(by_profile.items()):
        s = summary(rs)
        print(
            f"\n### {profile}: {s['agree']} of {s['rows']} match ({s['agree_pct']} %), "
            f"{s['ready_but_fails']} ready for a call that failed\n"
        )
        print("\n".join(matrix(rs)))
    s = summary(rows)
    print(
        f"\n### all profiles: {s['agree']} of {s['rows']} match ({s['agree_pct']} %), "
        f"{s['ready_but_fails']} ready for a call that failed\n"
    )
    print("\n".join(matrix(rows)))
    print("\n### by class (verdict → outcome)\n")
    by_class: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for r in rows:
        by_class[r["class"]][(r["check"]["verdict"], r["call"]["outcome"])] += 1
    for cls, c in sorted(by_class.items()):
        print(f"- {cls}: " + ", ".join(f"{v}→{o} {k}" for (v, o), k in sorted(c.items())))
    streamed = [r for r in rows if (r["check"].get("call_stream") or {}).get("held_ratio") is not None]
    if streamed:
        print("\n### the call-like stream (check --call-stream) against the call's outcome\n")
        print("| outcome | rows | held ratio: min | median | max | with overuse |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for outcome in ("holds", "degraded", "fails"):
            cs = [r["check"]["call_stream"] for r in streamed if r["call"]["outcome"] == outcome]
            if not cs:
                continue
            held = sorted(c["held_ratio"] for c in cs)
            over = sum(1 for c in cs if c.get("overuse_forward") or c.get("overuse_backward"))
            print(f"| {outcome} | {len(cs)} | {held[0]:.2f} | {held[len(held) // 2]:.2f} | {held[-1]:.2f} | {over} |")
    repeated = [r for r in rows if r.get("repeats")]
    if repeated:
        pairs = same = 0
        for r in repeated:
            for again in r["repeats"]:
                o = (again.get("call") or {}).get("outcome")
                if o in ("holds", "degraded", "fails"):
                    pairs += 1
                    same += o == r["call"]["outcome"]
        print(f"\n### the same path, called again: {same} of {pairs} repeat calls had the first call's outcome\n")
        for r in repeated:
            outs = [r["call"]["outcome"], *((a.get("call") or {}).get("outcome") for a in r["repeats"])]
            calls = " / ".join(map(str, outs))
            print(f"- #{r['n']} {r['class']} {r['profile']}: check {r['check']['verdict']}, calls {calls}")
    print("\n### where they disagree\n")
    for r in rows:
        v, o = r["check"]["verdict"], r["call"]["outcome"]
        if MATCH.get(v) == o:
            continue
        bad = {f: s for f, s in (r["check"].get("states") or {}).items() if s in ("warn", "fail")}
        cs = r["check"].get("call_stream") or {}
        held = f", call-like stream held {cs['held_ratio']:.2f}" if cs.get("held_ratio") is not None else ""
        print(
            f"- #{r['n']} {r['class']} {r['profile']} {json.dumps(r['parts'])}: check {v} "
            f"(limiting {r['check'].get('limiting')}, {bad or 'all pass'}{held}); call {o}: {call_summary(r)}"
        )


if __name__ == "__main__":
    main()
