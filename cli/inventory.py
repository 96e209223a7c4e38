"""`desanet inventory check|schema|synth`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from desanet.district import InventoryError, default_inventory_path, json_schema, load_inventory
from desanet.district.synth import MAX_KECAMATAN


def register(app: typer.Typer) -> None:
    inv = typer.Typer(help="Check, describe and synthesise inventories.", no_args_is_help=True)
    app.add_typer(inv, name="inventory")

    @inv.command("check")
    def check(
        files: Annotated[
            list[Path] | None, typer.Argument(help="Inventory files to check (default: the exporter's inventory).")
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the problems only, no summaries.")] = False,
    ) -> None:
        """Print every problem as FILE:LINE:COL: message; exit 1 if there is any, 0 when all files are valid.

        Unlike the exporter, check also reports one-off sessions that have already ended.
        """
        bad = 0
        for f in files or [default_inventory_path()]:
            try:
                i = load_inventory(f, strict_time=True)
            except InventoryError as exc:
                bad += 1
                for p in exc.problems:
                    typer.echo(str(p))
                if not quiet:
                    n = len(exc.problems)
                    typer.echo(f"{f}: {n} problem{'s' if n != 1 else ''}", err=True)
                continue
            if not quiet:
                typer.echo(
                    f"{f}: ok ({len(i.kecamatan)} kecamatan, {len(i.villages)} villages, "
                    f"{len(i.profiles)} profiles, {len(i.sessions)} sessions)"
                )
        raise typer.Exit(1 if bad else 0)

    @inv.command("schema")
    def schema() -> None:
        """Print the inventory's JSON Schema (for editors: yaml-language-server, VS Code)."""
        json.dump(json_schema(), sys.stdout, indent=2)
        sys.stdout.write("\n")

    @inv.command("synth")
    def synth(
        villages: Annotated[int, typer.Option("--villages", "-n", min=1, max=60000, help="How many villages.")] = 217,
        kecamatan: Annotated[
            int, typer.Option("--kecamatan", min=1, max=MAX_KECAMATAN, help="Spread over this many kecamatan.")
        ] = 25,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    ) -> None:
        """Write a valid synthetic inventory of N villages at lab addresses, for scale tests."""
        from desanet.district.synth import synth_inventory

        text = synth_inventory(villages, kecamatan)
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
            typer.echo(f"wrote {villages} villages in {min(kecamatan, villages)} kecamatan to {output}", err=True)
