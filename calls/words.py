"""Every word the call page and the rehearsal page say to a person, in English and Bahasa Indonesia.

The same shape as check/messages.py (a dict keyed by name, a template per language, numbers written by the
`fmt_*` helpers with the language's decimal mark), kept here because the call page is served by both the lab
and the exporter, and neither may import check/. verdict/call_outcome.py's reasons are English sentences for
logs and `--json`; a person reads `direction_words`, which names the same first reason from the same figures
and limits in either language.
"""

from __future__ import annotations

import string
from typing import Any, Final, Literal

from desanet.verdict.call_outcome import CallOutcome, DirectionOutcome, Limits

Lang = Literal["en", "id"]
LANGS: Final[tuple[Lang, ...]] = ("en", "id")

# fmt: off
MESSAGES: Final[dict[str, dict[Lang, str]]] = {
    # ------------------------------------------------------------------ the page
    "title": {"en": "Rehearsal call: {village}", "id": "Uji coba panggilan: {village}"},
    "intro": {
        "en": "A real video call between this office and the NOC at profile {profile}: {width}×{height}, {fps} "
              "frames per second, up to {kbit} kbit/s, for {seconds} seconds.",
        "id": "Panggilan video sungguhan antara kantor ini dan NOC dengan profil {profile}: {width}×{height}, {fps} "
              "bingkai per detik, paling banyak {kbit} kbit/s, selama {seconds} detik.",
    },
    "choose": {"en": "What should this office send?", "id": "Apa yang dikirim kantor ini?"},
    "source_camera": {"en": "Camera and microphone", "id": "Kamera dan mikrofon"},
    "source_pattern": {"en": "Moving test pattern and a tone", "id": "Pola uji bergerak dan nada"},
    "camera_needs_https": {
        "en": "The camera needs desanet's https address; over plain http, use the test pattern.",
        "id": "Kamera hanya bisa lewat alamat https desanet; lewat http biasa, pakai pola uji.",
    },
    "choose_within": {
        "en": "Choose within {seconds} seconds: the NOC is waiting.",
        "id": "Pilih dalam {seconds} detik: NOC sedang menunggu.",
    },
    "status_start": {"en": "Preparing", "id": "Menyiapkan"},
    "status_camera": {"en": "Opening the camera and microphone", "id": "Membuka kamera dan mikrofon"},
    "status_pattern": {"en": "Starting the test pattern", "id": "Menyalakan pola uji"},
    "status_signalling": {"en": "Connecting to the NOC", "id": "Menghubungkan ke NOC"},
    "status_call": {"en": "Call under way: {seconds} s left", "id": "Panggilan berlangsung: sisa {seconds} detik"},
    "status_judging": {"en": "Call ended; judging it", "id": "Panggilan selesai; sedang dinilai"},
    "status_done": {"en": "Done", "id": "Selesai"},
    "status_error": {"en": "The page failed: {error}", "id": "Halaman gagal: {error}"},
    "col_figure": {"en": "figure", "id": "ukuran"},
    "col_up": {"en": "up (this office → NOC)", "id": "naik (kantor ini → NOC)"},
    "col_down": {"en": "down (NOC → this office)", "id": "turun (NOC → kantor ini)"},
    "fig_fps": {"en": "frames per second", "id": "bingkai per detik"},
    "fig_picture": {"en": "picture", "id": "gambar"},
    "fig_rate": {"en": "video received", "id": "video diterima"},
    "fig_freeze": {"en": "video frozen", "id": "video membeku"},
    "fig_concealment": {"en": "audio concealed", "id": "suara ditambal"},
    "result": {"en": "Result", "id": "Hasil"},
    "no_result": {
        "en": "No result came back from desanet; the NOC's figures are on its dashboards.",
        "id": "Tidak ada hasil dari desanet; angka NOC ada di dasbornya.",
    },
    "again": {"en": "Rehearse again", "id": "Uji coba lagi"},
    # ------------------------------------------------------------------ outcomes, per direction
    "outcome_holds": {"en": "holds", "id": "lancar"},
    "outcome_degraded": {"en": "degraded", "id": "terganggu"},
    "outcome_fails": {"en": "fails", "id": "gagal"},
    "dir_up": {"en": "Up (this office → NOC)", "id": "Naik (kantor ini → NOC)"},
    "dir_down": {"en": "Down (NOC → this office)", "id": "Turun (NOC → kantor ini)"},
    "call_holds": {"en": "The call holds both ways.", "id": "Panggilan lancar dua arah."},
    "call_degraded": {
        "en": "The call works but is degraded.",
        "id": "Panggilan berjalan tetapi terganggu.",
    },
    "call_fails": {"en": "The call fails.", "id": "Panggilan gagal."},
    "reason_fine": {
        "en": "{fps} frames per second at {width}×{height}, {frozen} frozen, {concealed} of the audio concealed",
        "id": "{fps} bingkai per detik pada {width}×{height}, {frozen} membeku, {concealed} suara ditambal",
    },
    "reason_no_video": {"en": "no video arrived", "id": "tidak ada video yang tiba"},
    "reason_freeze": {
        "en": "video frozen {frozen} of the time",
        "id": "video membeku {frozen} dari seluruh waktu",
    },
    "reason_fps": {
        "en": "{fps} of {profile_fps} frames per second",
        "id": "{fps} dari {profile_fps} bingkai per detik",
    },
    "reason_height": {
        "en": "picture {height} lines high of the profile's {profile_height}",
        "id": "gambar setinggi {height} baris dari {profile_height} baris profil",
    },
    "reason_concealment": {
        "en": "{concealed} of the audio concealed (lost and filled in)",
        "id": "{concealed} suara ditambal (hilang lalu diisi)",
    },
    "limited_bandwidth": {
        "en": "the sender held back for lack of bandwidth",
        "id": "pengirim menahan diri karena lebar pita kurang",
    },
    "limited_cpu": {
        "en": "the sender held back for lack of CPU (a busy computer, not the link)",
        "id": "pengirim menahan diri karena CPU kurang (komputer sibuk, bukan jaringan)",
    },
    "limited_other": {"en": "the sender held back (other reason)", "id": "pengirim menahan diri (alasan lain)"},
    # ------------------------------------------------------------------ a call that did not connect
    "failed_path": {
        "en": "This office's browser did not reach the NOC: the path is down or blocked.",
        "id": "Peramban kantor ini tidak sampai ke NOC: jalur putus atau terblokir.",
    },
    "failed_signalling": {
        "en": "Setting up the call with the NOC did not finish: the path drops requests.",
        "id": "Penyiapan panggilan dengan NOC tidak selesai: jalur membuang permintaan.",
    },
    "failed_media": {
        "en": "The call was set up but no picture or sound got through: UDP is blocked on the way.",
        "id": "Panggilan sudah disiapkan tetapi gambar dan suara tidak lewat: UDP terblokir di jalan.",
    },
    "failed_page": {
        "en": "The call page failed in a browser: {error}",
        "id": "Halaman panggilan gagal di peramban: {error}",
    },
    "failed_browser": {
        "en": "The NOC's browser stopped during the call; rehearse again.",
        "id": "Peramban di NOC berhenti saat panggilan; ulangi uji coba.",
    },
    "failed_other": {"en": "The call did not connect.", "id": "Panggilan tidak tersambung."},
    "abandoned": {
        "en": "The call did not start: nothing was chosen within {seconds} seconds, or the camera was not "
              "allowed. Nothing was judged.",
        "id": "Panggilan tidak dimulai: tidak ada pilihan dalam {seconds} detik, atau kamera tidak diizinkan. "
              "Tidak ada yang dinilai.",
    },
    "interrupted": {
        "en": "desanet stopped during the call; nothing was judged.",
        "id": "desanet berhenti saat panggilan; tidak ada yang dinilai.",
    },
    # ------------------------------------------------------------------ refusals (exporter/rehearse.py)
    "refused_title": {"en": "No rehearsal now", "id": "Uji coba belum bisa"},
    "refused_unknown_village": {
        "en": "There is no village “{slug}” in desanet's inventory; rehearsals are only for its villages.",
        "id": "Tidak ada desa “{slug}” di inventaris desanet; uji coba hanya untuk desa di inventaris.",
    },
    "refused_session": {
        "en": "{name} is in its session “{title}” until {until}: a rehearsal now would take bandwidth from it.",
        "id": "{name} sedang dalam sesi “{title}” sampai {until}: uji coba sekarang akan mengambil lebar pita "
              "sesi itu.",
    },
    "refused_session_soon": {
        "en": "{name}'s session “{title}” starts at {start}, before a rehearsal would end.",
        "id": "Sesi {name} “{title}” dimulai pukul {start}, sebelum uji coba selesai.",
    },
    "force_session": {
        "en": "If the session is not running, rehearse anyway",
        "id": "Jika sesi itu tidak berlangsung, tetap uji coba",
    },
    "refused_budget": {
        "en": "{name}'s daily test budget has no room for this call now; it resets at 00:00 WIB.",
        "id": "Jatah uji harian {name} tidak cukup untuk panggilan ini; jatah diisi ulang pukul 00.00 WIB.",
    },
    "refused_uplink_busy": {
        "en": "Another test is using kecamatan {kecamatan}'s uplink; try again in {retry} seconds.",
        "id": "Uji lain sedang memakai jalur kecamatan {kecamatan}; coba lagi dalam {retry} detik.",
    },
    "refused_busy": {
        "en": "Another call is under way at the NOC (one at a time); try again in {retry} seconds.",
        "id": "Panggilan lain sedang berlangsung di NOC (satu per satu); coba lagi dalam {retry} detik.",
    },
    "refused_no_chromium": {
        "en": "The NOC cannot make calls: it has no Chromium for the far end.",
        "id": "NOC tidak bisa membuat panggilan: tidak ada Chromium untuk ujung jauh.",
    },
    "refused_client_cert": {
        "en": "The NOC cannot make calls: its web config requires client certificates, which its own far end "
              "does not have.",
        "id": "NOC tidak bisa membuat panggilan: konfigurasi webnya mewajibkan sertifikat klien, yang tidak "
              "dimiliki ujung jauhnya.",
    },
}
# fmt: on

# The page's live labels, handed to its script in the page's language.
PAGE_KEYS: Final[tuple[str, ...]] = tuple(
    k
    for k in MESSAGES
    if k.startswith(("status_", "col_", "fig_", "outcome_", "dir_", "call_"))
    or k
    in (
        "choose",
        "source_camera",
        "source_pattern",
        "camera_needs_https",
        "result",
        "no_result",
        "again",
    )
)


def placeholders(template: str) -> set[str]:
    """The named fields a template takes."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def t(key: str, lang: Lang, **values: object) -> str:
    """The message `key` in `lang`, filled in. A missing key or value is a bug: it raises."""
    return MESSAGES[key][lang].format(**values)


def page_words(lang: Lang) -> dict[str, str]:
    """The templates the page's script fills in itself (it knows `{seconds}` and `{error}` only then)."""
    return {k: MESSAGES[k][lang] for k in PAGE_KEYS}


def choose_lang(asked: str | None, accept_language: str | None) -> Lang:
    """`?lang=id|en` if given, else the first of id/en the browser's Accept-Language prefers, else English.

    `in` is the old ISO 639 code for Indonesian that some browsers still send."""
    if asked == "id":
        return "id"
    if asked == "en":
        return "en"
    best: tuple[float, Lang] | None = None
    for i, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        base = tag.strip().lower().split("-")[0]
        lang: Lang | None = "id" if base in ("id", "in") else "en" if base == "en" else None
        if lang is not None and q > 0 and (best is None or q > best[0]):
            best = (q - i * 1e-6, lang)  # equal q: the earlier one wins
    return best[1] if best else "en"


# ---------------------------------------------------------------------------------------------- numbers
def _num(value: float, decimals: int, lang: Lang) -> str:
    text = f"{value:.{decimals}f}"
    return text.replace(".", ",") if lang == "id" else text


def fmt_pct(ratio: float, lang: Lang) -> str:
    pct = ratio * 100
    return f"{_num(pct, 1 if pct < 10 else 0, lang)} %"


def fmt_fps(fps: float, lang: Lang) -> str:
    return _num(fps, 0, lang)


# ---------------------------------------------------------------------------------------------- outcomes
_LIMITS = Limits()


def main_reason(d: DirectionOutcome, profile_height: int, profile_fps: float, limits: Limits = _LIMITS) -> str:
    """The key of the figure that decided the direction (the first of `d.reasons`, judged in the same order
    from the same figures and limits), or "fine" when it holds."""
    if d.fps is None:
        return "no_video"
    h_ratio = d.height_ratio if d.height_ratio is not None else 0.0
    concealed = d.audio_concealment_ratio
    frozen = d.freeze_ratio or 0.0
    checks = [
        ("freeze", frozen > limits.fail_freeze_ratio, frozen > limits.hold_freeze_ratio),
        ("fps", d.fps < limits.fail_fps, d.fps < limits.hold_fps_ratio * profile_fps),
        ("height", h_ratio < limits.fail_height_ratio, h_ratio < limits.hold_height_ratio),
        (
            "concealment",
            concealed is not None and concealed > limits.fail_concealment,
            concealed is not None and concealed > limits.hold_concealment,
        ),
    ]
    for key, failing, _ in checks:
        if failing:
            return key
    for key, _, degraded in checks:
        if degraded:
            return key
    return "fine"


def direction_words(d: DirectionOutcome, profile_height: int, profile_fps: float, lang: Lang) -> dict[str, str]:
    """One direction for a person: its name, its outcome and the main reason (plus the sender's limit, if any)."""
    key = main_reason(d, profile_height, profile_fps)
    values: dict[str, Any] = {
        "fps": fmt_fps(d.fps or 0.0, lang),
        "profile_fps": fmt_fps(profile_fps, lang),
        "width": d.width or 0,
        "height": d.height or 0,
        "profile_height": profile_height,
        "frozen": fmt_pct(d.freeze_ratio or 0.0, lang),
        "concealed": fmt_pct(d.audio_concealment_ratio or 0.0, lang),
    }
    reason = t(f"reason_{key}", lang, **values)
    if d.outcome != "holds" and d.limitation in ("bandwidth", "cpu", "other"):
        reason += "; " + t(f"limited_{d.limitation}", lang)
    return {
        "direction": d.direction,
        "name": t(f"dir_{d.direction}", lang),
        "outcome": d.outcome,
        "outcome_words": t(f"outcome_{d.outcome}", lang),
        "reason": reason,
    }


def outcome_words(
    outcome: CallOutcome, failure: str | None, profile_height: int, profile_fps: float, lang: Lang
) -> dict[str, Any]:
    """The whole call for the page: a headline and each direction; a call that did not connect says why, by the
    one-word `failure` calls/run.py gives (path, signalling, media, page, browser)."""
    doc: dict[str, Any] = {"outcome": outcome.outcome, "headline": t(f"call_{outcome.outcome}", lang)}
    if not outcome.connected:
        kind = failure if failure in ("path", "signalling", "media", "page", "browser") else "other"
        # A page error's text comes from a browser, in English: shown only in English, as check/messages.py does.
        error = (outcome.error or "").split(": ", 1)[-1][:200] if lang == "en" else "…"
        doc["reason"] = t(f"failed_{kind}", lang, error=error) if kind == "page" else t(f"failed_{kind}", lang)
        doc["directions"] = []
        return doc
    doc["directions"] = [direction_words(d, profile_height, profile_fps, lang) for d in outcome.directions.values()]
    return doc
