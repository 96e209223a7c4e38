"""PromQL the dashboards share, as plain strings, so the panels and the tests read the same expressions.

Only raw desanet metrics (exporter/metrics.py) are used, no recording rules: the dashboards work against any
Prometheus that scrapes `desanet serve`, whatever rule files it loads.

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


def verdict_rank(matchers: str, by: str) -> str:
    """The worst verdict rank per `by` among desanet_video_verdict series matching `matchers`."""
    m = f"{matchers}, " if matchers else ""
    parts = [
        f'(desanet_video_verdict{{{m}verdict="{v}"}} == 1) * {r}'
        for v, r in sorted(VERDICT_RANK.items(), key=lambda kv: -kv[1])
    ]
    return f"max by ({by}) (" + " or ".join(parts) + ")"


def village_rank(where: str = f"{KEC}, {VIL}") -> str:
    """Worst verdict rank per village over the selected profiles; villages without a verdict yet count as
    unknown (1), so every village in the inventory appears on the map and in the grid."""
    return (
        f"({verdict_rank(f'{where}, {PROFILE}', 'village, kecamatan')} "
        f"or on (village) group by (village, kecamatan) (desanet_village_info{{{where}}}))"
    )


def session_start(*matchers: str) -> str:
    return f"desanet_session_start_timestamp_seconds{sel(*matchers)}"


def session_join(per_village_profile: str, per_village: str, *matchers: str) -> str:
    """A per-(village, profile) figure carried onto each village's next session, labelled by session.

    A session names the profile it needs; a session without one (profile="") falls back to the village's
    worst figure over all its profiles (`per_village`).
    """
    start = session_start(*matchers)
    return (
        f"max by ({SESSION_LABELS}) ("
        f"({start} * 0 + on (village, profile) group_left () {per_village_profile}) "
        f"or on (village, session) ({start} * 0 + on (village) group_left () {per_village})"
        ")"
    )


def session_rank(*matchers: str) -> str:
    """The verdict rank each session's village has now for that session's profile."""
    return session_join(verdict_rank("", "village, profile"), verdict_rank("", "village"), *matchers)


def session_ready(*matchers: str) -> str:
    """desanet_video_ready (1/0) each session's village has for that session's profile."""
    return session_join(
        "max by (village, profile) (desanet_video_ready)", "min by (village) (desanet_video_ready)", *matchers
    )


def in_session_hours(*matchers: str) -> str:
    """Next-session series (value irrelevant) present only while the clock is within the session's daily
    hours: (now − start) mod 1 day < duration. Daily and weekly sessions keep their start's time of day, so
    this holds on every day at the session's hours, whatever day the next occurrence falls on."""
    start = session_start(*matchers)
    end = f"desanet_session_end_timestamp_seconds{sel(*matchers)}"
    return f"(((time() - {start}) % 86400 + 86400) % 86400 < ({end} - {start}))"


def ready_in_session_hours(day: int, *matchers: str) -> str:
    """Share (0–1) of the session's hours in which its village was ready, over the 24 h that ended `day`−1
    days ago (day 1 = the last 24 h). Each 24 h window holds the session's hours exactly once; the subquery
    samples every 5 minutes."""
    offset = f" offset {day - 1}d" if day > 1 else ""
    inner = f"{session_ready(*matchers)} and on ({SESSION_LABELS}) {in_session_hours(*matchers)}"
    return f"avg_over_time(({inner})[1d:5m]{offset})"
