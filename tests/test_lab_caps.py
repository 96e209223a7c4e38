"""The lab's links at their real sizes: every village link capped at its contracted rates and every kecamatan
uplink at its uplink_mbit, each with a router-like queue, measured with the tools people trust (iperf3, ping).

What a rehearsal relies on: a clean village's TCP goodput is its contract × 1448/1514 (tbf counts whole frames)
each way; a kecamatan uplink caps the sum of its villages; a saturated link delays packets by about its buffer,
as a real one does; and the lab works out of the box with lab-only SNMP secrets while a real inventory still
refuses a missing one. The tests bring up their own lab (its own prefix and an inventory whose Banyuwangi
uplink is 150 Mbit/s, below its three 100 Mbit/s villages), without any DESANET_SNMP_* variable set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, _have_lab_prerequisites

pytestmark = [pytest.mark.lab, pytest.mark.slow]

IDEAL = 1448 / 1514  # TCP payload per frame tbf counts (MSS 1448 with timestamps, 14-byte Ethernet header)
UPLINK_MBIT = 150  # Banyuwangi's uplink in this module's inventory: below its villages' 3 × 100 Mbit/s
RUN = Path("/run/desanet-lab")
TIME_RE = re.compile(r"time=([\d.]+) ms")


@dataclass
class CapsLab:
    prefix: str
    env: dict[str, str]
    up_stderr: str
    plan: dict[str, Any]

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "desanet.cli", *args],
            env=env or self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def noc(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.plan["noc_ns"], *argv],
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def noc_start(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.plan["noc_ns"], *argv],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def address(self, slug: str) -> str:
        return str(next(v["router"] for v in self.plan["villages"] if v["slug"] == slug))

    def impair(self, *args: str) -> None:
        proc = self.cli("lab", "impair", *args)
        assert proc.returncode == 0, proc.stderr

    def truth(self, window: float) -> dict[str, Any]:
        proc = self.cli("lab", "truth", "--json", "--window", f"{window:.1f}")
        assert proc.returncode == 0, proc.stderr
        out: dict[str, Any] = json.loads(proc.stdout)
        return out


def _no_secrets_env(prefix: str) -> dict[str, str]:
    """The environment of a fresh shell: no DESANET_SNMP_* secret set (conftest's lab fixture may have set them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESANET_SNMP_")}
    return {**env, "DESANET_LAB_PREFIX": prefix}


@pytest.fixture(scope="module")
def caps_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CapsLab]:
    why = _have_lab_prerequisites()
    if why:
        pytest.skip(f"lab: {why}")
    text = (ROOT / "inventory.yaml").read_text()
    assert "{name: Banyuwangi, uplink_mbit: 10000," in text
    inv = tmp_path_factory.mktemp("caps") / "inventory.yaml"
    inv.write_text(
        text.replace("{name: Banyuwangi, uplink_mbit: 10000,", f"{{name: Banyuwangi, uplink_mbit: {UPLINK_MBIT},")
    )
    prefix = f"c{os.getpid() % 100000}"
    env = _no_secrets_env(prefix)
    up = subprocess.run(
        [sys.executable, "-m", "desanet.cli", "lab", "up", "--inventory", str(inv)],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    try:
        assert up.returncode == 0, f"lab up failed: {up.stderr}"
        plan = json.loads((RUN / prefix / "state.json").read_text())["plan"]
        yield CapsLab(prefix, env, up.stderr, plan)
    finally:
        subprocess.run(
            [sys.executable, "-m", "desanet.cli", "lab", "down"], env=env, capture_output=True, timeout=300, check=False
        )


def _iperf3(lab: CapsLab, address: str, *extra: str, seconds: int = 5) -> dict[str, Any]:
    """Debian's iperf3 client in the NOC against the village's iperf3 server; its JSON report."""
    argv = ["iperf3", "-c", address, "-p", "5201", "-t", str(seconds), "-J", *extra]
    for _ in range(5):  # the server runs one test at a time; a previous one may still be closing
        proc = lab.noc(*argv, timeout=seconds + 30)
        data: dict[str, Any] = json.loads(proc.stdout or "{}")
        if proc.returncode == 0 and "error" not in data:
            return data
        time.sleep(0.5)
    raise AssertionError(f"iperf3 {' '.join(extra)} to {address} failed: {proc.stdout[-400:]} {proc.stderr}")


def _ping(lab: CapsLab, address: str, count: int, interval: float = 0.05) -> list[float]:
    proc = lab.noc(
        "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", address, timeout=count * interval + 30
    )
    return [float(m.group(1)) for m in TIME_RE.finditer(proc.stdout)]


# --------------------------------------------------------------------------------------------- secrets
def test_lab_runs_with_lab_only_secrets_and_a_real_inventory_still_refuses(caps_lab: CapsLab) -> None:
    # `lab up` came up with no secret set, and said which lab-only values it gave its agents.
    filled = re.findall(r"(DESANET_SNMP_\w+) is not set: the lab's agents use the lab-only value", caps_lab.up_stderr)
    assert filled, caps_lab.up_stderr
    # `lab exec` passes them on: the village's real snmpd answers a probe run the way the README says.
    polled = caps_lab.cli(
        "lab", "exec", "--", sys.executable, "-m", "desanet.cli", "probe", "snmp", "bangorejo", "--json"
    )
    assert polled.returncode == 0, polled.stderr
    assert json.loads(polled.stdout)["success"] is True
    # Outside the lab the same command still refuses the missing secret, before sending anything.
    refused = caps_lab.cli("probe", "snmp", "bangorejo", "--json")
    assert refused.returncode == 2
    # (bangorejo's secret is the v2c community or the SNMPv3 keys, whichever the inventory's default is)
    assert re.search(r"environment variable DESANET_SNMP_\w+ is not set", refused.stderr), refused.stderr
    # A secret the caller sets wins over the lab's: the lab's agent refuses a wrong one.
    wrong = caps_lab.cli(
        "lab",
        "exec",
        "--",
        sys.executable,
        "-m",
        "desanet.cli",
        "probe",
        "snmp",
        "bangorejo",
        "--json",
        "--timeout",
        "0.3",
        "--retries",
        "0",
        env={**caps_lab.env, **dict.fromkeys(filled, "not-the-lab-secret")},
    )
    assert wrong.returncode == 1 and json.loads(wrong.stdout)["success"] is False


# --------------------------------------------------------------------------------------------- caps
@pytest.mark.parametrize(("slug", "contract_mbit"), [("benculuk", 20), ("genteng-wetan", 50), ("singonegaran", 100)])
def test_clean_village_goodput_is_its_contract_each_way(caps_lab: CapsLab, slug: str, contract_mbit: float) -> None:
    address = caps_lab.address(slug)
    ideal = contract_mbit * 1e6 * IDEAL
    misses: dict[str, list[str]] = {}
    for name, extra in (("down", ()), ("up", ("-R",))):
        # One re-measurement on a miss: other tenants' CPU bursts on this shared 2-core VM can starve a 5 s
        # test (seen at load 8-12: -3.7 % once, then on the ideal). A cap set wrong misses twice.
        for _ in range(2):
            bps = float(_iperf3(caps_lab, address, *extra)["end"]["sum_received"]["bits_per_second"])
            if abs(bps / ideal - 1) <= 0.02:
                misses.pop(name, None)
                break
            misses.setdefault(name, []).append(f"{bps / 1e6:.3f} Mbit/s")
    assert not misses, (misses, f"ideal {ideal / 1e6:.3f} Mbit/s")


def _together(lab: CapsLab, villages: list[str], *extra: str) -> list[float] | None:
    """iperf3 to several villages at once (6 s, the first omitted): each one's goodput, or None if one failed
    to run (its server still closing a previous test)."""
    procs = [
        lab.noc_start("iperf3", "-c", lab.address(s), "-p", "5201", "-t", "6", "-O", "1", "-J", *extra)
        for s in villages
    ]
    outs: list[float] = []
    try:
        for p in procs:
            out, _err = p.communicate(timeout=60)
            data = json.loads(out or "{}")
            if p.returncode != 0 or "error" in data:
                return None
            outs.append(float(data["end"]["sum_received"]["bits_per_second"]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return outs


def test_kecamatan_uplink_caps_the_sum_of_its_villages(caps_lab: CapsLab) -> None:
    villages = [v["slug"] for v in caps_lab.plan["villages"] if v["kecamatan"] == 2]  # Banyuwangi
    assert len(villages) == 3
    ideal = UPLINK_MBIT * 1e6 * IDEAL
    for extra in ((), ("-R",)):
        outs = _together(caps_lab, villages, *extra)
        if outs is None:
            time.sleep(1)
            outs = _together(caps_lab, villages, *extra)
        assert outs is not None, f"iperf3 {extra} failed twice"
        # Each village alone could take 100 Mbit/s; together they get the uplink's 150, not 300.
        assert abs(sum(outs) / ideal - 1) < 0.03, (extra, [o / 1e6 for o in outs], ideal / 1e6)


def test_saturated_link_queues_about_its_buffer(caps_lab: CapsLab) -> None:
    """UDP above the cap fills the tail-drop queue: ping's RTT rises by the buffer (30 ms by default toward
    the village; 300 ms, a cheap CPE's, toward the NOC after `impair --up-buffer-ms 300`)."""
    slug = "cluring"  # 20 Mbit/s both ways
    address = caps_lab.address(slug)
    idle = statistics.median(_ping(caps_lab, address, 20, 0.02))
    caps_lab.impair(slug, "--up-buffer-ms", "300")
    try:
        for extra, buffer_ms, direction in (((), 30.0, "down"), (("-R",), 300.0, "up")):
            t0 = time.monotonic()
            flood = caps_lab.noc_start(
                "iperf3", "-c", address, "-p", "5201", "-u", "-b", "30M", "-l", "1400", "-t", "6", "-J", *extra
            )
            try:
                time.sleep(1.5)  # the queue fills within buffer / (30 - 20 Mbit/s) = 0.1 × buffer
                rtts = _ping(caps_lab, address, 60, 0.05)
            finally:
                out, err = flood.communicate(timeout=30)
            assert flood.returncode == 0, (out[-300:], err)
            udp = json.loads(out)["end"]["sum"]
            # The window reaches back past the flood's start (the CLI takes a moment to ask): the traffic
            # before it is a few idle echoes, none near the cap.
            link = caps_lab.truth(time.monotonic() - t0 + 5)["villages"][slug]["link"][direction]
            # The lab's own account of the same seconds: the cap and buffer in force, a queue about the buffer
            # deep while it was loaded, every datagram iperf3 sent offered to it, and at least the datagrams
            # iperf3 counted lost dropped by its queue (iperf3 counts gaps, so not those after its last arrival:
            # 1.7 % more with a 300 ms queue).
            assert (link["cap_mbit"], link["buffer_ms"]) == (20, buffer_ms), link
            assert 0.85 * buffer_ms <= link["queue_delay_ms_p50"] <= 1.02 * buffer_ms, link
            assert link["dropped_loss_packets"] == link["dropped_blackhole_packets"] == 0, link
            sent = udp["packets"] + 60 + 20  # the datagrams, this flood's echoes, the idle ones before
            assert abs(link["offered_packets"] - sent) <= 0.01 * sent, (link, udp)
            # (2 % slack: on a loaded VM the kernel's per-CPU backlog may drop a few itself, outside any queue)
            lost = udp["lost_packets"] + 60 - len(rtts)
            assert link["dropped_queue_packets"] >= 0.98 * lost, (link, udp, len(rtts))
            assert abs(link["passed_bytes"] * 8 / 20e6 - 6) < 0.5, link  # 6 s at the cap (±sampling edges)
            # 30 Mbit/s offered to 20: the full tail-drop queue drops a third of what comes, echoes included.
            assert len(rtts) >= 20, rtts
            rise = statistics.median(rtts) - idle
            # The queue holds `buffer` of the cap's bytes; an echo waits behind nearly all of it.
            assert 0.85 * buffer_ms <= rise <= 1.1 * buffer_ms + 2, (extra, rise, buffer_ms)
    finally:
        caps_lab.impair(slug, "--restore")


def test_truth_counts_drops_by_cause_and_keeps_its_old_keys(caps_lab: CapsLab) -> None:
    """Loss-rule drops (its nftables counter) are the echoes ping lost; a cut's drops are the echoes sent;
    `lab truth --json` still has every key it had before per-link counters."""
    lossy, cut = "gambiran", "blimbingsari"
    caps_lab.impair(lossy, "--loss", "30")
    caps_lab.impair(cut, "--down")
    try:
        t0 = time.monotonic()
        got = _ping(caps_lab, caps_lab.address(lossy), 200, 0.01)
        _ping(caps_lab, caps_lab.address(cut), 20, 0.01)
        truth = caps_lab.truth(time.monotonic() - t0 + 1)
    finally:
        caps_lab.impair(lossy, "--restore")
        caps_lab.impair(cut, "--restore")
    v = truth["villages"][lossy]
    assert v["link"]["down"]["dropped_loss_packets"] == 200 - len(got)  # every echo ping lost, none more
    assert v["link"]["down"]["dropped_blackhole_packets"] == 0
    c = truth["villages"][cut]["link"]
    assert c["down"]["dropped_blackhole_packets"] == 20 and c["down"]["passed_packets"] == 0, c
    assert c["up"]["dropped_blackhole_packets"] == 0  # nothing reached the village to answer
    # Backward compatible: the keys of before, with `link` added.
    assert set(v) == {"kecamatan", "address", "configured", "applied", "link"}
    assert {"packets", "dropped", "delay_ms_p50", "delay_ms_mean", "ipdv_ms_mean_abs"} <= set(v["applied"]["up"])
    assert {"delay_ms", "jitter_ms", "loss_pct", "rate_mbit", "buffer_ms"} <= set(v["configured"]["down"])
    assert set(truth) >= {"window_seconds", "villages", "kecamatan"}
    assert set(truth["kecamatan"]["Gambiran"]) >= {"configured", "applied", "link"}


def test_whole_district_comes_up_capped_within_a_minute_and_goes_down_clean(tmp_path: Path) -> None:
    """217 villages in 25 kecamatan (the district's real size), every link capped, all agents running."""
    why = _have_lab_prerequisites()
    if why:
        pytest.skip(f"lab: {why}")
    inv = tmp_path / "district.yaml"
    subprocess.run(
        [sys.executable, "-m", "desanet.cli", "inventory", "synth", "--villages", "217", "-o", str(inv)],
        check=True,
        capture_output=True,
    )
    prefix = f"d{os.getpid() % 100000}"
    env = _no_secrets_env(prefix)
    t0 = time.monotonic()
    up = subprocess.run(
        [sys.executable, "-m", "desanet.cli", "lab", "up", "--inventory", str(inv)],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    elapsed = time.monotonic() - t0
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((RUN / prefix / "state.json").read_text())
        pids = [e["pid"] for e in state["pids"].values()]
        assert elapsed <= 60, f"lab up took {elapsed:.1f} s"
        nss = [state["plan"]["core_ns"], *(k["ns"] for k in state["plan"]["kecamatan"])]
        qdiscs = []
        for ns in nss:
            out = subprocess.run(["tc", "-n", ns, "-j", "qdisc", "show"], capture_output=True, text=True, check=True)
            qdiscs += json.loads(out.stdout)
        tbf = [q for q in qdiscs if q.get("kind") == "tbf"]
        leaves = [q for q in tbf if str(q.get("parent", "")).startswith("1:")]  # under a village's htb class
        # Each village: a tbf toward it and one under its htb class from it; each uplink: a tbf each way.
        assert (len(tbf), len(leaves)) == (2 * 217 + 2 * 25, 217)
        assert sum(1 for q in qdiscs if q.get("kind") == "htb") == 25
        assert len(pids) == 3 + 2 * 217  # emulator, sampler, reflectors; snmpd and iperf3 in each village
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "desanet.cli", "lab", "down"], env=env, text=True, capture_output=True, timeout=300
        )
    assert down.returncode == 0, down.stderr
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}-")]
    assert not (RUN / prefix).exists()
    for pid in pids:  # gone, or a zombie awaiting its parent
        with contextlib.suppress(FileNotFoundError):
            assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", pid
