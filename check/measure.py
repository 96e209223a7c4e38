"""Orchestration: which probes run when, in parallel or in turn, within the time limit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from desanet.check.decide import choose_profile, judge, offered_rates, path_degraded, reachable
from desanet.check.history import fetch_history, fetch_last_call
from desanet.check.messages import (
    Q,
)
from desanet.check.report import (
    BUSY_RETRIES,
    BUSY_RETRY_WAIT,
    CALL_STREAM_MIN_SECONDS,
    CALL_STREAM_SECONDS,
    CALL_STREAM_TIMEOUT,
    CALL_TIMEOUT,
    HISTORY_TIMEOUT,
    ICMP_COUNT,
    ICMP_INTERVAL,
    ICMP_TIMEOUT,
    RECENT_RESTART_SECONDS,
    SNMP_RETRIES,
    SNMP_STAGE_SECONDS,
    SNMP_TIMEOUT,
    STAMP_RATE_PPS,
    STAMP_SECONDS,
    STAMP_TIMEOUT,
    TCP_SECONDS,
    TEST_SETUP_SECONDS,
    TIME_LIMIT_SECONDS,
    TRACE_DEADLINE,
    TRACE_MIN_SECONDS,
    TRACE_TIMEOUT,
    UDP_MIN_SECONDS,
    UDP_SECONDS,
    HistoryDay,
    HistoryError,
    LastCall,
    Note,
    Options,
    Problem,
    ProgressFn,
    Report,
    Stage,
    StageEvent,
    ThroughputOutcome,
    _no_progress,
)
from desanet.district import Inventory, Village
from desanet.probes.icmp import IcmpPermissionError, IcmpResult, IcmpSettings
from desanet.probes.stamp import StampResult, StampSettings
from desanet.probes.throughput import (
    DirectionResult,
    ProgressCallback,
    ServerBusy,
    ThroughputError,
    ThroughputResult,
    ThroughputSettings,
)
from desanet.verdict.ports import busiest_port

if TYPE_CHECKING:
    from desanet.budget import TestSlot
    from desanet.probes.callstream import CallStreamResult, CallStreamSettings
    from desanet.probes.snmp import SnmpResult, SnmpSettings
    from desanet.probes.trace import TraceResult, TraceSettings


# ---------------------------------------------------------------------------------------------- the probes
class Probers:
    """The real probes. Tests subclass this to run the whole check without a network."""

    def __init__(self) -> None:
        self._poller: Any = None

    async def icmp(self, address: str, settings: IcmpSettings) -> IcmpResult:
        from desanet.probes.icmp import probe

        return await probe(address, settings)

    async def stamp(self, address: str, settings: StampSettings) -> StampResult:
        from desanet.probes.stamp import probe

        return await probe(address, settings)

    async def snmp(self, address: str, settings: SnmpSettings) -> SnmpResult:
        from desanet.probes.snmp import SnmpPoller

        if self._poller is None:
            self._poller = SnmpPoller(max_per_agent=1)
            await self._poller.start()
        result: SnmpResult = await self._poller.poll(address, settings)
        return result

    async def throughput(
        self, address: str, settings: ThroughputSettings, progress: ProgressCallback | None = None
    ) -> ThroughputResult:
        from desanet.probes.throughput import probe

        return await probe(address, settings, progress=progress)

    async def call_stream(self, address: str, settings: CallStreamSettings) -> CallStreamResult:
        from desanet.probes.callstream import probe

        return await probe(address, settings)

    async def trace(self, address: str, settings: TraceSettings) -> TraceResult:
        from desanet.probes.trace import probe

        return await probe(address, settings)

    def history(self, url: str, village: str, profile: str, now: datetime) -> list[HistoryDay]:
        return fetch_history(url, village, profile, now)

    def last_call(self, url: str, village: str, now: datetime) -> LastCall | None:
        return fetch_last_call(url, village, now)

    def warm_up(self) -> None:
        """Import what a path trace needs (scapy: most of a second of CPU) in a thread while the latency probes
        run, so a degraded village's trace starts at once. Their timestamps come from the kernel, so sharing
        the CPU with an import does not change the figures."""
        import logging

        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        with contextlib.suppress(ImportError):
            import scapy.layers.inet  # noqa: F401

            import desanet.probes.trace  # noqa: F401

    async def aclose(self) -> None:
        if self._poller is not None:
            await self._poller.close()
            self._poller = None


# ---------------------------------------------------------------------------------------------- orchestration
class _Clock:
    def __init__(self, deadline: float, progress: ProgressFn, timings: dict[str, float]):
        self.deadline = deadline
        self.progress = progress
        self.timings = timings

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.asynccontextmanager
    async def stage(self, stage: Stage, key: str, values: Mapping[str, Any]) -> Any:
        t0 = time.monotonic()
        self.progress(stage, "start", key, values, 0.0)
        outcome: dict[str, StageEvent] = {"event": "done"}
        try:
            yield outcome
        except BaseException:
            outcome["event"] = "failed"
            raise
        finally:
            took = time.monotonic() - t0
            self.timings[stage] = round(took, 3)
            self.progress(stage, outcome["event"], key, values, took)


def _snmp_settings(inv: Inventory, village: Village) -> tuple[SnmpSettings | None, Note | None]:
    from desanet.district import EnvSecret, SecretError, resolve_secret
    from desanet.probes.snmp import settings_from_config

    cfg = inv.snmp_for(village)
    if cfg is None:
        return None, Note("note_snmp_none")
    try:
        return settings_from_config(cfg, resolve_secret, timeout_seconds=SNMP_TIMEOUT, retries=SNMP_RETRIES), None
    except SecretError as exc:
        refs = [getattr(cfg, k, None) for k in ("community", "auth_key", "priv_key")]
        names = [r.env if isinstance(r, EnvSecret) else r.file for r in refs if r is not None]
        return None, Note("note_snmp_secret", {"ref": ", ".join(names)}, detail=str(exc))
    except ValueError as exc:
        return None, Note("note_snmp_failed", detail=str(exc))


def _refusal_note(exc: Exception, inv: Inventory, village: Village, now: datetime) -> Note:
    """desanet.budget.Refused says why in English words; turn the known reasons into a translated note."""
    text = str(exc)
    if "scheduled session" in text:
        running = inv.in_session(village, now)
        return Note("note_throughput_session", {"title": running.title if running else "?"}, detail=text)
    if "within this test's window" in text:
        upcoming = inv.next_session(village, now)
        values: dict[str, Any] = {"title": "?", "when": "?"}
        if upcoming is not None:
            values = {"title": upcoming[0].title, "when": Q("when", upcoming[1].astimezone(now.tzinfo))}
        return Note("note_throughput_session_soon", values, detail=text)
    if "uplink busy" in text:
        return Note("note_throughput_busy", detail=text)
    if "budget is spent" in text:
        return Note("note_throughput_budget", detail=text)
    return Note("note_throughput_refused", detail=text)


async def run_check(
    inv: Inventory,
    village: Village,
    options: Options,
    *,
    now: datetime,
    deadline: float,
    probers: Probers | None = None,
    progress: ProgressFn = _no_progress,
) -> Report:
    """Measure one village and judge it; never raises for a probe's failure (that becomes a note or a problem).

    `deadline` is the time.monotonic() by which measuring must be over; stages that would overrun it are
    skipped with a note. Raises CheckError only for a bad --profile."""
    own = probers is None
    probers = probers or Probers()
    choice = choose_profile(inv, village, now, options.profile)
    report = Report(inv, village, choice, started=now)
    t_start = time.monotonic()
    clock = _Clock(deadline, progress, report.timings)
    try:
        await _measure(report, options, probers, clock, now)
    finally:
        if own:
            with contextlib.suppress(Exception):
                await probers.aclose()
    report.elapsed_seconds = round(time.monotonic() - t_start, 3)
    return report


async def _measure(report: Report, options: Options, probers: Probers, clock: _Clock, now: datetime) -> None:
    inv, village, profile = report.inventory, report.village, report.profile
    address = village.address

    # -- phase 1: latency probes, SNMP and history, together
    icmp_settings = IcmpSettings(
        count=ICMP_COUNT, interval=ICMP_INTERVAL, timeout=ICMP_TIMEOUT, payload_bytes=inv.settings.icmp.payload_bytes
    )
    stamp_at = village.stamp_address()
    stamp_settings = None
    if stamp_at is not None:
        stamp_settings = StampSettings(
            port=stamp_at[1],
            rate_pps=STAMP_RATE_PPS,
            duration_seconds=STAMP_SECONDS,
            packet_bytes=profile.video_packet_bytes,
            dscp=profile.dscp,
            timeout_seconds=STAMP_TIMEOUT,
        )
    else:
        report.notes.append(Note("note_no_stamp"))
    icmp_permission = False

    async def run_icmp() -> None:
        nonlocal icmp_permission
        values = {"count": icmp_settings.count, "interval": Q("ms_compact", icmp_settings.interval)}
        async with clock.stage("icmp", "stage_icmp", values) as st:
            try:
                report.icmp = await probers.icmp(address, icmp_settings)
            except IcmpPermissionError as exc:
                icmp_permission = True
                st["event"] = "failed"
                report.notes.append(Note("note_icmp_permission", detail=str(exc)))

    async def run_stamp() -> None:
        if stamp_settings is None or stamp_at is None:
            return
        values = {
            "rate": f"{stamp_settings.rate_pps:g}",
            "size": stamp_settings.packet_bytes,
            "dscp": stamp_settings.dscp,
            "duration": Q("seconds", stamp_settings.duration_seconds),
        }
        async with clock.stage("stamp", "stage_stamp", values) as st:
            try:
                report.stamp = await probers.stamp(stamp_at[0], stamp_settings)
            except (OSError, ValueError) as exc:
                st["event"] = "failed"
                report.notes.append(Note("note_stamp_failed", detail=str(exc)))

    latency_done = asyncio.Event()

    async def run_snmp() -> None:
        settings, note = _snmp_settings(inv, village)
        if note is not None:
            report.notes.append(note)
        if settings is None:
            return
        async with clock.stage("snmp", "stage_snmp", {}) as st:
            first = second = None
            t_first = time.monotonic()
            # Each poll bounded: a dead agent must not hold up the verdict. The second, for rates, waits for
            # the latency probes to end so the counters span them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SNMP_STAGE_SECONDS):
                    first = await probers.snmp(address, settings)
                    t_first = time.monotonic()
            if first is not None and first.success:
                await latency_done.wait()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(settings.worst_case_seconds, max(0.1, clock.left()))):
                        second = await probers.snmp(address, settings)
            if first is None:
                st["event"] = "failed"
                report.notes.append(Note("note_snmp_failed", detail=f"no answer within {SNMP_STAGE_SECONDS:g} s"))
                return
            report.snmp = second if second is not None and second.success else first
            report.port = busiest_port(first, second, time.monotonic() - t_first if second else 0.0)
            if not report.snmp.success:
                st["event"] = "failed"
                report.notes.append(Note("note_snmp_failed", detail=report.snmp.error))
            elif report.snmp.uptime_seconds is not None and report.snmp.uptime_seconds < RECENT_RESTART_SECONDS:
                report.notes.append(Note("router_restarted", {"ago": Q("duration", report.snmp.uptime_seconds)}))

    async def run_history() -> None:
        url = options.prometheus
        if not url:
            return
        async with clock.stage("history", "stage_history", {}) as st:
            try:
                report.history = await asyncio.wait_for(
                    asyncio.to_thread(probers.history, url, village.slug, profile.name, now),
                    timeout=HISTORY_TIMEOUT + 1,
                )
            except HistoryError as exc:
                st["event"] = "failed"
                key = "note_history_failed" if exc.kind == "unreachable" else "note_history_bad"
                report.notes.append(Note(key, {"url": url}, detail=str(exc)))
                if exc.kind == "unreachable":
                    return  # its note says the last call is not shown either
            except TimeoutError:
                st["event"] = "failed"
                report.notes.append(Note("note_history_failed", {"url": url}, detail="timed out"))
                return
            # The village's last rehearsal call: one instant query, after the history so a Prometheus that
            # cannot be reached costs one wait, not two.
            try:
                report.call = await asyncio.wait_for(
                    asyncio.to_thread(probers.last_call, url, village.slug, now), timeout=CALL_TIMEOUT + 1
                )
                report.call_fetched = True
            except HistoryError as exc:
                st["event"] = "failed"
                key = "note_call_failed" if exc.kind == "unreachable" else "note_call_bad"
                report.notes.append(Note(key, {"url": url}, detail=str(exc)))
            except TimeoutError:
                st["event"] = "failed"
                report.notes.append(Note("note_call_failed", {"url": url}, detail="timed out"))

    async def latency() -> None:
        try:
            await asyncio.gather(run_icmp(), run_stamp())
        finally:
            latency_done.set()

    warm = asyncio.ensure_future(asyncio.to_thread(probers.warm_up))
    await asyncio.gather(latency(), run_snmp(), run_history())
    with contextlib.suppress(Exception):
        await warm  # before the throughput test, whose paced sender must not share the CPU with an import

    # -- what phase 1 says
    ok = reachable(report.icmp, report.stamp)
    if report.icmp is not None and report.stamp is not None:
        if report.icmp.received == 0 and report.stamp.received > 0:
            report.notes.append(Note("note_icmp_silent"))
        elif report.stamp.received == 0 and report.icmp.received > 0:
            report.notes.append(Note("note_stamp_silent"))
    judge(report)
    if ok is None:
        report.problem = (
            Problem("no_permission", "err_no_permission")
            if icmp_permission
            else Problem("nothing_measured", "err_nothing_measured")
        )
        return
    if ok is False:
        sent = sum(r.sent for r in (report.icmp, report.stamp) if r is not None)
        report.problem = Problem("unreachable", "err_unreachable", {"address": address, "sent": sent})

    # -- phase 2: where on the path, when something is wrong
    assert report.readiness is not None
    if ok is False or path_degraded(report.readiness):
        await _trace(report, probers, clock)
    if ok is False:
        if options.throughput and village.iperf3_address() is not None:
            report.notes.append(Note("note_throughput_unreachable"))
        return

    # -- phase 3: throughput, last
    await _throughput(report, options, probers, clock, now)
    judge(report)


async def _trace(report: Report, probers: Probers, clock: _Clock) -> None:
    left = clock.left()
    if left < TRACE_MIN_SECONDS:
        report.notes.append(Note("note_trace_time", {"limit": Q("seconds", TIME_LIMIT_SECONDS)}))
        return
    try:
        from desanet.probes.trace import TraceError, TraceSettings
    except ImportError as exc:  # the trace module is optional
        report.notes.append(Note("note_trace_failed", detail=str(exc)))
        return
    cfg = report.inventory.settings.trace
    settings = TraceSettings(
        protocol="icmp",
        max_hops=cfg.max_hops,
        probes_per_hop=cfg.probes_per_hop,
        timeout_seconds=TRACE_TIMEOUT,
        deadline_seconds=max(0.5, min(TRACE_DEADLINE, left - 0.5)),
    )
    async with clock.stage("trace", "stage_trace", {}) as st:
        try:
            report.trace = await probers.trace(report.village.address, settings)
        except PermissionError as exc:
            st["event"] = "failed"
            report.notes.append(Note("note_trace_permission", detail=str(exc)))
        except (TraceError, OSError, ValueError) as exc:
            st["event"] = "failed"
            report.notes.append(Note("note_trace_failed", detail=str(exc)))


async def _call_stream(report: Report, probers: Probers, clock: _Clock, slot: TestSlot) -> None:
    """A stream at the profile's call rate whose rate a call's congestion control sets: what a call would hold
    against the other traffic on the path. Run in the throughput test's slot, so it obeys the same session,
    uplink and budget rules and is charged what it moved, both ways."""
    from desanet.probes.callstream import CallStreamSettings

    profile, village = report.profile, report.village
    stamp_at = village.stamp_address()
    if stamp_at is None:
        return
    # A throughput test on a bloated link can overrun its share while it waits for the last data to drain
    # (probes/throughput.py): the stream then runs for what is left, if that still shows a controller react.
    duration = min(CALL_STREAM_SECONDS, clock.left() - CALL_STREAM_TIMEOUT)
    if duration < CALL_STREAM_MIN_SECONDS:
        report.notes.append(Note("note_call_stream_time", {"limit": Q("seconds", TIME_LIMIT_SECONDS)}))
        return
    settings = CallStreamSettings(
        rate_bps=profile.video_kbit * 1000.0,
        duration_seconds=duration,
        packet_bytes=min(profile.video_packet_bytes, 1472),
        dscp=profile.dscp,
        port=stamp_at[1],
        timeout_seconds=CALL_STREAM_TIMEOUT,
    )
    if 2 * settings.max_bytes() > slot.remaining_bytes - slot.charged_bytes:
        report.notes.append(Note("note_call_stream_budget"))
        return
    async with clock.stage("call_stream", "stage_call_stream", {"rate": Q("rate", settings.rate_bps)}) as st:
        t0 = time.monotonic()
        result: CallStreamResult | None = None
        try:
            result = await probers.call_stream(stamp_at[0], settings)
        except (OSError, ValueError) as exc:
            st["event"] = "failed"
            report.notes.append(Note("note_call_stream_failed", detail=str(exc)))
        finally:
            # Out, and back as much as came back or went out; a stream cut short is charged its whole bound.
            moved = result.moved_bytes() if result is not None else 2 * settings.max_bytes()
            slot.charge(moved, time.monotonic() - t0)
    if result is None:
        return
    report.call_stream = result
    if result.held_bps is not None and result.held_ratio is not None:
        report.notes.append(
            Note(
                "note_call_stream",
                {
                    "held": Q("rate", result.held_bps),
                    "rate": Q("rate", result.rate_bps),
                    "share": Q("pct", result.held_ratio),
                },
            )
        )


async def _throughput_retrying_busy(
    probers: Probers,
    address: str,
    settings: ThroughputSettings,
    clock: _Clock,
    seconds: float,
    progress: ProgressCallback,
) -> ThroughputResult:
    """iperf3 serves one test at a time and takes a moment to accept the next one after a test ends (longer on
    a slow link), so "busy" right after our own first direction is retried briefly while time allows."""
    for _ in range(BUSY_RETRIES):
        try:
            return await probers.throughput(address, settings, progress)
        except ServerBusy:
            if clock.left() < seconds + TEST_SETUP_SECONDS + BUSY_RETRY_WAIT:
                raise
            await asyncio.sleep(BUSY_RETRY_WAIT)
    return await probers.throughput(address, settings, progress)


async def _throughput(report: Report, options: Options, probers: Probers, clock: _Clock, now: datetime) -> None:
    from desanet.budget import Refused, acquire_test_slot

    inv, village, profile = report.inventory, report.village, report.profile
    endpoint = village.iperf3_address()
    if not options.throughput:
        report.notes.append(Note("note_no_throughput"))
        return
    if endpoint is None:
        report.notes.append(Note("note_no_iperf3"))
        return
    stream_seconds = CALL_STREAM_SECONDS + CALL_STREAM_TIMEOUT if options.call_stream else 0.0
    per_direction = (clock.left() - stream_seconds) / 2 - TEST_SETUP_SECONDS
    seconds = min(TCP_SECONDS if options.tcp else UDP_SECONDS, per_direction)
    if seconds < UDP_MIN_SECONDS:
        report.notes.append(Note("note_throughput_time", {"limit": Q("seconds", TIME_LIMIT_SECONDS)}))
        return
    address, port = endpoint
    rate_down, rate_up = offered_rates(profile)
    key = "stage_throughput_tcp" if options.tcp else "stage_throughput_udp"
    values = {"down": Q("rate", rate_down), "up": Q("rate", rate_up)}
    try:
        with acquire_test_slot(inv, village, now, options.force, directions=2, origin="check") as slot:
            cap_seconds, cap_bytes = slot.caps(2)
            seconds = min(seconds, cap_seconds)
            async with clock.stage("throughput", key, values) as st:
                results: dict[str, DirectionResult | None] = {"down": None, "up": None}
                for direction, rate in (("down", rate_down), ("up", rate_up)):
                    settings = ThroughputSettings(
                        port=port,
                        direction=direction,  # type: ignore[arg-type]
                        protocol="tcp" if options.tcp else "udp",
                        max_seconds=seconds,
                        omit_seconds=min(0.5, seconds / 4) if options.tcp else 0.0,
                        udp_bitrate_bps=rate,
                        udp_packet_bytes=profile.video_packet_bytes,
                        dscp=0 if options.tcp else profile.dscp,
                        connect_timeout=2.0,
                        max_bytes=cap_bytes,
                    )
                    try:
                        # The slot charges what moved, however the test ends (a cancelled check too).
                        res = await slot.measure(
                            address,
                            settings,
                            run=lambda a, s, meter: _throughput_retrying_busy(probers, a, s, clock, seconds, meter),
                        )
                    except ServerBusy as exc:
                        st["event"] = "failed"
                        report.notes.append(Note("note_throughput_server_busy", detail=str(exc)))
                        break
                    except ThroughputError as exc:
                        st["event"] = "failed"
                        report.notes.append(Note("note_throughput_failed", detail=str(exc)))
                        break
                    d = res.down if direction == "down" else res.up
                    results[direction] = d
            if options.call_stream:
                await _call_stream(report, probers, clock, slot)
    except Refused as exc:
        report.notes.append(_refusal_note(exc, inv, village, now))
        return
    if results["down"] is None and results["up"] is None:
        return
    method: Literal["udp", "tcp"] = "tcp" if options.tcp else "udp"
    report.throughput = ThroughputOutcome(
        method,
        results["down"],
        results["up"],
        None if options.tcp else rate_down,
        None if options.tcp else rate_up,
    )
    if not options.tcp:
        report.notes.append(Note("note_udp_rehearsal", values))
        for direction, d in (("down", results["down"]), ("up", results["up"])):
            if d is not None and d.loss_ratio is not None and d.loss_ratio > profile.max_loss_pct / 100:
                report.notes.append(
                    Note(
                        "note_under_load",
                        {
                            "direction": Q("key", f"dir_{direction}"),
                            "loss": Q("pct", d.loss_ratio),
                            "jitter": Q("ms", d.jitter_seconds or 0.0),
                        },
                    )
                )
