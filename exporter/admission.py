"""Who may run an on-demand probe now: a per-village allowance per module and a cap on probes in flight.

/probe runs the scheduler's probes on request, and the request can come from anyone who reaches the exporter:
unlimited, 100 concurrent STAMP streams once filled a 50 Mbit/s village's link and took a 20 Mbit/s village's
RTT from 0.08 ms to 55 ms. Each (village, module) may run one on-demand probe per `every_seconds` (a token
bucket holding one token, as blackbox-style scrapes every 15-60 s never notice), at most MAX_IN_FLIGHT run at
once, and the module's scheduled concurrency limit (the scheduler's semaphores) applies on top. A request
over a limit is refused at once with the reason and when to retry: it is never queued without bound.

Pure bookkeeping on a clock the caller passes in; thread-safe because HTTP threads call it.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass

TOO_MANY_REQUESTS = 429  # over the village's allowance (RFC 6585)
SERVICE_UNAVAILABLE = 503  # every slot busy: try again shortly


@dataclass(frozen=True)
class Allowance:
    """One on-demand probe of a module per village per `every_seconds`."""

    every_seconds: float


# What a module may spend on one village on demand. STAMP: 2 s of 50 packets/s of 1200 octets, so at most
# about 124 kB each way per 30 s (33 kbit/s averaged), against 40 Mbit/s for the unlimited burst above.
ALLOWANCES: dict[str, Allowance] = {
    "icmp": Allowance(5.0),
    "snmp": Allowance(10.0),
    "stamp": Allowance(30.0),
    "trace": Allowance(30.0),
    "throughput": Allowance(300.0),
}
MAX_IN_FLIGHT = 16


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused, in words, with the HTTP status and Retry-After that say so."""

    status: int
    retry_after_seconds: float
    reason: str

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.retry_after_seconds)))


class Busy(Exception):
    """Raised by the scheduler when the module's concurrency limit stays full for the time a request can wait."""

    def __init__(self, reason: str, retry_after_seconds: float = 5.0):
        super().__init__(reason)
        self.retry_after_seconds = retry_after_seconds


class Admission:
    def __init__(self, allowances: dict[str, Allowance] | None = None, max_in_flight: int = MAX_IN_FLIGHT):
        self.allowances = dict(allowances if allowances is not None else ALLOWANCES)
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.refused: Counter[tuple[str, str]] = Counter()  # (module, "rate" | "busy") -> count
        self._next: dict[tuple[str, str], float] = {}  # (village, module) -> when its next probe may start
        self._lock = threading.Lock()

    def admit(self, village: str, module: str, now: float) -> Refusal | None:
        """Take the village's allowance and a slot, or say why not. Call done() after an admitted probe."""
        allowance = self.allowances[module]
        key = (village, module)
        with self._lock:
            wait = self._next.get(key, -math.inf) - now
            if wait > 0:
                self.refused[(module, "rate")] += 1
                return Refusal(
                    TOO_MANY_REQUESTS,
                    wait,
                    f"refused: {village} had an on-demand {module} probe {allowance.every_seconds - wait:.1f} s ago; "
                    f"one per {allowance.every_seconds:g} s per village is allowed (retry in {math.ceil(wait)} s)",
                )
            if self.in_flight >= self.max_in_flight:
                self.refused[(module, "busy")] += 1
                return Refusal(
                    SERVICE_UNAVAILABLE,
                    2.0,
                    f"refused: {self.in_flight} on-demand probes are running, the most allowed at once",
                )
            self._next[key] = now + allowance.every_seconds
            self.in_flight += 1
            return None

    def busy(self, village: str, module: str, exc: Busy) -> Refusal:
        """An admitted probe that found its module's slots full: refund the allowance, since nothing was sent."""
        with self._lock:
            self._next.pop((village, module), None)
            self.refused[(module, "busy")] += 1
        return Refusal(SERVICE_UNAVAILABLE, exc.retry_after_seconds, f"refused: {exc}")

    def refund(self, village: str, module: str, refusal: Refusal, reason: str) -> Refusal:
        """An admitted probe refused further on (a throughput test by its budget, desanet.budget): nothing was
        sent, so the allowance is given back and the refusal counted under `reason`."""
        with self._lock:
            self._next.pop((village, module), None)
            self.refused[(module, reason)] += 1
        return refusal

    def done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def forget(self, villages: set[str]) -> None:
        """Drop the allowances of villages no longer in the inventory (the table stays bounded by it)."""
        with self._lock:
            for key in [k for k in self._next if k[0] not in villages]:
                del self._next[key]
