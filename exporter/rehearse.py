"""`/rehearse/VILLAGE`: a real WebRTC call from the kantor desa's own browser to a far end at the NOC.

The technician opens the page; desanet admits the call or says why not, starts the far end (headless Chromium,
calls/browser.py) on this host pointed at serve's own listener, and the two pages call each other through
calls/server.py's CallDesk, mounted by exporter/server.py behind its TLS and basic auth. The call itself is
calls/run.py's `make_call`, the same code as `desanet lab call`; verdict/call_outcome.py judges it, the page
shows the outcome in Bahasa Indonesia or English (calls/words.py) and call_metrics.py exports it for a day.

Admission follows the rules every test that loads a village link follows (desanet.budget): only inventory
villages; not during the village's session nor when one starts before the call would end (`?force=1`
overrides this rule only, for a session that is not in fact running, as `desanet check --force`); one test per
kecamatan uplink at a time (the call holds the uplink lock); within the village's daily test budget (the call
is reserved in the ledger at its upper bound before it starts and charged what it moved); and one call per
host (calls/run.py's lock: two calls on one NOC host starve each other's CPU, which reads as congestion).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import logging
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from desanet.budget import Ledger, Refused, Reservation, TestSlot, acquire_test_slot, budget_day, state_dir
from desanet.calls import words
from desanet.calls.browser import find_chromium
from desanet.calls.page import CSP
from desanet.calls.run import LOCK_PATH, CallAbandoned, CallError, CallRun, CallSpec, make_call, one_call_at_a_time
from desanet.calls.server import CallDesk
from desanet.district import Inventory, Profile, Village
from desanet.exporter import call_metrics
from desanet.exporter.admission import Refusal
from desanet.exporter.webconfig import WebConfigWatcher
from desanet.verdict.call_outcome import judge_call

log = logging.getLogger("desanet.rehearse")

HTML = "text/html; charset=utf-8"
CALL_SECONDS = 30.0  # long enough for 22 judged seconds after the 8 s warm-up
CONNECT_SECONDS = 10.0
# For the person to choose camera or test pattern and allow the camera. The call holds the host's call lock and
# runs its far end meanwhile, so a page opened and left alone keeps every other call waiting this long (a
# first lab run abandoned after 120 s made a calibration call give up on the lock): a minute is ample to click.
START_SECONDS = 60.0
KEEP_FINISHED_SECONDS = 600.0  # a finished call stays on the desk this long, for its page to fetch the outcome
# The call's upper bound in the ledger: video at the profile's ceiling plus ~100 kbit/s of audio, RTCP and
# headers, both ways, for the call and its connect time, with half again for retransmissions (a lab call at
# 5 % loss received 1391 kbit/s against a 1000 kbit/s ceiling: docs/calls.md).
OVERHEAD_KBIT = 100
RETRANSMISSION_FACTOR = 1.5
_SLUG = re.compile(r"^/rehearse/(?P<slug>[^/]{1,100})$")
_CALL = re.compile(r"^/call/(?P<id>[A-Za-z0-9_-]{1,64})/[a-z]+/(?P<role>village|farend)$")


@dataclass(frozen=True)
class Reply:
    status: int
    ctype: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _Refusal(Exception):
    """Why no rehearsal now: the metric's reason, the HTTP answer (admission.Refusal: status, Retry-After,
    English words for the log) and the person's words (calls/words.py key and values)."""

    def __init__(
        self,
        reason: str | None,  # None: not the call's or the link's fault (no Chromium here): not counted
        answer: Refusal,
        message: str,
        values: dict[str, Any],
        detail: str = "",
        force: bool = False,
    ):
        super().__init__(answer.reason)
        self.reason, self.answer, self.message, self.values = reason, answer, message, values
        self.detail, self.force = detail, force


@dataclass
class _Call:
    """An admitted call: what it holds (uplink slot, host lock: `stack`) and its reservation in the ledger."""

    call_id: str
    village: Village
    profile: Profile
    spec: CallSpec
    key: str  # the far end's: its requests carry it instead of a password (serve has only bcrypt hashes)
    stack: contextlib.ExitStack
    slot: TestSlot
    ledger: Ledger
    reservation: Reservation
    lang: words.Lang = "en"
    thread: threading.Thread | None = None


class Rehearsals:
    """The rehearsal calls of one `desanet serve`: admission, the call under way, the judged records."""

    def __init__(
        self,
        inventory: Callable[[], Inventory],
        *,
        directory: Path | None = None,
        lock_path: Path = LOCK_PATH,
        chromium: Callable[[], str | None] = find_chromium,
        seconds: float = CALL_SECONDS,
        start_timeout: float = START_SECONDS,
    ):
        self.inventory = inventory
        self.directory = directory
        self.lock_path = lock_path
        self.chromium = chromium
        self.seconds = seconds
        self.start_timeout = start_timeout
        self.desk = CallDesk()
        self.origin: str | None = None  # serve's listener as the far end reaches it (listening())
        self.web: WebConfigWatcher | None = None
        self.records: dict[str, call_metrics.CallRecord] = {}
        self.calls: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._active: _Call | None = None
        self._ended: dict[str, float] = {}  # call id -> monotonic end, for removing it from the desk later
        self._cancel = threading.Event()

    def listening(self, host: str, port: int, web: WebConfigWatcher | None) -> None:
        """Where the far end finds serve: the listen address, or loopback when serve listens on every address
        (the far end runs on this host, in serve's own network namespace)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        name = f"[{host}]" if ":" in host else host
        self.web = web
        self.origin = f"{'https' if web is not None and web.tls else 'http'}://{name}:{port}"

    # ------------------------------------------------------------------------------------------ HTTP
    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(("/rehearse/", "/call/"))

    def farend_request(self, path: str, query: dict[str, list[str]]) -> bool:
        """Whether this is the far end's own request, carrying its call's key: let in without a password."""
        m = _CALL.match(path)
        call = self._active
        if m is None or call is None or m["id"] != call.call_id:
            return False
        return hmac.compare_digest((query.get("key") or [""])[0].encode(), call.key.encode())

    def answer(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes | None, accept_language: str | None
    ) -> Reply:
        """A request under /rehearse/ or /call/ that got past auth (or is the far end's, farend_request)."""
        # Each side reads the other's description but posts only as itself: the far end under /call/ with its key,
        # the person's page under /rehearse/call/ (where the browser sends the password it logged in with).
        if path.startswith("/call/"):
            m = _CALL.match(path)
            if m is None or not self.farend_request(path, query) or (method == "POST" and m["role"] != "farend"):
                return Reply(404, "text/plain; charset=utf-8", b"Not found\n")
            return _desk_reply(self.desk.handle(method, f"{path}?{_query(query)}", body))
        if path.startswith("/rehearse/call/"):
            inner = path.removeprefix("/rehearse")
            m = _CALL.match(inner)
            if m is None or (method == "POST" and m["role"] != "village"):
                return Reply(404, "text/plain; charset=utf-8", b"Not found\n")
            return _desk_reply(self.desk.handle(method, f"{inner}?{_query(query)}", body))
        m = _SLUG.match(path)
        if m is None:
            return Reply(404, "text/plain; charset=utf-8", b"Not found\n")
        if method != "GET":  # not even HEAD: opening the page starts a call
            return Reply(405, "text/plain; charset=utf-8", b"Open the page with GET\n", {"Allow": "GET"})
        first = {k: v[0] for k, v in query.items() if v}
        lang = words.choose_lang(first.get("lang"), accept_language)
        source = first.get("source", "")
        source = source if source in ("camera", "pattern") else "choose"
        return self.open(m["slug"], lang, source, force=first.get("force") in ("1", "yes", "true"))

    # ------------------------------------------------------------------------------------------ admission
    def open(self, slug: str, lang: words.Lang, source: str, *, force: bool = False) -> Reply:
        """GET /rehearse/SLUG: admit the call and start its far end, or say why not."""
        try:
            call = self.admit(slug, datetime.now(UTC), force=force)
        except _Refusal as r:
            if r.reason is not None:
                with self._lock:
                    self.refusals[r.reason] += 1
            log.info("rehearsal refused", extra={"village": slug[:100], "reason": r.reason, "detail": str(r)})
            return self._refusal_page(slug, r, lang, source)
        try:
            return self._start(call, lang, source)
        except BaseException:
            self._settle(call, None)  # nothing started: let go of the slot and the lock at once
            raise

    def _start(self, call: _Call, lang: words.Lang, source: str) -> Reply:
        """Put the admitted call on the desk, start its thread (which starts the far end) and serve the page."""
        v, p, spec = call.village, call.profile, call.spec
        call.lang = lang
        title = words.t("title", lang, village=v.name)
        intro = words.t(
            "intro", lang, profile=p.name, width=spec.width, height=spec.height, fps=spec.fps, kbit=spec.kbit,
            seconds=round(spec.seconds),
        )  # fmt: skip
        page = {
            "base": "/rehearse/call", "source": source, "live": True, "seconds": spec.seconds, "lang": lang,
            "start_seconds": spec.start_timeout,
            "title": title, "intro": intro, "words": words.page_words(lang),
        }  # fmt: skip
        self.desk.add_call(
            call.call_id,
            spec.width,
            spec.height,
            spec.fps,
            spec.kbit,
            pages={"village": page, "farend": {"key": call.key}},
        )
        log.info(
            "rehearsal call admitted",
            extra={"village": v.slug, "profile": p.name, "source": source, "lang": lang, "call": call.call_id},
        )
        call.thread = threading.Thread(target=self._run, args=(call,), name=f"rehearsal-{v.slug}", daemon=True)
        call.thread.start()
        status, ctype, body = self.desk.page(call.call_id, "village")
        return Reply(status, ctype, body, {"Cache-Control": "no-store", "Content-Security-Policy": CSP})

    def admit(self, slug: str, now: datetime, *, force: bool = False) -> _Call:
        """Take everything the call needs (uplink slot, host lock, a reservation in the ledger), or raise
        _Refusal. Nothing is charged or started by a refusal."""
        inv = self.inventory()
        try:
            village = inv.village(slug)
        except KeyError:
            raise _Refusal(
                "unknown_village",
                Refusal(404, 0, f"refused: {slug!r} is not a village in the inventory"),
                "refused_unknown_village",
                {"slug": slug},
            ) from None
        chromium = self.chromium()
        if chromium is None or self.origin is None:
            raise _Refusal(None, Refusal(503, 300, "refused: no Chromium for the far end"), "refused_no_chromium", {})
        if self.web is not None and self.web.current().cfg.client_auth_type in (
            "RequireAnyClientCert",
            "RequireAndVerifyClientCert",
        ):
            raise _Refusal(None, Refusal(503, 3600, "refused: client certificates required"), "refused_client_cert", {})
        profile = _profile(inv, village, now)
        spec = CallSpec(
            profile.video_width, profile.video_height, profile.video_fps, profile.video_kbit, self.seconds,
            CONNECT_SECONDS, self.start_timeout,
        )  # fmt: skip
        stack = contextlib.ExitStack()
        slot: TestSlot | None = None
        try:
            try:
                slot = stack.enter_context(
                    acquire_test_slot(
                        inv, village, now, force, directions=2, directory=self.directory, origin="rehearsal"
                    )
                )
            except Refused as exc:
                raise _budget_refusal(exc, inv, village, now) from None
            window = spec.start_timeout + spec.connect_timeout + spec.seconds + 10
            upcoming = inv.next_session(village, now)
            if not force and upcoming is not None and upcoming[1] <= now + timedelta(seconds=window):
                session, start = upcoming
                raise _Refusal(
                    "session",
                    Refusal(
                        409,
                        (start + session.duration - now).total_seconds(),
                        f"refused: session {session.title!r} soon",
                    ),
                    "refused_session_soon",
                    {"name": village.name, "title": session.title, "start": _local(start, inv, "%H:%M")},
                    force=True,
                )
            need = _bound_bytes(spec)
            if slot.remaining_bytes < need or slot.remaining_seconds < spec.seconds:
                raise _Refusal(
                    "budget",
                    Refusal(429, _to_midnight(now), f"refused: {village.name}'s daily test budget has no room"),
                    "refused_budget",
                    {"name": village.name},
                    detail=f"{slot.remaining_bytes / 1e6:.1f} MB and {slot.remaining_seconds:.0f} s left today; "
                    f"this call may need {need / 1e6:.1f} MB and {spec.seconds:.0f} s",
                )
            try:
                stack.enter_context(one_call_at_a_time(wait=0, path=self.lock_path))
            except CallError:
                active = self._active
                retry = spec.seconds + spec.connect_timeout if active is None else active.spec.seconds + 15
                raise _Refusal(
                    "busy",
                    Refusal(503, retry, "refused: another call is under way"),
                    "refused_busy",
                    {"retry": math.ceil(retry)},
                ) from None
            ledger = Ledger(self.directory or state_dir())
            try:
                reservation = ledger.reserve(village.slug, village.kecamatan, now, need, spec.seconds)
            except Refused as exc:
                raise _budget_refusal(exc, inv, village, now) from None
        except BaseException:
            if slot is not None:
                slot.charged = True  # refused before anything moved: nothing to charge
            stack.close()
            raise
        call = _Call(
            secrets.token_hex(8), village, profile, spec, secrets.token_urlsafe(24), stack, slot, ledger, reservation
        )
        with self._lock:
            self._active = call
            for old, ended in list(self._ended.items()):
                if time.monotonic() - ended > KEEP_FINISHED_SECONDS:
                    self.desk.remove_call(old)
                    del self._ended[old]
        return call

    # ------------------------------------------------------------------------------------------ the call
    def _run(self, call: _Call) -> None:
        """The call, then its judgement, record and charge; whatever happens, everything it held is let go and
        the page is told the outcome."""
        spec, v = call.spec, call.village
        run: CallRun | None = None
        doc: dict[str, Any] = {"outcome": "none", "headline": "", "reason": words.t("interrupted", call.lang)}
        try:
            chromium = self.chromium()
            assert chromium is not None and self.origin is not None
            run = make_call(
                self.desk,
                self.origin,
                call.call_id,
                spec,
                chromium,
                farend_query=f"?key={call.key}",
                farend_args=self._farend_args(),
                cancel=self._cancel,
            )
            if run.failure != "interrupted":  # serve stopping mid-call judges nothing
                outcome = judge_call(run.connected, run.error, run.setup_s, run.samples, spec.height, spec.fps)
                with self._lock:
                    self.records[v.slug] = call_metrics.CallRecord(
                        v.slug, v.kecamatan, call.profile.name, time.time(), outcome
                    )
                    self.calls[outcome.outcome] += 1
                doc = words.outcome_words(outcome, run.failure, spec.height, spec.fps, call.lang)
                _log_call(v, call.profile, outcome, run)
        except CallAbandoned as exc:
            log.info("rehearsal abandoned", extra={"village": v.slug, "reason": str(exc)})
            doc["reason"] = words.t("abandoned", call.lang, seconds=round(spec.start_timeout))
        except Exception as exc:  # a far end that could not start, a bug: the page and the log say so
            log.error("rehearsal failed", extra={"village": v.slug, "reason": f"{type(exc).__name__}: {exc}"})
            doc["reason"] = words.t("failed_browser", call.lang)
        finally:
            self.desk.set_outcome(call.call_id, doc)
            self._settle(call, run)

    def _settle(self, call: _Call, run: CallRun | None) -> None:
        """Charge what the call moved in place of its reservation, then let go of the slot and the host lock."""
        nbytes = _bytes_moved(run) if run is not None else 0
        seconds = call.spec.seconds if run is not None and run.connected else 0.0
        try:
            call.ledger.settle(call.reservation, call.slot.started, nbytes, seconds)
        except (Refused, OSError) as exc:  # the reservation stays: the next test on this uplink charges it in full
            log.error("rehearsal cost not written; its reservation stays charged", extra={"reason": str(exc)})
        call.slot.charged = True
        with self._lock:
            self._active = None
            self._ended[call.call_id] = time.monotonic()
        call.stack.close()

    def _farend_args(self) -> list[str]:
        """With TLS, the far end must accept serve's certificate: issued for the NOC's name, not the loopback
        address the far end uses, and often by a private CA. Chromium on Linux reads CAs only from an NSS
        database (filling one needs certutil, not installed), and --ignore-certificate-errors would accept any
        certificate; so the far end pins serve's own key (its SPKI hash), which accepts exactly serve and the
        one origin this browser ever opens."""
        if self.web is None or not self.web.tls:
            return []
        cert_file = self.web.current().cfg.cert_file
        assert cert_file is not None
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return [f"--ignore-certificate-errors-spki-list={base64.b64encode(hashlib.sha256(spki).digest()).decode()}"]

    def close(self, wait: float = 20.0) -> None:
        """serve is stopping: end the call under way, so its far end is stopped by PID and charged."""
        self._cancel.set()
        call = self._active
        if call is not None and call.thread is not None:
            call.thread.join(wait)

    # ------------------------------------------------------------------------------------------ metrics
    def render(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        slugs = {v.slug for v in self.inventory().villages}
        with self._lock:
            for slug in [s for s, r in self.records.items() if now - r.ended >= call_metrics.KEEP_SECONDS]:
                del self.records[slug]
            records, calls, refusals = list(self.records.values()), dict(self.calls), dict(self.refusals)
        return call_metrics.render(records, calls, refusals, now, slugs)

    # ------------------------------------------------------------------------------------------ pages
    def _refusal_page(self, slug: str, r: _Refusal, lang: words.Lang, source: str) -> Reply:
        e = html.escape
        msg = words.t(r.message, lang, **r.values)
        parts = [f"<h1>{e(words.t('refused_title', lang))}</h1>", f"<p>{e(msg)}</p>"]
        if r.detail and lang == "en":  # the budget's own words are English (check/messages.py does the same)
            parts.append(f"<p><small>{e(r.detail)}</small></p>")
        if r.force:
            href = f"/rehearse/{slug}?force=1&lang={lang}" + (f"&source={source}" if source != "choose" else "")
            parts.append(f"<p><a href='{e(href)}'>{e(words.t('force_session', lang))}</a></p>")
        body = (
            f"<!doctype html><html lang='{lang}'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{e(words.t('refused_title', lang))}</title></head>"
            "<body style='font-family:system-ui,sans-serif;max-width:40rem;padding:.6rem'>"
            f"{''.join(parts)}</body></html>"
        )
        headers = {"Cache-Control": "no-store"}
        if r.answer.status in (429, 503, 409) and r.answer.retry_after_seconds > 0:
            headers["Retry-After"] = r.answer.retry_after
        return Reply(r.answer.status, HTML, body.encode(), headers)


def _query(query: dict[str, list[str]]) -> str:
    """What the desk reads of a query: whether the page wants the other end's last figures."""
    return "peer=1" if (query.get("peer") or [""])[0] == "1" else ""


def _desk_reply(answer: tuple[int, str, bytes]) -> Reply:
    return Reply(*answer, {"Cache-Control": "no-store"})


def _profile(inv: Inventory, village: Village, now: datetime) -> Profile:
    """The profile the rehearsal calls at: the next session's (what the call rehearses), else the village's."""
    upcoming = inv.next_session(village, now)
    if upcoming is not None and upcoming[0].profile:
        with contextlib.suppress(KeyError):
            return inv.profile(upcoming[0].profile)
    return inv.profile_for(village)


def _bound_bytes(spec: CallSpec) -> int:
    """The most the call may move, both ways (see OVERHEAD_KBIT)."""
    per_second = (spec.kbit + OVERHEAD_KBIT) * 1000 / 8
    return int(per_second * (spec.seconds + spec.connect_timeout) * 2 * RETRANSMISSION_FACTOR)


def _bytes_moved(run: CallRun) -> int:
    """What the call put on the link: the village's candidate pair (UDP payload both ways) at its last sample,
    else the far end's; 0 for a call that never connected."""
    for role in ("village", "farend"):
        for s in reversed(run.samples.get(role) or []):
            pair = s.get("pair") if isinstance(s, dict) else None
            if isinstance(pair, dict):
                sent, got = pair.get("bytesSent"), pair.get("bytesReceived")
                if isinstance(sent, int | float) and isinstance(got, int | float):
                    return int(sent + got)
    return 0


def _local(when: datetime, inv: Inventory, fmt: str) -> str:
    from zoneinfo import ZoneInfo

    return when.astimezone(ZoneInfo(inv.timezone)).strftime(fmt)


def _to_midnight(now: datetime) -> float:
    from desanet.budget.ledger import DAY_TZ

    midnight = datetime.combine(budget_day(now) + timedelta(days=1), datetime.min.time(), DAY_TZ)
    return max(1.0, (midnight - now).total_seconds())


def _budget_refusal(exc: Refused, inv: Inventory, village: Village, now: datetime) -> _Refusal:
    """desanet.budget's refusal as the rehearsal's: its reason for the metric, a status, words in both languages."""
    retry = exc.retry_after if exc.retry_after is not None else 60.0
    values: dict[str, Any]
    if exc.reason == "session":
        session = inv.in_session(village, now)
        if session is not None:
            occ = session.occurrence_at_or_after(now)
            until = _local(occ + session.duration, inv, "%H:%M") if occ else "?"
            values = {"name": village.name, "title": session.title, "until": until}
            return _Refusal("session", Refusal(409, retry, f"refused: {exc}"), "refused_session", values, force=True)
        upcoming = inv.next_session(village, now)
        s, start = upcoming if upcoming else (None, now)
        values = {"name": village.name, "title": s.title if s else "", "start": _local(start, inv, "%H:%M")}
        return _Refusal("session", Refusal(409, retry, f"refused: {exc}"), "refused_session_soon", values, force=True)
    if exc.reason == "uplink_busy":
        values = {"kecamatan": village.kecamatan, "retry": math.ceil(retry)}
        return _Refusal("uplink_busy", Refusal(503, retry, f"refused: {exc}"), "refused_uplink_busy", values)
    status = 503 if exc.reason == "ledger" else 429  # a damaged ledger needs a person; a spent budget, tomorrow
    return _Refusal(
        "budget", Refusal(status, retry, f"refused: {exc}"), "refused_budget", {"name": village.name}, detail=str(exc)
    )


def _log_call(v: Village, profile: Profile, outcome: Any, run: CallRun) -> None:
    """One line per judged call, with what the far end cost this host (docs/calls.md quotes it)."""
    secs = run.seconds or 1.0
    extra: dict[str, Any] = {
        "village": v.slug,
        "profile": profile.name,
        "outcome": outcome.outcome,
        "connected": run.connected,
        "setup_seconds": run.setup_s,
        "farend_cpu_cores": round(run.cpu_s.get("farend", 0.0) / secs, 3),
        "farend_pss_megabytes": round(run.rss_bytes.get("farend", 0) / 1e6),
        "host_load": run.host_load,
    }
    for d, x in outcome.directions.items():
        extra[d] = (
            f"{x.outcome} {x.fps or 0:.0f}fps {x.height or 0}p frozen={x.freeze_ratio} "
            f"concealed={x.audio_concealment_ratio} limited={x.limitation}"
        )
    if run.error:
        extra["reason"] = run.error
    log.info("rehearsal call judged", extra=extra)
