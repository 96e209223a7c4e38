"""Router events in the lab: a power cut (`desanet lab reboot`) and an optical level that drifts
(`desanet lab impair --to DBM --over S`), read back with desanet's own SNMP probe as the poller would.

A reboot must look like one from the NOC: the router answers nothing while it is dark, then its sysUpTime starts
again from zero, its services are back, and the lab is healthy. A ramp must be seen along the way, not only at its
end, and a level set by hand must end it.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from desanet.lab.events import ramp_values
from tests.conftest import Lab


def test_ramp_is_linear_in_dbm_and_ends_where_asked() -> None:
    assert ramp_values(-18, -26, 8, 0) == -18
    assert ramp_values(-18, -26, 8, 2) == -20
    assert ramp_values(-18, -26, 8, 8) == -26
    assert ramp_values(-18, -26, 8, 100) == -26
    assert ramp_values(-18, -26, 8, -1) == -18


def _snmp(lab: Lab, slug: str) -> dict[str, Any]:
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.noc_ns, sys.executable, "-m", "desanet.cli", "probe", "snmp", slug, "--json"],
        env=lab.env,
        text=True,
        capture_output=True,
        timeout=30,
        check=False,
    )
    out: dict[str, Any] = json.loads(proc.stdout or "{}")
    return out


def _rx_levels(lab: Lab, slug: str, seconds: float, every: float = 0.3) -> list[float]:
    """The rx level desanet's SNMP poller reads from the NOC, polled every `every` s for `seconds` (at least once).

    In-process (the poller the exporter uses, on a thread in the NOC namespace) rather than a `desanet probe
    snmp` per reading, whose start-up takes seconds on a busy machine: a ramp must be seen along the way."""
    from desanet.district import load_inventory, resolve_secret
    from desanet.probes.snmp import SnmpPoller, settings_from_config

    inv = load_inventory(lab.inventory)
    settings = settings_from_config(inv.snmp_for(inv.village(slug)), resolve_secret)

    async def poll() -> list[float]:
        out: list[float] = []
        end = time.monotonic() + seconds
        async with SnmpPoller() as poller:
            while True:
                r = await poller.poll(lab.address(slug), settings)
                assert r.success and r.optics, r.error
                out.append(r.optics[0].rx_power_dbm)
                if time.monotonic() >= end:
                    return out
                await asyncio.sleep(every)

    return lab.run_in_noc(poll())


def _alive(task: dict[str, Any]) -> bool:
    try:
        stat = Path(f"/proc/{task['pid']}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] not in ("Z", "X") and fields[19] == task["start"]  # a zombie has exited, reaped or not


def _wait_for_event(lab: Lab, key: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while key not in _status(lab).get("events", {}):
        assert time.monotonic() < deadline, f"no {key} in the lab's events after {timeout} s"
        time.sleep(0.2)


def _status(lab: Lab) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(lab.desanet("lab", "status", "--json", check=False).stdout)
    return out


@pytest.mark.lab
@pytest.mark.slow
def test_reboot_takes_the_router_dark_and_resets_its_uptime(lab: Lab) -> None:
    slug = "songgon"
    time.sleep(max(0.0, 5 - _snmp(lab, slug)["uptime_seconds"]))  # an uptime that a reset visibly undercuts
    before = _snmp(lab, slug)
    assert before["success"] and before["uptime_seconds"] >= 5
    reboot = subprocess.Popen(
        [sys.executable, "-m", "desanet.cli", "lab", "reboot", slug, "--down-for", "12"],
        env=lab.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_event(lab, f"reboot:{slug}")
        text = lab.desanet("lab", "status").stdout  # exit 0: dark, not a dead snmpd
        assert re.search(r"power off: songgon, back in \d+ s", text), text
        dark = lab.noc("ping", "-c", "3", "-i", "0.2", "-W", "1", lab.address(slug))
        assert dark.returncode != 0 and " 0 received" in dark.stdout
        out, err = reboot.communicate(timeout=30)
        back_at = time.monotonic()  # the command returns once the new snmpd listens
    finally:
        if reboot.poll() is None:
            reboot.send_signal(signal.SIGTERM)
            reboot.wait(10)
    assert reboot.returncode == 0, err
    back = re.search(r"power back after ([\d.]+) s", out)
    assert back and 12 <= float(back.group(1)) < 14, out
    after = _snmp(lab, slug)
    assert after["success"], after
    # The agent's uptime counts from its new start: no more than the time since the power came back (plus the
    # second or so the command takes to see snmpd listen), and far less than before the cut.
    since_back = time.monotonic() - back_at
    assert after["uptime_seconds"] <= since_back + 2, (after["uptime_seconds"], since_back)
    assert after["uptime_seconds"] < before["uptime_seconds"], (before["uptime_seconds"], after)
    st = _status(lab)
    assert st["up"] and not st["dead_processes"] and not st["events"]
    # Its iperf3 came back too, and the link still has its cap: a throughput test gets the contract.
    bps = lab.noc("iperf3", "-c", lab.address(slug), "-t", "2", "-J", timeout=30)
    got = json.loads(bps.stdout)["end"]["sum_received"]["bits_per_second"]
    assert 0.9 < got / (lab.villages[slug]["down_mbit"] * 1e6 * 1448 / 1514) < 1.01, got


@pytest.mark.lab
@pytest.mark.slow
def test_interrupted_reboot_still_brings_the_power_back(lab: Lab) -> None:
    slug = "singojuruh"
    reboot = subprocess.Popen(
        [sys.executable, "-m", "desanet.cli", "lab", "reboot", slug, "--down-for", "600"],
        env=lab.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_event(lab, f"reboot:{slug}")
    finally:
        reboot.send_signal(signal.SIGTERM)
        reboot.wait(20)
    assert not _status(lab)["events"]
    assert _snmp(lab, slug)["uptime_seconds"] < 10
    assert lab.noc("ping", "-c", "1", "-W", "1", lab.address(slug)).returncode == 0


@pytest.mark.lab
@pytest.mark.slow
def test_optical_ramp_is_read_back_along_the_way(lab: Lab) -> None:
    slug = "sempu"
    try:
        out = lab.desanet("lab", "impair", slug, "--optical-rx-dbm", "-18", "--to", "-26", "--over", "8").stdout
        tid = re.search(r"ramp (R\d+)", out)
        assert tid, out
        task = _status(lab)["tasks"][tid.group(1)]
        assert task["kind"] == "ramp" and task["target"] == slug
        seen = _rx_levels(lab, slug, seconds=11, every=0.3)
        assert seen == sorted(seen, reverse=True), seen  # it only falls
        between = {x for x in seen if -26 < x < -18}
        assert len(between) >= 3, seen  # read along the way, not only at both ends
        assert seen[-1] == -26
        assert tid.group(1) not in _status(lab)["tasks"]  # it ended at its time

        # A level set by hand ends a ramp still under way.
        out = lab.desanet("lab", "impair", slug, "--to", "-30", "--over", "300").stdout
        ramp = _status(lab)["tasks"][re.search(r"ramp (R\d+)", out).group(1)]  # type: ignore[union-attr]
        lab.desanet("lab", "impair", slug, "--optical-rx-dbm", "-20")
        time.sleep(1.5)
        assert not _alive(ramp) and not _status(lab)["tasks"]
        assert _rx_levels(lab, slug, seconds=0)[0] == -20
        for args, words in [
            (("--to", "-25"), "needs both --to DBM and --over SECONDS"),
            (("--to", "20", "--over", "5"), "--to must be between -40 and 8 dBm"),
            (("--to", "-25", "--over", "0"), "--over must be more than 0"),
        ]:
            proc = lab.desanet("lab", "impair", slug, *args, check=False)
            assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    finally:
        lab.desanet("lab", "impair", slug, "--optical-rx-dbm", "-18", check=False)
