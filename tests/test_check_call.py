"""`desanet check --prometheus`: the village's last rehearsal call, read from a real Prometheus (Debian package)
scraping exposition text in the call families agreed with the exporter side, as two jobs (an HA pair).

What a technician relies on: each direction's outcome with the figure that decided it against the limits of
verdict/call_outcome.py and the call's profile, when the call was, in both languages and in `--json`; nothing
(`"call": null` and one line saying so) for a village with no call in the last 24 h; and a Prometheus that is
unreachable or answers nonsense is a note, never a failed check.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from desanet import check as ck
from desanet.district import Inventory
from tests.callmetrics import Call, Direction, exposition
from tests.conftest import stop_process
from tests.test_check import FakeProbers, english_in

WIB = ZoneInfo("Asia/Jakarta")
NOW = time.time()
HOUR = 3600.0
CLEAN = {
    "frames_per_second": 29.6,
    "video_height_pixels": 360,
    "freeze_ratio": 0.0,
    "audio_concealment_ratio": 0.004,
    "video_loss_ratio": 0.0,
    "jitter_buffer_delay_seconds": 0.041,
    "video_received_bytes_per_second": 124750,
}
FROZEN = {**CLEAN, "freeze_ratio": 0.034, "audio_concealment_ratio": 0.052, "video_received_bytes_per_second": 51500}
CALLS = [
    # A zoom-gallery (640×360) call: up holds, down degraded by freezes (and concealment), bandwidth-bound.
    Call(
        "kabat", "Kabat", NOW - 3 * HOUR, "zoom-gallery", 2.8,
        Direction(0, "none", CLEAN), Direction(1, "bandwidth", FROZEN),
    ),
    # A meet-hd (1280×720) call whose upstream picture fell to 320 lines: under half the profile's, it fails.
    Call(
        "licin", "Licin", NOW - 0.5 * HOUR, "meet-hd", 3.1,
        Direction(2, "bandwidth", {**CLEAN, "video_height_pixels": 320}),
        Direction(0, "none", {**CLEAN, "video_height_pixels": 720}),
    ),
    # A call that did not connect: it fails both ways, with no figures and no setup time.
    Call("pesanggaran", "Pesanggaran", NOW - 5 * HOUR, "zoom-gallery", None, Direction(2), Direction(2)),
    # Nonsense from some exporter: an outcome that is none of 0, 1, 2.
    Call(
        "wongsorejo", "Wongsorejo", NOW - HOUR, "zoom-gallery", 2.5,
        Direction(7, "none", CLEAN), Direction(0, "none", CLEAN),
    ),
]  # fmt: skip
JOBS = ("desanet", "desanet-ha")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Exposition(http.server.BaseHTTPRequestHandler):
    body = exposition(CALLS).encode()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        return None


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    qs = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=5) as resp:
        result: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on 127.0.0.1 that has scraped the calls above twice (jobs desanet and desanet-ha)."""
    if shutil.which("prometheus") is None:
        pytest.skip("needs prometheus (scripts/setup.sh)")
    tmp = tmp_path_factory.mktemp("check-call")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{server.server_address[1]}"
    jobs = "".join(f"  - job_name: {job}\n    static_configs: [{{targets: ['{target}']}}]\n" for job in JOBS)
    (tmp / "prometheus.yml").write_text(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n{jobs}")
    url = f"http://127.0.0.1:{_free_port()}"
    with (tmp / "prom.log").open("w") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address={url.removeprefix('http://')}"],
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(_query(url, "desanet_call_last_timestamp_seconds")) == len(CALLS) * len(JOBS):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus never scraped the calls: {(tmp / 'prom.log').read_text()[-2000:]}")
        yield url
    finally:
        stop_process(proc)
        server.shutdown()
        server.server_close()


def _now() -> datetime:
    return datetime.now(WIB)


def report_with_call(inv: Inventory, slug: str, url: str) -> ck.Report:
    """A report of `slug` that asked Prometheus for the last call, as the check's history stage does."""
    village = inv.village(slug)
    now = _now()
    r = ck.Report(inv, village, ck.ProfileChoice(inv.profile_for(village), "village"), now)
    r.call, r.call_fetched = ck.fetch_last_call(url, slug, now), True
    return r


def test_the_exposition_text_is_promtool_clean() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("needs promtool")
    proc = subprocess.run(["promtool", "check", "metrics"], input=exposition(CALLS), capture_output=True, text=True)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_the_check_reads_the_families_the_exporter_exports() -> None:
    """The names the check asks Prometheus for are the exporter's (exporter/call_metrics.py); until the exporter
    side of issue 14 has landed, the agreed names (tests/callmetrics.py) stand in."""
    from desanet.check.history import CALL_FAMILIES
    from tests.callmetrics import FAMILIES

    assert set(CALL_FAMILIES) == set(FAMILIES)
    try:
        from desanet.exporter.call_metrics import SPECS
    except ImportError:
        return
    assert set(CALL_FAMILIES) <= {s.name for s in SPECS}


def test_the_last_call_per_direction_counted_once(prometheus: str) -> None:
    call = ck.fetch_last_call(prometheus, "kabat", _now())
    assert call is not None
    assert sorted(call.directions) == ["down", "up"]  # the HA twin adds nothing
    up, down = call.directions["up"], call.directions["down"]
    assert (up.outcome, down.outcome) == ("holds", "degraded")
    assert down.freeze_ratio == pytest.approx(0.034) and down.audio_concealment_ratio == pytest.approx(0.052)
    assert down.video_received_bits_per_second == pytest.approx(412000) and down.limitation == "bandwidth"  # 8 × bytes
    assert up.frames_per_second == pytest.approx(29.6) and up.jitter_buffer_delay_seconds == pytest.approx(0.041)
    assert call.profile == "zoom-gallery" and call.setup_seconds == pytest.approx(2.8) and call.connected
    assert abs(call.ended.timestamp() - (NOW - 3 * HOUR)) < 0.01
    assert call.ended.tzinfo is not None
    assert ck.fetch_last_call(prometheus, "bangorejo", _now()) is None  # never rehearsed


def test_the_call_in_words_in_both_languages(inv: Inventory, prometheus: str) -> None:
    report = report_with_call(inv, "kabat", prometheus)
    en = ck.explain(report, "en").call
    assert en[0].startswith("Last rehearsal call (from Prometheus): profile zoom-gallery, ended ")
    assert re.search(r", 3 h \d+ min ago\.$", en[0]), en[0]
    assert en[1] == (
        "Up (the village's camera, seen at the NOC): holds; closest to its limit: 29.6 frames per second "
        "(holds from 24, fails below 10)."
    )
    assert en[2] == (
        "Down (the NOC's camera, seen in the village): DEGRADED, decided by video frozen 3.4 % of the time "
        "(holds up to 2 %, fails above 10 %). Its sender was limited by bandwidth."
    )
    id_ = ck.explain(report, "id").call
    assert id_[1] == (
        "Arah naik (kamera desa, diterima di NOC): lancar; yang paling dekat ke batasnya: 29,6 gambar setiap detik "
        "(lancar mulai 24, gagal di bawah 10)."
    )
    assert id_[2].startswith("Arah turun (kamera NOC, diterima di desa): TERGANGGU, karena video macet 3,4 %")
    assert re.search(r", 3 jam \d+ menit yang lalu\.$", id_[0]), id_[0]
    for line in id_:
        assert not english_in(line), line


def test_the_deciding_figure_is_judged_against_the_calls_profile(inv: Inventory, prometheus: str) -> None:
    """Licin's call was a meet-hd one: 320 lines is under half its 720, so the upstream failed on the height.
    Against a 360-line profile the same picture would hold."""
    report = report_with_call(inv, "licin", prometheus)
    up = ck.explain(report, "en").call[1]
    assert up == (
        "Up (the village's camera, seen at the NOC): FAILS, decided by a picture 320 lines high of the profile's "
        "720 (holds from 540, fails below 360). Its sender was limited by bandwidth."
    )
    assert report.call is not None
    on_360 = {f.figure: f.state for f in ck.call_figures(report.call.directions["up"], inv.profile("zoom-gallery"))}
    assert on_360["height"] == "holds"


def test_a_call_that_did_not_connect(inv: Inventory, prometheus: str) -> None:
    report = report_with_call(inv, "pesanggaran", prometheus)
    en = ck.explain(report, "en").call
    assert en[1:] == [
        "Up (the village's camera, seen at the NOC): FAILS: the call did not connect.",
        "Down (the NOC's camera, seen in the village): FAILS: the call did not connect.",
    ]
    call = ck.to_json(report, "en")["call"]
    assert call["connected"] is False and call["setup_seconds"] is None and call["outcome"] == "fails"
    assert call["directions"]["up"] == {
        "outcome": "fails",
        "deciding": None,
        "limitation": "none",
        **{k.replace("bytes", "bits"): None for k in CLEAN},
    }


def test_json_has_the_call_or_null(inv: Inventory, prometheus: str) -> None:
    call = ck.to_json(report_with_call(inv, "kabat", prometheus), "en")["call"]
    assert call["profile"] == "zoom-gallery" and call["outcome"] == "degraded" and call["connected"] is True
    assert datetime.fromisoformat(call["ended"]).timestamp() == pytest.approx(NOW - 3 * HOUR, abs=0.01)
    # NOW is fixed when the module is imported; "ago" is counted from the clock when the check runs (minutes later
    # in a full suite).
    assert call["ago_seconds"] == pytest.approx(time.time() - (NOW - 3 * HOUR), abs=60)
    down = call["directions"]["down"]
    assert down["deciding"] == {
        "figure": "freeze",
        "value": pytest.approx(0.034),
        "state": "degraded",
        "limit": 0.02,
        "fail_limit": 0.1,
        "higher_is_worse": True,
    }
    assert down["video_received_bits_per_second"] == pytest.approx(412000) and down["limitation"] == "bandwidth"
    assert call["directions"]["up"]["deciding"]["figure"] == "fps"
    json.dumps(call)  # plain JSON
    none = report_with_call(inv, "bangorejo", prometheus)
    assert ck.to_json(none, "en")["call"] is None
    assert ck.explain(none, "en").call == [
        "Last rehearsal call: Prometheus has none for this village in the last 24 hours."
    ]
    assert not english_in(ck.explain(none, "id").call[0])


class _WithHistory(FakeProbers):
    """The fake probes, but Prometheus is the real one: its history (empty here) and the last call."""

    def history(self, url: str, village: str, profile: str, now: datetime) -> list[ck.HistoryDay]:
        return ck.fetch_history(url, village, profile, now)


def _run(inv: Inventory, slug: str, url: str) -> ck.Report:
    options = ck.Options(profile="meet-hd", prometheus=url, throughput=False)
    return asyncio.run(
        ck.run_check(
            inv, inv.village(slug), options, now=_now(), deadline=time.monotonic() + 15, probers=_WithHistory()
        )
    )


def test_the_check_reads_the_call_in_its_history_stage(inv: Inventory, prometheus: str) -> None:
    report = _run(inv, "kabat", prometheus)
    assert report.call is not None and report.call_fetched
    assert "history" in report.timings
    assert ck.report_exit_code(report) == 0  # the call informs; the verdict is the measurement's


def test_nonsense_from_prometheus_is_a_note(inv: Inventory, prometheus: str) -> None:
    with pytest.raises(ck.HistoryError) as info:
        ck.fetch_last_call(prometheus, "wongsorejo", _now())
    assert info.value.kind == "bad_answer" and "is 7, not 0, 1 or 2" in str(info.value)
    report = _run(inv, "wongsorejo", prometheus)
    assert report.call is None and not report.call_fetched
    notes = ck.explain(report, "en").notes
    assert f"Last rehearsal call not shown: the answer from Prometheus at {prometheus} could not be read." in " ".join(
        notes
    )
    assert ck.to_json(report, "en")["call"] is None and ck.report_exit_code(report) == 0
    assert ck.explain(report, "en").call == []


def test_an_unreachable_prometheus_is_one_note(inv: Inventory) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # closed again: nothing listens
    report = _run(inv, "kabat", url)
    notes = [n for n in ck.explain(report, "en").notes if "Prometheus" in n]
    assert len(notes) == 1  # one note for both: the history's says the call is not shown either
    assert notes[0].startswith(f"History not shown: Prometheus at {url} could not be reached, so the last rehearsal")
    assert report.call is None and not report.call_fetched and ck.to_json(report, "en")["call"] is None
    with pytest.raises(ck.HistoryError) as info:
        ck.fetch_last_call(url, "kabat", _now(), timeout=1.0)
    assert info.value.kind == "unreachable"
    with pytest.raises(ck.HistoryError):
        ck.fetch_last_call("ftp://example", "kabat", _now())


def test_the_printed_report_shows_the_call(inv: Inventory, prometheus: str) -> None:
    from rich.console import Console

    from desanet.cli import check as cli
    from desanet.verdict import readiness as rd
    from tests.test_check import MEET

    report = report_with_call(inv, "kabat", prometheus)
    report.readiness = rd.assess(rd.Measurements(**MEET), report.profile)
    console = Console(record=True, width=200, force_terminal=False)
    cli.print_report(report, "en", console)
    text = console.export_text()
    assert "Down (the NOC's camera, seen in the village): DEGRADED, decided by video frozen 3.4 %" in text
    assert text.index("Last rehearsal call (from Prometheus)") > text.index("Verdict: READY")
