"""Small helpers over grafana-foundation-sdk: queries, explicit placement, verdict colours, tables.

Why these exist: the SDK leaves a query's refId empty unless told, and its automatic layout lets a panel
overflow the 24-column grid (libs.md §6), so every panel here is placed by `Grid` with an explicit gridPos
and id, and every query goes through `query()` with its refId.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from desanet.dashboards import variables
from desanet.dashboards.promql import LIMITS, VERDICT_COLOUR, VERDICT_TEXT
from desanet.dashboards.variables import DS

GRID_WIDTH = 24
TAGS = ["desanet"]
UIDS = {"overview": "desanet-overview", "village": "desanet-village", "sessions": "desanet-sessions"}


def query(
    expr: str,
    ref: str,
    legend: str = "",
    *,
    instant: bool = False,
    table: bool = False,
    heatmap: bool = False,
    interval: str = "",
) -> prometheus.Dataquery:
    """A Prometheus query with its refId; table format implies an instant query."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref)
    if legend:
        q = q.legend_format(legend)
    if table:
        q = q.format(pm.PromQueryFormat.TABLE)
    elif heatmap:
        q = q.format(pm.PromQueryFormat.HEATMAP)
    q = q.instant() if (instant or table) else q.range()
    if interval:
        q = q.interval(interval)
    return q


def refs() -> Iterable[str]:
    return (chr(ord("A") + i) for i in range(26))


class Grid:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line when a panel would
    not fit, and numbers them. Rows span the grid."""

    def __init__(self, board: dashboard.Dashboard):
        self.board = board
        self.x = 0
        self.y = 0
        self.line_height = 0
        self.next_id = 1

    def _newline(self) -> None:
        self.y += self.line_height
        self.x = 0
        self.line_height = 0

    def row(self, title: str) -> None:
        if self.x:
            self._newline()
        pos = dm.GridPos(h=1, w=GRID_WIDTH, x=0, y=self.y)
        self.board.with_row(dashboard.Row(title).grid_pos(pos).id(self._id()))
        self.y += 1

    def add(self, panel: Any, w: int, h: int) -> None:
        if not 0 < w <= GRID_WIDTH:
            raise ValueError(f"panel width {w} does not fit the grid")
        if self.x + w > GRID_WIDTH:
            self._newline()
        panel.grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y)).id(self._id()).datasource(DS)
        self.board.with_panel(panel)
        self.x += w
        self.line_height = max(self.line_height, h)
        if self.x == GRID_WIDTH:
            self._newline()

    def _id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i


# ------------------------------------------------------------------------------------------------ verdicts
def value_mappings(shown: Mapping[int, tuple[str, str]]) -> list[dm.ValueMapping]:
    """A number shown as its word in its colour, {value: (text, colour)}: a verdict's rank, a call's outcome."""
    return [
        dm.ValueMap(
            options={
                str(value): dm.ValueMappingResult(text=text, color=colour, index=value)
                for value, (text, colour) in shown.items()
            }
        )
    ]


def verdict_mappings() -> list[dm.ValueMapping]:
    return value_mappings({rank: (text, VERDICT_COLOUR[rank]) for rank, text in VERDICT_TEXT.items()})


def verdict_thresholds() -> dashboard.ThresholdsConfig:
    return steps((None, VERDICT_COLOUR[0]), (1, VERDICT_COLOUR[1]), (2, VERDICT_COLOUR[2]), (3, VERDICT_COLOUR[3]))


def steps(*pairs: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in pairs])
    )


def thresholds_colour() -> dashboard.FieldColor:
    return dashboard.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS)


def fixed_colour(colour: str) -> dashboard.FieldColor:
    return dashboard.FieldColor().mode(dm.FieldColorModeId.FIXED).fixed_color(colour)


def coloured_stat(p: stat.Panel, colours: dashboard.ThresholdsConfig | None) -> stat.Panel:
    """A stat's value coloured at its limits, or plain text where it has none (no green that says "fine")."""
    if colours is None:
        return p.color_scheme(fixed_colour("text"))
    return p.thresholds(colours).color_scheme(thresholds_colour())


def prop(key: str, value: object) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val=key, value=value)


AT_RISK_COLOUR = VERDICT_COLOUR[2]
NOT_READY_COLOUR = VERDICT_COLOUR[3]


def higher_is_worse(at_risk: float, not_ready: float) -> dashboard.ThresholdsConfig:
    """Green up to the at-risk limit, orange to the not-ready limit, red beyond (rtt, jitter, loss)."""
    return steps((None, VERDICT_COLOUR[0]), (at_risk, AT_RISK_COLOUR), (not_ready, NOT_READY_COLOUR))


def lower_is_worse(at_risk: float, not_ready: float) -> dashboard.ThresholdsConfig:
    """Red below the not-ready limit, orange below the at-risk limit, green above (MOS, ready share, dBm)."""
    return steps((None, NOT_READY_COLOUR), (not_ready, AT_RISK_COLOUR), (at_risk, VERDICT_COLOUR[0]))


def factor_thresholds(factor: str) -> dashboard.ThresholdsConfig:
    return higher_is_worse(*LIMITS[factor])


def coloured(thresholds: dashboard.ThresholdsConfig, background: bool = False) -> tuple[dm.DynamicConfigValue, ...]:
    """A table column coloured by `thresholds` (its text, or its whole cell)."""
    return (
        prop("thresholds", thresholds.build()),
        prop("color", thresholds_colour().build()),
        prop("custom.cellOptions", {"type": "color-background" if background else "color-text", "mode": "basic"}),
    )


def count_colour(colour: str) -> tuple[dm.DynamicConfigValue, ...]:
    """A count that is grey at 0 and `colour` from 1 (villages at risk, not ready)."""
    return coloured(steps((None, "text"), (1, colour)))


# Dashed limit lines on time series: the at-risk limit orange, the not-ready limit red.
def limit_line(colour: str) -> list[dm.DynamicConfigValue]:
    return [
        prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
        prop("color", {"mode": "fixed", "fixedColor": colour}),
        prop("custom.fillOpacity", 0),
        prop("custom.showPoints", "never"),
    ]


# ------------------------------------------------------------------------------------------------ links
def village_link(slug: str = "${__value.raw}") -> cogbuilder.Builder[dm.DashboardLink]:
    """A data link to the village dashboard for the village `slug` (a cell's value by default), keeping the
    time range and data source."""
    url = (
        f"/d/{UIDS['village']}/desanet-village?var-datasource=${{datasource}}&var-kecamatan=All"
        f"&var-village={slug}&${{__url_time_range}}"
    )
    return dashboard.DashboardLink(f"Village {slug}").type(dm.DashboardLinkType.LINK).url(url)


def kecamatan_link(name: str = "${__value.raw}") -> cogbuilder.Builder[dm.DashboardLink]:
    """A data link to the NOC overview narrowed to one kecamatan, whose table and grid list its villages."""
    url = (
        f"/d/{UIDS['overview']}/desanet-overview?var-datasource=${{datasource}}&var-kecamatan={name}"
        "&${__url_time_range}"
    )
    return dashboard.DashboardLink(f"Kecamatan {name}").type(dm.DashboardLinkType.LINK).url(url)


def session_link() -> cogbuilder.Builder[dm.DashboardLink]:
    url = f"/d/{UIDS['sessions']}/desanet-sessions?var-datasource=${{datasource}}&var-session=${{__value.raw}}"
    return dashboard.DashboardLink("Session ${__value.raw}").type(dm.DashboardLinkType.LINK).url(url)


def board_links(*keys: str) -> list[cogbuilder.Builder[dm.DashboardLink]]:
    titles = {"overview": "NOC overview", "village": "Village", "sessions": "Sessions"}
    return [
        dashboard.DashboardLink(titles[k])
        .type(dm.DashboardLinkType.LINK)
        .url(f"/d/{UIDS[k]}/desanet-{k}")
        .include_vars(True)
        .keep_time(True)
        for k in keys
    ]


# ------------------------------------------------------------------------------------------------ tables
def transform(kind: str, options: object) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val=kind, options=options)


@dataclass(frozen=True)
class Column:
    """One value column of a merged table: an instant query whose value lands under `title`."""

    title: str
    expr: str
    unit: str = ""
    verdict: bool = False  # colour the cell by verdict rank and show the verdict's name
    hidden: bool = False  # used for sorting, then dropped
    decimals: int | None = None
    properties: tuple[dm.DynamicConfigValue, ...] = ()


@dataclass
class Table:
    """Several instant queries joined on their labels (Grafana's merge), renamed, sorted and trimmed."""

    labels: Sequence[tuple[str, str]]  # (label, column title), in display order
    columns: Sequence[Column]
    sort: tuple[str, bool] | None = None  # (column title, descending)
    drop: Sequence[str] = ("Time", "job", "instance", "__name__")
    number_labels: Sequence[str] = ()  # labels holding numbers (e.g. ttl), converted so they sort as numbers
    links: dict[str, list[cogbuilder.Builder[dm.DashboardLink]]] = field(default_factory=dict)

    def build(self, panel: Any) -> Any:
        rename: dict[str, str] = {label: title for label, title in self.labels}
        names = list(refs())
        for ref, col in zip(names, self.columns, strict=False):
            panel.with_target(query(col.expr, ref, table=True))
            rename[f"Value #{ref}" if len(self.columns) > 1 else "Value"] = col.title
        order = {title: i for i, title in enumerate([t for _, t in self.labels] + [c.title for c in self.columns])}
        steps_: list[dm.DataTransformerConfig] = []
        if len(self.columns) > 1:
            steps_.append(transform("merge", {}))
        if self.number_labels:
            steps_.append(convert_to_numbers(self.number_labels))
        if self.sort is not None:
            key = next((k for k, t in rename.items() if t == self.sort[0]), self.sort[0])
            steps_.append(transform("sortBy", {"fields": {}, "sort": [{"field": key, "desc": self.sort[1]}]}))
        exclude = {name: True for name in self.drop}
        exclude.update({k: True for k, t in rename.items() if any(c.hidden and c.title == t for c in self.columns)})
        steps_.append(
            transform(
                "organize",
                {"excludeByName": exclude, "renameByName": rename, "indexByName": _index(rename, order)},
            )
        )
        panel.transformations(steps_)
        for col in self.columns:
            if col.hidden:
                continue
            props: list[dm.DynamicConfigValue] = []
            if col.unit:
                props.append(prop("unit", col.unit))
            if col.decimals is not None:
                props.append(prop("decimals", col.decimals))
            if col.verdict:
                props += [
                    prop("mappings", verdict_mappings()),
                    prop("thresholds", verdict_thresholds().build()),
                    prop("color", thresholds_colour().build()),
                    prop("custom.cellOptions", {"type": "color-background", "mode": "basic"}),
                ]
            props += list(col.properties)
            if props:
                panel.override_by_name(col.title, props)
        for title, links in self.links.items():
            panel.override_by_name(title, [prop("links", [link.build() for link in links])])
        return panel


def _index(rename: dict[str, str], order: dict[str, int]) -> dict[str, int]:
    """organize's indexByName: the original field names, in the order their new titles should appear."""
    return {name: order[title] for name, title in rename.items() if title in order}


def convert_to_numbers(fields: Iterable[str]) -> dm.DataTransformerConfig:
    return transform(
        "convertFieldType",
        {"fields": {}, "conversions": [{"targetField": f, "destinationType": "number"} for f in fields]},
    )


def board(key: str, title: str, description: str, since: str, *links_to: str) -> dashboard.Dashboard:
    """What every desanet dashboard shares: uid, tags, refresh, cursor sync, links to the others, and the
    datasource variable first; each dashboard adds its own variables after it."""

    return (
        dashboard.Dashboard(title)
        .uid(UIDS[key])
        .description(description)
        .tags(TAGS)
        .refresh("1m")
        .time(since, "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .readonly()
        .links(board_links(*links_to))
        .with_variable(variables.datasource())
    )
