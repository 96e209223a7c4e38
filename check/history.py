"""The village's last week at this hour, from Prometheus (`--prometheus`): the one part of the check that
asks a server instead of the network."""

from __future__ import annotations

import contextlib
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from desanet.check.report import HISTORY_DAYS, HISTORY_TIMEOUT, HistoryDay, HistoryError

if TYPE_CHECKING:
    pass


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


def fetch_history(
    url: str, village: str, profile: str, now: datetime, *, days: int = HISTORY_DAYS, timeout: float = HISTORY_TIMEOUT
) -> list[HistoryDay]:
    """How the village did around this time of day on each of the last `days` days, from Prometheus's HTTP API.

    One query_range per metric, step one day, evaluated at now − N days + 30 min over a 1 h window: the hour
    centred on this time of day. `timeout` bounds the whole fetch. Raises HistoryError (unreachable or
    bad_answer)."""
    until = time.monotonic() + timeout
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise HistoryError("unreachable", f"{url!r} is not an http(s) URL")
    end = now.timestamp() - 86400 + 1800
    start = end - (days - 1) * 86400
    series: dict[str, dict[float, float]] = {}
    for name, query in history_queries(village, profile).items():
        qs = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "86400"})
        try:
            left = max(0.05, until - time.monotonic())
            with urllib.request.urlopen(f"{base}/api/v1/query_range?{qs}", timeout=left) as resp:
                answer = json.loads(resp.read(4 << 20))
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read(1 << 20))
            except ValueError:
                raise HistoryError("bad_answer", f"HTTP {exc.code}") from None
            if answer.get("status") != "success":
                raise HistoryError("bad_answer", f"HTTP {exc.code}: {answer.get('error', '')}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HistoryError("unreachable", str(reason)) from None
        except ValueError as exc:
            raise HistoryError("bad_answer", f"not JSON: {exc}") from None
        series[name] = _range_values(answer)
    out = []
    for n in range(days, 0, -1):
        ts = end - (n - 1) * 86400

        def near(values: dict[float, float], ts: float = ts) -> float | None:
            return next((v for k, v in values.items() if abs(k - ts) < 60), None)

        out.append(HistoryDay(now - timedelta(days=n), n, near(series["ready"]), near(series["loss"])))
    return out
