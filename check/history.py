"""The village's last week at this hour and its last rehearsal call, from Prometheus (`--prometheus`): the one
part of the check that asks a server instead of the network."""

from __future__ import annotations

import contextlib
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from typing import Any, Final

from desanet.check.report import (
    CALL_TIMEOUT,
    HISTORY_DAYS,
    HISTORY_TIMEOUT,
    CallDirection,
    HistoryDay,
    HistoryError,
    LastCall,
)
from desanet.verdict.call_outcome import OUTCOMES


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def history_queries(village: str, profile: str) -> dict[str, str]:
    """PromQL for the hour ending at each evaluation time (evaluated half an hour after "now" on earlier days)."""
    v, p = _promql_string(village), _promql_string(profile)
    return {
        # the verdict's "ready" state (1 or 0): desanet_video_ready says the same but is --metrics.detail only
        "ready": f'max(avg_over_time(desanet_video_verdict{{village={v},profile={p},verdict="ready"}}[1h]))',
        "loss": (f'max(avg_over_time(desanet_loss_ratio{{village={v},method="icmp",direction="round_trip"}}[1h]))'),
    }


def _range_values(answer: Any) -> dict[float, float]:
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise HistoryError("bad_answer", f"status {answer.get('status') if isinstance(answer, dict) else '?'}")
    result = (answer.get("data") or {}).get("result")
    if not isinstance(result, list):
        raise HistoryError("bad_answer", "no result list")
    out: dict[float, float] = {}
    for series in result[:1]:
        for pair in series.get("values") or []:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                value = float(pair[1])
                if math.isfinite(value):
                    out[float(pair[0])] = value
    return out


def _base(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise HistoryError("unreachable", f"{url!r} is not an http(s) URL")
    return url.rstrip("/")


def _api(base: str, path: str, params: dict[str, str], until: float) -> Any:
    """One GET of Prometheus's HTTP API, answered by `until` (time.monotonic()); its JSON, or HistoryError."""
    qs = urllib.parse.urlencode(params)
    try:
        left = max(0.05, until - time.monotonic())
        with urllib.request.urlopen(f"{base}{path}?{qs}", timeout=left) as resp:
            return json.loads(resp.read(4 << 20))
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read(1 << 20))
        except ValueError:
            raise HistoryError("bad_answer", f"HTTP {exc.code}") from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            error = answer.get("error", "") if isinstance(answer, dict) else ""
            raise HistoryError("bad_answer", f"HTTP {exc.code}: {error}") from None
        return answer
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HistoryError("unreachable", str(reason)) from None
    except ValueError as exc:
        raise HistoryError("bad_answer", f"not JSON: {exc}") from None


def fetch_history(
    url: str, village: str, profile: str, now: datetime, *, days: int = HISTORY_DAYS, timeout: float = HISTORY_TIMEOUT
) -> list[HistoryDay]:
    """How the village did around this time of day on each of the last `days` days, from Prometheus's HTTP API.

    One query_range per metric, step one day, evaluated at now − N days + 30 min over a 1 h window: the hour
    centred on this time of day. `timeout` bounds the whole fetch. Raises HistoryError (unreachable or
    bad_answer)."""
    until = time.monotonic() + timeout
    base = _base(url)
    end = now.timestamp() - 86400 + 1800
    start = end - (days - 1) * 86400
    series: dict[str, dict[float, float]] = {}
    for name, query in history_queries(village, profile).items():
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "86400"}
        series[name] = _range_values(_api(base, "/api/v1/query_range", params, until))
    out = []
    for n in range(days, 0, -1):
        ts = end - (n - 1) * 86400

        def near(values: dict[float, float], ts: float = ts) -> float | None:
            return next((v for k, v in values.items() if abs(k - ts) < 60), None)

        out.append(HistoryDay(now - timedelta(days=n), n, near(series["ready"]), near(series["loss"])))
    return out


# ---------------------------------------------------------------------------------------------- last call
# The exporter's call families (exporter/call_metrics.py, agreed with it for issue 14) → CallDirection's field
# for each figure and the factor to its unit (the exporter's rates are bytes per second, the check's bits).
CALL_FIGURES: Final[dict[str, tuple[str, float]]] = {
    "desanet_call_frames_per_second": ("frames_per_second", 1.0),
    "desanet_call_video_height_pixels": ("video_height_pixels", 1.0),
    "desanet_call_freeze_ratio": ("freeze_ratio", 1.0),
    "desanet_call_audio_concealment_ratio": ("audio_concealment_ratio", 1.0),
    "desanet_call_video_loss_ratio": ("video_loss_ratio", 1.0),
    "desanet_call_jitter_buffer_delay_seconds": ("jitter_buffer_delay_seconds", 1.0),
    "desanet_call_video_received_bytes_per_second": ("video_received_bits_per_second", 8.0),
}
CALL_OUTCOME = "desanet_call_outcome"
CALL_INFO = "desanet_call_info"
CALL_SETUP = "desanet_call_setup_seconds"
CALL_LAST = "desanet_call_last_timestamp_seconds"
CALL_FAMILIES: Final = (CALL_OUTCOME, CALL_INFO, CALL_SETUP, CALL_LAST, *CALL_FIGURES)


def last_call_query(village: str) -> str:
    """Every call series of the village in one instant query."""
    names = "|".join(CALL_FAMILIES)
    return f'{{__name__=~"{names}",village={_promql_string(village)}}}'


def fetch_last_call(url: str, village: str, now: datetime, *, timeout: float = CALL_TIMEOUT) -> LastCall | None:
    """The village's last rehearsal call as Prometheus has it now, or None when it has none (the exporter keeps
    a call's series for 24 h). An HA pair's twin series count once (the highest value, as the dashboards read
    them). Raises HistoryError (unreachable, or bad_answer for an answer that is not a call)."""
    answer = _api(_base(url), "/api/v1/query", {"query": last_call_query(village)}, time.monotonic() + timeout)
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise HistoryError("bad_answer", f"status {answer.get('status') if isinstance(answer, dict) else '?'}")
    result = (answer.get("data") or {}).get("result")
    if not isinstance(result, list):
        raise HistoryError("bad_answer", "no result list")
    values: dict[tuple[str, str], float] = {}  # (family, direction) → value
    info: dict[str, dict[str, str]] = {}
    for series in result:
        labels = series.get("metric") if isinstance(series, dict) else None
        try:
            value = float(series["value"][1])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        if not isinstance(labels, dict) or not math.isfinite(value):
            continue
        name, direction = str(labels.get("__name__", "")), str(labels.get("direction", ""))
        if name == CALL_INFO:
            info.setdefault(direction, labels)
        else:
            key = (name, direction)
            values[key] = max(value, values.get(key, value))
    ended = values.get((CALL_LAST, ""))
    outcomes = {d: v for (name, d), v in values.items() if name == CALL_OUTCOME}
    if ended is None and not outcomes:
        return None
    if ended is None:
        raise HistoryError("bad_answer", f"{CALL_OUTCOME} without {CALL_LAST}")
    directions: dict[str, CallDirection] = {}
    for d, v in sorted(outcomes.items()):
        if not (v.is_integer() and 0 <= v < len(OUTCOMES)):
            raise HistoryError("bad_answer", f"{CALL_OUTCOME}{{direction={d!r}}} is {v:g}, not 0, 1 or 2")
        figures = {
            field: None if (x := values.get((name, d))) is None else x * scale
            for name, (field, scale) in CALL_FIGURES.items()
        }
        limitation = info.get(d, {}).get("limitation")
        directions[d] = CallDirection(d, OUTCOMES[int(v)], **figures, limitation=limitation)
    profile = next((labels["profile"] for labels in info.values() if labels.get("profile")), None)
    return LastCall(
        ended=datetime.fromtimestamp(ended, now.tzinfo),
        profile=profile,
        setup_seconds=values.get((CALL_SETUP, "")),
        directions=directions,
    )
