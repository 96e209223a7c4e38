"""CLI for the stamp probe (filled in with the probe)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds nothing until probes/stamp.py exists."""
