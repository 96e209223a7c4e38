"""The technician's check: one village, one command, a clear verdict in seconds.

A technician at the kantor desa asks one question before a session: will the video call hold up here, and if
not, why? `run_check` measures the village with the same probes the exporter uses and judges the figures with
the same `exporter.readiness.assess`, then `explain` turns the verdict into plain words and things to try,
in English or Bahasa Indonesia (exporter/messages.py). Nothing here needs the exporter or Prometheus running.

The run, within TIME_LIMIT_SECONDS (15 s) from process start:

1. At once, concurrently (they are light and do not disturb each other): an ICMP train (100 echoes 20 ms
   apart, one IcmpEngine), a STAMP stream shaped like the profile's video (its packet size and DSCP, 50
   packets/s for 2 s) when the village has a reflector, two SNMP polls of the router (at the start and when
   the latency probes end, so counters give a rate: spare capacity and new interface errors), and with
   --prometheus the history query.
2. When latency, jitter or loss are not a pass, or nothing answered: a path trace, to say whether the step is
   on the village's own link or upstream (then it is not a village problem: call the NOC).
3. Last, so its load cannot colour the latency figures: a throughput test each way against the village's
   iperf3 server, under exporter.budget's rules (session, one test per kecamatan uplink, daily budget; --force
   overrides the session rule only). By default a UDP rehearsal: the profile's packet size and DSCP at 1.1 ×
   the rate readiness needs for a pass (1.25 × the minimum), so a clean link passes and a link that cannot
   carry it shows a lower figure and loss. Each stage that would overrun the time limit is skipped with a note.

Which figure feeds which factor (the same choices as the exporter's scheduler where both measure):
- rtt: the ICMP train's p95 (STAMP's if the router ignores pings);
- jitter: the worse one-way STAMP jitter (what a video receiver lives with), else the ICMP RTT jitter;
- loss: ICMP and STAMP pooled (200 packets resolve 0.5 %; 100 echoes alone would turn one lost echo into 1 %,
  the profile's whole budget); burst loss: the worse of the two;
- down/up: the throughput test; headroom: port speed minus the busier direction's rate between the polls.

Exit codes: 0 ready, 1 at risk or not ready, 2 could not measure (unknown village, unreachable router, no
permission), so a script can tell "the link is bad" from "the check could not tell".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from exporter import readiness as rd
from exporter.inventory import Inventory, InventoryError, Profile, Session, Village, load_inventory
from exporter.messages import (
    Lang,
    fmt_day,
    fmt_dbm,
    fmt_duration,
    fmt_mos,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    fmt_seconds,
    fmt_when,
    join_words,
    t,
)
from exporter.ports import PortActivity, busiest_port
from probes.icmp import IcmpPermissionError, IcmpResult, IcmpSettings
from probes.stamp import StampResult, StampSettings
from probes.throughput import DirectionResult, ServerBusy, ThroughputError, ThroughputResult, ThroughputSettings

if TYPE_CHECKING:
    from probes.snmp import SnmpResult, SnmpSettings
    from probes.trace import TraceResult, TraceSettings

TIME_LIMIT_SECONDS: Final = 15.0
RESERVE_SECONDS: Final = 1.5  # printing the result and leaving the interpreter (≈1 s measured on a busy 2-core VM)

ICMP_COUNT: Final = 100
ICMP_INTERVAL: Final = 0.02
ICMP_TIMEOUT: Final = 1.0
STAMP_RATE_PPS: Final = 50.0
STAMP_SECONDS: Final = 2.0
STAMP_TIMEOUT: Final = 1.0
SNMP_TIMEOUT: Final = 1.0
SNMP_RETRIES: Final = 1
SNMP_STAGE_SECONDS: Final = ICMP_COUNT * ICMP_INTERVAL + ICMP_TIMEOUT + 0.5  # the first poll, at most
UDP_SECONDS: Final = 1.5
UDP_MIN_SECONDS: Final = 1.0
TCP_SECONDS: Final = 3.0
TEST_SETUP_SECONDS: Final = 0.7  # connect, parameters and results around each direction's data phase
BUSY_RETRIES: Final = 4
BUSY_RETRY_WAIT: Final = 0.25
UDP_OVERSHOOT: Final = 1.1  # offer 10 % above readiness's pass line (1.25 × minimum) so a clean link passes
TRACE_DEADLINE: Final = 2.0  # the district's paths are a few hops; a cut path needs no more to show where it ends
TRACE_TIMEOUT: Final = 0.5
TRACE_MIN_SECONDS: Final = 1.0
HISTORY_DAYS: Final = 7
HISTORY_TIMEOUT: Final = 3.0
HISTORY_READY_SHARE: Final = 0.95  # a day counts as ready at this hour when video_ready held 95 % of it
# GPON class B+ ONUs are specified down to -27 dBm received (ITU-T G.984.2); below -25 dBm less than 2 dB of
# margin is left, which a dirty connector (0.5-1 dB each) or a tight bend eats. A chosen figure, not a source's.
OPTICAL_RX_WEAK_DBM: Final = -25.0
RECENT_RESTART_SECONDS: Final = 3600.0

Stage = Literal["icmp", "stamp", "snmp", "history", "trace", "throughput"]
StageEvent = Literal["start", "done", "skipped", "failed"]
Location = Literal["village", "kecamatan", "core", "upstream"]
ProfileSource = Literal["option", "session", "session_now", "village", "default"]


# ---------------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Q:
    """A value to be written in the reader's language when a message is rendered: a number with its unit, a
    moment, a span, or another message by key."""

    kind: Literal[
        "ms", "ms_compact", "pct", "pct_compact", "rate", "rate_compact", "seconds", "duration", "when", "dbm", "key"
    ]
    value: Any

    def render(self, lang: Lang) -> str:
        k, v = self.kind, self.value
        if k in ("ms", "ms_compact"):
            return fmt_ms(v, lang, compact=k == "ms_compact")
        if k in ("pct", "pct_compact"):
            return fmt_pct(v, lang, compact=k == "pct_compact")
        if k in ("rate", "rate_compact"):
            return fmt_rate(v, lang, compact=k == "rate_compact")
        if k == "seconds":
            return fmt_seconds(v, lang)
        if k == "duration":
            return fmt_duration(v, lang)
        if k == "when":
            return fmt_when(v, lang)
        if k == "key":
            return t(v, lang)
        return fmt_dbm(v, lang)


def render(key: str, values: Mapping[str, Any], lang: Lang) -> str:
    return t(key, lang, **{k: v.render(lang) if isinstance(v, Q) else v for k, v in values.items()})


@dataclass(frozen=True)
class Note:
    """Something the reader should know that is not the verdict. `detail` is English (an exception's text)."""

    key: str
    values: Mapping[str, Any] = field(default_factory=dict)
    detail: str | None = None


@dataclass(frozen=True)
class Problem:
    """Why the check could not measure (exit 2). `code` is for scripts; key/values for people."""

    code: Literal[
        "unknown_village",
        "ambiguous_village",
        "inventory",
        "unknown_profile",
        "unreachable",
        "no_permission",
        "nothing_measured",
    ]
    key: str
    values: Mapping[str, Any] = field(default_factory=dict)
    detail: str | None = None
    candidates: tuple[str, ...] = ()


class CheckError(Exception):
    """The check cannot start: carries the Problem to print."""

    def __init__(self, problem: Problem):
        super().__init__(problem.detail or problem.code)
        self.problem = problem


# ---------------------------------------------------------------------------------------------- name → village
def load_village(text: str, inventory_path: Path | None = None) -> tuple[Inventory, Village]:
    """The inventory and the village `text` names (slug, name, small misspelling, or its router's address)."""
    from exporter.inventory import default_inventory_path
    from exporter.targets import TargetError, find_village

    path = inventory_path or default_inventory_path()
    try:
        inv = load_inventory(path)
    except InventoryError as exc:
        raise CheckError(Problem("inventory", "err_inventory", {"path": str(path)}, detail=str(exc))) from None
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(text.strip())
        for v in inv.villages:
            if v.router == address:
                return inv, v
        raise CheckError(Problem("unknown_village", "err_unknown_village", {"text": text}))
    try:
        return inv, find_village(inv, text)
    except TargetError as exc:
        # find_village says "ambiguous" in its message when more than one village fits equally well.
        ambiguous = "ambiguous" in str(exc)
        raise CheckError(
            Problem(
                "ambiguous_village" if ambiguous else "unknown_village",
                "err_ambiguous_village" if ambiguous else "err_unknown_village",
                {"text": text},
                detail=str(exc),
                candidates=tuple(exc.candidates),
            )
        ) from None


@dataclass(frozen=True)
class ProfileChoice:
    profile: Profile
    source: ProfileSource
    session: Session | None = None
    start: datetime | None = None


def choose_profile(inv: Inventory, village: Village, now: datetime, name: str | None = None) -> ProfileChoice:
    """--profile, else the profile of the village's next (or running) session, else the village's own/default."""
    if name is not None:
        try:
            return ProfileChoice(inv.profile(name), "option")
        except KeyError:
            known = ", ".join(p.name for p in inv.profiles)
            raise CheckError(
                Problem("unknown_profile", "err_unknown_profile", {"name": name, "known": known})
            ) from None
    upcoming = inv.next_session(village, now)
    if upcoming is not None and upcoming[0].profile is not None:
        session, start = upcoming
        with contextlib.suppress(KeyError):
            return ProfileChoice(
                inv.profile(session.profile or ""), "session_now" if start <= now else "session", session, start
            )
    return ProfileChoice(inv.profile_for(village), "village" if village.profile else "default")


# ---------------------------------------------------------------------------------------------- SNMP snapshot
# ---------------------------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class ThroughputOutcome:
    method: Literal["udp", "tcp"]
    down: DirectionResult | None
    up: DirectionResult | None
    offered_down_bits_per_second: float | None = None
    offered_up_bits_per_second: float | None = None


def measurements_from(
    icmp: IcmpResult | None,
    stamp: StampResult | None,
    throughput: ThroughputOutcome | None = None,
    port: PortActivity | None = None,
) -> tuple[rd.Measurements, dict[str, str]]:
    """The readiness inputs and, per factor, which probe gave it (see the module docstring for the choices)."""
    src: dict[str, str] = {}
    icmp_ok = icmp is not None and icmp.sent > 0
    stamp_ok = stamp is not None and stamp.sent > 0
    rtt = jitter = loss = burst = None
    if icmp_ok and icmp is not None and icmp.rtt is not None:
        rtt, src["rtt"] = icmp.rtt.p95, "icmp"
    elif stamp_ok and stamp is not None and stamp.rtt is not None:
        rtt, src["rtt"] = stamp.rtt.p95, "stamp"
    if stamp_ok and stamp is not None:
        one_way = [j for j in (stamp.forward.jitter_seconds, stamp.backward.jitter_seconds) if j is not None]
        if one_way:
            jitter, src["jitter"] = max(one_way), "stamp"
    if jitter is None and icmp_ok and icmp is not None and icmp.jitter_seconds is not None:
        jitter, src["jitter"] = icmp.jitter_seconds, "icmp"
    if jitter is None and stamp_ok and stamp is not None and stamp.jitter_seconds is not None:
        jitter, src["jitter"] = stamp.jitter_seconds, "stamp"
    pools = [(r.sent, r.received, name) for r, name in ((icmp, "icmp"), (stamp, "stamp")) if r is not None and r.sent]
    if pools:
        sent = sum(p[0] for p in pools)
        received = sum(min(p[1], p[0]) for p in pools)
        loss, src["loss"] = (sent - received) / sent, "+".join(p[2] for p in pools)
    bursts = [(r.burst_loss_ratio, n) for r, n in ((icmp, "icmp"), (stamp, "stamp")) if r is not None]
    bursts_known = [(b, n) for b, n in bursts if b is not None]
    if bursts_known:
        burst, src["burst_loss"] = max(bursts_known)
    down = up = None
    if throughput is not None:
        if throughput.down is not None:
            down, src["down"] = throughput.down.bits_per_second, throughput.method
        if throughput.up is not None:
            up, src["up"] = throughput.up.bits_per_second, throughput.method
    headroom = None
    if port is not None and port.headroom_bits_per_second is not None:
        headroom, src["headroom"] = port.headroom_bits_per_second, "snmp"
    m = rd.Measurements(
        rtt_p95_seconds=rtt,
        jitter_seconds=jitter,
        loss_ratio=loss,
        burst_loss_ratio=burst,
        down_bits_per_second=down,
        up_bits_per_second=up,
        interface_headroom_bits_per_second=headroom,
    )
    return m, src


def reachable(icmp: IcmpResult | None, stamp: StampResult | None) -> bool | None:
    """True if anything answered, False if something was sent and nothing answered, None if nothing ran."""
    ran = [r for r in (icmp, stamp) if r is not None and r.sent > 0]
    if not ran:
        return None
    return any(r.received > 0 for r in ran)


LATENCY_FACTORS: Final = ("rtt", "jitter", "loss", "burst_loss")


def path_degraded(readiness: rd.Readiness) -> bool:
    """Whether latency, jitter or loss are anything but a pass: worth a path trace."""
    return any(c.state in ("warn", "fail") for c in readiness.checks if c.factor in LATENCY_FACTORS)


# ---------------------------------------------------------------------------------------------- the path
def locate_step(trace: TraceResult, router: str) -> Location | None:
    """Where the trace's degraded hop lies, in the district's terms; None for a clean path.

    Hop k degraded means the step lies on the link into k: into the village router is the village's own link;
    into the hop just before it (the kecamatan router) is the kecamatan uplink; earlier is the district network.
    Without the village router in the trace, only "before the village router" can be said.
    """
    d = trace.degradation
    if d is None:
        return None
    if d.address == router:
        return "village"
    village_ttl = next((h.ttl for h in trace.hops if h.reached or h.address == router), None)
    if village_ttl is None:
        return "upstream"
    return "kecamatan" if d.ttl == village_ttl - 1 else "core" if d.ttl < village_ttl - 1 else "village"


# ---------------------------------------------------------------------------------------------- history
@dataclass(frozen=True)
class HistoryDay:
    day: datetime  # the same time of day, `days_ago` days ago
    days_ago: int
    ready_share: float | None  # mean of desanet_video_ready over the hour around that time
    loss_ratio: float | None  # mean ICMP round-trip loss over that hour


class HistoryError(Exception):
    def __init__(self, kind: Literal["unreachable", "bad_answer"], detail: str):
        super().__init__(detail)
        self.kind = kind


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def history_queries(village: str, profile: str) -> dict[str, str]:
    """PromQL for the hour ending at each evaluation time (evaluated half an hour after "now" on earlier days)."""
    v, p = _promql_string(village), _promql_string(profile)
    return {
        "ready": f"max(avg_over_time(desanet_video_ready{{village={v},profile={p}}}[1h]))",
        "loss": (f'max(avg_over_time(desanet_loss_ratio{{village={v},method="icmp",direction="round_trip"}}[1h]))'),
    }


def _range_values(answer: Any) -> dict[float, float]:
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise HistoryError("bad_answer", f"status {answer.get('status') if isinstance(answer, dict) else '?'}")
    result = (answer.get("data") or {}).get("result")
    if not isinstance(result, list):
        raise HistoryError("bad_answer", "no result list")
    out: dict[float, float] = {}
    for series in result[:1]:
        for pair in series.get("values") or []:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                value = float(pair[1])
                if math.isfinite(value):
                    out[float(pair[0])] = value
    return out


def fetch_history(
    url: str, village: str, profile: str, now: datetime, *, days: int = HISTORY_DAYS, timeout: float = HISTORY_TIMEOUT
) -> list[HistoryDay]:
    """How the village did around this time of day on each of the last `days` days, from Prometheus's HTTP API.

    One query_range per metric, step one day, evaluated at now − N days + 30 min over a 1 h window: the hour
    centred on this time of day. `timeout` bounds the whole fetch. Raises HistoryError (unreachable or
    bad_answer)."""
    until = time.monotonic() + timeout
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise HistoryError("unreachable", f"{url!r} is not an http(s) URL")
    end = now.timestamp() - 86400 + 1800
    start = end - (days - 1) * 86400
    series: dict[str, dict[float, float]] = {}
    for name, query in history_queries(village, profile).items():
        qs = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "86400"})
        try:
            left = max(0.05, until - time.monotonic())
            with urllib.request.urlopen(f"{base}/api/v1/query_range?{qs}", timeout=left) as resp:
                answer = json.loads(resp.read(4 << 20))
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read(1 << 20))
            except ValueError:
                raise HistoryError("bad_answer", f"HTTP {exc.code}") from None
            if answer.get("status") != "success":
                raise HistoryError("bad_answer", f"HTTP {exc.code}: {answer.get('error', '')}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HistoryError("unreachable", str(reason)) from None
        except ValueError as exc:
            raise HistoryError("bad_answer", f"not JSON: {exc}") from None
        series[name] = _range_values(answer)
    out = []
    for n in range(days, 0, -1):
        ts = end - (n - 1) * 86400

        def near(values: dict[float, float], ts: float = ts) -> float | None:
            return next((v for k, v in values.items() if abs(k - ts) < 60), None)

        out.append(HistoryDay(now - timedelta(days=n), n, near(series["ready"]), near(series["loss"])))
    return out


# ---------------------------------------------------------------------------------------------- the probes
class Probers:
    """The real probes. Tests subclass this to run the whole check without a network."""

    def __init__(self) -> None:
        self._poller: Any = None

    async def icmp(self, address: str, settings: IcmpSettings) -> IcmpResult:
        from probes.icmp import probe

        return await probe(address, settings)

    async def stamp(self, address: str, settings: StampSettings) -> StampResult:
        from probes.stamp import probe

        return await probe(address, settings)

    async def snmp(self, address: str, settings: SnmpSettings) -> SnmpResult:
        from probes.snmp import SnmpPoller

        if self._poller is None:
            self._poller = SnmpPoller(max_per_agent=1)
            await self._poller.start()
        result: SnmpResult = await self._poller.poll(address, settings)
        return result

    async def throughput(self, address: str, settings: ThroughputSettings) -> ThroughputResult:
        from probes.throughput import probe

        return await probe(address, settings)

    async def trace(self, address: str, settings: TraceSettings) -> TraceResult:
        from probes.trace import probe

        return await probe(address, settings)

    def history(self, url: str, village: str, profile: str, now: datetime) -> list[HistoryDay]:
        return fetch_history(url, village, profile, now)

    def warm_up(self) -> None:
        """Import what a path trace needs (scapy: most of a second of CPU) in a thread while the latency probes
        run, so a degraded village's trace starts at once. Their timestamps come from the kernel, so sharing
        the CPU with an import does not change the figures."""
        import logging

        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        with contextlib.suppress(ImportError):
            import scapy.layers.inet  # noqa: F401

            import probes.trace  # noqa: F401

    async def aclose(self) -> None:
        if self._poller is not None:
            await self._poller.close()
            self._poller = None


# ---------------------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Options:
    profile: str | None = None
    throughput: bool = True
    tcp: bool = False  # a TCP test instead of the UDP rehearsal
    force: bool = False  # throughput even during the village's session
    prometheus: str | None = None


ProgressFn = Callable[[Stage, StageEvent, str, Mapping[str, Any], float], None]


def _no_progress(stage: Stage, event: StageEvent, key: str, values: Mapping[str, Any], seconds: float) -> None:
    return None


@dataclass
class Report:
    inventory: Inventory
    village: Village
    choice: ProfileChoice
    started: datetime
    icmp: IcmpResult | None = None
    stamp: StampResult | None = None
    snmp: SnmpResult | None = None
    port: PortActivity | None = None
    throughput: ThroughputOutcome | None = None
    trace: TraceResult | None = None
    history: list[HistoryDay] | None = None
    measurements: rd.Measurements = field(default_factory=rd.Measurements)
    sources: dict[str, str] = field(default_factory=dict)
    readiness: rd.Readiness | None = None
    problem: Problem | None = None
    notes: list[Note] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    @property
    def profile(self) -> Profile:
        return self.choice.profile

    @property
    def verdict(self) -> rd.Verdict:
        return self.readiness.verdict if self.readiness is not None else "unknown"

    @property
    def limiting(self) -> rd.Factor | None:
        return self.readiness.limiting if self.readiness is not None else None


def exit_code(verdict: rd.Verdict, problem: Problem | None) -> int:
    """0 ready; 1 at risk or not ready; 2 could not measure (a problem, or nothing measured)."""
    if problem is not None:
        return 2
    return {"ready": 0, "at_risk": 1, "not_ready": 1}.get(verdict, 2)


def report_exit_code(report: Report) -> int:
    return exit_code(report.verdict, report.problem)


# ---------------------------------------------------------------------------------------------- orchestration
class _Clock:
    def __init__(self, deadline: float, progress: ProgressFn, timings: dict[str, float]):
        self.deadline = deadline
        self.progress = progress
        self.timings = timings

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.asynccontextmanager
    async def stage(self, stage: Stage, key: str, values: Mapping[str, Any]) -> Any:
        t0 = time.monotonic()
        self.progress(stage, "start", key, values, 0.0)
        outcome: dict[str, StageEvent] = {"event": "done"}
        try:
            yield outcome
        except BaseException:
            outcome["event"] = "failed"
            raise
        finally:
            took = time.monotonic() - t0
            self.timings[stage] = round(took, 3)
            self.progress(stage, outcome["event"], key, values, took)


def _snmp_settings(inv: Inventory, village: Village) -> tuple[SnmpSettings | None, Note | None]:
    from exporter.inventory import EnvSecret, SecretError, resolve_secret
    from probes.snmp import settings_from_config

    cfg = inv.snmp_for(village)
    if cfg is None:
        return None, Note("note_snmp_none")
    try:
        return settings_from_config(cfg, resolve_secret, timeout_seconds=SNMP_TIMEOUT, retries=SNMP_RETRIES), None
    except SecretError as exc:
        refs = [getattr(cfg, k, None) for k in ("community", "auth_key", "priv_key")]
        names = [r.env if isinstance(r, EnvSecret) else r.file for r in refs if r is not None]
        return None, Note("note_snmp_secret", {"ref": ", ".join(names)}, detail=str(exc))
    except ValueError as exc:
        return None, Note("note_snmp_failed", detail=str(exc))


def _refusal_note(exc: Exception, inv: Inventory, village: Village, now: datetime) -> Note:
    """exporter.budget.Refused says why in English words; turn the known reasons into a translated note."""
    text = str(exc)
    if "scheduled session" in text:
        running = inv.in_session(village, now)
        return Note("note_throughput_session", {"title": running.title if running else "?"}, detail=text)
    if "within this test's window" in text:
        upcoming = inv.next_session(village, now)
        values: dict[str, Any] = {"title": "?", "when": "?"}
        if upcoming is not None:
            values = {"title": upcoming[0].title, "when": Q("when", upcoming[1].astimezone(now.tzinfo))}
        return Note("note_throughput_session_soon", values, detail=text)
    if "uplink busy" in text:
        return Note("note_throughput_busy", detail=text)
    if "budget is spent" in text:
        return Note("note_throughput_budget", detail=text)
    return Note("note_throughput_refused", detail=text)


async def run_check(
    inv: Inventory,
    village: Village,
    options: Options,
    *,
    now: datetime,
    deadline: float,
    probers: Probers | None = None,
    progress: ProgressFn = _no_progress,
) -> Report:
    """Measure one village and judge it; never raises for a probe's failure (that becomes a note or a problem).

    `deadline` is the time.monotonic() by which measuring must be over; stages that would overrun it are
    skipped with a note. Raises CheckError only for a bad --profile."""
    own = probers is None
    probers = probers or Probers()
    choice = choose_profile(inv, village, now, options.profile)
    report = Report(inv, village, choice, started=now)
    t_start = time.monotonic()
    clock = _Clock(deadline, progress, report.timings)
    try:
        await _measure(report, options, probers, clock, now)
    finally:
        if own:
            with contextlib.suppress(Exception):
                await probers.aclose()
    report.elapsed_seconds = round(time.monotonic() - t_start, 3)
    return report


async def _measure(report: Report, options: Options, probers: Probers, clock: _Clock, now: datetime) -> None:
    inv, village, profile = report.inventory, report.village, report.profile
    address = village.address

    # -- phase 1: latency probes, SNMP and history, together
    icmp_settings = IcmpSettings(
        count=ICMP_COUNT, interval=ICMP_INTERVAL, timeout=ICMP_TIMEOUT, payload_bytes=inv.settings.icmp.payload_bytes
    )
    stamp_at = village.stamp_address()
    stamp_settings = None
    if stamp_at is not None:
        stamp_settings = StampSettings(
            port=stamp_at[1],
            rate_pps=STAMP_RATE_PPS,
            duration_seconds=STAMP_SECONDS,
            packet_bytes=profile.video_packet_bytes,
            dscp=profile.dscp,
            timeout_seconds=STAMP_TIMEOUT,
        )
    else:
        report.notes.append(Note("note_no_stamp"))
    icmp_permission = False

    async def run_icmp() -> None:
        nonlocal icmp_permission
        values = {"count": icmp_settings.count, "interval": Q("ms_compact", icmp_settings.interval)}
        async with clock.stage("icmp", "stage_icmp", values) as st:
            try:
                report.icmp = await probers.icmp(address, icmp_settings)
            except IcmpPermissionError as exc:
                icmp_permission = True
                st["event"] = "failed"
                report.notes.append(Note("note_icmp_permission", detail=str(exc)))

    async def run_stamp() -> None:
        if stamp_settings is None or stamp_at is None:
            return
        values = {
            "rate": f"{stamp_settings.rate_pps:g}",
            "size": stamp_settings.packet_bytes,
            "dscp": stamp_settings.dscp,
            "duration": Q("seconds", stamp_settings.duration_seconds),
        }
        async with clock.stage("stamp", "stage_stamp", values) as st:
            try:
                report.stamp = await probers.stamp(stamp_at[0], stamp_settings)
            except (OSError, ValueError) as exc:
                st["event"] = "failed"
                report.notes.append(Note("note_stamp_failed", detail=str(exc)))

    latency_done = asyncio.Event()

    async def run_snmp() -> None:
        settings, note = _snmp_settings(inv, village)
        if note is not None:
            report.notes.append(note)
        if settings is None:
            return
        async with clock.stage("snmp", "stage_snmp", {}) as st:
            first = second = None
            t_first = time.monotonic()
            # Each poll bounded: a dead agent must not hold up the verdict. The second, for rates, waits for
            # the latency probes to end so the counters span them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SNMP_STAGE_SECONDS):
                    first = await probers.snmp(address, settings)
                    t_first = time.monotonic()
            if first is not None and first.success:
                await latency_done.wait()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(settings.worst_case_seconds, max(0.1, clock.left()))):
                        second = await probers.snmp(address, settings)
            if first is None:
                st["event"] = "failed"
                report.notes.append(Note("note_snmp_failed", detail=f"no answer within {SNMP_STAGE_SECONDS:g} s"))
                return
            report.snmp = second if second is not None and second.success else first
            report.port = busiest_port(first, second, time.monotonic() - t_first if second else 0.0)
            if not report.snmp.success:
                st["event"] = "failed"
                report.notes.append(Note("note_snmp_failed", detail=report.snmp.error))
            elif report.snmp.uptime_seconds is not None and report.snmp.uptime_seconds < RECENT_RESTART_SECONDS:
                report.notes.append(Note("router_restarted", {"ago": Q("duration", report.snmp.uptime_seconds)}))

    async def run_history() -> None:
        url = options.prometheus
        if not url:
            return
        async with clock.stage("history", "stage_history", {}) as st:
            try:
                report.history = await asyncio.wait_for(
                    asyncio.to_thread(probers.history, url, village.slug, profile.name, now),
                    timeout=HISTORY_TIMEOUT + 1,
                )
            except HistoryError as exc:
                st["event"] = "failed"
                key = "note_history_failed" if exc.kind == "unreachable" else "note_history_bad"
                report.notes.append(Note(key, {"url": url}, detail=str(exc)))
            except TimeoutError:
                st["event"] = "failed"
                report.notes.append(Note("note_history_failed", {"url": url}, detail="timed out"))

    async def latency() -> None:
        try:
            await asyncio.gather(run_icmp(), run_stamp())
        finally:
            latency_done.set()

    warm = asyncio.ensure_future(asyncio.to_thread(probers.warm_up))
    await asyncio.gather(latency(), run_snmp(), run_history())
    with contextlib.suppress(Exception):
        await warm  # before the throughput test, whose paced sender must not share the CPU with an import

    # -- what phase 1 says
    ok = reachable(report.icmp, report.stamp)
    if report.icmp is not None and report.stamp is not None:
        if report.icmp.received == 0 and report.stamp.received > 0:
            report.notes.append(Note("note_icmp_silent"))
        elif report.stamp.received == 0 and report.icmp.received > 0:
            report.notes.append(Note("note_stamp_silent"))
    _judge(report)
    if ok is None:
        report.problem = (
            Problem("no_permission", "err_no_permission")
            if icmp_permission
            else Problem("nothing_measured", "err_nothing_measured")
        )
        return
    if ok is False:
        sent = sum(r.sent for r in (report.icmp, report.stamp) if r is not None)
        report.problem = Problem("unreachable", "err_unreachable", {"address": address, "sent": sent})

    # -- phase 2: where on the path, when something is wrong
    assert report.readiness is not None
    if ok is False or path_degraded(report.readiness):
        await _trace(report, probers, clock)
    if ok is False:
        if options.throughput and village.iperf3_address() is not None:
            report.notes.append(Note("note_throughput_unreachable"))
        return

    # -- phase 3: throughput, last
    await _throughput(report, options, probers, clock, now)
    _judge(report)


def _judge(report: Report) -> None:
    report.measurements, report.sources = measurements_from(report.icmp, report.stamp, report.throughput, report.port)
    report.readiness = rd.assess(report.measurements, report.profile)


async def _trace(report: Report, probers: Probers, clock: _Clock) -> None:
    left = clock.left()
    if left < TRACE_MIN_SECONDS:
        report.notes.append(Note("note_trace_time", {"limit": Q("seconds", TIME_LIMIT_SECONDS)}))
        return
    try:
        from probes.trace import TraceError, TraceSettings
    except ImportError as exc:  # the trace module is optional
        report.notes.append(Note("note_trace_failed", detail=str(exc)))
        return
    cfg = report.inventory.settings.trace
    settings = TraceSettings(
        protocol="icmp",
        max_hops=cfg.max_hops,
        probes_per_hop=cfg.probes_per_hop,
        timeout_seconds=TRACE_TIMEOUT,
        deadline_seconds=max(0.5, min(TRACE_DEADLINE, left - 0.5)),
    )
    async with clock.stage("trace", "stage_trace", {}) as st:
        try:
            report.trace = await probers.trace(report.village.address, settings)
        except PermissionError as exc:
            st["event"] = "failed"
            report.notes.append(Note("note_trace_permission", detail=str(exc)))
        except (TraceError, OSError, ValueError) as exc:
            st["event"] = "failed"
            report.notes.append(Note("note_trace_failed", detail=str(exc)))


async def _throughput_retrying_busy(
    probers: Probers, address: str, settings: ThroughputSettings, clock: _Clock, seconds: float
) -> ThroughputResult:
    """iperf3 serves one test at a time and takes a moment to accept the next one after a test ends (longer on
    a slow link), so "busy" right after our own first direction is retried briefly while time allows."""
    for _ in range(BUSY_RETRIES):
        try:
            return await probers.throughput(address, settings)
        except ServerBusy:
            if clock.left() < seconds + TEST_SETUP_SECONDS + BUSY_RETRY_WAIT:
                raise
            await asyncio.sleep(BUSY_RETRY_WAIT)
    return await probers.throughput(address, settings)


def offered_rates(profile: Profile) -> tuple[float, float]:
    """The UDP rehearsal's rate each way: 1.1 × readiness's pass line, so a clean link passes with room."""
    k = rd.BANDWIDTH_MARGIN * UDP_OVERSHOOT * 1e6
    return profile.min_down_mbit * k, profile.min_up_mbit * k


async def _throughput(report: Report, options: Options, probers: Probers, clock: _Clock, now: datetime) -> None:
    from exporter.budget import Refused, acquire_test_slot

    inv, village, profile = report.inventory, report.village, report.profile
    endpoint = village.iperf3_address()
    if not options.throughput:
        report.notes.append(Note("note_no_throughput"))
        return
    if endpoint is None:
        report.notes.append(Note("note_no_iperf3"))
        return
    per_direction = clock.left() / 2 - TEST_SETUP_SECONDS
    seconds = min(TCP_SECONDS if options.tcp else UDP_SECONDS, per_direction)
    if seconds < UDP_MIN_SECONDS:
        report.notes.append(Note("note_throughput_time", {"limit": Q("seconds", TIME_LIMIT_SECONDS)}))
        return
    address, port = endpoint
    rate_down, rate_up = offered_rates(profile)
    key = "stage_throughput_tcp" if options.tcp else "stage_throughput_udp"
    values = {"down": Q("rate", rate_down), "up": Q("rate", rate_up)}
    try:
        with acquire_test_slot(inv, village, now, options.force, directions=2) as slot:
            cap_seconds, cap_bytes = slot.caps(2)
            seconds = min(seconds, cap_seconds)
            async with clock.stage("throughput", key, values) as st:
                results: dict[str, DirectionResult | None] = {"down": None, "up": None}
                for direction, rate in (("down", rate_down), ("up", rate_up)):
                    settings = ThroughputSettings(
                        port=port,
                        direction=direction,  # type: ignore[arg-type]
                        protocol="tcp" if options.tcp else "udp",
                        max_seconds=seconds,
                        omit_seconds=min(0.5, seconds / 4) if options.tcp else 0.0,
                        udp_bitrate_bps=rate,
                        udp_packet_bytes=profile.video_packet_bytes,
                        dscp=0 if options.tcp else profile.dscp,
                        connect_timeout=2.0,
                        max_bytes=cap_bytes,
                    )
                    try:
                        res = await _throughput_retrying_busy(probers, address, settings, clock, seconds)
                    except ServerBusy as exc:
                        slot.charge(exc.bytes_moved, exc.seconds)
                        st["event"] = "failed"
                        report.notes.append(Note("note_throughput_server_busy", detail=str(exc)))
                        break
                    except ThroughputError as exc:
                        slot.charge(exc.bytes_moved, exc.seconds)
                        st["event"] = "failed"
                        report.notes.append(Note("note_throughput_failed", detail=str(exc)))
                        break
                    d = res.down if direction == "down" else res.up
                    results[direction] = d
                    if d is not None:
                        slot.charge(d.bytes, d.seconds)
    except Refused as exc:
        report.notes.append(_refusal_note(exc, inv, village, now))
        return
    if results["down"] is None and results["up"] is None:
        return
    method: Literal["udp", "tcp"] = "tcp" if options.tcp else "udp"
    report.throughput = ThroughputOutcome(
        method,
        results["down"],
        results["up"],
        None if options.tcp else rate_down,
        None if options.tcp else rate_up,
    )
    if not options.tcp:
        report.notes.append(Note("note_udp_rehearsal", values))
        for direction, d in (("down", results["down"]), ("up", results["up"])):
            if d is not None and d.loss_ratio is not None and d.loss_ratio > profile.max_loss_pct / 100:
                report.notes.append(
                    Note(
                        "note_under_load",
                        {
                            "direction": Q("key", f"dir_{direction}"),
                            "loss": Q("pct", d.loss_ratio),
                            "jitter": Q("ms", d.jitter_seconds or 0.0),
                        },
                    )
                )


# ---------------------------------------------------------------------------------------------- words
@dataclass(frozen=True)
class Explanation:
    """Everything a person reads, in one language. `headline` is the verdict line."""

    header: str
    profile_line: str
    rows: list[tuple[str, str, str, str, str, rd.State]]  # factor, measured, ready if, fails if, state label, state
    headline: str
    why: str
    also: list[str]
    advice: list[str]
    mos: str | None
    path: str | None
    router: list[str]
    history: list[str]
    notes: list[str]


def _value(check: rd.Check, x: float, lang: Lang, *, compact: bool = False) -> str:
    if check.unit == "seconds":
        return fmt_ms(x, lang, compact=compact)
    if check.unit == "ratio":
        return fmt_pct(x, lang, compact=compact)
    return fmt_rate(x, lang, compact=compact)


def factor_label(factor: str, lang: Lang) -> str:
    return t(f"factor_{factor}", lang)


def why_line(check: rd.Check, lang: Lang) -> str:
    """The plain-words reason for one non-passing check."""
    if check.reason == "total_loss":
        return t("why_loss_total", lang)
    state = "fail" if check.state == "fail" else "warn"
    assert check.value is not None
    return t(
        f"why_{check.factor}_{state}",
        lang,
        value=_value(check, check.value, lang),
        limit=_value(check, check.limit, lang, compact=True),
        fail=_value(check, check.fail_limit, lang, compact=True),
    )


def bounds_text(check: rd.Check, lang: Lang) -> tuple[str, str]:
    """("≤ 100 ms", "> 150 ms"): where ready ends and not ready begins, in symbols any reader knows."""
    limit = _value(check, check.limit, lang, compact=True)
    fail = _value(check, check.fail_limit, lang, compact=True)
    if check.higher_is_worse:
        return f"≤ {limit}", f"> {fail}"
    return f"≥ {limit}", f"< {fail}"


def _optics_advice(report: Report, lang: Lang) -> list[str]:
    out = []
    snmp = report.snmp
    if snmp is not None and snmp.success:
        for o in snmp.optics:
            name = o.name or f"optic{o.index}"
            if o.rx_loss:
                out.append(t("advice_optics_lost", lang, port=name))
            elif o.rx_power_dbm is not None and o.rx_power_dbm < OPTICAL_RX_WEAK_DBM:
                out.append(
                    t(
                        "advice_optics_weak",
                        lang,
                        rx=fmt_dbm(o.rx_power_dbm, lang),
                        port=name,
                        weak=fmt_dbm(OPTICAL_RX_WEAK_DBM, lang),
                    )
                )
    port = report.port
    if port is not None and port.new_errors:
        out.append(t("advice_port_errors", lang, port=port.name, count=port.new_errors))
    return out


def advice_lines(report: Report, lang: Lang) -> list[str]:
    """What to try, most useful first; each line once."""
    out: list[str] = []
    problem, trace, r = report.problem, report.trace, report.readiness
    if problem is not None and problem.code == "no_permission":
        return [t("advice_permission", lang)]
    if problem is not None and problem.code == "unreachable":
        if trace is not None:
            heard = [h for h in trace.hops if h.received > 0]
            if heard:
                last = heard[-1]
                out.append(t("advice_path_ends", lang, ttl=last.ttl, address=last.address or "*"))
            else:
                out.append(t("advice_path_silent", lang))
        out.append(t("advice_unreachable", lang))
        out += _optics_advice(report, lang)
        return out
    if r is None or r.verdict == "unknown":
        return out
    if trace is not None and trace.degradation is not None and r.verdict != "ready":
        d = trace.degradation
        where = locate_step(trace, report.village.address)
        key = {
            "village": "advice_last_mile",
            "kecamatan": "advice_upstream_kecamatan",
            "core": "advice_upstream_core",
            "upstream": "advice_upstream",
        }[where or "upstream"]
        out.append(t(key, lang, ttl=d.ttl, address=d.address or "*"))
    bad = sorted(
        (c for c in r.checks if c.state in ("warn", "fail")),
        key=lambda c: (c.factor != r.limiting, c.state != "fail", rd.FACTORS.index(c.factor)),
    )
    contracted = report.village.contracted
    for c in bad:
        if c.factor in ("loss", "burst_loss"):
            out += _optics_advice(report, lang)
            out.append(t("advice_fibre" if c.factor == "loss" else "advice_burst", lang))
        elif c.factor == "jitter":
            out.append(t("advice_congestion", lang))
        elif c.factor == "rtt":
            out.append(t("advice_latency", lang))
        elif c.factor in ("down", "up"):
            out.append(t("advice_rate", lang))
            have = contracted.down_mbit if c.factor == "down" else contracted.up_mbit
            need = report.profile.min_down_mbit if c.factor == "down" else report.profile.min_up_mbit
            contract = fmt_rate(have * 1e6, lang, compact=True)
            if have < need:
                out.append(
                    t("advice_contract_low", lang, contract=contract, need=fmt_rate(need * 1e6, lang, compact=True))
                )
            else:
                out.append(t("advice_contract_ok", lang, contract=contract))
        elif c.factor == "headroom":
            out.append(t("advice_headroom", lang))
    if r.verdict == "ready":
        out.append(t("advice_ready", lang))
        out += _optics_advice(report, lang)  # an early warning while it still works
    return list(dict.fromkeys(out))


def path_line(report: Report, lang: Lang) -> str | None:
    trace = report.trace
    if trace is None:
        return None
    d = trace.degradation
    heard = [h for h in trace.hops if h.received > 0]
    if not trace.reached:
        if not heard:
            return t("path_silent", lang)
        last = heard[-1]
        if d is None:
            return t("path_not_reached", lang, ttl=last.ttl, address=last.address or "*")
    if d is None:
        return t("path_clean", lang, hops=len(trace.hops))
    what = "step_both" if len(d.reasons) > 1 else f"step_{d.reasons[0]}" if d.reasons else "step_latency"
    where = locate_step(trace, report.village.address) or "upstream"
    return t(
        "path_step",
        lang,
        what=t(what, lang),
        ttl=d.ttl,
        address=d.address or "*",
        where=t(f"where_{where}", lang),
    )


def router_lines(report: Report, lang: Lang) -> list[str]:
    snmp, port = report.snmp, report.port
    if snmp is None or not snmp.success:
        return []
    out = []
    if port is not None:
        out.append(
            t(
                "router_line" if port.new_errors is not None else "router_line_short",
                lang,
                uptime=fmt_duration(snmp.uptime_seconds or 0.0, lang),
                port=port.name,
                state=t("port_up" if port.up else "port_down", lang),
                speed=fmt_rate(port.speed_bits_per_second, lang) if port.speed_bits_per_second else "?",
                errors=port.new_errors,
            )
        )
    for o in snmp.optics:
        weak = o.rx_loss or (o.rx_power_dbm is not None and o.rx_power_dbm < OPTICAL_RX_WEAK_DBM)
        rx = "?" if o.rx_power_dbm is None else fmt_dbm(o.rx_power_dbm, lang)
        line = t(
            "optics_line",
            lang,
            port=o.name or f"optic{o.index}",
            rx=rx + (" " + t("optics_weak", lang) if weak else ""),
            tx="?" if o.tx_power_dbm is None else fmt_dbm(o.tx_power_dbm, lang),
        )
        out.append(line)
    return out


def history_lines(report: Report, lang: Lang) -> list[str]:
    days = report.history
    if days is None:
        return []
    with_data = [d for d in days if d.ready_share is not None or d.loss_ratio is not None]
    if not with_data:
        return [t("history_empty", lang, days=len(days))]
    out = [t("history_title", lang)]
    for d in days:
        label = fmt_day(d.day, lang)
        if d.ready_share is None and d.loss_ratio is None:
            out.append(t("history_row_no_data", lang, day=label))
        else:
            out.append(
                t(
                    "history_row",
                    lang,
                    day=label,
                    ready="?" if d.ready_share is None else fmt_pct(d.ready_share, lang),
                    loss="?" if d.loss_ratio is None else fmt_pct(d.loss_ratio, lang),
                )
            )
    judged = [d for d in days if d.ready_share is not None]
    good = sum(1 for d in judged if (d.ready_share or 0) >= HISTORY_READY_SHARE)
    out.append(t("history_summary", lang, good=good, days=len(judged)))
    return out


def note_lines(report: Report, lang: Lang) -> list[str]:
    out = []
    english_details = False
    for n in report.notes:
        line = render(n.key, n.values, lang)
        if n.detail:
            if lang == "en":
                line += f" ({n.detail})"
            else:
                english_details = True
        out.append(line)
    r = report.readiness
    if r is not None and r.verdict != "unknown" and report.problem is None:
        missing = [factor_label(c.factor, lang) for c in r.checks if c.state == "unmeasured"]
        if missing:
            out.append(t("note_unmeasured", lang, factors=join_words(missing, lang)))
    if english_details:
        out.append(t("detail_elsewhere", lang))
    return out


def problem_text(problem: Problem, lang: Lang) -> str:
    text = render(problem.key, problem.values, lang)
    if problem.detail and lang == "en" and problem.code == "inventory":
        text += ":\n" + problem.detail
    return text


def profile_source_text(choice: ProfileChoice, lang: Lang) -> str:
    if choice.source in ("session", "session_now") and choice.session is not None:
        values: dict[str, Any] = {"title": choice.session.title}
        if choice.source == "session" and choice.start is not None:
            values["when"] = fmt_when(choice.start, lang)
        return t(f"source_{choice.source}", lang, **values)
    return t(f"source_{choice.source}", lang)


def explain(report: Report, lang: Lang) -> Explanation:
    """The report in words: header, table rows, verdict line, why, what to try, notes."""
    v, p, r = report.village, report.profile, report.readiness
    header = t("header", lang, kind=v.kind, name=v.name, slug=v.slug, kecamatan=v.kecamatan, address=v.address)
    profile_line = t(
        "profile_line",
        lang,
        profile=p.name,
        source=profile_source_text(report.choice, lang),
        down=fmt_rate(p.min_down_mbit * 1e6, lang, compact=True),
        up=fmt_rate(p.min_up_mbit * 1e6, lang, compact=True),
    )
    rows = []
    for c in r.checks if r is not None else ():
        measured = "—" if c.value is None else _value(c, c.value, lang)
        ready_if, fails_if = bounds_text(c, lang)
        rows.append((factor_label(c.factor, lang), measured, ready_if, fails_if, t(f"state_{c.state}", lang), c.state))
    why, also = t("why_unknown", lang), []
    if report.problem is not None:
        headline = t("cannot_measure_line", lang, name=v.name, reason=problem_text(report.problem, lang))
        if r is not None and r.verdict != "unknown" and report.problem.code == "unreachable":
            why = t("why_loss_total", lang)
    else:
        verdict = report.verdict
        headline = t("verdict_line", lang, verdict=t(f"verdict_{verdict}", lang), profile=p.name, name=v.name)
        if r is not None and r.limiting is not None:
            lim = r.check(r.limiting)
            if r.verdict == "ready":
                assert lim.value is not None
                why = t(
                    "why_ready",
                    lang,
                    factor=factor_label(lim.factor, lang),
                    value=_value(lim, lim.value, lang),
                    limit=_value(lim, lim.limit, lang, compact=True),
                )
            else:
                why = why_line(lim, lang)
                also = [why_line(c, lang) for c in r.checks if c.state in ("warn", "fail") and c.factor != r.limiting]
    mos = None
    if r is not None and r.mos is not None and report.problem is None:
        mos = t("mos_line", lang, mos=fmt_mos(r.mos, lang))
    return Explanation(
        header=header,
        profile_line=profile_line,
        rows=rows,
        headline=headline,
        why=why,
        also=also,
        advice=advice_lines(report, lang),
        mos=mos,
        path=path_line(report, lang),
        router=router_lines(report, lang),
        history=history_lines(report, lang),
        notes=note_lines(report, lang),
    )


# ---------------------------------------------------------------------------------------------- JSON
def to_json(report: Report, lang: Lang) -> dict[str, Any]:
    """The same figures for scripts, plus `verdict`, `limiting` and `exit_code`. SI units throughout."""
    ex = explain(report, lang)
    v, r, ch = report.village, report.readiness, report.choice
    m = report.measurements
    icmp = report.icmp.to_dict() if report.icmp is not None else None
    stamp = report.stamp.to_dict() if report.stamp is not None else None
    throughput: dict[str, Any] | None = None
    if report.throughput is not None:
        tp = report.throughput
        throughput = {"method": tp.method}
        for name, d, offered in (
            ("down", tp.down, tp.offered_down_bits_per_second),
            ("up", tp.up, tp.offered_up_bits_per_second),
        ):
            throughput[name] = None if d is None else {**d.to_dict(), "offered_bits_per_second": offered}
    snmp = None
    if report.snmp is not None:
        s = report.snmp
        snmp = {
            "success": s.success,
            "error": s.error,
            "uptime_seconds": s.uptime_seconds,
            "port": None
            if report.port is None
            else {
                "name": report.port.name,
                "up": report.port.up,
                "speed_bits_per_second": report.port.speed_bits_per_second,
                "rate_bits_per_second": report.port.rate_bits_per_second,
                "headroom_bits_per_second": report.port.headroom_bits_per_second,
                "new_errors": report.port.new_errors,
            },
            "optics": [
                {"name": o.name, "rx_power_dbm": o.rx_power_dbm, "tx_power_dbm": o.tx_power_dbm, "rx_loss": o.rx_loss}
                for o in s.optics
            ],
        }
    return {
        "village": v.slug,
        "name": v.name,
        "kecamatan": v.kecamatan,
        "address": v.address,
        "profile": report.profile.name,
        "profile_source": ch.source,
        "session": None
        if ch.session is None
        else {"title": ch.session.title, "start": ch.start.isoformat() if ch.start else None},
        "verdict": report.verdict,
        "limiting": report.limiting,
        "exit_code": report_exit_code(report),
        "error": None
        if report.problem is None
        else {
            "code": report.problem.code,
            "message": render(report.problem.key, report.problem.values, lang),
            "detail": report.problem.detail,
            "candidates": list(report.problem.candidates),
        },
        "explanation": ex.why,
        "also": ex.also,
        "advice": ex.advice,
        "notes": ex.notes,
        "notes_detail": [{"key": n.key, "detail": n.detail} for n in report.notes],
        "mos": r.mos if r is not None else None,
        "figures": {
            "rtt_p95_seconds": m.rtt_p95_seconds,
            "jitter_seconds": m.jitter_seconds,
            "loss_ratio": m.loss_ratio,
            "burst_loss_ratio": m.burst_loss_ratio,
            "down_bits_per_second": m.down_bits_per_second,
            "up_bits_per_second": m.up_bits_per_second,
            "interface_headroom_bits_per_second": m.interface_headroom_bits_per_second,
        },
        "sources": report.sources,
        "checks": [
            {
                "factor": c.factor,
                "state": c.state,
                "reason": c.reason,
                "value": c.value,
                "unit": c.unit,
                "limit": c.limit,
                "fail_limit": c.fail_limit,
            }
            for c in (r.checks if r is not None else ())
        ],
        "icmp": icmp,
        "stamp": stamp,
        "throughput": throughput,
        "snmp": snmp,
        "trace": report.trace.to_dict() if report.trace is not None else None,
        "history": None
        if report.history is None
        else [
            {"days_ago": d.days_ago, "at": d.day.isoformat(), "ready_share": d.ready_share, "loss_ratio": d.loss_ratio}
            for d in report.history
        ],
        "timings": report.timings,
        "elapsed_seconds": report.elapsed_seconds,
        "lang": lang,
    }


def problem_json(problem: Problem, lang: Lang) -> dict[str, Any]:
    """The JSON of a check that could not start (bad name, inventory, profile)."""
    return {
        "village": None,
        "verdict": "unknown",
        "limiting": None,
        "exit_code": 2,
        "error": {
            "code": problem.code,
            "message": render(problem.key, problem.values, lang),
            "detail": problem.detail,
            "candidates": list(problem.candidates),
        },
        "lang": lang,
    }
