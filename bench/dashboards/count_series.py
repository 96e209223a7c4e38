"""Series per village on a live scrape of the shipped inventory in the lab: lean (the default) and detail.

Not a test: it prints the figures docs/metrics.md and docs/performance.md quote. Root; it brings up the lab
under its own prefix (every village of the inventory as a namespace with its router, snmpd, STAMP reflector
and iperf3 server), runs `desanet serve` in the lab's NOC namespace on 127.0.0.1, waits until every village
has a verdict and an SNMP and STAMP result and the first traces have run, scrapes, counts the series per
family, stops the exporter (by PID) and takes the lab down.

    python bench/dashboards/count_series.py                       # lean, then --metrics.detail
    python bench/dashboards/count_series.py --modes lean --json /tmp/series.json
    python bench/dashboards/count_series.py --rev 1b8823d --modes lean  # an older commit's exporter

A scrape by `promtool check metrics` is part of it: the output must be clean.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# The lab accepts these SNMP secrets (what the tests use; tests/conftest.py LAB_SECRETS).
SECRETS = {
    "DESANET_SNMP_COMMUNITY": "desanet-test-community",
    "DESANET_SNMP_AUTH_KEY": "desanet-test-auth",
    "DESANET_SNMP_PRIV_KEY": "desanet-test-priv",
}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ")
SUFFIXES = ("_bucket", "_sum", "_count")


def desanet(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desanet.cli", *args], env=env, text=True, capture_output=True, timeout=timeout
    )


def scrape(noc: str, listen: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", noc, "curl", "-s", "-m", "20", f"http://{listen}/metrics"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout


def count(text: str) -> dict[str, Any]:
    """Series in a scrape: per family (histogram lines under their family), and how many carry a village."""
    families: collections.Counter[str] = collections.Counter()
    villages: set[str] = set()
    per_village = 0
    total = 0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m is None:
            continue
        total += 1
        name = m.group(1)
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name.startswith("desanet_rtt_seconds"):
                name = name[: -len(suffix)]
        families[name] += 1
        v = re.search(r'village="([^"]*)"', m.group(2) or "")
        if v:
            villages.add(v.group(1))
            per_village += 1
    n = max(1, len(villages))
    return {
        "villages": len(villages),
        "series_total": total,
        "series_with_village": per_village,
        "per_village": round(per_village / n, 1),
        "total_per_village": round(total / n, 1),
        "bytes": len(text.encode()),
        "families": dict(families.most_common()),
    }


def ready(text: str, villages: int) -> bool:
    """Every village has a verdict and an SNMP and STAMP run behind it."""

    def n(pattern: str) -> int:
        return len(set(re.findall(pattern, text)))

    verdicts = n(r'desanet_video_verdict\{village="([^"]+)"')
    snmp = n(r'desanet_probe_success\{village="([^"]+)",kecamatan="[^"]+",probe="snmp"\}')
    stamp = n(r'desanet_probe_success\{village="([^"]+)",kecamatan="[^"]+",probe="stamp"\}')
    return verdicts >= villages and snmp >= villages and stamp >= villages


def run(
    mode: str,
    env: dict[str, str],
    inventory: Path,
    noc: str,
    listen: str,
    settle: float,
    limit: float,
    code: Path | None = None,
) -> dict[str, Any]:
    from desanet.district import load_inventory

    villages = len(load_inventory(inventory).villages)
    args = ["serve", "--inventory", str(inventory), "--web.listen-address", listen]
    if mode == "detail":
        args.append("--metrics.detail")
    with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "serve.log").open("w") as log:
        # An older commit's code runs from its own directory (`python -m` puts the working directory first).
        extra = {"PYTHONPATH": str(code)} if code else {}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", noc, sys.executable, "-m", "desanet.cli", *args],
            env={**env, **extra, "DESANET_STATE_DIR": tmp},
            cwd=code or None,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            t0 = time.monotonic()
            text = ""
            while time.monotonic() - t0 < limit:
                time.sleep(5)
                text = scrape(noc, listen)
                if ready(text, villages) and time.monotonic() - t0 >= settle:
                    break
            else:
                raise SystemExit(f"{mode}: not every village reported within {limit:.0f} s")
            time.sleep(5)
            text = scrape(noc, listen)
            result = count(text)
            result["mode"] = mode
            result["seconds_after_start"] = round(time.monotonic() - t0)
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            result["promtool"] = "clean" if check.returncode == 0 else (check.stdout + check.stderr).strip()
            return result
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inventory", type=Path, help="default: the inventory.yaml of the code that runs")
    ap.add_argument("--prefix", default="cs", help="lab namespace prefix (default cs)")
    ap.add_argument("--modes", nargs="+", default=["lean", "detail"], choices=["lean", "detail"])
    ap.add_argument("--listen", default="127.0.0.1:19918")
    ap.add_argument("--settle", type=float, default=150, help="seconds to run at least: the first traces run by then")
    ap.add_argument("--limit", type=float, default=420, help="seconds to wait for every village at most")
    ap.add_argument("--rev", help="run this git revision's exporter (lean mode means its whole output)")
    ap.add_argument("--json", type=Path)
    opts = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    env = {**os.environ, **SECRETS, "DESANET_LAB_PREFIX": opts.prefix}
    noc = f"{opts.prefix}-noc"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="desanet-rev-") as tmp:
        code = None
        if opts.rev:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", opts.rev], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            code = Path(tmp)
        # The lab (this checkout's) is built from the inventory the measured code reads: an older commit's
        # exporter may not know a newer inventory's fields.
        opts.inventory = opts.inventory or (code or ROOT) / "inventory.yaml"
        up = desanet(env, "lab", "up", "--inventory", str(opts.inventory))
        if up.returncode != 0:
            raise SystemExit(f"lab up failed: {up.stderr}")
        try:
            measure(opts, env, noc, code, results)
        finally:
            desanet(env, "lab", "down")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2) + "\n")


def measure(opts: argparse.Namespace, env: dict[str, str], noc: str, code: Path | None, results: list[Any]) -> None:
    """Each mode in turn on the lab that is up: its counts printed and appended to `results`."""
    for mode in opts.modes:
        r = run(mode, env, opts.inventory, noc, opts.listen, opts.settle, opts.limit, code)
        r["rev"] = opts.rev or "working tree"
        results.append(r)
        top = ", ".join(f"{k} {v}" for k, v in list(r["families"].items())[:8])
        print(
            f"{mode}: {r['villages']} villages, {r['series_total']} series ({r['bytes'] / 1000:.0f} kB), "
            f"{r['per_village']} a village ({r['total_per_village']} counting the exporter's own); "
            f"promtool {r['promtool']}; largest: {top}",
            flush=True,
        )


if __name__ == "__main__":
    main()
