"""The district inventory: pydantic models, YAML loading with line numbers, and every cross-check.

Operators edit inventory.yaml by hand, so a mistake must come back as `FILE:LINE:COL: message` for *every*
problem at once, not one at a time. Pydantic checks each item's fields; the cross-checks (duplicate slugs,
unknown kecamatan or profile, overlapping sessions) run here over whatever items validated, and each carries
the YAML path it is about so it gets a line number too.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
DEFAULT_TZ = "Asia/Jakarta"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------- secrets
class EnvSecret(_Model):
    """A secret read from an environment variable when it is needed."""

    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class FileSecret(_Model):
    """A secret read from a file (first line, stripped) when it is needed, e.g. a systemd credential."""

    file: str


SecretRef = EnvSecret | FileSecret


class SecretError(Exception):
    """A secret reference that cannot be resolved; the message names the reference, never a value."""


def resolve_secret(ref: SecretRef) -> str:
    if isinstance(ref, EnvSecret):
        value = os.environ.get(ref.env)
        if not value:
            raise SecretError(f"environment variable {ref.env} is not set")
        return value
    try:
        with open(ref.file, encoding="utf-8") as fh:
            value = fh.readline().strip()
    except OSError as exc:
        raise SecretError(f"cannot read secret file {ref.file}: {exc.strerror}") from None
    if not value:
        raise SecretError(f"secret file {ref.file} is empty")
    return value


def _no_inline_secret(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError("secret written inline: reference it as {env: NAME} or {file: PATH} instead")
    return value


# ---------------------------------------------------------------------------------------------- SNMP
class SnmpV2c(_Model):
    version: Literal["2c"] = "2c"
    community: SecretRef
    port: Annotated[int, Field(ge=1, le=65535)] = 161

    _inline = field_validator("community", mode="before")(_no_inline_secret)


class SnmpV3(_Model):
    version: Literal["3"]
    user: Annotated[str, Field(min_length=1)]
    auth_protocol: Literal["SHA", "SHA256", "SHA512", "MD5"] = "SHA"
    auth_key: SecretRef
    priv_protocol: Literal["AES", "AES256", "DES"] = "AES"
    priv_key: SecretRef
    port: Annotated[int, Field(ge=1, le=65535)] = 161

    _inline = field_validator("auth_key", "priv_key", mode="before")(_no_inline_secret)


SnmpSettings = Annotated[SnmpV2c | SnmpV3, Field(discriminator="version")]


def _version_as_str(value: Any) -> Any:
    # YAML reads `version: 3` as an int; operators should not have to quote it.
    if isinstance(value, dict) and isinstance(value.get("version"), int | float):
        value = dict(value)
        v = value["version"]
        value["version"] = "3" if v == 3 else ("2c" if v == 2 else str(v))
    return value


# ---------------------------------------------------------------------------------------------- pieces
class Endpoint(_Model):
    """A service on or beside the village router; the address defaults to the router's."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    port: Annotated[int, Field(ge=1, le=65535)]


class StampEndpoint(Endpoint):
    port: Annotated[int, Field(ge=1, le=65535)] = 862


class Iperf3Endpoint(Endpoint):
    port: Annotated[int, Field(ge=1, le=65535)] = 5201


class Contract(_Model):
    down_mbit: Annotated[float, Field(gt=0, le=100_000)]
    up_mbit: Annotated[float, Field(gt=0, le=100_000)]


Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]


class Kecamatan(_Model):
    name: Annotated[str, Field(min_length=1)]
    uplink_mbit: Annotated[float, Field(gt=0, le=1_000_000)]
    lat: Latitude
    lon: Longitude

    @property
    def slug(self) -> str:
        return slugify(self.name)


class Village(_Model):
    name: Annotated[str, Field(min_length=1)]
    slug: Annotated[str, Field(pattern=SLUG_RE.pattern, max_length=40)]
    kind: Literal["desa", "kelurahan"]
    kecamatan: str
    router: ipaddress.IPv4Address | ipaddress.IPv6Address
    lat: Latitude
    lon: Longitude
    contracted: Contract
    stamp: StampEndpoint | None = None
    iperf3: Iperf3Endpoint | None = None
    snmp: SnmpSettings | None = None
    profile: str | None = None

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

    name: Annotated[str, Field(pattern=SLUG_RE.pattern)]
    description: str = ""
    min_down_mbit: Annotated[float, Field(gt=0)]
    min_up_mbit: Annotated[float, Field(gt=0)]
    max_rtt_ms: Annotated[float, Field(gt=0)] = 100.0
    max_jitter_ms: Annotated[float, Field(gt=0)] = 30.0
    max_loss_pct: Annotated[float, Field(ge=0, le=100)] = 1.0
    fail_rtt_ms: Annotated[float, Field(gt=0)] = 150.0
    fail_jitter_ms: Annotated[float, Field(gt=0)] = 40.0
    fail_loss_pct: Annotated[float, Field(ge=0, le=100)] = 3.0
    video_packet_bytes: Annotated[int, Field(ge=44, le=1472)] = 1200
    dscp: Annotated[int, Field(ge=0, le=63)] = 34  # AF41, the class RFC 4594 gives interactive video


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


class Session(_Model):
    """A scheduled video session. `repeat` keeps recurring meetings in the file without going stale."""

    title: Annotated[str, Field(min_length=1)]
    start: datetime
    duration_minutes: Annotated[int, Field(gt=0, le=24 * 60)]
    timezone: str = DEFAULT_TZ
    repeat: Literal["none", "daily", "weekly"] = "none"
    villages: list[str] = []
    kecamatan: list[str] = []
    all: bool = False
    profile: str | None = None

    @field_validator("timezone")
    @classmethod
    def _tz_exists(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @property
    def duration(self) -> timedelta:
        return timedelta(minutes=self.duration_minutes)

    def first_start(self) -> datetime:
        tz = ZoneInfo(self.timezone)
        return self.start.replace(tzinfo=tz) if self.start.tzinfo is None else self.start

    def occurrence_at_or_after(self, now: datetime) -> datetime | None:
        """Start of the first occurrence that has not ended by `now`."""
        start = self.first_start()
        if start + self.duration > now or self.repeat == "none":
            return start if start + self.duration > now else None
        step = timedelta(days=1 if self.repeat == "daily" else 7)
        n = (now - start - self.duration) // step + 1
        return start + n * step

    def active_at(self, when: datetime) -> bool:
        occ = self.occurrence_at_or_after(when)
        return occ is not None and occ <= when < occ + self.duration


class IcmpSettings(_Model):
    interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    window_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    payload_bytes: Annotated[int, Field(ge=8, le=1472)] = 56


class StampSettings(_Model):
    every_seconds: Annotated[float, Field(ge=10)] = 300.0
    duration_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    rate_pps: Annotated[float, Field(gt=0, le=2000)] = 50.0


class SnmpPollSettings(_Model):
    every_seconds: Annotated[float, Field(ge=5, le=3600)] = 30.0
    timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 1.0
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    max_per_agent: Annotated[int, Field(ge=1, le=16)] = 2


class ThroughputSettings(_Model):
    tests_per_day: Annotated[int, Field(ge=0, le=96)] = 4
    max_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    budget_megabytes_per_day: Annotated[float, Field(gt=0)] = 500.0
    budget_seconds_per_day: Annotated[float, Field(gt=0)] = 120.0


class TraceSettings(_Model):
    every_seconds: Annotated[float, Field(ge=30)] = 300.0
    max_hops: Annotated[int, Field(ge=1, le=64)] = 16
    probes_per_hop: Annotated[int, Field(ge=1, le=10)] = 3


class ProbeSettings(_Model):
    icmp: IcmpSettings = IcmpSettings()
    stamp: StampSettings = StampSettings()
    snmp: SnmpPollSettings = SnmpPollSettings()
    throughput: ThroughputSettings = ThroughputSettings()
    trace: TraceSettings = TraceSettings()


class Defaults(_Model):
    profile: str = "meet-hd"
    snmp: SnmpSettings | None = None

    _snmp_version = field_validator("snmp", mode="before")(_version_as_str)


# ---------------------------------------------------------------------------------------------- inventory
class Inventory(_Model):
    district: Annotated[str, Field(min_length=1)]
    timezone: str = DEFAULT_TZ
    defaults: Defaults = Defaults()
    settings: ProbeSettings = ProbeSettings()
    profiles: list[Profile] = list(DEFAULT_PROFILES)
    kecamatan: list[Kecamatan]
    villages: list[Village]
    sessions: list[Session] = []

    @cached_property
    def _by_slug(self) -> dict[str, Village]:
        return {v.slug: v for v in self.villages}

    def village(self, slug: str) -> Village:
        return self._by_slug[slug]

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
        return [s for s in self.sessions if s.all or village.slug in s.villages or village.kecamatan in s.kecamatan]

    def next_session(self, village: Village, now: datetime) -> tuple[Session, datetime] | None:
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


# ---------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Problem:
    """One thing wrong with an inventory file, located as precisely as the YAML allows."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class InventoryError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _position(root: Any, loc: tuple[Any, ...]) -> tuple[int, int]:
    """1-based line and column of the deepest node of `loc` that exists in the ruamel tree."""
    node = root
    line, col = 0, 0
    for part in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(part, int) and isinstance(node, list) and lc is not None and part < len(node):
                line, col = lc.item(part)
            elif isinstance(node, dict) and lc is not None and part in node:
                line, col = lc.key(part)
            else:
                break
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    return line + 1, col + 1


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _messages(err: ValidationError) -> Iterator[tuple[tuple[Any, ...], str]]:
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
        elif e["type"] == "missing":
            msg = f"missing key {loc[-1]!r}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        yield loc, msg


# Union member names pydantic puts into error locations; they mean nothing to an operator.
_UNION_TAGS = {
    "EnvSecret",
    "FileSecret",
    "2c",
    "3",
    "SnmpV2c",
    "SnmpV3",
    "StampEndpoint",
    "Iperf3Endpoint",
    "IPv4Address",
    "IPv6Address",
    "function-after[_tz_exists(), str]",
}

_ITEM_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "kecamatan": TypeAdapter(Kecamatan),
    "villages": TypeAdapter(Village),
    "profiles": TypeAdapter(Profile),
    "sessions": TypeAdapter(Session),
}


def parse_inventory(
    text: str, filename: str = "<inventory>", *, now: datetime | None = None, strict_time: bool = True
) -> Inventory:
    """Validate an inventory, raising InventoryError with every problem found.

    `strict_time` reports one-off sessions that have already ended (what `inventory check` wants);
    the exporter passes False so that a file that was valid yesterday keeps loading today.
    """
    problems: list[Problem] = []

    def add(loc: tuple[Any, ...], message: str, root: Any = None) -> None:
        line, col = _position(root if root is not None else data, loc)
        where = _path(loc)
        problems.append(Problem(filename, line, col, f"{where}: {message}" if where else message))

    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise InventoryError([Problem(filename, line, col, f"YAML syntax: {exc.problem}")]) from None
    if not isinstance(data, dict):
        raise InventoryError([Problem(filename, 1, 1, "the inventory must be a YAML mapping")])

    # Per item first, so one broken village does not hide the problems of the others.
    items: dict[str, list[tuple[int, Any]]] = {}
    for key, adapter in _ITEM_ADAPTERS.items():
        raw = data.get(key)
        if raw is None:
            continue
        if not isinstance(raw, list):
            add((key,), "must be a list")
            continue
        good: list[tuple[int, Any]] = []
        for i, item in enumerate(raw):
            try:
                good.append((i, adapter.validate_python(item)))
            except ValidationError as err:
                for loc, msg in _messages(err):
                    add((key, i, *loc), msg)
        items[key] = good

    # The rest of the document (district, defaults, settings) with the lists taken out.
    rest = {k: v for k, v in data.items() if k not in _ITEM_ADAPTERS}
    for key in ("kecamatan", "villages"):
        rest[key] = []
    try:
        top = Inventory.model_validate(rest)
    except ValidationError as err:
        top = None
        for loc, msg in _messages(err):
            add(loc, msg)
    for key in ("kecamatan", "villages"):
        if key not in data:
            add((), f"missing key {key!r}")

    kecs = [k for _, k in items.get("kecamatan", [])]
    villages = items.get("villages", [])
    profiles = items.get("profiles") if "profiles" in data else list(enumerate(DEFAULT_PROFILES))
    sessions = items.get("sessions", [])
    profile_names = {p.name for _, p in profiles or []}

    _check_unique(items.get("kecamatan", []), lambda k: k.name.casefold(), "kecamatan", "kecamatan name", add)
    _check_unique(villages, lambda v: v.slug, "villages", "slug", add)
    _check_unique(villages, lambda v: v.router, "villages", "router address", add)
    _check_unique(profiles or [], lambda p: p.name, "profiles", "profile name", add)
    kec_names = {k.name for k in kecs}
    slugs = {v.slug for _, v in villages}
    for i, v in villages:
        if v.kecamatan not in kec_names:
            add(("villages", i, "kecamatan"), f"unknown kecamatan {v.kecamatan!r}" + _suggest(v.kecamatan, kec_names))
        if v.profile is not None and v.profile not in profile_names:
            add(("villages", i, "profile"), f"unknown profile {v.profile!r}" + _suggest(v.profile, profile_names))
        if v.router.is_unspecified or v.router.is_multicast:
            add(("villages", i, "router"), f"{v.router} cannot be a router address")
    if top is not None and top.defaults.profile not in profile_names:
        add(("defaults", "profile"), f"unknown profile {top.defaults.profile!r}")
    if top is not None and top.defaults.snmp is None:
        for i, v in villages:
            if v.snmp is None:
                add(("villages", i), "no SNMP settings here and none under defaults.snmp")

    now = now or datetime.now(ZoneInfo(DEFAULT_TZ))
    for i, s in sessions:
        if not (s.all or s.villages or s.kecamatan):
            add(("sessions", i), "names no villages: give villages, kecamatan or all: true")
        for j, slug in enumerate(s.villages):
            if slug not in slugs:
                add(("sessions", i, "villages", j), f"unknown village {slug!r}" + _suggest(slug, slugs))
        for j, name in enumerate(s.kecamatan):
            if name not in kec_names:
                add(("sessions", i, "kecamatan", j), f"unknown kecamatan {name!r}" + _suggest(name, kec_names))
        if s.profile is not None and s.profile not in profile_names:
            add(("sessions", i, "profile"), f"unknown profile {s.profile!r}" + _suggest(s.profile, profile_names))
        if strict_time and s.repeat == "none" and s.first_start() + s.duration <= now:
            add(
                ("sessions", i, "start"),
                f"session ended in the past ({s.first_start():%Y-%m-%d %H:%M %Z}); remove it or give it a repeat",
            )
    _check_overlaps(sessions, villages, add, now)

    if problems:
        problems.sort(key=lambda p: (p.line, p.col))
        raise InventoryError(problems)
    assert top is not None
    return top.model_copy(
        update={
            "kecamatan": kecs,
            "villages": [v for _, v in villages],
            "profiles": [p for _, p in profiles or []],
            "sessions": [s for _, s in sessions],
        }
    )


def _check_unique(items: list[tuple[int, Any]], key: Any, section: str, what: str, add: Any) -> None:
    seen: dict[Any, int] = {}
    for i, item in items:
        k = key(item)
        if k in seen:
            add((section, i), f"duplicate {what} {str(k)!r} (first at {section}[{seen[k]}])")
        else:
            seen[k] = i


def _check_overlaps(
    sessions: list[tuple[int, Session]], villages: list[tuple[int, Village]], add: Any, now: datetime
) -> None:
    """Two sessions in one village office at once cannot both happen: the office has one link."""
    horizon = now + timedelta(days=14)
    for a_pos, (ia, a) in enumerate(sessions):
        for ib, b in sessions[a_pos + 1 :]:
            shared = [v.slug for _, v in villages if _covers(a, v) and _covers(b, v)]
            if not shared:
                continue
            clash = _first_overlap(a, b, now, horizon)
            if clash is not None:
                add(
                    ("sessions", ib),
                    f"overlaps session {a.title!r} (sessions[{ia}]) at {clash:%Y-%m-%d %H:%M} "
                    f"in {', '.join(shared[:3])}{' …' if len(shared) > 3 else ''}",
                )


def _covers(s: Session, v: Village) -> bool:
    return s.all or v.slug in s.villages or v.kecamatan in s.kecamatan


def _occurrences(s: Session, start: datetime, end: datetime) -> Iterator[datetime]:
    occ = s.occurrence_at_or_after(start)
    step = timedelta(days=1 if s.repeat == "daily" else 7)
    while occ is not None and occ < end:
        yield occ
        if s.repeat == "none":
            return
        occ += step


def _first_overlap(a: Session, b: Session, start: datetime, end: datetime) -> datetime | None:
    start = min(start, a.first_start(), b.first_start())
    end = max(end, a.first_start() + timedelta(days=8), b.first_start() + timedelta(days=8))
    bs = list(_occurrences(b, start, end))
    for oa in _occurrences(a, start, end):
        for ob in bs:
            if oa < ob + b.duration and ob < oa + a.duration:
                return max(oa, ob)
    return None


def _suggest(word: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_inventory(
    path: str | os.PathLike[str], *, now: datetime | None = None, strict_time: bool = False
) -> Inventory:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError([Problem(str(p), 0, 0, f"cannot read: {exc.strerror}")]) from None
    return parse_inventory(text, str(p), now=now, strict_time=strict_time)


def json_schema() -> dict[str, Any]:
    schema = Inventory.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "desanet inventory"
    return schema


def default_inventory_path() -> Path:
    """inventory.yaml beside the package (a source checkout), else /etc/desanet/inventory.yaml."""
    env = os.environ.get("DESANET_INVENTORY")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "inventory.yaml"
    return here if here.exists() else Path("/etc/desanet/inventory.yaml")
