"""probes/snmp_v3.py, the hand-coded SNMPv3 USM, against pysnmp's own USM and against net-snmp's snmpd.

- pysnmp in-process, as an agent (its engine, USM and command responders behind a transport that hands
  datagrams over in memory; nothing touches a network): it must authenticate, decrypt and answer what we
  build, and we must verify and decrypt what it builds, for every auth/privacy pair SnmpSettings accepts.
- snmpd (lab/snmp_agent.py) on 127.0.0.x at a free port, started and stopped by PID: the poller's v3 GET and
  GETBULK give what `snmpget`/`snmpbulkget -v3 -l authPriv -a SHA -x AES` give; other protocol pairs net-snmp
  offers; restarts (same engine ID, boots moved on; a new engine ID); CPU per village against v2c.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysnmp.carrier.base import AbstractTransport, AbstractTransportDispatcher
from pysnmp.entity import config as pysnmp_config
from pysnmp.entity import engine as pysnmp_engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto.rfc1902 import OctetString
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

from desanet.lab.snmp_agent import MIKROTIK_OPTICAL_ENTRY, OpticalValues, SnmpV3User, write_agent_files
from desanet.probes import snmp_v3
from desanet.probes.snmp import AUTH_PROTOCOLS, PRIV_PROTOCOLS, SnmpPoller, SnmpResult, SnmpSettings
from desanet.probes.snmp_v2c import TAG_BULK, TAG_GET, encode_varbind
from tests.test_snmp_agent import (
    COMMUNITY,
    V3,
    Agent,
    _wait_until_answering,
    free_udp_port,
    start_agent,
    start_agents,
)

needs_snmpd = pytest.mark.skipif(shutil.which("snmpd") is None, reason="needs net-snmp's snmpd (apt install snmpd)")

USER, AUTH_PASS, PRIV_PASS = "desanet", "pysnmp-auth-pass", "pysnmp-priv-pass"
SYS_DESCR, SYS_OBJECT_ID, SYS_UPTIME = (
    (1, 3, 6, 1, 2, 1, 1, 1, 0),
    (1, 3, 6, 1, 2, 1, 1, 2, 0),
    (1, 3, 6, 1, 2, 1, 1, 3, 0),
)
MT = tuple(int(x) for x in MIKROTIK_OPTICAL_ENTRY.split("."))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------- pysnmp agent
class _Dispatcher(AbstractTransportDispatcher):
    """pysnmp's dispatcher without a loop: datagrams are handed in by `PysnmpAgent.ask`."""


class _Memory(AbstractTransport):
    PROTO_TRANSPORT_DISPATCHER = _Dispatcher

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_message(self, outgoingMessage: Any, transportAddress: Any) -> None:
        self.sent.append(bytes(outgoingMessage))


class PysnmpAgent:
    """pysnmp 7 as an SNMPv3 agent (engine, USM, VACM, GET and GETBULK responders) answering in memory."""

    def __init__(self, auth: str, priv: str, engine_id: str = "80001f8880c0ffee01") -> None:
        self.engine = pysnmp_engine.SnmpEngine(OctetString(hexValue=engine_id))
        self.transport = _Memory()
        pysnmp_config.add_transport(self.engine, (1, 3, 6, 1, 6, 1, 1), self.transport)
        pysnmp_config.add_v3_user(self.engine, USER, snmp_v3.AUTH[auth][2], AUTH_PASS, snmp_v3.PRIV[priv][1], PRIV_PASS)
        pysnmp_config.add_vacm_user(self.engine, 3, USER, "authPriv", (1, 3, 6), ())
        snmp_context = context.SnmpContext(self.engine)
        cmdrsp.GetCommandResponder(self.engine, snmp_context)
        cmdrsp.BulkCommandResponder(self.engine, snmp_context)

    def ask(self, message: bytes) -> bytes | None:
        """The agent's answer to one datagram, or None when it drops it."""
        self.transport._callback_function(self.transport, ("127.0.0.1", 40000), message)
        return self.transport.sent.pop() if self.transport.sent else None


def _discovered(agent: PysnmpAgent) -> snmp_v3.Engine:
    answer = agent.ask(snmp_v3.encode_discovery(1))
    assert answer is not None
    return snmp_v3.read_discovery(answer)


@pytest.mark.parametrize("priv", PRIV_PROTOCOLS)
@pytest.mark.parametrize("auth", AUTH_PROTOCOLS)
def test_every_protocol_pair_against_pysnmp(auth: str, priv: str) -> None:
    """pysnmp authenticates and decrypts our GET and GETBULK and answers them; we verify and decrypt its
    answers. Both sides derive keys their own way only up to the master key (pysnmp's in both)."""
    agent = PysnmpAgent(auth, priv)
    engine = _discovered(agent)
    assert engine.engine_id == bytes.fromhex("80001f8880c0ffee01") and engine.boots >= 1
    user = snmp_v3.User(USER, auth, AUTH_PASS, priv, PRIV_PASS)

    request = snmp_v3.encode_request(
        user, engine, 1001, TAG_GET, 0, 0, encode_varbind(SYS_DESCR) + encode_varbind(SYS_OBJECT_ID)
    )
    assert snmp_v3.parse_message(request).flags == 0x07
    answer = agent.ask(request)
    assert answer is not None, "pysnmp dropped our authPriv GET"
    status, index, vbs = snmp_v3.decode_response(answer, user, engine, 1001)
    assert (status, index) == (0, 0)
    assert [o for o, _ in vbs] == [SYS_DESCR, SYS_OBJECT_ID]
    assert vbs[0][1].startswith(b"PySNMP engine") and vbs[1][1] == (1, 3, 6, 1, 4, 1, 20408)
    assert snmp_v3.parse_message(answer).flags & 0x03 == 0x03  # pysnmp answered authPriv

    # GETBULK: one non-repeater, then 4 repetitions of two columns, and a noSuchInstance by GET
    bulk = (
        encode_varbind((1, 3, 6, 1, 2, 1, 1, 3))
        + encode_varbind((1, 3, 6, 1, 2, 1, 1))
        + encode_varbind((1, 3, 6, 1, 6, 3, 10, 2, 1))
    )
    answer = agent.ask(snmp_v3.encode_request(user, engine, 1002, TAG_BULK, 1, 4, bulk))
    assert answer is not None
    _, _, vbs = snmp_v3.decode_response(answer, user, engine, 1002)
    assert len(vbs) == 1 + 4 * 2 and vbs[0][0] == SYS_UPTIME and isinstance(vbs[0][1], int)
    assert [o for o, _ in vbs[1::2]][:2] == [SYS_DESCR, SYS_OBJECT_ID]
    assert vbs[2][0] == (1, 3, 6, 1, 6, 3, 10, 2, 1, 1, 0) and vbs[2][1] == engine.engine_id  # snmpEngineID.0
    answer = agent.ask(snmp_v3.encode_request(user, engine, 1003, TAG_GET, 0, 0, encode_varbind((*SYS_DESCR[:-1], 7))))
    assert answer is not None
    _, _, vbs = snmp_v3.decode_response(answer, user, engine, 1003)
    assert isinstance(vbs[0][1], NoSuchInstance | NoSuchObject)


def test_reports_from_pysnmp() -> None:
    """What the agent says to a wrong key, an unknown user, a stale clock and a wrong engine ID."""
    agent = PysnmpAgent("SHA", "AES")
    engine = _discovered(agent)
    get = encode_varbind(SYS_DESCR)

    def report(user: snmp_v3.User, eng: snmp_v3.Engine, rid: int) -> snmp_v3.UsmError:
        answer = agent.ask(snmp_v3.encode_request(user, eng, rid, TAG_GET, 0, 0, get))
        assert answer is not None
        with pytest.raises(snmp_v3.UsmError) as err:
            snmp_v3.decode_response(answer, user, eng, rid)
        return err.value

    good = snmp_v3.User(USER, "SHA", AUTH_PASS, "AES", PRIV_PASS)
    assert report(snmp_v3.User(USER, "SHA", "another-auth-pass", "AES", PRIV_PASS), engine, 11).kind == "WrongDigest"
    assert report(snmp_v3.User(USER, "MD5", AUTH_PASS, "AES", PRIV_PASS), engine, 12).kind == "WrongDigest"
    assert report(snmp_v3.User("nobody", "SHA", AUTH_PASS, "AES", PRIV_PASS), engine, 13).kind == "UnknownUserName"

    # a clock from before a restart: the Report is authenticated and carries the agent's boots and time
    stale = snmp_v3.Engine(engine.engine_id, engine.boots - 1, 5)
    err = report(good, stale, 14)
    assert err.kind == "NotInTimeWindow" and err.engine is not None and err.engine.boots == engine.boots
    answer = agent.ask(snmp_v3.encode_request(good, err.engine, 15, TAG_GET, 0, 0, get))
    assert answer is not None and snmp_v3.decode_response(answer, good, err.engine, 15)[2][0][0] == SYS_DESCR

    # an engine ID that is not the agent's (it was replaced): the Report tells the new one
    err = report(good, snmp_v3.Engine(b"\x80\x00\x1f\x88\x80old-one", 1, 0), 16)
    assert err.kind == "UnknownEngineID" and err.engine is not None and err.engine.engine_id == engine.engine_id

    # a wrong privacy key: pysnmp, like net-snmp, cannot decrypt and does not answer with data
    wrong_priv = snmp_v3.User(USER, "SHA", AUTH_PASS, "AES", "another-priv-pass")
    answer = agent.ask(snmp_v3.encode_request(wrong_priv, engine, 17, TAG_GET, 0, 0, get))
    if answer is not None:
        with pytest.raises(snmp_v3.UsmError):
            snmp_v3.decode_response(answer, wrong_priv, engine, 17)
    for secret in ("another-auth-pass", "another-priv-pass", AUTH_PASS, PRIV_PASS):
        assert secret not in repr(good) + repr(good.keys(engine.engine_id)) + repr(engine) + str(err)


def test_answers_are_verified() -> None:
    """A changed byte, a replayed answer from before the agent's clock moved on, and bytes that are not
    SNMPv3 are refused."""
    agent = PysnmpAgent("SHA256", "AES256")
    engine = _discovered(agent)
    user = snmp_v3.User(USER, "SHA256", AUTH_PASS, "AES256", PRIV_PASS)
    answer = agent.ask(snmp_v3.encode_request(user, engine, 21, TAG_GET, 0, 0, encode_varbind(SYS_DESCR)))
    assert answer is not None
    for at in (len(answer) - 1, len(answer) // 2):
        tampered = bytearray(answer)
        tampered[at] ^= 0x01
        with pytest.raises(snmp_v3.UsmError, match="WrongDigest"):
            snmp_v3.decode_response(
                bytes(tampered), user, snmp_v3.Engine(engine.engine_id, engine.boots, engine.time), 21
            )
    later = snmp_v3.Engine(engine.engine_id, engine.boots + 1, 0)  # we heard of a restart since
    with pytest.raises(snmp_v3.UsmError, match="NotInTimeWindow"):
        snmp_v3.decode_response(answer, user, later, 21)
    for junk in (answer[:-5], b"\x30\x03\x02\x01\x01", b"", b"\x30"):
        with pytest.raises(ValueError):
            snmp_v3.decode_response(junk, user, engine, 21)
    with pytest.raises(ValueError):
        snmp_v3.decode_response(answer, user, engine, 22)  # another request's answer


def test_request_layout_as_pysnmp_reads_it() -> None:
    """Our request decoded by pysnmp/pyasn1's SNMPv3 message and USM parameter types: every field where
    RFC 3412/3414 put it, the MAC over the message with its own field zeroed, the salt as privacy params."""
    import hashlib
    import hmac

    from pyasn1.codec.ber import decoder
    from pysnmp.proto.mpmod.rfc3412 import SNMPv3Message
    from pysnmp.proto.secmod.rfc3414.service import UsmSecurityParameters

    engine = snmp_v3.Engine(b"\x80\x00\x1f\x88\x04engine", 7, 1234)
    user = snmp_v3.User(USER, "SHA", AUTH_PASS, "AES", PRIV_PASS)
    raw = snmp_v3.encode_request(user, engine, 2**30, TAG_BULK, 1, 25, encode_varbind(SYS_UPTIME))
    msg, rest = decoder.decode(raw, asn1Spec=SNMPv3Message())
    assert rest == b"" and int(msg["msgVersion"]) == 3
    header = msg["msgGlobalData"]
    assert int(header["msgID"]) == 2**30 and bytes(header["msgFlags"]) == b"\x07"
    assert int(header["msgSecurityModel"]) == 3 and int(header["msgMaxSize"]) == snmp_v3.MAX_SIZE
    params, rest = decoder.decode(bytes(msg["msgSecurityParameters"]), asn1Spec=UsmSecurityParameters())
    assert rest == b"" and bytes(params["msgAuthoritativeEngineId"]) == engine.engine_id
    assert int(params["msgAuthoritativeEngineBoots"]) == 7 and int(params["msgAuthoritativeEngineTime"]) >= 1234
    assert bytes(params["msgUserName"]) == USER.encode() and len(bytes(params["msgPrivacyParameters"])) == 8
    mac = bytes(params["msgAuthenticationParameters"])
    keys = user.keys(engine.engine_id)
    assert raw.count(mac) == 1
    zeroed = raw.replace(mac, bytes(12))
    assert hmac.new(keys.auth, zeroed, hashlib.sha1).digest()[:12] == mac
    # and the keys are pysnmp's: the RFC 3414 A.3.2 test vector (pass phrase "maplesyrup", SHA)
    vector = snmp_v3.User("u", "SHA", "maplesyrup", "AES", "maplesyrup").keys(bytes.fromhex("000000000000000000000002"))
    assert vector.auth.hex() == "6695febc9288e36282235fc7151f128497b38f3f"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_damaged_answer_is_refused_in_words(data: st.DataObject) -> None:
    """Whatever bytes come back (cut, changed, or a report's and a response's parts mixed up), decoding ends in
    UsmError (a Report or a failed check) or ValueError/IndexError (not SNMPv3), which the poller words."""
    engine, user, answers = _fuzz_material()
    raw = bytearray(data.draw(st.sampled_from(answers)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    for read in (
        lambda: snmp_v3.decode_response(bytes(raw), user, snmp_v3.Engine(engine.engine_id, engine.boots, 0), 31),
        lambda: snmp_v3.read_discovery(bytes(raw)),
    ):
        with contextlib.suppress(snmp_v3.UsmError, ValueError, IndexError):
            read()


@functools.cache
def _fuzz_material() -> tuple[snmp_v3.Engine, snmp_v3.User, list[bytes]]:
    """Real answers of pysnmp's agent to start from: a discovery Report, a Response, a wrongDigest Report."""
    agent = PysnmpAgent("SHA", "DES")
    engine = _discovered(agent)
    user = snmp_v3.User(USER, "SHA", AUTH_PASS, "DES", PRIV_PASS)
    answers = [agent.ask(snmp_v3.encode_discovery(30))]
    answers.append(agent.ask(snmp_v3.encode_request(user, engine, 31, TAG_GET, 0, 0, encode_varbind(SYS_DESCR))))
    wrong = snmp_v3.User(USER, "SHA", "another-auth-pass", "DES", PRIV_PASS)
    answers.append(agent.ask(snmp_v3.encode_request(wrong, engine, 31, TAG_GET, 0, 0, encode_varbind(SYS_DESCR))))
    return engine, user, [a for a in answers if a]


def test_protocol_tables_match_the_settings() -> None:
    assert set(snmp_v3.AUTH) == set(AUTH_PROTOCOLS) and set(snmp_v3.PRIV) == set(PRIV_PROTOCOLS)


# ---------------------------------------------------------------------------------------------- snmpd
def _v3(agent: Agent, user: SnmpV3User = V3, **kw: Any) -> SnmpSettings:
    args: dict[str, Any] = {
        "user": user.user,
        "auth_protocol": user.auth_protocol,
        "auth_key": user.auth_key,
        "priv_protocol": user.priv_protocol,
        "priv_key": user.priv_key,
    }
    return SnmpSettings(version="3", port=agent.port, **(args | kw))


def _net_snmp(tool: str, agent: Agent, *args: str) -> list[tuple[tuple[int, ...], Any]]:
    """net-snmp's CLI, SNMPv3 authPriv SHA/AES, its output read back into the values our decoder gives."""
    argv = [tool, "-v3", "-l", "authPriv", "-u", V3.user, "-a", "SHA", "-A", V3.auth_key, "-x", "AES"]
    argv += ["-X", V3.priv_key, "-On", "-M", "/nonexistent", "-m", "", "-t", "1", "-r", "1", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    got = []
    for line in out.splitlines():
        oid, _, text = line.partition(" = ")
        got.append((tuple(int(x) for x in oid.strip(".").split(".")), _value(text)))
    return got


def _value(text: str) -> Any:
    if text.startswith("No Such Instance"):
        return NoSuchInstance
    if text.startswith("No Such Object"):
        return NoSuchObject
    if text.startswith("No more variables"):
        return EndOfMibView
    kind, _, v = text.partition(": ")
    if kind in ("INTEGER", "Gauge32", "Counter32", "Counter64", "UInteger32"):
        return int(v)
    if kind == "Timeticks":
        return int(v.split(")")[0].strip("("))
    if kind == "STRING":  # quoted, with net-snmp's backslash before a quote or backslash inside
        assert v.startswith('"') and v.endswith('"'), v
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\").encode()
    if kind == "Hex-STRING":
        return bytes.fromhex(v)
    if kind == "OID":
        return tuple(int(x) for x in v.strip(".").split("."))
    if kind == "IpAddress":
        return bytes(int(x) for x in v.split("."))
    raise AssertionError(f"unexpected net-snmp value {text!r}")


def _ours(vbs: list[tuple[Any, Any]]) -> list[tuple[tuple[int, ...], Any]]:
    return [(tuple(o), type(v) if isinstance(v, NoSuchInstance | NoSuchObject | EndOfMibView) else v) for o, v in vbs]


def _same_but_uptime(ours: list[tuple[tuple[int, ...], Any]], theirs: list[tuple[tuple[int, ...], Any]]) -> None:
    """The same varbinds in the same order; sysUpTime may have run on between the two reads."""
    assert [o for o, _ in ours] == [o for o, _ in theirs]
    for (oid, a), (_, b) in zip(ours, theirs, strict=True):
        if oid == SYS_UPTIME:
            assert 0 <= b - a < 500
        else:
            assert a == b, oid


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    if shutil.which("snmpd") is None:
        pytest.skip("needs net-snmp's snmpd")
    with start_agent(tmp_path_factory.mktemp("snmpv3") / "agent", optical=OpticalValues(rx_dbm=-21.37)) as a:
        yield a


@needs_snmpd
def test_get_and_getbulk_match_net_snmp(agent: Agent) -> None:
    """The poller's own v3 request path (discovery, GET, GETBULK over its shared socket) against snmpget and
    snmpbulkget -v3 -l authPriv -a SHA -x AES asking the same agent for the same OIDs."""
    get = [
        SYS_DESCR,
        SYS_OBJECT_ID,
        SYS_UPTIME,
        *((*MT, col, 1) for col in range(2, 12)),
        (*MT, 10, 2),
        (1, 3, 6, 1, 2, 1, 99, 1, 1, 1, 4, 1),
    ]
    bulk_start = [SYS_DESCR[:-1], (*MT, 10), (*MT, 9), (1, 9, 9)]

    async def ours() -> tuple[list[Any], list[Any]]:
        async with SnmpPoller() as poller:
            s = _v3(agent)
            a = await poller._agent(agent.host, s)
            auth, fresh = await poller._auth(a, s)
            assert fresh and auth is not None
            got = await poller._get(a, auth, s, get, b"".join(encode_varbind(o) for o in get))
            bulk = await poller._bulk(a, auth, s, 1, 3, bulk_start)
            return got, bulk

    got, bulk = run(ours())
    theirs_get = _net_snmp("snmpget", agent, agent.endpoint, *(".".join(map(str, o)) for o in get))
    theirs_bulk = _net_snmp(
        "snmpbulkget", agent, "-Cn1", "-Cr3", agent.endpoint, *(".".join(map(str, o)) for o in bulk_start)
    )
    _same_but_uptime(_ours(got), theirs_get)
    assert dict(_ours(got))[(*MT, 10, 1)] == -21370 and dict(_ours(got))[(*MT, 10, 2)] is NoSuchInstance
    _same_but_uptime(_ours(bulk), theirs_bulk)  # order and count too: repetitions interleaved, end of MIB
    assert len(bulk) == 1 + 3 * 3 and any(v is EndOfMibView for _, v in _ours(bulk))  # past 1.9.9: the end


@needs_snmpd
@pytest.mark.parametrize(("auth", "priv"), [("SHA256", "AES"), ("SHA512", "DES"), ("MD5", "DES"), ("MD5", "AES")])
def test_other_protocols_against_snmpd(tmp_path: Path, auth: str, priv: str) -> None:
    user = SnmpV3User("desanet", "desanet-test-auth", "desanet-test-priv", auth, priv)
    with start_agent(tmp_path / "a", v3=user) as a:

        async def polls() -> list[SnmpResult]:
            async with SnmpPoller() as poller:
                return [
                    await poller.poll(a.host, _v3(a, user)),
                    await poller.poll(a.host, _v3(a, user)),  # known rows, by GET
                    await poller.poll(a.host, _v3(a, user, priv_key="not-the-priv-key", timeout_seconds=0.3)),
                ]

        first, second, wrong = run(polls())
    assert first.success and second.success, (first.error, second.error)
    assert first.optics[0].rx_power_dbm == second.optics[0].rx_power_dbm == pytest.approx(-18.0)
    assert not wrong.success and "the agent answers SNMPv3 discovery but not the encrypted request" in (
        wrong.error or ""
    )
    assert "not-the-priv-key" not in json.dumps(wrong.to_dict())


def _start(workdir: Path, host: str, port: int) -> Agent:
    argv = write_agent_files(workdir, host, COMMUNITY, V3, OpticalValues(), port=port)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    agent = Agent(host, port, workdir, proc, COMMUNITY, V3)
    try:
        _wait_until_answering(agent)
    except BaseException:
        agent.stop()
        raise
    return agent


@needs_snmpd
@pytest.mark.parametrize("change", ["restart", "clock"])
def test_engine_changes_are_followed_in_the_same_poll(tmp_path: Path, change: str) -> None:
    """An agent restart (the lab's snmpd comes back with a new engine ID: an unknownEngineID Report) and an
    agent clock that moved on from ours (its boots past what we hold, as after a reboot of a router that
    keeps its engine ID: an authenticated notInTimeWindow Report). The poll adopts what the Report says,
    retries once and succeeds, with no timeout on the way."""
    host, port = "127.0.0.1", free_udp_port()
    agents = [_start(tmp_path / "a", host, port)]
    try:

        async def go() -> tuple[list[SnmpResult], list[snmp_v3.Engine]]:
            results, engines = [], []
            async with SnmpPoller() as poller:
                for step in range(3):
                    if step == 1 and change == "restart":
                        agents[-1].stop()
                        agents.append(await asyncio.to_thread(_start, tmp_path / "a", host, port))
                    elif step == 1:
                        poller._engine_ids[(host, port)].boots -= 1
                    results.append(await poller.poll(host, _v3(agents[-1])))
                    engines.append(snmp_v3.Engine(**vars(poller._engine_ids[(host, port)])))
            return results, engines

        results, engines = run(go())
    finally:
        for a in agents:
            a.stop()
    assert all(r.success for r in results), [r.error for r in results]
    before, after, later = engines
    if change == "restart":
        assert after.engine_id != before.engine_id
    else:
        assert after.engine_id == before.engine_id and after.boots == before.boots
    assert later.engine_id == after.engine_id and later.boots == after.boots
    assert results[1].duration_seconds < 0.9  # a Report and one retry, not a timeout


@needs_snmpd
@pytest.mark.slow
def test_v3_cpu_per_village_near_v2c(tmp_path: Path) -> None:
    """Poller CPU per village and poll, v3 authPriv against v2c, same agents, steady polls (known rows)."""
    hosts = [f"127.0.5.{10 + i}" for i in range(12)]
    with start_agents(tmp_path, hosts) as agents:

        async def cpu_ms(version: str) -> float:
            items = [
                (a.host, _v3(a) if version == "3" else SnmpSettings(port=a.port, community=COMMUNITY)) for a in agents
            ]
            async with SnmpPoller() as poller:
                await poller.poll_many(items)  # first contact: discovery, walks
                cpus = []
                for _ in range(9):
                    c = time.process_time()
                    results = await poller.poll_many(items)
                    cpus.append(time.process_time() - c)
                    assert all(r.success for r in results), [r.error for r in results if not r.success][:2]
            return 1000 * statistics.median(cpus) / len(items)

        v2c, v3 = run(cpu_ms("2c")), run(cpu_ms("3"))
    load = os.getloadavg()[0]
    print(f"\nCPU per village and poll: v2c {v2c:.3f} ms, v3 authPriv {v3:.3f} ms ({v3 / v2c:.2f}x), load {load:.1f}")
    assert v3 <= 3.0 and v3 <= 3 * v2c + 0.2
