"""`desanet check VILLAGE`: will the video call hold up here, and if not, why? (The logic: check/.)

Progress goes to stderr while the probes run; the table, the verdict and what to try go to stdout, or with
--json one JSON object. It also runs alone as `python -m desanet.cli.check`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console

from desanet.check import (
    CALL_STREAM_SECONDS,
    CALL_STREAM_TIMEOUT,
    RESERVE_SECONDS,
    TIME_LIMIT_SECONDS,
    CheckError,
    Options,
    Problem,
    Report,
    explain,
    load_village,
    problem_json,
    problem_text,
    render,
    report_exit_code,
    run_check,
    to_json,
)
from desanet.check.messages import Lang, detect_lang, fmt_seconds, t

HELP = (
    "Will the video call hold up here, and if not, why? Measures one village in at most 15 s: a ping train, a "
    "video-like STAMP stream (the profile's packet size and DSCP), the router over SNMP, then a short "
    "throughput rehearsal each way; a path trace when something is degraded. Prints each figure against the "
    "profile, the verdict (ready / at risk / not ready), the limiting factor in plain words and what to try.\n\n"
    "VILLAGE is a slug or a name; small misspellings are forgiven. The profile is --profile, else the one of "
    "the village's next session, else the village's own. Bahasa Indonesia is the default where the locale is "
    "Indonesian (LC_ALL, LC_MESSAGES or LANG starting with id).\n\n"
    "Exit codes: 0 ready; 1 at risk or not ready; 2 could not measure (unknown village, router unreachable, "
    "no permission), with the reason; 130 interrupted."
)


class LangChoice(StrEnum):
    id = "id"
    en = "en"


def process_started() -> float:
    """time.monotonic() when this process started, so the time limit counts the interpreter's start-up too."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - min(max(0.0, age), 5.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


_STARTED = process_started()


class _ProgressView:
    """One line per stage on stderr: a live spinner on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, lang: Lang, enabled: bool = True):
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self.console = console
        self.lang = lang
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("{task.description}"),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        if self.live:
            self.progress.start()

    def event(self, stage: str, event: str, key: str, values: Any, seconds: float) -> None:
        if not self.enabled:
            return
        label = render(key, values, self.lang)
        if event == "start":
            if self.live:
                self.tasks[stage] = self.progress.add_task(label, total=1, status="…")
            return
        if event == "done":
            status = "[green]✓[/] " + t("progress_done", self.lang, seconds=fmt_seconds(seconds, self.lang))
        elif event == "skipped":
            status = "[yellow]–[/] " + t("progress_skipped", self.lang)
        else:
            status = "[red]✗[/] " + t("progress_failed", self.lang)
        if self.live and stage in self.tasks:
            self.progress.update(self.tasks[stage], completed=1, status=status)
        else:
            self.console.print(f"{label}: {status}", highlight=False)

    def stop(self) -> None:
        if self.live:
            self.progress.stop()


_VERDICT_STYLE = {"ready": "bold green", "at_risk": "bold yellow", "not_ready": "bold red", "unknown": "bold"}
_STATE_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "unmeasured": "dim"}


def print_report(report: Report, lang: Lang, console: Console) -> None:
    """The result as a technician reads it: who and which profile, the table, the verdict, why, what to try."""
    from rich.markup import escape
    from rich.table import Table

    ex = explain(report, lang)
    console.print(f"[bold]{escape(ex.header)}[/]")
    console.print(escape(ex.profile_line))
    if report.problem is None or report.problem.code == "unreachable":
        table = Table(title=t("table_title", lang, profile=report.profile.name), title_justify="left")
        table.add_column(t("col_figure", lang))
        table.add_column(t("col_measured", lang), justify="right")
        table.add_column(t("col_ready_if", lang), justify="right")
        table.add_column(t("col_fails_if", lang), justify="right")
        table.add_column(t("col_result", lang))
        for label, measured, ready_if, fails_if, state_label, state in ex.rows:
            table.add_row(label, measured, ready_if, fails_if, f"[{_STATE_STYLE[state]}]{escape(state_label)}[/]")
        console.print(table)
    style = "bold red" if report.problem is not None else _VERDICT_STYLE[report.verdict]
    console.print(f"[{style}]{escape(ex.headline)}[/]")
    if report.problem is None or (report.readiness is not None and report.readiness.limiting is not None):
        console.print(f"[bold]{t('why_label', lang)}:[/] {escape(ex.why)}")
    for line in ex.also:
        console.print(f"[bold]{t('also_label', lang)}:[/] {escape(line)}")
    if ex.advice:
        console.print(f"[bold]{t('advice_label', lang)}:[/]")
        for line in ex.advice:
            console.print(f"  • {escape(line)}")
    for extra in [ex.path, *ex.router, ex.mos]:
        if extra:
            console.print(escape(extra))
    for line in ex.history:
        console.print(escape(line))
    for line in ex.call:
        console.print(escape(line))
    if ex.notes:
        console.print(f"[bold]{t('notes_label', lang)}:[/]")
        for line in ex.notes:
            console.print(f"  • {escape(line)}", style="dim")
    console.print(t("elapsed_line", lang, seconds=fmt_seconds(time.monotonic() - _STARTED, lang)), style="dim")


def _print_problem(problem: Problem, lang: Lang, as_json: bool, err: Console) -> None:
    if as_json:
        sys.stdout.write(json.dumps(problem_json(problem, lang), indent=2, ensure_ascii=False) + "\n")
        return
    err.print(f"desanet check: {problem_text(problem, lang)}", markup=False, highlight=False)
    if problem.candidates:
        err.print(t("err_did_you_mean", lang, candidates=", ".join(problem.candidates)), markup=False)


def run(
    village: str,
    *,
    profile: str | None = None,
    as_json: bool = False,
    lang: Lang | None = None,
    prometheus: str | None = None,
    inventory: Path | None = None,
    throughput: bool = True,
    tcp: bool = False,
    force: bool = False,
    call_stream: bool = False,
) -> int:
    """The whole command; returns the exit code."""
    lang = lang or detect_lang()
    err = Console(stderr=True, highlight=False)
    try:
        inv, v = load_village(village, inventory)
    except CheckError as exc:
        _print_problem(exc.problem, lang, as_json, err)
        return 2
    now = datetime.now(ZoneInfo(inv.timezone))
    deadline = _STARTED + TIME_LIMIT_SECONDS - RESERVE_SECONDS
    if call_stream:
        deadline += CALL_STREAM_SECONDS + CALL_STREAM_TIMEOUT
    options = Options(
        profile=profile, throughput=throughput, tcp=tcp, force=force, prometheus=prometheus, call_stream=call_stream
    )
    view = _ProgressView(err, lang)
    try:
        report = asyncio.run(run_check(inv, v, options, now=now, deadline=deadline, progress=view.event))
    except CheckError as exc:
        view.stop()
        _print_problem(exc.problem, lang, as_json, err)
        return 2
    except KeyboardInterrupt:
        view.stop()
        err.print("interrupted" if lang == "en" else "dihentikan")
        return 130
    view.stop()
    if as_json:
        sys.stdout.write(json.dumps(to_json(report, lang), indent=2, ensure_ascii=False) + "\n")
    else:
        print_report(report, lang, Console(highlight=False))
    return report_exit_code(report)


def register(app: typer.Typer) -> None:
    @app.command("check", help=HELP)
    def check(
        village: Annotated[str, typer.Argument(help="Village slug or name (e.g. pesanggaran).")],
        profile: Annotated[
            str | None, typer.Option("--profile", help="Judge by this profile (default: the next session's).")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object for scripts.")] = False,
        lang: Annotated[LangChoice | None, typer.Option("--lang", help="id or en (default: from the locale).")] = None,
        prometheus: Annotated[
            str | None,
            typer.Option(
                "--prometheus",
                help="Prometheus URL: add how the village did at this hour on earlier days, and its last "
                "rehearsal call.",
            ),
        ] = None,
        inventory: Annotated[Path | None, typer.Option("--inventory", "-i", help="Inventory file.")] = None,
        no_throughput: Annotated[bool, typer.Option("--no-throughput", help="Skip the download/upload test.")] = False,
        tcp: Annotated[
            bool, typer.Option("--tcp", help="Measure TCP throughput instead of the UDP video rehearsal.")
        ] = False,
        force: Annotated[
            bool, typer.Option("--force", help="Test throughput even during the village's scheduled session.")
        ] = False,
        call_stream: Annotated[
            bool,
            typer.Option(
                "--call-stream",
                help="After the throughput test, also send a call-like stream that yields to other traffic as a "
                "WebRTC call does, and report the rate it held (4-5 s more; not part of the verdict yet).",
            ),
        ] = False,
    ) -> None:
        raise typer.Exit(
            run(
                village,
                profile=profile,
                as_json=as_json,
                lang=None if lang is None else lang.value,
                prometheus=prometheus,
                inventory=inventory,
                throughput=not no_throughput,
                tcp=tcp,
                force=force,
                call_stream=call_stream,
            )
        )


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
