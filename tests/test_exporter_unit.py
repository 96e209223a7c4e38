"""The exporter's pure parts: exposition text, sharding, web config and basic auth, logfmt."""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest

from desanet.district import parse_inventory
from desanet.exporter.exposition import Exposition, FamilySpec, LineBuilder, escape, number
from desanet.exporter.logfmt import LogfmtFormatter
from desanet.exporter.metrics import SPECS, render_village
from desanet.exporter.scheduler import in_shard
from desanet.exporter.state import RTT_BUCKETS, VillageState
from desanet.exporter.webconfig import Authenticator, WebConfigError, parse_web_config

ROOT = Path(__file__).resolve().parent.parent


def test_label_values_are_escaped() -> None:
    assert escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (0.5, "0.5"),
        (2.0, "2"),
        (True, "1"),
        (False, "0"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
        (1e-6, "1e-06"),
    ],
)
def test_numbers(value: float, text: str) -> None:
    assert number(value) == text


def test_histogram_lines_are_cumulative_and_end_in_inf() -> None:
    fam = FamilySpec("x_seconds", "histogram", "h")
    b = LineBuilder('village="a"')
    b.histogram(fam, (0.1, 1.0), [2, 3, 1], 4.5)
    assert b.out["x_seconds"] == [
        'x_seconds_bucket{village="a",le="0.1"} 2\n',
        'x_seconds_bucket{village="a",le="1"} 5\n',
        'x_seconds_bucket{village="a",le="+Inf"} 6\n',
        'x_seconds_sum{village="a"} 4.5\n',
        'x_seconds_count{village="a"} 6\n',
    ]


def test_families_stay_grouped_when_villages_come_and_go() -> None:
    a, b = FamilySpec("m_a", "gauge", "A"), FamilySpec("m_b", "gauge", "B")
    ex = Exposition([a, b])
    for key in ("v1", "v2"):
        lb = LineBuilder(f'village="{key}"')
        lb.sample(a, 1)
        lb.sample(b, 2)
        ex.put(key, lb)
    ex.drop("v1")
    text = ex.render()
    assert text.index("m_a{") < text.index("# HELP m_b")
    assert 'village="v1"' not in text and text.count("# TYPE") == 2


def _small_inventory() -> str:
    return """
district: Test
defaults: {profile: meet-hd, snmp: {version: 2c, community: {env: X}}}
kecamatan: [{name: Licin, uplink_mbit: 1000, lat: -8.2, lon: 114.2}]
villages:
  - {name: "Licin \\"Kota\\"", slug: licin, kind: desa, kecamatan: Licin, router: 10.1.1.1, lat: -8.2, lon: 114.2,
     contracted: {down_mbit: 20, up_mbit: 10}}
"""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (scripts/setup.sh)")
def test_rendered_village_passes_promtool() -> None:
    from desanet.verdict import readiness as rd

    inv = parse_inventory(_small_inventory(), strict_time=False)
    vs = VillageState.create(inv.villages[0])
    vs.profiles = list(inv.profiles[:2])
    for rtt in (0.0004, 0.012, 0.2, None, 3.0):
        vs.observe_rtt("icmp", rtt)
    vs.readiness = {
        p.name: rd.assess(rd.Measurements(rtt_p95_seconds=0.05, jitter_seconds=0.01, loss_ratio=0.0), p)
        for p in vs.profiles
    }
    vs.status("snmp").record(False, 1.0, "timeout")
    ex = Exposition(list(SPECS))
    ex.put("licin", render_village(vs))
    text = ex.render()
    assert 'desanet_rtt_seconds_count{village="licin",kecamatan="Licin",method="icmp"} 4' in text
    assert f'le="{RTT_BUCKETS[-1]:g}"' in text
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shards_cover_every_village_exactly_once() -> None:
    slugs = [f"v{i:05d}" for i in range(2000)]
    for n in (1, 2, 3, 7):
        owners = [[k for k in range(1, n + 1) if in_shard(s, (k, n))] for s in slugs]
        assert all(len(o) == 1 for o in owners)
        if n > 1:  # and roughly evenly
            sizes = [sum(1 for o in owners if o == [k]) for k in range(1, n + 1)]
            assert max(sizes) < 1.25 * len(slugs) / n


def test_web_config_basic_auth(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"rahasia", bcrypt.gensalt(rounds=4)).decode()
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  noc: {hashed}\n")
    auth = Authenticator(parse_web_config(cfg))

    def header(user: str, pw: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()

    assert auth.check(header("noc", "rahasia"))
    assert auth.check(header("noc", "rahasia"))  # cached path
    assert not auth.check(header("noc", "salah"))
    assert not auth.check(header("other", "rahasia"))
    assert not auth.check(None)
    assert not auth.check("Basic !!!notbase64")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("basic_auth_users:\n  noc: plaintext\n", "not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: a.pem\n", "needs cert_file and key_file"),
        ("unknown: 1\n", "unknown keys"),
        ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS99}\n", "unknown TLS version"),
    ],
)
def test_bad_web_configs_are_refused(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text(text)
    with pytest.raises(WebConfigError, match=message):
        parse_web_config(cfg)


def test_logfmt_quotes_and_keeps_extras() -> None:
    rec = logging.makeLogRecord(
        {
            "name": "desanet.x",
            "levelname": "WARNING",
            "msg": "probe failed",
            "village": "licin",
            "reason": 'timeout "2 s"',
        }
    )
    line = LogfmtFormatter().format(rec)
    assert 'msg="probe failed"' in line and "village=licin" in line and 'reason="timeout \\"2 s\\""' in line


def test_every_exported_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    missing = [s.name for s in SPECS if f"`{s.name}`" not in doc]
    assert not missing, f"add to docs/metrics.md: {missing}"
