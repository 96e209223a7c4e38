"""The district inventory's schema: kecamatan, villages, routers, profiles, sessions and probe settings.

Pydantic models, frozen and strict about unknown keys, so a typo in a key is an error and not a silent
default. Each field's description is what `desanet inventory schema` gives editors. Field checks raise
ValueError with words for the operator; district/load.py places them at FILE:LINE:COL and adds the
cross-checks (duplicate slugs, unknown kecamatan or profile, overlapping sessions).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from desanet.district.names import SLUG_RE, _show, _suggest, slugify
from desanet.district.secrets import SecretRef

DEFAULT_TZ = "Asia/Jakarta"

# Keys whose values are secrets (or references to them): no message ever repeats what was written there.
_SECRET_KEYS = frozenset({"community", "auth_key", "priv_key"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    max_rtt_ms: Annotated[float, Field(gt=0, description="Ready up to this round-trip time, ms.")] = 200.0
    max_jitter_ms: Annotated[float, Field(gt=0, description="Ready up to this jitter, ms.")] = 30.0
    max_loss_pct: Annotated[float, Field(ge=0, le=100, description="Ready up to this round-trip packet loss, %.")] = 3.0
    fail_rtt_ms: Annotated[float, Field(gt=0, description="Not ready from this round-trip time, ms.")] = 400.0
    fail_jitter_ms: Annotated[float, Field(gt=0, description="Not ready from this jitter, ms.")] = 40.0
    fail_loss_pct: Annotated[
        float, Field(ge=0, le=100, description="Not ready from this round-trip packet loss, %.")
    ] = 20.0
    video_packet_bytes: Annotated[
        int, Field(ge=44, le=1472, description="UDP payload of the test packets that imitate the call's video.")
    ] = 1200
    dscp: Annotated[
        int, Field(ge=0, le=63, description="DSCP of the test packets (34 = AF41, RFC 4594 interactive video).")
    ] = 34
    # The picture a real call of this profile sends (desanet lab call, the rehearsal page): what the vendor
    # sends at its minimum bandwidth. The defaults are a 360p webcam call; the built-in profiles say theirs.
    video_width: Annotated[int, Field(ge=160, le=3840, multiple_of=2, description="Call video width, pixels.")] = 640
    video_height: Annotated[int, Field(ge=90, le=2160, multiple_of=2, description="Call video height, pixels.")] = 360
    video_fps: Annotated[int, Field(ge=5, le=60, description="Call video frame rate, frames per second.")] = 30
    video_kbit: Annotated[
        int, Field(ge=100, le=20000, description="Most a call's video sends, kbit/s (its start bitrate is 80 %).")
    ] = 1000


DEFAULT_PROFILES: tuple[Profile, ...] = (
    Profile(
        name="meet-hd",
        description="Google Meet HD, up to 5 participants (3.2 up, 3.2 down)",
        min_down_mbit=3.2,
        min_up_mbit=3.2,
        video_width=1280,
        video_height=720,
        video_kbit=2600,
    ),
    Profile(
        name="teams-meeting",
        description="Microsoft Teams 2-party meeting video (4 / 4)",
        min_down_mbit=4.0,
        min_up_mbit=4.0,
        video_width=1920,
        video_height=1080,
        video_kbit=3200,
    ),
    Profile(
        name="zoom-gallery",
        description="Zoom group call, gallery view or 720p (1.5 / 1.5)",
        min_down_mbit=1.5,
        min_up_mbit=1.5,
        # Chromium's VP8 sends 640x360 at 1.2 Mbit/s whether asked for 1280x720 or 960x540 (measured on a clean
        # lab link, quiet host: "bandwidth" both times), so a call of this profile is judged against 360 lines.
        video_width=640,
        video_height=360,
        video_kbit=1200,
    ),
    Profile(
        name="zoom-1080p",
        description="Zoom group call at 1080p (2.5 down, 3.0 up)",
        min_down_mbit=2.5,
        min_up_mbit=3.0,
        video_width=1920,
        video_height=1080,
        video_kbit=2400,
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


class OnDemandThroughputSettings(_Model):
    """Throughput tests asked for through /probe?module=throughput. Whoever can reach /probe can ask, so they
    are off unless enabled, spend their own, smaller part of the village's daily budget, and are rate limited
    per village."""

    enabled: Annotated[
        bool, Field(description="Allow /probe?module=throughput; off, such a request is refused (HTTP 403).")
    ] = False
    max_seconds: Annotated[float, Field(gt=0, le=10, description="Longest on-demand test per direction, seconds.")] = (
        3.0
    )
    budget_megabytes_per_day: Annotated[
        float,
        Field(
            gt=0,
            description="Most data on-demand tests may move per village per day, megabytes; part of "
            "budget_megabytes_per_day, not on top of it.",
        ),
    ] = 50.0
    budget_seconds_per_day: Annotated[
        float,
        Field(
            gt=0, description="Most on-demand test time per village per day, seconds; part of budget_seconds_per_day."
        ),
    ] = 20.0
    min_interval_seconds: Annotated[
        float,
        Field(ge=0, le=86400, description="Least time between the starts of two on-demand tests of one village."),
    ] = 900.0


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
    on_demand: Annotated[
        OnDemandThroughputSettings,
        Field(description="Tests through /probe?module=throughput: off unless enabled, with their own allowance."),
    ] = OnDemandThroughputSettings()

    @model_validator(mode="after")
    def _on_demand_is_a_part(self) -> ThroughputSettings:
        # Checked only when enabled: a lowered daily budget must not make the unused defaults an error.
        od = self.on_demand
        problems = [
            f"on_demand.{key} ({getattr(od, key):g}) is more than {key} ({getattr(self, key):g}): on-demand tests "
            "spend part of the daily budget, not more"
            for key in ("budget_megabytes_per_day", "budget_seconds_per_day")
            if od.enabled and getattr(od, key) > getattr(self, key)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self


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


def _covers(s: Session, v: Village) -> bool:
    return s.all or v.slug in s.villages or v.kecamatan in s.kecamatan
