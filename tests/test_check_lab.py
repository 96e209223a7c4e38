"""`desanet check` on the lab, run inside the NOC namespace as a technician would: a clean village is ready, a
village with jitter, loss or a rate cap beyond its profile is not and the factor is named, a kecamatan uplink
problem is sent to the NOC, a cut village exits 2 with the reason, the ping figures agree with `desanet probe
icmp`, and in a real terminal (tmux) the verdict line reads right and the Indonesian has no English. Every run
is timed: at most 15 s from start to exit.

The machine is shared (2 cores, other labs running), so timings are noisy; the limit is asserted as is.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Lab
from tests.test_check import ENGLISH, words

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LIMIT = 15.0


@pytest.fixture(scope="module")
def env(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The lab's environment with a private throughput budget ledger (never /var/lib/desanet)."""
    return {**lab.env, "DESANET_STATE_DIR": str(tmp_path_factory.mktemp("check-state"))}


@pytest.fixture(scope="module")
def jitter_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped inventory plus a profile that judges jitter alone (RTT allowed up to a second).

    The lab's jitter here is uniform delay in [D - J, D + J] with J <= D, so one-way jitter beyond 30 ms comes with an
    RTT p95 of D + J or more, near meet-hd's 200 ms (since the calibration against real calls, docs/readiness.md;
    100 ms before), and meet-hd would (rightly) name whichever is further out. This profile isolates the factor
    under test."""
    text = (ROOT / "inventory.yaml").read_text()
    extra = (
        "  - name: lab-jitter\n    description: meet-hd judged on jitter only\n    min_down_mbit: 3.2\n"
        "    min_up_mbit: 3.2\n    max_rtt_ms: 1000\n    fail_rtt_ms: 2000\n"
    )
    text = text.replace("profiles:\n", "profiles:\n" + extra, 1)
    path = tmp_path_factory.mktemp("check-inv") / "inventory.yaml"
    path.write_text(text)
    return path


def check(lab: Lab, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str, float]:
    """Run `desanet check … --json` in the NOC namespace: exit code, JSON, stderr, wall seconds."""
    argv = ["ip", "netns", "exec", lab.noc_ns, sys.executable, "-m", "desanet.cli.check", *args, "--json"]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, text=True, capture_output=True, timeout=60, check=False)
    wall = time.monotonic() - t0
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {proc.returncode}): {proc.stdout}\n{proc.stderr}") from None
    return proc.returncode, doc, proc.stderr, wall


def test_a_clean_village_is_ready(lab: Lab, env: dict[str, str]) -> None:
    code, doc, err, wall = check(lab, env, "Sempu", "--profile", "meet-hd", "--force")
    assert code == 0, (doc, err)
    assert doc["verdict"] == "ready" and doc["exit_code"] == 0 and doc["error"] is None
    states = {c["factor"]: c["state"] for c in doc["checks"]}
    assert states["rtt"] == states["jitter"] == states["loss"] == states["down"] == states["up"] == "pass", states
    assert doc["stamp"]["received"] > 0 and doc["icmp"]["received"] == doc["icmp"]["sent"] == 100
    # the rehearsal carried 1.1 × the pass line each way and the link let it all through
    for direction in ("down", "up"):
        got = doc["throughput"][direction]
        assert got["bits_per_second"] >= 0.95 * got["offered_bits_per_second"], got
    assert doc["snmp"]["success"] and doc["snmp"]["port"]["name"] == "up0"
    assert doc["trace"] is None  # nothing degraded, nothing traced
    assert wall <= LIMIT, f"{wall:.1f} s"


def test_jitter_beyond_the_profile_is_named(
    lab: Lab, env: dict[str, str], impaired: list[str], jitter_inventory: Path
) -> None:
    impaired.append("songgon")
    # --reorder: the check's STAMP train is 20 ms apart, and through a FIFO a delay can fall by at most the
    # spacing between two packets, so order-kept jitter stays below 2 × 20 ms of mean |IPDV| however large the
    # drawn spread (80 ± 80 ms simulated with lab/delay_model.py: RFC 3550 jitter 24 ms at the median, 250 ± 250
    # ms: 30 ms). To be beyond meet-hd's 30 ms in every run the path must reorder, as the lab's jitter did by
    # default before (docs/lab.md).
    lab.impair("songgon", "--delay", "80", "--jitter", "80", "--reorder")
    code, doc, err, wall = check(
        lab, env, "songgon", "--inventory", str(jitter_inventory), "--profile", "lab-jitter", "--force", "--lang", "en"
    )
    assert code == 1, (doc, err)
    assert doc["limiting"] == "jitter" and doc["verdict"] in ("at_risk", "not_ready")
    assert (
        doc["explanation"].startswith("jitter ") and "video will freeze and audio will break up" in doc["explanation"]
    )
    assert any("congestion" in a for a in doc["advice"])
    assert doc["figures"]["jitter_seconds"] > 0.030 and doc["sources"]["jitter"] == "stamp"
    assert doc["trace"] is not None  # degraded: where?
    assert wall <= LIMIT, f"{wall:.1f} s"


def test_loss_beyond_the_profile_is_named(lab: Lab, env: dict[str, str], impaired: list[str]) -> None:
    impaired.append("kebaman")
    # meet-hd is not ready beyond 20 % round-trip loss since the calibration against real calls (docs/readiness.md;
    # 3 % before, when 10 % toward the village did). Beyond 40 % the loss also outranks any burst loss (a 100 %
    # burst is 100 % past its 50 % line, 40 % loss 100 % past 20 %), so loss, not burst loss, is named: 60 %.
    lab.impair("kebaman", "--loss", "60")
    code, doc, err, wall = check(lab, env, "kebaman", "--profile", "meet-hd", "--force")
    assert code == 1, (doc, err)
    assert (doc["limiting"], doc["verdict"]) == ("loss", "not_ready")
    # 60 % on ~200 packets (pings and the STAMP stream): 90 to 150 lost fails 1 run in 100,000; 80 or fewer
    # (burst loss could then be named) 1 in 100 million.
    assert 0.45 <= doc["figures"]["loss_ratio"] <= 0.75, doc["figures"]
    assert any(a.startswith("Check the fibre") for a in doc["advice"])
    assert wall <= LIMIT, f"{wall:.1f} s"


def test_a_rate_cap_below_the_profile_is_named(lab: Lab, env: dict[str, str], impaired: list[str]) -> None:
    """A cap toward the village only: download is named and upload passes (the directions are not swapped)."""
    impaired.append("tegalsari")
    # Not ready only below half meet-hd's 3.2 Mbit/s since the calibration against real calls (docs/readiness.md):
    # the 2 Mbit/s cap that was not ready before is at risk now, so the cap is 1 Mbit/s.
    lab.impair("tegalsari", "--rate", "1")
    code, doc, err, wall = check(lab, env, "tegalsari", "--profile", "meet-hd", "--force", "--lang", "en")
    assert code == 1, (doc, err)
    assert (doc["verdict"], doc["limiting"]) == ("not_ready", "down")
    # tbf's bucket lets a short test slightly above the cap (2.14 Mbit/s was seen through 2 Mbit/s)
    assert doc["figures"]["down_bits_per_second"] < 1.3e6, doc["figures"]
    up = doc["throughput"]["up"]
    assert up["bits_per_second"] >= 0.95 * up["offered_bits_per_second"], up
    assert doc["explanation"].startswith("download ") and (
        "below 1.6 Mbit/s, well short of the 3.2 Mbit/s this profile needs" in doc["explanation"]
    )
    assert any("contract is 20 Mbit/s" in a for a in doc["advice"])
    assert doc["checks"][0]["state"] == "pass"  # the latency probes ran before the test loaded the link
    assert wall <= LIMIT, f"{wall:.1f} s"


def test_a_kecamatan_uplink_problem_is_sent_to_the_noc(lab: Lab, env: dict[str, str], impaired: list[str]) -> None:
    impaired.append("--kecamatan=Kalipuro")
    # 300 ms toward the villages: past meet-hd's 200 ms since the calibration against real calls (docs/readiness.md;
    # the 130 ms used before was past the old 100 ms and is ready now), short of the 400 ms where it is not ready.
    lab.impair("--kecamatan", "Kalipuro", "--delay", "300")
    code, doc, err, wall = check(lab, env, "kalipuro", "--profile", "meet-hd", "--no-throughput", "--lang", "en")
    assert code == 1, (doc, err)
    assert doc["limiting"] == "rtt"
    trace = doc["trace"]
    assert trace is not None and trace["degraded_hop"] is not None, trace
    assert trace["degraded_hop"]["ttl"] == len(trace["hops"]) - 1  # the kecamatan router, just before the village
    assert "this is not a village problem. Call the NOC." in doc["advice"][0], doc["advice"]
    assert wall <= LIMIT, f"{wall:.1f} s"


def test_a_cut_village_exits_2_with_the_reason(lab: Lab, env: dict[str, str], impaired: list[str]) -> None:
    impaired.append("kedungasri")
    lab.impair("kedungasri", "--down")
    code, doc, err, wall = check(lab, env, "kedungasri", "--profile", "meet-hd", "--lang", "en")
    assert code == 2, (doc, err)
    assert doc["error"]["code"] == "unreachable"
    assert (
        doc["error"]["message"]
        == f"the router {lab.address('kedungasri')} did not answer: none of 200 packets came back"
    )
    assert doc["advice"][0].startswith("The path ends after hop 2")  # the kecamatan router still answers
    assert doc["throughput"] is None
    assert wall <= LIMIT, f"{wall:.1f} s"


def test_ping_figures_agree_with_probe_icmp(lab: Lab, env: dict[str, str], impaired: list[str]) -> None:
    impaired.append("glagah")
    lab.impair("glagah", "--delay", "20")
    _, doc, _, _ = check(lab, env, "glagah", "--profile", "meet-hd", "--no-throughput")
    probe = lab.noc(
        sys.executable,
        "-m",
        "desanet.cli",
        "probe",
        "icmp",
        "glagah",
        "-c",
        "100",
        "--interval",
        "0.02",
        "--json",
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    ref = json.loads(probe.stdout)
    ours = doc["icmp"]
    assert ours["sent"] == ref["sent"] == 100 and ours["received"] == ref["received"] == 100
    for stat in ("p50", "min"):
        assert abs(ours["rtt_seconds"][stat] - ref["rtt_seconds"][stat]) < 0.002, (stat, ours, ref)
    assert 0.019 < ours["rtt_seconds"]["p50"] < 0.025
    assert doc["figures"]["rtt_p95_seconds"] == ours["rtt_seconds"]["p95"]


# ---------------------------------------------------------------------------------------------- in a terminal
def _tmux(socket_name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", socket_name, *args], text=True, capture_output=True, timeout=20, check=False)


def run_in_terminal(lab: Lab, env: dict[str, str], tmp: Path, args: list[str], lang_env: dict[str, str]) -> str:
    """Run the check in a 120×60 tmux pane as a person would and return the screen once it has exited."""
    script = tmp / "run.sh"
    exports = {k: v for k, v in env.items() if k not in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE")}
    lines = [f"export {k}={shlex.quote(v)}" for k, v in exports.items() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    lines += [
        "unset LC_ALL LC_MESSAGES LANG LANGUAGE",
        "start=$(date +%s.%N)",
        # the locale goes to the check alone: bash itself would warn that id_ID is not installed here
        shlex.join(
            [
                "env",
                *(f"{k}={v}" for k, v in lang_env.items()),
                "ip",
                "netns",
                "exec",
                lab.noc_ns,
                sys.executable,
                "-m",
                "desanet.cli.check",
                *args,
            ]
        ),
        "rc=$?",
        'echo "EXIT=$rc WALL=$(echo "$(date +%s.%N) - $start" | bc)"',
        "sleep 60",
    ]
    script.write_text("\n".join(lines) + "\n")
    name = f"ck-{os.getpid()}-{len(args)}"
    started = _tmux(name, "new-session", "-d", "-x", "120", "-y", "60", f"bash {shlex.quote(str(script))}")
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 45
        screen = ""
        while time.monotonic() < deadline:  # bounded: the check itself ends in 15 s
            screen = _tmux(name, "capture-pane", "-p", "-J", "-S", "-200").stdout
            if "EXIT=" in screen:
                return screen
            time.sleep(0.5)
        raise AssertionError(f"the check did not finish in the terminal:\n{screen}")
    finally:
        _tmux(name, "kill-server")


def _exit_and_wall(screen: str) -> tuple[int, float]:
    m = re.search(r"EXIT=(\d+) WALL=([\d.]+)", screen)
    assert m, screen
    return int(m.group(1)), float(m.group(2))


def test_in_a_terminal_in_indonesian(lab: Lab, env: dict[str, str], tmp_path: Path) -> None:
    """LANG=id_ID makes it speak Indonesian; nothing on the screen is left in English."""
    screen = run_in_terminal(lab, env, tmp_path, ["licin", "--force"], {"LANG": "id_ID.UTF-8"})
    code, wall = _exit_and_wall(screen)
    assert code in (0, 1), screen  # the lab's village may be shared with other tests' load; it must be measured
    verdict = re.search(r"^Kesimpulan: (SIAP|BERISIKO|TIDAK SIAP) untuk panggilan [\w-]+ di Licin$", screen, re.M)
    assert verdict, screen
    assert code == (0 if verdict.group(1) == "SIAP" else 1)
    assert "ukuran" in screen and "terukur" in screen and "Diperiksa dalam" in screen
    leftover = (words(screen) & ENGLISH) - {"exit", "wall"}
    assert not leftover, f"English in the Indonesian screen: {leftover}\n{screen}"
    assert wall <= LIMIT, f"{wall:.1f} s\n{screen}"


def test_in_a_terminal_in_english(lab: Lab, env: dict[str, str], tmp_path: Path) -> None:
    screen = run_in_terminal(
        lab, env, tmp_path, ["Licin", "--lang", "en", "--force", "--profile", "zoom-gallery"], {"LANG": "id_ID.UTF-8"}
    )
    code, wall = _exit_and_wall(screen)
    assert re.search(r"^Verdict: (READY|AT RISK|NOT READY) for a zoom-gallery call at Licin$", screen, re.M), screen
    assert code in (0, 1) and "What to try:" in screen and "round-trip time, p95" in screen
    assert wall <= LIMIT, f"{wall:.1f} s\n{screen}"
