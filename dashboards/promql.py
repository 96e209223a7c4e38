"""PromQL the dashboards share, as plain strings, so the panels and the tests read the same expressions.

The dashboards read desanet's recording rules (alerts/desanet.rules.yml) wherever a figure is computed from
many series: the verdict rank, readiness counts and shares per kecamatan, the 30-day ready share, the strictest
limits, the jitter the verdict judges. A refresh then reads a few hundred precomputed series instead of
recomputing the verdict in every panel, and every count comes from a rule that aggregates `by` village, so a
village scraped by two targets (an HA pair, or one exporter under two jobs) counts once. Prometheus must load
the rules file (docs/dashboards.md). Raw desanet series are read where one village's own figures are shown.

The verdict rank orders verdicts from good to bad the same way the exporter does (scheduler.VERDICT_RANK):
ready 0, unknown 1, at_risk 2, not_ready 3. One number per village lets a map, a grid and a table colour
and sort villages alike, and `max` over profiles gives the worst verdict of the profiles selected.
"""

from __future__ import annotations

VERDICT_RANK: dict[str, int] = {"ready": 0, "unknown": 1, "at_risk": 2, "not_ready": 3}
VERDICT_TEXT: dict[int, str] = {0: "ready", 1: "unknown", 2: "at risk", 3: "not ready"}
VERDICT_COLOUR: dict[int, str] = {0: "green", 1: "#8e8e8e", 2: "orange", 3: "red"}

# Dashboard variables, as the queries write them. Multi-value variables use `=~` (Grafana formats them as
# a regex); the village dashboard's `$village` is single-valued and matched with `=`.
KEC = 'kecamatan=~"$kecamatan"'
VIL = 'village=~"$village"'
ONE_VILLAGE = 'village="$village"'
PROFILE = 'profile=~"$profile"'
SESSION = 'session=~"$session"'

SESSION_LABELS = "session, profile, village, kecamatan"


def eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def match(label: str, regex: str) -> str:
    return f'{label}=~"{regex}"'


def sel(*matchers: str) -> str:
    """`{a, b}` from matchers, skipping empty ones."""
    return "{" + ", ".join(m for m in matchers if m) + "}"


# The recording rules the dashboards read (alerts/desanet.rules.yml; tests/test_dashboards.py checks each
# name is recorded there).
VILLAGES = "village:desanet_village_info:group"
RANK = "village:desanet_video_verdict:rank"
RANK_PROFILE = "village_profile:desanet_video_verdict:rank"
READY_KNOWN = "village_profile:desanet_video_ready:known"
VERDICT_COUNT = "kecamatan:desanet_village_verdict:count"
READY_RATIO = "kecamatan:desanet_video_ready:ratio"
READY_30D = "village:desanet_video_ready:ratio_30d"
READY_30D_KECAMATAN = "kecamatan:desanet_video_ready:ratio_30d"
THRESHOLD = "profile:desanet_profile_threshold:max"
JITTER_JUDGED = "village:desanet_jitter_seconds:worst"
SESSION_RANK = "village_session:desanet_video_verdict:rank"
SESSION_READY = "village_session:desanet_video_ready:in_session_hours"
RTT_P95 = "village:desanet_rtt_seconds:p95_5m"
OPTICAL_WARNING = "village:desanet_optical_rx_power_dbm:warning_threshold"
OPTICAL_CRITICAL = "village:desanet_optical_rx_power_dbm:critical_threshold"
RULES = (
    VILLAGES,
    RANK,
    RANK_PROFILE,
    READY_KNOWN,
    VERDICT_COUNT,
    READY_RATIO,
    READY_30D,
    READY_30D_KECAMATAN,
    THRESHOLD,
    JITTER_JUDGED,
    SESSION_RANK,
    SESSION_READY,
    RTT_P95,
    OPTICAL_WARNING,
    OPTICAL_CRITICAL,
)

# desanet's alerts, so alert panels show desanet's own and no other exporter's (tests/test_dashboards.py keeps
# this equal to the alert names in alerts/desanet.rules.yml).
ALERT_NAMES = (
    "DesanetExporterDown",
    "DesanetProbeScheduleSlipping",
    "DesanetProbingBehind",
    "InterfaceErrorsRising",
    "InterfaceFlapping",
    "InterfaceUtilisationHigh",
    "KecamatanUplinkDegraded",
    "OpticalNoLight",
    "OpticalRxPowerLow",
    "OpticalRxPowerTrendingDown",
    "RouterRebooted",
    "SessionAtRisk",
    "VillageJitterHigh",
    "VillageLatencyHigh",
    "VillagePacketLoss",
    "VillageProbeFailing",
    "VillageThroughputLow",
    "VillageUnreachable",
    "VillageVideoNotReady",
)
DESANET_ALERTS = match("alertname", "|".join(ALERT_NAMES))

# Where a number turns orange (at risk) and red (not ready) on a stat or table cell. Grafana colours a field by
# fixed steps, not by a per-row query, so these are the limits every shipped profile shares (the profile defaults,
# calibrated against real calls: docs/readiness.md; tests/test_dashboards.py compares them with the inventory's
# profiles); the dashed limit lines on the time series come from the profiles themselves (desanet_profile_threshold).
LIMITS: dict[str, tuple[float, float]] = {"rtt": (0.2, 0.4), "jitter": (0.03, 0.04), "loss": (0.03, 0.2)}
OPTICAL_DBM = (-25.0, -27.0)  # the rules' default warning and critical receive power (alerts/desanet.rules.yml)
MOS_LIMITS = (4.0, 3.6)  # below 4.0 some users dissatisfied, below 3.6 many (G.107 Annex B)
READY_SHARE = (0.99, 0.95)  # of a 30-day span: under 99 % orange, under 95 % red


def village_rank(where: str = KEC) -> str:
    """Worst verdict rank per village over every profile it is judged against; unknown (1) for a village in
    the inventory without a verdict yet, so every village appears on the map and in the grid."""
    return f"{RANK}{{{where}}}"


def profile_rank(where: str) -> str:
    """The verdict rank per village and profile."""
    return f"{RANK_PROFILE}{{{where}}}"


def limits(factor: str, where: str, by: str = "level", worst: str = "min") -> str:
    """The limits of `factor` for the profiles matching `where` (a village's, via its verdicts), one series per
    `by`: the strictest (`min` where higher is worse, `max` where lower is) unless `by` keeps the profile."""
    return f"{worst} by ({by}) ({THRESHOLD}{{{eq('factor', factor)}}} and on (profile) {RANK_PROFILE}{{{where}}})"


def session_start(*matchers: str) -> str:
    """Each village's next session and its start, once per village whatever the number of targets."""
    return f"max by ({SESSION_LABELS}) (desanet_session_start_timestamp_seconds{sel(*matchers)})"


def session_rank(*matchers: str) -> str:
    """The verdict rank each session's village has now for that session's profile (the rule joins them)."""
    return f"{SESSION_RANK}{sel(*matchers)}"


def ready_in_session_hours(day: int, *matchers: str) -> str:
    """Share (0–1) of the session's hours in which its village was ready, over the 24 h that ended `day`−1
    days ago (day 1 = the last 24 h). The rule has a sample only during the session's daily hours (its start
    time of day, for its duration), so each 24 h window holds them exactly once."""
    offset = f" offset {day - 1}d" if day > 1 else ""
    return f"avg_over_time({SESSION_READY}{sel(*matchers)}[1d]{offset})"
