"""/probe?module=throughput on a live `desanet serve`: off unless the inventory enables it; when enabled, its own
allowance and rate limit hold, across a restart, and a refusal says why with an HTTP status. (A request cut
short by its scrape timeout is in tests/test_budget_lab.py: loopback finishes a test before any timeout.)

A real exporter, a real iperf3 server and real HTTP requests, all on 127.0.0.1 (the test suite's own network
namespace when run by scripts/test.sh). The exporter's generic /probe admission (one throughput request per
village per 300 s, in memory) would answer a second request in the same process before the budget does, so
the budget's limits, which live in the ledger, are shown across a restart of the exporter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_throughput import Iperf3Server, needs_iperf3

pytestmark = [needs_iperf3, pytest.mark.slow]

INVENTORY = textwrap.dedent(
    """
    district: Loopback
    defaults:
      snmp: {{version: 2c, community: {{env: SNMP_COMMUNITY}}}}
    settings:
      throughput:
        tests_per_day: 0
        max_seconds: 3
        budget_megabytes_per_day: 100000
        budget_seconds_per_day: 60
        {on_demand}
    kecamatan:
      - {{name: Pesanggaran, uplink_mbit: 100, lat: -8.5, lon: 114.0}}
    villages:
      - {{name: Sarongan, slug: sarongan, kind: desa, kecamatan: Pesanggaran, router: 127.0.0.2,
         lat: -8.5, lon: 114.0, contracted: {{down_mbit: 20, up_mbit: 20}},
         iperf3: {{address: 127.0.0.1, port: {port}}}}}
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exporter:
    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log

    def probe(self, timeout: float | None = None) -> tuple[int, dict[str, str], str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/probe?target=sarongan&module=throughput")
        if timeout is not None:
            req.add_header("X-Prometheus-Scrape-Timeout-Seconds", str(timeout))
        try:
            with urllib.request.urlopen(req, timeout=40) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()


@contextmanager
def serving(tmp: Path, on_demand: str, iperf3_port: int) -> Iterator[Exporter]:
    """`desanet serve` with this inventory and state directory, stopped by PID at the end."""
    inventory = tmp / "inventory.yaml"
    inventory.write_text(INVENTORY.format(on_demand=on_demand, port=iperf3_port))
    port = _free_port()
    log = tmp / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "desanet.cli", "serve", "--inventory", str(inventory), "--probes", "throughput",
             "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "info"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "DESANET_STATE_DIR": str(tmp / "state")},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield Exporter(port, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _ledger(tmp: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp / "state" / "throughput-budget.json").read_text())
    return data


@pytest.mark.timeout(120)
def test_off_unless_the_inventory_enables_it(tmp_path: Path, make_server: Callable[..., Iperf3Server]) -> None:
    srv = make_server(one_off=True)  # exits after one test: still running at the end means none was run
    with serving(tmp_path, "", srv.port) as exporter:
        for _ in range(2):  # every time, not only once per allowance
            code, headers, body = exporter.probe()
            assert code == 403, body
            assert "on-demand throughput tests are off" in body and "settings.throughput.on_demand.enabled" in body
            assert "Retry-After" not in headers  # asking again will not help
        log = exporter.log.read_text()
    assert "throughput test refused" in log and "village=sarongan" in log and "reason=disabled" in log
    assert not (tmp_path / "state" / "throughput-budget.json").exists()
    assert srv.proc.poll() is None


@pytest.mark.timeout(120)
def test_the_on_demand_allowance_holds(tmp_path: Path, make_server: Callable[..., Iperf3Server]) -> None:
    srv = make_server()
    on_demand = "on_demand: {enabled: true, budget_megabytes_per_day: 30, min_interval_seconds: 0}"
    with serving(tmp_path, on_demand, srv.port) as exporter:
        code, _, body = exporter.probe()
        assert code == 200 and "probe_success 1" in body, body
        log = exporter.log.read_text()
    assert "throughput test starting" in log and "origin=on-demand" in log
    village = _ledger(tmp_path)["villages"]["sarongan"]  # type: ignore[index]
    # Loopback moves GB/s: the test stopped at its share of the 30 MB (and up, what was in flight beyond it).
    assert 28e6 <= village["on_demand"]["bytes"] == village["bytes"] <= 30e6 + 64 * 2**20, village
    with serving(tmp_path, on_demand, srv.port) as exporter:  # a restart forgets nothing
        code, headers, body = exporter.probe()
        log = exporter.log.read_text()
    assert code == 429, body
    assert "on-demand test allowance is spent" in body and "of 30 MB" in body
    assert 0 < int(headers["Retry-After"]) <= 86400
    assert "reason=on_demand_budget" in log


@pytest.mark.timeout(120)
def test_the_on_demand_rate_limit_holds(tmp_path: Path, make_server: Callable[..., Iperf3Server]) -> None:
    srv = make_server()
    # An allowance loopback cannot spend in one 1 s test, so it is the rate limit that refuses.
    on_demand = "on_demand: {enabled: true, budget_megabytes_per_day: 50000, max_seconds: 1, min_interval_seconds: 600}"
    with serving(tmp_path, on_demand, srv.port) as exporter:
        code, _, body = exporter.probe()
        assert code == 200 and "probe_success 1" in body, body
    with serving(tmp_path, on_demand, srv.port) as exporter:
        code, headers, body = exporter.probe()
        log = exporter.log.read_text()
    assert code == 429, body
    assert "at most one every 600 s" in body
    assert 590 <= int(headers["Retry-After"]) <= 600
    assert "reason=rate_limit" in log
