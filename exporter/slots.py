"""A limit on probes running at once whose size can change while probes wait (asyncio.Semaphore's cannot).

STAMP's limit follows the shard's village count (exporter/scheduler.py `stamp_slots`), which an inventory
reload changes; the scheduled bursts and the on-demand ones (`/probe?module=stamp`) share it. Growing wakes
waiters at once; shrinking lets the bursts in flight finish and holds new ones back until fewer run. It also
says how many run and how many wait, which the exporter shows (`desanet_stamp_bursts_*`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType


class Slots:
    """First come, first served: a newcomer never overtakes a waiter, so a queue cannot starve anyone."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a limit of {limit} would never let a probe run")
        self.limit = limit
        self.in_use = 0
        self.waiting = 0  # plain ints: the exporter's HTTP thread reads them while the loop runs
        self._waiters: deque[asyncio.Future[None]] = deque()

    def resize(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a limit of {limit} would never let a probe run")
        self.limit = limit
        self._wake()

    async def acquire(self) -> None:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.waiting += 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before it could run: pass the slot on
            else:
                fut.cancel()
                self.waiting -= 1
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError("Slots.release() without a matching acquire()")
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.limit:
            fut = self._waiters.popleft()
            if fut.done():  # cancelled while waiting (acquire counted it out)
                continue
            self.waiting -= 1
            self.in_use += 1
            fut.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
