"""`desanet …`: one command line for the NOC, the technician and the lab.

Each group lives in its own module under cli/ and registers itself here,
so the entry point stays a table of contents.
"""

from __future__ import annotations

import typer

from desanet.cli import check, dashboards, icmp, inventory, reflector, serve, snmp, stamp, throughput, trace

app = typer.Typer(
    name="desanet",
    help="desanet: will each village's video call hold up? Probes, SNMP and Prometheus metrics for the "
    "district's fibre village network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
probe_app = typer.Typer(
    help="Measure one target once and print the result (a village slug or an address).", no_args_is_help=True
)
app.add_typer(probe_app, name="probe")

inventory.register(app)
for module in (icmp, stamp, throughput, snmp, trace):
    module.register(probe_app)
reflector.register(app)
serve.register(app)
dashboards.register(app)
check.register(app)


def _register_lab() -> None:
    from desanet.cli.lab import register

    register(app)


_register_lab()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
