"""What desanet's latency, jitter and loss figures are worth, against iputils ping and the lab's ground truth.

The lab's emulator records, per packet, the delay it actually applied and every packet it dropped; these tests
hold desanet's ICMP and STAMP results to that record over exactly the packets desanet sent (the truth window is
aligned to the train's send times and every echo must be accounted for), unloaded and while the same process
probes 1,000 other targets and a CPU-bound thread fights its event loop for the GIL.

How the comparisons are made fair:
- Jitter is imposed toward the village only; the way back is untouched. RTT = base + down delay, with a base of
  about 0.1 ms that barely varies, so RTT p50 = base p50 + applied p50 (the median of a sum is the sum of
  medians only when one term is almost constant) and the mean adds exactly.
- The base is measured by a train run at the same time, in the same engine, to a village of the same topology
  (four veth hops each way) that also passes through the emulator, with the least hold it applies (0.001 ms
  asked, ~0.2 ms applied): base = its RTT minus the hold the lab recorded for it. Why not an unimpaired
  village: the lab records a packet's applied delay as the time *after* its verdict syscall returns minus its
  arrival, and that syscall reinjects and forwards the packet (often the echo reply too) before it returns,
  so the record overstates the hold by 50-300 µs, more under load (lab/emulator.py `_release_due`). With an
  unimpaired base desanet read 50-300 µs *below* "truth" and broke the 0.3 ms bound one run in a few; the
  reference's own record carries the same overstatement, so it cancels.
- The lab's IPDV is over one direction's delays in the order the emulator released them (arrival order);
  desanet's is over RTTs in send order. They are the same sequence when (a) the other direction adds only a
  near-constant base and (b) nothing is reordered, which the lab's jitter, a FIFO by default, guarantees
  (docs/lab.md). Trains are still max(10 ms, 2.5 J) apart, so each echo's applied delay is the one it drew
  rather than a wait behind an earlier echo's (under load the engine's late bursts queue some now and
  then). Lost echoes leave both sequences alike: the lab lists only what passed, desanet skips what did not
  come back.
- RFC 3550 jitter is a running filter with gain 1/16 that remembers the last few dozen packets, so it is not
  held to the lab's mean |IPDV| over the whole train: simulated with uniform jitter, its own sampling noise
  against that is 13 % (1 σ), so a 30 % bound fails a correct implementation 1.5 % of the time per check, and
  far more often on this busy VM, where the emulator's late releases give the applied delays a heavy tail (a
  ±1 ms jitter showed a 2.1 ms mean |IPDV|). Instead the lab's per-packet applied delays of the last 48
  echoes are recovered from nested truth windows (each window's count is checked) and the same filter is run
  over them, started from the whole train's mean |IPDV| (whose weight by the end is (15/16)^47 = 5 %). The
  filter is written here, independently of probes/stats.py. Under load the engine sends late echoes in
  bursts, too close together to split windows between them; then the reference falls back to the lab's mean
  |IPDV| over a tail window starting at the widest gap near 48 echoes from the end (noisier: see above).
- Under load it is the engine's schedule, not its figures, that suffers: every socket call releases the GIL and
  then waits up to the 5 ms switch interval to get it back from the spinning thread, so in one run the loop
  managed ~9 wakeups a second, sends went out up to 1.4 s late and a 2 s train took 28 s. Kernel stamps keep
  each RTT right regardless; user-space stamps read the RTT 6-18 ms high at p50.
- Loss: desanet's lost echoes must be exactly the packets the lab dropped; the imposed rate must lie in the
  99.9 % Wilson interval (z = 3.29). The realised count is random: a 95 % interval would miss the imposed rate
  one run in twenty by construction, and this module checks it eight times.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import statistics
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from desanet.lab.emulator import request as emulator_request
from desanet.lab.lab import state_dir
from desanet.probes.icmp import IcmpEngine, IcmpResult, IcmpSettings, probe
from desanet.probes.stamp import StampSettings
from desanet.probes.stamp import probe as stamp_probe
from desanet.probes.stats import binomial_interval
from tests.conftest import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TIME_RE = re.compile(r"icmp_seq=(\d+) .*time=([\d.]+) ms")
COUNT = 200
LOSS_PCT = 5.0
TAIL = 48  # echoes whose applied delays are recovered for the RFC 3550 reference
LOAD_TARGETS = 1000
WILSON_Z = 3.29  # 99.9 %
QUIET = 0.5  # seconds before each train in which nothing else is sent to its villages (CLI calls, warm-up)


def _applied(lab: Lab, key: str, since: float, expect: int | None = None) -> dict[str, Any]:
    """What the emulator applied to `key` ("v:<slug>:down") to packets that arrived at or after `since` (epoch s).

    Asked directly, not through the CLI; still, the emulator turns our window back into a start time on its own
    clock a little later, which moves the start later by that lag (several ms when the box is busy). Where the
    window must start between two packets, `expect` says how many it must hold and the question is asked again
    (a bounded number of times) until the lag was short enough; the count is asserted by the caller.
    """
    out: dict[str, Any] = {}
    for _ in range(20):
        applied = emulator_request(state_dir(lab.prefix), {"cmd": "truth", "window": time.time() - since})["applied"]
        out = dict(applied.get(key) or {"packets": 0, "dropped": 0})
        if expect is None or out["packets"] == expect:
            break
    return out


def _slugs(lab: Lab) -> list[str]:
    return sorted(lab.villages)


def _load_addresses(lab: Lab, exclude: set[str]) -> list[str]:
    """1,000 addresses to keep busy, all inside the lab: the other villages and every kecamatan router,
    cycled (each address then gets ~15 echoes a second, under distinct labels)."""
    state = json.loads((Path("/run/desanet-lab") / lab.prefix / "state.json").read_text())
    pool = [a for s, v in lab.villages.items() if s not in exclude for a in [str(v["router"])]]
    pool += [str(k["kec_addr"]) for k in state["plan"]["kecamatan"]]
    return [pool[i % len(pool)] for i in range(LOAD_TARGETS)]


def _ms(seconds: float | None) -> float:
    assert seconds is not None
    return seconds * 1e3


# ---------------------------------------------------------------------------------------------- vs ping
DESANET_PAYLOAD = 64  # ping sends 56 bytes: the capture tells the two tools' echoes apart by length


def _ping_ms(lab: Lab, address: str, count: int, out: list[list[float]]) -> None:
    proc = lab.noc("ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", address, timeout=60)
    out.append([float(m.group(2)) for m in TIME_RE.finditer(proc.stdout)])


def _wire_rtts(pcap: bytes, address: str) -> dict[int, list[float]]:
    """RTT in seconds per echo on the NOC's wire (nanosecond pcap, Ethernet), keyed by ICMP payload length."""
    magic = struct.unpack_from("<I", pcap)[0]
    assert magic == 0xA1B23C4D, hex(magic)  # nanosecond-resolution pcap, little-endian
    village = socket.inet_aton(address)
    sent: dict[tuple[int, int, int], int] = {}
    rtts: dict[int, list[float]] = {}
    off = 24
    while off + 16 <= len(pcap):
        sec, nsec, caplen, _ = struct.unpack_from("<IIII", pcap, off)
        frame = pcap[off + 16 : off + 16 + caplen]
        off += 16 + caplen
        ip = frame[14:]
        if len(ip) < 28 or ip[9] != 1:
            continue
        ihl = (ip[0] & 0x0F) * 4
        length = struct.unpack_from("!H", ip, 2)[0] - ihl - 8
        icmp_type, _, _, ident, seq = struct.unpack_from("!BBHHH", ip, ihl)
        t = sec * 1_000_000_000 + nsec
        if icmp_type == 8 and ip[16:20] == village:
            sent[(length, ident, seq)] = t
        elif icmp_type == 0 and ip[12:16] == village and (length, ident, seq) in sent:
            rtts.setdefault(length, []).append((t - sent.pop((length, ident, seq))) / 1e9)
    return rtts


def test_unimpaired_rtt_matches_ping_run_at_the_same_time(lab: Lab, tmp_path: Path) -> None:
    """desanet and iputils ping, 200 echoes at 10 ms each to the same village at the same time, both against
    the wire: a capture on the NOC's only interface gives every echo of each tool its wire RTT.

    The issue asks for desanet's p50 within 30 µs of ping's. Measured here (shared 2-core VM, three rounds):
    desanet - ping = -42, -35, -27 µs; desanet - wire = -15, -15, -13 µs; ping - wire = +28, +24, +22 µs.
    The gap is systematic and in desanet's favour: ping's send time is read in user space before its own
    send path, desanet's is the kernel's TX stamp at the device (taken after the capture's tap has copied the
    packet, hence slightly below the capture). So the 30 µs bound is held against the wire instead, on the
    median of three rounds (one round moves by ~10 µs), and desanet must be no further from the wire than
    ping is. desanet - ping is printed, not bounded at 30 µs: that bound fails here by construction.
    """
    address = lab.address(_slugs(lab)[0])
    diffs, errors, ping_errors = [], [], []
    for round_ in range(3):
        pcap_file = tmp_path / f"round{round_}.pcap"
        cap = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.noc_ns,
                "tcpdump",
                "-i",
                "core",
                "-n",
                "-s",
                "64",
                "-Z",
                "root",
                "-U",
                "--immediate-mode",  # else the last second of packets may sit in the ring when we stop
                "-w",
                str(pcap_file),
                "--time-stamp-precision=nano",
                f"icmp and host {address}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert cap.stderr is not None
            cap.stderr.readline()  # "listening on core ...": the capture is running
            got: list[list[float]] = []
            pinger = threading.Thread(target=_ping_ms, args=(lab, address, 200, got))
            pinger.start()
            try:
                r = lab.run_in_noc(
                    probe(address, IcmpSettings(count=200, interval=0.01, timeout=1.0, payload_bytes=DESANET_PAYLOAD))
                )
            finally:
                pinger.join(60)
            time.sleep(0.2)
        finally:
            cap.terminate()
            cap.communicate(timeout=10)
        assert got and len(got[0]) == 200 and r.received == 200
        assert r.timestamping == "kernel" and r.rtt is not None
        wire = _wire_rtts(pcap_file.read_bytes(), address)
        assert len(wire[DESANET_PAYLOAD]) == 200 and len(wire[56]) == 200, {k: len(v) for k, v in wire.items()}
        ping_p50 = statistics.median(got[0]) / 1e3
        diffs.append((r.rtt.p50 - ping_p50) * 1e6)
        errors.append((r.rtt.p50 - statistics.median(wire[DESANET_PAYLOAD])) * 1e6)
        ping_errors.append((ping_p50 - statistics.median(wire[56])) * 1e6)
    print(
        f"per round, µs: desanet - ping {[round(d, 1) for d in diffs]}; "
        f"desanet - wire {[round(e, 1) for e in errors]}; ping - wire {[round(e, 1) for e in ping_errors]}"
    )
    assert abs(statistics.median(errors)) < 30, errors
    assert abs(statistics.median(errors)) <= abs(statistics.median(ping_errors)), (errors, ping_errors)


# ---------------------------------------------------------------------------------------------- vs truth
@dataclass
class Run:
    measured: IcmpResult
    reference: IcmpResult  # a village of the same topology behind the emulator's minimal hold, same time
    down: dict[str, Any]  # the lab's applied record for the measured echoes
    lab_jitter_ms: float  # the RFC 3550 filter over the lab's applied delays (see the module docstring)
    lab_jitter_how: str
    up: dict[str, Any]
    ref_down: dict[str, Any]  # the lab's applied record for the reference echoes
    load_sent: int = 0

    @property
    def base_ms(self) -> tuple[float, float]:
        """(p50, mean) of the RTT outside the emulator's recorded hold: reference RTT minus what was recorded."""
        r = self.reference.rtt
        assert r is not None
        return _ms(r.p50) - self.ref_down["delay_ms_p50"], _ms(r.mean) - self.ref_down["delay_ms_mean"]


def _truth_for(lab: Lab, slug: str, measured: IcmpResult) -> tuple[dict[str, Any], tuple[float, str], dict[str, Any]]:
    sends = [s for s, _ in measured.samples]
    start = sends[0] - QUIET  # nothing else went to this village in the QUIET seconds before the train
    down = _applied(lab, f"v:{slug}:down", start)
    return down, _lab_jitter_ms(lab, f"v:{slug}:down", sends, down), _applied(lab, f"v:{slug}:up", start)


def _lab_jitter_ms(lab: Lab, key: str, sends: list[float], whole: dict[str, Any]) -> tuple[float, str]:
    """The RFC 3550 reference (ms) and how it was made: the filter over the recovered tail delays, or, when
    echoes were sent too close together to split windows between them, the mean |IPDV| of a tail window."""
    delays = _tail_delays(lab, key, sends)
    if delays is not None:
        return _rfc3550_ms(delays, whole["ipdv_ms_mean_abs"]), "filter"
    # Under load the engine sends late echoes in bursts. Start a single tail window at the widest gap near 48.
    j = max(range(len(sends) - 56, len(sends) - 40), key=lambda i: sends[i] - sends[i - 1])
    a = _applied(lab, key, (sends[j - 1] + sends[j]) / 2, expect=len(sends) - j)
    assert a["packets"] == len(sends) - j, (j, a)
    return float(a["ipdv_ms_mean_abs"]), "tail mean"


def _tail_delays(lab: Lab, key: str, sends: list[float]) -> list[float | None] | None:
    """The applied delay (ms) of each of the last TAIL echoes, oldest first; None for one the lab dropped.
    Window k holds the last k echoes; its sum of delays minus window k-1's is echo k's own delay. None when
    some window cannot be made to hold exactly its echoes."""
    sums, passed = [0.0], [0]
    for k in range(1, TAIL + 1):
        a = _applied(lab, key, (sends[-k - 1] + sends[-k]) / 2, expect=k)
        if a["packets"] != k:
            return None
        n = a["packets"] - a["dropped"]
        passed.append(n)
        sums.append(a["delay_ms_mean"] * n if n else 0.0)
    return [sums[k] - sums[k - 1] if passed[k] > passed[k - 1] else None for k in range(TAIL, 0, -1)]


def _rfc3550_ms(delays: list[float | None], start: float) -> float:
    """RFC 3550 §6.4.1's filter over consecutive delays (lost ones skipped), from the state `start`."""
    got = [d for d in delays if d is not None]
    j = start
    for a, b in itertools.pairwise(got):
        j += (abs(b - a) - j) / 16
    return j


def _spin(stop: threading.Event, deadline: float) -> None:
    """A CPU-bound Python thread: holds the GIL except at the interpreter's 5 ms switch points."""
    n = 0
    while not stop.is_set() and time.monotonic() < deadline:
        n += 1


async def _trains(
    address: str, reference: str, settings: IcmpSettings, kernel: bool, load: list[str]
) -> tuple[IcmpResult, IcmpResult, int]:
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop, time.monotonic() + 60), daemon=True)
    async with IcmpEngine(kernel_timestamps=kernel) as engine:
        targets = [engine.add_target(a, 1.0, label=f"load-{i}") for i, a in enumerate(load)]
        try:
            if load:
                spinner.start()
                await asyncio.sleep(1.5)  # every load target has sent once: the spread is established
            before = engine.stats.sent
            measured, ref = await asyncio.gather(
                probe(address, settings, engine=engine), probe(reference, settings, engine=engine)
            )
            load_sent = engine.stats.sent - before - measured.sent - ref.sent
        finally:
            stop.set()
            if spinner.is_alive():
                spinner.join(5)
            for t in targets:
                engine.remove_target(t)
    return measured, ref, load_sent


def _run(lab: Lab, slug: str, ref_slug: str, interval: float, kernel: bool = True, loaded: bool = False) -> Run:
    settings = IcmpSettings(count=COUNT, interval=interval, timeout=2.0)
    load = _load_addresses(lab, {slug, ref_slug}) if loaded else []
    measured, ref, load_sent = lab.run_in_noc(_trains(lab.address(slug), lab.address(ref_slug), settings, kernel, load))
    down, (jitter, how), up = _truth_for(lab, slug, measured)
    ref_down = _applied(lab, f"v:{ref_slug}:down", ref.samples[0][0] - QUIET)
    return Run(measured, ref, down, jitter, how, up, ref_down, load_sent)


@dataclass
class Errors:
    p50_ms: float
    mean_ms: float
    ipdv_rel: float
    jitter_rel: float


def _errors(run: Run, base: tuple[float, float] | None = None) -> Errors:
    m, down = run.measured, run.down
    base_p50, base_mean = base or run.base_ms
    assert m.rtt is not None
    return Errors(
        p50_ms=_ms(m.rtt.p50) - (base_p50 + down["delay_ms_p50"]),
        mean_ms=_ms(m.rtt.mean) - (base_mean + down["delay_ms_mean"]),
        ipdv_rel=_ms(m.ipdv_seconds) / down["ipdv_ms_mean_abs"] - 1,
        jitter_rel=_ms(m.jitter_seconds) / run.lab_jitter_ms - 1,
    )


def _check(run: Run, label: str) -> Errors:
    m, ref, down, up = run.measured, run.reference, run.down, run.up
    # Every echo desanet sent is one the lab saw (passed or dropped), each tail window held exactly its echoes,
    # and nothing came back the other way but the replies: the windows are the train, nothing else.
    assert down["packets"] == m.sent == COUNT, (down, m.sent)
    assert up.get("delay_ms_p50") is None  # no emulation upstream: the base stays the base
    assert ref.received == ref.sent == run.ref_down["packets"] and ref.timestamping == "kernel"
    e = _errors(run)
    print(
        f"{label}: p50 {_ms(m.rtt.p50 if m.rtt else None):.3f} ms, error {e.p50_ms * 1e3:+.0f} µs; "
        f"mean error {e.mean_ms * 1e3:+.0f} µs; IPDV {_ms(m.ipdv_seconds):.3f} vs {down['ipdv_ms_mean_abs']:.3f} ms "
        f"({e.ipdv_rel:+.1%}); RFC 3550 {_ms(m.jitter_seconds):.3f} vs lab {run.lab_jitter_ms:.3f} ms "
        f"[{run.lab_jitter_how}] "
        f"({e.jitter_rel:+.1%}); lost {m.sent - m.received}/{m.sent}, lab dropped {down['dropped']}"
    )
    assert abs(e.p50_ms) < 0.3 and abs(e.mean_ms) < 0.3, (label, e)
    assert abs(e.ipdv_rel) < 0.10, (label, e)
    assert abs(e.jitter_rel) < 0.30, (label, e)
    assert m.sent - m.received == down["dropped"], (label, m.sent, m.received, down)
    assert m.loss_ratio == down["dropped"] / down["packets"]
    lo, hi = binomial_interval(m.sent, m.sent - m.received, z=WILSON_Z)
    assert lo <= LOSS_PCT / 100 <= hi, (label, m.loss_ratio, lo, hi)
    return e


# (delay ms, jitter ms, also show user-space stamps doing worse). The contrast runs once: under this load a
# loaded phase takes 15-30 s (see the module docstring on the GIL), and the module must stay near 3 min.
COMBOS = [(10, 1, False), (40, 5, True), (80, 10, False)]


@pytest.mark.parametrize(("delay", "jitter", "contrast"), COMBOS, ids=[f"{d}ms±{j}" for d, j, _ in COMBOS])
def test_delay_jitter_loss_match_truth_unloaded_and_under_load(
    lab: Lab, delay: int, jitter: int, contrast: bool
) -> None:
    """Delay ± jitter and 5 % loss toward one village: RTT p50 and mean within 0.3 ms of the truth, IPDV within
    10 %, RFC 3550 jitter within 30 %, loss exactly what the lab dropped. Then the same bounds while the same
    engine probes 1,000 other lab addresses every second and a CPU-bound thread holds the GIL; and, under the
    same load, user-space stamps do measurably worse (each reply waits for the GIL before it is stamped)."""
    slugs = _slugs(lab)
    slug, ref_slug = slugs[1], slugs[2]
    # Echoes further apart than the jitter's full spread (2J) each get the delay they drew (docs/lab.md).
    interval = max(0.01, 2.5 * jitter / 1e3)
    lab.impair(slug, "--restore", "--delay", str(delay), "--jitter", str(jitter), "--loss", str(LOSS_PCT))
    try:
        # The reference goes through the emulator too, with the least hold it can apply: see `Run.base_ms`.
        lab.impair(ref_slug, "--restore", "--delay", "0.001")
        _check(_run(lab, slug, ref_slug, interval), "unloaded")

        kernel = _run(lab, slug, ref_slug, interval, kernel=True, loaded=True)
        # The load was real: ~1,000 echoes a second went to the other targets while the train ran.
        assert kernel.load_sent > 0.8 * LOAD_TARGETS * COUNT * interval, kernel.load_sent
        k = _check(kernel, "loaded, kernel stamps")
        if not contrast:
            return
        user = _run(lab, slug, ref_slug, interval, kernel=False, loaded=True)
    finally:
        lab.restore(slug)
        lab.restore(ref_slug)
    assert user.measured.timestamping == "user"
    assert user.down["packets"] == COUNT
    # Judged against the kernel-stamped base measured under the same load a moment before: a user-stamped
    # base would carry the same GIL delay and hide it.
    u = _errors(user, base=kernel.base_ms)
    print(
        f"loaded, user stamps: p50 error {u.p50_ms * 1e3:+.0f} µs, mean error {u.mean_ms * 1e3:+.0f} µs, "
        f"IPDV {u.ipdv_rel:+.1%}, RFC 3550 {u.jitter_rel:+.1%}"
    )
    assert abs(u.p50_ms) > abs(k.p50_ms) and abs(u.mean_ms) > abs(k.mean_ms), (u, k)
    assert abs(u.ipdv_rel) > abs(k.ipdv_rel), (u, k)


# ---------------------------------------------------------------------------------------------- STAMP
STAMP = StampSettings(port=862, rate_pps=100, duration_seconds=3)


def _stamp(lab: Lab, slug: str, *impairment: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    lab.impair(slug, "--restore", *impairment)
    try:
        start = time.time() - QUIET
        r = lab.run_in_noc(stamp_probe(lab.address(slug), STAMP))
        down = _applied(lab, f"v:{slug}:down", start)
        up = _applied(lab, f"v:{slug}:up", start)
    finally:
        lab.restore(slug)
    assert r.sent == STAMP.count and r.received > 0
    return r, down, up


def test_stamp_jitter_toward_the_village_shows_forward_only(lab: Lab) -> None:
    # ±3 ms at 10 ms spacing: no reordering, so the lab's IPDV (arrival order) is the forward IPDV (send order).
    slug = _slugs(lab)[3]
    r, down, _up = _stamp(lab, slug, "--delay", "20", "--jitter", "3")
    fwd, bwd = _ms(r.forward.ipdv_seconds), _ms(r.backward.ipdv_seconds)
    print(f"STAMP forward IPDV {fwd:.3f} ms vs lab {down['ipdv_ms_mean_abs']:.3f} ms; backward IPDV {bwd:.3f} ms")
    assert down["packets"] == r.sent
    assert abs(fwd / down["ipdv_ms_mean_abs"] - 1) < 0.10
    assert bwd < 0.1 * fwd
    assert _ms(r.backward.jitter_seconds) < 0.1 * _ms(r.forward.jitter_seconds)


@pytest.mark.parametrize(("flag", "direction"), [("--up-loss", "backward"), ("--loss", "forward")])
def test_stamp_loss_shows_in_the_direction_it_was_imposed(lab: Lab, flag: str, direction: str) -> None:
    slug = _slugs(lab)[4]
    r, down, up = _stamp(lab, slug, flag, "10")
    lost = r.sent - r.received
    print(f"STAMP {flag} 10: forward {r.forward.loss_ratio}, backward {r.backward.loss_ratio}, lost {lost}/{r.sent}")
    assert lost == down["dropped"] + up["dropped"] > 0
    other = "forward" if direction == "backward" else "backward"
    assert getattr(r, other).loss_ratio == 0
    hit = getattr(r, direction).loss_ratio
    assert hit is not None and hit > 0
    lo, hi = binomial_interval(r.sent, lost, z=WILSON_Z)
    assert lo <= 0.10 <= hi, (lost, r.sent)
