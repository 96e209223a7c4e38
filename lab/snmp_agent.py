"""The SNMP agent each simulated village runs: net-snmp's snmpd, plus the MikroTik optical table.

snmpd serves the real IF-MIB of the village's network namespace by itself (its interfaces, counters and
statuses are the kernel's). What a namespace cannot have is an SFP, so the MIKROTIK-MIB optical table
(1.3.6.1.4.1.14988.1.1.19.1.1.{1..11}.<index>, anchors.md §8.1) is served from a values file that
`set_optical` rewrites atomically, through snmpd's `pass_persist` directive and a small /bin/sh + awk
script (optical.sh, written beside snmpd.conf).

Why pass_persist and not plain `pass`: `pass` forks the script for every varbind, so one GETBULK over the
ten optical columns costs ten or more fork+execs of sh and awk; across 217 villages on 2 cores that is most
of the CPU the lab has. pass_persist keeps one awk per village (about 2 MB) that re-reads the values file
per request (a few hundred bytes), so a change made by `set_optical` shows in the next request.

The values file is one `OID<TAB>TYPE<TAB>VALUE` line per object in OID order, TYPE being a pass_persist
type (integer, gauge, string, …). awk answers GET by exact match and GETNEXT with the first line greater
than the request, comparing OIDs arc by arc as numbers; so walks, GETNEXT and GETBULK all work and
signed values come back as Integer32 (−2400 stays −2400).

The same mechanism can serve extra subtrees for tests (ENTITY-SENSOR-MIB, ENTITY-MIB names), see
`write_agent_files(extra=entity_tables(…))`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MIKROTIK_OPTICAL_ENTRY = "1.3.6.1.4.1.14988.1.1.19.1.1"
MIKROTIK_OPTICAL = "1.3.6.1.4.1.14988.1.1.19"  # mtxrOptical: the subtree pass_persist takes over
ENTITY_SENSOR_ENTRY = "1.3.6.1.2.1.99.1.1.1"
ENTITY_SENSOR = "1.3.6.1.2.1.99"
ENTITY_PHYSICAL_ENTRY = "1.3.6.1.2.1.47.1.1.1.1"
ENTITY_MIB = "1.3.6.1.2.1.47"

# Who may read with the v2c community: loopback (tests, a NOC on the same box) and the private ranges the
# lab and a district network use. The lab's NOC is 10.255.0.1 (lab/topology.py).
DEFAULT_SOURCES: tuple[str, ...] = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

_AUTH = {"SHA": "SHA", "SHA256": "SHA-256", "SHA512": "SHA-512", "MD5": "MD5"}
_PRIV = {"AES": "AES", "DES": "DES"}  # net-snmp 5.9.3 as built by Debian offers AES-128 and DES only

# pass_persist value types (net-snmp agent/mibgroup/ucd-snmp/pass_common.c)
_TYPES = {"integer", "gauge", "counter", "counter64", "timeticks", "string", "octet", "objectid", "ipaddress"}


@dataclass
class OpticalValues:
    """What the village's SFP reports, in the units a technician reads on the router's screen."""

    rx_dbm: float = -18.0
    tx_dbm: float = -2.0
    temperature_c: float = 40
    bias_ma: float = 12
    voltage_v: float = 3.3
    wavelength_nm: float = 1310.0
    name: str = "sfp1"
    vendor: str = "desanet-lab"
    rx_loss: bool = False
    tx_fault: bool = False


@dataclass(frozen=True)
class SnmpV3User:
    """An SNMPv3 authPriv user for the agent. The keys are pass phrases (net-snmp wants 8 characters or more)."""

    user: str
    auth_key: str = field(repr=False)
    priv_key: str = field(repr=False)
    auth_protocol: str = "SHA"
    priv_protocol: str = "AES"


def optical_rows(optical: OpticalValues, index: int = 1) -> list[tuple[str, str, str]]:
    """The MIKROTIK-MIB mtxrOpticalTable row for one SFP, encoded as the MIB says (anchors.md §8.1)."""
    temp = round(optical.temperature_c)
    cols: list[tuple[int, str, str]] = [
        (1, "integer", str(index)),  # mtxrOpticalIndex
        (2, "string", _clean(optical.name)),  # mtxrOpticalName
        (3, "integer", "1" if optical.rx_loss else "0"),  # mtxrOpticalRxLoss (BoolValue)
        (4, "integer", "1" if optical.tx_fault else "0"),  # mtxrOpticalTxFault (BoolValue)
        (5, "gauge", str(round(optical.wavelength_nm * 100))),  # mtxrOpticalWavelength, GDiv100 nm
        # mtxrOpticalTemperature is a Gauge32 in °C; a negative reading can only travel as an integer.
        (6, "gauge" if temp >= 0 else "integer", str(temp)),
        (7, "gauge", str(round(optical.voltage_v * 1000))),  # mtxrOpticalSupplyVoltage, GDiv1000 V
        (8, "gauge", str(round(optical.bias_ma))),  # mtxrOpticalTxBiasCurrent, mA
        (9, "integer", str(round(optical.tx_dbm * 1000))),  # mtxrOpticalTxPower, IDiv1000 dBm
        (10, "integer", str(round(optical.rx_dbm * 1000))),  # mtxrOpticalRxPower, IDiv1000 dBm
        (11, "string", _clean(optical.vendor)),  # mtxrOpticalVendorName
    ]
    return [(f"{MIKROTIK_OPTICAL_ENTRY}.{col}.{index}", typ, val) for col, typ, val in cols]


@dataclass(frozen=True)
class EntitySensor:
    """One ENTITY-SENSOR-MIB (RFC 3433) row, for exercising the probe's non-MikroTik fallback.

    `value` is the raw Integer32; the reading is value × 10^(3·(scale−9)) / 10^precision. `parent` and `name`
    go into ENTITY-MIB's entPhysicalContainedIn and entPhysicalName (the name is set for the parent too)."""

    index: int
    type: int  # 8 celsius, 4 voltsDC, 5 amperes, 6 watts, 1 other (with units "dBm")
    value: int
    scale: int = 9  # units
    precision: int = 0
    oper_status: int = 1  # ok
    units: str = ""
    name: str = ""
    parent: int = 0
    parent_name: str = ""


def entity_tables(sensors: Iterable[EntitySensor]) -> dict[str, list[tuple[str, str, str]]]:
    """ENTITY-SENSOR-MIB rows and the ENTITY-MIB names they point at, by subtree (for `extra=`)."""
    rows: list[tuple[str, str, str]] = []
    phys: list[tuple[str, str, str]] = []
    names: dict[int, str] = {}
    parents: dict[int, int] = {}
    for s in sensors:
        e = ENTITY_SENSOR_ENTRY
        rows += [
            (f"{e}.1.{s.index}", "integer", str(s.type)),
            (f"{e}.2.{s.index}", "integer", str(s.scale)),
            (f"{e}.3.{s.index}", "integer", str(s.precision)),
            (f"{e}.4.{s.index}", "integer", str(s.value)),
            (f"{e}.5.{s.index}", "integer", str(s.oper_status)),
            (f"{e}.6.{s.index}", "string", _clean(s.units)),
        ]
        names[s.index] = s.name
        parents[s.index] = s.parent
        if s.parent:
            names.setdefault(s.parent, s.parent_name)
            parents.setdefault(s.parent, 0)
    for idx, parent in parents.items():
        phys.append((f"{ENTITY_PHYSICAL_ENTRY}.4.{idx}", "integer", str(parent)))  # entPhysicalContainedIn
    for idx, name in names.items():
        phys.append((f"{ENTITY_PHYSICAL_ENTRY}.7.{idx}", "string", _clean(name)))  # entPhysicalName
    return {ENTITY_SENSOR: rows, ENTITY_MIB: phys}


# ---------------------------------------------------------------------------------------------- files
_SCRIPT = r"""#!/bin/sh
# desanet lab: answers snmpd's pass_persist protocol from a values file (OID TAB TYPE TAB VALUE, in OID
# order), for the subtree given as $2. Written by lab/snmp_agent.py; one awk per village, no fork per request.
values=$1
prefix=$2
# mawk reads a pipe in blocks unless told to be interactive; other awks answer line by line anyway.
case $(awk -W version 2>&1) in *mawk*) set -- -W interactive ;; *) set -- ;; esac
exec awk "$@" -v file="$values" -v prefix="$prefix" '
function cmp(a, b,   x, y, n, m, i) {
    n = split(a, x, "."); m = split(b, y, ".")
    for (i = 2; i <= n && i <= m; i++) {
        if (x[i] + 0 < y[i] + 0) return -1
        if (x[i] + 0 > y[i] + 0) return 1
    }
    return (n < m) ? -1 : (n > m)
}
function answer(mode, req,   line, f, found) {
    found = 0
    while ((getline line < file) > 0) {
        if (split(line, f, "\t") < 3 || index(f[1], prefix ".") != 1) continue
        if ((mode == "get" && f[1] == req) || (mode == "getnext" && cmp(f[1], req) > 0)) {
            print f[1]; print f[2]; print f[3]; found = 1; break
        }
    }
    close(file)
    if (!found) print "NONE"
    fflush()
}
$0 == "PING" { print "PONG"; fflush(); next }
$0 == "get" || $0 == "getnext" { mode = $0; if ((getline req) > 0) answer(mode, req); next }
$0 == "set" { getline req; getline req; print "not-writable"; fflush(); next }
'
"""


def write_agent_files(
    workdir: Path,
    listen: str,
    community: str | None,
    v3: SnmpV3User | None,
    optical: OpticalValues,
    *,
    port: int = 161,
    sources: Sequence[str] = DEFAULT_SOURCES,
    serve_mikrotik: bool = True,
    extra: Mapping[str, Sequence[tuple[str, str, str]]] | None = None,
) -> list[str]:
    """Write snmpd.conf, optical.sh, the values file and a persistent dir into `workdir`; return snmpd's argv.

    `listen` is an address ("10.101.1.1", "::1") or address:port ("127.0.0.1:16161", "[::1]:16161"); the port
    defaults to `port`. The argv runs snmpd in the foreground with every path inside `workdir` (persistent
    state included, so no environment is needed), ignoring the system's snmpd.conf and MIB files.
    `extra` maps further subtrees (e.g. ENTITY_SENSOR) to rows to serve through the same script.
    """
    if community is None and v3 is None:
        raise ValueError("the agent needs a v2c community or an SNMPv3 user")
    workdir = Path(workdir).resolve()
    persist = workdir / "persist"
    persist.mkdir(parents=True, exist_ok=True)
    os.chmod(persist, 0o700)
    endpoint = _endpoint(listen, port)

    lines = [
        "# written by desanet lab/snmp_agent.py; rewritten on every lab start",
        "disablePerl true",
        'sysDescr "desanet lab village router (net-snmp)"',
        "sysContact noc@desanet.lab",
        "sysLocation desanet lab",
        "dontLogTCPWrappersConnects yes",
    ]
    if community is not None:
        _check_word("community", community)
        for src in sources:
            lines.append(f"rocommunity {community} {ipaddress.ip_network(src, strict=False)}")
    if v3 is not None:
        lines += _v3_lines(v3)

    script = workdir / "optical.sh"
    _atomic_write(script, _SCRIPT, 0o755)
    values = workdir / "optical.values"
    subtrees: dict[str, list[tuple[str, str, str]]] = {}
    if serve_mikrotik:
        subtrees[MIKROTIK_OPTICAL] = optical_rows(optical)
    for prefix, rows in (extra or {}).items():
        subtrees.setdefault(prefix.strip("."), []).extend(rows)
    _write_values(values, [row for rows in subtrees.values() for row in rows])
    for prefix in subtrees:
        lines.append(f"pass_persist .{prefix} /bin/sh {script} {values} .{prefix}")

    _atomic_write(workdir / "snmpd.conf", "\n".join(lines) + "\n", 0o600)
    _forget_persisted_users(persist / "snmpd.conf")
    snmpd = shutil.which("snmpd") or "/usr/sbin/snmpd"
    return [
        snmpd,
        "-f",  # foreground: the lab owns the process
        "-Lf",
        str(workdir / "snmpd.log"),
        "-C",  # no system-wide snmpd.conf
        "-c",
        str(workdir / "snmpd.conf"),
        "-p",
        str(workdir / "snmpd.pid"),
        f"--persistentDir={persist}",
        "-M",
        str(workdir / "no-mibs"),  # no MIB files to parse at start: numeric OIDs only
        "-m",
        "",
        endpoint,
    ]


def set_optical(workdir: Path, optical: OpticalValues) -> None:
    """Change what the village's SFP reports; the next SNMP request sees it (atomic replace of the values file)."""
    values = Path(workdir).resolve() / "optical.values"
    keep = [r for r in _read_values(values) if not _under(r[0], MIKROTIK_OPTICAL)]
    _write_values(values, keep + optical_rows(optical))


def set_rows(workdir: Path, subtree: str, rows: Sequence[tuple[str, str, str]]) -> None:
    """Replace every row served under `subtree` (one given to `write_agent_files(extra=…)`)."""
    values = Path(workdir).resolve() / "optical.values"
    keep = [r for r in _read_values(values) if not _under(r[0], subtree.strip("."))]
    _write_values(values, keep + list(rows))


# ---------------------------------------------------------------------------------------------- helpers
def _endpoint(listen: str, port: int) -> str:
    host, p = listen, port
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", listen)
    if m:
        host, p = m.group(1), int(m.group(2) or port)
    elif listen.count(":") == 1:
        host, ps = listen.split(":")
        p = int(ps)
    addr = ipaddress.ip_address(host)
    if not 0 < p < 65536:
        raise ValueError(f"port {p} out of range")
    return f"udp6:[{addr}]:{p}" if addr.version == 6 else f"udp:{addr}:{p}"


def _check_word(what: str, value: str) -> None:
    # Never echo the value: it is a secret.
    if not value or any(c.isspace() or c in "\"'#\\" for c in value) or not value.isprintable():
        raise ValueError(f"{what} must be printable, without spaces, quotes, '#' or backslashes")


def _v3_lines(v3: SnmpV3User) -> list[str]:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", v3.user):
        raise ValueError("SNMPv3 user names here are 1-32 of A-Z a-z 0-9 . _ -")
    auth = _AUTH.get(v3.auth_protocol.upper())
    priv = _PRIV.get(v3.priv_protocol.upper())
    if auth is None:
        raise ValueError(f"auth protocol {v3.auth_protocol!r} is not one of {sorted(_AUTH)}")
    if priv is None:
        raise ValueError(f"privacy protocol {v3.priv_protocol!r} is not one the lab's snmpd offers ({sorted(_PRIV)})")
    for what, key in (("auth key", v3.auth_key), ("privacy key", v3.priv_key)):
        _check_word(f"SNMPv3 {what}", key)
        if len(key) < 8:
            raise ValueError(f"SNMPv3 {what} must have at least 8 characters (RFC 3414 / net-snmp)")
    return [f'createUser {v3.user} {auth} "{v3.auth_key}" {priv} "{v3.priv_key}"', f"rouser {v3.user} priv"]


def _forget_persisted_users(path: Path) -> None:
    """snmpd saves localized users in its persistent file; a key changed in the inventory must win over them."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    kept = [line for line in text.splitlines(keepends=True) if not line.startswith("usmUser ")]
    if len(kept) != len(text.splitlines()):
        _atomic_write(path, "".join(kept), 0o600)


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() and c != "\t" else " " for c in text)[:255]


def _oid_key(oid: str) -> tuple[int, ...]:
    return tuple(int(x) for x in oid.strip(".").split("."))


def _under(oid: str, prefix: str) -> bool:
    o, p = _oid_key(oid), _oid_key(prefix)
    return o[: len(p)] == p


def _write_values(path: Path, rows: Iterable[tuple[str, str, str]]) -> None:
    seen: dict[tuple[int, ...], tuple[str, str]] = {}
    for oid, typ, val in rows:
        if typ not in _TYPES:
            raise ValueError(f"unknown pass_persist type {typ!r} for {oid}")
        seen[_oid_key(oid)] = (typ, _clean(str(val)))
    text = "".join(f".{'.'.join(map(str, k))}\t{t}\t{v}\n" for k, (t, v) in sorted(seen.items()))
    _atomic_write(path, text, 0o644)


def _read_values(path: Path) -> list[tuple[str, str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        parts = line.split("\t", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def _atomic_write(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
