"""Province scale-out: two `desanet serve --shard K/2` processes, each scraped by its own Prometheus (agent mode)
that remote-writes into one VictoriaMetrics, cover every village exactly once in the store.

Builds its own two namespaces (not the shared lab), as tests/test_icmp_isolation.py does: a probing side, and a
far side that answers ICMP on every synthetic village address through one AnyIP local route. Everything runs
in the probing namespace on 127.0.0.1; every process is stopped by its PID and both namespaces are deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from desanet.exporter.scheduler import in_shard

pytestmark = [pytest.mark.lab, pytest.mark.slow]

VILLAGES = 60
VM = "127.0.0.1:18429"


def _ip(*argv: str, input_: str | None = None) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, input=input_)


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def test_two_shards_remote_written_cover_every_village_once(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for cmd in ("victoria-metrics", "prometheus"):
        if shutil.which(cmd) is None:
            pytest.skip(f"needs {cmd} (scripts/setup.sh)")
    tmp_path.chmod(0o755)
    noc, far = f"dtshard-noc-{os.getpid()}", f"dtshard-far-{os.getpid()}"
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "desanet.cli",
                "inventory",
                "synth",
                "--villages",
                str(VILLAGES),
                "--kecamatan",
                "6",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    slugs = {f"v{i + 1:05d}" for i in range(VILLAGES)}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(tmp_path / f"{name}.log", "wb") as log:
            procs.append(
                subprocess.Popen(["ip", "netns", "exec", noc, *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
            )

    def query(q: str) -> list[dict[str, object]]:
        url = f"http://{VM}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        out = subprocess.run(
            ["ip", "netns", "exec", noc, "curl", "-s", "--max-time", "10", url], capture_output=True, text=True
        )
        return json.loads(out.stdout)["data"]["result"]

    try:
        _ip("netns", "add", noc)
        _ip("netns", "add", far)
        _ip("link", "add", "n0", "netns", noc, "type", "veth", "peer", "name", "f0", "netns", far)
        _ip(
            "-n",
            noc,
            "-batch",
            "-",
            input_="link set lo up\nlink set n0 up\naddr add 10.255.4.1/30 dev n0\n"
            "route add 10.64.0.0/10 via 10.255.4.2\n",
        )
        _ip(
            "-n",
            far,
            "-batch",
            "-",
            input_="link set lo up\nlink set f0 up\naddr add 10.255.4.2/30 dev f0\n"
            "route add local 10.64.0.0/10 dev lo\n",
        )
        start(
            "vm",
            [
                "victoria-metrics",
                f"-httpListenAddr={VM}",
                f"-storageDataPath={tmp_path / 'vm'}",
                "-search.latencyOffset=1s",
            ],
        )
        env = {**os.environ, "DESANET_SNMP_COMMUNITY": "unused", "DESANET_STATE_DIR": str(tmp_path)}
        for k in (1, 2):
            listen = f"127.0.0.1:{19930 + k}"
            start(
                f"serve{k}",
                [
                    sys.executable,
                    "-m",
                    "desanet.cli",
                    "serve",
                    "--inventory",
                    str(inv),
                    "--probes",
                    "icmp",
                    "--web.listen-address",
                    listen,
                    "--shard",
                    f"{k}/2",
                ],
                env,
            )
            cfg = tmp_path / f"agent{k}.yml"
            cfg.write_text(
                "global: {scrape_interval: 2s}\n"
                f"remote_write: [{{url: 'http://{VM}/api/v1/write'}}]\n"
                f"scrape_configs: [{{job_name: desanet, static_configs: [{{targets: ['{listen}']}}]}}]\n"
            )
            start(
                f"agent{k}",
                [
                    "prometheus",
                    "--enable-feature=agent",
                    f"--config.file={cfg}",
                    f"--storage.agent.path={tmp_path / f'agent{k}'}",
                    f"--web.listen-address=127.0.0.1:{19940 + k}",
                ],
            )
        answered: dict[str, str] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and set(answered) != slugs:
            time.sleep(3)
            with contextlib.suppress(json.JSONDecodeError, KeyError, ValueError):
                rows = query('desanet_rtt_seconds_count{method="icmp"} > 0')
                answered = {r["metric"]["village"]: r["metric"]["instance"] for r in rows}  # type: ignore[index]
        info = query("desanet_village_info")
        per_village = query("count by (village) (desanet_village_info)")
    finally:
        for p in reversed(procs):
            _stop(p)
        for ns in (noc, far):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    logs = {p.name: p.read_text()[-800:] for p in tmp_path.glob("*.log")}
    # Every village is in the store, probed and answered, from exactly one shard: the one its slug hashes to.
    assert set(answered) == slugs, (sorted(slugs - set(answered))[:10], logs)
    assert {r["metric"]["village"] for r in info} == slugs  # type: ignore[index]
    assert all(r["value"][1] == "1" for r in per_village), [r for r in per_village if r["value"][1] != "1"]  # type: ignore[index]
    for slug, instance in answered.items():
        k = int(instance.rsplit(":", 1)[1]) - 19930
        assert in_shard(slug, (k, 2)), (slug, instance)
    assert {i for i in answered.values()} == {"127.0.0.1:19931", "127.0.0.1:19932"}
