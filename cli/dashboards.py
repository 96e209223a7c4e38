"""`desanet dashboards build [--check] [--output DIR]`: the Grafana dashboards, generated from code.

The generator needs grafana-foundation-sdk (the `dashboards` extra, pinned to the Grafana 11.6 line); it is
imported only here, so `desanet serve` never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Grafana dashboards generated from code.", no_args_is_help=True)
    app.add_typer(group, name="dashboards")

    @group.command("build")
    def build(
        check: Annotated[
            bool,
            typer.Option("--check", help="Write nothing; exit 1 if the JSON differs from the generator's output."),
        ] = False,
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="Directory of the JSON files (default: dashboards/json)."),
        ] = None,
    ) -> None:
        """Write every dashboard's JSON (what Grafana's file provisioning reads), or check it is current."""
        try:
            from desanet.dashboards import build as gen
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            typer.echo(f"desanet dashboards: {exc}; install the extra: pip install 'desanet[dashboards]'", err=True)
            raise typer.Exit(2) from None
        directory = output or gen.JSON_DIR
        if check:
            problems = gen.check(directory)
            for p in problems:
                typer.echo(p)
            if problems:
                typer.echo("run `desanet dashboards build` and commit the result", err=True)
            else:
                typer.echo(f"{directory}: up to date", err=True)
            raise typer.Exit(1 if problems else 0)
        changed = gen.write(directory)
        for path in changed:
            typer.echo(f"wrote {path}")
        if not changed:
            typer.echo(f"{directory}: up to date", err=True)
