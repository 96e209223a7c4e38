"""probes/snmp.py against real net-snmp agents (lab/snmp_agent.py) on 127.0.0.x, and its pure decoding.

Every agent is an snmpd started by these tests on a free port of a loopback address and stopped by its PID;
nothing is sent anywhere but 127.0.0.0/8. No root needed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance

from desanet.lab.snmp_agent import (
    MIKROTIK_OPTICAL,
    EntitySensor,
    OpticalValues,
    entity_tables,
    optical_rows,
    set_optical,
    set_rows,
    write_agent_files,
)
from desanet.probes.snmp import (
    IF_COLUMNS,
    MIKROTIK_OPTICAL_COLUMNS,
    OID_NAMES,
    SnmpPoller,
    SnmpResult,
    SnmpSettings,
    _entity_optics,
    _mikrotik_optics,
    probe,
    sensor_value,
)
from desanet.probes.snmp_v2c import decode_response, encode_request, encode_varbind, peek_request_id
from tests.test_snmp_agent import (
    COMMUNITY,
    V3,
    Agent,
    _wait_until_answering,
    cli,
    free_udp_port,
    launch_agent,
    start_agent,
    start_agents,
    values,
)

needs_snmpd = pytest.mark.skipif(shutil.which("snmpd") is None, reason="needs net-snmp's snmpd (apt install snmpd)")

SECRETS = (COMMUNITY, V3.auth_key, V3.priv_key)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def v2c(agent: Agent, **kw: Any) -> SnmpSettings:
    return SnmpSettings(port=agent.port, community=COMMUNITY, **kw)


def v3(agent: Agent, **kw: Any) -> SnmpSettings:
    args: dict[str, Any] = {"user": V3.user, "auth_key": V3.auth_key, "priv_key": V3.priv_key} | kw
    return SnmpSettings(version="3", port=agent.port, **args)


async def poll_once(target: str, settings: SnmpSettings) -> SnmpResult:
    async with SnmpPoller() as poller:
        return await poller.poll(target, settings)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    if shutil.which("snmpd") is None:
        pytest.skip("needs net-snmp's snmpd")
    with start_agent(tmp_path_factory.mktemp("snmp") / "agent", optical=OpticalValues(rx_dbm=-21.37)) as a:
        yield a


# ---------------------------------------------------------------------------------------------- pure
def test_settings_hide_secrets_and_validate() -> None:
    s = SnmpSettings(version="3", user="desanet", auth_key=V3.auth_key, priv_key=V3.priv_key)
    assert_no_secret(repr(s) + str(s))
    assert_no_secret(repr(SnmpSettings(community=COMMUNITY)))
    with pytest.raises(ValueError, match="community"):
        SnmpSettings()
    with pytest.raises(ValueError, match="auth key and a privacy key"):
        SnmpSettings(version="3", user="u", auth_key="x" * 8)
    with pytest.raises(ValueError, match="privacy protocol"):
        SnmpSettings(version="3", user="u", auth_key="x" * 8, priv_key="y" * 8, priv_protocol="ROT13")
    with pytest.raises(TypeError):
        SnmpSettings(161, "2c")  # type: ignore[call-arg, arg-type]  # keyword-only: no secret passed by position by mistake


def test_entity_sensor_scaling() -> None:
    assert sensor_value(451, 9, 1) == pytest.approx(45.1)  # RFC 3433 example: units, precision 1
    assert sensor_value(3300, 8, 0) == pytest.approx(3.3)  # milli
    assert sensor_value(6500, 7, 0) == pytest.approx(0.0065)  # micro
    assert sensor_value(-2345, 9, 2) == pytest.approx(-23.45)
    assert sensor_value(5, 12, 0) == pytest.approx(5e9)  # giga


def test_mikrotik_decoding_units() -> None:
    c = MIKROTIK_OPTICAL_COLUMNS
    one = (1,)
    tables = {
        c["name"]: {one: _Str(b"sfp1")},
        c["rx_power"]: {one: -18000},
        c["tx_power"]: {one: -2400},
        c["temperature"]: {one: 41},
        c["bias"]: {one: 12},
        c["voltage"]: {one: 3300},
        c["wavelength"]: {one: 131000},
        c["rx_loss"]: {one: 1},
        c["tx_fault"]: {one: 0},
    }
    (o,) = _mikrotik_optics(tables)  # type: ignore[arg-type]
    assert (o.rx_power_dbm, o.tx_power_dbm) == (pytest.approx(-18.0), pytest.approx(-2.4))
    assert o.bias_amperes == pytest.approx(0.012) and o.voltage_volts == pytest.approx(3.3)
    assert o.wavelength_meters == pytest.approx(1310e-9) and o.temperature_celsius == 41
    assert o.rx_loss is True and o.tx_fault is False and o.vendor is None and o.name == "sfp1"


def test_v2c_codec_agrees_with_pysnmp() -> None:
    """The in-house v2c coding against pysnmp/pyasn1's: every SMI type, signs, 64-bit counters, long-form
    lengths, big OID arcs and the exception values."""
    from pyasn1.codec.ber import decoder, encoder
    from pysnmp.proto.api import v2c as api

    oid_value = (1, 3, 6, 1, 2, 1)
    pairs: list[tuple[tuple[int, ...], Any]] = [
        ((1, 3, 6, 1, 2, 1, 1, 3, 0), api.TimeTicks(42)),
        ((1, 3, 6, 1, 4, 1, 14988, 200000, 1), api.Integer(-21370)),
        ((2, 999, 3), api.Counter64(2**64 - 1)),
        ((1, 3, 1), api.OctetString(b"x" * 300)),
        ((1, 3, 2), api.NoSuchInstance()),
        ((1, 3, 3), api.EndOfMibView()),
        ((1, 3, 4), api.IpAddress("10.0.0.1")),
        ((1, 3, 5), api.ObjectIdentifier(oid_value)),
        ((1, 3, 6), api.Gauge32(2**32 - 1)),
        ((1, 3, 7), api.Integer(-(2**31))),
    ]
    pdu = api.ResponsePDU()
    api.apiPDU.set_defaults(pdu)
    api.apiPDU.set_request_id(pdu, 123456)
    api.apiPDU.set_varbinds(pdu, pairs)
    msg = api.Message()
    api.apiMessage.set_defaults(msg)
    api.apiMessage.set_community(msg, "c")
    api.apiMessage.set_pdu(msg, pdu)
    data = encoder.encode(msg)
    assert peek_request_id(data) == 123456
    status, index, vbs = decode_response(data)
    assert (status, index) == (0, 0) and [o for o, _ in vbs] == [o for o, _ in pairs]
    got = dict(vbs)
    assert got[(1, 3, 6, 1, 2, 1, 1, 3, 0)] == 42 and got[(1, 3, 6, 1, 4, 1, 14988, 200000, 1)] == -21370
    assert got[(2, 999, 3)] == 2**64 - 1 and got[(1, 3, 1)] == b"x" * 300 and got[(1, 3, 4)] == bytes([10, 0, 0, 1])
    assert isinstance(got[(1, 3, 2)], NoSuchInstance) and isinstance(got[(1, 3, 3)], EndOfMibView)
    assert got[(1, 3, 5)] == oid_value and got[(1, 3, 6)] == 2**32 - 1 and got[(1, 3, 7)] == -(2**31)
    with pytest.raises((IndexError, ValueError)):
        decode_response(data[:-3])

    # and a request of ours is what pysnmp reads: a GETBULK with its counts and OIDs
    oids = [(1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6), (2, 999, 3, 128)]
    raw = encode_request(b"public", 0xA5, 2**30, 1, 25, b"".join(encode_varbind(o) for o in oids))
    decoded, rest = decoder.decode(raw, asn1Spec=api.Message())
    req = api.apiMessage.get_pdu(decoded)
    assert rest == b"" and bytes(api.apiMessage.get_community(decoded)) == b"public"
    assert int(api.apiBulkPDU.get_request_id(req)) == 2**30
    assert (int(api.apiBulkPDU.get_non_repeaters(req)), int(api.apiBulkPDU.get_max_repetitions(req))) == (1, 25)
    assert [tuple(o) for o, _ in api.apiBulkPDU.get_varbinds(req)] == oids


def test_oid_table_names_every_column() -> None:
    for oid in list(IF_COLUMNS.values()) + list(MIKROTIK_OPTICAL_COLUMNS.values()):
        assert ".".join(map(str, oid)) in OID_NAMES
    assert OID_NAMES["1.3.6.1.2.1.31.1.1.1.6"] == "if.in_octets"


class _Str:
    def __init__(self, raw: bytes):
        self.raw = raw

    def asOctets(self) -> bytes:
        return self.raw


# ---------------------------------------------------------------------------------------------- against snmpd
def _if_index(agent: Agent, name: str) -> int:
    names = values(cli("snmpwalk", agent, "1.3.6.1.2.1.31.1.1.1.1"))
    return int(next(k.rsplit(".", 1)[1] for k, v in names.items() if v == f'STRING: "{name}"'))


def _counter(agent: Agent, oid: str) -> int:
    return int(values(cli("snmpget", agent, oid))[oid].split(": ")[1])


@needs_snmpd
def test_interfaces_match_snmpget(agent: Agent) -> None:
    lo = _if_index(agent, "lo")
    in_oid, out_oid = f"1.3.6.1.2.1.31.1.1.1.6.{lo}", f"1.3.6.1.2.1.31.1.1.1.10.{lo}"
    before_in, before_out = _counter(agent, in_oid), _counter(agent, out_oid)
    r = run(poll_once(agent.host, v2c(agent)))
    after_in, after_out = _counter(agent, in_oid), _counter(agent, out_oid)
    assert r.success, r.error
    ifs = {i.index: i for i in r.interfaces}
    # lo carries this very traffic, so its counters move: what the probe read lies between two snmpgets.
    assert ifs[lo].in_octets is not None and before_in <= ifs[lo].in_octets <= after_in
    assert ifs[lo].out_octets is not None and before_out <= ifs[lo].out_octets <= after_out
    # everything that does not move must be equal, interface by interface
    walk = {
        name: values(cli("snmpwalk", agent, ".".join(map(str, oid))))
        for name, oid in IF_COLUMNS.items()
        if name not in ("in_octets", "out_octets")
    }
    assert set(ifs) == {int(k.rsplit(".", 1)[1]) for k in walk["oper_status"]}
    for idx, i in ifs.items():

        def snmp(name: str, idx: int = idx) -> str:
            return walk[name][f"{'.'.join(map(str, IF_COLUMNS[name]))}.{idx}"].split(": ", 1)[-1]

        assert i.name == snmp("name").strip('"')
        assert i.oper_up == (snmp("oper_status") == "1") and i.admin_up == (snmp("admin_status") == "1")
        assert i.speed_bits_per_second == (int(snmp("high_speed")) * 1e6 or None)  # 0 (no link) is unknown
        assert (i.in_errors, i.out_errors, i.in_discards) == tuple(
            int(snmp(n)) for n in ("in_errors", "out_errors", "in_discards")
        )
        ticks = int(snmp("last_change").split(")")[0].strip("("))
        assert i.last_change_seconds == pytest.approx(ticks / 100)
    up = values(cli("snmpget", agent, "1.3.6.1.2.1.1.3.0"))["1.3.6.1.2.1.1.3.0"]
    up_seconds = int(up.split("(")[1].split(")")[0]) / 100
    assert r.uptime_seconds is not None and 0 <= up_seconds - r.uptime_seconds < 5


@needs_snmpd
def test_optics_in_dbm_with_sign_and_scale(agent: Agent) -> None:
    r = run(poll_once(agent.host, v2c(agent)))
    assert r.success, r.error
    (o,) = r.optics
    assert o.source == "mikrotik" and o.name == "sfp1" and o.vendor == "desanet-lab"
    assert o.rx_power_dbm == pytest.approx(-21.37) and o.tx_power_dbm == pytest.approx(-2.0)
    assert o.temperature_celsius == 40 and o.bias_amperes == pytest.approx(0.012)
    assert o.voltage_volts == pytest.approx(3.3) and o.wavelength_meters == pytest.approx(1.31e-6)
    assert o.rx_loss is False and o.tx_fault is False
    d = json.loads(json.dumps(r.to_dict()))
    assert d["optics"][0]["rx_power_dbm"] == pytest.approx(-21.37) and d["uptime_seconds"] > 0
    assert {"interfaces", "optics", "uptime_seconds", "success", "error", "duration_seconds"} <= set(d)


@needs_snmpd
def test_values_change_after_set_optical(tmp_path: Path) -> None:
    with start_agent(tmp_path / "a") as a:

        async def two_polls() -> tuple[SnmpResult, SnmpResult]:
            async with SnmpPoller() as poller:
                first = await poller.poll(a.host, v2c(a))
                set_optical(a.workdir, OpticalValues(rx_dbm=-30.5, tx_dbm=0.25, rx_loss=True, temperature_c=-3))
                return first, await poller.poll(a.host, v2c(a))

        first, second = run(two_polls())
        assert first.optics[0].rx_power_dbm == pytest.approx(-18.0)
        o = second.optics[0]
        assert (o.rx_power_dbm, o.tx_power_dbm, o.rx_loss) == (pytest.approx(-30.5), pytest.approx(0.25), True)
        assert o.temperature_celsius == -3


@needs_snmpd
def test_v3_authpriv_matches_v2c(agent: Agent) -> None:
    async def both() -> tuple[SnmpResult, SnmpResult]:
        async with SnmpPoller() as poller:
            return await poller.poll(agent.host, v3(agent)), await poller.poll(agent.host, v2c(agent))

    r3, r2 = run(both())
    assert r3.success, r3.error
    assert [i.name for i in r3.interfaces] == [i.name for i in r2.interfaces]
    assert r3.optics[0].rx_power_dbm == pytest.approx(-21.37)


@needs_snmpd
@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"auth_key": "wrong-auth-key"}, "wrong auth key"),
        ({"priv_key": "wrong-priv-key"}, "wrong privacy key"),
        ({"user": "nobody"}, "unknown to the agent"),
        ({"auth_protocol": "MD5"}, "wrong auth key or protocol (MD5)"),
    ],
)
def test_wrong_v3_credentials_give_clear_error_quickly(agent: Agent, change: dict[str, str], words: str) -> None:
    t0 = time.monotonic()
    r = run(poll_once(agent.host, v3(agent, **change)))
    elapsed = time.monotonic() - t0
    assert not r.success and r.error is not None and words in r.error
    assert elapsed < 3.0, f"{elapsed:.2f} s"
    assert_no_secret(repr(r) + json.dumps(r.to_dict()))
    for value in change.values():
        if "key" in value:
            assert value not in (r.error or "")


@needs_snmpd
def test_priv_key_changed_on_a_known_agent_is_still_named(agent: Agent) -> None:
    """The engine ID is cached after a good poll; a key that goes bad later must still be called by name."""

    async def polls() -> list[SnmpResult]:
        async with SnmpPoller() as poller:
            good = await poller.poll(agent.host, v3(agent))
            bad = await poller.poll(agent.host, v3(agent, priv_key="another-priv-key"))
            again = await poller.poll(agent.host, v3(agent))
            return [good, bad, again]

    good, bad, again = run(polls())
    assert good.success and again.success, (good.error, again.error)
    assert not bad.success and "wrong privacy key" in (bad.error or "") and bad.duration_seconds < 3.5


@needs_snmpd
def test_wrong_community_and_dead_agent_time_out_in_words(agent: Agent) -> None:
    wrong = SnmpSettings(port=agent.port, community="not-the-community", timeout_seconds=0.3, retries=0)
    r = run(poll_once(agent.host, wrong))
    assert not r.success and "no SNMP answer within 0.3 s" in (r.error or "") and "community" in (r.error or "")
    dead = SnmpSettings(port=free_udp_port(), community=COMMUNITY, timeout_seconds=0.3, retries=1)
    r = run(poll_once("127.0.0.1", dead))
    assert not r.success and 0.5 <= r.duration_seconds < 1.5, r.duration_seconds


@needs_snmpd
def test_secrets_never_in_results_or_logs(agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def polls() -> list[SnmpResult]:
        async with SnmpPoller() as poller:
            return await poller.poll_many(
                [
                    (agent.host, v2c(agent)),
                    (agent.host, v3(agent)),
                    (agent.host, SnmpSettings(port=agent.port, community=COMMUNITY + "x", timeout_seconds=0.2)),
                    (agent.host, v3(agent, auth_key=V3.auth_key + "x")),
                ]
            )

    results = run(polls())
    text = "".join(repr(r) + json.dumps(r.to_dict()) for r in results) + caplog.text
    assert_no_secret(text)
    assert COMMUNITY + "x" not in text and V3.auth_key + "x" not in text


@needs_snmpd
def test_probe_without_a_poller(agent: Agent) -> None:
    async def twice() -> tuple[SnmpResult, SnmpResult]:
        return await probe(agent.host, v2c(agent)), await probe(agent.host, v3(agent))

    a, b = run(twice())
    assert a.success and b.success, (a.error, b.error)


@needs_snmpd
def test_entity_sensor_fallback(tmp_path: Path) -> None:
    """An agent without the MikroTik table but with RFC 3433 sensors under a transceiver (ENTITY-MIB)."""
    xcvr: dict[str, Any] = {"parent": 1000, "parent_name": "Te1/1 transceiver"}
    sensors = [
        EntitySensor(1001, 8, 451, precision=1, name="Te1/1 Temperature", **xcvr),  # 45.1 °C
        EntitySensor(1002, 4, 3300, scale=8, name="Te1/1 Supply Voltage", **xcvr),  # 3.3 V
        EntitySensor(1003, 5, 6500, scale=7, name="Te1/1 Tx Bias Current", **xcvr),  # 6.5 mA
        EntitySensor(1004, 1, -2345, precision=2, units="dBm", name="Te1/1 Receive Power", **xcvr),
        EntitySensor(1005, 6, 501, scale=7, name="Te1/1 Transmit Power", **xcvr),  # 501 µW = -3.0 dBm
        EntitySensor(1006, 8, 60, name="Chassis temperature"),  # not an optic
        EntitySensor(
            1007,
            1,
            -4000,
            precision=2,
            units="dBm",
            name="Te1/2 Rx Power",
            oper_status=2,
            parent=2000,
            parent_name="Te1/2 transceiver",
        ),  # unavailable: skipped
    ]
    with start_agent(tmp_path / "a", serve_mikrotik=False, extra=entity_tables(sensors)) as a:
        r = run(poll_once(a.host, v2c(a)))
    assert r.success, r.error
    (o,) = r.optics
    assert o.source == "entity-sensor" and o.index == 1000 and o.name == "Te1/1 transceiver"
    assert o.rx_power_dbm == pytest.approx(-23.45) and o.tx_power_dbm == pytest.approx(-3.0, abs=0.01)
    assert o.temperature_celsius == pytest.approx(45.1) and o.voltage_volts == pytest.approx(3.3)
    assert o.bias_amperes == pytest.approx(0.0065)
    assert o.rx_loss is False and o.wavelength_meters is None  # a reading above the DOM's floor: light arrives


def test_entity_optics_without_entity_mib() -> None:
    """No ENTITY-MIB names or containment: each power sensor stands alone, told apart only by units."""
    from desanet.probes.snmp import ENTITY_SENSOR_COLUMNS as c

    tables: dict[tuple[int, ...], dict[tuple[int, ...], Any]] = {
        c["type"]: {(7,): 1},
        c["scale"]: {(7,): 9},
        c["precision"]: {(7,): 1},
        c["value"]: {(7,): -55},
        c["oper_status"]: {(7,): 1},
        c["units"]: {(7,): _Str(b"dBm")},
    }
    assert _entity_optics(tables, {}) == ()  # a dBm reading with no rx/tx in any name is not guessed


# ---------------------------------------------------------------------------------------------- known rows
class CountingPoller(SnmpPoller):
    """Counts GETBULKs: a poll answered from the known rows sends none (GETs only), a walk sends some."""

    bulks = 0

    async def _bulk(self, *args: Any, **kwargs: Any) -> Any:
        self.bulks += 1
        return await super()._bulk(*args, **kwargs)


def _steady(r: SnmpResult) -> list[dict[str, Any]]:
    """What must not move between polls a moment apart (lo's octet counters carry the polls themselves)."""
    return [{k: v for k, v in i.items() if k not in ("in_octets", "out_octets")} for i in r.to_dict()["interfaces"]]


@needs_snmpd
@pytest.mark.parametrize("version", ["2c", "3"])
def test_known_rows_give_the_same_figures_as_a_walk(agent: Agent, version: str) -> None:
    settings = v2c(agent) if version == "2c" else v3(agent)

    async def go() -> tuple[SnmpResult, SnmpResult, SnmpResult, int, int]:
        poller = CountingPoller()
        async with poller:
            walked = await poller.poll(agent.host, settings)
            bulks = poller.bulks
            known = await poller.poll(agent.host, settings)
            steady_bulks = poller.bulks - bulks
        return walked, known, await poll_once(agent.host, settings), bulks, steady_bulks

    walked, known, walked_again, bulks, steady_bulks = run(go())
    assert walked.success and known.success and walked_again.success, (walked.error, known.error)
    assert bulks >= 2 and steady_bulks == 0  # the second poll was GETs of the known rows only
    assert _steady(known) == _steady(walked) == _steady(walked_again) and len(known.interfaces) >= 1
    assert known.optics == walked.optics == walked_again.optics and known.optics[0].rx_power_dbm == pytest.approx(
        -21.37
    )
    for a, b, c in zip(walked.interfaces, known.interfaces, walked_again.interfaces, strict=True):
        assert a.in_octets is not None and b.in_octets is not None and c.in_octets is not None
        assert a.in_octets <= b.in_octets <= c.in_octets
    assert walked.uptime_seconds is not None and known.uptime_seconds is not None
    assert walked.uptime_seconds <= known.uptime_seconds
    assert known.to_dict().keys() == walked.to_dict().keys()


def _restart(a: Agent, optics: int) -> Agent:
    """Stop the agent and start it again on the same address and port, serving `optics` SFPs."""
    a.stop()
    argv = write_agent_files(a.workdir, a.host, COMMUNITY, V3, OpticalValues(), port=a.port)
    set_rows(a.workdir, MIKROTIK_OPTICAL, [r for i in range(1, optics + 1) for r in optical_rows(OpticalValues(), i)])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    b = Agent(a.host, a.port, a.workdir, proc, COMMUNITY, V3)
    _wait_until_answering(b)
    return b


@needs_snmpd
def test_known_rows_are_walked_again_after_restart_or_lost_row(tmp_path: Path) -> None:
    """A second SFP that appears with a restart (uptime back to ~0) is found at once; a row that vanishes
    (noSuchInstance to the GET) is dropped at once."""
    a = launch_agent(tmp_path / "a")
    try:
        _wait_until_answering(a)

        async def go() -> list[tuple[SnmpResult, int]]:
            nonlocal a
            out = []
            poller = CountingPoller()
            async with poller:

                async def poll() -> None:
                    before = poller.bulks
                    out.append((await poller.poll(a.host, v2c(a)), poller.bulks - before))

                await poll()  # walk
                await asyncio.sleep(1.1)  # so that the restarted agent's uptime is below the last one seen
                await poll()  # known rows
                a = await asyncio.to_thread(_restart, a, 2)
                await poll()  # uptime went back: walk, two optics
                await poll()  # known rows, two optics
                set_rows(a.workdir, MIKROTIK_OPTICAL, optical_rows(OpticalValues(), 1))
                await poll()  # optic 2 answers noSuchInstance: walk, one optic
            return out

        results = run(go())
    finally:
        a.stop()
    assert all(r.success for r, _ in results), [r.error for r, _ in results]
    assert [len(r.optics) for r, _ in results] == [1, 1, 2, 2, 1]
    assert [bulks > 0 for _, bulks in results] == [True, False, True, False, True]
    assert results[2][0].uptime_seconds is not None and results[1][0].uptime_seconds is not None
    assert results[2][0].uptime_seconds < results[1][0].uptime_seconds


def _wait_for_if_number(agent: Agent, n: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if values(cli("snmpget", agent, "1.3.6.1.2.1.2.1.0")).get("1.3.6.1.2.1.2.1.0") == f"INTEGER: {n}":
            return
        time.sleep(0.2)
    raise AssertionError(f"snmpd did not show ifNumber {n} within 15 s")


def _isolated_root() -> bool:
    return os.geteuid() == 0 and [name for _, name in socket.if_nameindex()] == ["lo"]


@needs_snmpd
@pytest.mark.skipif(not _isolated_root(), reason="adds a veth pair: only as root in a namespace of lo alone")
def test_known_rows_are_walked_again_when_interfaces_change(agent: Agent) -> None:
    async def go() -> tuple[list[SnmpResult], list[int]]:
        out, bulks = [], []
        poller = CountingPoller()
        async with poller:
            for step in range(3):
                if step == 2:
                    subprocess.run(["ip", "link", "add", "dsnt0", "type", "veth", "peer", "name", "dsnt1"], check=True)
                    await asyncio.to_thread(_wait_for_if_number, agent, 3)  # snmpd caches its ifTable a few s
                before = poller.bulks
                out.append(await poller.poll(agent.host, v2c(agent)))
                bulks.append(poller.bulks - before)
        return out, bulks

    try:
        results, bulks = run(go())
    finally:
        subprocess.run(["ip", "link", "del", "dsnt0"], check=False, capture_output=True)
    assert all(r.success for r in results)
    names = [{i.name for i in r.interfaces} for r in results]
    assert names[0] == names[1] == {"lo"} and names[2] == {"lo", "dsnt0", "dsnt1"}
    assert [b > 0 for b in bulks] == [True, False, True]  # ifNumber changed: walked


@needs_snmpd
def test_dead_agent_does_not_slow_the_others(tmp_path: Path) -> None:
    hosts = [f"127.0.0.{20 + i}" for i in range(20)]
    with start_agents(tmp_path, hosts) as agents:
        live = [(a.host, v2c(a)) for a in agents]
        # a black hole: a socket that never answers (a dead agent or a cut fibre looks like this)
        hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hole.bind(("127.0.0.99", 0))
        dead = ("127.0.0.99", SnmpSettings(port=hole.getsockname()[1], community=COMMUNITY))
        try:

            async def rounds() -> tuple[list[SnmpResult], list[SnmpResult], float, float]:
                async with SnmpPoller() as poller:
                    await poller.poll_many(live)  # first contact out of the way
                    t = time.monotonic()
                    alone = await poller.poll_many(live)
                    t_alone = time.monotonic() - t
                    t = time.monotonic()
                    mixed = await poller.poll_many([dead, *live])
                    return alone, mixed, t_alone, time.monotonic() - t

            alone, mixed, t_alone, t_mixed = run(rounds())
        finally:
            hole.close()
    assert all(r.success for r in alone) and all(r.success for r in mixed[1:])
    assert not mixed[0].success and "no SNMP answer within 2 s" in (mixed[0].error or "")
    assert 1.9 <= mixed[0].duration_seconds < 3.0  # the dead one costs its own timeout (1 s × 2 tries)
    slowest_alone = max(r.duration_seconds for r in alone)
    slowest_live = max(r.duration_seconds for r in mixed[1:])
    print(f"\n20 live agents: slowest {slowest_alone:.3f} s alone, {slowest_live:.3f} s beside a dead one")
    assert slowest_live < slowest_alone + 0.5 and slowest_live < 1.0
    assert t_mixed < 3.0 and t_alone < 1.5


@needs_snmpd
@pytest.mark.slow
def test_scale_200_polls(tmp_path: Path) -> None:
    """~200 village polls at once: 40 agents on 127.0.1.x, each polled five times (v2c and v3 mixed)."""
    hosts = [f"127.0.1.{10 + i}" for i in range(40)]
    with start_agents(tmp_path, hosts) as agents:
        items = [(a.host, v3(a) if i % 4 == 0 else v2c(a)) for i, a in enumerate(agents)] * 5

        async def go() -> tuple[list[SnmpResult], float, float]:
            async with SnmpPoller() as poller:
                await poller.poll_many(items[: len(agents)])  # first contact (v3 discovery) out of the way
                t, c = time.monotonic(), time.process_time()
                res = await poller.poll_many(items)
                return res, time.monotonic() - t, time.process_time() - c

        results, wall, cpu = run(go())
    bad = [r.error for r in results if not r.success]
    print(f"\n{len(results)} polls of {len(agents)} agents: {wall:.2f} s wall, {cpu:.2f} s CPU in the poller")
    assert not bad, bad[:3]
    assert all(r.optics and r.interfaces for r in results)
    assert wall < 10.0


# ---------------------------------------------------------------------------------------------- CLI
def desanet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desanet.cli", "probe", "snmp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


INVENTORY = """\
district: Test
kecamatan:
  - {{name: Pesanggaran, uplink_mbit: 1000, lat: -8.5, lon: 114.0}}
villages:
  - name: Sumberagung
    slug: sumberagung
    kind: desa
    kecamatan: Pesanggaran
    router: 127.0.0.1
    lat: -8.5
    lon: 114.0
    contracted: {{down_mbit: 20, up_mbit: 20}}
    snmp:
      version: 3
      user: desanet
      auth_key: {{env: TEST_SNMP_AUTH}}
      priv_key: {{env: TEST_SNMP_PRIV}}
      port: {port}
"""


@needs_snmpd
def test_cli(agent: Agent, tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY.format(port=agent.port))
    keys = {"TEST_SNMP_AUTH": V3.auth_key, "TEST_SNMP_PRIV": V3.priv_key}

    p = desanet("sumberagung", "--json", "--inventory", str(inv), env=keys)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["village"] == "sumberagung" and out["optics"][0]["rx_power_dbm"] == pytest.approx(-21.37)
    assert_no_secret(p.stdout + p.stderr)

    p = desanet("Sumberagung", "--inventory", str(inv), env=keys)
    assert p.returncode == 0 and "-21.37 dBm" in p.stdout and "lo" in p.stdout, p.stdout + p.stderr

    p = desanet("sumberagung", "--inventory", str(inv), env={"TEST_SNMP_AUTH": "", "TEST_SNMP_PRIV": ""})
    assert p.returncode == 2 and "TEST_SNMP_AUTH" in p.stderr

    p = desanet(
        "127.0.0.1", "--port", str(agent.port), "--community-env", "TEST_COMMUNITY", env={"TEST_COMMUNITY": COMMUNITY}
    )
    assert p.returncode == 0 and "sfp1" in p.stdout, p.stderr
    assert_no_secret(p.stdout + p.stderr)

    p = desanet(
        "127.0.0.1",
        "--port",
        str(free_udp_port()),
        "--timeout",
        "0.2",
        "--retries",
        "0",
        env={"DESANET_SNMP_COMMUNITY": COMMUNITY},
    )
    assert p.returncode == 1 and "no SNMP answer" in p.stdout

    p = desanet("127.0.0.1", "--community-env", "NO_SUCH_VARIABLE_HERE")
    assert p.returncode == 2 and "NO_SUCH_VARIABLE_HERE" in p.stderr

    p = desanet("nowhere-village", "--inventory", str(inv))
    assert p.returncode == 2
