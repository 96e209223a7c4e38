"""SNMP poller: IF-MIB counters and statuses, sysUpTime, and optical levels (MIKROTIK-MIB, ENTITY-SENSOR-MIB).

Same face as the other probes: `await probe(target, settings) -> SnmpResult`, plain numbers in SI units
(seconds, bits per second, dBm, °C, amperes, volts, metres). `SnmpPoller` owns what must be shared to poll
the whole district at once: one UDP socket per address family, a per-agent semaphore, a cap on requests in
flight, and the SNMPv3 state below.

How a poll goes (libs.md §1 has the measurements behind these choices; bench/snmp the scale figures):
- Numeric OIDs only, names from the small table `OID_NAMES`; no MIB is compiled at run time.
- The first poll of an agent walks: each table by a multi-column GETBULK bounded to its subtree (the
  equivalent of `lexicographicMode=False`), two side by side, the interfaces (with sysUpTime and ifNumber
  as non-repeaters) and the MikroTik optical table, each asking for one row more than the agent had last
  time. ENTITY-SENSOR-MIB is walked only when the MikroTik table is empty, and ifTable's ifDescr, ifSpeed
  and 32-bit octet counters only when ifXTable lacks a row's name, speed or 64-bit counters (both side by
  side). Optics are tied to ports by name; 32-bit counters are carried past their wraps per agent.
- Later polls GET exactly the instances that walk returned (sysUpTime.0, ifNumber.0, then row by row),
  in `max_varbinds`-sized PDUs sent side by side, so nothing past a table's end is read or decoded. The
  agent is walked again when sysUpTime went back (a restart), ifNumber changed, any instance answers
  noSuchInstance/noSuchObject, or REWALK_EVERY polls have passed (a row added in place, say a second SFP
  without a restart, is found within that many polls; agents are spread over that cycle, so each poll
  walks about 1/REWALK_EVERY of them). Agents whose optics come from ENTITY-SENSOR-MIB
  are always walked. A dead agent costs one timeout (the requests wait in parallel) and nothing more.
- SNMP messages are coded in-house and sent from one UDP socket per address family: v2c in
  probes/snmp_v2c.py (pyasn1's generic BER decoder was ~75 % of the poller's CPU in a profile, ~0.15 ms
  per varbind plus ~1.4 ms per PDU; the v2c subset of BER is small and fixed), SNMPv3's USM authentication
  and privacy around the same PDUs in probes/snmp_v3.py (through pysnmp's engine an authPriv village cost
  13-25 ms of CPU per poll, now about 1.4 times a v2c one).
- `max_in_flight` (32) bounds requests in flight over all agents: answers wait in the socket while the
  loop decodes others, and the timeout keeps running meanwhile; with pysnmp decoding v2c, 128 in flight
  made healthy agents time out on this 2-vCPU box. With the v2c codec, 64 or 128 were no faster at
  1,000 agents (the agents were the limit), so 32 stays.
- SNMPv3: each agent's engine ID, boots and time are discovered once (an unauthenticated request that the
  agent answers with a Report) and kept per agent; a Report that the agent's clock or engine ID moved on (a
  restart: notInTimeWindow, unknownEngineID) is adopted and the request tried once more. Pass phrases are
  hashed to master keys once (RFC 3414 §A.2, ~12 ms each) and localized once per engine ID.
- Errors come back as words in `SnmpResult.error`, never as exceptions, and never with a secret in them.
  A wrong auth key is a Report (WrongDigest) and is quick; a wrong privacy key is silence (net-snmp drops
  what it cannot decrypt), so when an agent answers discovery but not the encrypted request we say so.

Why one file over 800 lines: one prober per protocol, as blackbox_exporter keeps them. The poller's walk,
known-row GETs, re-walk rules and SNMPv3 discovery share each agent's layout and state; the message codecs,
which need none of that, are apart in probes/snmp_v2c.py and probes/snmp_v3.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import socket
import time
import weakref
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject
from pysnmp.proto.rfc1905 import errorStatus as _error_status_type

from desanet.probes import snmp_v3
from desanet.probes.snmp_v2c import TAG_BULK, TAG_GET, SnmpSocket, decode_response, encode_request, encode_varbind

# ---------------------------------------------------------------------------------------------- OIDs
Oid = tuple[int, ...]


def _o(text: str) -> Oid:
    return tuple(int(x) for x in text.split("."))


SYS_UPTIME = _o("1.3.6.1.2.1.1.3")  # TimeTicks, 1/100 s; the .0 instance
IF_NUMBER = _o("1.3.6.1.2.1.2.1")  # ifNumber: rows in ifTable; the .0 instance
IF_COLUMNS: dict[str, Oid] = {
    "name": _o("1.3.6.1.2.1.31.1.1.1.1"),  # ifName
    "alias": _o("1.3.6.1.2.1.31.1.1.1.18"),  # ifAlias
    "in_octets": _o("1.3.6.1.2.1.31.1.1.1.6"),  # ifHCInOctets
    "out_octets": _o("1.3.6.1.2.1.31.1.1.1.10"),  # ifHCOutOctets
    "high_speed": _o("1.3.6.1.2.1.31.1.1.1.15"),  # ifHighSpeed, Mbit/s
    "admin_status": _o("1.3.6.1.2.1.2.2.1.7"),  # ifAdminStatus, 1 up
    "oper_status": _o("1.3.6.1.2.1.2.2.1.8"),  # ifOperStatus, 1 up
    "last_change": _o("1.3.6.1.2.1.2.2.1.9"),  # ifLastChange, TimeTicks (sysUpTime at the change)
    "in_discards": _o("1.3.6.1.2.1.2.2.1.13"),  # ifInDiscards
    "in_errors": _o("1.3.6.1.2.1.2.2.1.14"),  # ifInErrors
    "out_errors": _o("1.3.6.1.2.1.2.2.1.20"),  # ifOutErrors
}
# MIB-II's ifTable columns for what ifXTable would give: walked only when a row lacks ifName, the 64-bit
# octet counters or ifHighSpeed (an RFC 1213 agent has no ifXTable; RFC 2863 §3.1.6 requires the 64-bit
# counters only above 20 Mbit/s), so agents with a full ifXTable pay nothing for them.
IF_TABLE_FALLBACK_COLUMNS: dict[str, Oid] = {
    "descr": _o("1.3.6.1.2.1.2.2.1.2"),  # ifDescr, for ifName
    "speed": _o("1.3.6.1.2.1.2.2.1.5"),  # ifSpeed, bit/s (Gauge32), for ifHighSpeed
    "in_octets_32": _o("1.3.6.1.2.1.2.2.1.10"),  # ifInOctets, Counter32
    "out_octets_32": _o("1.3.6.1.2.1.2.2.1.16"),  # ifOutOctets, Counter32
}
_MT = "1.3.6.1.4.1.14988.1.1.19.1.1"  # MIKROTIK-MIB mtxrOpticalEntry (anchors.md §8.1)
MIKROTIK_OPTICAL_COLUMNS: dict[str, Oid] = {
    "name": _o(f"{_MT}.2"),  # mtxrOpticalName, DisplayString
    "rx_loss": _o(f"{_MT}.3"),  # mtxrOpticalRxLoss, BoolValue
    "tx_fault": _o(f"{_MT}.4"),  # mtxrOpticalTxFault, BoolValue
    "wavelength": _o(f"{_MT}.5"),  # mtxrOpticalWavelength, GDiv100 nm
    "temperature": _o(f"{_MT}.6"),  # mtxrOpticalTemperature, °C
    "voltage": _o(f"{_MT}.7"),  # mtxrOpticalSupplyVoltage, GDiv1000 V
    "bias": _o(f"{_MT}.8"),  # mtxrOpticalTxBiasCurrent, mA
    "tx_power": _o(f"{_MT}.9"),  # mtxrOpticalTxPower, IDiv1000 dBm
    "rx_power": _o(f"{_MT}.10"),  # mtxrOpticalRxPower, IDiv1000 dBm
    "vendor": _o(f"{_MT}.11"),  # mtxrOpticalVendorName, DisplayString
}
_ES = "1.3.6.1.2.1.99.1.1.1"  # ENTITY-SENSOR-MIB entPhySensorEntry (RFC 3433)
ENTITY_SENSOR_COLUMNS: dict[str, Oid] = {
    "type": _o(f"{_ES}.1"),  # entPhySensorType
    "scale": _o(f"{_ES}.2"),  # entPhySensorScale, 9 = units, step 10^3
    "precision": _o(f"{_ES}.3"),  # entPhySensorPrecision, decimal places
    "value": _o(f"{_ES}.4"),  # entPhySensorValue
    "oper_status": _o(f"{_ES}.5"),  # entPhySensorOperStatus, 1 ok
    "units": _o(f"{_ES}.6"),  # entPhySensorUnitsDisplay
}
ENTITY_PHYSICAL_COLUMNS: dict[str, Oid] = {
    "descr": _o("1.3.6.1.2.1.47.1.1.1.1.2"),  # entPhysicalDescr: the label where entPhysicalName is empty
    "contained_in": _o("1.3.6.1.2.1.47.1.1.1.1.4"),  # entPhysicalContainedIn
    "class": _o("1.3.6.1.2.1.47.1.1.1.1.5"),  # entPhysicalClass, 9 module (a transceiver)
    "name": _o("1.3.6.1.2.1.47.1.1.1.1.7"),  # entPhysicalName, may be a zero-length string (RFC 6933)
}

_Tables = dict[str, dict[Oid, dict[Oid, Any]]]  # table → column → index suffix → value

OID_NAMES: dict[str, str] = {
    ".".join(map(str, oid)): name
    for prefix, cols in (
        ("if", IF_COLUMNS),
        ("if", IF_TABLE_FALLBACK_COLUMNS),
        ("mtxrOptical", MIKROTIK_OPTICAL_COLUMNS),
        ("entPhySensor", ENTITY_SENSOR_COLUMNS),
        ("entPhysical", ENTITY_PHYSICAL_COLUMNS),
    )
    for name, oid in [(f"{prefix}.{k}", v) for k, v in cols.items()]
} | {"1.3.6.1.2.1.1.3": "sysUpTime", "1.3.6.1.2.1.2.1": "ifNumber"}

# RFC 3433 EntitySensorDataType values we read; 14 is dBm in CISCO-ENTITY-SENSOR-MIB, which some vendors
# also use in the standard table.
_SENSOR_VOLTS_DC, _SENSOR_AMPERES, _SENSOR_WATTS, _SENSOR_CELSIUS, _SENSOR_OTHER, _SENSOR_DBM = 4, 5, 6, 8, 1, 14
# RFC 3433 EntitySensorValue: readings lie within ±999,999,999; -1000000000 is an underflow (for a receive
# power sensor: less light than it can measure) and +1000000000 an overflow.
SENSOR_UNDERFLOW, SENSOR_OVERFLOW = -1_000_000_000, 1_000_000_000
# The least light a transceiver's DOM reads above nothing: SFF-8472 gives receive power in steps of 0.1 µW,
# i.e. -40 dBm. At or below it (or at 0 mW, or an underflow) the module receives no light.
NO_LIGHT_DBM = -40.0
_ENT_CLASS_MODULE = 9  # PhysicalClass module(9): what a pluggable transceiver is in ENTITY-MIB
_IF_SPEED_CEILING = 4_294_967_295  # ifSpeed's maximum: "use ifHighSpeed" (RFC 2863)
_COUNTER32 = 1 << 32

_FIRST_GUESS_ROWS = {"if": 4, "mikrotik": 1, "sensor": 8, "physical": 16}
MAX_ROUNDS = 200  # GETBULK round trips per table: bounds a walk of a broken or enormous agent
MAX_REPETITIONS = 25
RECEIVE_BUFFER_BYTES = 4 << 20
REWALK_EVERY = 20  # polls answered from the known rows before a full walk again (finds rows added in place)

AUTH_PROTOCOLS = ("SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5")
PRIV_PROTOCOLS = ("AES", "AES192", "AES256", "DES")


_ERROR_STATUS = {int(v): k for k, v in _error_status_type.namedValues.items()}


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True, kw_only=True)
class SnmpSettings:
    """How to reach one agent. Secrets are resolved values (the caller resolves inventory references) and
    never appear in repr(); `version` "2c" needs `community`, "3" needs `user`, `auth_key`, `priv_key`
    (authPriv only). AES is AES-128 (RFC 3826); AES192/AES256 use the key extension most vendors use."""

    version: Literal["2c", "3"] = "2c"
    port: int = 161
    community: str | None = field(default=None, repr=False)
    user: str | None = None
    auth_protocol: str = "SHA"
    auth_key: str | None = field(default=None, repr=False)
    priv_protocol: str = "AES"
    priv_key: str | None = field(default=None, repr=False)
    timeout_seconds: float = 1.0
    retries: int = 1
    max_varbinds: int = 60

    def __post_init__(self) -> None:
        if self.version not in ("2c", "3"):
            raise ValueError(f"SNMP version {self.version!r}: use '2c' or '3'")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.version == "2c" and not self.community:
            raise ValueError("SNMP v2c needs a community")
        if self.version == "3":
            if not self.user:
                raise ValueError("SNMPv3 needs a user")
            if not self.auth_key or not self.priv_key:
                raise ValueError("SNMPv3 needs an auth key and a privacy key (authPriv)")
            if self.auth_protocol.upper() not in AUTH_PROTOCOLS:
                raise ValueError(f"SNMPv3 auth protocol {self.auth_protocol!r}: use one of {', '.join(AUTH_PROTOCOLS)}")
            if self.priv_protocol.upper() not in PRIV_PROTOCOLS:
                raise ValueError(
                    f"SNMPv3 privacy protocol {self.priv_protocol!r}: use one of {', '.join(PRIV_PROTOCOLS)}"
                )
        if not 0 < self.timeout_seconds <= 60 or not 0 <= self.retries <= 5:
            raise ValueError("timeout_seconds must be in (0, 60] and retries in 0..5")
        if not 10 <= self.max_varbinds <= 1000:
            raise ValueError("max_varbinds must be in 10..1000")

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.community, self.auth_key, self.priv_key) if s)

    @property
    def worst_case_seconds(self) -> float:
        """What one unanswered request costs."""
        return self.timeout_seconds * (self.retries + 1)


def settings_from_config(
    cfg: Any, resolve: Any, *, timeout_seconds: float = 1.0, retries: int = 1, port: int | None = None
) -> SnmpSettings:
    """SnmpSettings from an inventory SNMP block (desanet.district.SnmpV2c / SnmpV3, read by attribute so
    probes/ does not import the inventory), resolving each secret reference with `resolve`."""
    if getattr(cfg, "version", None) == "3":
        return SnmpSettings(
            version="3",
            port=port or cfg.port,
            user=cfg.user,
            auth_protocol=cfg.auth_protocol,
            auth_key=resolve(cfg.auth_key),
            priv_protocol=cfg.priv_protocol,
            priv_key=resolve(cfg.priv_key),
            timeout_seconds=timeout_seconds,
            retries=retries,
        )
    return SnmpSettings(
        version="2c",
        port=port or cfg.port,
        community=resolve(cfg.community),
        timeout_seconds=timeout_seconds,
        retries=retries,
    )


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SnmpInterface:
    index: int
    name: str | None  # ifName, else ifDescr (an agent without ifXTable)
    alias: str | None
    oper_up: bool | None
    admin_up: bool | None
    # ifHighSpeed × 1e6, else ifSpeed. None when the agent says 0, which RFC 2863 lets mean "no notion of
    # speed" and agents that report the operational speed send for a port without link: unknown, not 0 bit/s.
    speed_bits_per_second: float | None
    # ifHCInOctets; without it ifInOctets (Counter32), which the poller carries on past each 2^32 wrap it
    # sees (see octet_counter_bits), so that both read as counters that only go back when the agent restarts.
    in_octets: int | None
    out_octets: int | None
    in_errors: int | None
    out_errors: int | None
    in_discards: int | None
    last_change_seconds: float | None  # agent uptime at the last status change (ifLastChange / 100)
    octet_counter_bits: int | None = None  # 64 (ifHC*Octets) or 32 (ifIn/OutOctets, wraps carried)


@dataclass(frozen=True)
class SnmpOptic:
    index: int  # the agent's own row: MIKROTIK-MIB's internal index or the ENTITY-MIB module; not an ifIndex
    name: str | None  # the port's name when tied to one (if_index), else the agent's label for the module
    rx_power_dbm: float | None  # None with rx_loss True: no light, below what the sensor can measure
    tx_power_dbm: float | None
    temperature_celsius: float | None
    bias_amperes: float | None
    voltage_volts: float | None
    wavelength_meters: float | None
    rx_loss: bool | None  # no light received: the module says so, or its reading is an underflow, 0 mW or ≤ -40 dBm
    tx_fault: bool | None
    vendor: str | None
    source: str = "mikrotik"  # or "entity-sensor"
    if_index: int | None = None  # the IF-MIB port it sits in, found by name (neither table says so by index)


@dataclass(frozen=True)
class SnmpResult:
    target: str
    success: bool
    error: str | None
    uptime_seconds: float | None
    interfaces: tuple[SnmpInterface, ...]
    optics: tuple[SnmpOptic, ...]
    duration_seconds: float
    # entPhySensorTable rows this poll read: 0 when that table is empty or was not read (MIKROTIK-MIB had
    # optics), so "no optics" can say whether sensors were there and none measured optical power.
    sensor_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interfaces"] = [asdict(i) for i in self.interfaces]
        d["optics"] = [asdict(o) for o in self.optics]
        return d


class SnmpError(Exception):
    """A poll that could not complete; the message is for people and holds no secret."""


_Polled = tuple[float | None, tuple[SnmpInterface, ...], tuple[SnmpOptic, ...], int]  # uptime, ifs, optics, sensors


# ---------------------------------------------------------------------------------------------- poller
@dataclass
class _Agent:
    key: tuple[str, int]
    semaphore: asyncio.Semaphore


@dataclass
class _V3:
    """An SNMPv3 poll's credentials and the agent's engine as known (replaced when a Report says it moved)."""

    user: snmp_v3.User
    engine: snmp_v3.Engine


@dataclass
class _Carry:
    """An agent's 32-bit octet counters as last read: (ifIndex, field) → (raw value, wraps seen), and the
    agent's uptime then, to tell a wrap (carried) from a restart (everything starts again)."""

    uptime_ticks: int = 0
    counters: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)


@dataclass
class _Layout:
    """What the last full walk of an agent found, so the next polls can GET exactly those instances.

    `places[i]` says where the i-th varbind of the GETs goes: (table, column, index suffix), or ("", oid, ())
    for the scalars sysUpTime.0 and ifNumber.0, which come first."""

    version: str
    uptime_ticks: int
    if_number: int | None
    places: list[tuple[str, Oid, Oid]]
    oids: list[Oid]
    chunks: list[tuple[int, int, bytes]]  # (start, stop, encoded varbinds) per GET
    polls: int = 0


class SnmpPoller:
    """Polls many agents from one event loop. Use `async with SnmpPoller() as p: await p.poll_many([...])`.

    `max_per_agent` requests may be in flight to one agent (a router drops what it cannot queue), and
    `max_in_flight` in all, so a CPU-bound loop does not leave answers waiting in the socket past their
    timeout. A dead agent holds one of those slots for its own timeout and nothing else.
    """

    def __init__(self, *, max_per_agent: int = 2, max_in_flight: int = 32):
        if max_per_agent < 1 or max_in_flight < 1:
            raise ValueError("max_per_agent and max_in_flight must be at least 1")
        self.max_per_agent = max_per_agent
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._agents: dict[tuple[str, int, float, int], _Agent] = {}
        self._semaphores: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._engine_ids: dict[tuple[str, int], snmp_v3.Engine] = {}  # each v3 agent's engine ID, boots, time
        self._users: dict[tuple[str, ...], snmp_v3.User] = {}  # v3 credentials → master keys, hashed once
        self._rows_seen: dict[tuple[tuple[str, int], str], int] = {}
        self._layouts: dict[tuple[str, int], _Layout] = {}
        self._learned: set[tuple[str, int]] = set()
        self._carries: dict[tuple[str, int], _Carry] = {}  # 32-bit octet counters' wraps, per agent
        self._v2c: dict[int, SnmpSocket] = {}  # address family → socket, for v2c and v3 alike
        self._request_id = int.from_bytes(os.urandom(4), "big") & 0x3FFFFFFF
        self._start_lock = asyncio.Lock()
        self._ready = False

    # -- life cycle
    async def start(self) -> None:
        """Tie the poller to the running loop and open its IPv4 socket (idempotent)."""
        async with self._start_lock:
            if self._ready:
                return
            self._loop = asyncio.get_running_loop()
            await self._v2c_socket(socket.AF_INET)
            self._ready = True

    async def close(self) -> None:
        """Close the sockets. Polls still waiting fail with "poller closed" instead of hanging."""
        if not self._ready:
            return
        self._ready = False
        for sock in self._v2c.values():
            sock.close(SnmpError("the SNMP poller was closed"))
        self._v2c.clear()
        self._agents.clear()

    async def __aenter__(self) -> SnmpPoller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- public
    async def poll(self, target: str, settings: SnmpSettings) -> SnmpResult:
        t0 = time.monotonic()
        if not self._ready:
            await self.start()
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("an SnmpPoller belongs to the event loop that started it (its sockets cannot move)")
        try:
            uptime, interfaces, optics, sensor_rows = await self._poll(target, settings)
        except SnmpError as exc:
            return SnmpResult(target, False, _scrub(str(exc), settings), None, (), (), time.monotonic() - t0)
        except Exception as exc:  # a decoding bug must cost one village, not the poll loop
            msg = f"SNMP failure: {type(exc).__name__}: {exc}"
            return SnmpResult(target, False, _scrub(msg, settings), None, (), (), time.monotonic() - t0)
        return SnmpResult(target, True, None, uptime, interfaces, optics, time.monotonic() - t0, sensor_rows)

    async def poll_many(self, items: Iterable[tuple[str, SnmpSettings]]) -> list[SnmpResult]:
        """Poll every (target, settings) concurrently; results in the same order."""
        if not self._ready:
            await self.start()
        return list(await asyncio.gather(*(self.poll(t, s) for t, s in items)))

    # -- one poll
    async def _poll(self, target: str, s: SnmpSettings) -> _Polled:
        agent = await self._agent(target, s)
        auth, fresh = await self._auth(agent, s)
        try:
            return await self._collect(agent, auth, s)
        except SnmpTimeout:
            if s.version != "3":
                raise
            # An authPriv request that gets no answer: net-snmp (and RFC 3414 agents generally) drop what they
            # cannot decrypt, so a wrong privacy key looks like a dead agent. Discovery is not encrypted: if
            # the agent answers that, it is alive and the key or protocol is wrong. It costs a dead agent one
            # more timeout (its own), and only when it has just gone quiet.
            self._engine_ids.pop(agent.key, None)
            if not fresh:
                try:
                    await self._discover(agent, replace(s, retries=0))
                except SnmpError:
                    raise SnmpTimeout(_timeout_words(s)) from None
            raise SnmpError(
                f"the agent answers SNMPv3 discovery but not the encrypted request (no answer within "
                f"{s.worst_case_seconds:g} s): wrong privacy key or privacy protocol ({s.priv_protocol})?"
            ) from None
        except SnmpStale:
            self._engine_ids.pop(agent.key, None)  # learn the engine ID again on the next poll
            raise

    async def _collect(self, agent: _Agent, auth: Any, s: SnmpSettings) -> _Polled:
        """Read the rows the last walk found with a few GETs; walk everything when there is no such
        knowledge, every REWALK_EVERY polls, or when the GETs show the agent changed."""
        layout = self._layouts.get(agent.key)
        if layout is not None and layout.version == s.version and layout.polls < REWALK_EVERY:
            layout.polls += 1
            got = await self._get_known(agent, auth, s, layout)
            if got is not None:
                return got
        self._layouts.pop(agent.key, None)
        tables, scalars = await self._walk_all(agent, auth, s)
        up = _int(scalars.get((*SYS_UPTIME, 0)))
        if up is not None and not any(tables.get("sensor", {}).values()):
            self._learn(agent, s, tables, up, scalars.get((*IF_NUMBER, 0)))
        return self._decode(agent, tables, up)

    def _decode(self, agent: _Agent, tables: _Tables, uptime_ticks: int | None) -> _Polled:
        """What a poll's tables say, with 32-bit counters carried past their wraps and optics tied to ports."""
        interfaces = _interfaces(tables["if"])
        carry = self._carries.get(agent.key)
        if carry is None or (uptime_ticks is not None and uptime_ticks < carry.uptime_ticks):
            carry = self._carries[agent.key] = _Carry()  # first sight, or the agent restarted: counters did too
        if uptime_ticks is not None:
            carry.uptime_ticks = uptime_ticks
        interfaces = carry_wraps(interfaces, carry.counters)
        optics = _mikrotik_optics(tables["mikrotik"])
        sensors = tables.get("sensor", {})
        if not optics and sensors:
            optics = _entity_optics(sensors, tables.get("physical", {}), interfaces)
        sensor_rows = len({idx for values in sensors.values() for idx in values})
        uptime = None if uptime_ticks is None else uptime_ticks / 100.0
        return uptime, interfaces, tie_optics(optics, interfaces), sensor_rows

    def _learn(self, agent: _Agent, s: SnmpSettings, tables: _Tables, uptime: int, if_number: Any) -> None:
        """Remember which instances the walk returned (only those: a column an agent lacks for some row
        stays None, as in the walk, instead of triggering a walk every poll)."""
        places: list[tuple[str, Oid, Oid]] = [("", (*SYS_UPTIME, 0), ())]
        if if_number is not None:
            places.append(("", (*IF_NUMBER, 0), ()))
        for table in ("if", "mikrotik"):
            got = tables[table]  # the columns walked, ifTable's fallback ones included when they were
            rows = sorted({idx for values in got.values() for idx in values})
            places += [(table, col, idx) for idx in rows for col, values in got.items() if idx in values]
        oids = [col + idx for _, col, idx in places]
        chunks = _chunks(oids, s.max_varbinds)
        # The first time, start each agent at its own point of the re-walk cycle, so that a district
        # learned in one poll does not walk again all in one poll REWALK_EVERY later.
        first = agent.key not in self._learned
        self._learned.add(agent.key)
        polls = zlib.crc32(repr(agent.key).encode()) % REWALK_EVERY if first else 0
        self._layouts[agent.key] = _Layout(
            s.version, uptime, None if if_number is None else int(if_number), places, oids, chunks, polls
        )

    async def _get_known(self, agent: _Agent, auth: Any, s: SnmpSettings, layout: _Layout) -> _Polled | None:
        """The known instances by GET (the chunks side by side), or None when the agent must be walked: it
        restarted (sysUpTime went back), ifNumber changed, or an instance is gone (noSuchInstance)."""
        while True:
            try:
                answers = await asyncio.gather(
                    *(self._get(agent, auth, s, layout.oids[a:b], encoded) for a, b, encoded in layout.chunks)
                )
                break
            except _TooBig:  # the answers do not fit the agent's message size: smaller GETs
                size = max(b - a for a, b, _ in layout.chunks) // 2
                if size < 1:
                    raise SnmpError("the agent finds even small responses too big") from None
                layout.chunks = _chunks(layout.oids, size)
        vbs = [vb for answer in answers for vb in answer]
        if len(vbs) != len(layout.places):
            return None
        tables: _Tables = {"if": {c: {} for c in IF_COLUMNS.values()}, "mikrotik": {}}
        tables["mikrotik"] = {c: {} for c in MIKROTIK_OPTICAL_COLUMNS.values()}
        scalars: dict[Oid, Any] = {}
        for (table, col, idx), want, (oid, val) in zip(layout.places, layout.oids, vbs, strict=True):
            if tuple(oid) != want or val is None or isinstance(val, EndOfMibView | NoSuchObject | NoSuchInstance):
                return None
            if table:
                tables[table].setdefault(col, {})[idx] = val
            else:
                scalars[want] = val
        uptime = _int(scalars.get((*SYS_UPTIME, 0)))
        if uptime is None or uptime < layout.uptime_ticks:
            return None
        if layout.if_number is not None and _int(scalars.get((*IF_NUMBER, 0))) != layout.if_number:
            return None
        layout.uptime_ticks = uptime
        return self._decode(agent, tables, uptime)

    async def _walk_all(self, agent: _Agent, auth: Any, s: SnmpSettings) -> tuple[_Tables, dict[Oid, Any]]:
        # Two small GETBULKs side by side (the agent allows max_per_agent in flight): the interfaces with
        # sysUpTime, and the MikroTik optical table. A dead agent costs one timeout, not two.
        (if_tables, scalars), (mt_tables, _) = await asyncio.gather(
            self._walk(agent, auth, s, "if", list(IF_COLUMNS.values()), nonrepeaters=[SYS_UPTIME, IF_NUMBER]),
            self._walk(agent, auth, s, "mikrotik", list(MIKROTIK_OPTICAL_COLUMNS.values())),
        )
        tables: _Tables = {"if": if_tables, "mikrotik": mt_tables}
        # Then, side by side again and only where needed: ifTable's older columns, and ENTITY-SENSOR-MIB.
        fallback = _lacks_if_x(if_tables)
        sensors = not _mikrotik_optics(mt_tables)
        walks = [(fallback, "if-fallback", IF_TABLE_FALLBACK_COLUMNS), (sensors, "sensor", ENTITY_SENSOR_COLUMNS)]
        done = [
            t
            for t, _ in await asyncio.gather(
                *(self._walk(agent, auth, s, name, list(cols.values())) for wanted, name, cols in walks if wanted)
            )
        ]
        if fallback:
            if_tables.update(done.pop(0))
        if sensors:
            tables["sensor"] = done.pop(0)
            if any(tables["sensor"].values()):
                tables["physical"], _ = await self._walk(
                    agent, auth, s, "physical", list(ENTITY_PHYSICAL_COLUMNS.values())
                )
        return tables, scalars

    async def _walk(
        self,
        agent: _Agent,
        auth: Any,
        s: SnmpSettings,
        table: str,
        columns: Sequence[Oid],
        nonrepeaters: Sequence[Oid] = (),
    ) -> tuple[dict[Oid, dict[Oid, Any]], dict[Oid, Any]]:
        """Walk table columns side by side with GETBULK, each column only within its own subtree.

        The first request asks for one row more than this agent's table had last time, so a table that did
        not grow is read, end included, in one round trip. Returns {column: {index suffix: value}} and
        {non-repeater OID returned: value}."""
        tables: dict[Oid, dict[Oid, Any]] = {c: {} for c in columns}
        cursor: dict[Oid, Oid] = {c: c for c in columns}
        active = list(columns)
        scalars: dict[Oid, Any] = {}
        nonrep = list(nonrepeaters)
        budget = s.max_varbinds
        hint = self._rows_seen.get((agent.key, table), _FIRST_GUESS_ROWS.get(table, 4)) + 1
        for _ in range(MAX_ROUNDS):
            if not active:
                break
            reps = max(1, min(MAX_REPETITIONS, hint, (budget - len(nonrep)) // len(active)))
            hint = MAX_REPETITIONS
            try:
                vbs = await self._bulk(agent, auth, s, len(nonrep), reps, nonrep + [cursor[c] for c in active])
            except _TooBig:
                if budget <= 10:
                    raise SnmpError("the agent finds even small responses too big") from None
                budget = max(10, budget // 2)
                continue
            for name, val in vbs[: len(nonrep)]:
                if not isinstance(val, EndOfMibView | NoSuchObject | NoSuchInstance):
                    scalars[tuple(name)] = val
            rows = vbs[len(nonrep) :]
            nonrep = []
            if not rows:
                break
            done: set[Oid] = set()
            for i, (name, val) in enumerate(rows):
                col = active[i % len(active)]
                if col in done:
                    continue
                oid = tuple(name)
                if (
                    isinstance(val, EndOfMibView | NoSuchObject | NoSuchInstance)
                    or oid[: len(col)] != col
                    or len(oid) == len(col)
                    or oid <= cursor[col]  # an agent that does not move forward would loop for ever
                ):
                    done.add(col)
                    continue
                tables[col][oid[len(col) :]] = val
                cursor[col] = oid
            active = [c for c in active if c not in done]
        else:
            raise SnmpError(f"walk did not finish in {MAX_ROUNDS} requests")
        self._rows_seen[(agent.key, table)] = max((len(t) for t in tables.values()), default=0)
        return tables, scalars

    async def _bulk(
        self, agent: _Agent, auth: Any, s: SnmpSettings, nonrep: int, reps: int, oids: Sequence[Oid]
    ) -> list[tuple[Any, Any]]:
        """One GETBULK."""
        encoded = b"".join(encode_varbind(o) for o in oids)
        if s.version == "2c":
            return await self._v2c_request(agent, s, TAG_BULK, nonrep, reps, encoded)
        return await self._v3_request(agent, auth, s, TAG_BULK, nonrep, reps, encoded)

    async def _get(
        self, agent: _Agent, auth: Any, s: SnmpSettings, oids: Sequence[Oid], encoded: bytes
    ) -> list[tuple[Any, Any]]:
        """One GET of `oids` (`encoded` is their varbind list, ready made)."""
        if s.version == "2c":
            return await self._v2c_request(agent, s, TAG_GET, 0, 0, encoded)
        return await self._v3_request(agent, auth, s, TAG_GET, 0, 0, encoded)

    async def _v2c_request(
        self, agent: _Agent, s: SnmpSettings, tag: int, a: int, b: int, varbinds: bytes
    ) -> list[tuple[Any, Any]]:
        assert s.community is not None
        rid = self._next_id()
        data = await self._exchange(agent, s, rid, encode_request(s.community.encode(), tag, rid, a, b, varbinds))
        try:
            es, ex, vbs = decode_response(data)
        except (IndexError, ValueError):
            raise SnmpError("the agent's answer is not valid SNMP (BER)") from None
        return _answer(es, ex, vbs)

    async def _v3_request(
        self, agent: _Agent, auth: _V3, s: SnmpSettings, tag: int, a: int, b: int, varbinds: bytes
    ) -> list[tuple[Any, Any]]:
        """One authPriv GET or GETBULK (probes/snmp_v3.py codes it). A Report that the agent restarted (its
        boots and time moved on: notInTimeWindow) or is another engine now (unknownEngineID) carries the
        agent's new engine; it is adopted and the request tried once more, as RFC 3414 §4 discovery would."""
        for last in (False, True):
            rid = self._next_id()
            message = snmp_v3.encode_request(auth.user, auth.engine, rid, tag, a, b, varbinds)
            data = await self._exchange(agent, s, rid, message)
            try:
                es, ex, vbs = snmp_v3.decode_response(data, auth.user, auth.engine, rid)
            except snmp_v3.UsmError as exc:
                if last or exc.engine is None or exc.kind not in ("NotInTimeWindow", "UnknownEngineID"):
                    raise _indication_error(exc, s) from None
                auth.engine = self._engine_ids[agent.key] = exc.engine
                continue
            except (IndexError, ValueError):
                raise SnmpError("the agent's answer is not valid SNMPv3 (BER)") from None
            return _answer(es, ex, vbs)
        raise AssertionError("unreachable")

    def _next_id(self) -> int:
        """The next request-id (v3: also the msgID), unique among the poller's requests in flight."""
        self._request_id = (self._request_id + 1) & 0x3FFFFFFF
        return self._request_id

    async def _exchange(
        self, agent: _Agent, s: SnmpSettings, rid: int, message: bytes, during: str | None = None
    ) -> bytes:
        """Send `message` and wait for the datagram the agent answers it with (matched by id `rid`), sending
        it again after each `timeout_seconds` up to `retries` times."""
        family = socket.AF_INET6 if ":" in agent.key[0] else socket.AF_INET
        sock = self._v2c.get(family) or await self._v2c_socket(family)
        loop = asyncio.get_running_loop()
        async with agent.semaphore, self._in_flight:
            future: asyncio.Future[bytes] = loop.create_future()
            transport = sock.transport
            if transport is None or transport.is_closing():
                raise SnmpError("the SNMP poller was closed")
            tries_left = s.retries

            def expire() -> None:
                nonlocal tries_left
                if future.done():
                    return
                if tries_left > 0 and not transport.is_closing():
                    tries_left -= 1
                    transport.sendto(message, agent.key)
                    timer[0] = loop.call_later(s.timeout_seconds, expire)
                else:
                    future.set_exception(SnmpTimeout(_timeout_words(s, during)))

            sock.pending[rid] = (future, agent.key)
            transport.sendto(message, agent.key)
            timer = [loop.call_later(s.timeout_seconds, expire)]
            try:
                return await future
            finally:
                timer[0].cancel()
                sock.pending.pop(rid, None)

    async def _v2c_socket(self, family: int) -> SnmpSocket:
        """The poller's socket for an address family, with a receive buffer for a whole district's answers:
        answers to every request in flight can arrive while the loop is busy decoding, and the kernel's
        default buffer (rmem_default, ~208 KB) holds about a hundred of them and drops the rest, which then
        look like timeouts. The kernel caps the size at rmem_max."""
        sock = self._v2c.get(family)
        if sock is None:
            loop = asyncio.get_running_loop()
            _, sock = await loop.create_datagram_endpoint(SnmpSocket, family=family)
            raw = sock.transport.get_extra_info("socket") if sock.transport is not None else None
            if raw is not None:
                with contextlib.suppress(OSError):
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            self._v2c[family] = sock
        return sock

    # -- agents, auth
    async def _agent(self, target: str, s: SnmpSettings) -> _Agent:
        key = (target, s.port, s.timeout_seconds, s.retries)
        agent = self._agents.get(key)
        if agent is not None:
            return agent
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(target).version == 6 else socket.AF_INET
        except ValueError:
            family = socket.AF_INET  # a name: its IPv4 address, as before
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(target, s.port, family=family, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            raise SnmpError(f"cannot resolve {target}: {exc}") from None
        addr = infos[0][4]
        akey = (str(addr[0]), int(addr[1]))
        sem = self._semaphores.setdefault(akey, asyncio.Semaphore(self.max_per_agent))
        agent = self._agents[key] = _Agent(akey, sem)
        return agent

    async def _auth(self, agent: _Agent, s: SnmpSettings) -> tuple[_V3 | None, bool]:
        """What a v3 request needs (the user's keys and the agent's engine, discovered on first use) and
        whether the engine was discovered just now; nothing for v2c."""
        if s.version == "2c":
            return None, False
        fresh = False
        engine = self._engine_ids.get(agent.key)
        if engine is None:
            engine = await self._discover(agent, s)
            fresh = True
        return _V3(self._user(s), engine), fresh

    def _user(self, s: SnmpSettings) -> snmp_v3.User:
        assert s.user is not None and s.auth_key is not None and s.priv_key is not None
        key = (s.user, s.auth_protocol.upper(), s.auth_key, s.priv_protocol.upper(), s.priv_key)
        got = self._users.get(key)
        if got is None:
            got = self._users[key] = snmp_v3.User(s.user, s.auth_protocol, s.auth_key, s.priv_protocol, s.priv_key)
        return got

    async def _discover(self, agent: _Agent, s: SnmpSettings) -> snmp_v3.Engine:
        """The agent's engine ID, boots and time, from the Report it sends to an unauthenticated request
        (RFC 3414 §4)."""
        rid = self._next_id()
        data = await self._exchange(agent, s, rid, snmp_v3.encode_discovery(rid), during="SNMPv3 discovery")
        try:
            engine = snmp_v3.read_discovery(data)
        except snmp_v3.UsmError as exc:
            if exc.kind == "NoEngineID":
                raise SnmpError("the agent did not tell its SNMPv3 engine ID") from None
            raise _indication_error(exc, s, during="SNMPv3 discovery") from None
        except (IndexError, ValueError):
            raise SnmpError("the agent's answer to SNMPv3 discovery is not valid SNMPv3") from None
        self._engine_ids[agent.key] = engine
        return engine


def _answer(status: int, index: int, vbs: list[tuple[Oid, Any]]) -> list[tuple[Oid, Any]]:
    """The varbinds of a Response, or its error-status as an exception (tooBig apart: the caller splits)."""
    if status:
        name = _ERROR_STATUS.get(status, str(status))
        if name == "tooBig":
            raise _TooBig()
        raise SnmpError(f"the agent answered with error {name} (at varbind {index})")
    return vbs


def _chunks(oids: list[Oid], limit: int) -> list[tuple[int, int, bytes]]:
    """Split a GET of `oids` into the fewest PDUs of at most `limit` varbinds, evenly, each pre-encoded."""
    n = math.ceil(len(oids) / limit)
    size = math.ceil(len(oids) / n)
    return [
        (i, min(i + size, len(oids)), b"".join(encode_varbind(o) for o in oids[i : i + size]))
        for i in range(0, len(oids), size)
    ]


# ---------------------------------------------------------------------------------------------- module API
_default_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SnmpPoller] = weakref.WeakKeyDictionary()


async def probe(target: str, settings: SnmpSettings, poller: SnmpPoller | None = None) -> SnmpResult:
    """Poll one agent. Without a poller, one per event loop is made on first use and kept for the loop's life
    (callers that own a loop, like the exporter, should pass their own and close it)."""
    if poller is None:
        loop = asyncio.get_running_loop()
        poller = _default_pollers.get(loop)
        if poller is None:
            poller = _default_pollers[loop] = SnmpPoller()
            await poller.start()
    return await poller.poll(target, settings)


# ---------------------------------------------------------------------------------------------- decoding
def interface_speed(high_speed: int | None, speed: int | None) -> float | None:
    """Bit/s from ifHighSpeed (Mbit/s), else from ifSpeed. None for 0, which RFC 2863 gives to an interface
    with no notion of speed and agents that report the operational speed send while a port has no link, and
    for ifSpeed's ceiling (2^32 - 1: "faster than this, see ifHighSpeed") when there is no ifHighSpeed."""
    if high_speed is not None and high_speed > 0:
        return high_speed * 1e6
    if speed is not None and 0 < speed < _IF_SPEED_CEILING:
        return float(speed)
    return None


def _lacks_if_x(tables: dict[Oid, dict[Oid, Any]]) -> bool:
    """Whether some interface lacks what ifXTable gives (a name, 64-bit octet counters, ifHighSpeed), so
    that ifTable's own columns for them must be walked too."""
    rows = {idx for values in tables.values() for idx in values if len(idx) == 1}
    name, hc_in, hc_out, high = (
        tables.get(IF_COLUMNS[k], {}) for k in ("name", "in_octets", "out_octets", "high_speed")
    )
    return any(not _text(name.get(i)) or i not in hc_in or i not in hc_out or i not in high for i in rows)


def _interfaces(tables: dict[Oid, dict[Oid, Any]]) -> tuple[SnmpInterface, ...]:
    col = {k: tables.get(oid, {}) for k, oid in (IF_COLUMNS | IF_TABLE_FALLBACK_COLUMNS).items()}
    indexes = sorted({idx for values in col.values() for idx in values if len(idx) == 1})
    out = []
    for idx in indexes:

        def num(k: str, idx: Oid = idx) -> int | None:
            return _int(col[k].get(idx))

        in_octets, out_octets, bits = num("in_octets"), num("out_octets"), 64
        if in_octets is None and out_octets is None:
            in_octets, out_octets, bits = num("in_octets_32"), num("out_octets_32"), 32
        last = num("last_change")
        admin, oper = num("admin_status"), num("oper_status")
        out.append(
            SnmpInterface(
                index=idx[0],
                name=_text(col["name"].get(idx)) or _text(col["descr"].get(idx)) or None,
                alias=_text(col["alias"].get(idx)),
                oper_up=None if oper is None else oper == 1,
                admin_up=None if admin is None else admin == 1,
                speed_bits_per_second=interface_speed(num("high_speed"), num("speed")),
                in_octets=in_octets,
                out_octets=out_octets,
                in_errors=num("in_errors"),
                out_errors=num("out_errors"),
                in_discards=num("in_discards"),
                last_change_seconds=None if last is None else last / 100,
                octet_counter_bits=None if in_octets is None and out_octets is None else bits,
            )
        )
    return tuple(out)


def carry_counter32(last: tuple[int, int] | None, raw: int) -> tuple[int, int]:
    """(raw, wraps) after reading a Counter32 that was (raw, wraps) before: a reading below the last is a wrap,
    since a Counter32 goes back to 0 after 2^32 - 1 (RFC 2578 §7.1.6) and only then, while the agent runs.
    More than one wrap between two reads cannot be told from one (at 100 Mbit/s one takes 344 s)."""
    if last is None:
        return raw, 0
    last_raw, wraps = last
    return raw, wraps + (raw < last_raw)


def carry_wraps(
    interfaces: tuple[SnmpInterface, ...], counters: dict[tuple[int, str], tuple[int, int]]
) -> tuple[SnmpInterface, ...]:
    """Interfaces whose 32-bit octet counters read raw + wraps × 2^32, updating `counters` (an agent's state).

    A counter that drops looks like a reset to Prometheus' rate() and to a difference of two polls, which then
    lose what was counted before the wrap (up to a poll interval's traffic each time); carried on, it only
    goes back when the agent restarts (the caller then starts `counters` afresh) or desanet does."""
    out = []
    for i in interfaces:
        if i.octet_counter_bits != 32:
            out.append(i)
            continue
        carried: dict[str, int | None] = {"in_octets": i.in_octets, "out_octets": i.out_octets}
        for name, raw in carried.items():
            if raw is not None:
                state = counters[(i.index, name)] = carry_counter32(counters.get((i.index, name)), raw)
                carried[name] = raw + state[1] * _COUNTER32
        out.append(replace(i, in_octets=carried["in_octets"], out_octets=carried["out_octets"]))
    return tuple(out)


def _mikrotik_optics(tables: dict[Oid, dict[Oid, Any]]) -> tuple[SnmpOptic, ...]:
    col = {k: tables.get(oid, {}) for k, oid in MIKROTIK_OPTICAL_COLUMNS.items()}
    indexes = sorted({idx for values in col.values() for idx in values if len(idx) == 1})
    out = []
    for idx in indexes:

        def num(k: str, idx: Oid = idx) -> int | None:
            return _int(col[k].get(idx))

        def scaled(k: str, divisor: int) -> float | None:
            # A division of two integers is the double nearest the decimal the agent meant (-14873 / 1000
            # is -14.873); multiplying by 1e-3 is not (-14.873000000000001).
            v = num(k)
            return None if v is None else v / divisor

        rx_loss, tx_fault = num("rx_loss"), num("tx_fault")
        rx = scaled("rx_power", 1000)  # IDiv1000: -18000 is -18.000 dBm
        out.append(
            SnmpOptic(
                index=idx[0],  # MIKROTIK-MIB's ObjectIndex is internal, "not related to item numbers"
                name=_text(col["name"].get(idx)),
                rx_power_dbm=rx,
                tx_power_dbm=scaled("tx_power", 1000),
                temperature_celsius=scaled("temperature", 1),
                bias_amperes=scaled("bias", 1000),  # mA
                voltage_volts=scaled("voltage", 1000),  # GDiv1000
                wavelength_meters=scaled("wavelength", 10**11),  # GDiv100 nm: 131000 is 1310.00 nm
                rx_loss=_no_light(rx_loss == 1 if rx_loss is not None else None, rx),
                tx_fault=None if tx_fault is None else tx_fault == 1,
                vendor=_text(col["vendor"].get(idx)),
                source="mikrotik",
            )
        )
    return tuple(out)


def _no_light(flag: bool | None, rx_dbm: float | None) -> bool | None:
    """The module's own loss-of-signal flag, or a reading at the DOM's floor, which is no light too."""
    if rx_dbm is not None and rx_dbm <= NO_LIGHT_DBM:
        return True
    return flag


def sensor_value(value: int, scale: int, precision: int) -> float:
    """RFC 3433: the reading is value × 10^(3·(scale − 9)) / 10^precision (scale 9 is 'units'), computed as
    one exact division so that 4290 at milli, precision 4, is 0.000429 and not 0.00042899999999999997."""
    exponent = 3 * (scale - 9) - precision
    return float(value * 10**exponent) if exponent >= 0 else value / 10**-exponent


@dataclass
class _OpticGroup:
    """One transceiver's sensors, gathered across its entities (lanes hold power, the module the rest)."""

    index: int
    label: str | None
    rx: list[float] = field(default_factory=list)
    tx: list[float] = field(default_factory=list)
    dark: bool = False  # a lane's receive sensor read no light
    other: dict[str, float] = field(default_factory=dict)


def _sensor_kind(typ: int, units: str, label: str) -> str | None:
    if typ == _SENSOR_CELSIUS:
        return "temperature"
    if typ == _SENSOR_VOLTS_DC:
        return "voltage"
    if typ == _SENSOR_AMPERES:
        return "bias"
    if typ in (_SENSOR_WATTS, _SENSOR_DBM) or (typ == _SENSOR_OTHER and "dbm" in units):
        if any(w in label for w in ("rx", "receive", "input")):
            return "rx"
        if any(w in label for w in ("tx", "transmit", "output")):
            return "tx"
    return None


def port_in_label(label: str | None, ports: dict[str, int]) -> int | None:
    """The ifIndex of the port an ENTITY-MIB label names: the text after its last " for " (EOS: "DOM RX Power
    Sensor for Ethernet1", "Xcvr for Ethernet1"), else its longest word that is a port's name (Cisco:
    "Te1/1 Receive Power Sensor"). Whole names only, so Ethernet1 is never taken for Ethernet10."""
    if not label:
        return None
    _, sep, tail = label.rpartition(" for ")
    if sep and tail.strip() in ports:
        return ports[tail.strip()]
    words = [w.strip(",;:()[]") for w in label.split()]
    hits = [w for w in words if w in ports]
    return ports[max(hits, key=len)] if hits else None


def _entity_optics(
    sensors: dict[Oid, dict[Oid, Any]], phys: dict[Oid, dict[Oid, Any]], interfaces: Sequence[SnmpInterface] = ()
) -> tuple[SnmpOptic, ...]:
    """Optics from RFC 3433 sensors, for agents without the MikroTik table: a transceiver's sensors are
    gathered into one optic, and Rx and Tx told apart by the sensor's label.

    A sensor's label is entPhysicalName, or entPhysicalDescr where the name is empty (EOS). Its transceiver
    is the nearest module(9) up its entPhysicalContainedIn chain: power sensors may sit one level down, in a
    lane. The optic is tied to the port its labels name (port_in_label), which also gathers sensors whose
    containment the agent leaves out; without a port, the module (or the sensor's parent) groups them.
    An underflow or 0 mW on a receive sensor is no light (rx_loss, no number); several lanes give the weakest."""
    col = {k: sensors.get(oid, {}) for k, oid in ENTITY_SENSOR_COLUMNS.items()}
    ent = {
        k: {idx[0]: v for idx, v in phys.get(oid, {}).items() if len(idx) == 1}
        for k, oid in ENTITY_PHYSICAL_COLUMNS.items()
    }
    parents = {n: _int(v) for n, v in ent["contained_in"].items()}
    modules = {n for n, v in ent["class"].items() if _int(v) == _ENT_CLASS_MODULE}
    ports = {i.name: i.index for i in interfaces if i.name}

    def label(n: int) -> str | None:
        return _text(ent["name"].get(n)) or _text(ent["descr"].get(n)) or None

    def ancestors(n: int) -> list[int]:
        out: list[int] = []
        p = parents.get(n)
        while p and p != n and p not in out and len(out) < 16:  # bounded: a broken agent may loop
            out.append(p)
            p = parents.get(p)
        return out

    module_of_port = {port: m for m in sorted(modules) if (port := port_in_label(label(m), ports)) is not None}
    groups: dict[tuple[str, int], _OpticGroup] = {}
    for idx in sorted(i for i in col["value"] if len(i) == 1):
        n = idx[0]
        typ, value = _int(col["type"].get(idx)), _int(col["value"].get(idx))
        status = _int(col["oper_status"].get(idx))
        if typ is None or value is None or status not in (None, 1) or value == SENSOR_OVERFLOW:
            continue
        kind = _sensor_kind(typ, (_text(col["units"].get(idx)) or "").lower(), (label(n) or "").lower())
        if kind is None:
            continue
        up = ancestors(n)
        module = next((a for a in up if a in modules), None)
        # The labels that may name the port: the sensor's, and its containers' up to the transceiver (not
        # beyond: a slot or the chassis says nothing about which port).
        chain = [n, *(up[: up.index(module) + 1] if module is not None else up[:1])]
        port = next((p for e in chain if (p := port_in_label(label(e), ports)) is not None), None)
        if port is not None:
            key = ("port", port)
            module = module if module is not None else module_of_port.get(port)
        else:
            key = ("entity", module if module is not None else (up[0] if up else n))
        group = groups.get(key)
        if group is None:
            where = module if module is not None else (up[0] if up else n)
            group = groups[key] = _OpticGroup(where, label(where))
        if value == SENSOR_UNDERFLOW:
            group.dark |= kind == "rx"  # less light than the sensor measures; other readings: none to keep
            continue
        reading = sensor_value(value, _int(col["scale"].get(idx)) or 9, _int(col["precision"].get(idx)) or 0)
        if kind in ("rx", "tx"):
            if typ == _SENSOR_WATTS:
                if reading <= 0:  # 0 mW is -inf dBm: no light received, or no light sent
                    group.dark |= kind == "rx"
                    continue
                reading = 10 * math.log10(reading * 1000)
            (group.rx if kind == "rx" else group.tx).append(reading)
        else:
            group.other.setdefault(kind, reading)
    names = {index: name for name, index in ports.items()}
    out = []
    for (how, key_index), g in sorted(groups.items(), key=lambda kv: (kv[1].index, kv[0])):
        if not (g.rx or g.tx or g.dark):
            continue  # a chassis thermometer is not an optic
        rx = min(g.rx) if g.rx else None
        out.append(
            SnmpOptic(
                index=g.index,
                name=names[key_index] if how == "port" else g.label,
                rx_power_dbm=rx,
                tx_power_dbm=min(g.tx) if g.tx else None,
                temperature_celsius=g.other.get("temperature"),
                bias_amperes=g.other.get("bias"),
                voltage_volts=g.other.get("voltage"),
                wavelength_meters=None,
                rx_loss=_no_light(True if g.dark else None if rx is None else False, rx),
                tx_fault=None,
                vendor=None,
                source="entity-sensor",
                if_index=key_index if how == "port" else None,
            )
        )
    return tuple(out)


def tie_optics(optics: tuple[SnmpOptic, ...], interfaces: Sequence[SnmpInterface]) -> tuple[SnmpOptic, ...]:
    """Each optic with the ifIndex of the port of the same name. Neither table ties them by index: MIKROTIK-MIB's
    row index is its own (optical row 1 may be ifIndex 3), so the name (mtxrOpticalName = ifName) is the tie."""
    ports = {i.name: i.index for i in interfaces if i.name}
    return tuple(
        o if o.if_index is not None or o.name not in ports else replace(o, if_index=ports[o.name]) for o in optics
    )


def _int(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _text(v: Any) -> str | None:
    if v is None:
        return None
    raw = v if isinstance(v, bytes) else v.asOctets() if hasattr(v, "asOctets") else str(v).encode()
    return raw.decode("utf-8", "replace").rstrip("\x00")


# ---------------------------------------------------------------------------------------------- errors
class _TooBig(Exception):
    pass


class SnmpTimeout(SnmpError):
    """No answer within timeout × (retries + 1)."""


class SnmpStale(SnmpError):
    """The agent's SNMPv3 engine ID or clock is not what we had; the next poll learns them again."""


def _timeout_words(s: SnmpSettings, during: str | None = None) -> str:
    where = f" during {during}" if during else ""
    hint = "is the agent up and reachable" + (", and is the community right?" if s.version == "2c" else "?")
    return (
        f"no SNMP answer{where} within {s.worst_case_seconds:g} s ({s.retries + 1} tries of "
        f"{s.timeout_seconds:g} s): {hint}"
    )


def _indication_error(ei: Any, s: SnmpSettings, during: str | None = None) -> SnmpError:
    """Words for an SNMPv3 indication: a Report's kind (snmp_v3.UsmError), named as pysnmp names them."""
    kind = getattr(ei, "kind", type(ei).__name__)
    if kind in ("UnknownEngineID", "NotInTimeWindow"):
        return SnmpStale(
            "the agent's SNMPv3 engine ID or clock changed (restarted or replaced?); it is learned again on the "
            f"next poll ({kind})"
        )
    words = {
        "WrongDigest": f"SNMPv3 authentication failed (wrong digest): wrong auth key or protocol ({s.auth_protocol})",
        "UnknownUserName": f"SNMPv3 user {s.user!r} is unknown to the agent",
        "UnsupportedSecLevel": f"the agent does not allow authPriv for SNMPv3 user {s.user!r}",
        "DecryptionError": "SNMPv3 decryption failed: wrong privacy key or privacy protocol",
    }
    where = f" during {during}" if during else ""
    return SnmpError(words.get(kind, f"SNMPv3 error{where}: the agent reports {kind}"))


def _scrub(message: str, s: SnmpSettings) -> str:
    for secret in s.secrets:
        message = message.replace(secret, "<secret>")
    return message
