"""The iperf3-protocol client (probes/throughput.py) against Debian's iperf3 server, and its CLI.

Every server is started by a fixture on 127.0.0.1 and a free port, and killed by its PID. No traffic leaves
the loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner, Result

from desanet.probes.throughput import (
    Direction,
    DirectionResult,
    Protocol,
    ServerBusy,
    ThroughputError,
    ThroughputResult,
    ThroughputSettings,
    link_rate,
    probe,
    steady_rate,
    tcp_frame_bytes,
    udp_wire_bytes,
)

IPERF3 = shutil.which("iperf3")
needs_iperf3 = pytest.mark.skipif(IPERF3 is None, reason="needs the iperf3 binary (Debian package iperf3)")
HOST = "127.0.0.1"
T = TypeVar("T")
RESULT_KEYS = {
    "bits_per_second",
    "link_bits_per_second",
    "bytes",
    "seconds",
    "converged",
    "retransmits",
    "jitter_seconds",
    "loss_ratio",
    "reordered",
}


# ---------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (iperf3 uses the same number for both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port")


def _listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as fh:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in fh.readlines()[1:])


class Iperf3Server:
    """`iperf3 -s -B 127.0.0.1 -p PORT` (optionally -1 and -J), stopped by PID."""

    def __init__(self, *, one_off: bool = False, json_output: bool = False):
        assert IPERF3 is not None
        self.port = free_port()
        argv = [IPERF3, "-s", "-B", HOST, "-p", str(self.port)]
        argv += ["-1"] if one_off else []
        argv += ["-J"] if json_output else []
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 5
        while not _listening(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"iperf3 -s did not start on port {self.port}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def report(self, timeout: float = 10.0) -> dict[str, Any]:
        """The JSON a one-off -J server prints when its test ends."""
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def server(make_server: Callable[..., Iperf3Server]) -> Iperf3Server:
    return make_server()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------------------------- pure parts
def test_settings_are_validated() -> None:
    ThroughputSettings()
    for bad in (
        {"port": 0},
        {"direction": "sideways"},
        {"protocol": "sctp"},
        {"max_seconds": 0},
        {"max_seconds": 61},
        {"omit_seconds": 5.0},
        {"parallel": 0},
        {"udp_bitrate_bps": 2e9},
        {"udp_packet_bytes": 8},
        {"dscp": 64},
        {"converge_tolerance": 0},
        {"connect_timeout": 0},
        {"max_bytes": 0},
    ):
        with pytest.raises(ValueError):
            ThroughputSettings(**bad)


def test_wire_rate_counts_whole_frames() -> None:
    # tbf at 10 Mbit/s counts 1514-byte frames carrying 1448 bytes of TCP payload (MSS with timestamps).
    assert tcp_frame_bytes(1448, timestamps=True) == 1514
    assert tcp_frame_bytes(1460, timestamps=False) == 1514
    assert tcp_frame_bytes(1428, timestamps=True, ipv6=True) == 1514
    assert link_rate(10e6 * 1448 / 1514, 1448, 1514) == pytest.approx(10e6)
    assert udp_wire_bytes(1448) == 1490  # baselines.md §5: UDP ideal = 1448/1490
    assert udp_wire_bytes(1200) == 1242
    assert udp_wire_bytes(3000, mtu=1500) == 3008 + 3 * 34  # three fragments, each with IP + Ethernet headers


def test_steady_rate_waits_for_three_agreeing_intervals() -> None:
    flat = [(i * 0.1, i * 125_000) for i in range(31)]  # 10 Mbit/s for 3 s
    assert steady_rate(flat, 0.5, 0.02) == pytest.approx(10e6)
    assert steady_rate(flat[:19], 0.5, 0.02) is None  # 1.8 s: the three intervals would reach into the omit
    ramp = [(i * 0.1, int(125_000 * i * (1 + i / 30))) for i in range(31)]  # still accelerating
    assert steady_rate(ramp, 0.5, 0.02) is None
    wobble = [(i * 0.1, i * 125_000 + (15_000 if i % 5 == 0 else 0)) for i in range(31)]
    assert steady_rate(wobble, 0.5, 0.02) is not None  # jitter between samples, not between intervals


def test_result_to_dict_has_exactly_the_documented_keys() -> None:
    d = DirectionResult(1.0, 1.1, 10, 1.0, True, retransmits=0)
    r = ThroughputResult("127.0.0.1", down=d, up=None).to_dict()
    assert set(r) == {"target", "down", "up"}
    assert set(r["down"]) == RESULT_KEYS and r["up"] is None


# ---------------------------------------------------------------------------------------------- TCP
@needs_iperf3
@pytest.mark.timeout(60)
@pytest.mark.parametrize("direction", ["down", "up"])
def test_tcp_figure_and_bytes_match_the_server(make_server: Callable[..., Iperf3Server], direction: Direction) -> None:
    srv = make_server(one_off=True, json_output=True)
    res = run(probe(HOST, ThroughputSettings(port=srv.port, direction=direction, max_seconds=2)))
    r = res.down if direction == "down" else res.up
    assert r is not None and (res.up if direction == "down" else res.down) is None
    end = srv.report()["end"]
    server_bytes = end["sum_received"]["bytes"] if direction == "down" else end["sum_sent"]["bytes"]
    print(
        f"\n{direction}: ours {r.bits_per_second / 1e9:.2f} Gbit/s over {r.seconds:.2f} s "
        f"(converged={r.converged}), {r.bytes} bytes; server {server_bytes} bytes"
    )
    assert r.bits_per_second > 1e9  # sane for loopback, even for Python on a small VM
    assert r.link_bits_per_second >= r.bits_per_second
    assert 0.5 <= r.seconds <= 2.1
    # Download: the server read everything we wrote. Upload: we read all the server wrote but what was
    # still in its socket buffer (a few MB) when the test ended.
    assert abs(r.bytes - server_bytes) <= max(0.01 * server_bytes, 8 << 20)
    assert r.retransmits is not None and r.retransmits >= 0


@needs_iperf3
@pytest.mark.timeout(60)
def test_both_directions_parallel_streams(server: Iperf3Server) -> None:
    res = run(probe(HOST, ThroughputSettings(port=server.port, parallel=3, max_seconds=1, omit_seconds=0.2)))
    assert res.up is not None and res.down is not None
    for r in (res.up, res.down):
        assert r.bits_per_second > 1e9
        assert r.jitter_seconds is None and r.loss_ratio is None and r.reordered is None
    assert set(res.to_dict()) == {"target", "up", "down"}


@needs_iperf3
@pytest.mark.timeout(60)
def test_against_iperf3_client_on_the_same_server(server: Iperf3Server) -> None:
    """Not a race (C versus Python on two vCPUs); prints both figures for the record."""
    assert IPERF3 is not None
    runs: tuple[tuple[Direction, list[str]], ...] = (("down", []), ("up", ["-R"]))
    for direction, flag in runs:
        out = subprocess.run(
            [IPERF3, "-c", HOST, "-p", str(server.port), "-t", "2", "-O", "0.5", "-J", *flag],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        theirs = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
        res = run(probe(HOST, ThroughputSettings(port=server.port, direction=direction, max_seconds=2)))
        r = res.down if direction == "down" else res.up
        assert r is not None
        ours = r.bits_per_second
        print(f"\n{direction}: desanet {ours / 1e9:.2f} Gbit/s, iperf3 -c {theirs / 1e9:.2f} Gbit/s")
        assert ours > 0.2 * theirs


@needs_iperf3
@pytest.mark.timeout(60)
@pytest.mark.parametrize("direction", ["down", "up"])
def test_max_bytes_bounds_the_test(server: Iperf3Server, direction: Direction) -> None:
    cap = 200_000_000
    res = run(probe(HOST, ThroughputSettings(port=server.port, direction=direction, max_bytes=cap)))
    r = res.down or res.up
    assert r is not None
    # Download stops writing at the cap; upload stops within one sampling tick plus what was in flight.
    assert r.bytes <= cap + (0 if direction == "down" else 64 << 20)
    assert r.seconds < 5


# ---------------------------------------------------------------------------------------------- UDP
@needs_iperf3
@pytest.mark.timeout(60)
@pytest.mark.parametrize("direction", ["down", "up"])
def test_udp_rehearsal_at_20_mbit(make_server: Callable[..., Iperf3Server], direction: Direction) -> None:
    srv = make_server(one_off=True, json_output=True)
    s = ThroughputSettings(port=srv.port, direction=direction, protocol="udp", udp_bitrate_bps=20e6, max_seconds=2)
    res = run(probe(HOST, s))
    r = res.down if direction == "down" else res.up
    assert r is not None
    report = srv.report()
    server_sum = report["end"]["sum"]
    print(f"\n{direction}: {r}\nserver: {server_sum}")
    assert r.bits_per_second == pytest.approx(20e6, rel=0.05)
    assert r.link_bits_per_second == pytest.approx(r.bits_per_second * 1242 / 1200)
    assert r.loss_ratio is not None and r.loss_ratio < 0.005
    assert r.jitter_seconds is not None and 0 <= r.jitter_seconds < 0.005
    assert r.reordered == 0
    assert r.converged is None and r.retransmits is None
    assert 1.9 <= r.seconds <= 2.1
    # Each end counted the other's datagrams (3.12's server JSON gives 0 bytes as a receiver: esnet/iperf#754).
    assert server_sum["packets"] == pytest.approx(r.bytes / 1200, abs=2)


def test_out_of_order_count_from_the_servers_report() -> None:
    from desanet.probes.throughput import _reordered_from_server_output

    text = (
        "[ ID] Interval           Transfer     Bitrate         Jitter    Lost/Total Datagrams\n"
        "[SUM]  0.0- 1.0 sec  15 datagrams received out-of-order\n"
        "[  5]   0.00-1.00   sec  1.82 MBytes  15.2 Mbits/sec  0.013 ms  0/1589 (0%)  receiver\n"
    )
    assert _reordered_from_server_output({"server_output_text": text}) == 15
    assert _reordered_from_server_output({"server_output_text": "[  5] 0.00-1.00 sec ... receiver\n"}) == 0
    as_json = {"end": {"streams": [{"udp": {"out_of_order": 2}}, {"udp": {"out_of_order": 3}}]}}
    assert _reordered_from_server_output({"server_output_json": as_json}) == 5
    assert _reordered_from_server_output({}) is None


@needs_iperf3
@pytest.mark.timeout(60)
def test_udp_sender_that_cannot_keep_pace_says_so(server: Iperf3Server) -> None:
    async def scenario() -> None:
        s = ThroughputSettings(port=server.port, direction="down", protocol="udp", udp_bitrate_bps=10e6, max_seconds=2)
        task = asyncio.create_task(probe(HOST, s))
        await asyncio.sleep(0.5)
        time.sleep(1.0)  # the event loop stalls for a second: no datagram leaves
        with pytest.raises(ThroughputError, match="could not keep the pace"):
            await task

    run(scenario())


# ---------------------------------------------------------------------------------------------- failures
@needs_iperf3
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("direction", "protocol"), [("down", "tcp"), ("up", "tcp"), ("down", "udp"), ("up", "udp")])
def test_far_end_dying_mid_test_is_a_clear_error(
    server: Iperf3Server, direction: Direction, protocol: Protocol
) -> None:
    async def scenario() -> tuple[ThroughputError, float]:
        s = ThroughputSettings(
            port=server.port,
            direction=direction,
            protocol=protocol,
            max_seconds=8,
            converge_tolerance=1e-6,
            udp_bitrate_bps=20e6,
        )
        task = asyncio.create_task(probe(HOST, s))
        await asyncio.sleep(1.0)
        server.kill(signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(ThroughputError) as info:
            await task
        return info.value, time.monotonic() - killed

    before = fds()
    err, after_kill = run(scenario())
    print(f"\n{direction}/{protocol}: {err} ({after_kill:.2f} s after the kill)")
    assert after_kill < 3.0  # within the connect timeout, long before max_seconds
    assert "far end" in str(err) or "server" in str(err)
    assert err.bytes_moved > 0 and err.seconds > 0.5
    assert fds() == before


@needs_iperf3
@pytest.mark.timeout(60)
def test_busy_server_is_refused_in_words(server: Iperf3Server) -> None:
    async def scenario() -> None:
        first = asyncio.create_task(
            probe(HOST, ThroughputSettings(port=server.port, direction="down", protocol="udp", max_seconds=2))
        )
        await asyncio.sleep(0.5)
        t = time.monotonic()
        with pytest.raises(ServerBusy, match="server busy"):
            await probe(HOST, ThroughputSettings(port=server.port))
        assert time.monotonic() - t < 1.0
        res = await first  # the running test was not disturbed
        assert res.down is not None and res.down.loss_ratio == 0

    run(scenario())


@needs_iperf3
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("direction", "protocol"), [("down", "tcp"), ("up", "tcp"), ("down", "udp"), ("up", "udp")])
def test_cancel_stops_both_ends(server: Iperf3Server, direction: Direction, protocol: Protocol) -> None:
    async def scenario() -> None:
        s = ThroughputSettings(
            port=server.port,
            direction=direction,
            protocol=protocol,
            max_seconds=8,
            converge_tolerance=1e-6,
        )
        task = asyncio.create_task(probe(HOST, s))
        await asyncio.sleep(0.8)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The server took the CLIENT_TERMINATE and is free at once: no orphan test holds it.
        res = await probe(HOST, ThroughputSettings(port=server.port, direction="down", max_seconds=1, omit_seconds=0.2))
        assert res.down is not None and res.down.bytes > 0

    before = fds()
    run(scenario())
    assert fds() == before  # and no orphan socket here


@pytest.mark.timeout(30)
def test_silent_far_end_times_out_in_words() -> None:
    with socket.socket() as listener:  # accepts (kernel backlog) but never says a word
        listener.bind((HOST, 0))
        listener.listen()
        t = time.monotonic()
        with pytest.raises(ThroughputError, match="did not answer within 1 s"):
            run(probe(HOST, ThroughputSettings(port=listener.getsockname()[1], connect_timeout=1.0)))
        assert time.monotonic() - t < 2.0


@pytest.mark.timeout(30)
def test_nothing_listening_in_words() -> None:
    with pytest.raises(ThroughputError, match="nothing is listening"):
        run(probe(HOST, ThroughputSettings(port=free_port())))


# ---------------------------------------------------------------------------------------------- CLI
def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    from desanet.cli.app import app

    return CliRunner().invoke(app, ["probe", "throughput", *args], env=env)


@needs_iperf3
@pytest.mark.timeout(60)
def test_cli_json_for_an_address(server: Iperf3Server) -> None:
    res = _cli(HOST, "--port", str(server.port), "--max-seconds", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"target", "up", "down"} and out["target"] == HOST
    assert set(out["up"]) == RESULT_KEYS and set(out["down"]) == RESULT_KEYS

    res = _cli(
        HOST,
        "--port",
        str(server.port),
        "--udp",
        "--bitrate",
        "5",
        "--size",
        "1000",
        "-d",
        "down",
        "--max-seconds",
        "1.5",
        "--json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["up"] is None and out["down"]["loss_ratio"] == 0
    assert out["down"]["bits_per_second"] == pytest.approx(5e6, rel=0.05)

    res = _cli(HOST, "--port", str(server.port), "--max-seconds", "1", "-d", "up")
    assert res.exit_code == 0, res.output
    assert "goodput" in res.stdout and "up" in res.stdout


def _village_inventory(tmp_path: Path, port: int) -> Path:
    text = textwrap.dedent(
        f"""
        district: Loopback
        defaults:
          snmp: {{version: 2c, community: {{env: SNMP_COMMUNITY}}}}
        settings:
          throughput: {{max_seconds: 2, budget_megabytes_per_day: 100000, budget_seconds_per_day: 60}}
        kecamatan:
          - {{name: Pesanggaran, uplink_mbit: 100, lat: -8.5, lon: 114.0}}
        villages:
          - {{name: Sarongan, slug: sarongan, kind: desa, kecamatan: Pesanggaran, router: 127.0.0.2,
             lat: -8.5, lon: 114.0, contracted: {{down_mbit: 20, up_mbit: 20}},
             iperf3: {{address: 127.0.0.1, port: {port}}}}}
          - {{name: Kandangan, slug: kandangan, kind: desa, kecamatan: Pesanggaran, router: 127.0.0.3,
             lat: -8.5, lon: 114.0, contracted: {{down_mbit: 20, up_mbit: 20}}}}
        """
    )
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


@needs_iperf3
@pytest.mark.timeout(60)
def test_cli_village_rules(server: Iperf3Server, tmp_path: Path) -> None:
    from desanet.budget import LEDGER_FILE, UplinkLock

    inv = _village_inventory(tmp_path, server.port)
    state = tmp_path / "state"
    env = {"DESANET_STATE_DIR": str(state)}

    res = _cli("sarongan", "--inventory", str(inv), "-d", "down", "--json", env=env)
    assert res.exit_code == 0, res.output
    up = json.loads(res.stdout)["down"]
    ledger = json.loads((state / LEDGER_FILE).read_text())["villages"]["sarongan"]
    assert ledger["bytes"] == up["bytes"] and ledger["seconds"] == pytest.approx(up["seconds"], abs=0.01)

    lock = UplinkLock(state, "Pesanggaran")  # another test on the kecamatan's uplink
    lock.acquire("kandangan, pid 1")
    try:
        res = _cli("sarongan", "--inventory", str(inv), "--json", env=env)
        assert res.exit_code == 1
        assert "uplink busy" in res.stderr and res.stdout == ""
    finally:
        lock.release()

    res = _cli("kandangan", "--inventory", str(inv), env=env)  # no iperf3 endpoint
    assert res.exit_code == 2 and "no iperf3 server" in res.stderr
    res = _cli("no-such-desa", "--inventory", str(inv), env=env)
    assert res.exit_code == 2 and "no village called" in res.stderr
    res = _cli("sarongan", "--inventory", str(inv), "--direction", "sideways", env=env)
    assert res.exit_code == 2


@needs_iperf3
@pytest.mark.timeout(60)
def test_cli_failed_measurement_exits_1() -> None:
    res = _cli(HOST, "--port", str(free_port()), "--json")
    assert res.exit_code == 1 and "nothing is listening" in res.stderr
