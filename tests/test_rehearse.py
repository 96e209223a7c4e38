"""The rehearsal page without a network or a browser: who is refused and why (the budget's own rules and
objects, the host's call lock), that a refusal costs nothing and holds nothing, the call's reservation and
charge in the ledger, the far end's key, the metrics of a judged call (`promtool check metrics` on them), the
words in both languages, and the page itself (nothing from outside desanet)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from desanet.budget import Ledger, UplinkLock
from desanet.calls import words
from desanet.calls.page import _SCRIPT, CSP, PageConfig, render
from desanet.calls.run import one_call_at_a_time
from desanet.calls.server import CallDesk
from desanet.district import Inventory, Session, load_inventory
from desanet.exporter import call_metrics
from desanet.exporter.rehearse import Rehearsals, _Refusal
from desanet.verdict.call_outcome import DirectionOutcome, judge_call, judge_direction
from tests.conftest import ROOT
from tests.test_call_outcome import series

VILLAGE = "kalibaru-manis"
OTHER = "kepatihan"
NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)  # Sunday 11:00 WIB: no shipped session runs


@pytest.fixture(scope="module")
def shipped() -> Inventory:
    return load_inventory(ROOT / "inventory.yaml")


def with_sessions(inv: Inventory, *sessions: Session) -> Inventory:
    return inv.model_copy(update={"sessions": list(sessions)})


def session(slug: str, start: datetime, minutes: int = 60) -> Session:
    return Session(title="Musrenbangdes uji", start=start, duration_minutes=minutes, villages=[slug])


def rehearsals(tmp_path: Path, inv: Inventory, chromium: str | None = "/usr/lib/chromium/chromium") -> Rehearsals:
    r = Rehearsals(
        lambda: inv, directory=tmp_path / "state", lock_path=tmp_path / "call.lock", chromium=lambda: chromium
    )
    r.listening("0.0.0.0", 9917, None)
    return r


def refusal(r: Rehearsals, slug: str, now: datetime = NOW, force: bool = False) -> _Refusal:
    with pytest.raises(_Refusal) as exc:
        r.admit(slug, now, force=force)
    return exc.value


def assert_nothing_held(tmp_path: Path, inv: Inventory, slug: str) -> None:
    """A refusal charged nothing and let go of the uplink and the host's call lock."""
    village = inv.village(slug)
    assert Ledger(tmp_path / "state").usage(slug, NOW).tests == 0
    lock = UplinkLock(tmp_path / "state", village.kecamatan)
    lock.acquire("test")
    lock.release()
    with one_call_at_a_time(wait=0, path=tmp_path / "call.lock"):
        pass


def test_an_unknown_village_is_404_in_both_languages(tmp_path: Path, shipped: Inventory) -> None:
    r = rehearsals(tmp_path, shipped)
    en = r.answer("GET", "/rehearse/atlantis", {"lang": ["en"]}, None, None)
    assert en.status == 404 and "no village “atlantis” in desanet's inventory" in html.unescape(en.body.decode())
    id_ = r.answer("GET", "/rehearse/atlantis", {}, None, "id-ID,id;q=0.9,en;q=0.5")
    assert id_.status == 404 and "Tidak ada desa “atlantis” di inventaris desanet" in id_.body.decode()
    assert r.refusals["unknown_village"] == 2


def test_during_the_villages_session_409_with_the_session_and_a_way_round_it(
    tmp_path: Path, shipped: Inventory
) -> None:
    inv = with_sessions(shipped, session(VILLAGE, NOW - timedelta(minutes=10)))
    r = rehearsals(tmp_path, inv)
    x = refusal(r, VILLAGE)
    assert x.reason == "session" and x.answer.status == 409 and x.force
    assert x.values["until"] == "11:50" and x.values["title"] == "Musrenbangdes uji"  # WIB
    assert 2900 < x.answer.retry_after_seconds <= 3000
    page = r._refusal_page(VILLAGE, x, "id", "pattern")
    text = page.body.decode()
    assert page.status == 409 and "sedang dalam sesi “Musrenbangdes uji” sampai 11:50" in text
    assert f"/rehearse/{VILLAGE}?force=1&amp;lang=id&amp;source=pattern" in text
    assert_nothing_held(tmp_path, inv, VILLAGE)
    # Another village of the district is not in that session: its rehearsal is admitted.
    call = r.admit(OTHER, NOW)
    r._settle(call, None)


def test_a_session_starting_before_the_call_would_end_is_refused_too(tmp_path: Path, shipped: Inventory) -> None:
    """The budget's own window is a throughput test's (20 s); a rehearsal may wait two minutes for the person."""
    inv = with_sessions(shipped, session(VILLAGE, NOW + timedelta(seconds=90)))
    x = refusal(rehearsals(tmp_path, inv), VILLAGE)
    assert x.reason == "session" and x.message == "refused_session_soon" and x.values["start"] == "11:01"
    assert_nothing_held(tmp_path, inv, VILLAGE)


def test_force_overrides_the_session_rule_only(tmp_path: Path, shipped: Inventory) -> None:
    inv = with_sessions(shipped, session(VILLAGE, NOW - timedelta(minutes=10)))
    r = rehearsals(tmp_path, inv)
    call = r.admit(VILLAGE, NOW, force=True)
    try:
        assert refusal(r, OTHER).reason == "busy"  # one call at a time holds with force too
    finally:
        r._settle(call, None)


def test_over_the_daily_budget_is_refused_and_says_what_is_left(tmp_path: Path, shipped: Inventory) -> None:
    r = rehearsals(tmp_path, shipped)
    budget = shipped.settings.throughput
    Ledger(tmp_path / "state").charge(VILLAGE, NOW, int(budget.budget_megabytes_per_day * 1e6) - 5_000_000, 10)
    x = refusal(r, VILLAGE)
    assert x.reason == "budget" and x.answer.status == 429 and "5.0 MB and 110 s left today" in x.detail
    assert x.answer.retry_after_seconds > 3600  # tomorrow, 00:00 WIB
    assert Ledger(tmp_path / "state").usage(VILLAGE, NOW).tests == 1  # only the test's own charge
    # And the time budget: 120 s a day, of which a 30 s call needs 30.
    Ledger(tmp_path / "state").charge(OTHER, NOW, 0, budget.budget_seconds_per_day - 20)
    assert refusal(r, OTHER).reason == "budget"


def test_a_busy_kecamatan_uplink_is_refused_with_when_to_retry(tmp_path: Path, shipped: Inventory) -> None:
    r = rehearsals(tmp_path, shipped)
    kec = shipped.village(VILLAGE).kecamatan
    lock = UplinkLock(tmp_path / "state", kec)
    lock.acquire("a throughput test")
    try:
        x = refusal(r, VILLAGE)
        assert x.reason == "uplink_busy" and x.answer.status == 503 and x.values["kecamatan"] == kec
        page = r._refusal_page(VILLAGE, x, "en", "choose")
        assert page.headers["Retry-After"] == x.answer.retry_after
    finally:
        lock.release()


def test_another_call_on_the_host_is_busy_503(tmp_path: Path, shipped: Inventory) -> None:
    r = rehearsals(tmp_path, shipped)
    with one_call_at_a_time(wait=0, path=tmp_path / "call.lock"):  # a lab call or the calibration
        reply = r.answer("GET", f"/rehearse/{VILLAGE}", {"lang": ["en"]}, None, None)
    assert reply.status == 503 and "Another call is under way at the NOC" in reply.body.decode()
    assert int(reply.headers["Retry-After"]) == 40
    assert r.refusals == {"busy": 1}
    assert_nothing_held(tmp_path, shipped, VILLAGE)


def test_no_chromium_is_said_and_not_counted_against_the_link(tmp_path: Path, shipped: Inventory) -> None:
    r = rehearsals(tmp_path, shipped, chromium=None)
    reply = r.answer("GET", f"/rehearse/{VILLAGE}", {}, None, None)
    assert reply.status == 503 and "no Chromium" in reply.body.decode() and not r.refusals


def test_an_admitted_call_is_reserved_then_charged_what_it_moved(tmp_path: Path, shipped: Inventory) -> None:
    r = rehearsals(tmp_path, shipped)
    ledger = Ledger(tmp_path / "state")
    call = r.admit(VILLAGE, NOW)
    (reservation,) = ledger.reservations()
    # At the next session's profile (the district-wide Rapat koordinasi, zoom-gallery): 1200 kbit/s + 100 of
    # overhead, both ways, 30 s + 10 s to connect, half again for retransmissions.
    assert call.profile.name == "zoom-gallery" and call.spec.kbit == 1200
    assert reservation.village == VILLAGE and reservation.bytes == 19_500_000 and reservation.seconds == 30
    assert refusal(r, OTHER).reason == "busy"
    run: Any = type(
        "Run",
        (),
        {"connected": True, "samples": {"village": [{"pair": {"bytesSent": 3_900_000, "bytesReceived": 3_800_000}}]}},
    )
    r._settle(call, run)
    assert ledger.reservations() == []
    used = ledger.usage(VILLAGE, NOW)
    assert (used.bytes, used.seconds, used.tests) == (7_700_000, 30.0, 1)
    r._settle(r.admit(OTHER, NOW), None)  # everything was let go


def test_the_far_end_gets_in_by_its_key_and_a_person_by_the_village_path(tmp_path: Path, shipped: Inventory) -> None:
    r = rehearsals(tmp_path, shipped)
    call = r.admit(VILLAGE, NOW)
    try:
        r.desk.add_call(call.call_id, 640, 360, 30, 1000, pages={"farend": {"key": call.key}})
        farend = f"/call/{call.call_id}/page/farend"
        assert not r.farend_request(farend, {"key": ["wrong"]}) and not r.farend_request(farend, {})
        assert r.farend_request(farend, {"key": [call.key]})
        assert r.farend_request(f"/call/{call.call_id}/signal/village", {"key": [call.key]})  # reads the offer
        assert r.answer("POST", f"/call/{call.call_id}/stats/village", {"key": [call.key]}, b"{}", None).status == 404
        assert r.answer("GET", farend, {"key": ["wrong"]}, None, None).status == 404
        page = r.answer("GET", farend, {"key": [call.key]}, None, None)
        assert page.status == 200 and call.key in page.body.decode()
        village = f"/rehearse/call/{call.call_id}/stats/village"
        assert r.answer("POST", village, {"peer": ["1"]}, b'{"t": 1}', None).body == b'{"stop": false, "peer": null}'
        assert r.answer("POST", f"/rehearse/call/{call.call_id}/stats/farend", {}, b"{}", None).status == 404
        assert r.answer("GET", f"/rehearse/call/{call.call_id}/signal/farend", {}, None, None).status == 204
        assert r.answer("POST", f"/rehearse/{VILLAGE}", {}, b"", None).status == 405
        assert r.answer("HEAD", f"/rehearse/{VILLAGE}", {}, None, None).status == 405  # HEAD must not start a call
    finally:
        r._settle(call, None)
    assert not r.farend_request(farend, {"key": [call.key]})  # the key dies with the call


# ---------------------------------------------------------------------------------------------- metrics
def judged(**kw: Any) -> Any:
    tx, rx = series(**kw)
    return judge_call(True, None, 2.8, {"village": tx + rx, "farend": tx + rx}, 360, 30)


def test_metrics_of_a_judged_call_are_promtool_clean_with_the_agreed_names(tmp_path: Path) -> None:
    clean = judged()
    capped = judge_call(False, "the path to the NOC is down or blocked", None, {}, 360, 30)
    records = [
        call_metrics.CallRecord(VILLAGE, "Kalibaru", "zoom-gallery", 1_800_000_000.0, clean),
        call_metrics.CallRecord("licin", "Licin", "meet-hd", 1_800_000_100.0, capped),
        call_metrics.CallRecord("old", "Licin", "meet-hd", 1_800_000_000.0 - 86_401, clean),  # more than a day ago
    ]
    text = call_metrics.render(records, {"holds": 1, "fails": 1}, {"session": 2}, 1_800_000_200.0)
    lab = f'village="{VILLAGE}",kecamatan="Kalibaru"'
    for line in (
        f'desanet_call_outcome{{{lab},direction="up"}} 0',
        f'desanet_call_info{{{lab},profile="zoom-gallery",direction="up",limitation="none"}} 1',
        f'desanet_call_frames_per_second{{{lab},direction="down"}} 30',
        f'desanet_call_video_height_pixels{{{lab},direction="up"}} 360',
        f'desanet_call_freeze_ratio{{{lab},direction="up"}} 0',
        f'desanet_call_audio_concealment_ratio{{{lab},direction="up"}} 0',
        f'desanet_call_video_loss_ratio{{{lab},direction="up"}} 0',
        f'desanet_call_jitter_buffer_delay_seconds{{{lab},direction="up"}} 0.02',
        f'desanet_call_video_received_bytes_per_second{{{lab},direction="up"}} 125000',
        f"desanet_call_setup_seconds{{{lab}}} 2.8",
        f"desanet_call_last_timestamp_seconds{{{lab}}} 1800000000",
        'desanet_call_outcome{village="licin",kecamatan="Licin",direction="down"} 2',
        'desanet_rehearsal_calls_total{outcome="degraded"} 0',
        'desanet_rehearsal_refusals_total{reason="session"} 2',
        'desanet_rehearsal_refusals_total{reason="uplink_busy"} 0',
    ):
        assert line + "\n" in text, line
    assert 'village="old"' not in text  # kept a day, then dropped
    assert 'desanet_call_setup_seconds{village="licin"' not in text  # it did not connect
    assert "bits" not in text  # promtool's rule: bytes, never bits
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs promtool (scripts/setup.sh installs Debian's prometheus)")
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rendered_from_the_rehearsals_with_removed_villages_dropped(tmp_path: Path, shipped: Inventory) -> None:
    r = rehearsals(tmp_path, shipped)
    r.records[VILLAGE] = call_metrics.CallRecord(VILLAGE, "Kalibaru", "p", 1000.0, judged())
    r.records["gone"] = call_metrics.CallRecord("gone", "Kalibaru", "p", 1000.0, judged())
    text = r.render(now=2000.0)
    assert f'desanet_call_outcome{{village="{VILLAGE}"' in text and 'village="gone"' not in text
    r.render(now=1000.0 + 86_400)
    assert r.records == {}  # pruned after a day


# ---------------------------------------------------------------------------------------------- words
def test_every_message_in_both_languages_with_the_same_placeholders() -> None:
    for key, m in words.MESSAGES.items():
        assert set(m) == set(words.LANGS), key
        assert words.placeholders(m["en"]) == words.placeholders(m["id"]), key


@pytest.mark.parametrize(
    ("kw", "key", "first", "en", "id_"),
    [
        (
            {},
            "fine",
            "",
            "30 frames per second at 640×360, 0.0 % frozen",
            "30 bingkai per detik pada 640×360, 0,0 % membeku",
        ),
        (
            {"freeze_at": {20: 3.0}},
            "freeze",
            "video frozen",
            "video frozen 14 % of the time",
            "video membeku 14 % dari seluruh waktu",
        ),
        ({"fps": 20}, "fps", "20 of 30", "20 of 30 frames per second", "20 dari 30 bingkai per detik"),
        (
            {"height": 180, "reason": "bandwidth"},
            "height",
            "picture 180",
            "picture 180 lines high of the profile's 360; the sender held back for lack of bandwidth",
            "gambar setinggi 180 baris dari 360 baris profil; pengirim menahan diri karena lebar pita kurang",
        ),
        ({"conceal": 0.05}, "concealment", "5%", "5.0 % of the audio concealed", "5,0 % suara ditambal"),
        # Failing concealment comes before a merely degraded picture, in the judgement and on the page alike.
        ({"height": 180, "conceal": 0.2}, "concealment", "20%", "20 % of the audio", "20 % suara ditambal"),
    ],
)
def test_the_page_names_the_same_main_reason_as_the_judgement(
    kw: dict[str, Any], key: str, first: str, en: str, id_: str
) -> None:
    tx, rx = series(**kw)
    d: DirectionOutcome = judge_direction("up", tx, rx, profile_height=360, profile_fps=30)
    assert words.main_reason(d, 360, 30) == key
    assert (d.reasons[0] if d.reasons else "").startswith(first), d.reasons
    assert en in words.direction_words(d, 360, 30, "en")["reason"]
    assert id_ in words.direction_words(d, 360, 30, "id")["reason"]


def test_a_call_that_did_not_connect_says_why_in_either_language() -> None:
    o = judge_call(False, "the village's browser did not reach the far end", None, {}, 360, 30)
    assert words.outcome_words(o, "path", 360, 30, "id")["reason"].startswith("Peramban kantor ini tidak sampai ke NOC")
    page = words.outcome_words(o, "page", 360, 30, "id")
    assert "…" in page["reason"] and "browser did not" not in page["reason"]  # no English in Indonesian


@pytest.mark.parametrize(
    ("asked", "header", "lang"),
    [
        ("id", "en-US", "id"),
        (None, "id-ID,id;q=0.9,en-US;q=0.8", "id"),
        (None, "en-GB,en;q=0.9,id;q=0.8", "en"),
        (None, "jv,id;q=0.7,en;q=0.3", "id"),
        (None, "in", "id"),
        (None, "fr", "en"),
        (None, None, "en"),
        ("xx", "id;q=0", "en"),
        (None, "en;q=0.5,id", "id"),
    ],
)
def test_language_from_the_query_else_accept_language(asked: str | None, header: str | None, lang: str) -> None:
    assert words.choose_lang(asked, header) == lang


# ---------------------------------------------------------------------------------------------- the page
def test_the_rehearsal_page_loads_nothing_from_outside_desanet() -> None:
    cfg = PageConfig("c1", "village", 640, 360, 30, 1000, base="/rehearse/call", source="choose", live=True,
                     seconds=30, lang="id", title="Uji coba", words=words.page_words("id"))  # fmt: skip
    page = render(cfg).decode()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page) and "@import" not in page
    assert "Kamera dan mikrofon" in page and "Pola uji bergerak dan nada" in page and "lang='id'" in page
    assert page.count("</script>") == 2
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in CSP and "connect-src 'self'" in CSP and "default-src 'none'" in CSP


def test_the_desk_hands_each_page_the_other_ends_figures_only_when_asked() -> None:
    desk = CallDesk()
    desk.add_call("c1", 640, 360, 30, 1000)
    desk.handle("POST", "/call/c1/stats/farend", b'{"t": 5, "in_video": {"framesDecoded": 9}, "pair": {}}')
    assert desk.handle("POST", "/call/c1/stats/village", b'{"t": 1}')[2] == b'{"stop": false}'  # the lab's page
    got = desk.handle("POST", "/call/c1/stats/village?peer=1", b'{"t": 2}')[2]
    assert got == b'{"stop": false, "peer": {"t": 5, "in_video": {"framesDecoded": 9}}}'
    assert desk.handle("GET", "/call/c1/outcome/village")[0] == 204
    desk.set_outcome("c1", {"outcome": "holds"})
    assert desk.handle("GET", "/call/c1/outcome/village")[2] == b'{"outcome": "holds"}'
    with contextlib.suppress(Exception):
        desk.remove_call("c1")
