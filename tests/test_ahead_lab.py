"""Ahead of time, shown on a call (issue 14): the session alert fires before the session, and the session's
call then suffers; without the load neither happens.

The lab plays lab/scenarios/session-uplink-fills.yaml: Kecamatan Srono's uplink capped at 5 Mbit/s each way with
a 300 ms queue, filled by the offices' downloads from 30 s on (the full queue puts the RTT past zoom-gallery's
200 ms, at risk since the calibration against real calls, docs/readiness.md; the 150 ms queue used before left
it at ~146 ms, ready now). The test inventory holds one session, "Rapat
desa" (zoom-gallery), for Sukonatar (in Srono) and for Kalibaru Wetan (in Kalibaru, whose uplink gets the same
cap and queue and no load: the control), starting 7 minutes after the scenario does. `desanet serve` (ICMP
only, a 10 s window) and Debian's Prometheus (scrape and evaluate every 5 s) run in the lab's NOC namespace
with the shipped rules unchanged, SessionAtRisk's `for: 5m` included, so the alert can give about
7 min - 30 s - detection - 5 min of warning here. At the session's start each village makes a real call
(`desanet lab call`, 640x360 at 1000 kbit/s, headless Chromium) through its path.

What the NOC relies on: SessionAtRisk fires for the loaded village before its session starts and the call is
then degraded or fails; the control village never has the alert pending or firing and its call holds both
ways. About 10 minutes (the calls wait for the host's call lock).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from desanet.calls.browser import find_chromium
from desanet.lab.scenario import load_file
from tests.conftest import ROOT, Lab, stop_process
from tests.test_alerts_lab import wait_for

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.timeout(720),  # the module's bound: the first test's setup alone waits 7.75 min for the session
    pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (scripts/setup.sh installs Debian's chromium)"),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Prometheus (scripts/setup.sh)"),
]

SCENARIO = ROOT / "lab" / "scenarios" / "session-uplink-fills.yaml"
RULES = ROOT / "alerts" / "desanet.rules.yml"  # shipped, unchanged
EXPORTER = "127.0.0.1:19957"
PROM = "127.0.0.1:19958"
LOADED_KEC, LOADED = "Srono", "sukonatar"
CONTROL_KEC, CONTROL = "Kalibaru", "kalibaru-wetan"
SESSION, PROFILE = "Rapat desa", "zoom-gallery"  # zoom-gallery's picture is the calls' 640x360
SESSION_AFTER = 7 * 60.0  # scenario start -> session start: the scenario's "10:00" note
STARTUP = 45.0  # what serve and Prometheus get to measure both villages before the scenario must start
FIRE_BY = 150.0  # the loaded village's alert must be pending this long after the scenario starts
SMALL = ("--video", "640x360", "--fps", "30", "--kbit", "1000")
CALL_SECONDS = 25


def session_inventory(tmp: Path, session_start: float) -> Path:
    """The shipped inventory cut to the two kecamatan's villages, ICMP every 0.2 s over a 10 s window, and one
    session, starting at `session_start`, for one village of each."""
    yaml = YAML()
    doc = yaml.load((ROOT / "inventory.yaml").read_text())
    doc["villages"] = [v for v in doc["villages"] if v["kecamatan"] in (LOADED_KEC, CONTROL_KEC)]
    doc["settings"]["icmp"] = {"interval_seconds": 0.2, "window_seconds": 10, "timeout_seconds": 1}
    start = datetime.fromtimestamp(session_start, UTC).isoformat()
    doc["sessions"] = [
        {"title": SESSION, "start": start, "duration_minutes": 30, "villages": [LOADED, CONTROL], "profile": PROFILE}
    ]
    path = tmp / "inventory.yaml"
    with path.open("w") as f:
        yaml.dump(doc, f)
    return path


class Prom:
    """Prometheus' HTTP API, reached with curl inside the NOC namespace where it listens."""

    def __init__(self, lab: Lab):
        self.lab = lab

    def _get(self, path: str, **params: Any) -> Any:
        url = f"http://{PROM}{path}?" + urllib.parse.urlencode(params)
        data = json.loads(self.lab.noc("curl", "-s", "-m", "10", url, timeout=15).stdout)
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get(
            "/api/v1/query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {})
        )["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float = 5.0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get(
            "/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step)
        )["result"]
        return result

    def session_alerts(self) -> list[dict[str, Any]]:
        """SessionAtRisk as /api/v1/alerts has it now (pending and firing)."""
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == "SessionAtRisk"]


@dataclass
class Run:
    lab: Lab
    prom: Prom
    stack_up: float  # wall clock: serve and Prometheus measuring both villages
    scenario_start: float
    session_start: float
    seen: dict[str, dict[str, float]] = field(default_factory=dict)  # village -> state -> first seen (polled)
    limiting: dict[str, str] = field(default_factory=dict)


def _sel(village: str, state: str | None = None) -> str:
    s = f'alertname="SessionAtRisk",village="{village}",session="{SESSION}"'
    return s + (f',alertstate="{state}"' if state else "")


@pytest.fixture(scope="module")
def ahead(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("ahead")
    t0 = time.time()
    session_start = math.ceil(t0 + STARTUP + SESSION_AFTER)
    inventory = session_inventory(tmp, session_start)
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 5s, evaluation_interval: 5s}\n"
        f"rule_files: ['{RULES}']\n"
        f"scrape_configs:\n  - job_name: desanet\n    static_configs: [{{targets: ['{EXPORTER}']}}]\n"
    )
    # The control kecamatan gets the scenario's cap and queue, and none of its load.
    cap = next(s.impair for s in load_file(SCENARIO).steps if s.impair is not None and s.impair.kecamatan)
    assert cap is not None and cap.kecamatan == LOADED_KEC and cap.rate and cap.up_rate and cap.buffer_ms
    for kec in (LOADED_KEC, CONTROL_KEC):
        lab.restore(f"--kecamatan={kec}")
    lab.impair(
        "--kecamatan", CONTROL_KEC, "--rate", f"{cap.rate:g}", "--up-rate", f"{cap.up_rate:g}",
        "--buffer-ms", f"{cap.buffer_ms:g}",
    )  # fmt: skip
    procs: list[tuple[str, subprocess.Popen[str]]] = []

    def start(name: str, argv: list[str], netns: bool = True, **kw: Any) -> None:
        log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        cmd = ["ip", "netns", "exec", lab.noc_ns, *argv] if netns else argv
        procs.append((name, subprocess.Popen(cmd, text=True, stdout=log, stderr=subprocess.STDOUT, **kw)))

    try:
        start(
            "serve",
            [
                sys.executable, "-m", "desanet.cli", "serve", "--inventory", str(inventory),
                "--web.listen-address", EXPORTER, "--probes", "icmp",
            ],
            env={**lab.env, "DESANET_STATE_DIR": str(tmp / "state")},
        )  # fmt: skip
        start(
            "prometheus",
            [
                "prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address={PROM}",
            ],
        )  # fmt: skip
        prom = Prom(lab)
        ready = f'village_profile:desanet_video_ready:known{{profile="{PROFILE}",village=~"{LOADED}|{CONTROL}"}} == 1'
        sessions = f'desanet_session_start_timestamp_seconds{{session="{SESSION}"}} == {session_start}'
        wait_for(
            "Prometheus to see both villages ready and their session",
            lambda: len(prom.query(ready)) == 2 and len(prom.query(sessions)) == 2,
            timeout=STARTUP,
        )
        stack_up = time.time()
        time.sleep(max(0.0, session_start - SESSION_AFTER - time.time()))
        start(
            "scenario",
            [sys.executable, "-m", "desanet.cli", "lab", "scenario", "run", str(SCENARIO)],
            False,
            env=lab.env,
        )
        run = Run(lab, prom, stack_up, time.time(), session_start)
        print(
            f"\nstack measuring {stack_up - t0:.1f} s after start; "
            f"session {session_start - run.scenario_start:.1f} s after the scenario's start"
        )
        # Watch /api/v1/alerts until the session starts; give up early if the load never shows.
        while time.time() < session_start:
            for a in prom.session_alerts():
                v = a["labels"].get("village", "")
                run.seen.setdefault(v, {}).setdefault(a["state"], time.time())
                run.limiting[v] = a["annotations"].get("limiting", "")
            if time.time() - run.scenario_start > FIRE_BY and "pending" not in run.seen.get(LOADED, {}):
                pytest.fail(f"SessionAtRisk for {LOADED} not even pending {FIRE_BY:.0f} s into the scenario")
            time.sleep(min(5.0, max(0.0, session_start - time.time())))
        yield run
    finally:
        for _, proc in reversed(procs):
            stop_process(proc)  # the scenario first: SIGTERM undoes it (its loads stopped by their PIDs)
        lab.desanet("lab", "load", "--kecamatan", LOADED_KEC, "--stop", check=False)
        for kec in (LOADED_KEC, CONTROL_KEC):
            lab.restore(f"--kecamatan={kec}")
        for name, _ in procs:
            print(f"--- {name}.log (tail)\n" + (tmp / f"{name}.log").read_text()[-1500:])


def first_sample(prom: Prom, expr: str, start: float, end: float) -> float | None:
    """Wall-clock time of the first sample of `expr` in [start, end] (the evaluation that wrote it)."""
    got = prom.query_range(f"timestamp({expr})", start, end)
    times = [float(v) for s in got for _, v in s["values"]]
    return min(times) if times else None


def call(lab: Lab, village: str) -> tuple[int, dict[str, Any]]:
    proc = lab.desanet(
        "lab", "call", village, *SMALL, "--duration", str(CALL_SECONDS), "--json", check=False, timeout=300
    )
    assert proc.returncode in (0, 1), f"lab call {village} could not call ({proc.returncode}): {proc.stderr}"
    out: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, out


def summary(out: dict[str, Any]) -> str:
    words = []
    for d, x in out["directions"].items():
        words.append(
            f"{d} {x['outcome']} ({x['fps'] or 0:.0f} fps {x['width'] or 0}x{x['height'] or 0}, "
            f"{(x['freeze_ratio'] or 0):.1%} frozen, {(x['audio_concealment_ratio'] or 0):.1%} audio concealed, "
            f"{x['kbit'] or 0:.0f} kbit/s, limited by {x['limitation']})"
        )
    return "; ".join(words) + f"; host load {out['host_load']} on {out['host_cpus']} CPUs"


def test_uplink_filled_before_the_session_alerts_ahead_and_the_call_suffers(ahead: Run) -> None:
    prom, start = ahead.prom, ahead.session_start
    fired = first_sample(prom, f"ALERTS{{{_sel(LOADED, 'firing')}}}", ahead.stack_up, start)
    pending = first_sample(prom, f"ALERTS{{{_sel(LOADED, 'pending')}}}", ahead.stack_up, start)
    assert fired is not None, f"SessionAtRisk never fired for {LOADED} before its session (polled: {ahead.seen})"
    assert "firing" in ahead.seen.get(LOADED, {}), ahead.seen  # /api/v1/alerts said so too
    lead = start - fired
    assert lead > 0
    # What it judged: the session's profile not ready (or at risk) while it fired.
    known = prom.query(f'village_profile:desanet_video_ready:known{{village="{LOADED}",profile="{PROFILE}"}}', fired)
    assert known and known[0]["value"][1] == "0", known
    t_call = time.time()
    code, out = call(ahead.lab, LOADED)
    truth = json.loads(ahead.lab.desanet("lab", "truth", "--json", "--window", "20").stdout)
    link = truth["kecamatan"][LOADED_KEC]["link"]["down"]
    since_pending = f"{pending - ahead.scenario_start:.1f} s" if pending is not None else "never"
    print(
        f"\nloaded ({LOADED}): scenario start -> pending {since_pending}, "
        f"firing {fired - ahead.scenario_start:.1f} s (load at +30 s, for: 5m); lead time {lead:.1f} s before the "
        f"session; limiting: {ahead.limiting.get(LOADED)}\n  call {t_call - start:.1f} s after the start: "
        f"{out['outcome']}, {summary(out)}\n  uplink down over the call's last 20 s: "
        f"{link['passed_mbit'] or 0:.2f} Mbit/s passed, queue p50 {link['queue_delay_ms_p50'] or 0:.0f} ms, "
        f"{link['dropped_queue_packets']} tail drops"
    )
    assert code == 1 and out["outcome"] in ("degraded", "fails"), summary(out)
    assert any(x["outcome"] in ("degraded", "fails") for x in out["directions"].values()), summary(out)


def test_same_cap_without_the_load_stays_quiet_and_the_call_holds(ahead: Run) -> None:
    prom, start = ahead.prom, ahead.session_start
    got = prom.query_range(f"ALERTS{{{_sel(CONTROL)}}}", ahead.stack_up, start)
    assert not got and CONTROL not in ahead.seen, (got, ahead.seen)
    # Ready for the session's profile at every evaluation from the stack's start to the session's.
    window = f"{int(start - ahead.stack_up)}s"
    worst = prom.query(
        f'min_over_time(village_profile:desanet_video_ready:known{{village="{CONTROL}",profile="{PROFILE}"}}[{window}])',
        start,
    )
    assert worst and worst[0]["value"][1] == "1", worst
    t_call = time.time()
    code, out = call(ahead.lab, CONTROL)
    print(f"\ncontrol ({CONTROL}): no SessionAtRisk; call {t_call - start:.1f} s after the start: {summary(out)}")
    assert out["connected"], out["error"]
    for d, x in out["directions"].items():
        assert x["outcome"] == "holds", (d, summary(out))
    assert code == 0
