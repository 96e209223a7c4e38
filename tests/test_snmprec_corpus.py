"""The SNMP recordings in tests/snmprec/ (see its README.md): well-formed .snmprec files, and, served by snmpsim
on 127.0.0.1 (tests/snmpsim_agent.py), read back with net-snmp's snmpbulkwalk and snmpget exactly as written,
with the device behaviour each one is there for.

These tests check the corpus and the simulator, not desanet's poller. The snmpsim tests skip, saying how to
install it, when snmpsim is not installed; the format tests always run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.snmpsim_agent import RECORDINGS, SnmpsimAgent, find_responder, recording, serve

NAMES = (
    "entity-sensor-descr-only",
    "entity-sensor-no-light",
    "ifmib-no-ifxtable",
    "ifmib-no-ifxtable-wrapped",
    "ifmib-port-down",
    "mikrotik-optics-by-name",
)

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_NUMBER = "1.3.6.1.2.1.2.1.0"
IFT = "1.3.6.1.2.1.2.2.1"  # ifEntry
IFX = "1.3.6.1.2.1.31.1.1.1"  # ifXEntry
ENT = "1.3.6.1.2.1.47.1.1.1.1"  # entPhysicalEntry
SEN = "1.3.6.1.2.1.99.1.1.1"  # entPhySensorEntry
MT = "1.3.6.1.4.1.14988.1.1.19.1.1"  # mtxrOpticalTableEntry

INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
RANGES = {"2": INT32, "65": UINT32, "66": UINT32, "67": UINT32, "70": (0, 2**64 - 1)}
TAGS = {"2", "4", "4x", "6", "64", "64x", "65", "66", "67", "70"}

Record = tuple[str, str, str]  # OID, tag, value as written


def records(name: str) -> list[Record]:
    out = []
    for n, line in enumerate(recording(name).read_text(encoding="ascii").splitlines(), 1):
        parts = line.split("|", 2)
        assert len(parts) == 3, f"{name}:{n}: not OID|TAG|VALUE: {line!r}"
        out.append((parts[0], parts[1], parts[2]))
    return out


def table(name: str) -> dict[str, tuple[str, str]]:
    return {oid: (tag, value) for oid, tag, value in records(name)}


def key(oid: str) -> tuple[int, ...]:
    return tuple(int(x) for x in oid.split("."))


# ---------------------------------------------------------------------------------------------- the files
def test_the_corpus_is_these_files_and_the_readme_describes_each() -> None:
    assert sorted(p.stem for p in RECORDINGS.glob("*.snmprec")) == sorted(NAMES)
    readme = (RECORDINGS / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"`{name}.snmprec`" in readme, f"README.md does not describe {name}.snmprec"


@pytest.mark.parametrize("name", NAMES)
def test_recording_is_well_formed_snmprec(name: str) -> None:
    """What snmpsim needs (its documented format): OID|TAG|VALUE, OIDs sorted and unique, known tags, values
    that fit their type. Plus what every recording here must have: sysUpTime.0 and ifNumber.0."""
    recs = records(name)
    keys = []
    for oid, tag, value in recs:
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)+", oid), oid
        assert tag in TAGS, f"{oid}: tag {tag}"
        if tag in RANGES:
            lo, hi = RANGES[tag]
            assert lo <= int(value) <= hi, f"{oid}: {value} out of range for tag {tag}"
        elif tag.endswith("x"):
            assert re.fullmatch(r"([0-9a-f]{2})*", value), f"{oid}: not lower-case hex: {value!r}"
        elif tag == "6":
            assert re.fullmatch(r"[0-9]+(\.[0-9]+)+", value), f"{oid}: not an OID: {value!r}"
        elif tag == "4":
            assert value.isprintable(), f"{oid}: write non-printable strings with tag 4x"
        keys.append(key(oid))
    assert keys == sorted(keys), "snmpsim needs records sorted by OID"
    assert len(set(keys)) == len(keys), "duplicate OIDs"
    got = table(name)
    assert got[SYS_UPTIME][0] == "67" and got[IF_NUMBER][0] == "2"


# ---------------------------------------------------------------------------------------------- served
def _net_snmp(tool: str, agent: SnmpsimAgent, *oids: str) -> str:
    argv = [tool, "-v2c", "-c", agent.community, "-On", "-Ot", "-M", "/nonexistent", "-m", ""]
    argv += ["-t", "2", "-r", "1", agent.endpoint, *oids]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return proc.stdout + proc.stderr


_END = ("No more variables left", "No Such Object", "No Such Instance")


def walk(agent: SnmpsimAgent, oid: str) -> dict[str, str]:
    """snmpbulkwalk of a subtree: {"1.3…": "TYPE: value"}, without the end-of-view markers."""
    out = {}
    for line in _net_snmp("snmpbulkwalk", agent, oid).splitlines():
        if " = " in line:
            name, value = line.split(" = ", 1)
            if not value.startswith(_END):
                out[name.strip().lstrip(".")] = value.strip()
    return out


def get(agent: SnmpsimAgent, *oids: str) -> dict[str, str]:
    out = {}
    for line in _net_snmp("snmpget", agent, *oids).splitlines():
        if " = " in line:
            name, value = line.split(" = ", 1)
            out[name.strip().lstrip(".")] = value.strip()
    return out


def render(tag: str, value: str) -> str:
    """How `snmpbulkwalk -On -Ot` prints a record's value."""
    if tag == "2":
        return f"INTEGER: {value}"
    if tag == "4":
        return f'STRING: "{value}"' if value else '""'
    if tag == "4x":
        return "Hex-STRING: " + " ".join(value[i : i + 2].upper() for i in range(0, len(value), 2))
    if tag == "6":
        return f"OID: .{value}"
    if tag == "64":
        return f"IpAddress: {value}"
    if tag == "64x":
        return f"IpAddress: {ipaddress.IPv4Address(bytes.fromhex(value))}"
    if tag == "67":
        return value
    return {"65": "Counter32", "66": "Gauge32", "70": "Counter64"}[tag] + f": {value}"


def num(text: str) -> int:
    """The number in "INTEGER: 5", "Gauge32: 5" or "5"."""
    return int(text.rsplit(" ", 1)[-1])


def text(value: str) -> str:
    """The string in 'STRING: "x"' or '""'."""
    return value.removeprefix("STRING: ").strip('"')


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], SnmpsimAgent]]:
    """served(name): the snmpsim agent for that recording, started on first use, stopped (by PID) at the end."""
    responder, why = find_responder()
    if responder is None:
        pytest.skip(why)
    for tool in ("snmpbulkwalk", "snmpget"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs net-snmp's {tool} (apt install snmp)")
    agents: dict[str, SnmpsimAgent] = {}
    with contextlib.ExitStack() as stack:

        def start(name: str) -> SnmpsimAgent:
            if name not in agents:
                workdir = tmp_path_factory.mktemp(f"snmpsim-{name}")
                agents[name] = stack.enter_context(serve(recording(name), workdir))
            return agents[name]

        yield start
    for agent in agents.values():
        assert agent.proc.returncode is not None, "snmpsim still running after the tests"


@pytest.mark.parametrize("name", NAMES)
def test_snmpsim_serves_exactly_the_recording(served: Callable[[str], SnmpsimAgent], name: str) -> None:
    """Every record comes back, with its type and value, and nothing else; sysUpTime.0 answers a GET."""
    agent = served(name)
    want = {oid: render(tag, value) for oid, tag, value in records(name)}
    assert walk(agent, "1.3.6") == want
    assert get(agent, SYS_UPTIME)[SYS_UPTIME] == table(name)[SYS_UPTIME][1]


def _sensor_rows(rows: dict[str, str]) -> dict[int, str]:
    """entPhysicalIndex → entPhysicalDescr for the rows of class sensor(8)."""
    return {
        int(oid.rsplit(".", 1)[1]): text(v)
        for oid, v in rows.items()
        if oid.startswith(f"{ENT}.2.") and num(rows[f"{ENT}.5.{oid.rsplit('.', 1)[1]}"]) == 8
    }


def test_descr_only_sensors_have_no_name_and_are_labelled_in_descr(served: Callable[[str], SnmpsimAgent]) -> None:
    agent = served("entity-sensor-descr-only")
    phys = walk(agent, ENT)
    sensors = _sensor_rows(phys)
    labels = set(sensors.values())
    for port in ("Ethernet1", "Ethernet2"):
        for kind in ("RX Power", "TX Power", "Temperature", "Voltage", "TX Bias"):
            assert f"DOM {kind} Sensor for {port}" in labels
    # entPhysicalName is there for every row, and empty: the label is only in entPhysicalDescr
    assert {phys[f"{ENT}.7.{i}"] for i in sensors} == {'""'}
    assert all(v == '""' for oid, v in phys.items() if oid.startswith(f"{ENT}.7."))
    # the ports the optics belong to are named alike in IF-MIB
    assert {text(v) for v in walk(agent, f"{IFX}.1").values()} == {"Ethernet1", "Ethernet2"}
    assert {text(v) for v in walk(agent, f"{IFT}.2").values()} == {"Ethernet1", "Ethernet2"}


def test_descr_only_power_sits_in_a_lane_and_the_rest_in_the_transceiver(
    served: Callable[[str], SnmpsimAgent],
) -> None:
    agent = served("entity-sensor-descr-only")
    phys = walk(agent, ENT)
    by_label = {label: i for i, label in _sensor_rows(phys).items()}

    def parent(i: int) -> tuple[str, int]:
        p = num(phys[f"{ENT}.4.{i}"])
        return text(phys[f"{ENT}.2.{p}"]), num(phys[f"{ENT}.5.{p}"])

    for kind in ("RX Power", "TX Power", "TX Bias"):
        assert parent(by_label[f"DOM {kind} Sensor for Ethernet1"]) == ("Lane 1 for Xcvr for Ethernet1", 10)
    for kind in ("Temperature", "Voltage"):
        assert parent(by_label[f"DOM {kind} Sensor for Ethernet1"]) == ("Xcvr for Ethernet1", 9)
    lane1 = num(phys[f"{ENT}.4.{by_label['DOM RX Power Sensor for Ethernet1']}"])
    assert text(phys[f"{ENT}.2.{num(phys[f'{ENT}.4.{lane1}'])}"]) == "Xcvr for Ethernet1"
    # Ethernet2's sensors have no entPhysicalContainedIn at all (its lane, class other(1), still has one)
    for kind in ("RX Power", "TX Power", "TX Bias", "Temperature", "Voltage"):
        i = by_label[f"DOM {kind} Sensor for Ethernet2"]
        assert f"{ENT}.4.{i}" not in phys
        assert "No Such Instance" in get(agent, f"{ENT}.4.{i}")[f"{ENT}.4.{i}"]
    lane2 = next(i for i, v in phys.items() if v == 'STRING: "Lane 1 for Xcvr for Ethernet2"')
    assert num(phys[f"{ENT}.5.{lane2.rsplit('.', 1)[1]}"]) == 1


def test_descr_only_power_is_milliwatts_at_precision_4(served: Callable[[str], SnmpsimAgent]) -> None:
    agent = served("entity-sensor-descr-only")
    phys = walk(agent, ENT)
    by_label = {label: i for i, label in _sensor_rows(phys).items()}
    rx = by_label["DOM RX Power Sensor for Ethernet1"]
    got = get(agent, *(f"{SEN}.{c}.{rx}" for c in (1, 2, 3, 4, 5)))
    kind, scale, precision, value, status = (num(got[f"{SEN}.{c}.{rx}"]) for c in (1, 2, 3, 4, 5))
    assert (kind, scale, precision, value, status) == (6, 8, 4, 4290, 1)  # watts, milli, 4 places, ok
    watts = value * 10.0 ** (3 * (scale - 9) - precision)  # RFC 3433: 4290 → 0.4290 mW
    assert 10 * math.log10(watts * 1000) == pytest.approx(-3.68, abs=0.005)


def test_no_light_rx_reads_the_underflow_value_with_status_ok(served: Callable[[str], SnmpsimAgent]) -> None:
    agent = served("entity-sensor-no-light")
    phys = walk(agent, ENT)
    by_label = {label: i for i, label in _sensor_rows(phys).items()}
    dead, lit = by_label["DOM RX Power Sensor for Ethernet2"], by_label["DOM RX Power Sensor for Ethernet1"]
    got = get(agent, *(f"{SEN}.{c}.{i}" for i in (dead, lit) for c in (1, 4, 5)))
    assert [num(got[f"{SEN}.{c}.{dead}"]) for c in (1, 4, 5)] == [6, -1000000000, 1]  # watts, underflow, ok
    assert [num(got[f"{SEN}.{c}.{lit}"]) for c in (1, 4, 5)] == [6, 4290, 1]
    # the dead fibre's port is down; its transmitter still reports light
    tx = by_label["DOM TX Power Sensor for Ethernet2"]
    assert num(get(agent, f"{SEN}.4.{tx}")[f"{SEN}.4.{tx}"]) == 6310
    assert num(get(agent, f"{IFT}.8.2")[f"{IFT}.8.2"]) == 2
    # the sensors here are all contained (this recording varies one thing from entity-sensor-descr-only)
    assert all(f"{ENT}.4.{i}" in phys for i in by_label.values())


def test_no_ifxtable_serves_iftable_only(served: Callable[[str], SnmpsimAgent]) -> None:
    agent = served("ifmib-no-ifxtable")
    assert walk(agent, "1.3.6.1.2.1.31") == {}
    got = get(agent, f"{IFX}.1.1", f"{IFX}.6.1", f"{IFX}.15.1")
    assert all(v.startswith(("No Such Instance", "No Such Object")) for v in got.values()), got
    iftable = walk(agent, IFT)
    assert {text(iftable[f"{IFT}.2.{i}"]) for i in (1, 2)} == {"eth0", "eth1"}
    for i in (1, 2):
        assert iftable[f"{IFT}.5.{i}"] == "Gauge32: 100000000"
        for col in (10, 16):  # ifInOctets, ifOutOctets: Counter32, within 100,000 of the 2^32 wrap
            value = iftable[f"{IFT}.{col}.{i}"]
            assert value.startswith("Counter32: ") and 2**32 - num(value) < 100_000
    assert iftable[f"{IFT}.14.1"] == "Counter32: 17" and iftable[f"{IFT}.13.1"] == "Counter32: 3"


def test_port_down_reports_speed_zero(served: Callable[[str], SnmpsimAgent]) -> None:
    agent = served("ifmib-port-down")
    iftable, ifx = walk(agent, IFT), walk(agent, IFX)
    states = {i: (num(iftable[f"{IFT}.7.{i}"]), num(iftable[f"{IFT}.8.{i}"])) for i in (1, 2, 3)}
    assert states == {1: (1, 1), 2: (1, 2), 3: (2, 2)}  # up; cable out (admin up, oper down); shut down
    assert ifx[f"{IFX}.15.1"] == "Gauge32: 1000" and iftable[f"{IFT}.5.1"] == "Gauge32: 1000000000"
    for i in (2, 3):
        assert ifx[f"{IFX}.15.{i}"] == "Gauge32: 0" and iftable[f"{IFT}.5.{i}"] == "Gauge32: 0"
    assert {text(ifx[f"{IFX}.1.{i}"]) for i in (1, 2, 3)} == {"eth0", "eth1", "eth2"}


def test_mikrotik_optics_are_tied_to_ports_by_name_only(served: Callable[[str], SnmpsimAgent]) -> None:
    agent = served("mikrotik-optics-by-name")
    optical = walk(agent, "1.3.6.1.4.1.14988.1.1.19")
    columns = {int(oid[len(MT) + 1 :].split(".")[0]) for oid in optical}
    assert columns == set(range(2, 11))  # no mtxrOpticalIndex (not-accessible), no mtxrOpticalVendorName
    names = {int(oid.rsplit(".", 1)[1]): text(v) for oid, v in optical.items() if oid.startswith(f"{MT}.2.")}
    assert names == {1: "sfp1", 2: "sfp-sfpplus1"}
    if_names = {int(oid.rsplit(".", 1)[1]): text(v) for oid, v in walk(agent, f"{IFX}.1").items()}
    assert if_names == {1: "ether1", 2: "ether2", 3: "sfp1", 4: "sfp-sfpplus1"}
    by_name = {v: i for i, v in if_names.items()}
    assert {row: by_name[n] for row, n in names.items()} == {1: 3, 2: 4}  # the row index is not the ifIndex
    assert optical[f"{MT}.10.1"] == "INTEGER: -14873" and optical[f"{MT}.9.1"] == "INTEGER: -5212"  # IDiv1000 dBm
    assert optical[f"{MT}.5.1"] == "Gauge32: 131000" and optical[f"{MT}.7.2"] == "Gauge32: 3301"
    assert optical[f"{MT}.6.1"] == "Gauge32: 41" and optical[f"{MT}.8.2"] == "Gauge32: 31"


def test_agents_listen_on_loopback_only(served: Callable[[str], SnmpsimAgent]) -> None:
    agent = served("ifmib-port-down")
    assert ipaddress.ip_address(agent.host).is_loopback
    assert Path(f"/proc/{agent.proc.pid}").exists()
