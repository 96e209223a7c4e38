"""Render every dashboard to the JSON Grafana provisions, and compare it with what is committed.

The JSON under dashboards/json/ is generated, never edited: `desanet dashboards build` rewrites it and
`desanet dashboards build --check` (and tests/test_dashboards.py) fails when it differs from the generator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

JSON_DIR = Path(__file__).resolve().parent / "json"


def _builders() -> dict[str, Callable[[], Any]]:
    from desanet.dashboards import overview, sessions, village

    return {
        "desanet-overview.json": overview.build,
        "desanet-village.json": village.build,
        "desanet-sessions.json": sessions.build,
    }


def render() -> dict[str, str]:
    """File name → JSON text (sorted keys, 2-space indent, trailing newline) for every dashboard."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    out: dict[str, str] = {}
    for name, build in _builders().items():
        text = JSONEncoder(sort_keys=True, indent=2).encode(build().build())
        # Round-trip through json so the text depends only on the data, not on the SDK's encoder quirks.
        out[name] = json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    return out


def write(directory: Path = JSON_DIR) -> list[Path]:
    """Write every dashboard; return the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed: list[Path] = []
    for name, text in render().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def check(directory: Path = JSON_DIR) -> list[str]:
    """Problems that make the directory differ from the generator's output (empty when up to date)."""
    problems: list[str] = []
    rendered = render()
    for name, text in rendered.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from the generator's output")
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        if path.name not in rendered:
            problems.append(f"{path}: not produced by the generator")
    return problems
