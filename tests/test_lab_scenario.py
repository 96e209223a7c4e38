"""Scenarios (`desanet lab scenario run|check|list`): timelines of impairments, loads and router events.

A broken scenario file must come back as every problem at once, FILE:LINE:COL: message, before anything in the
lab is touched; the shipped scenarios must be valid against the shipped inventory; a scenario must play end to
end, with --speed, and an interrupted one must undo what it did.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from desanet.district import load_inventory
from desanet.lab import scenario as sc
from desanet.lab.topology import plan
from tests.conftest import ROOT, Lab

NAMES = sc.LabNames.of_plan(plan(load_inventory(ROOT / "inventory.yaml")))


def problems(text: str) -> list[str]:
    with pytest.raises(sc.ScenarioError) as err:
        sc.parse(text, "s.yaml", NAMES)
    return [str(p) for p in err.value.problems]


def test_shipped_scenarios_are_valid_against_the_shipped_inventory() -> None:
    paths = sc.shipped()
    assert {p.stem for p in paths} >= {
        "uplink-afternoon",
        "office-updates",
        "bloated-cpe",
        "fibre-degrading",
        "power-cut",
        "demo",
    }
    for p in paths:
        scn = sc.load_file(p, NAMES)
        assert scn.cause.strip() and scn.steps, p


def test_every_problem_at_once_with_its_line_and_column() -> None:
    got = problems(
        "name: broken\n"
        "cause: testing\n"
        "steps:\n"
        "  - at: 0\n"
        "    load: {village: kabatt, kind: bulky, for: 10}\n"  # 5
        "  - at: soon\n"
        "    impair: {village: kabat, delay: -3}\n"  # 7
        "  - at: 5\n"
        "    reboot: {village: kabat}\n"
        "    restore: all\n"  # 10
        "  - at: 6\n"
        "    load: {kecamatan: Mncar, flows: 2}\n"  # 12
        "  - at: 7\n"
        "    restor: {village: kabat}\n"  # 14
        "  - at: 8\n"
        "    impair: {kecamatan: Kabat, to: -20, over: 1h}\n"  # 16
        "  - at: 9\n"
        "    load: {village: kabat, kind: video, down: max, for: 1m}\n"  # 18
    )
    assert got == [
        "s.yaml:5:21: steps[0].load.village: no village 'kabatt' in the lab (did you mean 'kabat'?)",
        "s.yaml:5:35: steps[0].load.kind: must be 'bulk', 'video' or 'cbr' (got 'bulky')",
        "s.yaml:6:9: steps[1].at: must be seconds or a duration such as 90s, 15m, 2h or 1h30m (got 'soon')",
        "s.yaml:7:37: steps[1].impair.delay: must be greater than or equal to 0 (got -3)",
        "s.yaml:8:5: steps[2]: one action per step, not reboot and restore: give each its own step",
        "s.yaml:12:5: steps[3].load: missing required key 'for'",
        "s.yaml:12:23: steps[3].load.kecamatan: no kecamatan 'Mncar' in the lab (did you mean 'Muncar'?)",
        "s.yaml:14:5: steps[4]: unknown key 'restor' (did you mean 'restore'?)",
        "s.yaml:16:5: steps[5].impair: optical levels belong to a village, not a kecamatan",
        "s.yaml:18:5: steps[6].load: a video load has a bitrate: give down/up in Mbit/s (max is for bulk)",
    ]


def test_yaml_and_top_level_mistakes_are_located_too() -> None:
    assert problems("name: x\ncause: y\nsteps:\n  - at: 0\n   load: {}\n")[0].startswith("s.yaml:5:4: YAML syntax")
    assert problems("- at: 0\n") == ["s.yaml:1:1: a scenario is a mapping with name:, cause: and steps:"]
    assert problems("name: x\ncause: y\nsteps: []\n") == ["s.yaml:1:1: a scenario needs at least one step under steps:"]
    assert problems("name: x\nsteps:\n  - {at: 1, note: hello}\n") == ["s.yaml:1:1: missing required key 'cause'"]
    missing = sc.resolve("no-such-scenario")
    with pytest.raises(sc.ScenarioError, match="no such file and no shipped scenario has that name"):
        sc.load_file(missing)


def test_timeline_compresses_every_time_and_brings_power_back() -> None:
    scn = sc.parse(
        "name: t\ncause: c\nsteps:\n"
        "  - {at: 1h, reboot: {village: kabat, down_for: 10m}}\n"
        "  - {at: 0, load: {village: kabat, for: 2h}}\n"
        "  - {at: 30m, impair: {village: kabat, to: -25, over: 3h}}\n"
        "  - {at: 0, impair: {village: kabat, up_buffer_ms: 400, loss: 1, cut: true}}\n",
        "t.yaml",
        NAMES,
    )
    items, end = sc.timeline(scn, speed=60)
    assert [(it.t, it.step.action if it.step else f"power on {it.village}") for it in items] == [
        (0.0, "load"),
        (0.0, "impair"),
        (30.0, "impair"),
        (60.0, "reboot"),
        (70.0, "power on kabat"),
    ]
    assert end == 210.0  # the ramp ends last: 30 min + 3 h, at 60x
    assert sc.describe_step(scn.steps[1], 60) == "load kabat: bulk, 4 flows, down as fast as TCP goes for 2 min"
    assert sc.describe_step(scn.steps[0], 60) == "power cut at kabat for 10 s"
    assert sc.describe_step(scn.steps[2], 60) == "impair kabat: optical rx ramp to -25 dBm over 3 min"
    assert sc.describe_step(scn.steps[3]) == "impair kabat: cut, loss 1 %, up buffer 400 ms"


# ---------------------------------------------------------------------------------------------- in the lab
def _status(lab: Lab) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(lab.desanet("lab", "status", "--json", check=False).stdout)
    return out


@pytest.mark.lab
@pytest.mark.slow
def test_a_scenario_plays_end_to_end(lab: Lab, tmp_path: Path) -> None:
    f = tmp_path / "short.yaml"
    f.write_text(
        "name: a short afternoon\n"
        "cause: a test of the player\n"
        "steps:\n"
        "  - at: 0\n"
        "    note: the office starts a download\n"
        "    load: {village: rogojampi, kind: bulk, down: 10, flows: 2, for: 40s}\n"
        "  - at: 10s\n"
        "    impair: {village: rogojampi, delay: 20, up_delay: 5}\n"
        "  - at: 20s\n"
        "    reboot: {village: kebaman, down_for: 20s}\n"
        "  - at: 25s\n"
        "    reboot: {village: sukonatar, down_for: 60s}\n"
        "  - at: 45s\n"
        "    restore: {village: sukonatar}\n"  # back before its time: the timeline's power-on is skipped
        "  - at: 50s\n"
        "    restore: {village: rogojampi}\n"
    )
    play = subprocess.Popen(
        [sys.executable, "-m", "desanet.cli", "lab", "scenario", "run", str(f), "--speed", "10"],
        env=lab.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(3.2)  # 32 s of scenario time: load running, delay set, kebaman dark
        st = _status(lab)
        assert [t["target"] for t in st["tasks"].values()] == ["rogojampi"]
        assert st["impaired"]["v:rogojampi"]["down"]["delay_ms"] == 20
        assert "reboot:kebaman" in st["events"] and "reboot:sukonatar" in st["events"]
        out, err = play.communicate(timeout=30)
    finally:
        if play.poll() is None:
            play.send_signal(signal.SIGTERM)
            play.wait(20)
    assert play.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "scenario: a short afternoon (8.5 s at 10x)"
    assert any("the office starts a download" in line for line in lines)
    assert any("load rogojampi: bulk, 2 flows, down 10 Mbit/s for 4 s" in line for line in lines)
    assert any("power cut at kebaman for 2 s" in line for line in lines)
    assert any("power back at kebaman" in line for line in lines)
    assert any("restore sukonatar" in line for line in lines)
    assert not any("power back at sukonatar" in line for line in lines), out
    assert any("restore rogojampi" in line for line in lines)
    assert lines[-1].endswith("scenario ended")
    st = _status(lab)
    assert st["up"] and not st["tasks"] and not st["events"] and "v:rogojampi" not in st["impaired"]
    for slug in ("kebaman", "sukonatar"):
        assert lab.noc("ping", "-c", "1", "-W", "1", lab.address(slug)).returncode == 0


@pytest.mark.lab
@pytest.mark.slow
def test_a_broken_scenario_changes_nothing_and_says_where(lab: Lab, tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text(
        "name: broken\ncause: typo\nsteps:\n"
        "  - {at: 0, impair: {village: rogojampi, delay: 50}}\n"
        "  - {at: 1, load: {village: rogojampii, for: 10}}\n"
    )
    proc = lab.desanet("lab", "scenario", "run", str(f), check=False)
    assert proc.returncode == 2
    assert f"{f}:5:29: steps[1].load.village: no village 'rogojampii' in the lab (did you mean 'rogojampi'?)" in (
        proc.stderr
    )
    assert "v:rogojampi" not in _status(lab)["impaired"]  # the good first step did not run either


@pytest.mark.lab
@pytest.mark.slow
def test_an_interrupted_scenario_undoes_what_it_did(lab: Lab, tmp_path: Path) -> None:
    f = tmp_path / "long.yaml"
    f.write_text(
        "name: long\ncause: interrupted\nsteps:\n"
        "  - {at: 0, impair: {kecamatan: Srono, delay: 30}}\n"
        "  - {at: 0, load: {kecamatan: Srono, kind: video, for: 1h}}\n"
        "  - {at: 0, reboot: {village: sukonatar, down_for: 1h}}\n"
        "  - {at: 0, impair: {village: kebaman, to: -30, over: 1h}}\n"
        "  - {at: 1h, note: never reached}\n"
    )
    play = subprocess.Popen(
        [sys.executable, "-m", "desanet.cli", "lab", "scenario", "run", str(f)],
        env=lab.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(_status(lab).get("tasks", {})) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        st = _status(lab)
        assert "reboot:sukonatar" in st["events"] and "k:Srono" in st["impaired"]
    finally:
        play.send_signal(signal.SIGTERM)
        out, _ = play.communicate(timeout=60)
    assert play.returncode == 130, out
    assert "interrupted: undoing what this scenario did" in out
    st = _status(lab)
    assert st["up"] and not st["tasks"] and not st["events"] and "k:Srono" not in st["impaired"]
    assert lab.noc("ping", "-c", "1", "-W", "1", lab.address("sukonatar")).returncode == 0
