"""One STAMP reflector process for every village of the lab.

A kantor desa would run `desanet reflector` on its own box; 217 Python processes would not fit this 2-core
machine, so the lab runs one reflector that owns a socket in each village's namespace (a socket keeps the
namespace it was created in) and serves them all from one event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
from pathlib import Path

from desanet.lab.netns import socket_in_netns
from desanet.probes.reflector import Reflector

log = logging.getLogger("desanet.lab.reflectors")


def _bound_socket(ns: str, address: str, port: int) -> socket.socket:
    sock = socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    return sock


async def serve(endpoints: list[tuple[str, str, int]]) -> None:
    reflector = Reflector()
    for ns, address, port in endpoints:
        reflector.attach(_bound_socket(ns, address, port))
    log.info("reflecting for %d villages", len(endpoints))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        reflector.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="desanet lab: STAMP reflectors in every village namespace")
    ap.add_argument("--endpoints", type=Path, required=True, help="JSON list of [namespace, address, port]")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s reflectors %(levelname)s %(message)s")
    endpoints = [(str(ns), str(addr), int(port)) for ns, addr, port in json.loads(args.endpoints.read_text())]
    asyncio.run(serve(endpoints))


if __name__ == "__main__":
    main()
