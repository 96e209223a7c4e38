"""Village drill-down: why is this village (not) ready, and since when.

Top to bottom: the verdict and its inputs now; SmokePing-style latency (median line in the min–max and
median–p95 smoke, loss as red bars on the right axis) with the RTT histogram as a heatmap; jitter, loss and
delay variation per method and direction against the profile's limits; throughput against contract and
need; interface traffic against capacity, utilisation, errors and status; optical power with its 7-day
trend; the path's hops; and the health of each probe.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard, heatmap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm

from desanet.dashboards import variables
from desanet.dashboards.panels import (
    Column,
    Grid,
    Table,
    board,
    fixed_colour,
    prop,
    query,
    steps,
    thresholds_colour,
    verdict_mappings,
    verdict_thresholds,
)
from desanet.dashboards.promql import ONE_VILLAGE, PROFILE, eq, match, sel, verdict_rank

V = ONE_VILLAGE
ICMP = eq("method", "icmp")
ROUND_TRIP = eq("direction", "round_trip")
NEEDS = f"{match('factor', 'down|up')}, {eq('bound', 'min')}"
SMOKE = "#8f8f8f"
LIMIT_PROPS = [
    prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
    prop("color", {"mode": "fixed", "fixedColor": "#e0752d"}),
    prop("custom.fillOpacity", 0),
]


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
    g.row("Probes")
    g.add(_probes(), 24, 6)
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


def limit(factor: str, bound: str = "max", scale: str = "") -> str:
    """The selected profiles' threshold for `factor` as a flat line (exported by desanet, per profile)."""
    m = sel(V, PROFILE, eq("factor", factor), eq("bound", bound))
    return f"max by (profile) (desanet_video_threshold{m}){scale}"


def small_stat(title: str, description: str, expr: str, legend: str, unit: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .with_target(query(expr, "A", legend))
        .unit(unit)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.VALUE)
        .color_scheme(fixed_colour("text"))
    )


# ------------------------------------------------------------------------------------------------ now
def _now(g: Grid) -> None:
    verdict = (
        stat.Panel()
        .title("Verdict")
        .description("Readiness for each video profile the village needs (its own and its sessions').")
        .with_target(query(verdict_rank(f"{V}, {PROFILE}", "profile"), "A", "{{profile}}"))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .mappings(verdict_mappings())
        .thresholds(verdict_thresholds())
        .color_scheme(thresholds_colour())
    )
    g.add(verdict, 6, 4)
    mos = (
        small_stat(
            "MOS",
            "Mean opinion score the E-model gives the measured delay, jitter and loss (4.0+ satisfied).",
            f"min(desanet_video_mos{sel(V, PROFILE)})",
            "MOS",
            "none",
        )
        .decimals(2)
        .thresholds(steps((None, "red"), (3.6, "orange"), (4.0, "green")))
        .color_scheme(thresholds_colour())
    )
    g.add(mos, 3, 4)
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
    g.add(limiting, 5, 4)
    g.add(
        small_stat(
            "RTT median",
            "ICMP round-trip time, median of the last window.",
            f"desanet_rtt_window_seconds{sel(V, ICMP, eq('statistic', 'p50'))}",
            "median",
            "s",
        ),
        3,
        4,
    )
    g.add(
        small_stat(
            "Loss",
            "ICMP loss over the last window.",
            f"desanet_loss_ratio{sel(V, ICMP, ROUND_TRIP)}",
            "loss",
            "percentunit",
        ),
        3,
        4,
    )
    nxt = (
        stat.Panel()
        .title("Next session")
        .description("When the village's next scheduled session starts.")
        .with_target(query(f"desanet_session_start_timestamp_seconds{sel(V)} * 1000", "A", "{{session}}"))
        .unit("dateTimeFromNow")
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    g.add(nxt, 4, 4)


# ------------------------------------------------------------------------------------------------ latency
def _smokeping() -> timeseries.Panel:
    def w(stat_: str) -> str:
        return f"desanet_rtt_window_seconds{sel(V, ICMP, eq('statistic', stat_))}"

    p = (
        ts(
            "Latency (SmokePing view)",
            "ICMP RTT over each window: the median line inside grey smoke (light: min–max, dark: median–p95); "
            "more smoke, more jitter. Red bars on the right axis: loss.",
            "s",
        )
        .with_target(query(w("max"), "A", "max"))
        .with_target(query(w("p95"), "B", "p95"))
        .with_target(query(w("p50"), "C", "median"))
        .with_target(query(w("min"), "D", "min"))
        .with_target(query(f"desanet_loss_ratio{sel(V, ICMP, ROUND_TRIP)}", "E", "loss"))
        .override_by_name(
            "max",
            [
                prop("custom.fillBelowTo", "min"),
                prop("custom.fillOpacity", 20),
                prop("custom.lineWidth", 0),
                prop("color", {"mode": "fixed", "fixedColor": SMOKE}),
            ],
        )
        .override_by_name(
            "p95",
            [
                prop("custom.fillBelowTo", "median"),
                prop("custom.fillOpacity", 40),
                prop("custom.lineWidth", 0),
                prop("color", {"mode": "fixed", "fixedColor": SMOKE}),
            ],
        )
        .override_by_name("min", [prop("custom.lineWidth", 0), prop("color", {"mode": "fixed", "fixedColor": SMOKE})])
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
                prop("color", {"mode": "fixed", "fixedColor": "red"}),
            ],
        )
    )
    return p


def _rtt_heatmap() -> heatmap.Panel:
    expr = f"sum by (le) (increase(desanet_rtt_seconds_bucket{sel(V, ICMP)}[$__rate_interval]))"
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
    hist = f"histogram_quantile(0.95, sum by (le, method) (rate(desanet_rtt_seconds_bucket{sel(V)}[$__rate_interval])))"
    return (
        ts(
            "RTT by method",
            "Median and p95 of each method's last window (ICMP continuous, STAMP bursts), the p95 from the "
            "histogram, and the profiles' RTT limit.",
            "s",
        )
        .with_target(
            query(f"desanet_rtt_window_seconds{sel(V, match('statistic', 'p50|p95'))}", "A", "{{method}} {{statistic}}")
        )
        .with_target(query(hist, "B", "{{method}} p95 (histogram)"))
        .with_target(query(limit("rtt"), "C", "limit {{profile}}"))
        .override_by_regexp("limit .*", LIMIT_PROPS)
    )


def _jitter() -> timeseries.Panel:
    return (
        ts(
            "Jitter",
            "RFC 3550 jitter per method and direction (STAMP splits down = toward the village, up = back).",
            "s",
        )
        .with_target(query(f"desanet_jitter_seconds{sel(V)}", "A", "{{method}} {{direction}}"))
        .with_target(query(limit("jitter"), "B", "limit {{profile}}"))
        .override_by_regexp("limit .*", LIMIT_PROPS)
    )


def _loss() -> timeseries.Panel:
    return (
        ts(
            "Loss",
            "Loss per method and direction over the last window, the worst 200 ms burst, and the limit.",
            "percentunit",
        )
        .with_target(query(f"desanet_loss_ratio{sel(V)}", "A", "{{method}} {{direction}}"))
        .with_target(query(f"desanet_burst_loss_ratio{sel(V)}", "B", "{{method}} worst 200 ms"))
        .with_target(query(limit("loss"), "C", "limit {{profile}}"))
        .override_by_regexp("limit .*", LIMIT_PROPS)
        .min(0)
    )


def _delay_variation() -> timeseries.Panel:
    return (
        ts("Delay variation", "RFC 5481: mean |IPDV| and PDV (p99 − min) per method and direction.", "s")
        .with_target(query(f"desanet_ipdv_seconds{sel(V)}", "A", "IPDV {{method}} {{direction}}"))
        .with_target(query(f"desanet_pdv_seconds{sel(V)}", "B", "PDV {{method}} {{direction}}"))
    )


# ------------------------------------------------------------------------------------------------ capacity
def _throughput() -> timeseries.Panel:
    return (
        ts(
            "Throughput tests",
            "Goodput and wire rate of the scheduled tests (a few a day: each point holds until the next test), "
            "the contracted rate and what the profiles need.",
            "bps",
        )
        .with_target(query(f"desanet_throughput_bytes_per_second{sel(V)} * 8", "A", "goodput {{direction}}"))
        .with_target(query(f"desanet_throughput_link_bytes_per_second{sel(V)} * 8", "B", "wire {{direction}}"))
        .with_target(query(f"desanet_village_contracted_bytes_per_second{sel(V)} * 8", "C", "contracted {{direction}}"))
        .with_target(
            query(
                f"max by (profile, factor) (desanet_video_threshold{sel(V, PROFILE, NEEDS)}) * 8",
                "D",
                "limit {{profile}} {{factor}}",
            )
        )
        .line_interpolation(cm.LineInterpolation.STEP_AFTER)
        .show_points(cm.VisibilityMode.ALWAYS)
        .point_size(5)
        .override_by_regexp(
            "contracted .*", [prop("custom.lineStyle", {"fill": "dot"}), prop("custom.showPoints", "never")]
        )
        .override_by_regexp("limit .*", [*LIMIT_PROPS, prop("custom.showPoints", "never")])
    )


def _rate(metric: str) -> str:
    return f"rate({metric}{sel(V)}[$__rate_interval])"


def _interface_traffic() -> timeseries.Panel:
    return (
        ts("Interface traffic", "Router interface rates from SNMP (ifHC octets × 8) against interface capacity.", "bps")
        .with_target(query(f"{_rate('desanet_interface_received_bytes_total')} * 8", "A", "{{interface}} in"))
        .with_target(query(f"{_rate('desanet_interface_transmitted_bytes_total')} * 8", "B", "{{interface}} out"))
        .with_target(query(f"desanet_interface_speed_bytes_per_second{sel(V)} * 8", "C", "{{interface}} capacity"))
        .override_by_regexp(".* capacity", LIMIT_PROPS)
    )


def _utilisation() -> timeseries.Panel:
    speed = f"(desanet_interface_speed_bytes_per_second{sel(V)} > 0)"
    return (
        ts("Utilisation", "Interface rate as a share of its capacity (ifHighSpeed).", "percentunit")
        .with_target(query(f"{_rate('desanet_interface_received_bytes_total')} / {speed}", "A", "{{interface}} in"))
        .with_target(query(f"{_rate('desanet_interface_transmitted_bytes_total')} / {speed}", "B", "{{interface}} out"))
        .min(0)
        .thresholds(steps((None, "green"), (0.7, "orange"), (0.9, "red")))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
    )


def _errors() -> timeseries.Panel:
    return (
        ts("Errors and discards", "Interface errors (in/out) and inbound discards per second.", "pps")
        .with_target(query(_rate("desanet_interface_errors_total"), "A", "{{interface}} errors {{direction}}"))
        .with_target(query(_rate("desanet_interface_discards_total"), "B", "{{interface}} discards {{direction}}"))
        .min(0)
    )


def _interface_status() -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title("Interface status")
        .description("ifOperStatus of each router interface.")
        .with_target(query(f"desanet_interface_up{sel(V)}", "A", "{{interface}}"))
        .mappings(
            [
                dm.ValueMap(
                    options={
                        "1": dm.ValueMappingResult(text="up", color="green", index=0),
                        "0": dm.ValueMappingResult(text="down", color="red", index=1),
                    }
                )
            ]
        )
        .color_scheme(thresholds_colour())
        .thresholds(steps((None, "red"), (1, "green")))
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
    )


# ------------------------------------------------------------------------------------------------ optics
def _optical_power() -> timeseries.Panel:
    trend = f"predict_linear(desanet_optical_rx_power_dbm{sel(V)}[1d], 7 * 86400)"
    return (
        ts(
            "Optical power",
            "SFP receive and transmit power; the dashed line is where receive power is heading: its value 7 "
            "days on, from a straight line through the last day.",
            "dBm",
        )
        .with_target(query(f"desanet_optical_rx_power_dbm{sel(V)}", "A", "{{interface}} rx"))
        .with_target(query(f"desanet_optical_tx_power_dbm{sel(V)}", "B", "{{interface}} tx"))
        .with_target(query(trend, "C", "{{interface}} rx in 7 d (trend)"))
        .override_by_regexp(".*trend.*", [prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})])
    )


def _optical_forecast() -> stat.Panel:
    return small_stat(
        "Rx power in 7 days",
        "predict_linear over the last day: what receive power will be in a week if the drift goes on.",
        f"predict_linear(desanet_optical_rx_power_dbm{sel(V)}[1d], 7 * 86400)",
        "{{interface}}",
        "dBm",
    ).decimals(1)


def _optical_module() -> table.Panel:
    def now(metric: str) -> str:
        return f"max by (interface) ({metric}{sel(V)})"

    t = Table(
        labels=[("interface", "Interface")],
        columns=[
            Column("Temperature", now("desanet_optical_temperature_celsius"), unit="celsius"),
            Column("Bias", now("desanet_optical_bias_amperes"), unit="amp"),
            Column("Supply", now("desanet_optical_voltage_volts"), unit="volt"),
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
                                    "1": dm.ValueMappingResult(text="LOST", color="red", index=1),
                                }
                            )
                        ],
                    ),
                    prop("custom.cellOptions", {"type": "color-text"}),
                ),
            ),
        ],
    )
    return t.build(table.Panel().title("Optical module now").description("DDM readings of each SFP (MIKROTIK-MIB)."))


# ------------------------------------------------------------------------------------------------ path
def _path() -> table.Panel:
    t = Table(
        labels=[("ttl", "Hop"), ("address", "Address")],
        columns=[
            Column("RTT (median)", f"max by (ttl, address) (desanet_trace_hop_rtt_seconds{sel(V)})", unit="s"),
            Column("Loss", f"max by (ttl, address) (desanet_trace_hop_loss_ratio{sel(V)})", unit="percentunit"),
        ],
        sort=("Hop", False),
        number_labels=("ttl",),
    )
    return t.build(
        table.Panel()
        .title("Path")
        .description("Each hop of the last path trace toward the village router, with its RTT and loss.")
    )


def _degraded_hop() -> stat.Panel:
    fine = f'label_replace(max(desanet_trace_hops{sel(V)}) * 0, "address", "whole path fine", "", "")'
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
        .thresholds(steps((None, "green"), (1, "orange")))
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
                                    "0": dm.ValueMappingResult(text="FAILED", color="red", index=1),
                                }
                            )
                        ],
                    ),
                    prop("custom.cellOptions", {"type": "color-background", "mode": "basic"}),
                ),
            ),
            Column("Ago", by_probe(f"time() - desanet_probe_last_run_timestamp_seconds{sel(V)}"), unit="s"),
            Column("Took", by_probe(f"desanet_probe_duration_seconds{sel(V)}"), unit="s"),
            Column("Failures", by_probe(f"desanet_probe_failures_total{sel(V)}"), decimals=0),
        ],
        sort=("Probe", False),
    )
    return t.build(table.Panel().title("Probes").description("The last run of each probe for this village."))
