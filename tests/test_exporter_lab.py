"""`desanet serve` on the lab, scraped by a real Prometheus (Debian package), both in the NOC namespace.

What a NOC relies on: impaired villages show up in Prometheus with the right figures and video_ready 0,
clean ones with 1; the live scrape is promtool-clean; /probe refuses what the inventory does not name;
a broken inventory on reload is refused and the old one kept serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Lab, stop_process

pytestmark = [pytest.mark.lab, pytest.mark.slow]
EXPORTER = "127.0.0.1:19917"
PROM = "127.0.0.1:19090"
VM = "127.0.0.1:18428"


def fast_inventory(tmp: Path) -> Path:
    """The shipped inventory with short intervals, so a test sees windows fill in seconds."""
    text = (ROOT / "inventory.yaml").read_text()
    text = re.sub(
        r"(?m)^  icmp: \{.*\}$", "  icmp: {interval_seconds: 0.2, window_seconds: 10, timeout_seconds: 1}", text
    )
    text = re.sub(r"(?m)^  stamp: \{.*\}$", "  stamp: {every_seconds: 10, duration_seconds: 2, rate_pps: 50}", text)
    text = re.sub(
        r"(?m)^  snmp: \{every_seconds.*\}$", "  snmp: {every_seconds: 5, timeout_seconds: 1, retries: 0}", text
    )
    path = tmp / "inventory.yaml"
    path.write_text(text)
    return path


class Running:
    def __init__(self, lab: Lab, inventory: Path, proc: subprocess.Popen[str], prom: subprocess.Popen[str]):
        self.lab, self.inventory, self.proc, self.prom = lab, inventory, proc, prom
        self.vm: subprocess.Popen[str] | None = None

    def get(self, path: str, timeout: float = 20) -> tuple[int, str]:
        out = self.lab.noc(
            "curl",
            "-s",
            "-o",
            "/dev/stdout",
            "-w",
            "\n%{http_code}",
            "-m",
            str(timeout),
            f"http://{EXPORTER}{path}",
            timeout=timeout + 5,
        )
        body, _, code = out.stdout.rpartition("\n")
        return int(code or 0), body

    def post(self, path: str) -> tuple[int, str]:
        out = self.lab.noc("curl", "-s", "-X", "POST", "-w", "\n%{http_code}", f"http://{EXPORTER}{path}", timeout=30)
        body, _, code = out.stdout.rpartition("\n")
        return int(code or 0), body

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        out = self.lab.noc("curl", "-s", f"http://{PROM}/api/v1/query?{q}", timeout=15)
        data = json.loads(out.stdout)
        assert data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def value(self, expr: str) -> dict[str, float]:
        return {r["metric"].get("village", ""): float(r["value"][1]) for r in self.query(expr)}


_stop = stop_process
READY_MEET_HD = 'desanet_video_verdict{profile="meet-hd",verdict="ready"}'  # 1 when ready (a state set)


@pytest.fixture(scope="module")
def running(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    if shutil.which("prometheus") is None:
        pytest.skip("needs prometheus (scripts/setup.sh)")
    tmp = tmp_path_factory.mktemp("exporter")
    inventory = fast_inventory(tmp)
    env = {**lab.env, "DESANET_STATE_DIR": str(tmp / "state")}
    # A clean village, a jittery one, a lossy one and a cut one; the impaired ones are short of ready for meet-hd
    # at its calibrated limits (docs/readiness.md). pesanggaran: 80 ± 80 ms reordered gives a one-way jitter of
    # ~50 ms, past the 30 ms line every run (tests/test_check_lab.py); 60 ± 50 ms in order fell short only by its
    # RTT p95, ~105 ms, past the old 100 ms line and within the 200 ms one. sarongan: 20 % each way is 36 % round
    # trip, past the 20 % not-ready line (8 % each way, 15 %, is only at risk now).
    lab.impair("pesanggaran", "--restore", "--delay", "80", "--jitter", "80", "--reorder")
    lab.impair("sarongan", "--restore", "--loss", "20", "--up-loss", "20")
    lab.impair("bajulmati", "--restore", "--down")
    with open(tmp / "serve.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.noc_ns,
                sys.executable,
                "-m",
                "desanet.cli",
                "serve",
                "--inventory",
                str(inventory),
                "--web.listen-address",
                EXPORTER,
                "--probes",
                "icmp,snmp,stamp",
            ],
            env=env,
            text=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    vm = None
    remote_write = ""
    if shutil.which("victoria-metrics"):
        with open(tmp / "vm.log", "w") as log:
            vm = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    lab.noc_ns,
                    "victoria-metrics",
                    f"-httpListenAddr={VM}",
                    f"-storageDataPath={tmp / 'vm'}",
                    "-search.latencyOffset=1s",
                ],
                text=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        remote_write = f"remote_write:\n  - url: http://{VM}/api/v1/write\n"
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
        + remote_write
        + f"scrape_configs:\n  - job_name: desanet\n    static_configs: [{{targets: ['{EXPORTER}']}}]\n"
    )
    with open(tmp / "prom.log", "w") as log:
        prom = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.noc_ns,
                "prometheus",
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address={PROM}",
                "--web.enable-lifecycle",
            ],
            text=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    r = Running(lab, inventory, proc, prom)
    r.vm = vm
    try:
        deadline = time.monotonic() + 90
        stamped = 'desanet_jitter_seconds{method="stamp",direction="down"}'
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"desanet serve exited: {(tmp / 'serve.log').read_text()[-3000:]}")
            try:
                # Ready when Prometheus has every village's verdict and a STAMP round has reached the ones we check.
                if len(r.value(READY_MEET_HD)) == len(lab.villages) and {
                    "pesanggaran",
                    "kabat",
                } <= set(r.value(stamped)):
                    break
            except (json.JSONDecodeError, AssertionError):
                pass
            time.sleep(1)
        time.sleep(12)  # a full ICMP window (10 s) under the impairments
        yield r
    finally:
        _stop(proc)
        _stop(prom)
        if vm is not None:
            _stop(vm)
        for slug in ("pesanggaran", "sarongan", "bajulmati"):
            lab.restore(slug)
        print((tmp / "serve.log").read_text()[-3000:])


def test_prometheus_sees_verdicts_that_match_the_impairments(running: Running) -> None:
    ready = running.value(READY_MEET_HD)
    assert ready["kabat"] == 1 and ready["licin"] == 1
    assert ready["pesanggaran"] == 0 and ready["sarongan"] == 0 and ready["bajulmati"] == 0
    limiting = {
        r["metric"]["village"]: r["metric"]["factor"]
        for r in running.query('desanet_video_limiting_info{profile="meet-hd"}')
    }
    assert limiting["sarongan"] in ("loss", "burst_loss")
    assert limiting["pesanggaran"] == "jitter"  # its RTT p95, at most 160 ms, is within 200 ms


def test_figures_in_prometheus_match_the_lab(running: Running) -> None:
    loss = running.value('desanet_loss_ratio{method="icmp",direction="round_trip"}')
    assert loss["bajulmati"] == 1
    # 1 - 0.8² = 36 % over a 50-echo window: 6 to 31 lost covers all but 0.01 % of runs.
    assert 0.12 <= loss["sarongan"] <= 0.62
    assert loss["kabat"] == 0
    # The median from the RTT histogram (the lean record; the window statistics are --metrics.detail): 80 ± 80 ms
    # uniform toward the village puts 47 % of echoes under the 75 ms bound and 62.5 % under 100 ms, so Prometheus
    # interpolates 80 ms; 50 echoes over 10 s have an 11 ms sd median (1 / (2 sqrt(n + 2)) of the 160 ms
    # spread), so ±40 ms is 3.6 sd.
    p50 = running.value(
        'histogram_quantile(0.5, sum by (village, le) (rate(desanet_rtt_seconds_bucket{method="icmp"}[10s])))'
    )
    assert 0.04 < p50["pesanggaran"] < 0.12
    assert p50["kabat"] < 0.002
    # STAMP splits the direction: the jitter was imposed toward the village only.
    fwd = running.value('desanet_jitter_seconds{method="stamp",direction="down"}')
    bwd = running.value('desanet_jitter_seconds{method="stamp",direction="up"}')
    assert fwd["pesanggaran"] > 0.01 and bwd["pesanggaran"] < 0.002
    # SNMP: counters and uptime from each village's real snmpd.
    assert running.value("desanet_router_uptime_seconds")["kabat"] > 0
    assert running.value('desanet_probe_success{probe="snmp"}')["bajulmati"] == 0


def test_live_scrape_passes_promtool(running: Running) -> None:
    code, body = running.get("/metrics")
    assert code == 200
    proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The probe host's own schedule health: every continuous echo is counted, and the batch window is sane.
    sends = float(re.search(r'(?m)^desanet_icmp_send_lateness_seconds_bucket\{le="\+Inf"\} (\S+)$', body)[1])
    on_time = float(re.search(r'(?m)^desanet_icmp_send_lateness_seconds_bucket\{le="0\.01"\} (\S+)$', body)[1])
    assert sends > 0 and 0 <= on_time <= sends
    window = float(re.search(r"(?m)^desanet_icmp_batch_window_seconds (\S+)$", body)[1])
    assert 0.01 <= window <= 0.05


def test_probe_endpoint_refuses_targets_outside_the_inventory(running: Running) -> None:
    before = running.lab.noc("cat", "/proc/net/snmp").stdout
    code, body = running.get("/probe?target=10.115.1.1&module=icmp")
    assert code == 400 and "inventory" in body
    code, body = running.get("/probe?target=8.8.8.8&module=icmp")
    assert code == 400
    code, _ = running.get("/probe?target=kabat&module=nosuch")
    assert code == 400
    assert before  # the NOC's counters are read only to show the request reached the exporter's namespace
    code, body = running.get("/probe?target=kabat&module=icmp")
    assert code == 200 and "probe_success 1" in body


def test_reload_with_a_broken_inventory_keeps_the_old_one(running: Running) -> None:
    good = running.inventory.read_text()
    try:
        running.inventory.write_text(good.replace("kecamatan: Licin", "kecamatan: Nowhere"))
        code, body = running.post("/-/reload")
        assert code == 500 and "Nowhere" in body
        metrics = running.get("/metrics")[1]
        assert "desanet_config_last_reload_successful 0" in metrics
        assert 'desanet_video_verdict{village="licin"' in metrics  # still served
        code, _ = running.get("/-/reload")
        assert code == 405
    finally:
        running.inventory.write_text(good)
    code, _ = running.post("/-/reload")
    assert code == 200
    assert "desanet_config_last_reload_successful 1" in running.get("/metrics")[1]


def test_status_page_lists_every_village_worst_first(running: Running) -> None:
    code, page = running.get("/")
    assert code == 200 and "<table>" in page
    assert page.index("Bajulmati") < page.index("Kabat")  # not ready before ready
    code, page = running.get("/?village=bajulmati")
    assert code == 200 and "FAILED" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_status_page_renders_in_headless_chromium(running: Running, tmp_path: Path) -> None:
    shot = tmp_path / "status.png"
    proc = running.lab.noc(
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=412,900",
        f"--screenshot={shot}",
        f"http://{EXPORTER}/",
        timeout=90,
    )
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    if os.environ.get("DESANET_KEEP_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "status-page.png")


def test_remote_write_reaches_victoriametrics(running: Running) -> None:
    """Scale-out beyond one Prometheus: the same series arrive in VictoriaMetrics through remote_write."""
    if running.vm is None:
        pytest.skip("needs victoria-metrics (scripts/setup.sh)")
    q = urllib.parse.urlencode({"query": READY_MEET_HD})
    deadline = time.monotonic() + 40
    villages: dict[str, str] = {}
    while time.monotonic() < deadline and len(villages) < len(running.lab.villages):
        out = running.lab.noc("curl", "-s", f"http://{VM}/api/v1/query?{q}", timeout=15)
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            villages = {r["metric"]["village"]: r["value"][1] for r in json.loads(out.stdout)["data"]["result"]}
        time.sleep(2)
    assert len(villages) == len(running.lab.villages)
    assert villages["bajulmati"] == "0" and villages["kabat"] == "1"


def test_serve_needs_only_cap_net_raw(lab: Lab, tmp_path: Path) -> None:
    """What the systemd unit grants: an unprivileged user with CAP_NET_RAW alone can probe; without it, a clear
    exit 2 rather than a traceback."""
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # pytest's base directory is private to root; nobody must read the inventory
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    inventory = fast_inventory(tmp_path)
    base = ["ip", "netns", "exec", lab.noc_ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    serve = [
        sys.executable,
        "-m",
        "desanet.cli",
        "serve",
        "--inventory",
        str(inventory),
        "--probes",
        "icmp",
        "--web.listen-address",
        "127.0.0.1:19918",
    ]
    env = {**lab.env, "DESANET_STATE_DIR": str(tmp_path)}
    denied = subprocess.run([*base, *serve], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert denied.returncode == 2 and "CAP_NET_RAW" in denied.stderr
    caps = ["--inh-caps=+net_raw", "--ambient-caps=+net_raw"]
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen([*base, *caps, *serve], env=env, text=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and 'desanet_rtt_seconds_count{village="kabat"' not in body:
            time.sleep(2)
            body = lab.noc("curl", "-s", "http://127.0.0.1:19918/metrics", timeout=10).stdout
        m = re.search(r'desanet_rtt_seconds_count\{village="kabat",[^}]*\} (\d+)', body)
        assert m and int(m.group(1)) > 0, (tmp_path / "serve.log").read_text()[-2000:]
    finally:
        _stop(proc)
