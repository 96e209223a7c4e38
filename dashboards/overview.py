"""NOC overview: is any village not ready, where is it, which session does that threaten, what is firing.

Layout, top to bottom: counts; the map beside the worst villages; upcoming sessions beside firing alerts;
then the MaDDash-style grid — per kecamatan counts beside a status history of every village, grouped by
kecamatan (rows sort by kecamatan, then village).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard, geomap, stat, statushistory, table
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import geomap as gm

from desanet.dashboards import sessions, variables
from desanet.dashboards.panels import (
    Column,
    Grid,
    Table,
    board,
    convert_to_numbers,
    fixed_colour,
    query,
    steps,
    thresholds_colour,
    verdict_mappings,
    verdict_thresholds,
    village_link,
)
from desanet.dashboards.promql import (
    KEC,
    PROFILE,
    VERDICT_COLOUR,
    VIL,
    sel,
    verdict_rank,
    village_rank,
)

WHERE = f"{KEC}, {VIL}"
RANK = village_rank(WHERE)
ROUND_TRIP = 'direction="round_trip"'
P95 = 'statistic="p95"'


def build() -> dashboard.Dashboard:
    d = (
        board(
            "overview",
            "desanet · NOC overview",
            "Video readiness of every village office: map, worst villages, sessions at risk, alerts.",
            "now-6h",
            "village",
            "sessions",
        )
        .with_variable(variables.kecamatan())
        .with_variable(variables.village(multi=True))
        .with_variable(variables.profile())
    )
    g = Grid(d)
    _counts(g)
    g.add(_map(), 12, 15)
    g.add(_worst(), 12, 15)
    g.add(sessions.summary(KEC, VIL), 14, 9)
    g.add(_alerts(), 10, 9)
    g.row("By kecamatan")
    g.add(_kecamatan_table(), 8, 16)
    g.add(_grid(), 16, 16)
    return d


def _count_stat(title: str, expr: str, colour: str, description: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .with_target(query(expr, "A"))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.VALUE)
        .color_scheme(fixed_colour(colour))
        .decimals(0)
    )


def _counts(g: Grid) -> None:
    def count(rank: int) -> str:
        return f"count({RANK} == {rank}) or vector(0)"

    g.add(
        _count_stat(
            "Villages", f"count(desanet_village_info{sel(WHERE)})", "text", "Villages in the inventory and selection."
        ),
        4,
        4,
    )
    for rank, title, text in (
        (0, "Ready", "ready for every selected profile"),
        (2, "At risk", "worst selected profile is at risk"),
        (3, "Not ready", "worst selected profile is not ready"),
        (1, "Unknown", "not measured enough for a verdict"),
    ):
        g.add(_count_stat(title, count(rank), VERDICT_COLOUR[rank], f"Villages whose verdict is {text}."), 4, 4)
    alerts = (
        stat.Panel()
        .title("Firing alerts")
        .description('Alerts Prometheus is firing now (ALERTS{alertstate="firing"}).')
        .with_target(query('count(ALERTS{alertstate="firing"}) or vector(0)', "A"))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .thresholds(steps((None, "green"), (1, "red")))
        .color_scheme(thresholds_colour())
        .decimals(0)
    )
    g.add(alerts, 4, 4)


def _map() -> geomap.Panel:
    """Each village a dot at its inventory coordinates (desanet_village_info's latitude/longitude labels,
    made numbers), coloured by its worst verdict."""
    expr = (
        f"max by (village, kecamatan, name, latitude, longitude) (desanet_village_info{sel(WHERE)}) "
        f"* on (village) group_left () {RANK}"
    )
    markers = (
        cb.MapLayerOptions()
        .type("markers")
        .name("Villages")
        .location(
            cb.FrameGeometrySource().mode(cm.FrameGeometrySourceMode.COORDS).latitude("latitude").longitude("longitude")
        )
        .tooltip(True)
        .config(
            {
                "showLegend": True,
                "style": {
                    "color": {"field": "Value", "fixed": VERDICT_COLOUR[1]},
                    "opacity": 0.9,
                    "size": {"fixed": 9, "min": 4, "max": 15},
                    "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                    "symbolAlign": {"horizontal": "center", "vertical": "center"},
                    "text": {"mode": "field", "field": "name", "fixed": ""},
                    "textConfig": {
                        "fontSize": 10,
                        "offsetX": 0,
                        "offsetY": -12,
                        "textAlign": "center",
                        "textBaseline": "bottom",
                    },
                },
            }
        )
    )
    return (
        geomap.Panel()
        .title("Villages on the map")
        .description("Coordinates from the inventory; colour = worst verdict over the selected profiles.")
        .with_target(query(expr, "A", table=True))
        .with_transformation(convert_to_numbers(["latitude", "longitude"]))
        .view(geomap.MapViewConfig().id("fit").padding(10).all_layers(True).max_zoom(13))
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True).show_scale(True))
        .basemap(cb.MapLayerOptions().type("default").name("Basemap"))
        .layers([markers])
        .tooltip(geomap.TooltipOptions().mode(gm.TooltipMode.DETAILS))
        .mappings(verdict_mappings())
        .thresholds(verdict_thresholds())
        .color_scheme(thresholds_colour())
        .data_links([village_link("${__data.fields.village}")])
    )


def _worst() -> table.Panel:
    """Worst first: verdict rank, then MOS (lower is worse), through a hidden sort key."""
    where_p = f"{WHERE}, {PROFILE}"
    per_profile = verdict_rank(where_p, "village, kecamatan, profile")
    worst = (
        f"topk by (village) (1, ({per_profile} * on (village, profile) group_left (factor) "
        f"desanet_video_limiting_info) or on (village, profile) {per_profile})"
    )
    mos = f"min by (village, kecamatan) (desanet_video_mos{sel(where_p)})"
    badness = f"({RANK} * 10 + on (village, kecamatan) (5 - {mos})) or on (village) {RANK} * 10"
    t = Table(
        labels=[
            ("village", "Village"),
            ("kecamatan", "Kecamatan"),
            ("profile", "Worst profile"),
            ("factor", "Limiting"),
        ],
        columns=[
            Column("Verdict", worst, verdict=True),
            Column("MOS", mos, decimals=2),
            Column(
                "Loss",
                f"max by (village, kecamatan) (desanet_loss_ratio{sel(WHERE, ROUND_TRIP)})",
                unit="percentunit",
            ),
            Column(
                "RTT p95",
                f"max by (village, kecamatan) (desanet_rtt_window_seconds{sel(WHERE, P95)})",
                unit="s",
            ),
            Column("Jitter (worst)", f"max by (village, kecamatan) (desanet_jitter_seconds{sel(WHERE)})", unit="s"),
            Column(
                "Ready over range",
                f"min by (village, kecamatan) (avg_over_time(desanet_video_ready{sel(where_p)}[$__range]))",
                unit="percentunit",
            ),
            Column("sort", badness, hidden=True),
        ],
        sort=("sort", True),
        links={"Village": [village_link()]},
    )
    p = (
        table.Panel()
        .title("Worst villages now")
        .description(
            "Every village, worst first (verdict, then MOS). Loss and RTT are the worst method's; jitter the worst "
            "method and direction. Click a village for its dashboard."
        )
    )
    return t.build(p)


def _alerts() -> table.Panel:
    t = Table(
        labels=[
            ("alertname", "Alert"),
            ("severity", "Severity"),
            ("kecamatan", "Kecamatan"),
            ("village", "Village"),
            ("profile", "Profile"),
        ],
        columns=[Column("Firing", 'ALERTS{alertstate="firing"}', hidden=True)],
        drop=("Time", "job", "instance", "__name__", "alertstate"),
        links={"Village": [village_link()]},
    )
    p = table.Panel().title("Firing alerts").description("What Prometheus' alert rules are firing now.")
    return t.build(p)


def _kecamatan_table() -> table.Panel:
    def n(rank: int) -> str:
        return f"count by (kecamatan) ({RANK} == {rank}) or count by (kecamatan) (desanet_village_info{sel(WHERE)}) * 0"

    t = Table(
        labels=[("kecamatan", "Kecamatan")],
        columns=[
            Column("Worst", f"max by (kecamatan) ({RANK})", verdict=True),
            Column("Villages", f"count by (kecamatan) (desanet_village_info{sel(WHERE)})"),
            Column("Ready", n(0)),
            Column("At risk", n(2)),
            Column("Not ready", n(3)),
            Column("Unknown", n(1)),
        ],
        sort=("Worst", True),
    )
    p = (
        table.Panel()
        .title("Readiness by kecamatan")
        .description("Villages per verdict in each kecamatan, worst kecamatan first.")
    )
    return t.build(p)


def _grid() -> statushistory.Panel:
    return (
        statushistory.Panel()
        .title("Every village over time, by kecamatan")
        .description(
            "MaDDash-style grid: one row per village (kecamatan · village), one cell per interval, "
            "coloured by the worst verdict in it."
        )
        .with_target(query(f"max_over_time(({RANK})[$__interval:])", "A", "{{kecamatan}} · {{village}}"))
        .max_data_points(48)
        .mappings(verdict_mappings())
        .thresholds(verdict_thresholds())
        .color_scheme(thresholds_colour())
        .show_value(cm.VisibilityMode.NEVER)
        .row_height(0.9)
        .col_width(0.95)
        .legend(
            cb.VizLegendOptions()
            .show_legend(False)
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
        )
    )
