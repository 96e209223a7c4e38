"""desanet's SNMP poller against devices that are not net-snmp: the snmpsim recordings of tests/snmprec/ (its
README says which behaviour each reproduces and what a correct reading is), served on 127.0.0.1 by
tests/snmpsim_agent.py and read by the real poller, exporter rendering, technician's check and CLI.

Skips, naming the pip command, when snmpsim is not installed (scripts/setup.sh installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from desanet import check as ck
from desanet.district import Village, load_inventory
from desanet.exporter.metrics import render_village
from desanet.exporter.probe_metrics import render_probe
from desanet.exporter.state import VillageState
from desanet.probes.snmp import (
    NO_LIGHT_DBM,
    SnmpPoller,
    SnmpResult,
    SnmpSettings,
    carry_counter32,
    interface_speed,
    port_in_label,
    sensor_value,
)
from desanet.verdict import readiness as rd
from desanet.verdict.ports import busiest_port
from tests.snmpsim_agent import SnmpsimAgent, find_responder, free_udp_port, recording, serve

ROOT = Path(__file__).resolve().parent.parent

Served = Callable[[str], SnmpsimAgent]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """served(name): snmpsim serving that recording, started on first use, stopped (by PID) at the end."""
    needs_snmpsim()
    agents: dict[str, SnmpsimAgent] = {}
    with contextlib.ExitStack() as stack:

        def start(name: str) -> SnmpsimAgent:
            if name not in agents:
                agents[name] = stack.enter_context(serve(recording(name), tmp_path_factory.mktemp(name)))
            return agents[name]

        yield start


def needs_snmpsim() -> None:
    responder, why = find_responder()
    if responder is None:
        pytest.skip(why)


def settings(agent: SnmpsimAgent) -> SnmpSettings:
    return SnmpSettings(port=agent.port, community=agent.community, timeout_seconds=2.0)


def poll(agent: SnmpsimAgent, times: int = 1) -> list[SnmpResult]:
    """`times` polls by one poller (the first walks, the next GET the rows it found)."""

    async def go() -> list[SnmpResult]:
        async with SnmpPoller() as poller:
            return [await poller.poll(agent.host, settings(agent)) for _ in range(times)]

    results = asyncio.run(go())
    for r in results:
        assert r.success, r.error
    return results


def village_state(result: SnmpResult) -> VillageState:
    village = Village.model_validate(
        {
            "name": "Sumberagung",
            "slug": "sumberagung",
            "kind": "desa",
            "kecamatan": "Pesanggaran",
            "router": "127.0.0.1",
            "lat": -8.5,
            "lon": 114.0,
            "contracted": {"down_mbit": 20, "up_mbit": 20},
        }
    )
    vs = VillageState.create(village)
    vs.snmp = result
    return vs


def exposition(result: SnmpResult) -> str:
    """The village's /metrics lines for this poll (every family: `--metrics.detail`)."""
    return "".join(line for lines in render_village(village_state(result), detail=True).out.values() for line in lines)


def sample(text: str, metric: str, interface: str) -> float | None:
    m = re.search(rf'^{metric}{{[^}}]*interface="{re.escape(interface)}"[^}}]*}} (\S+)$', text, flags=re.M)
    return None if m is None else float(m.group(1))


def desanet(agent: SnmpsimAgent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desanet.cli", "probe", "snmp", "127.0.0.1", "--port", str(agent.port), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DESANET_SNMP_COMMUNITY": agent.community, "COLUMNS": "200"},
    )


def explained(result: SnmpResult, lang: str) -> Any:
    """What the technician's check says of a village whose link is fine and whose router gave this poll."""
    inv = load_inventory(ROOT / "inventory.yaml")
    choice = ck.ProfileChoice(inv.profile("meet-hd"), "option")
    m = rd.Measurements(
        rtt_p95_seconds=0.01,
        jitter_seconds=0.002,
        loss_ratio=0.0,
        burst_loss_ratio=0.0,
        down_bits_per_second=10e6,
        up_bits_per_second=10e6,
    )
    report = ck.Report(inv, inv.village("kabat"), choice, datetime(2026, 11, 28, 10, 0, tzinfo=UTC), measurements=m)
    report.readiness = rd.assess(m, choice.profile)
    report.snmp, report.port = result, busiest_port(None, result, 0.0)
    return ck.explain(report, lang)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- item 9
def test_entity_sensors_named_only_in_descr_are_one_optic_per_port(served: Served) -> None:
    """EOS style: entPhysicalName empty, labels in entPhysicalDescr, power in a lane below the transceiver, mW
    at precision 4, and Ethernet2's sensors without entPhysicalContainedIn. Before: no optics at all."""
    first, known = poll(served("entity-sensor-descr-only"), times=2)
    assert first.optics == known.optics
    assert first.sensor_rows == 10
    by_port = {o.name: o for o in first.optics}
    assert set(by_port) == {"Ethernet1", "Ethernet2"}
    e1, e2 = by_port["Ethernet1"], by_port["Ethernet2"]
    assert (e1.if_index, e2.if_index) == (1, 2) and (e1.index, e2.index) == (1100, 1200)
    assert e1.source == "entity-sensor" and e1.rx_loss is False and e2.rx_loss is False
    # 4290 milliwatts at precision 4 = 0.429 mW = -3.68 dBm; 5012 = -3.00 dBm; 1585 = -8.00; 6310 = -2.00
    assert e1.rx_power_dbm == pytest.approx(10 * math.log10(0.429)) and e1.rx_power_dbm == pytest.approx(
        -3.68, abs=0.01
    )
    assert e1.tx_power_dbm == pytest.approx(-3.00, abs=0.01)
    assert e2.rx_power_dbm == pytest.approx(-8.00, abs=0.01) and e2.tx_power_dbm == pytest.approx(-2.00, abs=0.01)
    # temperature and voltage from the transceiver, bias from the lane; exact decimals, not 0.0061200000000000004
    assert (e1.temperature_celsius, e1.voltage_volts, e1.bias_amperes) == (35.1, 3.29, 0.00612)
    assert (e2.temperature_celsius, e2.voltage_volts, e2.bias_amperes) == (33.8, 3.31, 0.00598)
    text = exposition(first)
    assert sample(text, "desanet_optical_rx_power_dbm", "Ethernet1") == pytest.approx(-3.675, abs=0.001)
    assert sample(text, "desanet_optical_rx_loss", "Ethernet2") == 0


def test_the_cli_no_longer_calls_a_sensor_table_empty(served: Served, tmp_path: Path) -> None:
    p = desanet(served("entity-sensor-descr-only"))
    assert p.returncode == 0, p.stderr
    assert "ENTITY-SENSOR-MIB empty" not in p.stdout and "Optics (entity-sensor)" in p.stdout
    assert re.search(r"│ 1 │ Ethernet1 │ +-3\.68 dBm │ -3\.00 dBm │", p.stdout), p.stdout


def test_sensors_that_are_not_optics_are_named_as_such(tmp_path: Path) -> None:
    """A chassis thermometer only: the CLI says the sensor table has rows, none optical (net-snmp's snmpd)."""
    import shutil

    if shutil.which("snmpd") is None:
        pytest.skip("needs net-snmp's snmpd (apt install snmpd)")
    from desanet.lab.snmp_agent import EntitySensor, entity_tables
    from tests.test_snmp_agent import COMMUNITY, start_agent

    with start_agent(tmp_path / "a", serve_mikrotik=False, extra=entity_tables([EntitySensor(7, 8, 41)])) as a:
        p = subprocess.run(
            [sys.executable, "-m", "desanet.cli", "probe", "snmp", a.host, "--port", str(a.port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DESANET_SNMP_COMMUNITY": COMMUNITY, "COLUMNS": "200"},
        )
    assert p.returncode == 0, p.stderr
    assert "ENTITY-SENSOR-MIB has 1 sensor, but no optical power reading" in p.stdout, p.stdout
    assert "ENTITY-SENSOR-MIB empty" not in p.stdout


def test_a_port_is_named_by_whole_words_only() -> None:
    ports = {"Ethernet1": 1, "Ethernet10": 10, "Te1/1": 5, "1": 101}
    assert port_in_label("DOM RX Power Sensor for Ethernet10", ports) == 10
    assert port_in_label("Lane 1 for Xcvr for Ethernet1", ports) == 1  # the text after the last " for "
    assert port_in_label("Te1/1 Receive Power Sensor", ports) == 5
    assert port_in_label("Ethernet11 Rx", ports) is None and port_in_label("", ports) is None


# ---------------------------------------------------------------------------------------------- item 10
def test_no_light_is_loss_of_light_everywhere(served: Served) -> None:
    """Ethernet2's Rx reads RFC 3433's underflow (-1000000000) with status ok. Before: its Rx was dropped, so
    the dead fibre showed no reading at all; now it is rx_loss, exported, alerted on and said in the check."""
    first, known = poll(served("entity-sensor-no-light"), times=2)
    assert first.optics == known.optics
    e1, e2 = sorted(first.optics, key=lambda o: o.if_index or 0)
    assert e2.name == "Ethernet2" and e2.rx_loss is True and e2.rx_power_dbm is None
    assert e2.tx_power_dbm == pytest.approx(-2.00, abs=0.01) and e2.temperature_celsius == 33.8  # its laser works
    assert e1.rx_loss is False and e1.rx_power_dbm == pytest.approx(-3.68, abs=0.01)

    text = exposition(first)
    assert sample(text, "desanet_optical_rx_loss", "Ethernet2") == 1
    assert sample(text, "desanet_optical_rx_power_dbm", "Ethernet2") is None  # no number, never -100 W
    assert sample(text, "desanet_optical_tx_power_dbm", "Ethernet2") == pytest.approx(-2.0, abs=0.01)
    probe_text = render_probe("snmp", first, True, 0.1)
    assert 'desanet_optical_rx_loss{interface="Ethernet2"} 1' in probe_text

    for lang, words in (("en", "Optics Ethernet2: NO LIGHT arriving"), ("id", "Optik Ethernet2: TIDAK ADA CAHAYA")):
        said = explained(first, lang)
        assert any(line.startswith(words) for line in said.router), said.router
    said = explained(first, "en")
    assert "The router reports no light arriving on Ethernet2: the fibre is cut or unplugged." in said.advice
    assert any(line.startswith("Optics Ethernet1: receiving -3.7 dBm") for line in said.router), said.router

    p = desanet(served("entity-sensor-no-light"))
    assert p.returncode == 0 and re.search(r"│ 2 │ Ethernet2 │ +no light │ -2\.00 dBm │", p.stdout), p.stdout
    out = json.loads(desanet(served("entity-sensor-no-light"), "--json").stdout)
    dark = next(o for o in out["optics"] if o["name"] == "Ethernet2")
    assert dark["rx_loss"] is True and dark["rx_power_dbm"] is None


def test_sensor_readings_below_range() -> None:
    """The decoding rules behind no light, on their own."""
    assert sensor_value(4290, 8, 4) == 0.000429 and sensor_value(612, 8, 2) == 0.00612
    assert sensor_value(-2345, 9, 2) == -23.45 and sensor_value(5, 12, 0) == 5e9
    assert NO_LIGHT_DBM == -40.0


# ---------------------------------------------------------------------------------------------- item 11
def test_iftable_only_agents_get_names_speeds_and_octets(served: Served) -> None:
    """RFC 1213 agent: no ifXTable. Before: name, speed and octets were all None."""
    first, known = poll(served("ifmib-no-ifxtable"), times=2)
    assert first.interfaces == known.interfaces  # the second poll GETs the ifTable columns it walked
    eth0, eth1 = first.interfaces
    assert (eth0.name, eth1.name) == ("eth0", "eth1")
    assert eth0.speed_bits_per_second == 100e6 and eth0.octet_counter_bits == 32
    assert (eth0.in_octets, eth0.out_octets) == (4_294_960_000, 4_294_967_000)
    assert (eth0.in_errors, eth0.in_discards) == (17, 3)
    text = exposition(first)
    assert sample(text, "desanet_interface_speed_bytes_per_second", "eth0") == 12_500_000
    assert sample(text, "desanet_interface_received_bytes_total", "eth0") == 4_294_960_000


def test_32bit_counters_are_carried_past_their_wrap(tmp_path: Path) -> None:
    """The same router 60 s later (same address and port), eth0's octet counters having wrapped. Rates come from
    two polls (verdict/ports.py) and from Prometheus' rate() over the exported counter; both need a counter
    that goes on. eth0 ran at 50 Mbit/s of 100. Before: no octets at all (and raw 32-bit counters would give
    0 bit/s here, a drop being taken for a reset)."""
    needs_snmpsim()
    port = free_udp_port()

    async def two_polls() -> tuple[SnmpResult, SnmpResult]:
        async with SnmpPoller() as poller:  # one poller: its state is per address and port
            with serve(recording("ifmib-no-ifxtable"), tmp_path / "before", port=port) as agent:
                before = await poller.poll(agent.host, settings(agent))
            with serve(recording("ifmib-no-ifxtable-wrapped"), tmp_path / "after", port=port) as agent:
                after = await poller.poll(agent.host, settings(agent))
            return before, after

    before, after = asyncio.run(two_polls())
    assert before.success and after.success, (before.error, after.error)
    b0, a0 = before.interfaces[0], after.interfaces[0]
    assert a0.in_octets == 2**32 + 374_992_704 and a0.in_octets - (b0.in_octets or 0) == 375_000_000
    assert a0.out_octets == 2**32 + 74_999_704 and a0.out_octets - (b0.out_octets or 0) == 75_000_000
    a1 = after.interfaces[1]
    assert a1.in_octets == 4_294_967_000 and a1.out_octets == 2**32 + 532_704  # only what wrapped is carried
    port_activity = busiest_port(before, after, 60.0)
    assert port_activity is not None and port_activity.name == "eth0"
    assert port_activity.rate_bits_per_second == pytest.approx(50e6)
    assert port_activity.headroom_bits_per_second == pytest.approx(50e6)
    assert sample(exposition(after), "desanet_interface_received_bytes_total", "eth0") == 2**32 + 374_992_704


def test_counter32_carry_rules() -> None:
    assert carry_counter32(None, 5) == (5, 0)
    assert carry_counter32((4_294_960_000, 0), 374_992_704) == (374_992_704, 1)
    assert carry_counter32((374_992_704, 1), 374_992_705) == (374_992_705, 1)


def test_a_port_without_link_has_no_speed(served: Served) -> None:
    """ifHighSpeed and ifSpeed 0 on down ports. Before: "0 bit/s" and a speed sample of 0."""
    first, known = poll(served("ifmib-port-down"), times=2)
    assert first.interfaces == known.interfaces
    speeds = {i.name: i.speed_bits_per_second for i in first.interfaces}
    assert speeds == {"eth0": 1e9, "eth1": None, "eth2": None}
    text = exposition(first)
    assert sample(text, "desanet_interface_speed_bytes_per_second", "eth0") == 125_000_000
    assert sample(text, "desanet_interface_speed_bytes_per_second", "eth1") is None
    assert sample(text, "desanet_interface_up", "eth1") == 0
    p = desanet(served("ifmib-port-down"))
    assert p.returncode == 0 and "0 bit/s" not in p.stdout
    assert re.search(r"│ 2 │ eth1 .*│ +unknown │", p.stdout), p.stdout


def test_speed_rules() -> None:
    assert interface_speed(1000, 1_000_000_000) == 1e9
    assert interface_speed(0, 0) is None and interface_speed(None, 0) is None
    assert interface_speed(None, 4_294_967_295) is None  # "faster than this: see ifHighSpeed", which is missing
    assert interface_speed(0, 256_000) == 256_000  # below 1 Mbit/s ifHighSpeed rounds to 0


# ---------------------------------------------------------------------------------------------- item 11, 12
def test_mikrotik_optics_are_tied_to_ports_by_name(served: Served) -> None:
    """No index or vendor column; optical row 1 is ifIndex 3. Before: tied to nothing, and -14.873 read as
    -14.873000000000001 (a multiplication by 1e-3)."""
    first, known = poll(served("mikrotik-optics-by-name"), times=2)
    assert first.optics == known.optics
    sfp1, sfpplus = first.optics
    assert (sfp1.name, sfp1.index, sfp1.if_index) == ("sfp1", 1, 3)
    assert (sfpplus.name, sfpplus.index, sfpplus.if_index) == ("sfp-sfpplus1", 2, 4)
    assert sfp1.rx_power_dbm == -14.873 and sfp1.tx_power_dbm == -5.212 and sfp1.vendor is None
    assert (sfp1.temperature_celsius, sfp1.voltage_volts, sfp1.bias_amperes) == (41, 3.287, 0.014)
    assert sfp1.wavelength_meters == 1.31e-6 and sfp1.rx_loss is False

    text = exposition(first)
    assert 'interface="sfp1"} -14.873\n' in text  # exported at the decimal the router meant
    p = desanet(served("mikrotik-optics-by-name"), "--json")
    assert p.returncode == 0, p.stderr
    assert '"rx_power_dbm": -14.873,' in p.stdout and json.loads(p.stdout)["optics"][0]["if_index"] == 3


def test_cli_prints_rounded_figures(served: Served) -> None:
    """The human tables round; no float's repr leaks (JSON keeps full precision)."""
    for name in ("mikrotik-optics-by-name", "entity-sensor-descr-only", "ifmib-no-ifxtable"):
        p = desanet(served(name))
        assert p.returncode == 0, p.stderr
        assert not re.search(r"\d\.\d{5,}", p.stdout), p.stdout
    p = desanet(served("mikrotik-optics-by-name"))
    assert re.search(r"│ 3 │ sfp1 +│ -14\.87 dBm │ -5\.21 dBm │ 41\.0 °C │ 14\.0 mA │ 3\.29 V │ +1310 nm │", p.stdout)
