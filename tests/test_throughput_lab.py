"""The throughput probe on the lab's capped links, against the lab's own truth and Debian's iperf3 client.

What a NOC operator relies on: the figure desanet reports for a village link is the link's rate (within 2 %
of the tbf cap it was given, after at most 5 s each way) and no worse than what iperf3 itself would say;
a UDP rehearsal above the cap shows the loss the cap causes and none below it; the budget, session and
uplink rules hold when the real CLI is used; a far end that dies mid-test ends in a clear error in time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from desanet.probes.throughput import ThroughputError, ThroughputResult, ThroughputSettings, probe
from tests.conftest import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

IDEAL = 1448 / 1514  # TCP payload per frame tbf counts (MSS 1448 with timestamps, 14-byte Ethernet header)
CAPPED = "kepatihan"  # kecamatan Banyuwangi: no other lab test touches it
MAX_SECONDS = 5.0


# --------------------------------------------------------------------------------------------- helpers
def _iperf3(lab: Lab, address: str, *, reverse: bool, seconds: int = 5) -> float:
    """Debian's iperf3 client from the NOC: what the receiving end counted (end.sum_received), bit/s."""
    argv = ["iperf3", "-c", address, "-p", "5201", "-t", str(seconds), "-J"]
    if reverse:
        argv.append("-R")
    for _ in range(5):  # the server runs one test at a time; the probe's test may still be closing
        proc = lab.noc(*argv, timeout=seconds + 20)
        data = json.loads(proc.stdout or "{}")
        if "error" not in data and proc.returncode == 0:
            return float(data["end"]["sum_received"]["bits_per_second"])
        time.sleep(0.5)
    raise AssertionError(f"iperf3 failed: {proc.stdout[-500:]} {proc.stderr}")


def _cap(lab: Lab, slug: str, mbit: float, *extra: str) -> None:
    # The 50 ms queue (besides the bucket) these bounds were set with, not the lab's 30 ms default.
    buffers = ("--buffer-ms", "50", "--up-buffer-ms", "50")
    lab.impair(slug, "--restore", "--rate", f"{mbit:g}", "--up-rate", f"{mbit:g}", *buffers, *extra)


def _plan(lab: Lab) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((Path("/run/desanet-lab") / lab.prefix / "state.json").read_text())["plan"]
    return plan


def _tbf_drops(lab: Lab, slug: str) -> tuple[int, int]:
    """(dropped toward the village, dropped toward the NOC) by the link's two tbf qdiscs so far."""
    plan = _plan(lab)
    v = next(v for v in plan["villages"] if v["slug"] == slug)
    kec = next(k for k in plan["kecamatan"] if k["index"] == v["kecamatan"])

    def drops(ns: str, dev: str, parent: str | None = None) -> int:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "tc", "-s", "-j", "qdisc", "show", "dev", dev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        tbfs = [q for q in json.loads(out) if q.get("kind") == "tbf" and (parent is None or q.get("parent") == parent)]
        return sum(int(q.get("drops", 0)) for q in tbfs)

    # The cap toward the NOC is the tbf under the village's htb class on its kecamatan's uplink (lab.Link).
    return drops(kec["ns"], v["kec_if"]), drops(kec["ns"], "uplink", f"1:{v['index']:x}")


# --------------------------------------------------------------------------------------------- TCP goodput
def _misses(res: ThroughputResult, refs: tuple[float, float], cap_mbit: float) -> list[str]:
    """What a run got wrong against the cap and against iperf3 in the same run (empty: nothing)."""
    cap, ideal = cap_mbit * 1e6, cap_mbit * 1e6 * IDEAL
    misses = []
    for name, r, ref in (("down", res.down, refs[0]), ("up", res.up, refs[1])):
        assert r is not None
        if r.seconds > MAX_SECONDS + 0.15:  # one sampling tick of slack
            misses.append(f"{name}: tested {r.seconds:.2f} s")
        if abs(r.link_bits_per_second / cap - 1) > 0.02:
            misses.append(f"{name}: link rate {r.link_bits_per_second / 1e6:.3f} Mbit/s for a {cap_mbit} Mbit/s cap")
        # "As close to the ideal as iperf3": both land within a few tenths of a per cent of it, and which is
        # closer in a given run is noise (bench/throughput, docs/performance.md: ±0.1–1 % either way on this
        # shared 2-core box). So the claim tested is "no further from the ideal than iperf3 + margin", not a
        # strict ordering. The margin is 0.5 %, or one tbf bucket (max(cap × 4 ms, 15140 B)) over the probe's
        # 1.5 s window if that is more: after any pause the bucket refills and passes a burst above the cap,
        # which a 1.5 s window sees in full and iperf3's 5 s average sees a third of (5 Mbit/s: 1.6 %; measured
        # up to +0.9 % up, iperf3 +0.1 %, at 5 Mbit/s).
        margin = max(0.005, max(cap / 8 * 0.004, 15140) * 8 / (1.5 * cap))
        ours, theirs = abs(r.bits_per_second / ideal - 1), abs(ref / ideal - 1)
        if ours > theirs + margin:
            misses.append(f"{name}: goodput {ours:.2%} off the ideal, iperf3 {theirs:.2%}")
    return misses


@pytest.mark.parametrize("cap_mbit", [5, 20, 50, 100])
def test_tcp_link_rate_matches_the_cap_and_iperf3(lab: Lab, cap_mbit: int) -> None:
    address = lab.address(CAPPED)
    _cap(lab, CAPPED, cap_mbit)
    misses: list[list[str]] = []
    try:
        # One re-measurement (both tools) if the first misses: other tenants' CPU bursts on this 2-core VM can
        # land in the probe's 1.5 s window (seen once in ~30 runs at 100 Mbit/s up: 1.1 % off, iperf3 0.5 %).
        # A systematic error misses twice and fails; both attempts are in the message.
        for _ in range(2):
            res = lab.run_in_noc(probe(address, ThroughputSettings(direction="both", max_seconds=MAX_SECONDS)))
            refs = (_iperf3(lab, address, reverse=False), _iperf3(lab, address, reverse=True))  # down, then -R
            misses.append(_misses(res, refs, cap_mbit))
            if not misses[-1]:
                break
    finally:
        lab.restore(CAPPED)
    assert not misses[-1], misses


def test_tcp_with_20ms_rtt_reaches_the_cap_within_5s(lab: Lab) -> None:
    address = lab.address(CAPPED)
    _cap(lab, CAPPED, 20, "--delay", "10", "--up-delay", "10")
    attempts: list[list[str]] = []
    try:
        # One re-measurement if the first misses. The 20 ms comes from the lab's user-space NFQUEUE relay; on
        # this shared 2-core VM at load ~7 it was seen to stall and drop (down: −2.2 % after 3.6 s, once −17 %
        # unsteady at 5 s, in 1 of ~8 runs; bench median −0.10 % after 2.0 s). A probe that cannot reach the
        # cap through 20 ms misses twice.
        for _ in range(2):
            res = lab.run_in_noc(probe(address, ThroughputSettings(direction="both", max_seconds=MAX_SECONDS)))
            assert res.down is not None and res.up is not None
            attempts.append(
                [
                    f"{name}: {r.link_bits_per_second / 1e6:.3f} Mbit/s on the wire after {r.seconds:.2f} s"
                    for name, r in (("down", res.down), ("up", res.up))
                    if r.seconds > MAX_SECONDS + 0.15 or abs(r.link_bits_per_second / 20e6 - 1) > 0.02
                ]
            )
            if not attempts[-1]:
                break
    finally:
        lab.restore(CAPPED)
    assert not attempts[-1], attempts


# --------------------------------------------------------------------------------------------- UDP rehearsal
def test_udp_rehearsal_above_the_cap_loses_what_the_cap_drops(lab: Lab) -> None:
    address = lab.address(CAPPED)
    settings = ThroughputSettings(protocol="udp", udp_bitrate_bps=8e6, udp_packet_bytes=1200, max_seconds=3.0)
    _cap(lab, CAPPED, 5)
    try:
        before = _tbf_drops(lab, CAPPED)
        res = lab.run_in_noc(probe(address, settings))
        after = _tbf_drops(lab, CAPPED)
    finally:
        lab.restore(CAPPED)
    # 1200-byte payloads ride in 1242-byte frames: in steady state the cap passes 5 × 1200/1242 Mbit/s of the
    # 8 offered, a loss of 0.396. A 3 s test also gets the tbf's bucket (15140 B) and its 50 ms queue
    # (31250 B) through on top, which lowers the loss by up to (15140 + 31250) / 3 MB offered = 1.5 %.
    cap_goodput = 5e6 * 1200 / 1242
    for r, dropped in ((res.down, after[0] - before[0]), (res.up, after[1] - before[1])):
        assert r is not None and r.loss_ratio is not None
        offered = 8e6 * r.seconds / 8
        extra = (15140 + 5e6 / 8 * 0.050) / offered
        steady = 1 - cap_goodput / 8e6
        assert steady - extra - 0.005 <= r.loss_ratio <= steady + 0.005, (r, steady, extra)
        # The datagrams the probe counts as lost are the ones the link's tbf dropped (± a few in flight).
        sent = round(offered / 1200)
        assert abs(r.loss_ratio * sent - dropped) <= 0.01 * sent + 5, (r, dropped, sent)
        # Goodput is the cap's payload rate, plus the same bucket and queue spread over the test.
        assert cap_goodput * 0.99 <= r.bits_per_second <= cap_goodput * (1 + extra / (1 - steady)) * 1.01, r


def test_udp_rehearsal_below_the_cap_loses_nothing(lab: Lab) -> None:
    address = lab.address(CAPPED)
    settings = ThroughputSettings(protocol="udp", udp_bitrate_bps=3e6, udp_packet_bytes=1200, max_seconds=3.0)
    _cap(lab, CAPPED, 5)
    losses: list[tuple[float | None, float | None]] = []
    try:
        # The probe's pacer catches up after a CPU stall at up to 2.5× the rate; a stall over ~0.15 s on this
        # loaded VM overflows the tbf's 46 kB (bucket + 50 ms queue) and the link really drops a few datagrams
        # (seen once: 5 of 940 down, exactly the tbf's count). So: whatever is reported lost is what the tbf
        # dropped, every time; and one of two attempts is loss-free both ways.
        for _ in range(2):
            before = _tbf_drops(lab, CAPPED)
            res = lab.run_in_noc(probe(address, settings))
            after = _tbf_drops(lab, CAPPED)
            for r, dropped in ((res.down, after[0] - before[0]), (res.up, after[1] - before[1])):
                assert r is not None and r.loss_ratio is not None
                assert round(r.loss_ratio * 3e6 * r.seconds / 9600) == pytest.approx(dropped, abs=2), (r, dropped)
                assert abs(r.bits_per_second / 3e6 - 1) < 0.02, r
            assert res.down is not None and res.up is not None
            losses.append((res.down.loss_ratio, res.up.loss_ratio))
            if losses[-1] == (0, 0):
                break
    finally:
        lab.restore(CAPPED)
    assert losses[-1] == (0, 0), losses


# --------------------------------------------------------------------------------------------- CLI rules
EXCLUSIVE = ("bangorejo", "sambimulyo")  # both in kecamatan Bangorejo: one uplink


@pytest.fixture
def cli_env(lab: Lab, tmp_path: Path) -> dict[str, str]:
    return {**lab.env, "DESANET_STATE_DIR": str(tmp_path / "state")}


def _cli(lab: Lab, env: dict[str, str], *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", lab.noc_ns, sys.executable, "-m", "desanet.cli", "probe", "throughput", *args]
    argv += ["--inventory", str(inventory or lab.inventory)]
    proc = subprocess.run(argv, env=env, text=True, capture_output=True, timeout=60, check=False)
    proc.stderr = " ".join(proc.stderr.split())  # rich wraps long lines at the terminal width
    return proc


def _inventory_copy(lab: Lab, tmp_path: Path, **changes: Any) -> Path:
    data = yaml.safe_load(lab.inventory.read_text())
    for key, value in changes.items():
        if key == "sessions":
            data["sessions"] = data.get("sessions", []) + value
        else:
            data["settings"]["throughput"].update(value)
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_second_test_on_the_same_uplink_is_refused(lab: Lab, cli_env: dict[str, str]) -> None:
    first, second = EXCLUSIVE
    lock = Path(cli_env["DESANET_STATE_DIR"]) / "locks" / "uplink-bangorejo.lock"
    _cap(lab, first, 20)
    argv = ["ip", "netns", "exec", lab.noc_ns, sys.executable, "-m", "desanet.cli", "probe", "throughput", first]
    # A UDP rehearsal runs its full max_seconds: the first test holds the uplink for a known 3 s.
    argv += ["--udp", "--bitrate", "2", "--direction", "down", "--max-seconds", "3", "--json"]
    argv += ["--inventory", str(lab.inventory)]
    running = subprocess.Popen(argv, env=cli_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            assert running.poll() is None, running.communicate()
            time.sleep(0.05)
        refused = _cli(lab, cli_env, second, "--direction", "down", "--max-seconds", "1")
        out, err = running.communicate(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
        lab.restore(first)
    assert refused.returncode == 1, refused
    assert "uplink busy" in refused.stderr and "Bangorejo" in refused.stderr, refused.stderr
    assert running.returncode == 0, err
    assert json.loads(out)["down"]["loss_ratio"] == 0
    # The lock went with the first test: the uplink is free again.
    again = _cli(lab, cli_env, second, "--direction", "down", "--max-seconds", "1", "--json")
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("starts_in_minutes", [-10, 0.25])
def test_session_window_refused_unless_forced(
    lab: Lab, cli_env: dict[str, str], tmp_path: Path, starts_in_minutes: float
) -> None:
    slug = "singonegaran"
    start = datetime.now(ZoneInfo("Asia/Jakarta")) + timedelta(minutes=starts_in_minutes)
    session = {
        "title": "Rapat uji",
        "start": start.replace(tzinfo=None, microsecond=0).isoformat(),
        "duration_minutes": 60,
        "villages": [slug],
    }
    inv = _inventory_copy(lab, tmp_path, sessions=[session])
    refused = _cli(lab, cli_env, slug, "--direction", "down", "--max-seconds", "1", inventory=inv)
    assert refused.returncode == 1, refused
    assert "refused:" in refused.stderr and "Rapat uji" in refused.stderr, refused.stderr
    assert ("in its scheduled session" if starts_in_minutes < 0 else "within this test's window") in refused.stderr
    _cap(lab, slug, 20)
    try:
        forced = _cli(
            lab, cli_env, slug, "--direction", "down", "--max-seconds", "1", "--force", "--json", inventory=inv
        )
    finally:
        lab.restore(slug)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["down"]["bits_per_second"] > 0


def test_spent_budget_refuses_and_caps_the_test(lab: Lab, cli_env: dict[str, str], tmp_path: Path) -> None:
    slug = "singonegaran"
    inv = _inventory_copy(lab, tmp_path, throughput={"budget_megabytes_per_day": 3})
    _cap(lab, slug, 20)
    try:
        first = _cli(lab, cli_env, slug, "--json", inventory=inv)  # both directions: 1.5 MB each at most
        second = _cli(lab, cli_env, slug, "--json", inventory=inv)
    finally:
        lab.restore(slug)
    assert first.returncode == 0, first.stderr
    ledger = json.loads((Path(cli_env["DESANET_STATE_DIR"]) / "throughput-budget.json").read_text())
    result = json.loads(first.stdout)
    # Each direction gets half the 3 MB. Down, the probe writes and stops at its share exactly.
    assert result["down"]["bytes"] <= 1_500_000, result
    # Up, the village's iperf3 server sends until the probe's TEST_END reaches it, and what its socket buffer
    # and the path already hold still arrives: the probe cannot stop that (iperf3's server ignores a byte
    # limit in reverse mode). Measured on the lab at 20 Mbit/s: 0.3–0.5 MB over the share (~0.2 s of the cap).
    # Bound: 0.5 s of the cap, i.e. the charge is honest (it counts those bytes) but can exceed the budget.
    assert result["up"]["bytes"] <= 1_500_000 + 0.5 * 20e6 / 8, result
    spent = ledger["villages"][slug]["bytes"]
    assert spent == result["down"]["bytes"] + result["up"]["bytes"], (ledger, result)  # charged what it moved
    assert second.returncode == 1, second
    assert "budget is spent" in second.stderr, second.stderr


# --------------------------------------------------------------------------------------------- far end dies
@pytest.mark.parametrize("direction", ["down", "up"])
def test_far_end_dying_mid_test_is_a_clear_error_in_time(lab: Lab, direction: str) -> None:
    slug = "singonegaran"
    address, ns, port = lab.address(slug), lab.village_ns(slug), 5301
    _cap(lab, slug, 20)
    # `ip netns exec` execs iperf3 in place, so this PID is the server's own.
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, "iperf3", "-s", "-B", address, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ss = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln", f"sport = :{port}"], capture_output=True)
            if ss.stdout.strip():
                break
            time.sleep(0.05)
        settings = ThroughputSettings(port=port, direction=direction, max_seconds=5, connect_timeout=2)  # type: ignore[arg-type]
        killer = threading.Timer(1.5, server.kill)
        killer.start()
        t0 = time.monotonic()
        with pytest.raises(ThroughputError) as info:
            lab.run_in_noc(probe(address, settings))
        elapsed = time.monotonic() - t0
        killer.join()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)
        lab.restore(slug)
    message = str(info.value)
    assert message.startswith(f"{direction}:") and "far end" in message, message
    assert elapsed < settings.max_seconds, (elapsed, message)  # noticed when it happened, not at the deadline
    assert info.value.bytes_moved > 0  # what the aborted test cost, for the budget
