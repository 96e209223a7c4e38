"""The alert and recording rules and the Alertmanager example, checked with the tools the NOC runs.

What an operator relies on: Prometheus loads the rules (promtool check), every alert fires when it should and
stays quiet when it should not (promtool's unit tests, which must hold a firing and an empty case for every
alert), every alert says what to do (severity, English and Indonesian summary, a runbook hint that points at
a section of docs/alerts.md), and Alertmanager routes every kecamatan to its field team and the NOC.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.conftest import ROOT

ALERTS = ROOT / "alerts"
RULES = ALERTS / "desanet.rules.yml"
OVERRIDES = ALERTS / "desanet.overrides.rules.yml"
UNIT_TESTS = sorted(ALERTS.glob("*.test.yml"))
AM_CONFIG = ALERTS / "alertmanager.yml"
DOCS = ROOT / "docs" / "alerts.md"
SEVERITIES = {"critical", "warning", "info"}
# level:metric:operations (https://prometheus.io/docs/practices/rules/)
RECORD_NAME = re.compile(r"^[a-z_]+:desanet_[a-z_]+:[a-z0-9_]+$")
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (scripts/setup.sh)")
needs_amtool = pytest.mark.skipif(shutil.which("amtool") is None, reason="needs amtool (scripts/setup.sh)")


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load(RULES)["groups"] for r in g["rules"] if "alert" in r]


def record_rules() -> list[dict[str, Any]]:
    return [r for g in load(RULES)["groups"] for r in g["rules"] if "record" in r]


def seconds(duration: str) -> float:
    """A Prometheus duration ('1h30m', '90s') in seconds."""
    parts = DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * UNIT_SECONDS[u] for n, u in parts)


def shrink_durations(text: str, factor: float, floor_seconds: float = 1.0) -> str:
    """The rules with every `for:` divided by `factor` (at least `floor_seconds`), for an end-to-end run that
    cannot wait minutes. Only `for:` changes: range windows and offsets stay, so rules that need history
    (rates over 5m, trends over days) keep their meaning and simply do not fire in a short run."""
    yaml = YAML()
    yaml.width = 4096
    doc = yaml.load(text)
    for group in doc["groups"]:
        for rule in group["rules"] or []:
            if "for" in rule:
                rule["for"] = f"{max(floor_seconds, seconds(str(rule['for'])) / factor):g}s"
    out = StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


# ---------------------------------------------------------------------------------------------- promtool
@needs_promtool
def test_rules_load_cleanly_in_prometheus() -> None:
    proc = run("promtool", "check", "rules", str(RULES), str(OVERRIDES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "WARNING" not in proc.stdout.upper()


@needs_promtool
@pytest.mark.parametrize("unit_tests", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(unit_tests: Path) -> None:
    proc = run("promtool", "test", "rules", str(unit_tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        doc = load(path)
        assert doc["rule_files"] == [RULES.name]
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                if not expected:
                    quiet.add(case["alertname"])
                for alert in expected:
                    firing.add((case["alertname"], alert["exp_labels"]["severity"]))
    for rule in alert_rules():
        assert (rule["alert"], rule["labels"]["severity"]) in firing, f"{rule['alert']} never fires in a test"
        assert rule["alert"] in quiet, f"{rule['alert']} has no test where it stays quiet"


# ---------------------------------------------------------------------------------------------- contents
def test_every_alert_says_how_bad_what_and_what_to_do() -> None:
    docs = DOCS.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", docs, flags=re.M)}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        ann = rule["annotations"]
        for key in ("summary", "summary_id", "description", "runbook"):
            assert ann.get(key, "").strip(), f"{name} has no {key}"
        link = re.search(r"docs/alerts\.md#([a-z0-9-]+)", ann["runbook"])
        assert link and link.group(1) == name.lower(), f"{name}: runbook must point at docs/alerts.md#{name.lower()}"
        assert link.group(1) in anchors, f"docs/alerts.md has no section {name}"


def test_recording_rules_follow_the_naming_convention() -> None:
    names = [r["record"] for r in record_rules()]
    for name in names:
        assert RECORD_NAME.match(name), name
    for must in ("village:desanet_rtt_seconds:p95_5m", "kecamatan:desanet_video_ready:ratio"):
        assert must in names


def test_override_examples_name_records_the_rules_read() -> None:
    rules = RULES.read_text()
    examples = re.findall(r"record: (desanet_override:\S+)", OVERRIDES.read_text())
    assert examples
    for name in examples:
        assert name in rules, f"{name} (overrides example) is not read by desanet.rules.yml"


@needs_promtool
def test_shrunk_rules_for_end_to_end_runs_still_load(tmp_path: Path) -> None:
    original = {r["alert"] + r["labels"]["severity"]: seconds(r.get("for", "0s")) for r in alert_rules()}
    shrunk_path = tmp_path / "rules.yml"
    shrunk_path.write_text(shrink_durations(RULES.read_text(), 20))
    proc = run("promtool", "check", "rules", str(shrunk_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shrunk = {
        r["alert"] + r["labels"]["severity"]: seconds(r.get("for", "0s"))
        for g in load(shrunk_path)["groups"]
        for r in g["rules"] or []
        if "alert" in r
    }
    assert shrunk["VillageUnreachablecritical"] == 6 and shrunk["KecamatanUplinkDegradedcritical"] == 3
    assert all(shrunk[k] <= max(1.0, v / 20) for k, v in original.items())
    # The kecamatan alert still comes first, so its inhibition is in place before the village alerts fire.
    village = [v for k, v in shrunk.items() if k.startswith("Village")]
    assert shrunk["KecamatanUplinkDegradedcritical"] < min(village)


# ---------------------------------------------------------------------------------------------- Alertmanager
@needs_amtool
def test_alertmanager_example_is_valid() -> None:
    proc = run("amtool", "check-config", str(AM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 inhibit rules" in proc.stdout


def _receivers(*labels: str) -> set[str]:
    proc = run("amtool", "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return set(proc.stdout.strip().split(","))


@needs_amtool
def test_every_kecamatan_reaches_one_field_team_and_the_noc() -> None:
    kecamatan = [k["name"] for k in load(ROOT / "inventory.yaml")["kecamatan"]]
    assert len(kecamatan) == 25
    for name in kecamatan:
        got = _receivers("alertname=VillageUnreachable", "severity=critical", f"kecamatan={name}")
        teams = {r for r in got if r.startswith("field-")}
        assert len(teams) == 1 and "noc" in got, f"{name}: {got}"


@needs_amtool
def test_sessions_and_the_monitor_itself_have_their_own_receivers() -> None:
    assert _receivers("alertname=SessionAtRisk", "kecamatan=Licin", "session=Rapat") == {"noc-sessions"}
    assert _receivers("alertname=DesanetExporterDown", "severity=critical") == {"desanet-admins"}
    assert _receivers("alertname=DesanetProbeScheduleSlipping", "severity=warning") == {"desanet-admins"}
    assert _receivers("alertname=DesanetProbingBehind", "severity=warning", "probe=trace") == {"desanet-admins"}
    assert _receivers("alertname=RouterRebooted", "severity=info", "kecamatan=Licin") == {"noc"}


def test_inhibit_rules_name_alerts_that_exist() -> None:
    names = {r["alert"] for r in alert_rules()}
    config = load(AM_CONFIG)
    for rule in config["inhibit_rules"]:
        for side in ("source_matchers", "target_matchers"):
            for matcher in rule[side]:
                m = re.match(r'alertname(=~|=)"(.+)"', matcher)
                if m is None:
                    continue
                pattern = m.group(2) if m.group(1) == "=~" else re.escape(m.group(2))
                assert any(re.fullmatch(pattern, n) for n in names), f"{matcher} matches no alert"
    kecamatan_rule = next(
        r for r in config["inhibit_rules"] if 'alertname="KecamatanUplinkDegraded"' in r["source_matchers"]
    )
    assert kecamatan_rule["equal"] == ["kecamatan"]
    assert not re.fullmatch(kecamatan_rule["target_matchers"][0].split('"')[1], "SessionAtRisk")


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
