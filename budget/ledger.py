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
   remainder as hard caps (max_seconds, max_bytes), so a test cannot overspend by more than one sampling
   tick.

    with acquire_test_slot(inventory, village, now) as slot:
        result = await probe(address, settings_capped_by(slot))
        slot.charge(bytes_moved, seconds)

A slot left without charge() is charged the wall time it was held (with 0 bytes): time is always known.
Refusals raise Refused with the reason in words.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from desanet.district import Inventory, Village, slugify

DEFAULT_STATE_DIR = "/var/lib/desanet"
DAY_TZ = ZoneInfo("Asia/Jakarta")
LEDGER_FILE = "throughput-budget.json"
MIN_TEST_SECONDS = 2.0  # less time than this left in the day's budget is not worth a test
MIN_TEST_BYTES = 1_000_000  # nor less than 1 MB
SETUP_SECONDS = 10.0  # allowance for connecting and exchanging results around the data phases
_LEDGER_LOCK_WAIT = 5.0


class Refused(Exception):
    """A test may not run now; str(exc) says why in words."""


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


class Ledger:
    """Per-village daily usage in one JSON file. Every read-modify-write holds the ledger's own flock."""

    def __init__(self, directory: Path | None = None):
        self.dir = directory or state_dir()
        self.path = self.dir / LEDGER_FILE
        self.lock_path = self.dir / (LEDGER_FILE + ".lock")

    def usage(self, village: str, now: datetime) -> Usage:
        with self._locked():
            return self._usage(self._read(), village, budget_day(now))

    def charge(self, village: str, now: datetime, nbytes: int, seconds: float) -> Usage:
        if nbytes < 0 or seconds < 0:
            raise ValueError("a charge cannot be negative")
        day = budget_day(now)
        with self._locked():
            data = self._read()
            stored = _parse_day(data.get("day"))
            if stored is None or day > stored:
                data = {"version": 1, "timezone": str(DAY_TZ), "day": day.isoformat(), "villages": {}}
            # A clock that went backwards charges the newer stored day: never forgive usage.
            old = self._usage(data, village, _parse_day(data["day"]) or day)
            new = Usage(old.bytes + int(nbytes), old.seconds + float(seconds), old.tests + 1)
            data["villages"][village] = {"bytes": new.bytes, "seconds": round(new.seconds, 3), "tests": new.tests}
            self._write(data)
            return new

    @staticmethod
    def _usage(data: dict[str, Any], village: str, day: date) -> Usage:
        stored = _parse_day(data.get("day"))
        if stored is None or day > stored:
            return Usage()
        v = (data.get("villages") or {}).get(village) or {}
        return Usage(int(v.get("bytes", 0)), float(v.get("seconds", 0.0)), int(v.get("tests", 0)))

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise Refused(f"cannot read the budget ledger {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("villages", {}), dict):
                raise ValueError("not a ledger")
        except ValueError:
            # Unknown usage must not become unlimited usage: refuse until a person looks.
            raise Refused(f"the budget ledger {self.path} is damaged; repair or remove it to allow tests") from None
        return data

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".budget-", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
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
                            f"the budget ledger {self.path} stayed locked for {_LEDGER_LOCK_WAIT:g} s"
                        ) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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
                + "; try again when it ends"
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
@dataclass
class TestSlot:
    """Permission to run one test now, with the caps it must run under."""

    village: Village
    started: datetime
    max_seconds: float  # per direction: the inventory's max_seconds, capped by what the day has left
    remaining_bytes: int  # the day's byte budget left when the slot was taken
    remaining_seconds: float
    _ledger: Ledger = field(repr=False)
    _t0: float = field(default_factory=time.monotonic, repr=False)
    charged: bool = False

    __test__ = False  # not a pytest class, whatever its name says

    def caps(self, directions: int) -> tuple[float, int]:
        """(max_seconds, max_bytes) for each of `directions` tests run in this slot."""
        n = max(1, directions)
        return min(self.max_seconds, self.remaining_seconds / n), max(1, self.remaining_bytes // n)

    def charge(self, nbytes: int, seconds: float) -> Usage:
        """Record what the test cost. May be called more than once (e.g. once per direction)."""
        self.charged = True
        return self._ledger.charge(self.village.slug, self.started, nbytes, seconds)


@contextlib.contextmanager
def acquire_test_slot(
    inventory: Inventory,
    village: Village,
    now: datetime,
    force: bool = False,
    *,
    directions: int = 2,
    directory: Path | None = None,
) -> Iterator[TestSlot]:
    """Take the village's kecamatan uplink for one test, or raise Refused saying why not.

    `directions` (1 or 2) sizes the window checked against upcoming sessions. `force` overrides the session
    rule only; budgets and exclusivity always hold.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    cfg = inventory.settings.throughput
    if not force:
        session = inventory.in_session(village, now)
        if session is not None:
            occ = session.occurrence_at_or_after(now)
            until = f" until {(occ + session.duration).astimezone(DAY_TZ):%H:%M} WIB" if occ else ""
            raise Refused(
                f"{village.name} is in its scheduled session {session.title!r}{until}; a test now would disturb it "
                "(force it if you must)"
            )
        window = timedelta(seconds=directions * cfg.max_seconds + SETUP_SECONDS)
        upcoming = inventory.next_session(village, now)
        if upcoming is not None and upcoming[1] <= now + window:
            raise Refused(
                f"{village.name}'s session {upcoming[0].title!r} starts at "
                f"{upcoming[1].astimezone(DAY_TZ):%H:%M} WIB, within this test's window; a test would run into it "
                "(force it if you must)"
            )
    directory = directory or state_dir()
    lock = UplinkLock(directory, village.kecamatan)
    lock.acquire(f"{village.slug}, pid {os.getpid()}, since {now.astimezone(DAY_TZ):%H:%M:%S} WIB")
    try:
        ledger = Ledger(directory)
        used = ledger.usage(village.slug, now)
        budget_bytes = int(cfg.budget_megabytes_per_day * 1_000_000)
        left_bytes = budget_bytes - used.bytes
        left_seconds = cfg.budget_seconds_per_day - used.seconds
        if left_bytes < MIN_TEST_BYTES or left_seconds < MIN_TEST_SECONDS:
            raise Refused(
                f"{village.name}'s daily test budget is spent: {used.bytes / 1e6:.1f} of "
                f"{cfg.budget_megabytes_per_day:g} MB and {used.seconds:.1f} of {cfg.budget_seconds_per_day:g} s "
                f"used today ({used.tests} tests); it resets at 00:00 WIB"
            )
        slot = TestSlot(
            village=village,
            started=now,
            max_seconds=min(cfg.max_seconds, left_seconds),
            remaining_bytes=left_bytes,
            remaining_seconds=left_seconds,
            _ledger=ledger,
        )
        try:
            yield slot
        finally:
            if not slot.charged:
                slot.charge(0, time.monotonic() - slot._t0)
    finally:
        lock.release()
