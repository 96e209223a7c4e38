"""HTTP load for the exporter's tests: a burst of concurrent raw-socket requests, and a normal scraper.

    python tests/httpload.py burst --port 19917 --metrics 1000 --waves 3 --probe '/probe?target=kabat&module=stamp'
    python tests/httpload.py normal --port 19917 --seconds 8

`burst` opens every connection of a wave at once (asyncio, one request per connection, `Connection: close`,
as a flood does) and prints one JSON line: each request's path, status (or `reset`, `refused`, `timeout`,
`eof`) and seconds. `normal` scrapes /metrics every `--interval` seconds over one kept-alive connection, as
Prometheus does, and prints each scrape's start time, status and seconds. Run them as separate processes, so
the scraper's timings are not the load generator's own GIL queue. Every loop is bounded by count and time.
Only 127.0.0.0/8 (or the lab's NOC namespace, where the caller runs it) is ever addressed: the host is an
argument, 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import resource
import sys
import time
from typing import Any

REQUEST_TIMEOUT = 30.0


async def _one(host: str, port: int, path: str, timeout: float, gzip: bool = False) -> dict[str, Any]:
    t0 = time.monotonic()
    status: int | str
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            accept = "Accept-Encoding: gzip\r\n" if gzip else ""
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{accept}Connection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        line = data.split(b"\r\n", 1)[0].split()
        status = int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit() else "eof"
    except ConnectionResetError:
        status = "reset"
    except ConnectionRefusedError:
        status = "refused"
    except TimeoutError:
        status = "timeout"
    except OSError as exc:
        status = f"oserror-{exc.errno}"
    finally:
        if writer is not None:
            writer.close()
    return {"path": path, "status": status, "start": t0, "seconds": time.monotonic() - t0}


async def burst(
    host: str, port: int, metrics: int, waves: int, probes: list[str], gzip: bool = False
) -> list[dict[str, Any]]:
    """`waves` back-to-back waves of `metrics` concurrent /metrics; the /probe paths all at once with wave 1."""
    probe_tasks = [asyncio.create_task(_one(host, port, p, REQUEST_TIMEOUT)) for p in probes]
    out: list[dict[str, Any]] = []
    for _ in range(max(1, min(waves, 20))):
        out += await asyncio.gather(*(_one(host, port, "/metrics", REQUEST_TIMEOUT, gzip) for _ in range(metrics)))
    out += await asyncio.gather(*probe_tasks)
    return out


def normal(host: str, port: int, seconds: float, interval: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    end = time.monotonic() + min(seconds, 300.0)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    while time.monotonic() < end:
        t0 = time.monotonic()
        status: int | str
        try:
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=10)
        out.append({"status": status, "start": t0, "seconds": time.monotonic() - t0})
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    conn.close()
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("burst")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--metrics", type=int, default=1000)
    b.add_argument("--waves", type=int, default=1)
    b.add_argument("--probe", action="append", default=[])
    b.add_argument("--gzip", action="store_true", help="ask for gzip, as Prometheus does (a flood need not)")
    n = sub.add_parser("normal")
    n.add_argument("--host", default="127.0.0.1")
    n.add_argument("--port", type=int, required=True)
    n.add_argument("--seconds", type=float, default=5.0)
    n.add_argument("--interval", type=float, default=0.05)
    a = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # a socket per request
    if a.cmd == "burst":
        result = asyncio.run(burst(a.host, a.port, min(a.metrics, 5000), a.waves, a.probe[:1000], a.gzip))
    else:
        result = normal(a.host, a.port, a.seconds, a.interval)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
