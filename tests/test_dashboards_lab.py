"""Every dashboard query, run against a real Prometheus (Debian package) scraping `desanet serve` on the lab.

Both run in the lab's NOC namespace; Prometheus loads alerts/desanet.rules.yml (the dashboards read its
recording rules) and scrapes the one exporter twice, as jobs `desanet` and `desanet-ha`, the way an HA pair or
a second Prometheus job doubles every series. Each query of each committed dashboard is evaluated the way
Grafana would send it — dashboard variables substituted, range queries over the last minutes, instant/table
queries now — twice: with one real village, kecamatan, profile and session picked ("one"), and with every
multi-value variable at "All" (its allValue `.*`). A query that errors fails the test; one that returns no
data fails it too, unless it is on ALLOWED_EMPTY with the reason its data may legitimately be absent in a
short run, or reads only families desanet exports with --metrics.detail (the exporter runs lean, the
default). Every query variable must offer the value picked, and every count must count each village once.

A rehearsal call happens only when a technician opens the exporter's rehearsal page, so the village dashboard's
"Last rehearsal call" row is fed the way the exporter would show one: exposition text of the picked village's
last call in the agreed call families (tests/callmetrics.py), served in the NOC namespace and scraped by both
jobs next to the exporter.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grafana_foundation_sdk")

from tests.conftest import ROOT, Lab, stop_process
from tests.test_dashboards import (
    BUILTINS,
    DASHBOARD_FILES,
    load,
    panels,
    substitute,
    variables,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]
EXPORTER = "127.0.0.1:19927"
PROM = "127.0.0.1:19097"
CALLS = "127.0.0.1:19098"  # the picked village's last rehearsal call, as exposition text
RANGE_SECONDS = 180
NOT_COLUMNS = {"__name__", "job", "instance"}

# The one village the "one" run looks at: clean, SNMP v2c with an SFP, the only one with an iperf3 server
# in the test inventory (so throughput tests, when the schedule reaches them, do not fight over the CPU).
PICK = {
    "village": "kabat",
    "kecamatan": "Kabat",
    "profile": "meet-hd",
    "session": "Rapat koordinasi Bupati dan kepala desa",  # every village takes part
}
HAS_THROUGHPUT = 'desanet_throughput_bytes_per_second{village="kabat"}'
HAS_HOURLY = "village:desanet_video_ready:avg_1h"
JOBS = ("desanet", "desanet-ha")


@dataclass(frozen=True)
class AllowEmpty:
    reason: str
    unless: str = ""  # a query that, when it returns data, means this one must too


SESSION_HISTORY = AllowEmpty(
    "the share of a session's hours in which villages were ready needs Prometheus history at the session's "
    "time of day, 1–7 days back; a test run has minutes"
)
THROUGHPUT = AllowEmpty(
    "throughput tests run at most 96 times a day and the first comes at a random time within that period "
    "after start, so a short run usually has none; once one has run, the panel must show it",
    unless=HAS_THROUGHPUT,
)
READY_30D = AllowEmpty(
    "the 30-day ready share reads hourly averages, and a rule group with a 1 h interval first runs up to an hour "
    "after Prometheus starts; once one has run, the panel must show it",
    unless=HAS_HOURLY,
)
ALERTS = AllowEmpty("alerts fire only when a rule's condition has held for its `for:`; none need be firing")
# (dashboard uid, panel title, refId) → why no data is acceptable.
ALLOWED_EMPTY: dict[tuple[str, str, str], AllowEmpty] = {
    ("desanet-overview", "Firing alerts", "A"): ALERTS,
    ("desanet-village", "Firing alerts", "A"): ALERTS,
    ("desanet-village", "Throughput tests", "A"): THROUGHPUT,
    ("desanet-village", "Throughput tests", "D"): AllowEmpty(
        "the profiles' bandwidth limits are joined through the village's verdicts, as every limit is; they are "
        "there once a verdict is (always, in this run)",
        unless="desanet_video_verdict",
    ),
    ("desanet-overview", "Worst villages now", "F"): READY_30D,
    ("desanet-overview", "Readiness by kecamatan", "H"): READY_30D,
    ("desanet-village", "Ready 30 d", "A"): READY_30D,
    ("desanet-village", "First degraded hop", "A"): AllowEmpty("never empty: 'no degraded hop found' stands in"),
    **{
        ("desanet-sessions", "Villages: readiness now and in the session's hours on recent days", ref): SESSION_HISTORY
        for ref in "CDEFGHI"  # day −1 … day −7
    },
}


def _detail_only(expr: str) -> bool:
    """A query that reads only families desanet exports with --metrics.detail (exporter/metrics.py)."""
    from desanet.exporter.metrics import DETAIL_ONLY

    names = set(re.findall(r"\b(desanet_\w+)", re.sub(r"\b[a-z_]+:\w+:\w+", "", expr)))
    return bool(names) and names <= DETAIL_ONLY


def _test_inventory(tmp: Path) -> Path:
    """The shipped inventory with short intervals, and iperf3 only at the picked village."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load((ROOT / "inventory.yaml").read_text())
    s = data["settings"]
    s["icmp"] = {"interval_seconds": 0.2, "window_seconds": 10, "timeout_seconds": 1}
    s["stamp"] = {"every_seconds": 10, "duration_seconds": 2, "rate_pps": 50}
    s["snmp"] = {"every_seconds": 5, "timeout_seconds": 1, "retries": 0}
    s["trace"] = {"every_seconds": 30, "max_hops": 8, "probes_per_hop": 2}
    s["throughput"] = {
        "tests_per_day": 96,
        "max_seconds": 2,
        "budget_megabytes_per_day": 500,
        "budget_seconds_per_day": 120,
    }
    # A handful of villages keeps the 2-core machine responsive (a trace round over all 41 takes minutes);
    # the sessions name some of them, and every other village stays in the lab, unprobed.
    keep = {PICK["village"], "bajulmati", "wongsorejo", "sarongan", "licin"}
    data["villages"] = [v for v in data["villages"] if v["slug"] in keep]
    for v in data["villages"]:
        if v["slug"] != PICK["village"]:
            v.pop("iperf3", None)
    path = tmp / "inventory.yaml"
    with path.open("w") as fh:
        yaml.dump(data, fh)
    return path


class Prom:
    def __init__(self, lab: Lab):
        self.lab = lab

    def api(self, path: str, **params: str) -> dict[str, Any]:
        args = ["curl", "-s", "-m", "30", f"http://{PROM}{path}"]
        for k, v in params.items():
            args += ["--data-urlencode", f"{k}={v}"]
        out = self.lab.noc(*args, timeout=40)
        try:
            data: dict[str, Any] = json.loads(out.stdout)
        except json.JSONDecodeError:
            return {"status": "error", "error": f"not JSON: {out.stdout[:200]!r} {out.stderr[:200]!r}"}
        return data

    def instant(self, expr: str) -> dict[str, Any]:
        return self.api("/api/v1/query", query=expr)

    def range(self, expr: str, seconds: int = RANGE_SECONDS, step: int = 15) -> dict[str, Any]:
        end = time.time()
        start = f"{end - seconds:.3f}"
        return self.api("/api/v1/query_range", query=expr, start=start, end=f"{end:.3f}", step=str(step))

    def has_data(self, expr: str) -> bool:
        r = self.instant(expr)
        return r.get("status") == "success" and bool(r["data"]["result"])


_stop = stop_process


@pytest.fixture(scope="module")
def prom(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    if shutil.which("prometheus") is None:
        pytest.skip("needs prometheus (scripts/setup.sh)")
    tmp = tmp_path_factory.mktemp("dashboards")
    inventory = _test_inventory(tmp)
    env = {**lab.env, "DESANET_STATE_DIR": str(tmp / "state")}
    lab.impair("bajulmati", "--restore", "--down")  # one village not ready, so the verdict panels see both
    rules = ROOT / "alerts" / "desanet.rules.yml"
    (tmp / "calls").mkdir()
    (tmp / "calls" / "calls.txt").write_text(_last_call(PICK["kecamatan"]))
    targets = f"{{targets: ['{EXPORTER}']}}, {{targets: ['{CALLS}'], labels: {{__metrics_path__: /calls.txt}}}}"
    jobs = "".join(f"  - job_name: {job}\n    static_configs: [{targets}]\n" for job in JOBS)
    (tmp / "prometheus.yml").write_text(
        f"global: {{scrape_interval: 2s, evaluation_interval: 2s}}\nrule_files: ['{rules}']\nscrape_configs:\n{jobs}"
    )
    with (tmp / "calls.log").open("w") as calls_log:
        calls = subprocess.Popen(
            ["ip", "netns", "exec", lab.noc_ns, sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
             "--directory", str(tmp / "calls"), CALLS.rsplit(":", 1)[1]],
            text=True, stdout=calls_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    with (tmp / "serve.log").open("w") as serve_log, (tmp / "prom.log").open("w") as prom_log:
        serve = subprocess.Popen(
            ["ip", "netns", "exec", lab.noc_ns, sys.executable, "-m", "desanet.cli", "serve",
             "--inventory", str(inventory), "--web.listen-address", EXPORTER],
            env=env, text=True, stdout=serve_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        server = subprocess.Popen(
            ["ip", "netns", "exec", lab.noc_ns, "prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address={PROM}"],
            text=True, stdout=prom_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    p = Prom(lab)
    try:
        # Ready when every probe has reported for the picked village (trace's first run is 10–30 s in).
        deadline = time.monotonic() + 150
        village = f'village="{PICK["village"]}"'
        needed = [
            *(f'up{{job="{job}"}} == 1' for job in JOBS),
            f"desanet_video_verdict{{{village}}}",
            f'desanet_rtt_seconds_count{{{village}, method="icmp"}}',
            f'desanet_jitter_seconds{{{village}, method="stamp"}}',
            f"desanet_router_uptime_seconds{{{village}}}",
            f"village:desanet_video_verdict:rank{{{village}}}",
            f"village:desanet_profile_threshold:strictest{{{village}}}",
            f"desanet_call_outcome{{{village}}}",
        ]
        missing = needed
        while time.monotonic() < deadline:
            missing = [q for q in needed if not p.has_data(q)]
            if not missing:
                break
            if serve.poll() is not None or server.poll() is not None:
                break
            time.sleep(3)
        if missing:
            log = (tmp / "serve.log").read_text()[-3000:]
            pytest.fail(f"desanet serve never produced {missing} for {PICK['village']}; serve log:\n{log}")
        time.sleep(20)  # a few more scrapes, so rates and range queries have points
        yield p
    finally:
        _stop(serve)
        _stop(server)
        _stop(calls)
        lab.restore("bajulmati")
        print((tmp / "serve.log").read_text()[-2000:])


def _last_call(kecamatan: str) -> str:
    """The picked village's last rehearsal call an hour ago: up held, down degraded by freezes (bandwidth)."""
    from tests.callmetrics import Call, Direction, exposition

    figures = {
        "frames_per_second": 29.0,
        "video_height_pixels": 540,
        "freeze_ratio": 0.0,
        "audio_concealment_ratio": 0.01,
        "video_loss_ratio": 0.002,
        "jitter_buffer_delay_seconds": 0.05,
        "video_received_bytes_per_second": 250000,
    }
    down = Direction(1, "bandwidth", {**figures, "freeze_ratio": 0.04})
    call = Call(
        PICK["village"], kecamatan, time.time() - 3600, PICK["profile"], 2.9, Direction(0, "none", figures), down
    )
    return exposition([call])


def _values(board: dict[str, Any], mode: str) -> dict[str, str]:
    values = {**BUILTINS, **PICK}
    if mode == "all":
        for name, v in variables(board).items():
            if v.get("includeAll"):
                values[name] = v["allValue"]
    return values


def _empty(result: dict[str, Any]) -> bool:
    data = result["data"]["result"]
    if result["data"]["resultType"] == "matrix":
        return not any(series["values"] for series in data)
    return not data


@pytest.mark.parametrize("mode", ["one", "all"])
@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(prom: Prom, path: Path, mode: str) -> None:
    board = load(path)
    values = _values(board, mode)
    errors: list[str] = []
    empty: list[str] = []
    allowed: list[str] = []
    for panel in panels(board):
        label_sets: dict[str, list[set[str]]] = {}
        for t in panel.get("targets", []):
            expr = substitute(t["expr"], values)
            where = f"{panel['title']!r} {t['refId']}"
            assert "$" not in expr, f"{where}: variable left in {expr}"
            r = prom.instant(expr) if t.get("instant") else prom.range(expr)
            if r.get("status") != "success":
                errors.append(f"{where}: {r.get('errorType', '')} {r.get('error', r)}")
                continue
            series = r["data"]["result"]
            # A legend names labels every series must carry, or Grafana shows the braces.
            for label in re.findall(r"\{\{(\w+)\}\}", t.get("legendFormat", "")):
                bare = [s["metric"] for s in series if label not in s["metric"]]
                if bare:
                    errors.append(f"{where}: legend needs {label!r}, missing in {bare[0]}")
            if series:
                label_sets[t["refId"]] = [set(s["metric"]) - NOT_COLUMNS for s in series]
            if not _empty(r):
                continue
            allow = ALLOWED_EMPTY.get((board["uid"], panel["title"], t["refId"]))
            if allow is not None and not (allow.unless and prom.has_data(allow.unless)):
                allowed.append(f"{where}: {allow.reason}")
            elif _detail_only(expr):
                allowed.append(f"{where}: exported with --metrics.detail only")
            else:
                empty.append(f"{where}: no data for {expr}")
        errors += _merge_problems(panel, label_sets)
    print(f"\n{board['uid']} ({mode}): {len(allowed)} allowed empty:\n  " + "\n  ".join(allowed))
    assert not errors, "queries Prometheus refused, or whose labels do not fit the panel:\n" + "\n".join(errors)
    assert not empty, "queries without data:\n" + "\n".join(empty)


def _merge_problems(panel: dict[str, Any], rows: dict[str, list[set[str]]]) -> list[str]:
    """A table merges its queries' rows on the labels all of them carry: every row must carry all of those
    (an `on (…)` that dropped one splits a village over several rows), and a label some queries carry but
    others lost means the same. A map needs coordinates on every row."""
    problems = []
    if panel["type"] == "geomap":
        for ref, sets in rows.items():
            for labels in sets:
                if not {"latitude", "longitude"} <= labels:
                    problems.append(f"{panel['title']!r} {ref}: no coordinates in {sorted(labels)}")
    if panel["type"] != "table" or len(rows) < 2:
        return problems
    unions = {ref: set().union(*sets) for ref, sets in rows.items()}
    counts = Counter(label for labels in unions.values() for label in labels)
    keys = {label for label, n in counts.items() if n == len(rows)}
    partial = {label for label, n in counts.items() if 1 < n < len(rows)}
    if partial:
        problems.append(f"{panel['title']!r}: labels {sorted(partial)} only in some queries: {unions}")
    for ref, sets in rows.items():
        for labels in sets:
            if not keys <= labels:
                problems.append(f"{panel['title']!r} {ref}: a row lacks {sorted(keys - labels)}")
                break
    return problems


def test_allow_list_names_real_queries() -> None:
    """An allow-list entry whose panel or refId was renamed away would silently stop mattering."""
    real = {
        (load(p)["uid"], panel["title"], t["refId"])
        for p in DASHBOARD_FILES
        for panel in panels(load(p))
        for t in panel.get("targets", [])
    }
    assert set(ALLOWED_EMPTY) <= real, set(ALLOWED_EMPTY) - real


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_variables_offer_the_lab_villages(prom: Prom, path: Path) -> None:
    board = load(path)
    values = {**BUILTINS, **PICK}
    for name, v in variables(board).items():
        if v["type"] != "query":
            continue
        inner = v["query"][len("label_values(") : -1]
        selector, _, label = inner.rpartition(",")
        selector = substitute(selector.strip(), values)
        r = prom.api("/api/v1/series", **{"match[]": selector})
        assert r.get("status") == "success", r
        offered = {s.get(label.strip()) for s in r["data"]}
        assert PICK[name] in offered, f"{name}: {PICK[name]!r} not among {sorted(x for x in offered if x)[:10]}"


def _value(prom: Prom, expr: str) -> float:
    r = prom.instant(expr)
    assert r.get("status") == "success", r
    (sample,) = r["data"]["result"]
    return float(sample["value"][1])


def _rows(prom: Prom, expr: str) -> list[dict[str, str]]:
    r = prom.instant(expr)
    assert r.get("status") == "success", r
    return [s["metric"] for s in r["data"]["result"]]


def test_counts_stay_right_with_two_targets_scraping_the_same_villages(prom: Prom, tmp_path: Path) -> None:
    """Every village reaches Prometheus twice (jobs desanet and desanet-ha), as with an HA pair: the raw series
    are doubled, yet every count, map dot, grid row and table row of the dashboards counts it once. The old
    dashboards counted `count(desanet_village_info)`, which reads 2 × the villages here."""
    from desanet.district import load_inventory

    inv = load_inventory(_test_inventory(tmp_path))
    villages = {v.slug for v in inv.villages}
    per_kecamatan = Counter(v.kecamatan for v in inv.villages)
    assert _value(prom, "count(desanet_village_info)") == 2 * len(villages)  # the duplicates are real
    assert {m["job"] for m in _rows(prom, 'desanet_village_info{village="kabat"}')} == set(JOBS)

    boards = {load(p)["uid"]: load(p) for p in DASHBOARD_FILES}
    overview = boards["desanet-overview"]
    every = _values(overview, "all")

    def target(title: str, ref: str = "A", kind: str = "") -> str:
        (panel,) = [p for p in panels(overview) if p["title"] == title and p["type"] in (kind or p["type"])]
        (t,) = [t for t in panel["targets"] if t["refId"] == ref]
        return substitute(t["expr"], every)

    assert _value(prom, target("Villages")) == len(villages)
    by_verdict = sum(_value(prom, target(title)) for title in ("Ready", "At risk", "Not ready", "Unknown"))
    assert by_verdict == len(villages)
    assert _value(prom, target("Not ready")) >= 1  # bajulmati is cut
    for title in ("Villages on the map", "Every village over time, by kecamatan"):
        rows = _rows(prom, target(title))
        assert sorted(m["village"] for m in rows) == sorted(villages), title
    for ref in ("A", "G"):  # the verdict column and the sort key: one row per village
        rows = _rows(prom, target("Worst villages now", ref))
        assert sorted(m["village"] for m in rows) == sorted(villages), ref
    table = {m["kecamatan"]: m for m in _rows(prom, target("Readiness by kecamatan", "B"))}
    assert set(table) == set(per_kecamatan)
    for kecamatan, n in per_kecamatan.items():
        assert _value(prom, target("Readiness by kecamatan", "B").replace('=~".*"', f'="{kecamatan}"')) == n
    # Firing alerts: each once, whatever job its series came from.
    raw = _rows(prom, 'ALERTS{alertstate="firing"}')
    distinct = {tuple(sorted((k, v) for k, v in m.items() if k not in ("instance", "job"))) for m in raw}
    assert _value(prom, target("Firing alerts", kind="stat")) == len(distinct)
    assert len(_rows(prom, target("Firing alerts", kind="table"))) == len(distinct)
    # Sessions: each village of a session once.
    sessions_board = boards["desanet-sessions"]
    (summary,) = [p for p in panels(sessions_board) if p["title"] == "Upcoming sessions"]
    villages_expr = substitute(
        next(t["expr"] for t in summary["targets"] if t["refId"] == "C"), _values(sessions_board, "all")
    )
    members = Counter(session.title for v in inv.villages for session in inv.sessions_for(v))
    rows = prom.instant(villages_expr)["data"]["result"]
    assert rows
    for row in rows:  # a village counts under its next session only, so at most every member
        assert 0 < float(row["value"][1]) <= members[row["metric"]["session"]], row


def test_the_default_live_scrape_passes_promtool(prom: Prom) -> None:
    """The lean output (what `desanet serve` exports by default) is promtool-clean as served."""
    out = prom.lab.noc("curl", "-s", "-m", "20", f"http://{EXPORTER}/metrics", timeout=30)
    assert "desanet_video_verdict{" in out.stdout and "desanet_rtt_window_seconds" not in out.stdout
    check = subprocess.run(["promtool", "check", "metrics"], input=out.stdout, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
