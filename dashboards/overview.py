"""NOC overview: is any village not ready, where is it, which session does that threaten, what is firing.

Layout, top to bottom: counts; the map beside the worst villages; upcoming sessions beside firing alerts;
then the MaDDash-style grid — per kecamatan counts beside a status history of every village, grouped by
kecamatan (rows sort by kecamatan, then village).

Every figure is a village's worst verdict over the profiles it is judged against (its own and its sessions'),
as the alerts judge it; per-profile questions belong to the sessions board and the village dashboard. Counts
and ranks come from recording rules (promql.py), so a refresh reads a few hundred series and a village
scraped by two targets counts once.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard, geomap, stat, statushistory, table
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import geomap as gm

from desanet.dashboards import sessions, variables
from desanet.dashboards.panels import (
    NOT_READY_COLOUR,
    Column,
    Grid,
    Table,
    board,
    coloured,
    convert_to_numbers,
    count_colour,
    factor_thresholds,
    kecamatan_link,
    lower_is_worse,
    query,
    steps,
    thresholds_colour,
    verdict_mappings,
    verdict_thresholds,
    village_link,
)
from desanet.dashboards.promql import (
    DESANET_ALERTS,
    JITTER_JUDGED,
    KEC,
    MOS_LIMITS,
    READY_30D,
    READY_30D_KECAMATAN,
    READY_RATIO,
    READY_SHARE,
    RTT_P95,
    VERDICT_COLOUR,
    VERDICT_COUNT,
    VILLAGES,
    eq,
    profile_rank,
    sel,
    village_rank,
)

RANK = village_rank(KEC)
ICMP = 'method="icmp"'
ROUND_TRIP = 'direction="round_trip"'
FIRING = sel('alertstate="firing"', DESANET_ALERTS, KEC)  # a kecamatan-less alert (exporter) matches All only


def build() -> dashboard.Dashboard:
    d = board(
        "overview",
        "desanet · NOC overview",
        "Video readiness of every village office: map, worst villages, sessions at risk, alerts.",
        "now-6h",
        "village",
        "sessions",
    ).with_variable(variables.kecamatan())
    g = Grid(d)
    _counts(g)
    g.add(_map(), 12, 15)
    g.add(_worst(), 12, 15)
    g.add(sessions.summary(KEC), 14, 9)
    g.add(_alerts(), 10, 9)
    g.row("By kecamatan")
    g.add(_kecamatan_table(), 9, 16)
    g.add(_grid(), 15, 16)
    return d


def _count_stat(title: str, expr: str, description: str, colours: dashboard.ThresholdsConfig) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .with_target(query(expr, "A"))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.VALUE)
        .thresholds(colours)
        .color_scheme(thresholds_colour())
        .decimals(0)
    )


def count(verdict: str = "") -> str:
    """Villages (with a verdict: whose worst verdict is that) in the selected kecamatan, from the rule."""
    return f"sum({VERDICT_COUNT}{sel(KEC, eq('verdict', verdict) if verdict else '')})"


def _counts(g: Grid) -> None:
    g.add(_count_stat("Villages", count(), "Villages in the inventory and selection.", steps((None, "text"))), 4, 4)
    for verdict, rank, title, text in (
        ("ready", 0, "Ready", "ready for every profile they are judged against"),
        ("at_risk", 2, "At risk", "at risk for at least one of their profiles"),
        ("not_ready", 3, "Not ready", "not ready for at least one of their profiles"),
        ("unknown", 1, "Unknown", "not measured enough for a verdict"),
    ):
        colours = steps((None, VERDICT_COLOUR[rank])) if rank == 0 else steps((None, "text"), (1, VERDICT_COLOUR[rank]))
        g.add(_count_stat(title, count(verdict), f"Villages {text}.", colours), 4, 4)
    alerts = (
        stat.Panel()
        .title("Firing alerts")
        .description("desanet's alerts firing now for the selected kecamatan (an HA pair's twin alerts count once).")
        .with_target(query(f"count(group without (instance, job) (ALERTS{FIRING})) or vector(0)", "A"))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .thresholds(steps((None, "green"), (1, NOT_READY_COLOUR)))
        .color_scheme(thresholds_colour())
        .decimals(0)
    )
    g.add(alerts, 4, 4)


def _map() -> geomap.Panel:
    """Each village a dot at its inventory coordinates (desanet_village_info's latitude/longitude labels,
    made numbers), coloured by its worst verdict."""
    where = f"{VILLAGES}{sel(KEC)}"
    expr = f"max by (village, kecamatan, name, latitude, longitude) ({where}) * on (village) group_left () {RANK}"
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
        .description("Coordinates from the inventory; colour = worst verdict. Click a village for its dashboard.")
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
    per_profile = profile_rank(KEC)
    limiting = (
        f"topk by (village, profile) (1, max by (village, kecamatan, profile, factor) "
        f"(desanet_video_limiting_info{sel(KEC)}))"
    )
    worst = (
        f"topk by (village) (1, ({per_profile} * on (village, profile) group_left (factor) {limiting}) "
        f"or on (village, profile) {per_profile})"
    )
    mos = f"max by (village, kecamatan) (desanet_video_mos{sel(KEC)})"
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
            Column("MOS", mos, decimals=2, properties=coloured(lower_is_worse(*MOS_LIMITS))),
            Column(
                "Loss",
                f"max by (village, kecamatan) (desanet_loss_ratio{sel(KEC, ICMP, ROUND_TRIP)})",
                unit="percentunit",
                properties=coloured(factor_thresholds("loss")),
            ),
            Column(
                "RTT p95",
                f"max by (village, kecamatan) ({RTT_P95}{sel(KEC, ICMP)})",
                unit="s",
                properties=coloured(factor_thresholds("rtt")),
            ),
            Column(
                "Jitter",
                f"max by (village, kecamatan) ({JITTER_JUDGED}{sel(KEC)})",
                unit="s",
                properties=coloured(factor_thresholds("jitter")),
            ),
            Column(
                "Ready 30 d",
                f"max by (village, kecamatan) (last_over_time({READY_30D}{sel(KEC)}[10m]))",
                unit="percentunit",
                decimals=1,
                properties=coloured(lower_is_worse(*READY_SHARE)),
            ),
            Column("sort", badness, hidden=True),
        ],
        sort=("sort", True),
        links={"Village": [village_link()], "Kecamatan": [kecamatan_link()]},
    )
    p = (
        table.Panel()
        .title("Worst villages now")
        .description(
            "Every village, worst first (verdict, then MOS). Loss: ICMP over the last window, as judged; RTT p95: "
            "the histogram over 5 min, as alerted; jitter: the figure the verdict judges (STAMP's worse direction, "
            "else ICMP's). Colours: orange and red at the shipped profiles' at-risk and not-ready limits. Ready 30 d: "
            "share of the last 30 days the village was ready (from an hour after Prometheus starts). Click a "
            "village for its dashboard."
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
        columns=[Column("Firing", f"group without (instance, job) (ALERTS{FIRING})", hidden=True)],
        drop=("Time", "job", "instance", "__name__", "alertstate"),
        links={"Village": [village_link()], "Kecamatan": [kecamatan_link()]},
    )
    p = (
        table.Panel()
        .title("Firing alerts")
        .description("desanet's alerts firing now in the selected kecamatan. Click a village for its dashboard.")
    )
    return t.build(p)


def _kecamatan_table() -> table.Panel:
    def n(verdict: str) -> str:
        return f"sum by (kecamatan) ({VERDICT_COUNT}{sel(KEC, eq('verdict', verdict))})"

    t = Table(
        labels=[("kecamatan", "Kecamatan")],
        columns=[
            Column("Worst", f"max by (kecamatan) ({RANK})", verdict=True),
            Column("Villages", f"sum by (kecamatan) ({VERDICT_COUNT}{sel(KEC)})"),
            Column("Ready", n("ready")),
            Column("At risk", n("at_risk"), properties=count_colour(VERDICT_COLOUR[2])),
            Column("Not ready", n("not_ready"), properties=count_colour(VERDICT_COLOUR[3])),
            Column("Unknown", n("unknown")),
            Column(
                "Ready now",
                f"{READY_RATIO}{sel(KEC)}",
                unit="percentunit",
                decimals=0,
                properties=coloured(lower_is_worse(1.0, 0.5)),
            ),
            Column(
                "Ready 30 d",
                f"last_over_time({READY_30D_KECAMATAN}{sel(KEC)}[10m])",
                unit="percentunit",
                decimals=1,
                properties=coloured(lower_is_worse(*READY_SHARE)),
            ),
        ],
        sort=("Worst", True),
        links={"Kecamatan": [kecamatan_link()]},
    )
    p = (
        table.Panel()
        .title("Readiness by kecamatan")
        .description(
            "Villages per worst verdict in each kecamatan, worst kecamatan first; ready now: share of measured "
            "villages ready; ready 30 d: mean of its villages' 30-day ready share. Click a kecamatan to narrow "
            "the board to it."
        )
    )
    return t.build(p)


def _grid() -> statushistory.Panel:
    return (
        statushistory.Panel()
        .title("Every village over time, by kecamatan")
        .description(
            "MaDDash-style grid: one row per village (kecamatan · village), one cell per interval, "
            "coloured by the worst verdict in it. Click a cell for the village's dashboard."
        )
        .with_target(query(f"max_over_time({RANK}[$__interval])", "A", "{{kecamatan}} · {{village}}"))
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
        .data_links([village_link("${__field.labels.village}")])
    )
