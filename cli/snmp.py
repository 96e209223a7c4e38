"""`desanet probe snmp TARGET`: poll one village router's SNMP agent once, printed as tables or JSON."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from desanet.probes.snmp import SnmpOptic as OpticRow
    from desanet.probes.snmp import SnmpResult, SnmpSettings


def _opt(value: Any, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


def _bits(value: float | None) -> str:
    """A speed to four significant digits; "unknown" where the agent gave none (0 on a port without link)."""
    if value is None:
        return "unknown"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if value >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value:.4g} bit/s"


def _rx(optic: OpticRow) -> str:
    """Receive power, or "no light" where the module receives none (an underflow or 0 mW has no dBm)."""
    if optic.rx_power_dbm is None:
        return "[red]no light[/]" if optic.rx_loss else "—"
    return f"{optic.rx_power_dbm:.2f} dBm" + (" [red](no light)[/]" if optic.rx_loss else "")


def _no_optics(result: SnmpResult) -> str:
    n = result.sensor_rows
    if n:
        return (
            f"no optical transceiver found: ENTITY-SENSOR-MIB has {n} sensor{'s' if n != 1 else ''}, but no "
            "optical power reading desanet recognises (and the MIKROTIK-MIB optical table is empty)"
        )
    return "no optical transceiver reported (MIKROTIK-MIB optical table and ENTITY-SENSOR-MIB empty)"


def _yes_no(flag: bool | None) -> str:
    return "—" if flag is None else ("[red]yes[/]" if flag else "no")


def _state(up: bool | None) -> str:
    return "—" if up is None else ("[green]up[/]" if up else "[red]down[/]")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _print_tables(result: SnmpResult, settings: SnmpSettings, label: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    how = f"v{settings.version}" + (f" user {settings.user}" if settings.version == "3" else "")
    if not result.success:
        console.print(f"[bold red]SNMP {label} ({result.target}:{settings.port}, {how}) failed[/]: {result.error}")
        return
    console.print(
        f"SNMP {label} ({result.target}:{settings.port}, {how}): agent up {_duration(result.uptime_seconds)}, "
        f"answered in {result.duration_seconds * 1e3:.0f} ms"
    )
    ifs = Table(title="Interfaces (IF-MIB)", title_justify="left")
    show_alias = any(i.alias for i in result.interfaces)
    columns = ["#", "name", *(["alias"] if show_alias else []), "admin/oper", "speed", "in octets", "out octets"]
    columns += ["in/out errors", "in discards", "changed at uptime"]
    for name in columns:
        ifs.add_column(name, justify="left" if name in ("name", "alias", "admin/oper") else "right", no_wrap=True)
    for i in result.interfaces:
        ifs.add_row(
            str(i.index),
            _opt(i.name),
            *([_opt(i.alias)] if show_alias else []),
            f"{_state(i.admin_up)}/{_state(i.oper_up)}",
            _bits(i.speed_bits_per_second),
            _opt(i.in_octets, "{:,}"),
            _opt(i.out_octets, "{:,}"),
            f"{_opt(i.in_errors)}/{_opt(i.out_errors)}",
            _opt(i.in_discards),
            _duration(i.last_change_seconds),
        )
    console.print(ifs)
    narrow = [i.name or f"#{i.index}" for i in result.interfaces if i.octet_counter_bits == 32]
    if narrow:
        console.print(f"{', '.join(narrow)}: 32-bit octet counters only (no ifXTable); they wrap to 0 after 2^32 - 1")
    if not result.optics:
        console.print(_no_optics(result))
        return
    # "#" is the port's ifIndex, as in the table above: an optical table's own row index is not one.
    opt = Table(title=f"Optics ({result.optics[0].source})", title_justify="left")
    for name in ("#", "port", "rx", "tx", "temp", "bias", "supply", "wavelength", "rx loss", "tx fault", "vendor"):
        opt.add_column(name, justify="left" if name in ("port", "vendor") else "right", no_wrap=True)
    for o in result.optics:
        opt.add_row(
            _opt(o.if_index),
            _opt(o.name),
            _rx(o),
            _opt(o.tx_power_dbm, "{:.2f} dBm"),
            _opt(o.temperature_celsius, "{:.1f} °C"),
            _opt(None if o.bias_amperes is None else o.bias_amperes * 1e3, "{:.1f} mA"),
            _opt(o.voltage_volts, "{:.2f} V"),
            _opt(None if o.wavelength_meters is None else o.wavelength_meters * 1e9, "{:.0f} nm"),
            _yes_no(o.rx_loss),
            _yes_no(o.tx_fault),
            _opt(o.vendor),
        )
    console.print(opt)


def register(app: typer.Typer) -> None:
    @app.command("snmp")
    def snmp(
        target: Annotated[str, typer.Argument(help="A village (slug or name) or an IP address.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
        inventory: Annotated[
            Path | None, typer.Option("--inventory", "-i", help="Inventory file [$DESANET_INVENTORY, inventory.yaml].")
        ] = None,
        community_env: Annotated[
            str,
            typer.Option("--community-env", help="For an address: the environment variable holding the v2c community."),
        ] = "DESANET_SNMP_COMMUNITY",
        port: Annotated[
            int | None, typer.Option("--port", "-p", min=1, max=65535, help="Agent UDP port [inventory, else 161].")
        ] = None,
        timeout: Annotated[
            float | None,
            typer.Option("--timeout", min=0.01, max=60, help="Seconds per try [inventory, else 1]."),
        ] = None,
        retries: Annotated[
            int | None, typer.Option("--retries", min=0, max=5, help="Extra tries [inventory, else 1].")
        ] = None,
    ) -> None:
        """Read interface counters and statuses, uptime and SFP levels (rx/tx dBm) from the router's agent.

        Exit status: 0 polled, 1 the agent did not answer or answered with an SNMP error, 2 could not start
        (unknown village, missing secret, bad option).
        """
        from desanet.cli.output import print_json
        from desanet.district import SecretError, resolve_secret
        from desanet.district.targets import TargetError, resolve_target
        from desanet.probes.snmp import SnmpPoller, settings_from_config

        try:
            resolved = resolve_target(target, inventory)
        except TargetError as exc:
            typer.echo(f"desanet: {exc}", err=True)
            if exc.candidates:
                typer.echo("did you mean: " + ", ".join(exc.candidates), err=True)
            raise typer.Exit(2) from None

        inv_poll = resolved.inventory.settings.snmp if resolved.inventory is not None else None
        t = timeout or (inv_poll.timeout_seconds if inv_poll else 1.0)
        r = retries if retries is not None else (inv_poll.retries if inv_poll else 1)
        per_agent = inv_poll.max_per_agent if inv_poll else 2
        try:
            if resolved.village is not None and resolved.inventory is not None:
                cfg = resolved.inventory.snmp_for(resolved.village)
                if cfg is None:
                    typer.echo(f"desanet: {resolved.village.slug} has no SNMP settings in the inventory", err=True)
                    raise typer.Exit(2)
                settings = settings_from_config(cfg, resolve_secret, timeout_seconds=t, retries=r, port=port)
            else:
                community = os.environ.get(community_env)
                if not community:
                    typer.echo(
                        f"desanet: set {community_env} to the v2c community (or give a village from the inventory)",
                        err=True,
                    )
                    raise typer.Exit(2)
                from desanet.probes.snmp import SnmpSettings

                settings = SnmpSettings(community=community, port=port or 161, timeout_seconds=t, retries=r)
        except SecretError as exc:
            typer.echo(f"desanet: {exc}", err=True)
            raise typer.Exit(2) from None
        except ValueError as exc:
            typer.echo(f"desanet: {exc}", err=True)
            raise typer.Exit(2) from None

        async def run() -> SnmpResult:
            async with SnmpPoller(max_per_agent=per_agent) as poller:
                return await poller.poll(resolved.address, settings)

        result = asyncio.run(run())
        if as_json:
            print_json(resolved, result)
        else:
            _print_tables(result, settings, resolved.label)
        raise typer.Exit(0 if result.success else 1)
