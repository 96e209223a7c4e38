"""The lab's village SNMP agent (lab/snmp_agent.py) against net-snmp's own CLI tools.

Each test starts a real snmpd on 127.0.0.x at a free port (no root needed) and stops it by PID. The helpers
here (`Agent`, `start_agent`) are also used by tests/test_snmp.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from desanet.lab.snmp_agent import (
    ENTITY_SENSOR,
    MIKROTIK_OPTICAL_ENTRY,
    EntitySensor,
    OpticalValues,
    SnmpV3User,
    entity_tables,
    set_optical,
    write_agent_files,
)

pytestmark = pytest.mark.skipif(shutil.which("snmpd") is None, reason="needs net-snmp's snmpd (apt install snmpd)")

COMMUNITY = "desanet-test-community"
V3 = SnmpV3User(user="desanet", auth_key="desanet-test-auth", priv_key="desanet-test-priv")
MT = MIKROTIK_OPTICAL_ENTRY


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Agent:
    host: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    community: str | None = field(default=COMMUNITY, repr=False)
    v3: SnmpV3User | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop this snmpd by its PID (and its awk child goes with it when the pipe closes)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def cli(tool: str, agent: Agent, *oids: str, v3: SnmpV3User | None = None, timeout: float = 1.0) -> str:
    if v3:
        auth = ["-v3", "-l", "authPriv", "-u", v3.user, "-a", v3.auth_protocol, "-A", v3.auth_key]
        auth += ["-x", v3.priv_protocol, "-X", v3.priv_key]
    else:
        auth = ["-v2c", "-c", agent.community or ""]
    argv = [tool, *auth, "-On", "-M", "/nonexistent", "-m", "", "-t", str(timeout), "-r", "0", agent.endpoint, *oids]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return proc.stdout + proc.stderr


def values(output: str) -> dict[str, str]:
    """`.1.3… = TYPE: value` lines → {"1.3…": "TYPE: value"}."""
    out = {}
    for line in output.splitlines():
        if " = " in line:
            oid, val = line.split(" = ", 1)
            out[oid.strip().lstrip(".")] = val.strip()
    return out


def launch_agent(
    workdir: Path,
    host: str = "127.0.0.1",
    *,
    community: str | None = COMMUNITY,
    v3: SnmpV3User | None = V3,
    optical: OpticalValues | None = None,
    **kwargs: object,
) -> Agent:
    """Write the agent's files and start its snmpd; the caller waits for it and stops it."""
    port = free_udp_port(host)
    argv = write_agent_files(workdir, host, community, v3, optical or OpticalValues(), port=port, **kwargs)  # type: ignore[arg-type]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return Agent(host, port, workdir, proc, community, v3)


@contextlib.contextmanager
def start_agent(workdir: Path, host: str = "127.0.0.1", **kwargs: object) -> Iterator[Agent]:
    agent = launch_agent(workdir, host, **kwargs)  # type: ignore[arg-type]
    try:
        _wait_until_answering(agent)
        yield agent
    finally:
        agent.stop()


@contextlib.contextmanager
def start_agents(base: Path, hosts: list[str], **kwargs: object) -> Iterator[list[Agent]]:
    """Many agents at once: all are launched before any is waited for."""
    agents: list[Agent] = []
    try:
        for i, host in enumerate(hosts):
            agents.append(launch_agent(base / f"agent{i}", host, **kwargs))  # type: ignore[arg-type]
        for a in agents:
            _wait_until_answering(a)
        yield agents
    finally:
        for a in agents:
            a.stop()


def _wait_until_answering(agent: Agent) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            log = (agent.workdir / "snmpd.log").read_text(errors="replace") if agent.workdir.exists() else ""
            raise RuntimeError(f"snmpd exited with {agent.proc.returncode}: {log[-2000:]}")
        if "Timeticks" in cli("snmpget", agent, "1.3.6.1.2.1.1.3.0", v3=agent.v3, timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("snmpd did not answer within 10 s")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with start_agent(tmp_path / "agent") as a:
        yield a


# ---------------------------------------------------------------------------------------------- tests
def test_optical_table_reads_back_with_sign_scale_and_type(agent: Agent) -> None:
    got = values(cli("snmpwalk", agent, "1.3.6.1.4.1.14988.1.1.19"))
    assert got == {
        f"{MT}.1.1": "INTEGER: 1",
        f"{MT}.2.1": 'STRING: "sfp1"',
        f"{MT}.3.1": "INTEGER: 0",
        f"{MT}.4.1": "INTEGER: 0",
        f"{MT}.5.1": "Gauge32: 131000",  # GDiv100 nm: 1310.00 nm
        f"{MT}.6.1": "Gauge32: 40",
        f"{MT}.7.1": "Gauge32: 3300",  # GDiv1000 V
        f"{MT}.8.1": "Gauge32: 12",  # mA
        f"{MT}.9.1": "INTEGER: -2000",  # IDiv1000 dBm: -2.000 dBm, negative as an Integer32
        f"{MT}.10.1": "INTEGER: -18000",
        f"{MT}.11.1": 'STRING: "desanet-lab"',
    }


def test_get_getnext_and_bulkwalk_agree(agent: Agent) -> None:
    got = values(cli("snmpget", agent, f"{MT}.10.1", f"{MT}.9.1", f"{MT}.5.1"))
    assert got[f"{MT}.10.1"] == "INTEGER: -18000" and got[f"{MT}.9.1"] == "INTEGER: -2000"
    # GETNEXT from the column, from the table and from between rows
    assert values(cli("snmpgetnext", agent, f"{MT}.10"))[f"{MT}.10.1"] == "INTEGER: -18000"
    assert f"{MT}.1.1" in values(cli("snmpgetnext", agent, "1.3.6.1.4.1.14988.1.1.19"))
    assert f"{MT}.10.1" in values(cli("snmpgetnext", agent, f"{MT}.9.1"))
    # past the last row, GETNEXT leaves the subtree (to whatever the agent has next)
    after = values(cli("snmpgetnext", agent, f"{MT}.11.1"))
    assert after and not any(k.startswith("1.3.6.1.4.1.14988.1.1.19") for k in after)
    assert values(cli("snmpbulkwalk", agent, "1.3.6.1.4.1.14988.1.1.19")) == values(
        cli("snmpwalk", agent, "1.3.6.1.4.1.14988.1.1.19")
    )
    # an instance that does not exist
    assert "No Such Instance" in cli("snmpget", agent, f"{MT}.10.2")


def test_set_optical_is_seen_by_the_next_request(agent: Agent) -> None:
    set_optical(
        agent.workdir,
        OpticalValues(rx_dbm=-27.456, tx_dbm=1.5, temperature_c=-5, bias_ma=30, rx_loss=True, name="sfp-sfpplus1"),
    )
    got = values(cli("snmpwalk", agent, MT))
    assert got[f"{MT}.10.1"] == "INTEGER: -27456"
    assert got[f"{MT}.9.1"] == "INTEGER: 1500"
    assert got[f"{MT}.6.1"] == "INTEGER: -5"  # a Gauge32 cannot be negative; the lab sends an Integer32
    assert got[f"{MT}.8.1"] == "Gauge32: 30"
    assert got[f"{MT}.3.1"] == "INTEGER: 1"
    assert got[f"{MT}.2.1"] == 'STRING: "sfp-sfpplus1"'
    assert not list(agent.workdir.glob(".optical.values.*")), "temporary files left behind"


def test_v3_authpriv_with_snmpget(agent: Agent) -> None:
    got = values(cli("snmpget", agent, f"{MT}.10.1", "1.3.6.1.2.1.1.3.0", v3=V3))
    assert got[f"{MT}.10.1"] == "INTEGER: -18000"
    assert got["1.3.6.1.2.1.1.3.0"].startswith("Timeticks")
    wrong = SnmpV3User(user="desanet", auth_key="not-the-auth-key", priv_key=V3.priv_key)
    assert "Authentication failure" in cli("snmpget", agent, "1.3.6.1.2.1.1.3.0", v3=wrong)


def test_if_mib_comes_from_the_kernel(agent: Agent) -> None:
    names = values(cli("snmpwalk", agent, "1.3.6.1.2.1.31.1.1.1.1"))
    assert 'STRING: "lo"' in names.values()
    idx = next(k.rsplit(".", 1)[1] for k, v in names.items() if v == 'STRING: "lo"')
    assert values(cli("snmpget", agent, f"1.3.6.1.2.1.2.2.1.8.{idx}"))[f"1.3.6.1.2.1.2.2.1.8.{idx}"] == "INTEGER: 1"


def test_community_only_from_allowed_sources(tmp_path: Path) -> None:
    with start_agent(tmp_path / "a", community=COMMUNITY, v3=V3, sources=("10.0.0.0/8",)) as a:
        assert "Timeout" in cli("snmpget", a, "1.3.6.1.2.1.1.3.0", timeout=0.3)
        assert "Timeticks" in cli("snmpget", a, "1.3.6.1.2.1.1.3.0", v3=V3)  # v3 still works


def test_entity_sensor_tables_can_be_served(tmp_path: Path) -> None:
    sensors = [EntitySensor(11, 8, 451, precision=1, name="Te1/1 temp", parent=10, parent_name="Te1/1 module")]
    with start_agent(tmp_path / "a", serve_mikrotik=False, extra=entity_tables(sensors)) as a:
        got = values(cli("snmpwalk", a, ENTITY_SENSOR))
        assert got["1.3.6.1.2.1.99.1.1.1.4.11"] == "INTEGER: 451"
        phys = values(cli("snmpwalk", a, "1.3.6.1.2.1.47.1.1.1.1.7"))
        assert phys["1.3.6.1.2.1.47.1.1.1.1.7.10"] == 'STRING: "Te1/1 module"'
        assert "No Such Object" in cli("snmpget", a, f"{MT}.10.1")


def test_agent_files_and_argv(tmp_path: Path) -> None:
    argv = write_agent_files(tmp_path, "10.101.1.1", COMMUNITY, V3, OpticalValues())
    assert argv[-1] == "udp:10.101.1.1:161"
    assert "-f" in argv and "-C" in argv and f"--persistentDir={tmp_path / 'persist'}" in argv
    assert (tmp_path / "snmpd.conf").stat().st_mode & 0o077 == 0, "snmpd.conf holds secrets"
    conf = (tmp_path / "snmpd.conf").read_text()
    assert f"rocommunity {COMMUNITY} 127.0.0.0/8" in conf and "createUser desanet SHA" in conf
    assert "rouser desanet priv" in conf and "pass_persist .1.3.6.1.4.1.14988.1.1.19 " in conf
    assert write_agent_files(tmp_path, "127.0.0.5:1161", COMMUNITY, None, OpticalValues())[-1] == "udp:127.0.0.5:1161"
    assert write_agent_files(tmp_path, "[::1]:1161", COMMUNITY, None, OpticalValues())[-1] == "udp6:[::1]:1161"


def test_agent_rejects_bad_settings_without_echoing_secrets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="community or an SNMPv3 user"):
        write_agent_files(tmp_path, "127.0.0.1", None, None, OpticalValues())
    with pytest.raises(ValueError) as err:
        write_agent_files(tmp_path, "127.0.0.1", None, SnmpV3User("u", "short", "long-enough"), OpticalValues())
    assert "short" not in str(err.value) and "8 characters" in str(err.value)
    with pytest.raises(ValueError) as err:
        write_agent_files(tmp_path, "127.0.0.1", 'bad"community', None, OpticalValues())
    assert 'bad"community' not in str(err.value)
    with pytest.raises(ValueError, match="privacy protocol"):
        write_agent_files(
            tmp_path, "127.0.0.1", None, SnmpV3User("u", "a" * 8, "b" * 8, "SHA", "AES256"), OpticalValues()
        )
    assert "desanet-test-auth" not in repr(V3) and "desanet-test-priv" not in repr(V3)


def test_persisted_users_are_forgotten_on_rewrite(tmp_path: Path) -> None:
    write_agent_files(tmp_path, "127.0.0.1", None, V3, OpticalValues())
    persisted = tmp_path / "persist" / "snmpd.conf"
    persisted.write_text("usmUser 1 3 0x80001f88 0x6465 0x6465 NULL .1.3.6.1.6.3.10.1.1.3 0x00\noldEngineID 0x80\n")
    write_agent_files(tmp_path, "127.0.0.1", None, V3, OpticalValues())
    assert persisted.read_text() == "oldEngineID 0x80\n"


def test_processes_are_ours_and_stop(tmp_path: Path) -> None:
    with start_agent(tmp_path / "a") as a:
        pid = a.proc.pid
        assert Path(f"/proc/{pid}").exists()
    assert a.proc.returncode is not None
    with contextlib.suppress(FileNotFoundError):
        assert "snmpd" not in Path(f"/proc/{pid}/cmdline").read_text()
    assert os.path.exists(a.workdir / "snmpd.log")
