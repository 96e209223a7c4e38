"""The dashboards' template variables. All come from label_values over desanet's own series, so a
village added to the inventory shows up in the pickers at the next scrape, with no dashboard change."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dm

DATASOURCE_UID = "desanet-prometheus"  # the uid deploy/grafana/provisioning/datasources/desanet.yaml gives
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
ALL = ".*"  # what "All" stands for in `=~` matchers: one short regex instead of every value joined


def datasource() -> dashboard.DatasourceVariable:
    return (
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text="desanet Prometheus", value=DATASOURCE_UID))
    )


def _query(name: str, label: str, expr: str, *, multi: bool) -> dashboard.QueryVariable:
    v = (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(expr)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )
    if multi:
        v = (
            v.multi(True)
            .include_all(True)
            .all_value(ALL)
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    return v


def kecamatan() -> dashboard.QueryVariable:
    return _query("kecamatan", "Kecamatan", "label_values(desanet_village_info, kecamatan)", multi=True)


def village(*, multi: bool) -> dashboard.QueryVariable:
    expr = 'label_values(desanet_village_info{kecamatan=~"$kecamatan"}, village)'
    return _query("village", "Village", expr, multi=multi)


def profile(where: str = "") -> dashboard.QueryVariable:
    expr = (
        f"label_values(desanet_video_verdict{{{where}}}, profile)"
        if where
        else "label_values(desanet_video_verdict, profile)"
    )
    return _query("profile", "Video profile", expr, multi=True)


def session() -> dashboard.QueryVariable:
    expr = "label_values(desanet_session_start_timestamp_seconds, session)"
    return _query("session", "Session", expr, multi=True)
