"""The record of one check: what was asked, what was measured, what could not be, and the limits it ran under."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from desanet.district import Inventory, Profile, Session, Village
from desanet.probes.icmp import IcmpResult
from desanet.probes.stamp import StampResult
from desanet.probes.throughput import DirectionResult
from desanet.verdict import readiness as rd
from desanet.verdict.ports import PortActivity

if TYPE_CHECKING:
    from desanet.probes.callstream import CallStreamResult
    from desanet.probes.snmp import SnmpResult
    from desanet.probes.trace import TraceResult


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
CALL_STREAM_TIMEOUT: Final = 1.0  # a reply later than this counts lost (as STAMP_TIMEOUT)
CALL_STREAM_MIN_SECONDS: Final = 2.0  # shorter, and the last half is too short to read a controller's reaction
CALL_STREAM_SECONDS: Final = 4.0  # GCC cuts within a second of a growing queue and climbs back 8 %/s: 4 s shows both
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
CALL_TIMEOUT: Final = 2.0  # one instant query for the village's last rehearsal call
# GPON class B+ ONUs are specified down to -27 dBm received (ITU-T G.984.2); below -25 dBm less than 2 dB of
# margin is left, which a dirty connector (0.5-1 dB each) or a tight bend eats. A chosen figure, not a source's.
OPTICAL_RX_WEAK_DBM: Final = -25.0
RECENT_RESTART_SECONDS: Final = 3600.0

Stage = Literal["icmp", "stamp", "snmp", "history", "trace", "throughput", "call_stream"]
StageEvent = Literal["start", "done", "skipped", "failed"]
Location = Literal["village", "kecamatan", "core", "upstream"]
ProfileSource = Literal["option", "session", "session_now", "village", "default"]


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


@dataclass(frozen=True)
class ProfileChoice:
    profile: Profile
    source: ProfileSource
    session: Session | None = None
    start: datetime | None = None


@dataclass(frozen=True)
class ThroughputOutcome:
    method: Literal["udp", "tcp"]
    down: DirectionResult | None
    up: DirectionResult | None
    offered_down_bits_per_second: float | None = None
    offered_up_bits_per_second: float | None = None


@dataclass(frozen=True)
class HistoryDay:
    day: datetime  # the same time of day, `days_ago` days ago
    days_ago: int
    ready_share: float | None  # share of the hour around that time the verdict was ready
    loss_ratio: float | None  # mean ICMP round-trip loss over that hour


@dataclass(frozen=True)
class CallDirection:
    """One direction of the village's last rehearsal call as the exporter published it (desanet_call_*: the
    judged record of verdict/call_outcome.py). None where the call had no such figure (it did not connect, or
    no video arrived)."""

    direction: str  # up: the village's camera at the NOC; down: the NOC's in the village
    outcome: str  # holds, degraded or fails
    frames_per_second: float | None = None
    video_height_pixels: float | None = None
    freeze_ratio: float | None = None
    audio_concealment_ratio: float | None = None
    video_loss_ratio: float | None = None
    jitter_buffer_delay_seconds: float | None = None
    video_received_bits_per_second: float | None = None
    limitation: str | None = None  # bandwidth, cpu, other or none


@dataclass(frozen=True)
class LastCall:
    """The village's last rehearsal call, from Prometheus (`--prometheus`); the exporter keeps it for 24 h."""

    ended: datetime
    profile: str | None
    setup_seconds: float | None  # absent when the call did not connect
    directions: dict[str, CallDirection]

    @property
    def connected(self) -> bool:
        return self.setup_seconds is not None


@dataclass(frozen=True)
class CallFigure:
    """The figure that decided a direction's outcome (for one that held: the one closest to its limit)."""

    figure: Literal["freeze", "fps", "height", "concealment"]
    value: float
    state: Literal["holds", "degraded", "fails"]
    limit: float  # where holding ends
    fail_limit: float  # where failing begins
    higher_is_worse: bool


class HistoryError(Exception):
    def __init__(self, kind: Literal["unreachable", "bad_answer"], detail: str):
        super().__init__(detail)
        self.kind = kind


# ---------------------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Options:
    profile: str | None = None
    throughput: bool = True
    tcp: bool = False  # a TCP test instead of the UDP rehearsal
    force: bool = False  # throughput even during the village's session
    prometheus: str | None = None
    call_stream: bool = False  # also a call-like stream that yields like WebRTC (probes/callstream.py); not judged yet


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
    call_stream: CallStreamResult | None = None
    history: list[HistoryDay] | None = None
    call: LastCall | None = None  # with --prometheus: the village's last rehearsal call, if it had one
    call_fetched: bool = False  # Prometheus answered the question (so no call means none in the last 24 h)
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
