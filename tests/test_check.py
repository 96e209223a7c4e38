"""`desanet check`, without a network: the verdict and its words for each factor, both languages complete and
no English left in the Indonesian output, exit codes, name resolution, and the whole run on fake probes."""

from __future__ import annotations

import asyncio
import http.server
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from desanet import check as ck
from desanet.check.messages import LANGS, MESSAGES, detect_lang, fmt_ms, fmt_pct, fmt_rate, fmt_when, placeholders, t
from desanet.cli import check as cli
from desanet.district import Inventory, Village
from desanet.probes.icmp import IcmpPermissionError, IcmpResult
from desanet.probes.snmp import SnmpInterface, SnmpOptic, SnmpResult
from desanet.probes.stamp import DirectionResult as StampDirection
from desanet.probes.stamp import StampResult
from desanet.probes.stats import summarize
from desanet.probes.throughput import DirectionResult, ServerBusy, ThroughputResult
from desanet.probes.trace import Degradation, Hop, TraceResult
from desanet.verdict import readiness as rd
from desanet.verdict.ports import busiest_port
from tests.conftest import LAB_SECRETS

ROOT = Path(__file__).resolve().parent.parent
WIB = ZoneInfo("Asia/Jakarta")
SATURDAY = datetime(2026, 11, 28, 10, 0, tzinfo=WIB)  # no session running; next: Tue 2026-12-01 13:00
IN_SESSION = datetime(2026, 12, 1, 13, 30, tzinfo=WIB)  # "Rapat koordinasi Bupati dan kepala desa", all villages

# Words both languages use as they are: technical terms, names of things, units. Anything else English in an
# Indonesian rendering is an untranslated string.
SHARED_WORDS = {
    "cctv",
    "data",
    "desanet",
    "dscp",
    "hop",
    "hotspot",
    "icmp",
    "iperf",
    "jitter",
    "kecamatan",
    "minimum",
    "mos",
    "ms",
    "noc",
    "normal",
    "ont",
    "ping",
    "port",
    "prometheus",
    "router",
    "server",
    "snmp",
    "stamp",
    "status",
    "tcp",
    "terminal",
    "udp",
    "video",
    "vpn",
    "wib",
    "root",
    "mbit",
    "gbit",
    "kbit",
    "dbm",
    "desa",
    "audio",
}
_CODE = re.compile(r"`[^`]*`|--[\w-]+")
_WORD = re.compile(r"(?<![\w\-./:])[A-Za-z]{2,}(?![\w\-./:])")


def words(text: str) -> set[str]:
    """Whole alphabetic words, lower-cased; command-line bits (`…`, --flags) and names-with-digits left out."""
    return {w.lower() for w in _WORD.findall(_CODE.sub(" ", re.sub(r"\{\w+\}", " ", text)))}


ENGLISH = set().union(*(words(m["en"]) for m in MESSAGES.values())) - SHARED_WORDS


def english_in(text: str) -> set[str]:
    return words(text) & ENGLISH


# ---------------------------------------------------------------------------------------------- the catalog
def test_every_message_exists_in_both_languages_with_the_same_placeholders() -> None:
    for key, texts in MESSAGES.items():
        assert set(texts) == set(LANGS), key
        assert all(texts[lang].strip() for lang in LANGS), key
        assert placeholders(texts["en"]) == placeholders(texts["id"]), key


def test_every_indonesian_message_is_translated() -> None:
    """Render every message in both languages with the same values: the Indonesian must differ from the
    English and contain no English word (technical terms excepted)."""
    for key, texts in MESSAGES.items():
        values = {name: "7" for name in placeholders(texts["en"])}
        en, id_ = t(key, "en", **values), t(key, "id", **values)
        assert en != id_, f"{key} is the same in both languages: {en!r}"
        assert not english_in(id_), f"{key}: English left in {id_!r}: {english_in(id_)}"


def test_the_english_detector_catches_english() -> None:
    assert english_in("the router did not answer") == {"the", "did", "not", "answer"}
    assert not english_in("router tidak menjawab ping, `--lang en`, meet-hd, up0")


def test_numbers_and_times_in_each_language() -> None:
    assert fmt_ms(0.0453, "en") == "45.3 ms" and fmt_ms(0.0453, "id") == "45,3 ms"
    assert fmt_ms(0.03, "id", compact=True) == "30 ms"
    assert fmt_pct(0.015, "id") == "1,5 %" and fmt_pct(1.0, "en") == "100 %"
    assert fmt_rate(3.2e6, "id", compact=True) == "3,2 Mbit/s" and fmt_rate(1e10, "en") == "10.0 Gbit/s"
    when = datetime(2026, 12, 3, 9, 0, tzinfo=WIB)
    assert fmt_when(when, "en") == "Thu 2026-12-03 09:00 WIB"
    assert fmt_when(when, "id") == "Kamis 2026-12-03 pukul 09.00 WIB"


@pytest.mark.parametrize(
    ("env", "lang"),
    [
        ({}, "en"),
        ({"LANG": "id_ID.UTF-8"}, "id"),
        ({"LANG": "en_US.UTF-8", "LC_MESSAGES": "id_ID.UTF-8"}, "id"),
        ({"LANG": "id_ID.UTF-8", "LC_ALL": "C.UTF-8"}, "en"),
        ({"LC_ALL": "id_ID", "LANG": "en_GB.UTF-8"}, "id"),
        ({"LANG": "", "LC_MESSAGES": "id"}, "id"),
    ],
)
def test_language_follows_the_locale(env: dict[str, str], lang: str) -> None:
    assert detect_lang(env) == lang


# ---------------------------------------------------------------------------------------------- fakes
def icmp(rtts: list[float | None], *, burst: float | None = 0.0) -> IcmpResult:
    got = [r for r in rtts if r is not None]
    jitter = sum(abs(a - b) for a, b in itertools.pairwise(got)) / max(1, len(got) - 1) if got else None
    return IcmpResult(
        target="x",
        sent=len(rtts),
        received=len(got),
        duplicates=0,
        reordered=0,
        loss_ratio=(len(rtts) - len(got)) / len(rtts),
        rtt=summarize(got),
        jitter_seconds=jitter,
        ipdv_seconds=None,
        pdv_seconds=None,
        burst_loss_ratio=burst,
        timestamping="kernel",
        socket_kind="raw",
    )


def stamp(sent: int = 100, received: int = 100, jitter: float | None = 0.0005, rtt: float = 0.01) -> StampResult:
    d = StampDirection(0.0, jitter, None, None)
    return StampResult(
        target="x",
        port=862,
        sent=sent,
        received=received,
        loss_ratio=(sent - received) / sent,
        rtt=summarize([rtt] * received) if received else None,
        jitter_seconds=jitter,
        ipdv_seconds=None,
        pdv_seconds=None,
        forward=d,
        backward=d,
        burst_loss_ratio=0.0 if received else 1.0,
    )


def snmp(octets: int = 0, errors: int = 0, rx_dbm: float = -18.0, uptime: float = 86400.0) -> SnmpResult:
    ports = (
        SnmpInterface(1, "lo", None, True, True, 1e7, 0, 0, 0, 0, 0, 0.0),
        SnmpInterface(2, "sfp1", None, True, True, 1e9, octets, octets // 2, errors, 0, 0, 0.0),
    )
    optic = SnmpOptic(1, "sfp1", rx_dbm, -2.0, 40.0, 0.012, 3.3, 1.31e-6, False, False, "lab")
    return SnmpResult("x", True, None, uptime, ports, (optic,), 0.01)


def trace_to(router: str, degraded_ttl: int | None, reached: bool = True) -> TraceResult:
    addresses = ["10.255.0.1", "10.254.10.2", router]
    hops = tuple(
        Hop(ttl, addr, 0.001, (0.001,), 3, 3, 0.0, reached and addr == router)
        for ttl, addr in enumerate(addresses if reached else addresses[:2], 1)
    )
    deg = None
    if degraded_ttl is not None:
        deg = Degradation(degraded_ttl, addresses[degraded_ttl - 1], ("latency",), 0.05, 0.0, degraded_ttl - 1)
    return TraceResult(
        router,
        "icmp",
        hops,
        reached,
        degraded_ttl,
        None if deg is None else deg.address,
        0.1,
        9,
        deg,
    )


def udp(bps: float, loss: float = 0.0) -> DirectionResult:
    return DirectionResult(bps, bps * 1.03, int(bps / 8 * 1.5), 1.5, None, None, 0.001, loss, 0)


class FakeProbers(ck.Probers):
    """What the probes would have measured; records what was asked."""

    def __init__(
        self,
        *,
        rtts: list[float | None] | None = None,
        stamp_result: StampResult | None = None,
        down: float = 10e6,
        up: float = 10e6,
        trace: TraceResult | None = None,
        icmp_error: Exception | None = None,
        busy: int = 0,
        delay: float = 0.05,
    ) -> None:
        super().__init__()
        self.rtts = rtts if rtts is not None else [0.005] * 100
        self.stamp_result = stamp_result if stamp_result is not None else stamp()
        self.down, self.up, self.trace_result, self.icmp_error = down, up, trace, icmp_error
        self.busy, self.delay = busy, delay
        self.calls: list[str] = []
        self.snmp_polls = 0

    async def icmp(self, address: str, settings: Any) -> IcmpResult:
        self.calls.append("icmp")
        await asyncio.sleep(self.delay)
        if self.icmp_error:
            raise self.icmp_error
        return icmp(self.rtts)

    async def stamp(self, address: str, settings: Any) -> StampResult:
        self.calls.append("stamp")
        self.stamp_settings = settings
        await asyncio.sleep(self.delay)
        return self.stamp_result

    async def snmp(self, address: str, settings: Any) -> SnmpResult:
        self.calls.append("snmp")
        self.snmp_polls += 1
        return snmp(octets=self.snmp_polls * 1000, errors=3 * self.snmp_polls)

    async def throughput(self, address: str, settings: Any, progress: Any = None) -> ThroughputResult:
        self.calls.append(f"throughput-{settings.direction}")
        if self.busy:
            self.busy -= 1
            raise ServerBusy("busy")
        if settings.direction == "down":
            return ThroughputResult(address, udp(min(self.down, settings.udp_bitrate_bps)), None)
        return ThroughputResult(address, None, udp(min(self.up, settings.udp_bitrate_bps)))

    async def trace(self, address: str, settings: Any) -> TraceResult:
        self.calls.append("trace")
        assert self.trace_result is not None
        return self.trace_result

    def history(self, url: str, village: str, profile: str, now: datetime) -> list[ck.HistoryDay]:
        raise ck.HistoryError("unreachable", "connection refused")

    def warm_up(self) -> None:
        return None


def run(inv: Inventory, village: Village, probers: FakeProbers, **kw: Any) -> ck.Report:
    now = kw.pop("now", SATURDAY)
    limit = kw.pop("limit", 15.0)
    options = ck.Options(**{"profile": "meet-hd", **kw})
    return asyncio.run(ck.run_check(inv, village, options, now=now, deadline=time.monotonic() + limit, probers=probers))


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESANET_STATE_DIR", str(tmp_path / "state"))
    for name, value in LAB_SECRETS.items():
        monkeypatch.setenv(name, value)


# ---------------------------------------------------------------------------------------------- each factor
MEET = dict(
    rtt_p95_seconds=0.01,
    jitter_seconds=0.002,
    loss_ratio=0.0,
    burst_loss_ratio=0.0,
    down_bits_per_second=10e6,
    up_bits_per_second=10e6,
    interface_headroom_bits_per_second=1e9,
)
# meet-hd's limits since the calibration against real calls (docs/readiness.md): RTT at risk past 200 ms and not
# ready past 400 ms (was 100/150), loss 3/20 % (was 1/3), burst loss not ready past 50 % (was 30), bandwidth and
# headroom not ready only below half the 3.2 Mbit/s minimum (was the minimum); so the fail values moved past them.
CASES = {
    # factor: (warn value, fail value, words the English explanation must hold, advice that must be offered)
    "rtt": (0.25, 0.45, "people will", "A long round trip"),
    "jitter": (0.035, 0.045, "video will freeze and audio will break up", "Jitter comes from congestion"),
    "loss": (0.05, 0.25, "words will drop out", "Check the fibre"),
    "burst_loss": (0.2, 0.6, "within 200 ms", "Losses come in bursts"),
    "down": (3.5e6, 1.2e6, "incoming video", "Check who else is using the link"),
    "up": (3.5e6, 1.2e6, "the others", "Check who else is using the link"),
    "headroom": (3.5e6, 1.2e6, "other traffic is filling the link", "Other traffic fills the router port"),
}
FIELD = {
    "rtt": "rtt_p95_seconds",
    "jitter": "jitter_seconds",
    "loss": "loss_ratio",
    "burst_loss": "burst_loss_ratio",
    "down": "down_bits_per_second",
    "up": "up_bits_per_second",
    "headroom": "interface_headroom_bits_per_second",
}


def report_for(inv: Inventory, village: Village, m: rd.Measurements, **kw: Any) -> ck.Report:
    choice = ck.ProfileChoice(inv.profile("meet-hd"), "option")
    r = ck.Report(inv, village, choice, SATURDAY, measurements=m, **kw)
    r.readiness = rd.assess(m, choice.profile)
    return r


@pytest.mark.parametrize("factor", list(CASES))
@pytest.mark.parametrize("state", ["warn", "fail"])
def test_each_factor_is_named_explained_and_given_advice(
    inv: Inventory, village: Village, factor: str, state: str
) -> None:
    warn, fail, why_words, advice = CASES[factor]
    m = rd.Measurements(**{**MEET, FIELD[factor]: warn if state == "warn" else fail})
    report = report_for(inv, village, m)
    assert report.limiting == factor
    assert report.verdict == ("at_risk" if state == "warn" else "not_ready")
    assert ck.report_exit_code(report) == 1
    ex = ck.explain(report, "en")
    assert ex.headline.startswith("Verdict: " + ("AT RISK" if state == "warn" else "NOT READY"))
    assert why_words in ex.why, ex.why
    assert any(a.startswith(advice) for a in ex.advice), ex.advice
    assert ex.also == []
    ex_id = ck.explain(report, "id")
    assert ex_id.headline.startswith("Kesimpulan: " + ("BERISIKO" if state == "warn" else "TIDAK SIAP"))
    for text in [ex_id.why, *ex_id.advice, ex_id.headline, *(" ".join(r[:5]) for r in ex_id.rows)]:
        assert not english_in(text), (text, english_in(text))


def test_the_jitter_sentence_reads_as_promised(inv: Inventory, village: Village) -> None:
    report = report_for(inv, village, rd.Measurements(**{**MEET, "jitter_seconds": 0.045}))
    assert ck.explain(report, "en").why == (
        "jitter 45.0 ms is above 40 ms, well beyond the 30 ms this profile needs: video will freeze and audio will "
        "break up"
    )
    report = report_for(inv, village, rd.Measurements(**{**MEET, "jitter_seconds": 0.035}))
    assert ck.explain(report, "en").why == (
        "jitter 35.0 ms is above the 30 ms this profile needs: video will freeze and audio will break up"
    )
    assert ck.explain(report, "id").why == (
        "jitter 35,0 ms melebihi 30 ms yang dibutuhkan profil ini: video akan macet dan suara akan putus-putus"
    )


def test_ready_names_the_factor_nearest_its_limit(inv: Inventory, village: Village) -> None:
    # 180 ms is ready since the calibration moved meet-hd's RTT limit to 200 ms (docs/readiness.md; was 100 ms).
    report = report_for(inv, village, rd.Measurements(**{**MEET, "rtt_p95_seconds": 0.18}))
    assert (report.verdict, report.limiting, ck.report_exit_code(report)) == ("ready", "rtt", 0)
    ex = ck.explain(report, "en")
    assert ex.headline == "Verdict: READY for a meet-hd call at Kabat"
    assert "round-trip time, p95: 180 ms against 200 ms" in ex.why
    assert ex.advice[0].startswith("Nothing to fix")


def test_other_failing_factors_are_listed_too(inv: Inventory, village: Village) -> None:
    # 5 % loss: at risk since the calibration (ready up to 3 %, docs/readiness.md); 2 % was at risk before it.
    report = report_for(inv, village, rd.Measurements(**{**MEET, "jitter_seconds": 0.06, "loss_ratio": 0.05}))
    ex = ck.explain(report, "en")
    assert report.limiting == "jitter" and len(ex.also) == 1 and "packet loss 5.0 %" in ex.also[0]
    # advice for the limiting factor first, then the others'
    assert ex.advice[0].startswith("Jitter comes from congestion")
    assert any(a.startswith("Check the fibre") for a in ex.advice)


def test_contract_below_the_profile_is_named(inv: Inventory) -> None:
    village = inv.village("kabat").model_copy(
        update={"contracted": inv.village("kabat").contracted.model_copy(update={"down_mbit": 2.0})}
    )
    report = report_for(inv, village, rd.Measurements(**{**MEET, "down_bits_per_second": 1.9e6}))
    advice = ck.explain(report, "en").advice
    assert "The contract (2 Mbit/s) is below what this profile needs (3.2 Mbit/s)" in " ".join(advice)
    ok = report_for(inv, inv.village("kabat"), rd.Measurements(**{**MEET, "down_bits_per_second": 1.9e6}))
    assert any(a.startswith("The contract is 20 Mbit/s") for a in ck.explain(ok, "en").advice)


def test_weak_optics_and_port_errors_come_with_the_loss_advice(inv: Inventory, village: Village) -> None:
    report = report_for(inv, village, rd.Measurements(**{**MEET, "loss_ratio": 0.05}))
    report.snmp = snmp(rx_dbm=-27.3)
    report.port = busiest_port(snmp(0, 0), snmp(10_000_000, 4), 2.0)
    advice = ck.explain(report, "en").advice
    assert advice[:3] == [
        "The router receives only -27.3 dBm of light on sfp1 (weak below -25.0 dBm): a dirty connector or a "
        "damaged fibre is likely.",
        "The router's port sfp1 counted 4 errors during the check: check the cable and its connectors.",
        advice[2],
    ] and advice[2].startswith("Check the fibre")
    assert "(weak)" in " ".join(ck.explain(report, "en").router)


@pytest.mark.parametrize(
    ("degraded", "where", "advice"),
    [
        (3, "village", "The path degrades on the village's own link (hop 3"),
        (
            2,
            "kecamatan",
            "The path degrades at hop 2 (10.254.10.2), on the kecamatan uplink, before the village: "
            "this is not a village problem. Call the NOC.",
        ),
        (1, "core", "The path degrades at hop 1 (10.255.0.1), in the district network"),
    ],
)
def test_where_the_path_degrades_decides_who_to_call(
    inv: Inventory, village: Village, degraded: int, where: str, advice: str
) -> None:
    tr = trace_to(village.address, degraded)
    assert ck.locate_step(tr, village.address) == where
    report = report_for(inv, village, rd.Measurements(**{**MEET, "jitter_seconds": 0.05}), trace=tr)
    ex = ck.explain(report, "en")
    assert ex.advice[0].startswith(advice), ex.advice
    assert ex.path is not None and f"hop {degraded}" in ex.path
    assert ck.locate_step(trace_to(village.address, None), village.address) is None


def test_exit_codes() -> None:
    problem = ck.Problem("unreachable", "err_unreachable", {"address": "x", "sent": 1})
    assert ck.exit_code("ready", None) == 0
    assert ck.exit_code("at_risk", None) == 1
    assert ck.exit_code("not_ready", None) == 1
    assert ck.exit_code("unknown", None) == 2
    assert ck.exit_code("not_ready", problem) == 2
    assert ck.exit_code("ready", problem) == 2


# ---------------------------------------------------------------------------------------------- names
def test_names_are_forgiving(inv: Inventory) -> None:
    path = ROOT / "inventory.yaml"
    assert ck.load_village("pesangaran", path)[1].slug == "pesanggaran"
    assert ck.load_village("Genteng Kulon", path)[1].slug == "genteng-kulon"
    assert ck.load_village("10.115.1.1", path)[1].slug == "pesanggaran"


@pytest.mark.parametrize(
    ("text", "code", "candidates"),
    [
        ("kalibaru", "ambiguous_village", {"kalibaru-wetan", "kalibaru-manis"}),
        ("genteng", "ambiguous_village", {"genteng-kulon", "genteng-wetan"}),
        ("zzzqqq", "unknown_village", set()),
        ("10.9.9.9", "unknown_village", set()),
    ],
)
def test_unknown_and_ambiguous_names(text: str, code: str, candidates: set[str]) -> None:
    with pytest.raises(ck.CheckError) as info:
        ck.load_village(text, ROOT / "inventory.yaml")
    assert info.value.problem.code == code
    assert set(info.value.problem.candidates) == candidates


def test_a_bad_name_exits_2_with_the_closest_matches_in_the_readers_language(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.run("kalibaru", lang="id", inventory=ROOT / "inventory.yaml") == 2
    err = capsys.readouterr().err
    assert "“kalibaru” bisa berarti lebih dari satu desa" in err and "kalibaru-wetan" in err
    assert not english_in(err)
    assert cli.run("nowhere-at-all", lang="en", as_json=True, inventory=ROOT / "inventory.yaml") == 2
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 2 and out["verdict"] == "unknown" and out["error"]["code"] == "unknown_village"


def test_an_unreadable_inventory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "inv.yaml"
    bad.write_text("district: [\n")
    assert cli.run("kabat", lang="en", inventory=bad) == 2
    assert "cannot read the inventory" in capsys.readouterr().err


def test_the_profile_comes_from_the_option_the_next_session_or_the_village(inv: Inventory) -> None:
    v = inv.village("pesanggaran")
    assert ck.choose_profile(inv, v, SATURDAY, "teams-meeting").source == "option"
    nxt = ck.choose_profile(inv, v, SATURDAY)
    assert (nxt.profile.name, nxt.source, nxt.session and nxt.session.title) == (
        "zoom-gallery",
        "session",
        "Rapat koordinasi Bupati dan kepala desa",
    )
    assert ck.choose_profile(inv, v, IN_SESSION).source == "session_now"
    thursday = datetime(2026, 12, 2, 12, 0, tzinfo=WIB)  # after Tuesday's: next is Thursday's Musrenbang
    assert ck.choose_profile(inv, v, thursday).profile.name == "meet-hd"
    bare = inv.model_copy(update={"sessions": []})
    assert ck.choose_profile(bare, v, SATURDAY).source == "default"
    with pytest.raises(ck.CheckError) as info:
        ck.choose_profile(inv, v, SATURDAY, "no-such-profile")
    assert info.value.problem.code == "unknown_profile" and "meet-hd" in info.value.problem.values["known"]


# ---------------------------------------------------------------------------------------------- figures
def test_loss_is_pooled_and_jitter_is_the_worse_one_way_direction() -> None:
    i = icmp([0.01] * 99 + [None])
    s = stamp(sent=100, received=100)
    s = StampResult(
        **{
            **s.__dict__,
            "forward": StampDirection(0.0, 0.004, None, None),
            "backward": StampDirection(0.0, 0.009, None, None),
        }
    )
    m, src = ck.measurements_from(i, s)
    assert m.loss_ratio == pytest.approx(1 / 200) and src["loss"] == "icmp+stamp"
    assert m.jitter_seconds == 0.009 and src["jitter"] == "stamp"
    assert m.rtt_p95_seconds == pytest.approx(0.01) and src["rtt"] == "icmp"
    m, src = ck.measurements_from(icmp([None] * 10), stamp(received=100, rtt=0.02))
    assert src["rtt"] == "stamp" and m.rtt_p95_seconds == pytest.approx(0.02)
    assert ck.reachable(icmp([None] * 10), stamp(received=0)) is False
    assert ck.reachable(None, None) is None


def test_spare_capacity_and_new_errors_from_two_polls() -> None:
    port = busiest_port(snmp(octets=0, errors=1), snmp(octets=25_000_000, errors=5), 2.0)
    assert port is not None and port.name == "sfp1"
    assert port.rate_bits_per_second == pytest.approx(100e6)
    assert port.headroom_bits_per_second == pytest.approx(900e6)
    assert port.new_errors == 4
    one = busiest_port(snmp(), None, 0.0)
    assert one is not None and one.headroom_bits_per_second is None and one.new_errors is None


# ---------------------------------------------------------------------------------------------- the whole run
def test_a_clean_village_is_ready_and_everything_ran_in_order(inv: Inventory, village: Village) -> None:
    p = FakeProbers()
    report = run(inv, village, p)
    assert (report.verdict, ck.report_exit_code(report)) == ("ready", 0)
    assert p.calls.index("throughput-down") > max(p.calls.index("icmp"), p.calls.index("stamp"))
    assert p.calls[-2:] == ["throughput-down", "throughput-up"] and "trace" not in p.calls
    assert p.stamp_settings.packet_bytes == 1200 and p.stamp_settings.dscp == 34
    m = report.measurements
    assert m.down_bits_per_second == pytest.approx(3.2e6 * 1.25 * 1.1)
    assert m.interface_headroom_bits_per_second is not None
    assert report.port is not None and report.port.new_errors == 3
    doc = ck.to_json(report, "en")
    for key in ("verdict", "limiting", "exit_code", "figures", "checks", "icmp", "stamp", "throughput", "snmp"):
        assert key in doc
    assert doc["throughput"]["down"]["offered_bits_per_second"] == pytest.approx(4.4e6)
    json.dumps(doc)  # plain JSON


def test_a_rate_cap_is_found_by_the_rehearsal(inv: Inventory, village: Village) -> None:
    # Not ready only below half meet-hd's 3.2 Mbit/s since the calibration (docs/readiness.md): a 2 Mbit/s cap,
    # not ready before it, is at risk now; a 1.2 Mbit/s one is not ready, and the words name what the profile needs.
    report = run(inv, village, FakeProbers(down=1.2e6, up=10e6))
    assert (report.verdict, report.limiting, ck.report_exit_code(report)) == ("not_ready", "down", 1)
    assert "download 1.2 Mbit/s is below 1.6 Mbit/s, well short of the 3.2 Mbit/s this profile needs" in (
        ck.explain(report, "en").why
    )
    report = run(inv, village, FakeProbers(down=2e6, up=10e6))
    assert (report.verdict, report.limiting, ck.report_exit_code(report)) == ("at_risk", "down", 1)
    assert ck.explain(report, "en").why.startswith(
        "download 2.0 Mbit/s is below the 4 Mbit/s that leaves a safe margin over the 3.2 Mbit/s this profile needs"
    )


def test_jitter_triggers_a_trace_and_an_upstream_step_is_the_nocs(inv: Inventory, village: Village) -> None:
    p = FakeProbers(stamp_result=stamp(jitter=0.05), trace=trace_to(village.address, 2))
    report = run(inv, village, p)
    assert "trace" in p.calls and p.calls.index("trace") < p.calls.index("throughput-down")
    assert report.limiting == "jitter" and ck.report_exit_code(report) == 1
    assert "not a village problem" in ck.explain(report, "en").advice[0]


def test_a_silent_village_exits_2_with_where_the_path_ends(inv: Inventory, village: Village) -> None:
    p = FakeProbers(rtts=[None] * 100, stamp_result=stamp(received=0), trace=trace_to(village.address, None, False))
    report = run(inv, village, p)
    assert report.problem is not None and report.problem.code == "unreachable"
    assert ck.report_exit_code(report) == 2
    assert "throughput-down" not in p.calls and "trace" in p.calls
    ex = ck.explain(report, "en")
    assert ex.headline.startswith("Verdict: CANNOT MEASURE Kabat: the router 10.110.1.1 did not answer")
    assert (
        ex.advice[0] == "The path ends after hop 2 (10.254.10.2): the link beyond it, or the village router, is down."
    )
    assert ck.to_json(report, "en")["error"]["code"] == "unreachable"
    for text in [ck.explain(report, "id").headline, *ck.explain(report, "id").advice]:
        assert not english_in(text)


def test_no_permission_for_pings_and_no_reflector_exits_2(inv: Inventory) -> None:
    v = inv.village("kabat").model_copy(update={"stamp": None})
    report = run(inv, v, FakeProbers(icmp_error=IcmpPermissionError("no raw socket")))
    assert report.problem is not None and report.problem.code == "no_permission"
    assert ck.explain(report, "en").advice == [
        "Run it as root (`sudo desanet check …`) or give desanet the `CAP_NET_RAW` capability."
    ]


def test_a_missing_snmp_secret_is_a_note(inv: Inventory, village: Village, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DESANET_SNMP_COMMUNITY")
    report = run(inv, village, FakeProbers())
    assert "The router's status was not read: the SNMP secret DESANET_SNMP_COMMUNITY is not available." in " ".join(
        ck.explain(report, "en").notes
    )
    assert report.snmp is None and ck.report_exit_code(report) == 0


def test_missing_services_and_refusals_are_notes_not_errors(inv: Inventory) -> None:
    v = inv.village("kabat").model_copy(update={"stamp": None, "iperf3": None})
    report = run(inv, v, FakeProbers(), prometheus="http://127.0.0.1:9")
    notes = ck.explain(report, "en").notes
    assert any(n.startswith("This village has no STAMP reflector") for n in notes)
    assert any(n.startswith("This village has no iperf3 server") for n in notes)
    assert any(n.startswith("History not shown: Prometheus at http://127.0.0.1:9 could not be reached") for n in notes)
    assert report.measurements.jitter_seconds is not None  # from the pings instead
    assert ck.report_exit_code(report) == 0
    id_notes = ck.explain(report, "id").notes
    assert id_notes[-1].startswith("Rinciannya dalam bahasa Inggris")  # the English detail is pointed to, not shown
    for n in id_notes:
        assert not english_in(n), n


def test_the_session_rule_holds_unless_forced(inv: Inventory, village: Village) -> None:
    p = FakeProbers()
    report = run(inv, village, p, now=IN_SESSION)
    assert "throughput-down" not in p.calls
    note = next(n for n in ck.explain(report, "en").notes if "session" in n)
    assert note.startswith("Download and upload were not measured: the village is in its session “Rapat koordinasi")
    id_note = next(n for n in ck.explain(report, "id").notes if "sesi" in n)
    assert not english_in(id_note)
    forced = FakeProbers()
    run(inv, village, forced, now=IN_SESSION, force=True)
    assert "throughput-down" in forced.calls


def test_a_busy_iperf3_server_is_retried_briefly(inv: Inventory, village: Village) -> None:
    p = FakeProbers(busy=1)
    report = run(inv, village, p)
    assert p.calls.count("throughput-down") == 2 and report.measurements.down_bits_per_second is not None


def test_stages_that_would_overrun_the_time_limit_are_skipped(inv: Inventory, village: Village) -> None:
    p = FakeProbers(delay=0.3)
    report = run(inv, village, p, limit=2.0)
    assert "throughput-down" not in p.calls
    assert any("skipped to finish within 15.0 s" in n for n in ck.explain(report, "en").notes)
    assert report.verdict == "ready"  # judged on what was measured


def test_the_tcp_option_measures_tcp(inv: Inventory, village: Village) -> None:
    class Tcp(FakeProbers):
        async def throughput(self, address: str, settings: Any, progress: Any = None) -> ThroughputResult:
            assert settings.protocol == "tcp" and settings.dscp == 0
            return await super().throughput(address, settings, progress)

    report = run(inv, village, Tcp(), tcp=True)
    assert report.throughput is not None and report.throughput.method == "tcp"


# ---------------------------------------------------------------------------------------------- history
class _Prom(http.server.BaseHTTPRequestHandler):
    ready = 1.0

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlparse

        q = parse_qs(urlparse(self.path).query)
        start, end, step = float(q["start"][0]), float(q["end"][0]), float(q["step"][0])
        value = "1" if 'verdict="ready"' in q["query"][0] else "0.02"
        ts = [start + i * step for i in range(int((end - start) / step) + 1)]
        values = [[x, value] for x in ts[1:]]  # the oldest day has no data
        body = json.dumps(
            {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Prom)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_history_reads_this_hour_on_earlier_days(prometheus: str) -> None:
    days = ck.fetch_history(prometheus, "kabat", "meet-hd", SATURDAY)
    assert [d.days_ago for d in days] == [7, 6, 5, 4, 3, 2, 1]
    assert days[0].ready_share is None and all(d.ready_share == 1.0 for d in days[1:])
    assert days[-1].loss_ratio == pytest.approx(0.02) and days[-1].day == SATURDAY - timedelta(days=1)
    q = ck.history_queries("kabat", "meet-hd")
    assert q["ready"] == (
        'max(avg_over_time(desanet_video_verdict{village="kabat",profile="meet-hd",verdict="ready"}[1h]))'
    )


def test_history_lines_in_both_languages(inv: Inventory, village: Village, prometheus: str) -> None:
    report = report_for(inv, village, rd.Measurements(**MEET))
    report.history = ck.fetch_history(prometheus, "kabat", "meet-hd", SATURDAY)
    en = ck.explain(report, "en").history
    assert en[0] == "At this hour on earlier days (from Prometheus):"
    assert en[1] == "Sat 2026-11-21: no data" and en[-2] == "Fri 2026-11-27: ready 100 % of the hour, packet loss 2.0 %"
    assert en[-1] == "Ready at this hour on 6 of the 6 days with data."
    for line in ck.explain(report, "id").history:
        assert not english_in(line), line


def test_history_from_a_closed_port_is_a_note(inv: Inventory, village: Village) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    with pytest.raises(ck.HistoryError) as info:
        ck.fetch_history(f"http://127.0.0.1:{port}", "kabat", "meet-hd", SATURDAY, timeout=1.0)
    assert info.value.kind == "unreachable"
    with pytest.raises(ck.HistoryError):
        ck.fetch_history("ftp://example", "kabat", "meet-hd", SATURDAY)


# ---------------------------------------------------------------------------------------------- the printout
def test_the_printed_report_in_indonesian_has_no_english(inv: Inventory, village: Village) -> None:
    from rich.console import Console

    p = FakeProbers(stamp_result=stamp(jitter=0.05), trace=trace_to(village.address, 3), down=2e6)
    report = run(inv, village, p)
    console = Console(record=True, width=100, force_terminal=False)
    cli.print_report(report, "id", console)
    text = console.export_text()
    assert "Kesimpulan: TIDAK SIAP untuk panggilan meet-hd di Kabat" in text
    data = {*words(village.name), *words(village.kecamatan), *words(inv.district)}
    assert not (english_in(text) - data), english_in(text) - data
    console = Console(record=True, width=100, force_terminal=False)
    cli.print_report(report, "en", console)
    assert "Verdict: NOT READY for a meet-hd call at Kabat" in console.export_text()


def test_the_command_registers_on_a_typer_app(capsys: pytest.CaptureFixture[str]) -> None:
    """What cli/app.py does: `register(app)`; then `desanet check NAME …` parses as documented."""
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    cli.register(app)
    sub = typer.Typer()
    sub.command("other")(lambda: None)  # a second command, so that `check` is a subcommand as in the real CLI
    app.add_typer(sub, name="other")
    runner = CliRunner()
    result = runner.invoke(app, ["check", "kalibaru", "--lang", "en", "--inventory", str(ROOT / "inventory.yaml")])
    assert result.exit_code == 2
    assert "could be more than one village" in result.output and "kalibaru-wetan" in result.output
    result = runner.invoke(app, ["check", "kabat", "--lang", "xx"])
    assert result.exit_code == 2  # a usage error is "could not measure" too
    result = runner.invoke(app, ["check", "--help"])
    assert result.exit_code == 0 and "--no-throughput" in result.output and "--prometheus" in result.output


def test_an_unknown_profile_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run("kabat", profile="no-such", lang="id", as_json=True, inventory=ROOT / "inventory.yaml")
    assert code == 2
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["code"] == "unknown_profile"
    assert out["error"]["message"].startswith("tidak ada profil bernama “no-such”")
