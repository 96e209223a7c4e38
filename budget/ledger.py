"""Throughput test budgets and uplink exclusivity: every rule holds by construction, not by good behaviour.

A throughput test fills a village's link for seconds, and every village of a kecamatan shares one uplink.
Three rules keep the monitor from becoming the outage it watches for:

1. **Never during a village's scheduled session** (Inventory.in_session), nor when one starts within the
   test's window — unless forced (a technician on site who wants the figure anyway). Force overrides only
   this rule.
2. **Never two tests on one kecamatan uplink at once**, like perfSONAR's `exclusive` scheduling class: an
   fcntl.flock on a lock file per kecamatan, taken non-blocking. The kernel drops the lock when the holder
   exits or crashes, so a stale lock cannot exist; the lock is per open file, so two slots in one process
   exclude each other as well as two processes do. A busy uplink refuses at once ("uplink busy").
3. **A daily byte and time budget per village** (inventory settings.throughput.budget_megabytes_per_day,
   budget_seconds_per_day; megabytes are 10^6 bytes). Usage lives in a JSON ledger under the state
   directory (DESANET_STATE_DIR, default /var/lib/desanet), written atomically (temp file, fsync,
   rename) under its own lock; the day starts at 00:00 Asia/Jakarta (WIB). The slot hands the test the
   remainder as hard caps (max_seconds, max_bytes).

Tests asked for through /probe (`on_demand=True`) are refused unless settings.throughput.on_demand.enabled,
and spend their own allowance (on_demand.budget_megabytes_per_day, budget_seconds_per_day: part of the
village's daily budget, which they count against too), at most one per on_demand.min_interval_seconds per
village (the last start is kept in the ledger, so a restart does not reset it).

    with acquire_test_slot(inventory, village, now) as slot:
        max_seconds, max_bytes = slot.caps(2)
        result = await slot.measure(address, ThroughputSettings(..., max_seconds=..., max_bytes=max_bytes))

**What a test is charged, whatever ends it.** Before the first byte moves, measure() writes a reservation
to the ledger (fsync'd): the most the test can move however it ends (probes.throughput.payload_bound: the
byte caps, plus one TCP receive window per stream the far end may still send after we stop reading) and
its longest data time. When the test ends the reservation is replaced by what it really moved:

- *finished*: the probe's own count (payload that crossed the link, settled after the last data landed);
- *failed* (ThroughputError or any exception): the same count, carried by the error and by the probe's
  final progress report;
- *cancelled* (CancelledError: a /probe scrape timeout, Ctrl-C, shutdown): the probe stops, settles its
  count and reports it in its `finally` before measure()'s own `finally` writes it;
- *killed* (SIGKILL, OOM, power loss: no code runs): the reservation stays in the ledger. The uplink lock
  is the kernel's and goes with the process, so the next slot on that kecamatan's uplink knows the holder
  is gone and charges the reservation in full (an upper bound; logged as a warning) before it reads the
  budget. So no test can start on that uplink before the killed one's bytes are in the ledger. If writing
  the real count fails (disk full), the reservation stays and is settled the same way.

measure()'s charge and the budget check are by construction, not by the caller's care; a slot left without
any charge is charged the wall time it was held (with 0 bytes). Refusals raise Refused with the reason in
words, a one-word `reason`, and `retry_after` seconds when it is known. Every start, charge, settled
reservation and refusal is logged (logger desanet.budget) with the village and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from desanet.district import Inventory, Village, slugify
from desanet.probes import throughput as tp

log = logging.getLogger("desanet.budget")

DEFAULT_STATE_DIR = "/var/lib/desanet"
DAY_TZ = ZoneInfo("Asia/Jakarta")
LEDGER_FILE = "throughput-budget.json"
LEDGER_VERSION = 2  # 2: reservations ("open"), the on-demand pool and last on-demand starts
MIN_TEST_SECONDS = 2.0  # less time than this left in the day's budget is not worth a test
MIN_TEST_BYTES = 1_000_000  # nor less than 1 MB
SETUP_SECONDS = 10.0  # allowance for connecting and exchanging results around the data phases
_LEDGER_LOCK_WAIT = 5.0


class Refused(Exception):
    """A test may not run now. str(exc) says why in words; `reason` is one word for logs and HTTP (disabled,
    session, uplink_busy, budget, on_demand_budget, rate_limit, ledger); `retry_after` is how many seconds
    until asking again can succeed, when that is known."""

    def __init__(self, message: str, *, reason: str = "ledger", retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


def state_dir() -> Path:
    return Path(os.environ.get("DESANET_STATE_DIR") or DEFAULT_STATE_DIR)


def budget_day(now: datetime) -> date:
    """The budget day `now` falls in: days start at midnight Asia/Jakarta."""
    if now.tzinfo is None:
        raise ValueError("budget times must be timezone-aware")
    return now.astimezone(DAY_TZ).date()


@dataclass(frozen=True)
class Usage:
    bytes: int = 0
    seconds: float = 0.0
    tests: int = 0

    def plus(self, nbytes: int, seconds: float, tests: int = 1) -> Usage:
        return Usage(self.bytes + int(nbytes), self.seconds + float(seconds), self.tests + tests)

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "seconds": round(self.seconds, 3), "tests": self.tests}


@dataclass(frozen=True)
class Reservation:
    """A test's upper bound, in the ledger from before its first byte until its real cost replaces it."""

    id: str
    village: str
    kecamatan: str  # slug of the uplink whose lock its holder took
    on_demand: bool
    bytes: int
    seconds: float
    pid: int
    started: str  # ISO time, for people reading the file

    def to_json(self) -> dict[str, Any]:
        return {
            "village": self.village,
            "kecamatan": self.kecamatan,
            "on_demand": self.on_demand,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "pid": self.pid,
            "started": self.started,
        }


class Ledger:
    """Per-village daily usage, reservations of running tests and the last on-demand starts, in one JSON file.

    Every read-modify-write holds the ledger's own flock. A village's usage is its scheduled and manual tests
    plus its on-demand ones; the on-demand pool is also kept apart, for its own allowance.
    """

    def __init__(self, directory: Path | None = None):
        self.dir = directory or state_dir()
        self.path = self.dir / LEDGER_FILE
        self.lock_path = self.dir / (LEDGER_FILE + ".lock")

    # -------------------------------------------------------------------------------------------- reading
    def usage(self, village: str, now: datetime, *, on_demand: bool = False) -> Usage:
        """The day's usage of `village` (its on-demand pool if on_demand), reservations still open included:
        until a test's real cost is known, its bound is what it may have cost."""
        with self._locked():
            data = self._read()
        day = budget_day(now)
        used = self._usage(data, village, day, on_demand=on_demand)
        for r in _reservations(data):
            if r.village == village and (r.on_demand or not on_demand):
                used = used.plus(r.bytes, r.seconds, 0)
        return used

    def last_on_demand(self, village: str) -> datetime | None:
        """When the village's last on-demand test started (kept across days and restarts)."""
        with self._locked():
            data = self._read()
        return _parse_time((data.get("last_on_demand") or {}).get(village))

    def reservations(self) -> list[Reservation]:
        with self._locked():
            return _reservations(self._read())

    # -------------------------------------------------------------------------------------------- writing
    def charge(self, village: str, now: datetime, nbytes: int, seconds: float, *, on_demand: bool = False) -> Usage:
        """Add one test's cost to the village's day (and to its on-demand pool if on_demand)."""
        if nbytes < 0 or seconds < 0:
            raise ValueError("a charge cannot be negative")
        with self._locked():
            data = self._today(self._read(), budget_day(now))
            used = self._add(data, village, nbytes, seconds, on_demand)
            self._write(data)
            return used

    def reserve(
        self,
        village: str,
        kecamatan: str,
        now: datetime,
        nbytes: int,
        seconds: float,
        *,
        on_demand: bool = False,
    ) -> Reservation:
        """Write a test's upper bound before it starts (and, on demand, its start for the rate limit)."""
        if nbytes < 0 or seconds < 0:
            raise ValueError("a reservation cannot be negative")
        r = Reservation(
            id=secrets.token_hex(8),
            village=village,
            kecamatan=slugify(kecamatan),
            on_demand=on_demand,
            bytes=int(nbytes),
            seconds=float(seconds),
            pid=os.getpid(),
            started=now.astimezone(DAY_TZ).isoformat(timespec="seconds"),
        )
        with self._locked():
            data = self._today(self._read(), budget_day(now))
            data.setdefault("open", {})[r.id] = r.to_json()
            if on_demand:
                data.setdefault("last_on_demand", {})[village] = now.isoformat()
            self._write(data)
        return r

    def settle(self, reservation: Reservation, now: datetime, nbytes: int, seconds: float) -> Usage:
        """Replace a reservation by what the test really cost."""
        if nbytes < 0 or seconds < 0:
            raise ValueError("a charge cannot be negative")
        with self._locked():
            data = self._today(self._read(), budget_day(now))
            data.get("open", {}).pop(reservation.id, None)
            used = self._add(data, reservation.village, nbytes, seconds, reservation.on_demand)
            self._write(data)
            return used

    def settle_abandoned(self, kecamatan: str, now: datetime) -> list[Reservation]:
        """Charge in full the reservations of tests on `kecamatan`'s uplink whose holder is gone.

        Call only while holding that uplink's lock: then no live test on it can hold a reservation, so every
        one left was abandoned by a process that died (SIGKILL) or could not write its real cost."""
        kec = slugify(kecamatan)
        with self._locked():
            data = self._read()
            gone = [r for r in _reservations(data) if r.kecamatan == kec]
            if not gone:
                return []
            data = self._today(data, budget_day(now))
            for r in gone:
                data["open"].pop(r.id, None)
                self._add(data, r.village, r.bytes, r.seconds, r.on_demand)
            self._write(data)
        return gone

    # -------------------------------------------------------------------------------------------- internals
    @staticmethod
    def _today(data: dict[str, Any], day: date) -> dict[str, Any]:
        """The ledger as of `day`: a new day starts with no usage; reservations and on-demand starts carry
        over. A clock that went backwards keeps the newer stored day: usage is never forgiven."""
        stored = _parse_day(data.get("day"))
        if stored is None or day > stored:
            return {
                "version": LEDGER_VERSION,
                "timezone": str(DAY_TZ),
                "day": day.isoformat(),
                "villages": {},
                "open": data.get("open") or {},
                "last_on_demand": _recent(data.get("last_on_demand") or {}, day),
            }
        data["version"] = LEDGER_VERSION
        data.setdefault("open", {})
        data.setdefault("last_on_demand", {})
        data.setdefault("villages", {})
        return data

    @staticmethod
    def _add(data: dict[str, Any], village: str, nbytes: int, seconds: float, on_demand: bool) -> Usage:
        day = _parse_day(data["day"])
        assert day is not None
        entry = data["villages"].setdefault(village, {})
        total = Ledger._usage(data, village, day).plus(nbytes, seconds)
        entry.update(total.to_json())
        if on_demand:
            entry["on_demand"] = Ledger._usage(data, village, day, on_demand=True).plus(nbytes, seconds).to_json()
        return total

    @staticmethod
    def _usage(data: dict[str, Any], village: str, day: date, *, on_demand: bool = False) -> Usage:
        stored = _parse_day(data.get("day"))
        if stored is None or day > stored:
            return Usage()
        v = (data.get("villages") or {}).get(village) or {}
        if on_demand:
            v = v.get("on_demand") or {}
        return Usage(int(v.get("bytes", 0)), float(v.get("seconds", 0.0)), int(v.get("tests", 0)))

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise Refused(f"cannot read the budget ledger {self.path}: {exc.strerror}", reason="ledger") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            problem: str | None = f"not JSON: {exc}"
        else:
            problem = _ledger_problem(data)
        if problem is not None:
            # Unknown usage must not become unlimited usage: refuse until a person looks.
            raise Refused(
                f"the budget ledger {self.path} is damaged ({problem}); repair or remove it to allow tests",
                reason="ledger",
            )
        result: dict[str, Any] = data
        return result

    def _write(self, data: dict[str, Any]) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".budget-", suffix=".tmp", dir=self.dir)
        except OSError as exc:
            raise Refused(f"cannot write the budget ledger {self.path}: {exc.strerror}", reason="ledger") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise Refused(f"cannot write the budget ledger {self.path}: {exc.strerror}", reason="ledger") from None
            raise
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        _make_dir(self.dir)
        with open(self.lock_path, "a+") as fh:
            deadline = time.monotonic() + _LEDGER_LOCK_WAIT
            while True:  # bounded: the ledger lock is only ever held for one read-modify-write
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Refused(
                            f"the budget ledger {self.path} stayed locked for {_LEDGER_LOCK_WAIT:g} s", reason="ledger"
                        ) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _ledger_problem(data: Any) -> str | None:
    """What is wrong with a parsed ledger, in words naming the key, or None. Checked whole on every read so a
    hand edit or a torn write is refused, never half-trusted."""
    if not isinstance(data, dict):
        return "not a JSON object"
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= LEDGER_VERSION:
        return f"version {version!r} is not one this desanet reads (1–{LEDGER_VERSION})"
    if "day" in data and _parse_day(data["day"]) is None:
        return f"day {data['day']!r} is not a date"

    def counts(where: str, v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"{where} is not an object"
        for key in ("bytes", "seconds", "tests"):
            x = v.get(key, 0)
            if isinstance(x, bool) or not isinstance(x, int | float) or x < 0 or x != x:
                return f"{where}.{key} is {x!r}, not a count"
        return None

    for name in ("villages", "open", "last_on_demand"):
        if not isinstance(data.get(name, {}), dict):
            return f"{name} is not an object"
    for slug, v in (data.get("villages") or {}).items():
        problem = counts(f"villages.{slug}", v)
        if problem is None and "on_demand" in v:
            problem = counts(f"villages.{slug}.on_demand", v["on_demand"])
        if problem:
            return problem
    for rid, r in (data.get("open") or {}).items():
        problem = counts(f"open.{rid}", r)
        if problem:
            return problem
        for key in ("village", "kecamatan"):
            if not isinstance(r.get(key), str):
                return f"open.{rid}.{key} is {r.get(key)!r}, not a name"
        if isinstance(r.get("pid", 0), bool) or not isinstance(r.get("pid", 0), int):
            return f"open.{rid}.pid is {r.get('pid')!r}, not a process id"
    for slug, when in (data.get("last_on_demand") or {}).items():
        if _parse_time(when) is None:
            return f"last_on_demand.{slug} is {when!r}, not a time"
    return None


def _reservations(data: dict[str, Any]) -> list[Reservation]:
    return [
        Reservation(
            id=rid,
            village=r["village"],
            kecamatan=r["kecamatan"],
            on_demand=bool(r.get("on_demand", False)),
            bytes=int(r.get("bytes", 0)),
            seconds=float(r.get("seconds", 0.0)),
            pid=int(r.get("pid", 0)),
            started=str(r.get("started", "")),
        )
        for rid, r in (data.get("open") or {}).items()
    ]


def _recent(starts: dict[str, Any], day: date) -> dict[str, Any]:
    """On-demand starts worth keeping into `day`: a rate limit never spans more than a day (86400 s max)."""
    cutoff = datetime.combine(day, datetime.min.time(), DAY_TZ) - timedelta(days=1)
    return {k: v for k, v in starts.items() if (t := _parse_time(v)) is not None and t >= cutoff}


def _parse_time(v: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(v) if isinstance(v, str) else None
    except ValueError:
        return None
    return t if t is not None and t.tzinfo is not None else None


def _parse_day(v: Any) -> date | None:
    try:
        return date.fromisoformat(v) if isinstance(v, str) else None
    except ValueError:
        return None


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Refused(
            f"cannot create the state directory {path}: {exc.strerror} (set DESANET_STATE_DIR to a writable place)"
        ) from None


# ---------------------------------------------------------------------------------------------- uplink lock
class UplinkLock:
    """A non-blocking exclusive flock on state_dir/locks/uplink-<kecamatan>.lock."""

    def __init__(self, directory: Path, kecamatan: str):
        self.kecamatan = kecamatan
        self.path = directory / "locks" / f"uplink-{slugify(kecamatan)}.lock"
        self._fh: IO[str] | None = None

    def acquire(self, holder: str) -> None:
        _make_dir(self.path.parent)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's life
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                fh.close()
                raise Refused(f"cannot lock {self.path}: {exc.strerror}") from None
            fh.seek(0)
            who = fh.read(500).strip()
            fh.close()
            raise Refused(
                f"uplink busy: another throughput test is using kecamatan {self.kecamatan}'s uplink"
                + (f" ({who})" if who else "")
                + "; try again when it ends",
                reason="uplink_busy",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(holder)
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.seek(0)
                self._fh.truncate()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


# ---------------------------------------------------------------------------------------------- the slot
ProbeRun = Callable[[str, "tp.ThroughputSettings", "tp.ProgressCallback"], Awaitable["tp.ThroughputResult"]]


async def _probe(address: str, settings: tp.ThroughputSettings, progress: tp.ProgressCallback) -> tp.ThroughputResult:
    return await tp.probe(address, settings, progress=progress)


@dataclass
class TestSlot:
    """Permission to run one test now, with the caps it must run under."""

    village: Village
    started: datetime
    max_seconds: float  # per direction: the inventory's max_seconds, capped by what the day has left
    remaining_bytes: int  # the day's byte budget left when the slot was taken (the on-demand one's if smaller)
    remaining_seconds: float
    _ledger: Ledger = field(repr=False)
    on_demand: bool = False
    origin: str = "scheduled"  # who asked, for the logs: scheduled, on-demand, cli, check
    _t0: float = field(default_factory=time.monotonic, repr=False)
    charged: bool = False
    charged_bytes: int = 0  # what this slot has charged so far

    __test__ = False  # not a pytest class, whatever its name says

    def caps(self, directions: int) -> tuple[float, int]:
        """(max_seconds, max_bytes) for each of `directions` tests run in this slot."""
        n = max(1, directions)
        return min(self.max_seconds, self.remaining_seconds / n), max(1, self.remaining_bytes // n)

    def charge(self, nbytes: int, seconds: float) -> Usage:
        """Record a cost measured outside measure(). May be called more than once (e.g. once per direction)."""
        self.charged = True
        self.charged_bytes += int(nbytes)
        return self._ledger.charge(self.village.slug, self.started, nbytes, seconds, on_demand=self.on_demand)

    async def measure(
        self,
        address: str,
        settings: tp.ThroughputSettings,
        *,
        progress: tp.ProgressCallback | None = None,
        run: ProbeRun = _probe,
    ) -> tp.ThroughputResult:
        """Run one throughput probe in this slot and charge what it moved, whatever ends it (module docstring).

        `settings` must carry this slot's caps (max_bytes from caps(); max_seconds within the slot's). `run` is
        the probe (a test may pass its own); it must pass `progress` on to probes.throughput.probe."""
        if settings.max_bytes is None or settings.max_bytes > self.remaining_bytes:
            raise ValueError(f"max_bytes {settings.max_bytes} is not within the slot's {self.remaining_bytes}")
        if settings.max_seconds > self.max_seconds + 1e-9:
            raise ValueError(f"max_seconds {settings.max_seconds:g} is more than the slot's {self.max_seconds:g}")
        directions = 2 if settings.direction == "both" else 1
        bound = tp.payload_bound(settings, tp.receive_buffer_max())
        v = self.village
        reservation = self._ledger.reserve(
            v.slug, v.kecamatan, self.started, bound, directions * settings.max_seconds, on_demand=self.on_demand
        )
        self.charged = True
        log.info(
            "throughput test starting",
            extra={
                "village": v.slug,
                "kecamatan": v.kecamatan,
                "origin": self.origin,
                "direction": settings.direction,
                "protocol": settings.protocol,
                "max_seconds": settings.max_seconds,
                "max_bytes": settings.max_bytes,
                "reserved_bytes": bound,
            },
        )
        finals: dict[int, tuple[int, float]] = {}

        def meter(p: tp.Progress) -> None:
            finals[p.test] = (p.bytes, p.seconds)  # the last report of each test is its final, exact one
            if progress is not None and not p.final:
                progress(p)

        nbytes, seconds, ended = 0, 0.0, "cancelled"
        try:
            result = await run(address, settings, meter)
            parts = [d for d in (result.down, result.up) if d is not None]
            nbytes, seconds, ended = sum(d.bytes for d in parts), sum(d.seconds for d in parts), "finished"
            return result
        except tp.ThroughputError as exc:
            nbytes, seconds, ended = exc.bytes_moved, exc.seconds, "failed"
            raise
        except asyncio.CancelledError:
            raise
        except BaseException:
            ended = "failed"
            raise
        finally:
            # Each source is exact when present; the larger is kept so a missing one never lowers the charge.
            nbytes = max(nbytes, sum(b for b, _ in finals.values()))
            seconds = max(seconds, sum(s for _, s in finals.values()))
            self._settle(reservation, nbytes, seconds, ended)

    def _settle(self, reservation: Reservation, nbytes: int, seconds: float, ended: str) -> None:
        """Replace the reservation by the real cost. If that cannot be written the reservation stays, and the
        next slot on this uplink charges it in full: never less than what moved."""
        self.charged_bytes += nbytes
        try:
            self._ledger.settle(reservation, self.started, nbytes, seconds)
        except (Refused, OSError) as exc:
            log.error(
                "throughput test cost not written; its reservation stays charged",
                extra={"village": self.village.slug, "ledger": str(self._ledger.path), "reason": str(exc)},
            )
            return
        log.info(
            "throughput test charged",
            extra={
                "village": self.village.slug,
                "origin": self.origin,
                "ended": ended,
                "bytes": nbytes,
                "seconds": round(seconds, 3),
            },
        )


def _refuse_on_demand(inventory: Inventory, village: Village, ledger: Ledger, now: datetime) -> tuple[int, float]:
    """The on-demand rules, for a village whose uplink lock is held: refuse in words, or return the on-demand
    allowance left today (bytes, seconds)."""
    od = inventory.settings.throughput.on_demand
    used = ledger.usage(village.slug, now, on_demand=True)
    left_bytes = int(od.budget_megabytes_per_day * 1_000_000) - used.bytes
    left_seconds = od.budget_seconds_per_day - used.seconds
    if left_bytes < MIN_TEST_BYTES or left_seconds < MIN_TEST_SECONDS:
        midnight = datetime.combine(budget_day(now) + timedelta(days=1), datetime.min.time(), DAY_TZ)
        raise Refused(
            f"{village.name}'s on-demand test allowance is spent: {used.bytes / 1e6:.1f} of "
            f"{od.budget_megabytes_per_day:g} MB and {used.seconds:.1f} of {od.budget_seconds_per_day:g} s used "
            f"today ({used.tests} tests); it resets at 00:00 WIB",
            reason="on_demand_budget",
            retry_after=max(1.0, (midnight - now).total_seconds()),
        )
    last = ledger.last_on_demand(village.slug)
    if last is not None:
        wait = od.min_interval_seconds - (now - last).total_seconds()
        if wait > 0:
            raise Refused(
                f"{village.name} had an on-demand test at {last.astimezone(DAY_TZ):%H:%M:%S} WIB; at most one "
                f"every {od.min_interval_seconds:g} s (settings.throughput.on_demand.min_interval_seconds), "
                f"next from {(now + timedelta(seconds=wait)).astimezone(DAY_TZ):%H:%M:%S} WIB",
                reason="rate_limit",
                retry_after=wait,
            )
    return left_bytes, left_seconds


@contextlib.contextmanager
def acquire_test_slot(
    inventory: Inventory,
    village: Village,
    now: datetime,
    force: bool = False,
    *,
    directions: int = 2,
    directory: Path | None = None,
    on_demand: bool = False,
    origin: str | None = None,
) -> Iterator[TestSlot]:
    """Take the village's kecamatan uplink for one test, or raise Refused saying why not.

    `directions` (1 or 2) sizes the window checked against upcoming sessions. `force` overrides the session
    rule only; budgets and exclusivity always hold, and on-demand tests (`on_demand`, from /probe) are never
    forced. `origin` names the asker in the logs (default: scheduled, or on-demand).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    origin = origin or ("on-demand" if on_demand else "scheduled")
    try:
        with _slot(inventory, village, now, force and not on_demand, directions, directory, on_demand, origin) as slot:
            yield slot
    except Refused as exc:
        log.info(
            "throughput test refused",
            extra={"village": village.slug, "origin": origin, "reason": exc.reason, "detail": str(exc)},
        )
        raise


@contextlib.contextmanager
def _slot(
    inventory: Inventory,
    village: Village,
    now: datetime,
    force: bool,
    directions: int,
    directory: Path | None,
    on_demand: bool,
    origin: str,
) -> Iterator[TestSlot]:
    cfg = inventory.settings.throughput
    test_seconds = cfg.on_demand.max_seconds if on_demand else cfg.max_seconds
    if on_demand and not cfg.on_demand.enabled:
        raise Refused(
            "on-demand throughput tests are off: /probe?module=throughput fills a village's link, so it runs only "
            "when the inventory sets settings.throughput.on_demand.enabled",
            reason="disabled",
        )
    if not force:
        session = inventory.in_session(village, now)
        if session is not None:
            occ = session.occurrence_at_or_after(now)
            end = occ + session.duration if occ else None
            until = f" until {end.astimezone(DAY_TZ):%H:%M} WIB" if end else ""
            raise Refused(
                f"{village.name} is in its scheduled session {session.title!r}{until}; a test now would disturb it "
                "(force it if you must)",
                reason="session",
                retry_after=(end - now).total_seconds() if end else None,
            )
        window = timedelta(seconds=directions * test_seconds + SETUP_SECONDS)
        upcoming = inventory.next_session(village, now)
        if upcoming is not None and upcoming[1] <= now + window:
            raise Refused(
                f"{village.name}'s session {upcoming[0].title!r} starts at "
                f"{upcoming[1].astimezone(DAY_TZ):%H:%M} WIB, within this test's window; a test would run into it "
                "(force it if you must)",
                reason="session",
                retry_after=(upcoming[1] + upcoming[0].duration - now).total_seconds(),
            )
    directory = directory or state_dir()
    lock = UplinkLock(directory, village.kecamatan)
    try:
        lock.acquire(f"{village.slug}, pid {os.getpid()}, {origin}, since {now.astimezone(DAY_TZ):%H:%M:%S} WIB")
    except Refused as exc:
        if exc.reason == "uplink_busy":
            exc.retry_after = directions * cfg.max_seconds + SETUP_SECONDS  # the longest test that may hold it
        raise
    try:
        ledger = Ledger(directory)
        for r in ledger.settle_abandoned(village.kecamatan, now):
            log.warning(
                "throughput test abandoned (its process died); charged its reservation in full",
                extra={
                    "village": r.village,
                    "bytes": r.bytes,
                    "seconds": r.seconds,
                    "pid": r.pid,
                    "since": r.started,
                    "ledger": str(ledger.path),
                },
            )
        used = ledger.usage(village.slug, now)
        budget_bytes = int(cfg.budget_megabytes_per_day * 1_000_000)
        left_bytes = budget_bytes - used.bytes
        left_seconds = cfg.budget_seconds_per_day - used.seconds
        if left_bytes < MIN_TEST_BYTES or left_seconds < MIN_TEST_SECONDS:
            midnight = datetime.combine(budget_day(now) + timedelta(days=1), datetime.min.time(), DAY_TZ)
            raise Refused(
                f"{village.name}'s daily test budget is spent: {used.bytes / 1e6:.1f} of "
                f"{cfg.budget_megabytes_per_day:g} MB and {used.seconds:.1f} of {cfg.budget_seconds_per_day:g} s "
                f"used today ({used.tests} tests); it resets at 00:00 WIB",
                reason="budget",
                retry_after=max(1.0, (midnight - now).total_seconds()),
            )
        max_seconds = cfg.max_seconds
        if on_demand:
            od_bytes, od_seconds = _refuse_on_demand(inventory, village, ledger, now)
            left_bytes, left_seconds = min(left_bytes, od_bytes), min(left_seconds, od_seconds)
            max_seconds = min(max_seconds, cfg.on_demand.max_seconds)
        slot = TestSlot(
            village=village,
            started=now,
            max_seconds=min(max_seconds, left_seconds),
            remaining_bytes=left_bytes,
            remaining_seconds=left_seconds,
            _ledger=ledger,
            on_demand=on_demand,
            origin=origin,
        )
        try:
            yield slot
        finally:
            if not slot.charged:
                slot.charge(0, time.monotonic() - slot._t0)
    finally:
        lock.release()
