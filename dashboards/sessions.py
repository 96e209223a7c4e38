"""Sessions: each scheduled session, its villages, their readiness now and in the session's hours on the
last seven days — "was this village fine at 13:00 on the last Tuesdays?" is the question before a session.

desanet exports each village's *next* session only (desanet_session_start_timestamp_seconds), so a village
in two sessions appears under the sooner one; docs/dashboards.md says more.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard, statushistory, table
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from desanet.dashboards import variables
from desanet.dashboards.panels import (
    Column,
    Grid,
    Table,
    board,
    count_colour,
    lower_is_worse,
    prop,
    query,
    session_link,
    thresholds_colour,
    verdict_mappings,
    verdict_thresholds,
    village_link,
)
from desanet.dashboards.promql import (
    KEC,
    SESSION,
    SESSION_LABELS,
    VERDICT_COLOUR,
    VIL,
    ready_in_session_hours,
    session_rank,
    session_start,
)

DAYS = 7


def build() -> dashboard.Dashboard:
    d = (
        board(
            "sessions",
            "desanet · Sessions",
            "Scheduled video sessions, their villages' readiness now and in the session's hours on recent days.",
            "now-7d",
            "overview",
            "village",
        )
        .with_variable(variables.session())
        .with_variable(variables.kecamatan())
        .with_variable(variables.village(multi=True))
    )
    g = Grid(d)
    g.add(summary(SESSION, KEC, VIL), 24, 6)
    g.add(_villages(), 24, 14)
    g.add(_history(), 24, 12)
    return d


def summary(*matchers: str) -> table.Panel:
    """One row per upcoming session: when, and how many of its villages are ready for its profile now."""
    start = session_start(*matchers)
    rank = session_rank(*matchers)
    by = "session, profile"

    def n(r: int) -> str:
        return f"count by ({by}) ({rank} == {r}) or count by ({by}) ({start}) * 0"

    t = Table(
        labels=[("session", "Session"), ("profile", "Profile")],
        columns=[
            Column("Starts", f"min by ({by}) ({start}) * 1000", unit="dateTimeAsLocalNoDateIfToday"),
            Column("In", f"min by ({by}) ({start}) - time()", unit="dtdurations"),
            Column("Villages", f"count by ({by}) ({start})"),
            Column("Ready", n(0), properties=count_colour(VERDICT_COLOUR[0])),
            Column("At risk", n(2), properties=count_colour(VERDICT_COLOUR[2])),
            Column("Not ready", n(3), properties=count_colour(VERDICT_COLOUR[3])),
            Column("Unknown", n(1)),
        ],
        sort=("Starts", False),
        links={"Session": [session_link()]},
    )
    p = (
        table.Panel()
        .title("Upcoming sessions")
        .description(
            "Each village's next session, with how many of its villages are ready now for the session's "
            "profile. A village in two sessions counts under the sooner one."
        )
    )
    return t.build(p)


def _share_colour() -> tuple[dm.DynamicConfigValue, ...]:
    colours = lower_is_worse(0.95, 0.5)
    return (
        prop("thresholds", colours.build()),
        prop("color", thresholds_colour().build()),
        prop("custom.cellOptions", {"type": "color-background", "mode": "basic"}),
        prop("noValue", "–"),
    )


def _villages() -> table.Panel:
    m = (SESSION, KEC, VIL)
    days = [
        Column(f"day −{day}", ready_in_session_hours(day, *m), unit="percentunit", properties=_share_colour())
        for day in range(1, DAYS + 1)
    ]
    t = Table(
        labels=[("session", "Session"), ("profile", "Profile"), ("kecamatan", "Kecamatan"), ("village", "Village")],
        columns=[
            Column("Starts", f"max by ({SESSION_LABELS}) ({session_start(*m)}) * 1000", unit="dateTimeAsLocal"),
            Column("Now", session_rank(*m), verdict=True),
            *days,
        ],
        sort=("Now", True),
        links={"Village": [village_link()], "Session": [session_link()]},
    )
    p = (
        table.Panel()
        .title("Villages: readiness now and in the session's hours on recent days")
        .description(
            "Now: the verdict for the session's profile. day −1 … day −7: the share of the session's hours "
            "(its start time of day, for its duration) in which the village was ready, in the last 24 h, the "
            "24 h before, and so on. Empty: no data then (or the village's next session was another one)."
        )
    )
    return t.build(p)


def _history() -> statushistory.Panel:
    expr = f"max by (session, village) (max_over_time({session_rank(SESSION, KEC, VIL)}[$__interval]))"
    return (
        statushistory.Panel()
        .title("Verdict of the sessions' villages, last 7 days")
        .description(
            "Hour by hour, the worst verdict each session's village had for the session's profile. Click a cell "
            "for the village's dashboard."
        )
        .with_target(query(expr, "A", "{{session}} · {{village}}"))
        .time_from("7d")
        .interval("1h")
        .max_data_points(168)
        .mappings(verdict_mappings())
        .thresholds(verdict_thresholds())
        .color_scheme(thresholds_colour())
        .show_value(cm.VisibilityMode.NEVER)
        .legend(cb.VizLegendOptions().show_legend(False).display_mode(cm.LegendDisplayMode.LIST))
        .data_links([village_link("${__field.labels.village}")])
    )
