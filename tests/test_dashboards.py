"""The Grafana dashboards: committed JSON is the generator's output, every panel is placed and queried
properly, every variable is defined and used, every metric is in the exporter's contract, every query
parses (promtool), and the PromQL the panels rely on computes what the panels say (promtool unit tests).

The lab test (tests/test_dashboards_lab.py) evaluates every query against a real Prometheus; the helpers
below (`load`, `panels`, `targets`, `substitute`) are shared with it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grafana_foundation_sdk")

from desanet.dashboards import build, promql, rehearsal
from desanet.dashboards.panels import GRID_WIDTH, UIDS
from desanet.dashboards.variables import DATASOURCE_UID
from tests.conftest import ROOT

DASHBOARD_FILES = sorted(build.JSON_DIR.glob("*.json"))
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
# Grafana's own variables the queries may use; the lab test substitutes these values.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "10m"}
VAR_RE = re.compile(r"\$(?:\{(\w+)(?:[.:][^}]*)?\}|(\w+))")


# ------------------------------------------------------------------------------------------------ helpers
def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for p in board.get("panels", []):
        yield p
        yield from p.get("panels", [])


def targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for p in panels(board):
        for t in p.get("targets", []):
            yield p, t


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace $name and ${name} with values[name] (Grafana's builtins included); unknown names stay."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))

    return VAR_RE.sub(repl, text)


def referenced(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in VAR_RE.finditer(text)}


def boards() -> dict[str, dict[str, Any]]:
    return {p.name: load(p) for p in DASHBOARD_FILES}


# ------------------------------------------------------------------------------------------------ files
def test_committed_json_is_the_generators_output() -> None:
    assert build.check() == [], "run `desanet dashboards build` and commit dashboards/json"
    assert [p.name for p in DASHBOARD_FILES] == sorted(build.render())


def test_uids_are_stable_and_unique() -> None:
    b = boards()
    assert {name: d["uid"] for name, d in b.items()} == {
        "desanet-overview.json": "desanet-overview",
        "desanet-sessions.json": "desanet-sessions",
        "desanet-village.json": "desanet-village",
    }
    assert sorted(UIDS.values()) == sorted(d["uid"] for d in b.values())
    assert len({d["title"] for d in b.values()}) == len(b)  # titles unique within the provisioned folder
    for d in b.values():
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), d["uid"]


def test_links_point_at_dashboards_that_exist() -> None:
    uids = set(UIDS.values())
    for d in boards().values():
        text = json.dumps(d)
        for uid in re.findall(r"/d/([\w-]+)", text):
            assert uid in uids, (d["uid"], uid)


# ------------------------------------------------------------------------------------------------ panels
@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    board = load(path)
    boxes: list[tuple[int, int, int, int, str]] = []
    for p in panels(board):
        g = p["gridPos"]
        x, y, w, h = g["x"], g["y"], g["w"], g["h"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0, p["title"]
        assert x + w <= GRID_WIDTH, f"{p['title']!r} ends at column {x + w}"
        for bx, by, bw, bh, title in boxes:
            overlap = x < bx + bw and bx < x + w and y < by + bh and by < y + h
            assert not overlap, f"{p['title']!r} overlaps {title!r}"
        boxes.append((x, y, w, h, p["title"]))


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_every_panel_queries_the_datasource_variable_with_refids(path: Path) -> None:
    board = load(path)
    for p in panels(board):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and all(refs), f"{p['title']!r}: empty refId"
        assert len(refs) == len(set(refs)), f"{p['title']!r}: duplicate refId"
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t.get("datasource", p["datasource"]) == p["datasource"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_variables_are_defined_used_and_filtered_consistently(path: Path) -> None:
    board = load(path)
    defined = variables(board)
    assert defined["datasource"]["type"] == "datasource" and defined["datasource"]["query"] == "prometheus"
    assert defined["datasource"]["current"]["value"] == DATASOURCE_UID
    used: set[str] = set()
    for v in defined.values():
        if v["type"] == "query":
            assert v["query"].startswith("label_values("), v["name"]
            assert v["datasource"]["uid"] == "${datasource}"
            used |= referenced(v["query"])
    for p in panels(board):
        if p.get("datasource", {}).get("uid") == "${datasource}":
            used.add("datasource")
        for t in p.get("targets", []):
            refs = referenced(t["expr"])
            unknown = refs - set(defined) - set(BUILTINS)
            assert not unknown, f"{p['title']!r} uses undefined {unknown}"
            used |= refs
            # A multi-value variable must be matched as a regex, a single-value one may be either.
            for name in refs & set(defined):
                if defined[name].get("multi"):
                    assert f'=~"${name}"' in t["expr"], f"{p['title']!r}: ${name} is multi-value, needs =~"
    assert set(defined) <= used, f"defined but never used: {set(defined) - used}"
    for v in defined.values():
        if v.get("includeAll"):
            assert v["allValue"] == ".*"
    if board["uid"] == UIDS["village"]:
        assert not defined["village"].get("multi"), "the village dashboard shows one village"


RULE_RE = re.compile(r"\b[a-z_]+:\w+:\w+")
RULES_FILE = ROOT / "alerts" / "desanet.rules.yml"


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(desanet_\w+)", RULE_RE.sub("", expr)))


def _recorded() -> set[str]:
    rules = _yaml(RULES_FILE)
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def _alert_names() -> set[str]:
    rules = _yaml(RULES_FILE)
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_every_metric_is_in_the_exporters_contract_and_every_rule_is_recorded() -> None:
    from desanet.exporter.metrics import SPECS

    known = {s.name for s in SPECS}
    known |= {f"{s.name}{suffix}" for s in SPECS if s.type == "histogram" for suffix in ("_bucket", "_sum", "_count")}
    # The rehearsal calls' families (issue 14) are exporter/call_metrics.py's; until the exporter side has landed
    # that module, the names agreed with it stand in. From then on a name that drifted apart fails here.
    try:
        from desanet.exporter.call_metrics import SPECS as CALL_SPECS

        known |= {s.name for s in CALL_SPECS}
    except ImportError:
        known |= set(rehearsal.CALL_METRICS)
    recorded = _recorded()
    assert set(promql.RULES) <= recorded, set(promql.RULES) - recorded
    for d in boards().values():
        for v in variables(d).values():
            assert _metric_names(v.get("query", "")) <= known, v["name"]
        for p, t in targets(d):
            missing = _metric_names(t["expr"]) - known
            assert not missing, f"{d['uid']} / {p['title']!r}: {missing} not in exporter/metrics.py"
            unrecorded = set(RULE_RE.findall(t["expr"])) - recorded
            assert not unrecorded, f"{d['uid']} / {p['title']!r}: {unrecorded} not in {RULES_FILE.name}"


def test_alert_panels_show_desanets_alerts_only() -> None:
    """Every alert panel filters ALERTS by desanet's own alert names, and those are exactly the rules' alerts."""
    assert set(promql.ALERT_NAMES) == _alert_names()
    for d in boards().values():
        for p, t in targets(d):
            if "ALERTS" in t["expr"]:
                assert promql.DESANET_ALERTS in t["expr"], (d["uid"], p["title"])
                assert "$kecamatan" in t["expr"] or '"$village"' in t["expr"], (d["uid"], p["title"])


def test_colour_limits_are_the_profiles_and_the_rules() -> None:
    """The fixed colour steps are the limits the verdict judges against for every profile of the shipped
    inventory (and the model's defaults), and the optical ones the rules' defaults."""
    from desanet.district import Profile, load_inventory
    from desanet.verdict import readiness as rd

    profiles = [*load_inventory(ROOT / "inventory.yaml").profiles, Profile(name="d", min_down_mbit=1, min_up_mbit=1)]
    for prof in profiles:
        got: dict[str, tuple[float, float]] = {lim.factor: (lim.at_risk, lim.not_ready) for lim in rd.limits(prof)}
        for factor, pair in promql.LIMITS.items():
            assert got[factor] == pytest.approx(pair), (prof.name, factor)
    rules = RULES_FILE.read_text()
    warning, critical = promql.OPTICAL_DBM
    assert f"desanet_optical_rx_power_dbm * 0 - {-warning:g}" in rules
    assert f"desanet_optical_rx_power_dbm * 0 - {-critical:g}" in rules


def row_panels(board: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels under the row `title`, up to the next row."""
    out: list[dict[str, Any]] = []
    inside = False
    for p in board["panels"]:
        if p["type"] == "row":
            inside = p["title"] == title
        elif inside:
            out.append(p)
    return out


def _steps(panel: dict[str, Any]) -> list[tuple[float | None, str]]:
    return [(s["value"], s["color"]) for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def _colour(steps: list[tuple[float | None, str]], value: float) -> str:
    """The colour Grafana gives `value`: the last step whose value it reaches."""
    return [c for v, c in steps if v is None or value >= v][-1]


OUTCOME_COLOUR = {"holds": "green", "degraded": "orange", "fails": "red"}


def test_call_row_colours_sit_where_the_call_outcome_changes() -> None:
    """Each coloured figure of the rehearsal row takes the colour of the outcome verdict/call_outcome.py gives a
    call with that figure (judged from per-second stats, as the exporter's calls are), for every shipped
    profile; the height, judged against the profile's own height, is coloured only where every shipped
    profile agrees."""
    from desanet.district import Profile, load_inventory
    from desanet.verdict.call_outcome import judge_direction
    from tests.test_call_outcome import series

    profiles = [*load_inventory(ROOT / "inventory.yaml").profiles, Profile(name="d", min_down_mbit=1, min_up_mbit=1)]
    assert {p.video_fps for p in profiles} == {rehearsal.PROFILE_FPS}
    assert min(p.video_height for p in profiles) == rehearsal.SMALLEST_PROFILE_HEIGHT
    row = {p["title"]: p for p in row_panels(boards()["desanet-village.json"], "Last rehearsal call")}

    def outcome(profile_height: int, **kw: Any) -> str:
        tx, rx = series(**kw)
        return judge_direction("up", tx, rx, profile_height, float(rehearsal.PROFILE_FPS)).outcome

    for prof in profiles:
        h = prof.video_height
        for fps in (5.0, 9.5, 12.0, 23.0, 25.0, 30.0):
            assert _colour(_steps(row["Frame rate"]), fps) == OUTCOME_COLOUR[outcome(h, fps=fps, height=h)], fps
        for frozen in (0.0, 0.01, 0.03, 0.09, 0.12, 0.3):  # of the 21 judged seconds, in one freeze
            got = outcome(h, height=h, freeze_at={20: frozen * 21})
            assert _colour(_steps(row["Frozen"]), frozen) == OUTCOME_COLOUR[got], frozen
        for conceal in (0.0, 0.02, 0.04, 0.09, 0.11, 0.3):
            got = outcome(h, height=h, conceal=conceal)
            assert _colour(_steps(row["Audio concealed"]), conceal) == OUTCOME_COLOUR[got], conceal
        for lines in (90, 150, 178, 182, 240, 268, 272, 360, 540, 720, 1080):
            got, shown = outcome(h, height=lines), _colour(_steps(row["Received height"]), lines)
            if shown == "red":
                assert got == "fails", (prof.name, lines)
            elif shown == "orange":
                assert got != "holds", (prof.name, lines)
            else:
                assert shown == "text", (prof.name, lines)  # uncoloured: the outcome panel judges it
            if h == rehearsal.SMALLEST_PROFILE_HEIGHT:  # the one profile height the steps are exact for
                assert shown == {"fails": "red", "degraded": "orange", "holds": "text"}[got], lines
    mappings = row["Outcome"]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {v["text"]: (int(k), v["color"]) for k, v in mappings.items()} == {
        "holds": (0, "green"),
        "degraded": (1, "orange"),
        "fails": (2, "red"),
    }
    # With no call in the last 24 h (the exporter drops a call's series then) every panel says so or shows a dash.
    assert row["Outcome"]["fieldConfig"]["defaults"]["noValue"] == "no rehearsal call in the last 24 h"
    assert row["Last call"]["fieldConfig"]["defaults"]["noValue"] == "no rehearsal call in the last 24 h"
    assert all(p["fieldConfig"]["defaults"].get("noValue") for p in row.values())
    assert all(t["instant"] for p in row.values() for t in p["targets"])  # the last call's figures, now


def test_every_grid_map_and_table_links_to_its_drill_down() -> None:
    """A village on a map, grid or table opens its dashboard (a kecamatan row opens the overview narrowed, a
    session row the sessions board)."""
    for d in boards().values():
        for p in panels(d):
            if p["type"] not in ("geomap", "status-history", "table") or d["uid"] == UIDS["village"]:
                continue
            text = json.dumps(p)
            assert re.search(r"/d/desanet-(village|overview|sessions)\b", text), (d["uid"], p["title"])
            if p["type"] != "table":
                (link,) = p["fieldConfig"]["defaults"]["links"]
                assert "var-village=${__" in link["url"], (d["uid"], p["title"])


def test_the_map_reads_village_coordinates_as_numbers() -> None:
    d = boards()["desanet-overview.json"]
    (geo,) = [p for p in panels(d) if p["type"] == "geomap"]
    (layer,) = geo["options"]["layers"]
    assert layer["type"] == "markers"
    assert layer["location"] == {"mode": "coords", "latitude": "latitude", "longitude": "longitude"}
    assert layer["config"]["style"]["color"]["field"] == "Value"
    (t,) = geo["targets"]
    assert t["format"] == "table" and t["instant"] is True
    assert "latitude, longitude" in t["expr"] and "desanet_village_info" in t["expr"]
    conversions = [
        c for tr in geo["transformations"] if tr["id"] == "convertFieldType" for c in tr["options"]["conversions"]
    ]
    assert {c["targetField"] for c in conversions} == {"latitude", "longitude"}
    # …and the exporter does put the inventory's coordinates on desanet_village_info.
    from desanet.district import load_inventory
    from desanet.exporter.metrics import render_village
    from desanet.exporter.state import VillageState

    inv = load_inventory(ROOT / "inventory.yaml")
    v = inv.villages[0]
    (line,) = render_village(VillageState.create(v)).out["desanet_village_info"]
    assert f'latitude="{v.lat}"' in line and f'longitude="{v.lon}"' in line


def test_tables_sort_and_rename_fields_their_queries_produce() -> None:
    """Grafana names a table query's value `Value` (one query) or `Value #<refId>` (several); a rename or
    sort naming anything else silently does nothing. Labels become columns under their own names."""
    for d in boards().values():
        for p in panels(d):
            if p["type"] != "table":
                continue
            refs = [t["refId"] for t in p["targets"]]
            values = {f"Value #{r}" for r in refs} if len(refs) > 1 else {"Value"}
            assert all(t["format"] == "table" and t["instant"] for t in p["targets"]), p["title"]
            (organize,) = [tr["options"] for tr in p["transformations"] if tr["id"] == "organize"]
            renamed = set(organize["renameByName"])
            assert values <= renamed, (p["title"], values - renamed)
            labels = renamed - values
            exprs = " ".join(t["expr"] for t in p["targets"])
            for label in labels if "ALERTS{" not in exprs else ():  # alert labels come from the rules
                assert re.search(rf"\b{label}\b", exprs), (p["title"], label)
            for tr in p["transformations"]:
                if tr["id"] == "sortBy":
                    (key,) = [s["field"] for s in tr["options"]["sort"]]
                    assert key in values | labels, (p["title"], key)


def test_verdict_rank_is_the_exporters() -> None:
    from desanet.exporter.scheduler import VERDICT_RANK

    assert promql.VERDICT_RANK == VERDICT_RANK


# ------------------------------------------------------------------------------------------------ promtool
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (scripts/setup.sh)")

# Values for the dashboards' own variables when a query is checked or run: real names from the lab inventory.
SAMPLE = {
    "village": "kabat",
    "kecamatan": "Kabat",
    "profile": "meet-hd",
    "session": "Rapat koordinasi Bupati dan kepala desa",
    **BUILTINS,
}


@needs_promtool
def test_every_query_parses(tmp_path: Path) -> None:
    rules = []
    for d in boards().values():
        for p, t in targets(d):
            rules.append({"record": f"check:{d['uid'].replace('-', '_')}:{p['id']}_{t['refId']}", "expr": ""})
            rules[-1]["expr"] = substitute(t["expr"], SAMPLE)
        for v in variables(d).values():
            if v["type"] == "query":
                inner = re.fullmatch(r"label_values\((.*), *\w+\)", v["query"])
                if inner and inner.group(1):
                    name = f"check:{d['uid'].replace('-', '_')}:var_{v['name']}"
                    rules.append({"record": name, "expr": substitute(inner.group(1), SAMPLE)})
    path = tmp_path / "queries.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))  # JSON is YAML
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "FAILED" not in proc.stderr, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def _series(name: str, labels: dict[str, str], values: list[float]) -> dict[str, str]:
    lbl = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{lbl}}}", "values": " ".join(f"{x:g}" for x in values)}


@needs_promtool
def test_promql_means_what_the_panels_say(tmp_path: Path) -> None:
    """Eight days of synthetic series (5-minute steps from 1970-01-01 00:00 UTC), evaluated by promtool."""
    step, days = 300, 8
    n = days * 86400 // step + 1
    times = [i * step for i in range(n)]
    start = days * 86400 + 13 * 3600  # the next session: day 8, 13:00, for 90 minutes
    sess = {"village": "a", "kecamatan": "K", "session": "Rapat", "profile": "meet-hd"}
    # Village a was not ready from 13:00 to 13:45 on day 5 — half of that day's session hours (13:00–14:30).
    outage = range(5 * 86400 + 13 * 3600, 5 * 86400 + 13 * 3600 + 45 * 60)
    ready_a = [0.0 if t in outage else 1.0 for t in times]
    village = {"village": "a", "kecamatan": "K"}

    def verdict(labels: dict[str, str], which: str) -> list[dict[str, str]]:
        return [
            _series("desanet_video_verdict", {**labels, "verdict": v}, [1.0 if v == which else 0.0] * n)
            for v in ("ready", "at_risk", "not_ready", "unknown")
        ]

    def twice(series: dict[str, str]) -> list[dict[str, str]]:
        """The series as two targets export it (an HA pair): every figure must come out once."""
        name, rest = series["series"].split("{", 1)
        return [{**series, "series": f'{name}{{instance="{i}", {rest}'} for i in ("x1", "x2")]

    meet_hd = [{**v, "series": v["series"]} for v in verdict({**village, "profile": "meet-hd"}, "ready")]
    for row, ready in zip(meet_hd, ("ready", "at_risk", "not_ready", "unknown"), strict=True):
        if ready == "ready":
            row["values"] = " ".join(f"{x:g}" for x in ready_a)
        elif ready == "not_ready":
            row["values"] = " ".join(f"{1 - x:g}" for x in ready_a)
    inputs = [
        *twice(_series("desanet_session_start_timestamp_seconds", sess, [float(start)] * n)),
        *twice(_series("desanet_session_duration_seconds", {"session": "Rapat"}, [5400.0] * n)),
        *[x for row in meet_hd for x in twice(row)],
        *twice(_series("desanet_village_info", {**village, "name": "A"}, [1.0] * n)),
        _series("desanet_village_info", {"village": "b", "kecamatan": "K", "name": "B"}, [1.0] * n),
        _series("desanet_village_info", {"village": "c", "kecamatan": "L", "name": "C"}, [1.0] * n),
        *verdict({**village, "profile": "zoom-gallery"}, "at_risk"),
        *verdict({"village": "c", "kecamatan": "L", "profile": "meet-hd"}, "not_ready"),
        # b has no verdict yet: it must still count, as unknown.
    ]
    every = {"village": ".*", "kecamatan": ".*", "profile": ".*", "session": ".*", **BUILTINS}
    at = f"{days * 24}h"
    session_labels = '{kecamatan="K", profile="meet-hd", session="Rapat", village="a"}'
    tests: list[dict[str, Any]] = []
    for day in range(1, 8):
        expected = 0.5 if day == 3 else 1.0  # the 24 h ending 2 days before day 8 00:00 is day 5
        expr = substitute(promql.ready_in_session_hours(day, promql.SESSION), every)
        tests.append({"expr": expr, "eval_time": at, "exp_samples": [{"labels": session_labels, "value": expected}]})
    # Worst verdict over profiles per village; unknown for a village with no verdict.
    rank = "village:desanet_video_verdict:rank"
    tests.append(
        {
            "expr": substitute(promql.village_rank(), every),
            "eval_time": at,
            "exp_samples": [
                {"labels": f'{rank}{{kecamatan="K", village="a"}}', "value": 2},
                {"labels": f'{rank}{{kecamatan="K", village="b"}}', "value": 1},
                {"labels": f'{rank}{{kecamatan="L", village="c"}}', "value": 3},
            ],
        }
    )
    # Counts per verdict, every village once though a is exported twice.
    count = "kecamatan:desanet_village_verdict:count"
    tests.append(
        {
            "expr": substitute(f'sum by (verdict) ({count}{{kecamatan=~"$kecamatan"}})', every),
            "eval_time": at,
            "exp_samples": [
                {"labels": '{verdict="ready"}', "value": 0},
                {"labels": '{verdict="unknown"}', "value": 1},
                {"labels": '{verdict="at_risk"}', "value": 1},
                {"labels": '{verdict="not_ready"}', "value": 1},
            ],
        }
    )
    # The session's villages are judged by the session's profile (meet-hd: ready), not the worst profile.
    tests.append(
        {
            "expr": substitute(promql.session_rank(promql.SESSION), every),
            "eval_time": at,
            "exp_samples": [{"labels": promql.SESSION_RANK + session_labels, "value": 0}],
        }
    )
    shutil.copy(RULES_FILE, tmp_path / "rules.yml")  # the panels read the recording rules
    spec = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "5m",
        "group_eval_order": [
            "desanet-records",
            "desanet-history",
            "desanet-availability-hourly",
            "desanet-availability",
        ],
        "tests": [{"interval": "5m", "input_series": inputs, "promql_expr_test": tests}],
    }
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(spec))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@needs_promtool
def test_call_row_reads_the_villages_last_call_once_per_direction(tmp_path: Path) -> None:
    """The rehearsal row's queries on exposition series with the agreed call families, each exported by two
    targets (an HA pair), for the village on the board and another: one value per direction, the village's own,
    counted once; and nothing at all for a village with no call (the panels then say so)."""
    call_a = {"village": "a", "kecamatan": "K"}
    call_b = {"village": "b", "kecamatan": "K"}
    figures = {  # family: (up, down) for village a; b's are different so a leak would show
        rehearsal.OUTCOME: (0, 1),
        rehearsal.FPS: (29.5, 18.0),
        rehearsal.HEIGHT: (360, 270),
        rehearsal.FREEZE: (0.0, 0.034),
        rehearsal.CONCEALMENT: (0.004, 0.052),
        rehearsal.LOSS: (0.0, 0.02),
        rehearsal.JITTER_BUFFER: (0.041, 0.118),
        rehearsal.BITRATE: (124750, 51500),  # bytes per second; the panel shows bits
    }
    limitation = {"up": "none", "down": "bandwidth"}
    inputs: list[dict[str, str]] = []
    for instance in ("x1", "x2"):
        for labels in (call_a, call_b):
            at = {**labels, "instance": instance}
            mine = labels is call_a
            inputs.append(_series(rehearsal.LAST, at, [3600.0 if mine else 1800.0] * 3))
            for i, d in enumerate(("up", "down")):
                for family, pair in figures.items():
                    value = pair[i] if mine else 2 if family == rehearsal.OUTCOME else pair[i] / 2
                    inputs.append(_series(family, {**at, "direction": d}, [value] * 3))
                info = {**at, "direction": d, "profile": "zoom-gallery", "limitation": limitation[d]}
                inputs.append(_series(rehearsal.INFO, info, [1.0] * 3))
    row = {p["title"]: p for p in row_panels(boards()["desanet-village.json"], "Last rehearsal call")}
    by_family = {family: title for title, p in row.items() for family in figures if family in p["targets"][0]["expr"]}
    assert set(by_family) == set(figures)  # every judged figure has its panel
    tests: list[dict[str, Any]] = []
    for family, title in by_family.items():
        up, down = (x * (8 if family == rehearsal.BITRATE else 1) for x in figures[family])
        tests.append(
            {
                "expr": substitute(row[title]["targets"][0]["expr"], {**SAMPLE, "village": "a"}),
                "eval_time": "5m",
                "exp_samples": [
                    {"labels": '{direction="up"}', "value": up},
                    {"labels": '{direction="down"}', "value": down},
                ],
            }
        )
    tests.append(
        {
            "expr": substitute(row["Sender limited by"]["targets"][0]["expr"], {**SAMPLE, "village": "a"}),
            "eval_time": "5m",
            "exp_samples": [
                {"labels": f'{{direction="{d}", limitation="{r}", profile="zoom-gallery"}}', "value": 1}
                for d, r in limitation.items()
            ],
        }
    )
    tests.append(
        {
            "expr": substitute(row["Last call"]["targets"][0]["expr"], {**SAMPLE, "village": "a"}),
            "eval_time": "5m",
            "exp_samples": [{"labels": "{}", "value": 3600 * 1000}],
        }
    )
    for p in row.values():  # a village never rehearsed: no data, so each panel shows its no-value text
        tests.append(
            {
                "expr": substitute(p["targets"][0]["expr"], {**SAMPLE, "village": "c"}),
                "eval_time": "5m",
                "exp_samples": [],
            }
        )
    spec = {"tests": [{"interval": "5m", "input_series": inputs, "promql_expr_test": tests}]}
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(spec))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


# ------------------------------------------------------------------------------------------------ provisioning
def _yaml(path: Path) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def test_provisioning_names_the_datasource_uid_the_dashboards_default_to() -> None:
    ds = _yaml(PROVISIONING / "datasources" / "desanet.yaml")
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    prov = _yaml(PROVISIONING / "dashboards" / "desanet.yaml")
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert provider["allowUiUpdates"] is False  # the JSON is generated: UI edits would be lost


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args: str) -> Any:
    import typer
    from typer.testing import CliRunner

    from desanet.cli import dashboards as command

    app = typer.Typer()
    command.register(app)

    @app.callback()
    def _root() -> None:
        """desanet"""

    return CliRunner().invoke(app, list(args))


def test_cli_builds_then_checks_and_names_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "json"
    r = _cli("dashboards", "build", "--output", str(out))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(build.render())
    assert _cli("dashboards", "build", "--check", "--output", str(out)).exit_code == 0
    stale = out / "desanet-village.json"
    stale.write_text(stale.read_text().replace("desanet · Village", "edited by hand"))
    (out / "old.json").write_text("{}")
    r = _cli("dashboards", "build", "--check", "--output", str(out))
    assert r.exit_code == 1
    assert "desanet-village.json: differs" in r.output and "old.json: not produced" in r.output
    assert "edited by hand" in stale.read_text()  # --check writes nothing
    assert _cli("dashboards", "build", "--output", str(out)).exit_code == 0
    assert "desanet · Village" in stale.read_text()
