"""The district inventory: pydantic models, YAML loading with line numbers, and every cross-check.

Operators edit inventory.yaml by hand, so a mistake must come back as `FILE:LINE:COL: message` for *every*
problem at once, not one at a time. Pydantic checks each item's fields; the cross-checks (duplicate slugs,
unknown kecamatan or profile, overlapping sessions) run here over whatever items validated, and each carries
the YAML path it is about so it gets a line number too. Messages are written for the operator: they name the
key in YAML terms (`villages[3].router`), say what was found and what is wanted, suggest the nearest known
name for a typo, and never repeat a secret.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_TZ = "Asia/Jakarta"

# Keys whose values are secrets (or references to them): no message ever repeats what was written there.
_SECRET_KEYS = frozenset({"community", "auth_key", "priv_key"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------- secrets
class EnvSecret(_Model):
    """A secret read from an environment variable when it is needed."""

    env: Annotated[str, Field(pattern=ENV_RE.pattern, description="Name of the environment variable.")]


class FileSecret(_Model):
    """A secret read from a file (first line, stripped) when it is needed, e.g. a systemd credential."""

    file: Annotated[
        str,
        Field(
            min_length=1,
            description="Path of a file whose first line is the secret; $VARIABLES and ~ are expanded when it "
            "is read, e.g. ${CREDENTIALS_DIRECTORY}/snmp-community.",
        ),
    ]


class SecretError(Exception):
    """A secret reference that cannot be resolved; the message names the reference, never a value."""


def resolve_secret(ref: EnvSecret | FileSecret) -> str:
    """The secret's value, read now (so a rotated secret is picked up on the next poll)."""
    if isinstance(ref, EnvSecret):
        value = os.environ.get(ref.env)
        if not value:
            raise SecretError(f"environment variable {ref.env} is not set (or is empty)")
        return value
    path = os.path.expanduser(os.path.expandvars(ref.file))
    where = ref.file if path == ref.file else f"{ref.file} ({path})"
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.readline().strip()
    except OSError as exc:
        raise SecretError(f"cannot read secret file {where}: {exc.strerror}") from None
    if not value:
        raise SecretError(f"secret file {where} is empty")
    return value


def _secret_ref(value: Any) -> Any:
    """Turn `{env: NAME}` / `{file: PATH}` into a reference; refuse anything else without echoing it."""
    if isinstance(value, EnvSecret | FileSecret):
        return value
    if isinstance(value, str | int | float | bytes) and not isinstance(value, bool):
        raise ValueError(
            "secret written inline: put it in an environment variable or a file and write {env: NAME} or {file: PATH}"
        )
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in ("env", "file"):
        raise ValueError("a secret is written as {env: NAME} or {file: PATH} (exactly one of the two)")
    if "env" in value:
        name = value["env"]
        if not isinstance(name, str) or not ENV_RE.match(name):
            raise ValueError(
                "{env: NAME} needs an environment variable name: letters, digits and _, not starting with a digit"
            )
        return EnvSecret(env=name)
    path = value["file"]
    if not isinstance(path, str) or not path.strip():
        raise ValueError("{file: PATH} needs a file path")
    return FileSecret(file=path)


SecretRef = Annotated[EnvSecret | FileSecret, BeforeValidator(_secret_ref)]


# ---------------------------------------------------------------------------------------------- small types
def _ip(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address such as 10.101.1.1 (got {_show(value)})")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


IPAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address, BeforeValidator(_ip)]


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


# Indonesia's three zones as people write them; the inventory wants the IANA names.
_ZONE_ABBREVIATIONS = {"WIB": "Asia/Jakarta", "WITA": "Asia/Makassar", "WIT": "Asia/Jayapura"}


def _tz_exists(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        hint = f" (did you mean {_ZONE_ABBREVIATIONS[v.upper()]!r}?)" if v.upper() in _ZONE_ABBREVIATIONS else ""
        hint = hint or _suggest(v, _zone_names(), fallback=" (e.g. 'Asia/Jakarta')")
        raise ValueError(f"unknown time zone {v!r}{hint}") from None
    return v


TimeZone = Annotated[
    str,
    AfterValidator(_tz_exists),
    Field(description="IANA time zone name.", examples=["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"]),
]
Port = Annotated[int, Field(ge=1, le=65535)]
Latitude = Annotated[float, Field(ge=-90, le=90, description="Latitude in decimal degrees (south is negative).")]
Longitude = Annotated[float, Field(ge=-180, le=180, description="Longitude in decimal degrees (east is positive).")]
Slug = Annotated[
    str,
    Field(
        pattern=SLUG_RE.pattern,
        max_length=40,
        description="Short stable name: lowercase letters, digits and '-'. Used in metric labels, URLs and "
        "on the command line.",
    ),
]


# ---------------------------------------------------------------------------------------------- SNMP
class SnmpV2c(_Model):
    """SNMP v2c: a community string, kept as a secret reference."""

    version: Literal["2c"] = "2c"
    community: Annotated[SecretRef, Field(description="The community, as {env: NAME} or {file: PATH}.")]
    port: Annotated[Port, Field(description="UDP port of the agent.")] = 161


class SnmpV3(_Model):
    """SNMP v3 with authentication and privacy (authPriv); both keys are secret references."""

    version: Annotated[Literal["3"], Field(description="3 (written 3 or '3').")]
    user: Annotated[str, Field(min_length=1, description="USM user name.")]
    auth_protocol: Literal["SHA", "SHA256", "SHA512", "MD5"] = "SHA"
    auth_key: Annotated[SecretRef, Field(description="Authentication passphrase, as {env: NAME} or {file: PATH}.")]
    priv_protocol: Literal["AES", "AES256", "DES"] = "AES"
    priv_key: Annotated[SecretRef, Field(description="Privacy passphrase, as {env: NAME} or {file: PATH}.")]
    port: Annotated[Port, Field(description="UDP port of the agent.")] = 161


SnmpSettings = Annotated[SnmpV2c | SnmpV3, Field(discriminator="version")]


def _version_as_str(value: Any) -> Any:
    # YAML reads `version: 3` as an int; operators should not have to quote it. A mapping with a community
    # and no version is v2c, the version the SnmpV2c model defaults to anyway.
    if isinstance(value, Mapping):
        v = value.get("version")
        if isinstance(v, int | float) and not isinstance(v, bool):
            value = dict(value)
            value["version"] = "3" if v == 3 else ("2c" if v == 2 else str(v))
        elif "version" not in value and "community" in value:
            value = {**value, "version": "2c"}
    return value


# ---------------------------------------------------------------------------------------------- pieces
class Endpoint(_Model):
    """A service on or beside the village router; the address defaults to the router's."""

    address: Annotated[IPAddress | None, Field(description="Defaults to the village's router address.")] = None
    port: Port


class StampEndpoint(Endpoint):
    """A STAMP (RFC 8762) / TWAMP-Light reflector in the village."""

    port: Annotated[Port, Field(description="UDP port of the reflector (RFC 8762 default 862).")] = 862


class Iperf3Endpoint(Endpoint):
    """An iperf3 server in the village, for the scheduled throughput tests."""

    port: Annotated[Port, Field(description="TCP port of the iperf3 server.")] = 5201


class Contract(_Model):
    """The bandwidth the provider sold the village office, in megabits per second."""

    down_mbit: Annotated[float, Field(gt=0, le=100_000, description="Download (towards the village), Mbit/s.")]
    up_mbit: Annotated[float, Field(gt=0, le=100_000, description="Upload (from the village), Mbit/s.")]


class Kecamatan(_Model):
    """A kecamatan (sub-district) and its uplink to the district core."""

    name: Annotated[str, Field(min_length=1, description="Name as villages and sessions write it.")]
    uplink_mbit: Annotated[float, Field(gt=0, le=1_000_000, description="Uplink capacity to the core, Mbit/s.")]
    lat: Latitude
    lon: Longitude

    @property
    def slug(self) -> str:
        return slugify(self.name)


class Village(_Model):
    """One village office (desa or kelurahan) and its router."""

    name: Annotated[str, Field(min_length=1, description="Name as people say it, e.g. 'Genteng Kulon'.")]
    slug: Slug
    kind: Annotated[Literal["desa", "kelurahan"], Field(description="desa (village) or kelurahan (urban ward).")]
    kecamatan: Annotated[str, Field(description="Name of a kecamatan listed under kecamatan.")]
    router: Annotated[
        IPAddress,
        Field(description="Address of the office router: pinged, polled, and the default address of stamp and iperf3."),
    ]
    lat: Latitude
    lon: Longitude
    contracted: Contract
    stamp: Annotated[StampEndpoint | None, Field(description="STAMP reflector; omit if the village has none.")] = None
    iperf3: Annotated[Iperf3Endpoint | None, Field(description="iperf3 server; omit if the village has none.")] = None
    snmp: Annotated[SnmpSettings | None, Field(description="Overrides defaults.snmp for this router.")] = None
    profile: Annotated[str | None, Field(description="Overrides defaults.profile for this village.")] = None

    _snmp_version = field_validator("snmp", mode="before")(_version_as_str)

    @property
    def address(self) -> str:
        return str(self.router)

    def stamp_address(self) -> tuple[str, int] | None:
        if self.stamp is None:
            return None
        return str(self.stamp.address or self.router), self.stamp.port

    def iperf3_address(self) -> tuple[str, int] | None:
        if self.iperf3 is None:
            return None
        return str(self.iperf3.address or self.router), self.iperf3.port


class Profile(_Model):
    """What a kind of video session needs from the link. Figures come from anchors.md §7.

    Up to the `max_*` figures a village is ready; between them and the `fail_*` figures it is at risk;
    beyond, not ready. Bandwidth below the minimum is not ready.
    """

    name: Annotated[str, Field(pattern=SLUG_RE.pattern, description="Profile name: lowercase, digits and '-'.")]
    description: str = ""
    min_down_mbit: Annotated[float, Field(gt=0, description="Download the call needs, Mbit/s.")]
    min_up_mbit: Annotated[float, Field(gt=0, description="Upload the call needs, Mbit/s.")]
    max_rtt_ms: Annotated[float, Field(gt=0, description="Ready up to this round-trip time, ms.")] = 100.0
    max_jitter_ms: Annotated[float, Field(gt=0, description="Ready up to this jitter, ms.")] = 30.0
    max_loss_pct: Annotated[float, Field(ge=0, le=100, description="Ready up to this packet loss, %.")] = 1.0
    fail_rtt_ms: Annotated[float, Field(gt=0, description="Not ready from this round-trip time, ms.")] = 150.0
    fail_jitter_ms: Annotated[float, Field(gt=0, description="Not ready from this jitter, ms.")] = 40.0
    fail_loss_pct: Annotated[float, Field(ge=0, le=100, description="Not ready from this packet loss, %.")] = 3.0
    video_packet_bytes: Annotated[
        int, Field(ge=44, le=1472, description="UDP payload of the test packets that imitate the call's video.")
    ] = 1200
    dscp: Annotated[
        int, Field(ge=0, le=63, description="DSCP of the test packets (34 = AF41, RFC 4594 interactive video).")
    ] = 34


DEFAULT_PROFILES: tuple[Profile, ...] = (
    Profile(
        name="meet-hd",
        description="Google Meet HD, up to 5 participants (3.2 up, 3.2 down)",
        min_down_mbit=3.2,
        min_up_mbit=3.2,
    ),
    Profile(
        name="teams-meeting",
        description="Microsoft Teams 2-party meeting video (4 / 4)",
        min_down_mbit=4.0,
        min_up_mbit=4.0,
    ),
    Profile(
        name="zoom-gallery",
        description="Zoom group call, gallery view or 720p (1.5 / 1.5)",
        min_down_mbit=1.5,
        min_up_mbit=1.5,
    ),
    Profile(
        name="zoom-1080p", description="Zoom group call at 1080p (2.5 down, 3.0 up)", min_down_mbit=2.5, min_up_mbit=3.0
    ),
)

_REPEAT_STEP = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}


class Session(_Model):
    """A scheduled video session. `repeat` keeps recurring meetings in the file without going stale."""

    title: Annotated[str, Field(min_length=1)]
    start: Annotated[
        datetime,
        Field(
            description="First (or only) start, local time in `timezone` unless it carries an offset, e.g. "
            "2026-12-03T09:00:00."
        ),
    ]
    duration_minutes: Annotated[int, Field(gt=0, le=24 * 60, description="Length in minutes, at most one day.")]
    timezone: Annotated[TimeZone, Field(description="Time zone of `start`; defaults to the inventory's.")] = DEFAULT_TZ
    repeat: Annotated[
        Literal["none", "daily", "weekly"], Field(description="none (one-off), daily, or weekly on start's weekday.")
    ] = "none"
    villages: Annotated[list[str], Field(description="Village slugs taking part.")] = []
    kecamatan: Annotated[list[str], Field(description="Kecamatan whose every village takes part.")] = []
    all: Annotated[bool, Field(description="Every village in the district takes part.")] = False
    profile: Annotated[
        str | None, Field(description="Profile the session is judged by; defaults to each village's.")
    ] = None

    @property
    def duration(self) -> timedelta:
        return timedelta(minutes=self.duration_minutes)

    def first_start(self) -> datetime:
        """The first start as an aware datetime (a naive `start` is local time in `timezone`)."""
        tz = ZoneInfo(self.timezone)
        return self.start.replace(tzinfo=tz) if self.start.tzinfo is None else self.start

    def occurrence_at_or_after(self, now: datetime) -> datetime | None:
        """Start of the first occurrence that has not ended by `now` (it may be running at `now`), or None.

        `now` must be timezone-aware: a naive time could mean any zone.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("occurrence_at_or_after needs a timezone-aware time, e.g. datetime.now(UTC)")
        start = self.first_start()
        if start + self.duration > now:
            return start
        if self.repeat == "none":
            return None
        step = _REPEAT_STEP[self.repeat]
        n = (now - start - self.duration) // step + 1
        return start + n * step

    def active_at(self, when: datetime) -> bool:
        occ = self.occurrence_at_or_after(when)
        return occ is not None and occ <= when < occ + self.duration


class IcmpSettings(_Model):
    """Continuous ping of every village router."""

    interval_seconds: Annotated[float, Field(gt=0, le=3600, description="Seconds between pings to one router.")] = 1.0
    window_seconds: Annotated[
        float, Field(gt=0, le=3600, description="Seconds of pings that RTT, jitter and loss are computed over.")
    ] = 60.0
    timeout_seconds: Annotated[float, Field(gt=0, le=60, description="A reply later than this counts as lost.")] = 2.0
    payload_bytes: Annotated[int, Field(ge=8, le=1472, description="ICMP payload size, bytes.")] = 56


class StampSettings(_Model):
    """Periodic STAMP bursts to the villages' reflectors (one-way delay and loss each way)."""

    every_seconds: Annotated[float, Field(ge=10, description="Seconds between bursts to one village.")] = 300.0
    duration_seconds: Annotated[float, Field(gt=0, le=60, description="Length of one burst, seconds.")] = 5.0
    rate_pps: Annotated[float, Field(gt=0, le=2000, description="Packets per second during a burst.")] = 50.0


class SnmpPollSettings(_Model):
    """SNMP polling of the village routers (interface counters, optics)."""

    every_seconds: Annotated[float, Field(ge=5, le=3600, description="Seconds between polls of one router.")] = 30.0
    timeout_seconds: Annotated[float, Field(gt=0, le=30, description="Seconds to wait for one reply.")] = 1.0
    retries: Annotated[int, Field(ge=0, le=5, description="Retries after a timeout.")] = 1
    max_per_agent: Annotated[int, Field(ge=1, le=16, description="Requests in flight to one router at once.")] = 2


class ThroughputSettings(_Model):
    """Scheduled iperf3 throughput tests; they load the link, so they are budgeted."""

    tests_per_day: Annotated[int, Field(ge=0, le=96, description="Tests per village per day (0 turns them off).")] = 4
    max_seconds: Annotated[float, Field(gt=0, le=60, description="Longest single test, seconds.")] = 5.0
    budget_megabytes_per_day: Annotated[
        float, Field(gt=0, description="Most data the tests may move per village per day, megabytes.")
    ] = 500.0
    budget_seconds_per_day: Annotated[
        float, Field(gt=0, description="Most test time per village per day, seconds.")
    ] = 120.0


class TraceSettings(_Model):
    """Periodic traceroute to every village router, to see where a path changed."""

    every_seconds: Annotated[float, Field(ge=30, description="Seconds between traces to one village.")] = 300.0
    max_hops: Annotated[int, Field(ge=1, le=64)] = 16
    probes_per_hop: Annotated[int, Field(ge=1, le=10)] = 3


class ProbeSettings(_Model):
    """How often and how hard each probe measures; the defaults suit 217 villages on one exporter."""

    icmp: IcmpSettings = IcmpSettings()
    stamp: StampSettings = StampSettings()
    snmp: SnmpPollSettings = SnmpPollSettings()
    throughput: ThroughputSettings = ThroughputSettings()
    trace: TraceSettings = TraceSettings()


class Defaults(_Model):
    """What a village gets unless it says otherwise."""

    profile: Annotated[str, Field(description="Profile of villages that name none.")] = "meet-hd"
    snmp: Annotated[SnmpSettings | None, Field(description="SNMP settings of routers that give none.")] = None

    _snmp_version = field_validator("snmp", mode="before")(_version_as_str)


# ---------------------------------------------------------------------------------------------- inventory
class Inventory(_Model):
    """A district's village offices, their routers, the video profiles and the scheduled sessions."""

    district: Annotated[str, Field(min_length=1, description="Name of the district, shown on dashboards.")]
    timezone: Annotated[TimeZone, Field(description="Local time zone; sessions without one use it.")] = DEFAULT_TZ
    defaults: Defaults = Defaults()
    settings: ProbeSettings = ProbeSettings()
    profiles: Annotated[
        list[Profile], Field(description="Video profiles; leaving the key out gives the four built-in ones.")
    ] = list(DEFAULT_PROFILES)
    kecamatan: Annotated[list[Kecamatan], Field(description="Every kecamatan that villages and sessions name.")]
    villages: Annotated[list[Village], Field(description="Every village office to monitor.")]
    sessions: Annotated[list[Session], Field(description="Scheduled video sessions; see docs/inventory.md.")] = []

    def village(self, slug: str) -> Village:
        for v in self.villages:
            if v.slug == slug:
                return v
        raise KeyError(slug)

    def profile(self, name: str) -> Profile:
        for p in self.profiles:
            if p.name == name:
                return p
        raise KeyError(name)

    def snmp_for(self, village: Village) -> SnmpV2c | SnmpV3 | None:
        return village.snmp or self.defaults.snmp

    def profile_for(self, village: Village) -> Profile:
        return self.profile(village.profile or self.defaults.profile)

    def sessions_for(self, village: Village) -> list[Session]:
        return [s for s in self.sessions if _covers(s, village)]

    def next_session(self, village: Village, now: datetime) -> tuple[Session, datetime] | None:
        """The village's session that is running at `now` or starts soonest after it, with that start."""
        best: tuple[Session, datetime] | None = None
        for s in self.sessions_for(village):
            occ = s.occurrence_at_or_after(now)
            if occ is not None and (best is None or occ < best[1]):
                best = (s, occ)
        return best

    def in_session(self, village: Village, when: datetime) -> Session | None:
        for s in self.sessions_for(village):
            if s.active_at(when):
                return s
        return None


def slugify(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "x"


def _covers(s: Session, v: Village) -> bool:
    return s.all or v.slug in s.villages or v.kecamatan in s.kecamatan


# ---------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Problem:
    """One thing wrong with an inventory file, located as precisely as the YAML allows (1-based)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class InventoryError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


Loc = tuple[str | int, ...]


def _position(root: Any, loc: Loc, *, at_key: bool = False) -> tuple[int, int]:
    """1-based line and column of the deepest node of `loc` that exists in the ruamel tree.

    A scalar at the end of `loc` is located at its value (where the mistake is typed), anything else at
    its key or list item; `at_key` forces the key (for unknown keys).
    """
    node = root
    line, col = 0, 0
    for n, part in enumerate(loc):
        lc = getattr(node, "lc", None)
        if lc is None:
            break
        try:
            if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
                line, col = lc.item(part)
            elif isinstance(node, dict) and part in node:
                child = node[part]
                last = n == len(loc) - 1
                if last and not at_key and child is not None and not isinstance(child, dict | list):
                    line, col = lc.value(part)
                else:
                    line, col = lc.key(part)
            else:
                break
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    return line + 1, col + 1


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    """A short rendering of a (non-secret) value for a message."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "nothing"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | date):
        text = str(value)
    elif isinstance(value, Mapping):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    else:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


@lru_cache(maxsize=1)
def _model_names() -> frozenset[str]:
    names = {"IPv4Address", "IPv6Address"}
    todo: list[type] = [_Model]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(names)


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop what pydantic adds to a location for unions and validators ('2c', 'EnvSecret', 'function-after[…]')."""
    return tuple(
        p for p in loc if isinstance(p, int) or (isinstance(p, str) and p.isidentifier() and p not in _model_names())
    )


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Model classes an annotation can hold (through Optional, unions, Annotated and lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    if get_origin(annotation) in (Union, Annotated, list) or type(annotation).__name__ == "UnionType":
        for arg in get_args(annotation):
            out += _models_in(arg)
    return out


def _keys_at(model: type[BaseModel], loc: Loc) -> set[str]:
    """The keys allowed in the mapping at `loc` (relative to `model`), for a did-you-mean."""
    models = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        models = [
            m for cls in models if part in cls.model_fields for m in _models_in(cls.model_fields[part].annotation)
        ]
    return {k for m in models for k in m.model_fields}


_SLUG_HELP = "use lowercase letters, digits and '-', not starting or ending with '-'"


def _messages(err: ValidationError, model: type[BaseModel]) -> Iterator[tuple[Loc, str, bool]]:
    """(location, message, at_key) for each error, in words an operator can act on."""
    errors = err.errors(include_url=False)
    # A typo in a key shows up twice: the unknown key and the required key it was meant to be. Say it once.
    missing = {(_clean_loc(e["loc"])[:-1], _clean_loc(e["loc"])[-1]) for e in errors if e["type"] == "missing"}
    typos: set[tuple[Loc, Any]] = set()
    out: list[tuple[Loc, str, bool]] = []
    for e in errors:
        loc = _clean_loc(e["loc"])
        kind, msg, value = e["type"], e["msg"], e.get("input")
        secret = any(p in _SECRET_KEYS for p in loc)
        if kind == "extra_forbidden":
            parent, key = loc[:-1], loc[-1]
            hint = ""
            wanted = [m for (p, m) in missing if p == parent]
            close = difflib.get_close_matches(str(key), [str(m) for m in wanted], n=1, cutoff=0.6)
            if close:
                typos.add((parent, close[0]))
                hint = f" (did you mean {close[0]!r}?)"
            else:
                allowed = _keys_at(model, parent)
                hint = _suggest(str(key), allowed)
                if not hint and 0 < len(allowed) <= 12:
                    hint = f" (known keys: {', '.join(sorted(allowed))})"
            out.append((loc, f"unknown key {key!r}{hint}", True))
            continue
        if kind == "missing":
            out.append((loc, "", False))  # placeholder, resolved below once the typos are known
            continue
        if kind == "union_tag_invalid":
            tag = (e.get("ctx") or {}).get("tag")
            out.append(((*loc, "version"), f"unknown SNMP version {tag!r}: write 2c or 3", False))
            continue
        if kind == "union_tag_not_found":
            out.append((loc, "missing required key 'version' (2c or 3)", False))
            continue
        if kind == "string_pattern_mismatch" and loc and loc[-1] in ("slug", "name"):
            example = slugify(value) if isinstance(value, str) else ""
            msg = f"{value!r} is not a valid {loc[-1]}: {_SLUG_HELP}" + (f" (e.g. {example!r})" if example else "")
            out.append((loc, msg, False))
            continue
        if kind in ("model_type", "dict_type", "model_attributes_type"):
            what = "nothing" if value is None else _show(value)
            out.append((loc, f"must be a mapping of keys and values (got {what})", False))
            continue
        if kind == "list_type":
            out.append((loc, f"must be a list (got {'nothing' if value is None else _show(value)})", False))
            continue
        if kind in ("datetime_parsing", "datetime_type", "datetime_from_date_parsing"):
            out.append((loc, f"must be a date and time such as 2026-12-03T09:00:00 (got {_show(value)})", False))
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif msg.startswith("Input should be "):
            msg = "must be " + msg[len("Input should be ") :]
            if kind.endswith("_parsing") or kind.endswith("_type"):
                msg = msg.split(",")[0]
            if not secret:
                msg += f" (got {_show(value)})"
        elif msg.startswith("String should "):
            msg = "must " + msg[len("String should ") :]
            if not secret:
                msg += f" (got {_show(value)})"
        out.append((loc, msg, False))
    seen: set[tuple[Loc, str]] = set()
    for loc, msg, at_key in out:
        if msg == "":
            parent, key = loc[:-1], loc[-1]
            if (parent, key) in typos:
                continue
            loc, msg = parent, f"missing required key {key!r}"
        if (loc, msg) not in seen:
            seen.add((loc, msg))
            yield loc, msg, at_key


_ITEM_ADAPTERS: dict[str, tuple[type[BaseModel], TypeAdapter[Any]]] = {
    "kecamatan": (Kecamatan, TypeAdapter(Kecamatan)),
    "villages": (Village, TypeAdapter(Village)),
    "profiles": (Profile, TypeAdapter(Profile)),
    "sessions": (Session, TypeAdapter(Session)),
}
_REQUIRED_LISTS = ("kecamatan", "villages")
_SINGULAR = {"kecamatan": "kecamatan", "villages": "village", "profiles": "profile", "sessions": "session"}


class _Report:
    """Collects problems, locating each path in the YAML tree."""

    def __init__(self, filename: str, root: Any):
        self.filename = filename
        self.root = root
        self.problems: list[Problem] = []

    def line(self, loc: Loc) -> int:
        return _position(self.root, loc, at_key=True)[0]

    def __call__(self, loc: Loc, message: str, *, at_key: bool = False) -> None:
        """Report `message` about `loc`; `at_key` locates the key itself and names the mapping holding it."""
        line, col = _position(self.root, loc, at_key=at_key)
        where = _path(loc[:-1] if at_key and loc and message.startswith("unknown key") else loc)
        self.problems.append(Problem(self.filename, line, col, f"{where}: {message}" if where else message))


def _load_yaml(text: str, filename: str) -> Any:
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        key = re.search(r'duplicate key "([^"]*)"', str(exc.problem or ""))
        first = exc.context_mark.line + 1 if exc.context_mark is not None else 0
        what = f"duplicate key {key.group(1)!r}" if key else "duplicate key"
        raise InventoryError(
            [
                Problem(
                    filename,
                    mark.line + 1 if mark else 1,
                    mark.column + 1 if mark else 1,
                    f"YAML: {what} in the mapping that starts on line {first}",
                )
            ]
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        message = f"YAML syntax: {exc.problem}"
        if "mapping values are not allowed" in str(exc.problem):
            message += " (check this line's indentation against the line above, or quote a value containing ': ')"
        elif "\\t" in str(exc.problem):
            message += " (indent with spaces, not tabs)"
        elif exc.context:
            message += f" ({exc.context}"
            if exc.context_mark is not None and exc.context_mark.line + 1 != line:
                message += f" on line {exc.context_mark.line + 1}"
            message += "; check the indentation and the brackets)"
        raise InventoryError([Problem(filename, line, col, message)]) from None


def parse_inventory(
    text: str, filename: str = "<inventory>", *, now: datetime | None = None, strict_time: bool = True
) -> Inventory:
    """Validate an inventory, raising InventoryError with every problem found, sorted by position.

    `strict_time` reports one-off sessions that have already ended (what `inventory check` wants);
    the exporter passes False so that a file that was valid yesterday keeps loading today.

    Speed: ruamel.yaml's round-trip loader (needed for line numbers) is pure Python and takes about a minute
    for 10,000 villages on this machine. So a file is first read with libyaml (PyYAML's C loader, restricted to
    YAML 1.2's core types so both readers agree); only when that copy has a problem is it read again with
    ruamel to place every message at its line.
    """
    fast = _load_yaml_fast(text)
    if fast is not _SLOW:
        try:
            return _parse(fast, filename, now=now, strict_time=strict_time)
        except InventoryError:
            pass  # re-read with positions, so every message gets its line
    return _parse(_load_yaml(text, filename), filename, now=now, strict_time=strict_time)


_SLOW = object()


def _load_yaml_fast(text: str) -> Any:
    """libyaml's parse, or _SLOW when it is unavailable or the text needs ruamel's careful messages."""
    try:
        import yaml
    except ImportError:
        return _SLOW
    loader_cls = getattr(yaml, "CSafeLoader", None)
    if loader_cls is None:
        return _SLOW
    try:
        return yaml.load(text, Loader=_core_schema_loader(yaml, loader_cls))  # a SafeLoader subclass
    except Exception:  # syntax errors, duplicate keys: the slow path explains them with positions
        return _SLOW


@functools.cache
def _core_schema_loader(yaml: Any, base: Any) -> Any:
    """A libyaml SafeLoader that resolves plain scalars like YAML 1.2's core schema (as ruamel does): no
    yes/no/on/off booleans, no sexagesimal numbers, and duplicate keys refused."""

    class CoreLoader(base):
        yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, Any]]]] = {}

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            if len(keys) != len(set(map(repr, keys))):
                raise yaml.constructor.ConstructorError(None, None, "duplicate key", node.start_mark)
            return super().construct_mapping(node, deep=deep)

    for tag, regexp, first in (
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        (
            "tag:yaml.org,2002:float",
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            "-+0123456789.",
        ),
        ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        (
            "tag:yaml.org,2002:timestamp",
            r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?"
            r"(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?"
            r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
            "0123456789",
        ),
    ):
        CoreLoader.add_implicit_resolver(tag, re.compile(regexp), list(first))
    return CoreLoader


def _parse(data: Any, filename: str, *, now: datetime | None, strict_time: bool) -> Inventory:
    if data is None:
        raise InventoryError(
            [Problem(filename, 1, 1, "the file is empty: an inventory needs at least district, kecamatan and villages")]
        )
    if not isinstance(data, dict):
        lc = getattr(data, "lc", None)
        line, col = (lc.line + 1, lc.col + 1) if lc is not None and lc.line is not None else (1, 1)
        message = f"the inventory must be a mapping of keys (district:, villages:, …), not {_show(data)}"
        raise InventoryError([Problem(filename, line, col, message)])
    add = _Report(filename, data)

    # Per item first, so one broken village does not hide the problems of the others.
    items: dict[str, list[tuple[int, Any]]] = {}
    for key, (model, adapter) in _ITEM_ADAPTERS.items():
        if key not in data:
            continue
        raw = data[key]
        if raw is None and key not in _REQUIRED_LISTS:
            items[key] = []  # `sessions:` with every entry commented out
            continue
        if not isinstance(raw, list):
            got = "nothing" if raw is None else _show(raw)
            add((key,), f"must be a list, one '- ' entry per {_SINGULAR[key]} (got {got})", at_key=True)
            continue
        good: list[tuple[int, Any]] = []
        for i, item in enumerate(raw):
            try:
                good.append((i, adapter.validate_python(item)))
            except ValidationError as err:
                for loc, msg, at_key in _messages(err, model):
                    add((key, i, *loc), msg, at_key=at_key)
        items[key] = good

    # The rest of the document (district, timezone, defaults, settings) with the lists taken out.
    rest = {k: v for k, v in data.items() if k not in _ITEM_ADAPTERS}
    for key in _REQUIRED_LISTS:
        rest[key] = []
    top: Inventory | None = None
    bad_keys: set[str | int] = set()
    try:
        top = Inventory.model_validate(rest)
    except ValidationError as err:
        for loc, msg, at_key in _messages(err, Inventory):
            add(loc, msg, at_key=at_key)
            bad_keys.add(loc[0] if loc else "district")
        # Go on checking with what did validate, so that a bad `district` does not hide a bad profile name.
        try:
            top = Inventory.model_validate({k: v for k, v in rest.items() if k not in bad_keys} | {"district": "?"})
        except ValidationError:
            top = None
    for key in _REQUIRED_LISTS:
        # A key that is a typo of it is reported as an unknown key with a did-you-mean instead.
        if key not in data and not any(_suggest(str(k), {key}) for k in data):
            add((), f"missing required key {key!r}")

    tz = top.timezone if top is not None else DEFAULT_TZ
    kecs = [k for _, k in items.get("kecamatan", [])]
    villages = items.get("villages", [])
    profiles = (
        items["profiles"] if "profiles" in items else ([] if "profiles" in data else list(enumerate(DEFAULT_PROFILES)))
    )
    sessions = [
        (i, s if "timezone" in s.model_fields_set else s.model_copy(update={"timezone": tz}))
        for i, s in items.get("sessions", [])
    ]

    # The cross-checks read the raw items, so that an item with a problem of its own still counts: a village
    # with a bad address is not also an "unknown village" in a session, and its references are still checked.
    raw = {key: _raw_items(data, key) for key in _ITEM_ADAPTERS}
    kec_names = _strings(raw["kecamatan"], "name")
    slugs = _strings(raw["villages"], "slug")
    profile_names = _strings(raw["profiles"], "name") if "profiles" in data else {p.name for p in DEFAULT_PROFILES}

    _check_unique(raw["kecamatan"], "kecamatan", "name", str.casefold, "kecamatan", add)
    _check_unique(raw["villages"], "villages", "slug", str, "slug", add)
    _check_unique(raw["villages"], "villages", "router", _ip_or_none, "router address", add)
    _check_unique(raw["profiles"], "profiles", "name", str, "profile name", add)
    for i, p in items.get("profiles", []):
        for what in ("rtt_ms", "jitter_ms", "loss_pct"):
            lo, hi = getattr(p, f"max_{what}"), getattr(p, f"fail_{what}")
            if lo > hi:
                add(
                    ("profiles", i, f"max_{what}"),
                    f"{lo:g} is above fail_{what} ({hi:g}): the 'ready' limit must "
                    f"not be worse than the 'not ready' one",
                )
    no_snmp = top is not None and "defaults" not in bad_keys and top.defaults.snmp is None
    for i, r in raw["villages"]:
        kec, prof = r.get("kecamatan"), r.get("profile")
        if isinstance(kec, str) and kec not in kec_names:
            add(("villages", i, "kecamatan"), f"unknown kecamatan {kec!r}" + _suggest(kec, kec_names))
        if isinstance(prof, str) and prof not in profile_names:
            add(("villages", i, "profile"), f"unknown profile {prof!r}" + _suggest(prof, profile_names))
        if no_snmp and r.get("snmp") is None:
            add(("villages", i), "no snmp settings here and none under defaults.snmp")
    for i, v in villages:
        if v.router.is_unspecified or v.router.is_multicast:
            add(("villages", i, "router"), f"{v.router} cannot be a router address")
    if top is not None and "defaults" not in bad_keys and top.defaults.profile not in profile_names:
        name = top.defaults.profile
        if "profile" in (data.get("defaults") or {}):
            add(("defaults", "profile"), f"unknown profile {name!r}" + _suggest(name, profile_names))
        else:
            add(
                ("profiles",),
                f"no profile is named {name!r}, the default for villages that name none: add it, or "
                f"set defaults.profile to one of {', '.join(sorted(profile_names)) or '(none)'}",
                at_key=True,
            )

    for i, r in raw["sessions"]:
        if not (r.get("all") or r.get("villages") or r.get("kecamatan")):
            add(("sessions", i), "names no villages: give villages, kecamatan or all: true")
        for field, known, what in (("villages", slugs, "village"), ("kecamatan", kec_names, "kecamatan")):
            names = r.get(field)
            for j, name in enumerate(names if isinstance(names, list) else []):
                if isinstance(name, str) and name not in known:
                    add(("sessions", i, field, j), f"unknown {what} {name!r}" + _suggest(name, known))
        prof = r.get("profile")
        if isinstance(prof, str) and prof not in profile_names:
            add(("sessions", i, "profile"), f"unknown profile {prof!r}" + _suggest(prof, profile_names))
    now = now or datetime.now(ZoneInfo(DEFAULT_TZ))
    for i, s in sessions:
        if strict_time and s.repeat == "none" and s.first_start() + s.duration <= now:
            add(
                ("sessions", i, "start"),
                f"session ended in the past ({s.first_start():%Y-%m-%d %H:%M %Z}); remove it or give it a repeat",
            )
    _check_overlaps(sessions, villages, add, now)

    if add.problems:
        raise InventoryError(sorted(add.problems, key=lambda p: (p.line, p.col)))
    assert top is not None
    return top.model_copy(
        update={
            "kecamatan": kecs,
            "villages": [v for _, v in villages],
            "profiles": [p for _, p in profiles],
            "sessions": [s for _, s in sessions],
        }
    )


def _raw_items(data: Mapping[str, Any], key: str) -> list[tuple[int, Mapping[str, Any]]]:
    raw = data.get(key)
    return [(i, r) for i, r in enumerate(raw) if isinstance(r, Mapping)] if isinstance(raw, list) else []


def _strings(items: list[tuple[int, Mapping[str, Any]]], field: str) -> set[str]:
    return {v for _, r in items if isinstance(v := r.get(field), str)}


def _ip_or_none(value: str) -> Any:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def _check_unique(
    items: list[tuple[int, Mapping[str, Any]]],
    section: str,
    field: str,
    norm: Callable[[str], Any],
    what: str,
    add: _Report,
) -> None:
    """Report every item whose `field` (a string, compared after `norm`) an earlier item already has."""
    seen: dict[Any, int] = {}
    for i, item in items:
        value = item.get(field)
        k = norm(value) if isinstance(value, str) else None
        if k is None:
            continue
        if k in seen:
            first = seen[k]
            add(
                (section, i, field),
                f"duplicate {what} {value!r} (first used by {section}[{first}] on line {add.line((section, first))})",
            )
        else:
            seen[k] = i


def _check_overlaps(
    sessions: list[tuple[int, Session]], villages: list[tuple[int, Village]], add: _Report, now: datetime
) -> None:
    """Two sessions in one village office at once cannot both happen: the office has one link."""
    for a_pos, (ia, a) in enumerate(sessions):
        for ib, b in sessions[a_pos + 1 :]:
            clash = _first_overlap(a, b, now)
            if clash is None:
                continue
            shared = [v.slug for _, v in villages if _covers(a, v) and _covers(b, v)]
            if shared:
                add(
                    ("sessions", ib),
                    f"overlaps session {a.title!r} (sessions[{ia}], line {add.line(('sessions', ia))}) at "
                    f"{clash:%Y-%m-%d %H:%M %Z} in {', '.join(shared[:3])}"
                    f"{f' and {len(shared) - 3} more' if len(shared) > 3 else ''}",
                )


def _first_overlap(a: Session, b: Session, now: datetime) -> datetime | None:
    """When two sessions first run at the same time (and not in the past), or None if they never do.

    Daily and weekly repeats both have periods dividing a week, so once both have started the pattern repeats
    every week: checking the first eight days after the later first start is enough.
    """
    if a.repeat == "none" and b.repeat != "none":
        a, b = b, a
    # Now `a` repeats whenever either does.
    if a.repeat == "none":
        ob = b.first_start()
        oa = a.first_start()
        if oa < ob + b.duration and ob < oa + a.duration and max(oa + a.duration, ob + b.duration) > now:
            return max(oa, ob)
        return None
    if b.repeat == "none":
        ob = b.first_start()
        if ob + b.duration <= now:
            return None
        oa_opt = a.occurrence_at_or_after(ob)
        return max(oa_opt, ob) if oa_opt is not None and oa_opt < ob + b.duration else None
    t = max(a.first_start(), b.first_start(), now)
    occ = a.occurrence_at_or_after(t)
    step = _REPEAT_STEP[a.repeat]
    while occ is not None and occ < t + timedelta(days=8):
        ob_opt = b.occurrence_at_or_after(occ)
        if ob_opt is not None and ob_opt < occ + a.duration:
            return max(occ, ob_opt)
        occ += step
    return None


def _suggest(word: str, known: set[str] | frozenset[str], *, fallback: str = "") -> str:
    """' (did you mean 'X'?)' for the nearest known name: same letters ignoring case and punctuation first."""
    by_norm = {slugify(k): k for k in sorted(known)}
    if slugify(word) in by_norm and by_norm[slugify(word)] != word:
        return f" (did you mean {by_norm[slugify(word)]!r}?)"
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    if not close:
        folded = {k.casefold(): k for k in known}
        close = [folded[c] for c in difflib.get_close_matches(word.casefold(), sorted(folded), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]!r}?)" if close else fallback


def load_inventory(
    path: str | os.PathLike[str], *, now: datetime | None = None, strict_time: bool = False
) -> Inventory:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError([Problem(str(p), 0, 0, f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise InventoryError([Problem(str(p), 0, 0, f"not UTF-8 text (byte {exc.start})")]) from None
    return parse_inventory(text, str(p), now=now, strict_time=strict_time)


# A YAML timestamp as people write it: RFC 3339 without or with an offset, 'T' or a space.
_DATETIME_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}([Tt ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?"
    r"( ?(Z|z|[+-]\d{1,2}(:?\d{2})?))?$"
)


def json_schema() -> dict[str, Any]:
    """The inventory's JSON Schema, tuned for editors (yaml-language-server) rather than for pydantic.

    Two things differ from what pydantic generates: `version: 3` is an integer in YAML, and a session's
    `start` is usually written without an offset, which JSON Schema's `date-time` format would reject.
    """
    schema = Inventory.model_json_schema()
    defs = schema["$defs"]
    defs["SnmpV3"]["properties"]["version"] = {
        "description": "3 (written 3 or '3').",
        "enum": ["3", 3],
        "title": "Version",
    }
    defs["SnmpV2c"]["properties"]["version"] = {"default": "2c", "enum": ["2c", 2], "title": "Version"}
    for snmp_owner in ("Village", "Defaults"):
        prop = defs[snmp_owner]["properties"]["snmp"]
        for alt in prop.get("anyOf", []):
            alt.pop("discriminator", None)
    # `sessions:` with every entry commented out reads as null, which the loader takes for an empty list.
    sessions = schema["properties"]["sessions"]
    sessions["type"] = ["array", "null"]
    start = defs["Session"]["properties"]["start"]
    start.pop("format", None)
    start["type"] = "string"
    start["pattern"] = _DATETIME_PATTERN
    start["examples"] = ["2026-12-03T09:00:00", "2026-12-03 09:00:00+07:00"]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "desanet inventory"
    return schema


def default_inventory_path() -> Path:
    """$DESANET_INVENTORY, else inventory.yaml beside the package (a checkout), else /etc/desanet/inventory.yaml."""
    env = os.environ.get("DESANET_INVENTORY")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "inventory.yaml"
    return here if here.exists() else Path("/etc/desanet/inventory.yaml")
