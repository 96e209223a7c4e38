"""The inventory: good and bad files (blackbox_exporter style), the CLI, the schema, synth, sessions and secrets.

Each file in testdata/inventories/bad/ states what `desanet inventory check` must say about it in leading
comments, one per problem, in the order they are printed:

    # expect: LINE:COL: message

The test runs every file through load_inventory and through the real CLI and wants exactly those problems,
at exactly those positions. To add a case, write the YAML and its expect lines; the numbers count every line
of the file, the comments included.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from desanet.district import (
    DEFAULT_PROFILES,
    EnvSecret,
    FileSecret,
    Inventory,
    InventoryError,
    Problem,
    SecretError,
    Session,
    SnmpV2c,
    SnmpV3,
    json_schema,
    load_inventory,
    parse_inventory,
    resolve_secret,
    slugify,
)
from desanet.district.synth import synth_inventory
from desanet.district.targets import TargetError, find_village

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "testdata" / "inventories"
GOOD = sorted((DATA / "good").glob("*.yaml"))
BAD = sorted((DATA / "bad").glob("*.yaml"))
SHIPPED = ROOT / "inventory.yaml"
EXPECT_RE = re.compile(r"^# expect: (\d+):(\d+): (.+)$")
JAKARTA = ZoneInfo("Asia/Jakarta")


def desanet(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it."""
    exe = Path(sys.executable).parent / "desanet"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from desanet.cli.app import main; main()"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def expectations(path: Path) -> list[str]:
    """The `LINE:COL: message` lines a bad file promises."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m = EXPECT_RE.match(line)
        if m:
            out.append(f"{m[1]}:{m[2]}: {m[3]}")
    return out


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(InventoryError) as info:
        load_inventory(path, strict_time=True)
    return info.value.problems


def test_the_corpus_is_big_enough() -> None:
    assert len(BAD) >= 24
    assert {"minimal.yaml", "full.yaml"} <= {p.name for p in GOOD}
    for path in BAD:
        assert expectations(path), f"{path.name} states no '# expect: LINE:COL: message'"


# ---------------------------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_reports_exactly_its_problems(path: Path) -> None:
    problems = problems_of(path)
    assert all(p.file == str(path) for p in problems)
    assert [f"{p.line}:{p.col}: {p.message}" for p in problems] == expectations(path)
    assert [(p.line, p.col) for p in problems] == sorted((p.line, p.col) for p in problems), "not sorted by line"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_parse_inventory_agrees_with_load(path: Path) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(path.read_text(encoding="utf-8"), "inv.yaml")
    assert [f"{p.line}:{p.col}: {p.message}" for p in info.value.problems] == expectations(path)
    assert str(info.value).splitlines() == [f"inv.yaml:{e}" for e in expectations(path)]


@pytest.fixture(scope="module")
def cli_all_bad() -> subprocess.CompletedProcess[str]:
    """One `desanet inventory check` over every bad file (a process per file would take a minute on 2 CPUs)."""
    return desanet("inventory", "check", *map(str, BAD))


def cli_lines(run: subprocess.CompletedProcess[str], path: Path) -> list[str]:
    return [line for line in run.stdout.splitlines() if line.startswith(f"{path}:")]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_through_the_cli(path: Path, cli_all_bad: subprocess.CompletedProcess[str]) -> None:
    assert cli_all_bad.returncode == 1, cli_all_bad.stderr
    assert cli_lines(cli_all_bad, path) == [f"{path}:{e}" for e in expectations(path)]
    n = len(expectations(path))
    assert f"{path}: {n} problem{'s' if n != 1 else ''}" in cli_all_bad.stderr.splitlines()


def test_the_cli_prints_nothing_else(cli_all_bad: subprocess.CompletedProcess[str]) -> None:
    assert len(cli_all_bad.stdout.splitlines()) == sum(len(expectations(p)) for p in BAD)
    assert len(cli_all_bad.stderr.splitlines()) == len(BAD), cli_all_bad.stderr


@pytest.mark.parametrize("name", ["yaml-syntax.yaml", "empty.yaml", "unknown-key.yaml", "sessions-overlap.yaml"])
def test_one_bad_file_alone_exits_1(name: str) -> None:
    path = DATA / "bad" / name
    run = desanet("inventory", "check", str(path))
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines() == [f"{path}:{e}" for e in expectations(path)]


def test_several_files_at_once_report_each_and_fail() -> None:
    good, bad = DATA / "good" / "minimal.yaml", DATA / "bad" / "duplicate-slug.yaml"
    run = desanet("inventory", "check", str(good), str(bad))
    assert run.returncode == 1
    assert f"{good}: ok (1 kecamatan, 1 villages, 4 profiles, 0 sessions)" in run.stdout
    assert f"{bad}:{expectations(bad)[0]}" in run.stdout


def test_zero_byte_file_and_missing_file() -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory("", "x.yaml")
    assert (
        str(info.value) == "x.yaml:1:1: the file is empty: an inventory needs at least district, kecamatan and villages"
    )
    with pytest.raises(InventoryError) as info:
        load_inventory(DATA / "no-such-file.yaml")
    assert str(info.value) == f"{DATA / 'no-such-file.yaml'}: cannot read: No such file or directory"


INLINE_SECRETS = {
    "inline-community.yaml": ["public"],
    "inline-v3-key.yaml": ["rahasia-auth-2026", "12345678"],
    "secret-bad-shape.yaml": ["SNMP_AUTH", "1SNMP-PRIV", "/etc/desanet/auth"],
}


@pytest.mark.parametrize("name", sorted(INLINE_SECRETS))
def test_messages_never_repeat_what_was_written_as_a_secret(
    name: str, cli_all_bad: subprocess.CompletedProcess[str]
) -> None:
    path = DATA / "bad" / name
    for secret in INLINE_SECRETS[name]:
        assert secret not in "".join(cli_lines(cli_all_bad, path))
        for p in problems_of(DATA / "bad" / name):
            assert secret not in p.message


# ---------------------------------------------------------------------------------------------- good files
@pytest.mark.parametrize("path", [*GOOD, SHIPPED], ids=lambda p: p.stem)
def test_good_file_loads_and_the_cli_says_ok(path: Path) -> None:
    inv = load_inventory(path, strict_time=True)
    assert inv.villages and inv.kecamatan
    run = desanet("inventory", "check", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"{path}: ok (")


def test_quiet_check_of_good_files_prints_nothing() -> None:
    run = desanet("inventory", "check", "--quiet", *map(str, GOOD))
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def test_full_featured_file_means_what_it_says() -> None:
    inv = load_inventory(DATA / "good" / "full.yaml")
    sarongan, kepatihan = inv.village("sarongan"), inv.village("kepatihan")
    v3 = inv.snmp_for(inv.village("pesanggaran"))
    assert isinstance(v3, SnmpV3) and v3.version == "3" and v3.auth_protocol == "SHA256"
    assert v3.auth_key == FileSecret(file="${CREDENTIALS_DIRECTORY}/snmp-auth")
    v2 = inv.snmp_for(sarongan)
    assert isinstance(v2, SnmpV2c) and v2.port == 1161 and v2.community == EnvSecret(env="SNMP_COMMUNITY_SARONGAN")
    assert inv.village("pesanggaran").iperf3_address() == ("10.115.1.2", 5202)
    assert inv.village("pesanggaran").stamp_address() == ("10.115.1.1", 862)
    assert sarongan.stamp_address() is None and sarongan.iperf3_address() is None
    assert kepatihan.address == "2001:db8:102::1" and kepatihan.stamp_address() == ("2001:db8:102::2", 862)
    assert inv.profile_for(kepatihan).name == "teams-3party" and inv.profile_for(sarongan).name == "meet-hd"
    assert inv.profile("teams-3party").max_rtt_ms == 80 and inv.profile("teams-3party").video_packet_bytes == 1100
    assert inv.settings.icmp.interval_seconds == 0.5 and inv.settings.snmp.max_per_agent == 4
    assert [s.title for s in inv.sessions_for(kepatihan)] == [
        "Rapat koordinasi Bupati dan kepala desa",
        "Rapat dengan provinsi (WITA)",
        "Musrenbang Kabupaten 2099",
    ]
    assert [s.repeat for s in inv.sessions] == ["daily", "weekly", "weekly", "none"]
    with pytest.raises(KeyError):
        inv.village("nowhere")
    with pytest.raises(KeyError):
        inv.profile("nothing")


def test_minimal_file_gets_the_defaults() -> None:
    inv = load_inventory(DATA / "good" / "minimal.yaml")
    assert inv.timezone == "Asia/Jakarta"
    assert inv.profiles == list(DEFAULT_PROFILES)
    assert inv.profile_for(inv.villages[0]).name == "meet-hd"
    assert inv.settings.stamp.every_seconds == 300 and inv.settings.throughput.tests_per_day == 4
    assert inv.sessions == []


def test_shipped_inventory() -> None:
    inv = load_inventory(SHIPPED)
    assert inv.district == "Kabupaten Banyuwangi"
    assert len(inv.kecamatan) == 25
    assert len({v.slug for v in inv.villages}) == len(inv.villages)
    assert {v.kecamatan for v in inv.villages} == {k.name for k in inv.kecamatan}, "a kecamatan without a village"
    assert SHIPPED.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=./inventory.schema.json\n")


def test_default_profiles_are_the_calibrated_ones() -> None:
    """Ready up to RTT 200 ms, jitter 30 ms, round-trip loss 3 %; not ready beyond 400 ms, 40 ms, 20 %. RTT and loss
    were Teams' 100 ms / 1 % and G.114's 150 ms / 3 % until the calibration against real calls through the lab
    (docs/readiness.md) showed calls holding well past them; jitter's 30/40 ms stayed (no call disagreed)."""
    by_name = {p.name: p for p in DEFAULT_PROFILES}
    assert (by_name["meet-hd"].min_down_mbit, by_name["meet-hd"].min_up_mbit) == (3.2, 3.2)
    assert (by_name["teams-meeting"].min_down_mbit, by_name["teams-meeting"].min_up_mbit) == (4.0, 4.0)
    assert (by_name["zoom-gallery"].min_down_mbit, by_name["zoom-gallery"].min_up_mbit) == (1.5, 1.5)
    assert (by_name["zoom-1080p"].min_down_mbit, by_name["zoom-1080p"].min_up_mbit) == (2.5, 3.0)
    for p in DEFAULT_PROFILES:
        assert (p.max_rtt_ms, p.max_jitter_ms, p.max_loss_pct) == (200, 30, 3)
        assert (p.fail_rtt_ms, p.fail_jitter_ms, p.fail_loss_pct) == (400, 40, 20)
        assert p.dscp == 34
    shipped = load_inventory(SHIPPED)
    assert shipped.profiles == [
        p.model_copy(update={"description": q.description})
        for p, q in zip(DEFAULT_PROFILES, shipped.profiles, strict=True)
    ]


# ---------------------------------------------------------------------------------------------- loading details
MINIMAL = (DATA / "good" / "minimal.yaml").read_text(encoding="utf-8")


def with_sessions(yaml_sessions: str, head: str = MINIMAL) -> str:
    return head + "sessions:\n" + yaml_sessions


def test_a_past_one_off_session_fails_the_check_but_loads_in_the_exporter() -> None:
    text = with_sessions("  - {title: Old, start: 2020-01-06T09:00:00, duration_minutes: 60, all: true}\n")
    with pytest.raises(InventoryError, match="session ended in the past"):
        parse_inventory(text)
    inv = parse_inventory(text, strict_time=False)
    assert inv.sessions[0].occurrence_at_or_after(datetime(2026, 1, 1, tzinfo=UTC)) is None
    # What counts as past is decided by `now`.
    assert parse_inventory(text, now=datetime(2020, 1, 6, 9, 59, tzinfo=JAKARTA)).sessions[0].title == "Old"
    with pytest.raises(InventoryError):
        parse_inventory(text, now=datetime(2020, 1, 6, 10, 0, tzinfo=JAKARTA))


def test_sessions_take_the_inventory_time_zone_unless_they_name_one() -> None:
    head = MINIMAL.replace(
        "district: Kabupaten Banyuwangi\n", "district: Kabupaten Banyuwangi\ntimezone: Asia/Makassar\n"
    )
    inv = parse_inventory(
        with_sessions(
            "  - {title: A, start: 2026-01-05T09:00:00, duration_minutes: 60, repeat: weekly, all: true}\n"
            "  - {title: B, start: 2026-01-05T09:00:00, duration_minutes: 60, repeat: weekly, all: true,"
            " timezone: Asia/Jakarta}\n",
            head,
        )
    )
    a, b = inv.sessions
    assert a.timezone == "Asia/Makassar" and b.timezone == "Asia/Jakarta"
    assert b.first_start() - a.first_start() == timedelta(hours=1)  # 09:00 WIB is 10:00 WITA
    assert (
        parse_inventory(with_sessions("  - {title: C, start: 2099-01-05T09:00:00, duration_minutes: 1, all: true}\n"))
        .sessions[0]
        .timezone
        == "Asia/Jakarta"
    )


def test_an_offset_in_start_wins_over_the_time_zone() -> None:
    inv = parse_inventory(
        with_sessions("  - {title: A, start: 2099-01-05 09:00:00+08:00, duration_minutes: 60, all: true}\n")
    )
    assert inv.sessions[0].first_start() == datetime(2099, 1, 5, 8, 0, tzinfo=JAKARTA)


def test_snmp_version_may_be_written_as_a_number() -> None:
    text = MINIMAL.replace(
        "snmp: {version: 2c, community: {env: DESANET_SNMP_COMMUNITY}}",
        "snmp: {version: 3, user: u, auth_key: {env: A}, priv_key: {file: /run/p}}",
    )
    snmp = parse_inventory(text).defaults.snmp
    assert isinstance(snmp, SnmpV3) and snmp.version == "3" and snmp.priv_key == FileSecret(file="/run/p")
    no_version = MINIMAL.replace("{version: 2c, community:", "{community:")
    assert isinstance(parse_inventory(no_version).defaults.snmp, SnmpV2c)


def test_touching_sessions_do_not_overlap_but_one_minute_more_does() -> None:
    base = "  - {title: A, start: 2099-01-05T09:00:00, duration_minutes: 60, repeat: daily, all: true}\n"
    parse_inventory(
        with_sessions(base + "  - {title: B, start: 2099-01-07T10:00:00, duration_minutes: 30, all: true}\n")
    )
    with pytest.raises(
        InventoryError,
        match=r"sessions\[1\]: overlaps session 'A' \(sessions\[0\], line 18\) at "
        r"2099-01-07 09:59 WIB in pesanggaran",
    ):
        parse_inventory(
            with_sessions(base + "  - {title: B, start: 2099-01-07T09:59:00, duration_minutes: 30, all: true}\n")
        )


def test_repeating_sessions_that_meet_only_after_both_started() -> None:
    # A weekly Monday session and a daily one that starts a year later: they meet on the first Monday after.
    inv_text = with_sessions(
        "  - {title: W, start: 2026-01-05T09:00:00, duration_minutes: 60, repeat: weekly, all: true}\n"
        "  - {title: D, start: 2027-01-06T09:30:00, duration_minutes: 10, repeat: daily, all: true}\n"
    )
    with pytest.raises(InventoryError, match="at 2027-01-11 09:30 WIB"):
        parse_inventory(inv_text)


def test_the_exporter_loads_leniently_about_time_only() -> None:
    path = DATA / "bad" / "many-problems.yaml"
    strict = problems_of(path)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)  # strict_time=False, as the exporter loads
    assert len(strict) == len(expectations(path)) == 10
    assert [p for p in strict if "ended in the past" not in p.message] == info.value.problems
    assert all(isinstance(p, Problem) and p.line > 0 and p.col > 0 for p in strict)


# ---------------------------------------------------------------------------------------------- schema
def walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def test_schema_command_prints_the_schema_that_is_committed() -> None:
    run = desanet("inventory", "schema")
    assert run.returncode == 0
    schema = json.loads(run.stdout)
    assert schema == json_schema()
    committed = json.loads((ROOT / "inventory.schema.json").read_text(encoding="utf-8"))
    assert committed == schema, "inventory.schema.json is stale: desanet inventory schema > inventory.schema.json"


def test_schema_is_useful_to_an_editor() -> None:
    schema = json_schema()
    assert schema["$schema"].endswith("2020-12/schema") and schema["title"] == "desanet inventory"
    assert {"Village", "Kecamatan", "Session", "Profile", "SnmpV2c", "SnmpV3", "EnvSecret", "FileSecret"} <= set(
        schema["$defs"]
    )
    objects = [n for n in walk(schema) if n.get("type") == "object"]
    assert len(objects) == len(schema["$defs"]) + 1
    assert all(o.get("additionalProperties") is False for o in objects), "typos would pass unflagged"
    for node in walk(schema):
        ref = node.get("$ref")
        if isinstance(ref, str):
            assert ref.removeprefix("#/$defs/") in schema["$defs"], ref
    assert schema["required"] == ["district", "kecamatan", "villages"]
    village = schema["$defs"]["Village"]
    assert set(village["required"]) == {"name", "slug", "kind", "kecamatan", "router", "lat", "lon", "contracted"}
    for name, prop in village["properties"].items():
        assert prop.get("description") or "$ref" in prop, f"Village.{name} has no description for the editor"
    # What YAML makes of what operators write must not be flagged: `version: 3` is an int, starts have no offset.
    assert 3 in schema["$defs"]["SnmpV3"]["properties"]["version"]["enum"]
    start = schema["$defs"]["Session"]["properties"]["start"]
    assert "format" not in start
    for ok in ("2026-12-03T09:00:00", "2026-12-03 09:00:00+07:00", "2026-12-03T09:00:00Z", "2026-12-03"):
        assert re.match(start["pattern"], ok), ok
    assert not re.match(start["pattern"], "Senin depan")
    assert "null" in schema["properties"]["sessions"]["type"]


def yaml_as_json(path: Path) -> Any:
    from ruamel.yaml import YAML

    def conv(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): conv(v) for k, v in x.items()}
        if isinstance(x, list):
            return [conv(v) for v in x]
        if isinstance(x, datetime):
            return x.isoformat(sep=" ")
        return x

    return conv(YAML(typ="rt").load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", [*GOOD, SHIPPED], ids=lambda p: p.stem)
def test_good_files_pass_the_schema_too(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(json_schema()).validate(yaml_as_json(path))


def test_docs_cover_every_key_of_the_schema() -> None:
    doc = (ROOT / "docs" / "inventory.md").read_text(encoding="utf-8")
    schema = json_schema()
    keys = set(schema["properties"])
    for d in schema["$defs"].values():
        keys |= set(d.get("properties", {}))
    prose = re.sub(r"```.*?```", "", doc, flags=re.S)
    code = " ".join(re.findall(r"`([^`]+)`", prose))  # `icmp.interval_seconds` and `{env: NAME}` count
    missing = sorted(k for k in keys if not re.search(rf"(?<![\w-]){k}(?![\w-])", code))
    assert not missing, f"docs/inventory.md does not mention {missing}"


# ---------------------------------------------------------------------------------------------- synth
@pytest.mark.parametrize("n", [1, 217, 1000])
def test_synth_gives_a_valid_inventory(n: int) -> None:
    inv = parse_inventory(synth_inventory(n), f"synth-{n}.yaml")
    assert len(inv.villages) == n
    assert len(inv.kecamatan) == min(n, 25)
    assert len({v.slug for v in inv.villages}) == n
    assert len({v.router for v in inv.villages}) == n
    assert {v.kecamatan for v in inv.villages} == {k.name for k in inv.kecamatan}


def test_synth_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "synth.yaml"
    run = desanet("inventory", "synth", "--villages", "160", "--kecamatan", "150", "--output", str(out))
    assert run.returncode == 0, run.stderr
    assert "wrote 160 villages in 150 kecamatan" in run.stderr
    inv = load_inventory(out)
    assert len(inv.villages) == 160 and len(inv.kecamatan) == 150
    assert all(not v.address.startswith(("10.254.", "10.255.")) for v in inv.villages), "clashes with the lab core"
    assert desanet("inventory", "synth", "--villages", "3", "--kecamatan", "151").returncode != 0


def test_synth_refuses_what_its_address_plan_cannot_hold() -> None:
    with pytest.raises(ValueError):
        synth_inventory(0)
    with pytest.raises(ValueError):
        synth_inventory(10, kecamatan=151)
    with pytest.raises(ValueError):
        synth_inventory(62_501, kecamatan=1)


# ---------------------------------------------------------------------------------------------- sessions
def session(**kw: Any) -> Session:
    base: dict[str, Any] = {
        "title": "Rapat",
        "start": datetime(2026, 12, 1, 13, 0),
        "duration_minutes": 90,
        "all": True,
    }
    return Session.model_validate(base | kw)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A wall-clock time in Jakarta (WIB)."""
    return datetime(year, month, day, hour, minute, tzinfo=JAKARTA)


def test_session_time_zone_defaults_to_jakarta() -> None:
    s = session()
    assert s.timezone == "Asia/Jakarta"
    assert s.first_start() == at(2026, 12, 1, 13, 0) == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert s.duration == timedelta(minutes=90)


def test_one_off_session() -> None:
    s = session()
    assert s.occurrence_at_or_after(at(2026, 11, 1)) == at(2026, 12, 1, 13, 0)
    assert s.occurrence_at_or_after(at(2026, 12, 1, 14, 29)) == at(2026, 12, 1, 13, 0)  # still running
    assert s.occurrence_at_or_after(at(2026, 12, 1, 14, 30)) is None  # the end is not part of it
    assert not s.active_at(at(2026, 12, 1, 12, 59))
    assert s.active_at(at(2026, 12, 1, 13, 0))
    assert s.active_at(datetime(2026, 12, 1, 7, 29, tzinfo=UTC))
    assert not s.active_at(at(2026, 12, 1, 14, 30))


def test_weekly_session() -> None:
    s = session(repeat="weekly")  # Tuesdays 13:00-14:30 WIB from 1 December 2026
    assert s.occurrence_at_or_after(at(2026, 12, 1, 14, 30)) == at(2026, 12, 8, 13, 0)
    assert s.occurrence_at_or_after(at(2026, 12, 8, 14, 0)) == at(2026, 12, 8, 13, 0)
    assert s.occurrence_at_or_after(at(2027, 3, 10, 0, 0)) == at(2027, 3, 16, 13, 0)
    assert s.occurrence_at_or_after(at(2026, 1, 1)) == at(2026, 12, 1, 13, 0)  # never before the first
    assert s.active_at(at(2027, 3, 16, 14, 29))
    assert not s.active_at(at(2027, 3, 17, 13, 30))
    # The same instant in another zone: 06:00 UTC is 13:00 WIB.
    assert s.active_at(datetime(2027, 3, 16, 6, 0, tzinfo=UTC))
    assert s.occurrence_at_or_after(datetime(2027, 3, 16, 7, 30, tzinfo=UTC)) == at(2027, 3, 23, 13, 0)


def test_daily_session_in_another_zone() -> None:
    s = session(repeat="daily", start=datetime(2026, 12, 1, 8, 0), duration_minutes=30, timezone="Asia/Jayapura")
    assert s.first_start() == at(2026, 12, 1, 6, 0)  # 08:00 WIT is 06:00 WIB
    assert s.occurrence_at_or_after(at(2026, 12, 5, 6, 30)) == at(2026, 12, 6, 6, 0)
    assert s.occurrence_at_or_after(at(2026, 12, 5, 6, 29)) == at(2026, 12, 5, 6, 0)
    assert s.active_at(at(2026, 12, 31, 6, 15)) and not s.active_at(at(2026, 12, 31, 7, 0))


def test_a_naive_now_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        session().occurrence_at_or_after(datetime(2026, 12, 1, 13, 0))


def test_bad_session_fields() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'WITA' \\(did you mean 'Asia/Makassar'\\?\\)"):
        session(timezone="WITA")
    with pytest.raises(ValueError):
        session(repeat="monthly")
    with pytest.raises(ValueError):
        session(duration_minutes=0)


def test_next_session_and_in_session() -> None:
    inv = parse_inventory(
        with_sessions(
            "  - {title: Weekly, start: 2026-12-01T13:00:00, duration_minutes: 90, repeat: weekly, all: true}\n"
            "  - {title: Daily, start: 2026-12-01T07:30:00, duration_minutes: 30, repeat: daily,"
            " villages: [pesanggaran]}\n"
            "  - {title: Elsewhere, start: 2026-12-01T10:00:00, duration_minutes: 30, repeat: daily,"
            " kecamatan: [Pesanggaran]}\n"
        ),
        now=at(2026, 11, 1),
    )
    v = inv.village("pesanggaran")
    assert [s.title for s in inv.sessions_for(v)] == ["Weekly", "Daily", "Elsewhere"]
    s, when = inv.next_session(v, at(2026, 12, 8, 8, 0)) or (None, None)
    assert s is not None and (s.title, when) == ("Elsewhere", at(2026, 12, 8, 10, 0))
    s, when = inv.next_session(v, at(2026, 12, 8, 12, 0)) or (None, None)
    assert s is not None and (s.title, when) == ("Weekly", at(2026, 12, 8, 13, 0))
    s, when = inv.next_session(v, at(2026, 12, 8, 7, 45)) or (None, None)  # running now counts as next
    assert s is not None and (s.title, when) == ("Daily", at(2026, 12, 8, 7, 30))
    assert inv.in_session(v, at(2026, 12, 8, 7, 45)).title == "Daily"  # type: ignore[union-attr]
    assert inv.in_session(v, at(2026, 12, 8, 14, 0)).title == "Weekly"  # type: ignore[union-attr]
    assert inv.in_session(v, at(2026, 12, 8, 9, 0)) is None
    lonely = parse_inventory(MINIMAL)
    assert lonely.next_session(lonely.villages[0], at(2026, 12, 8)) is None
    assert lonely.in_session(lonely.villages[0], at(2026, 12, 8)) is None


# ---------------------------------------------------------------------------------------------- secrets
def test_resolve_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESANET_TEST_COMMUNITY", "s3cret-community")
    assert resolve_secret(EnvSecret(env="DESANET_TEST_COMMUNITY")) == "s3cret-community"
    monkeypatch.setenv("DESANET_TEST_COMMUNITY", "")
    with pytest.raises(SecretError, match="environment variable DESANET_TEST_COMMUNITY is not set"):
        resolve_secret(EnvSecret(env="DESANET_TEST_COMMUNITY"))
    monkeypatch.delenv("DESANET_TEST_COMMUNITY")
    with pytest.raises(SecretError, match="DESANET_TEST_COMMUNITY"):
        resolve_secret(EnvSecret(env="DESANET_TEST_COMMUNITY"))


def test_resolve_file_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "snmp-priv"
    f.write_text("  rahasia-priv  \nsecond line is ignored\n", encoding="utf-8")
    assert resolve_secret(FileSecret(file=str(f))) == "rahasia-priv"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert resolve_secret(FileSecret(file="${CREDENTIALS_DIRECTORY}/snmp-priv")) == "rahasia-priv"
    f.write_text("\n", encoding="utf-8")
    with pytest.raises(SecretError) as info:
        resolve_secret(FileSecret(file=str(f)))
    assert str(info.value) == f"secret file {f} is empty"
    with pytest.raises(SecretError) as info:
        resolve_secret(FileSecret(file=str(tmp_path / "missing")))
    assert str(info.value) == f"cannot read secret file {tmp_path / 'missing'}: No such file or directory"


def test_a_file_path_naming_a_secret_variable_never_echoes_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`{file: $DESANET_SNMP_COMMUNITY}` once expanded to the community and quoted it in every error."""
    monkeypatch.setenv("DESANET_SNMP_COMMUNITY", "rel-community")
    with pytest.raises(ValueError) as info:
        FileSecret(file="$DESANET_SNMP_COMMUNITY")
    assert "rel-community" not in str(info.value) and "{env: DESANET_SNMP_COMMUNITY}" in str(info.value)
    path = tmp_path / "inv.yaml"
    path.write_text(MINIMAL.replace("{env: DESANET_SNMP_COMMUNITY}", '{file: "${DESANET_SNMP_COMMUNITY}/x"}'))
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    assert "rel-community" not in str(err.value) and "not $DESANET_SNMP_COMMUNITY" in str(err.value)
    # Built without validation, the reference is still refused when read, before any path is opened.
    sneaky = FileSecret.model_construct(file="$DESANET_SNMP_COMMUNITY")
    with pytest.raises(ValueError) as info:
        resolve_secret(sneaky)
    assert "rel-community" not in str(info.value)
    # A directory variable that is not set is named, not opened as a literal path.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SecretError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        resolve_secret(FileSecret(file="${CREDENTIALS_DIRECTORY}/snmp-community"))


def test_secret_values_never_reach_a_repr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DESANET_SNMP_COMMUNITY", "s3cret-community")
    (tmp_path / "auth").write_text("rahasia-auth\n", encoding="utf-8")
    inv = load_inventory(DATA / "good" / "full.yaml")
    v2 = inv.snmp_for(inv.village("sarongan"))
    assert isinstance(v2, SnmpV2c)
    monkeypatch.setenv("SNMP_COMMUNITY_SARONGAN", "s3cret-sarongan")
    assert resolve_secret(v2.community) == "s3cret-sarongan"
    text = repr(inv) + str(inv) + inv.model_dump_json() + repr(v2)
    assert "s3cret" not in text and "rahasia" not in text
    assert "SNMP_COMMUNITY_SARONGAN" in repr(v2)  # the reference is what shows
    # A secret typed inline into Python is refused too, and the refusal does not quote it.
    with pytest.raises(ValueError) as info:
        SnmpV2c.model_validate({"community": "s3cret-inline"})
    assert "secret written inline" in str(info.value)
    assert "s3cret-inline" not in "".join(e["msg"] for e in info.value.errors())  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- targets
@pytest.fixture(scope="module")
def shipped() -> Inventory:
    return load_inventory(SHIPPED)


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("pesanggaran", "pesanggaran"),
        ("Pesanggaran", "pesanggaran"),
        ("PESANGGARAN ", "pesanggaran"),
        ("Genteng Kulon", "genteng-kulon"),
        ("genteng_wetan", "genteng-wetan"),
        ("Kalibaru Manis", "kalibaru-manis"),
        ("bajul mati", "bajulmati"),
        ("kedungasri", "kedungasri"),
        ("Lemahbang Dewo", "lemahbang-dewo"),
    ],
)
def test_find_village(shipped: Inventory, text: str, slug: str) -> None:
    assert find_village(shipped, text).slug == slug


def test_find_village_forgives_a_dropped_letter(shipped: Inventory) -> None:
    assert find_village(shipped, "pesangaran").slug == "pesanggaran"


def test_find_village_unknown_gives_candidates(shipped: Inventory) -> None:
    with pytest.raises(TargetError) as info:
        find_village(shipped, "genteng")
    assert "genteng" in str(info.value)
    assert {"genteng-kulon", "genteng-wetan"} <= set(info.value.candidates)
    with pytest.raises(TargetError) as info:
        find_village(shipped, "xyzzy")
    assert info.value.candidates == []


def test_find_village_ambiguous_offers_both(shipped: Inventory) -> None:
    with pytest.raises(TargetError, match="kalibaru") as info:
        find_village(shipped, "kalibaru")
    assert {"kalibaru-manis", "kalibaru-wetan"} <= set(info.value.candidates)


TWO_SUMBERAGUNG = MINIMAL + (
    "  - {name: Sumberagung, slug: sumberagung-pesanggaran, kind: desa, kecamatan: Pesanggaran, router: 10.115.3.1,"
    " lat: -8.6, lon: 114.1, contracted: {down_mbit: 20, up_mbit: 20}}\n"
    "  - {name: Sumberagung, slug: sumberagung-muncar, kind: desa, kecamatan: Pesanggaran, router: 10.114.3.1,"
    " lat: -8.4, lon: 114.3, contracted: {down_mbit: 20, up_mbit: 20}}\n"
)


def test_find_village_same_name_in_two_kecamatan_is_ambiguous() -> None:
    inv = parse_inventory(TWO_SUMBERAGUNG)
    with pytest.raises(TargetError) as info:
        find_village(inv, "Sumberagung")
    assert info.value.candidates == ["sumberagung-muncar", "sumberagung-pesanggaran"]


def test_slugify() -> None:
    assert slugify("Genteng Kulon") == "genteng-kulon"
    assert slugify("  Lemahbang_Dewo!! ") == "lemahbang-dewo"
    assert slugify("???") == "x"


@pytest.mark.parametrize(
    "path", [ROOT / "inventory.yaml", *sorted((ROOT / "tests/testdata/inventories/good").glob("*.yaml"))]
)
def test_fast_and_positioned_readers_agree(path: Path) -> None:
    """The libyaml first read must give the very inventory the ruamel read (used for messages) gives."""
    from desanet.district import load as inv_mod

    text = path.read_text()
    fast = inv_mod._load_yaml_fast(text)
    assert fast is not inv_mod._SLOW
    slow = inv_mod._load_yaml(text, str(path))
    assert inv_mod._parse(fast, str(path), now=None, strict_time=False) == inv_mod._parse(
        slow, str(path), now=None, strict_time=False
    )


@pytest.mark.parametrize("text", ["a: yes\n", "a: 1:30\n", "a: 1\na: 2\n", "a: [1\n"])
def test_fast_reader_defers_what_yaml_1_1_would_read_differently(text: str) -> None:
    from desanet.district import load as inv_mod

    data = inv_mod._load_yaml_fast(text)
    assert data is inv_mod._SLOW or data == {"a": "yes"} or data == {"a": "1:30"}
