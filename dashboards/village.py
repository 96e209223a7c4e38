"""Village drill-down: why is this village (not) ready, and since when.

Top to bottom: the verdict and its inputs now; the last rehearsal call, per direction (dashboards/rehearsal.py);
SmokePing-style latency (median line in the min–max and median–p95 smoke, loss as red bars on the right axis)
with the RTT histogram as a heatmap; jitter, loss and delay variation per method and direction against the
profile's limits; throughput against contract and need; interface traffic against capacity, utilisation,
errors and status; optical power with its 7-day trend; the path's hops; and the health of each probe.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard, heatmap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm

from desanet.dashboards import rehearsal, variables
from desanet.dashboards.panels import (
    AT_RISK_COLOUR,
    NOT_READY_COLOUR,
    Column,
    Grid,
    Table,
    board,
    coloured,
    coloured_stat,
    factor_thresholds,
    limit_line,
    lower_is_worse,
    prop,
    query,
    steps,
    thresholds_colour,
    verdict_mappings,
    verdict_thresholds,
)
from desanet.dashboards.promql import (
    DESANET_ALERTS,
    JITTER_JUDGED,
    MOS_LIMITS,
    ONE_VILLAGE,
    OPTICAL_CRITICAL,
    OPTICAL_DBM,
    OPTICAL_WARNING,
    PROFILE,
    READY_30D,
    READY_SHARE,
    RTT_P95,
    eq,
    limits,
    profile_rank,
    sel,
)

V = ONE_VILLAGE
FIRING = eq("alertstate", "firing")
ICMP = eq("method", "icmp")
ROUND_TRIP = eq("direction", "round_trip")
SMOKE = "#8f8f8f"
# The selected profiles of this village: limits join on them through its verdicts.
MINE = f"{V}, {PROFILE}"


def build() -> dashboard.Dashboard:
    d = (
        board(
            "village",
            "desanet · Village",
            "One village office: verdict, latency, jitter, loss, throughput, interfaces, optics, path.",
            "now-24h",
            "overview",
            "sessions",
        )
        .with_variable(variables.kecamatan())
        .with_variable(variables.village(multi=False))
        .with_variable(variables.profile(V))
    )
    g = Grid(d)
    _now(g)
    rehearsal.add_row(g)
    g.row("Latency and loss")
    g.add(_smokeping(), 24, 10)
    g.add(_rtt_heatmap(), 12, 8)
    g.add(_rtt_by_method(), 12, 8)
    g.add(_jitter(), 8, 8)
    g.add(_loss(), 8, 8)
    g.add(_delay_variation(), 8, 8)
    g.row("Capacity")
    g.add(_throughput(), 12, 8)
    g.add(_interface_traffic(), 12, 8)
    g.add(_utilisation(), 8, 7)
    g.add(_errors(), 8, 7)
    g.add(_interface_status(), 8, 7)
    g.row("Optics and path")
    g.add(_optical_power(), 12, 8)
    g.add(_optical_forecast(), 4, 8)
    g.add(_optical_module(), 8, 8)
    g.add(_path(), 16, 8)
    g.add(_degraded_hop(), 8, 8)
    g.row("Probes and alerts")
    g.add(_probes(), 14, 6)
    g.add(_alerts(), 10, 6)
    return d


# ------------------------------------------------------------------------------------------------ helpers
def ts(title: str, description: str, unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .line_width(1)
        .fill_opacity(0)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )


def with_limits(panel: timeseries.Panel, factor: str, ref: str) -> timeseries.Panel:
    """The strictest of the selected profiles' at-risk and not-ready limits for `factor` as two dashed lines
    (orange, red): where the verdict changes (desanet_profile_threshold, joined by profile)."""
    return (
        panel.with_target(query(limits(factor, MINE), ref, "limit {{level}}"))
        .override_by_name("limit at_risk", limit_line(AT_RISK_COLOUR))
        .override_by_name("limit not_ready", limit_line(NOT_READY_COLOUR))
    )


def small_stat(title: str, description: str, expr: str, legend: str, unit: str, colours: Any = None) -> stat.Panel:
    """A number with its sparkline, coloured by `colours` (green/orange/red at its limits) or plain."""
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .with_target(query(expr, "A", legend))
        .unit(unit)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.VALUE)
    )
    return coloured_stat(p, colours)


# ------------------------------------------------------------------------------------------------ now
def _now(g: Grid) -> None:
    verdict = (
        stat.Panel()
        .title("Verdict")
        .description("Readiness for each video profile the village needs (its own and its sessions').")
        .with_target(query(profile_rank(MINE), "A", "{{profile}}"))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .mappings(verdict_mappings())
        .thresholds(verdict_thresholds())
        .color_scheme(thresholds_colour())
    )
    g.add(verdict, 5, 4)
    mos = small_stat(
        "MOS",
        "Mean opinion score the E-model gives the judged delay, jitter and loss (4.0+ satisfied, under 3.6 many "
        "dissatisfied).",
        f"max(desanet_video_mos{sel(V)})",
        "MOS",
        "none",
        lower_is_worse(*MOS_LIMITS),
    ).decimals(2)
    g.add(mos, 2, 4)
    limiting = (
        stat.Panel()
        .title("Limiting factor")
        .description("The measurement closest to (or furthest past) its limit, per profile.")
        .with_target(
            query(
                f"max by (profile, factor) (desanet_video_limiting_info{sel(V, PROFILE)})",
                "A",
                "{{profile}}: {{factor}}",
            )
        )
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.NAME)
    )
    g.add(limiting, 4, 4)
    g.add(
        small_stat(
            "RTT p95",
            "ICMP round-trip time, 95th percentile of the histogram over 5 minutes (what VillageLatencyHigh reads).",
            f"max({RTT_P95}{sel(V, ICMP)})",
            "p95",
            "s",
            factor_thresholds("rtt"),
        ),
        3,
        4,
    )
    g.add(
        small_stat(
            "Loss",
            "ICMP loss over the last window: the figure the verdict judges.",
            f"max(desanet_loss_ratio{sel(V, ICMP, ROUND_TRIP)})",
            "loss",
            "percentunit",
            factor_thresholds("loss"),
        ),
        2,
        4,
    )
    g.add(
        small_stat(
            "Jitter",
            "The jitter the verdict judges: STAMP's worse one-way direction while its result counts, else ICMP's.",
            f"max({JITTER_JUDGED}{sel(V)})",
            "jitter",
            "s",
            factor_thresholds("jitter"),
        ),
        2,
        4,
    )
    g.add(
        small_stat(
            "Ready 30 d",
            "Share of the last 30 days the village was ready for every profile it is judged against (measured "
            "time only; from an hour after Prometheus starts).",
            f"max(last_over_time({READY_30D}{sel(V)}[10m]))",
            "ready",
            "percentunit",
            lower_is_worse(*READY_SHARE),
        ).decimals(1),
        3,
        4,
    )
    nxt = (
        stat.Panel()
        .title("Next session")
        .description("When the village's next scheduled session starts.")
        .with_target(
            query(f"max by (session) (desanet_session_start_timestamp_seconds{sel(V)}) * 1000", "A", "{{session}}")
        )
        .unit("dateTimeFromNow")
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    g.add(nxt, 3, 4)


# ------------------------------------------------------------------------------------------------ latency
def _quantile(q: float, by: str = "le", where: str = "") -> str:
    """A quantile of the RTT histogram over each step. A duplicate target doubles every bucket alike, which
    leaves the quantile as it is."""
    m = sel(V, where) if where else sel(V)
    return f"histogram_quantile({q}, sum by ({by}) (rate(desanet_rtt_seconds_bucket{m}[$__rate_interval])))"


def _smokeping() -> timeseries.Panel:
    def smoke(name: str, to: str, opacity: int) -> list[dm.DynamicConfigValue]:
        return [
            prop("custom.fillBelowTo", to),
            prop("custom.fillOpacity", opacity),
            prop("custom.lineWidth", 0),
            prop("color", {"mode": "fixed", "fixedColor": SMOKE}),
        ]

    p = (
        ts(
            "Latency (SmokePing view)",
            "ICMP RTT from the histogram of every echo: the median line inside grey smoke (light: 5th to 95th "
            "percentile, dark: 25th to 75th); more smoke, more jitter. Red bars on the right axis: loss.",
            "s",
        )
        .with_target(query(_quantile(0.95, where=ICMP), "A", "p95"))
        .with_target(query(_quantile(0.75, where=ICMP), "B", "p75"))
        .with_target(query(_quantile(0.5, where=ICMP), "C", "median"))
        .with_target(query(_quantile(0.25, where=ICMP), "D", "p25"))
        .with_target(query(_quantile(0.05, where=ICMP), "E", "p5"))
        .with_target(query(f"max(desanet_loss_ratio{sel(V, ICMP, ROUND_TRIP)})", "F", "loss"))
        .override_by_name("p95", smoke("p95", "p5", 20))
        .override_by_name("p75", smoke("p75", "p25", 40))
        .override_by_name("p25", [prop("custom.lineWidth", 0), prop("color", {"mode": "fixed", "fixedColor": SMOKE})])
        .override_by_name("p5", [prop("custom.lineWidth", 0), prop("color", {"mode": "fixed", "fixedColor": SMOKE})])
        .override_by_name(
            "median", [prop("custom.lineWidth", 2), prop("color", {"mode": "fixed", "fixedColor": "green"})]
        )
        .override_by_name(
            "loss",
            [
                prop("unit", "percentunit"),
                prop("min", 0),
                prop("max", 1),
                prop("custom.axisPlacement", "right"),
                prop("custom.drawStyle", "bars"),
                prop("custom.fillOpacity", 80),
                prop("color", {"mode": "fixed", "fixedColor": NOT_READY_COLOUR}),
            ],
        )
    )
    return p


def _rtt_heatmap() -> heatmap.Panel:
    # max over the targets first: a duplicate target's buckets must not double the counts.
    expr = (
        f"sum by (le) (max without (instance, job) "
        f"(increase(desanet_rtt_seconds_bucket{sel(V, ICMP)}[$__rate_interval])))"
    )
    return (
        heatmap.Panel()
        .title("RTT distribution")
        .description("Every ICMP reply's RTT, from desanet_rtt_seconds (smokeping_prober's view).")
        .with_target(query(expr, "A", "{{le}}", heatmap=True))
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges").exponent(0.5).steps(64))
        .cell_gap(1)
    )


def _rtt_by_method() -> timeseries.Panel:
    p = (
        ts(
            "RTT by method",
            "Median and p95 of each method's histogram (ICMP continuous; STAMP's bursts with --metrics.detail), "
            "and the selected profiles' strictest at-risk (orange) and not-ready (red) limits.",
            "s",
        )
        .with_target(query(_quantile(0.5, "le, method"), "A", "{{method}} median"))
        .with_target(query(_quantile(0.95, "le, method"), "B", "{{method}} p95"))
    )
    return with_limits(p, "rtt", "C")


def _jitter() -> timeseries.Panel:
    p = (
        ts(
            "Jitter",
            "The jitter the verdict judges (bold: STAMP's worse one-way direction while its result counts, else "
            "ICMP's round trip), the figures it comes from (all methods and directions with --metrics.detail), "
            "and the limits.",
            "s",
        )
        .with_target(query(f"max({JITTER_JUDGED}{sel(V)})", "A", "judged"))
        .with_target(
            query(f"max by (method, direction) (desanet_jitter_seconds{sel(V)})", "B", "{{method}} {{direction}}")
        )
        .override_by_name("judged", [prop("custom.lineWidth", 3)])
    )
    return with_limits(p, "jitter", "C")


def _loss() -> timeseries.Panel:
    p = (
        ts(
            "Loss",
            "Loss per method and direction over the last window (ICMP's is the verdict's), the worst 200 ms burst, "
            "and the limits.",
            "percentunit",
        )
        .with_target(query(f"max by (method, direction) (desanet_loss_ratio{sel(V)})", "A", "{{method}} {{direction}}"))
        .with_target(query(f"max by (method) (desanet_burst_loss_ratio{sel(V)})", "B", "{{method}} worst 200 ms"))
        .min(0)
    )
    return with_limits(p, "loss", "C")


def _delay_variation() -> timeseries.Panel:
    return (
        ts(
            "Delay variation",
            "RFC 5481: mean |IPDV| and PDV (p99 − min) per method and direction (with --metrics.detail).",
            "s",
        )
        .with_target(
            query(f"max by (method, direction) (desanet_ipdv_seconds{sel(V)})", "A", "IPDV {{method}} {{direction}}")
        )
        .with_target(
            query(f"max by (method, direction) (desanet_pdv_seconds{sel(V)})", "B", "PDV {{method}} {{direction}}")
        )
    )


# ------------------------------------------------------------------------------------------------ capacity
def _throughput() -> timeseries.Panel:
    need = (
        'max by (profile, factor, level) (profile:desanet_profile_threshold:max{factor=~"down|up"} '
        f"and on (profile) {profile_rank(MINE)}) * 8"
    )
    return (
        ts(
            "Throughput tests",
            "Goodput of the scheduled tests (a few a day: each point holds until the next test; a result over a "
            "day old no longer counts and is not shown), what each selected profile needs (orange: at-risk "
            "limit, red: not-ready), and with --metrics.detail the wire rate and the contracted rate.",
            "bps",
        )
        .with_target(
            query(f"max by (direction) (desanet_throughput_bytes_per_second{sel(V)}) * 8", "A", "goodput {{direction}}")
        )
        .with_target(
            query(
                f"max by (direction) (desanet_throughput_link_bytes_per_second{sel(V)}) * 8", "B", "wire {{direction}}"
            )
        )
        .with_target(
            query(
                f"max by (direction) (desanet_village_contracted_bytes_per_second{sel(V)}) * 8",
                "C",
                "contracted {{direction}}",
            )
        )
        .with_target(query(need, "D", "limit {{profile}} {{factor}} {{level}}"))
        .line_interpolation(cm.LineInterpolation.STEP_AFTER)
        .show_points(cm.VisibilityMode.ALWAYS)
        .point_size(5)
        .override_by_regexp(
            "contracted .*", [prop("custom.lineStyle", {"fill": "dot"}), prop("custom.showPoints", "never")]
        )
        .override_by_regexp("limit .* at_risk", limit_line(AT_RISK_COLOUR))
        .override_by_regexp("limit .* not_ready", limit_line(NOT_READY_COLOUR))
    )


def _rate(metric: str) -> str:
    """Per-second rate of a router counter; a duplicate target's copy is merged, not drawn twice."""
    return f"max without (instance, job) (rate({metric}{sel(V)}[$__rate_interval]))"


SPEED = f"max by (interface) (desanet_interface_speed_bytes_per_second{sel(V)})"


def _interface_traffic() -> timeseries.Panel:
    return (
        ts("Interface traffic", "Router interface rates from SNMP (ifHC octets × 8) against interface capacity.", "bps")
        .with_target(query(f"{_rate('desanet_interface_received_bytes_total')} * 8", "A", "{{interface}} in"))
        .with_target(query(f"{_rate('desanet_interface_transmitted_bytes_total')} * 8", "B", "{{interface}} out"))
        .with_target(query(f"{SPEED} * 8", "C", "{{interface}} capacity"))
        .override_by_regexp(".* capacity", limit_line("#8f8f8f"))
    )


def _utilisation() -> timeseries.Panel:
    speed = f"on (interface) ({SPEED} > 0)"
    return (
        ts(
            "Utilisation",
            "Interface rate as a share of its capacity (ifHighSpeed); dashed: InterfaceUtilisationHigh's 80 %.",
            "percentunit",
        )
        .with_target(query(f"{_rate('desanet_interface_received_bytes_total')} / {speed}", "A", "{{interface}} in"))
        .with_target(query(f"{_rate('desanet_interface_transmitted_bytes_total')} / {speed}", "B", "{{interface}} out"))
        .min(0)
        .thresholds(steps((None, "green"), (0.8, AT_RISK_COLOUR)))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
    )


def _errors() -> timeseries.Panel:
    return (
        ts(
            "Errors and discards",
            "Interface errors per second (inbound; outbound and discards with --metrics.detail).",
            "pps",
        )
        .with_target(query(_rate("desanet_interface_errors_total"), "A", "{{interface}} errors {{direction}}"))
        .with_target(query(_rate("desanet_interface_discards_total"), "B", "{{interface}} discards {{direction}}"))
        .min(0)
    )


def _interface_status() -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title("Interface status")
        .description("ifOperStatus of each router interface.")
        .with_target(query(f"max by (interface) (desanet_interface_up{sel(V)})", "A", "{{interface}}"))
        .mappings(
            [
                dm.ValueMap(
                    options={
                        "1": dm.ValueMappingResult(text="up", color="green", index=0),
                        "0": dm.ValueMappingResult(text="down", color=NOT_READY_COLOUR, index=1),
                    }
                )
            ]
        )
        .color_scheme(thresholds_colour())
        .thresholds(steps((None, NOT_READY_COLOUR), (1, "green")))
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
    )


# ------------------------------------------------------------------------------------------------ optics
OPTICS = lower_is_worse(*OPTICAL_DBM)
TREND = f"max by (interface) (predict_linear(desanet_optical_rx_power_dbm{sel(V)}[1d], 7 * 86400))"


def _optical_power() -> timeseries.Panel:
    rx = f"max by (interface) (desanet_optical_rx_power_dbm{sel(V)})"
    return (
        ts(
            "Optical power",
            "SFP receive power (and transmit with --metrics.detail); where receive power is heading: its value 7 "
            "days on, from a straight line through the last day; and the module's warning (orange) and critical "
            "(red) thresholds from the rules (-25 / -27 dBm unless overridden for the village).",
            "dBm",
        )
        .with_target(query(rx, "A", "{{interface}} rx"))
        .with_target(query(f"max by (interface) (desanet_optical_tx_power_dbm{sel(V)})", "B", "{{interface}} tx"))
        .with_target(query(TREND, "C", "{{interface}} rx in 7 d (trend)"))
        .with_target(query(f"max by (interface) ({OPTICAL_WARNING}{sel(V)})", "D", "{{interface}} warning"))
        .with_target(query(f"max by (interface) ({OPTICAL_CRITICAL}{sel(V)})", "E", "{{interface}} critical"))
        .override_by_regexp(".*trend.*", [prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})])
        .override_by_regexp(".* warning", limit_line(AT_RISK_COLOUR))
        .override_by_regexp(".* critical", limit_line(NOT_READY_COLOUR))
    )


def _optical_forecast() -> stat.Panel:
    return small_stat(
        "Rx power in 7 days",
        "predict_linear over the last day: what receive power will be in a week if the drift goes on; orange "
        "below -25, red below -27 dBm (the rules' defaults).",
        TREND,
        "{{interface}}",
        "dBm",
        OPTICS,
    ).decimals(1)


def _optical_module() -> table.Panel:
    def now(metric: str) -> str:
        return f"max by (interface) ({metric}{sel(V)})"

    t = Table(
        labels=[("interface", "Interface")],
        columns=[
            Column(
                "Rx power", now("desanet_optical_rx_power_dbm"), unit="dBm", decimals=1, properties=coloured(OPTICS)
            ),
            Column(
                "Rx signal",
                now("desanet_optical_rx_loss"),
                properties=(
                    prop(
                        "mappings",
                        [
                            dm.ValueMap(
                                options={
                                    "0": dm.ValueMappingResult(text="ok", color="green", index=0),
                                    "1": dm.ValueMappingResult(text="NO LIGHT", color=NOT_READY_COLOUR, index=1),
                                }
                            )
                        ],
                    ),
                    prop("custom.cellOptions", {"type": "color-text"}),
                ),
            ),
            Column("Temperature", now("desanet_optical_temperature_celsius"), unit="celsius"),
            Column("Bias", now("desanet_optical_bias_amperes"), unit="amp"),
            Column("Supply", now("desanet_optical_voltage_volts"), unit="volt"),
        ],
    )
    return t.build(
        table.Panel()
        .title("Optical module now")
        .description("Receive power and signal of each SFP; its DDM readings with --metrics.detail.")
    )


# ------------------------------------------------------------------------------------------------ path
def _path() -> table.Panel:
    t = Table(
        labels=[("ttl", "Hop"), ("address", "Address")],
        columns=[
            Column("RTT (median)", f"max by (ttl, address) (desanet_trace_hop_rtt_seconds{sel(V)})", unit="s"),
            Column(
                "Loss",
                f"max by (ttl, address) (desanet_trace_hop_loss_ratio{sel(V)})",
                unit="percentunit",
                properties=coloured(factor_thresholds("loss")),
            ),
        ],
        sort=("Hop", False),
        number_labels=("ttl",),
    )
    return t.build(
        table.Panel()
        .title("Path")
        .description("Each hop of the last path trace toward the village router (with --metrics.detail).")
    )


def _degraded_hop() -> stat.Panel:
    fine = 'label_replace(vector(0), "address", "no degraded hop found", "", "")'
    expr = f"max by (address) (desanet_trace_degraded_hop{sel(V)}) or on () {fine}"
    return (
        stat.Panel()
        .title("First degraded hop")
        .description("TTL of the first hop where latency or loss steps up in the last trace; 'none' when none does.")
        .with_target(query(expr, "A", "{{address}}"))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .mappings([dm.ValueMap(options={"0": dm.ValueMappingResult(text="none", color="green", index=0)})])
        .thresholds(steps((None, "green"), (1, AT_RISK_COLOUR)))
        .color_scheme(thresholds_colour())
        .decimals(0)
    )


# ------------------------------------------------------------------------------------------------ probes
def _probes() -> table.Panel:
    def by_probe(expr: str) -> str:
        return f"max by (probe) ({expr})"

    t = Table(
        labels=[("probe", "Probe")],
        columns=[
            Column(
                "Last run",
                by_probe(f"desanet_probe_success{sel(V)}"),
                properties=(
                    prop(
                        "mappings",
                        [
                            dm.ValueMap(
                                options={
                                    "1": dm.ValueMappingResult(text="ok", color="green", index=0),
                                    "0": dm.ValueMappingResult(text="FAILED", color=NOT_READY_COLOUR, index=1),
                                }
                            )
                        ],
                    ),
                    prop("custom.cellOptions", {"type": "color-background", "mode": "basic"}),
                ),
            ),
            Column(
                "Failures in range",
                by_probe(f"increase(desanet_probe_failures_total{sel(V)}[$__range])"),
                decimals=0,
                properties=coloured(steps((None, "text"), (1, AT_RISK_COLOUR))),
            ),
            Column("Ago", by_probe(f"time() - desanet_probe_last_run_timestamp_seconds{sel(V)}"), unit="s"),
            Column("Took", by_probe(f"desanet_probe_duration_seconds{sel(V)}"), unit="s"),
        ],
        sort=("Probe", False),
    )
    return t.build(
        table.Panel()
        .title("Probes")
        .description(
            "The last run of each probe and its failures over the time range (the trace probe, and when each "
            "ran and how long it took, with --metrics.detail)."
        )
    )


def _alerts() -> table.Panel:
    t = Table(
        labels=[("alertname", "Alert"), ("severity", "Severity"), ("profile", "Profile"), ("interface", "Interface")],
        columns=[
            Column("Firing", f"group without (instance, job) (ALERTS{sel(FIRING, DESANET_ALERTS, V)})", hidden=True)
        ],
        drop=("Time", "job", "instance", "__name__", "alertstate", "village", "kecamatan"),
    )
    return t.build(table.Panel().title("Firing alerts").description("desanet's alerts firing now for this village."))
