"""Drive desanet's IcmpEngine the way `desanet serve` does, for bench_icmp.py: no exporter, just the engine.

Continuous mode probes every address in a file once per `--interval` for `--seconds`, resets the engine's
lateness accounting after `--warmup`, and prints one JSON line: echoes decided after the warm-up, lost (all
targets answer, so every loss is false), and the send lateness figures. Train mode (`--train`) sends one
train per address and prints each echo's (send time, RTT) for the accuracy comparison. Run it inside the
probing namespace (`ip netns exec ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from desanet.probes.icmp import LATENESS_BUCKETS_SECONDS, IcmpEngine, IcmpSettings


async def continuous(addresses: list[str], interval: float, warmup: float, seconds: float) -> dict[str, object]:
    async with IcmpEngine() as engine:
        kind = engine.open()
        targets = [engine.add_target(a, interval) for a in addresses]
        await asyncio.sleep(warmup)
        engine.stats.reset_lateness()
        start = time.time()
        await asyncio.sleep(seconds)
        stats = engine.stats
        late = {
            "continuous_sends": stats.continuous_sends,
            "late_sends_over_10ms": stats.late_sends_over_10ms,
            "max_send_lateness_s": round(stats.max_send_lateness_seconds, 6),
            "lateness_hist": dict(zip(map(str, LATENESS_BUCKETS_SECONDS), stats.lateness_histogram, strict=True)),
        }
        # Echoes sent in the measured window whose fate is decided (the last timeout's worth is still in flight).
        end = time.time() - 1.0
        sent = received = 0
        for t in targets:
            r = t.window(end - start, end)
            sent += r.sent
            received += r.received
        skipped = sum(t.skipped for t in targets)
        return {
            "socket": kind,
            "sent": sent,
            "received": received,
            "lost": sent - received,
            "skipped": skipped,
            "overruns": stats.overruns,
            "batch_window_s": engine.batch_window,
            "wakeups": stats.wakeups,
            **late,
        }


async def trains(addresses: list[str], count: int, interval: float) -> dict[str, object]:
    async with IcmpEngine() as engine:
        out: dict[str, object] = {}
        for a in addresses:
            r = await engine.train(a, IcmpSettings(count=count, interval=interval, timeout=1.0))
            out[a] = {"timestamping": r.timestamping, "samples": r.samples}
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-f", "--targets", type=Path, required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--train", type=int, default=0, help="send one train of this many echoes per address instead")
    args = ap.parse_args()
    addresses = args.targets.read_text().split()
    if args.train:
        print(json.dumps(asyncio.run(trains(addresses, args.train, args.interval))))
    else:
        print(json.dumps(asyncio.run(continuous(addresses, args.interval, args.warmup, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
