"""Cross traffic: what a kantor desa's other users put on the same queues as the probes.

What breaks a video session in practice is rarely the fibre alone; it is the office downloading updates,
a CCTV camera uploading, a school streaming video on the same kecamatan uplink. A load is that traffic,
between the lab's "internet" host and village namespaces:

    internet ns (<prefix>-inet, 10.255.1.2) ──veth── core ns ── kecamatan ns ── village ns

The internet host hangs off the core, where the district's upstream would be, so its traffic crosses the
kecamatan uplink and the village link, through the same caps, buffers, loss and delay rules as the probes
that the NOC sends. Like the NOC it has only host routes to the lab's villages and kecamatan: no default
route, no link to the host's interfaces.

Kinds (per village; a kecamatan load runs in each of its villages):

- `bulk`: N TCP flows as fast as TCP goes (`max`), or paced to a total rate: updates, file sharing.
- `video`: an adaptive stream's on-off pattern: every segment (4 s) a chunk of segment × bitrate bytes is
  sent at whatever TCP gets, then the flow idles until the next segment is due.
- `cbr`: a CCTV camera: constant-bitrate UDP, one frame's packets back to back 25 times a second.

Why not iperf3 for the traffic: an iperf3 server serves one test at a time, so every flow set would need its
own server and client process (two per village, twenty for a kecamatan), it has no on-off pattern and it
reports only at the end. One small asyncio process per load instead owns its sockets in every namespace it
needs (a socket keeps the namespace it was created in, as lab/reflectors.py does), moves bytes with the
kernel doing the work, and writes what it delivered each second for `lab status`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from desanet.lab import background, netns
from desanet.lab import lab as labmod
from desanet.lab.topology import LabPlan, VillagePlan

INET_ADDR = "10.255.1.2"  # the internet host, on a /30 with the core (10.255.0.0/30 is the NOC's)
CORE_INET_ADDR = "10.255.1.1"
KINDS = ("bulk", "video", "cbr")
Kind = Literal["bulk", "video", "cbr"]
Rate = float | Literal["max"] | None  # Mbit/s; "max": as fast as TCP goes; None: nothing that way
MAX_SECONDS = 86_400.0
MAX_FLOWS = 64
# A loss-based congestion control fills a tail-drop buffer, as the downloads of Windows (CUBIC since 10 1709)
# and of most servers do; the host's default may be another (this VM's is bbr, which keeps queues short).
DEFAULT_CC = "cubic"
MAX_SOCKETS = 1024  # flows × villages of one load: a kecamatan of many villages with many flows each
VIDEO_SEGMENT_SECONDS = 4.0  # DASH and HLS players fetch 2-6 s segments; 4 s is a common default
CBR_FPS = 25
CBR_PACKET_BYTES = 1200  # an RTP packet of video that leaves room for tunnels under a 1500-byte MTU
RCVBUF = 4 << 20
SO_MAX_PACING_RATE = 47  # asm-generic/socket.h; TCP paces itself to it (no fq qdisc needed since Linux 4.13)
DEFAULTS: dict[str, dict[str, Any]] = {
    # An office downloading updates opens several connections; a viewer watches one HD stream (about
    # 5 Mbit/s); a 1080p H.264 camera uploads about 4 Mbit/s.
    "bulk": {"down": "max", "flows": 4},
    "video": {"down": 5.0, "flows": 1},
    "cbr": {"up": 4.0, "flows": 1},
}


class LoadError(labmod.LabError):
    """A load that cannot start; the message says why."""


# ---------------------------------------------------------------------------------------------- pure
@dataclass(frozen=True)
class LoadSpec:
    """What one load does in each village it runs in."""

    kind: Kind
    down: Rate = None
    up: Rate = None
    flows: int = 1
    seconds: float = 60.0
    segment_seconds: float = VIDEO_SEGMENT_SECONDS
    cc: str = DEFAULT_CC


def parse_rate(text: str | float | None, what: str) -> Rate:
    """'max' or a positive number of Mbit/s, from the command line or a scenario file."""
    if text is None:
        return None
    if isinstance(text, str) and text.strip().lower() in ("max", "line"):
        return "max"
    try:
        value = float(text)
    except ValueError:
        raise LoadError(f"{what} must be a rate in Mbit/s or 'max', not {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise LoadError(f"{what} must be more than 0 Mbit/s (or 'max'), not {text}")
    return value


def make_spec(
    kind: str,
    down: str | float | None = None,
    up: str | float | None = None,
    flows: int | None = None,
    seconds: float = 60.0,
    segment_seconds: float = VIDEO_SEGMENT_SECONDS,
    cc: str = DEFAULT_CC,
) -> LoadSpec:
    """A checked LoadSpec with the kind's defaults filled in; LoadError says what is wrong in words."""
    if kind not in KINDS:
        raise LoadError(f"unknown load kind {kind!r}: use one of {', '.join(KINDS)}")
    d, u = parse_rate(down, "--down"), parse_rate(up, "--up")
    if d is None and u is None:
        d, u = DEFAULTS[kind].get("down"), DEFAULTS[kind].get("up")
    if kind != "bulk" and "max" in (d, u):
        raise LoadError(f"a {kind} load has a bitrate: give --down/--up in Mbit/s ('max' is for bulk)")
    n = DEFAULTS[kind]["flows"] if flows is None else flows
    if not 1 <= n <= MAX_FLOWS:
        raise LoadError(f"--flows must be between 1 and {MAX_FLOWS}, not {n}")
    if not 0 < seconds <= MAX_SECONDS:
        raise LoadError(f"--for must be more than 0 and at most {MAX_SECONDS:g} seconds (a load always ends)")
    if not 0.5 <= segment_seconds <= 60:
        raise LoadError("--segment must be between 0.5 and 60 seconds")
    if not cc.isidentifier():
        raise LoadError(f"--cc must name a TCP congestion control such as cubic, bbr or reno, not {cc!r}")
    return LoadSpec(kind, d, u, n, float(seconds), float(segment_seconds), cc)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Flow:
    """One connection (TCP) or stream (UDP) of a load, with both ends placed."""

    village: str
    direction: Literal["down", "up"]
    proto: Literal["tcp", "udp"]
    src_ns: str
    src_addr: str
    dst_ns: str
    dst_addr: str
    rate_bps: float | None  # None: as fast as TCP goes
    chunk_bytes: int | None = None  # video: bytes per segment
    period_seconds: float | None = None
    packet_bytes: int = CBR_PACKET_BYTES
    fps: int = CBR_FPS
    cc: str = DEFAULT_CC


def plan_flows(spec: LoadSpec, villages: list[VillagePlan], inet_ns: str) -> list[Flow]:
    """Every flow of a load: in each village, `flows` flows per direction that has a rate, sharing it."""
    out: list[Flow] = []
    for v in villages:
        for direction, rate in (("down", spec.down), ("up", spec.up)):
            if rate is None:
                continue
            per_flow = None if rate == "max" else float(rate) * 1e6 / spec.flows
            down = direction == "down"
            src_ns, src_addr = (inet_ns, INET_ADDR) if down else (v.ns, v.router)
            dst_ns, dst_addr = (v.ns, v.router) if down else (inet_ns, INET_ADDR)
            way: Literal["down", "up"] = "down" if down else "up"
            proto: Literal["tcp", "udp"] = "udp" if spec.kind == "cbr" else "tcp"
            one = Flow(v.slug, way, proto, src_ns, src_addr, dst_ns, dst_addr, per_flow, cc=spec.cc)
            if spec.kind == "video":
                assert per_flow is not None
                # Chunks go as fast as TCP gets them (no pacing): the on-off pattern carries the bitrate.
                chunk = round(per_flow * spec.segment_seconds / 8)
                one = replace(one, rate_bps=None, chunk_bytes=chunk, period_seconds=spec.segment_seconds)
            out += [one] * spec.flows
    if len(out) > MAX_SOCKETS:
        raise LoadError(f"{len(out)} flows in one load is more than the lab runs ({MAX_SOCKETS}): use fewer --flows")
    return out


def describe(spec: LoadSpec | dict[str, Any]) -> str:
    """'bulk, 4 flows down at line rate' — how `lab status` and the scenario runner name a load."""
    s = spec if isinstance(spec, dict) else asdict(spec)
    ways = []
    for direction in ("down", "up"):
        rate = s.get(direction)
        if rate is not None:
            ways.append(f"{direction} {'as fast as TCP goes' if rate == 'max' else f'{rate:g} Mbit/s'}")
    extra = f", {s['segment_seconds']:g} s segments" if s["kind"] == "video" else ""
    if s["kind"] != "cbr" and s.get("cc", DEFAULT_CC) != DEFAULT_CC:
        extra += f", TCP {s['cc']}"
    flows = f"{s['flows']} flow{'s' if s['flows'] != 1 else ''}"
    return f"{s['kind']}, {flows}, {' and '.join(ways)}{extra}"


# ---------------------------------------------------------------------------------------------- the internet host
def internet_ns(prefix: str) -> str:
    return f"{prefix}-inet"


def ensure_internet(state: dict[str, Any], lp: LabPlan) -> str:
    """Create the internet namespace beside the core if it is not there yet (idempotent); return its name."""
    ns = internet_ns(lp.prefix)
    if netns.exists(ns) and state.get("internet", {}).get("ns") == ns:
        return ns
    if netns.exists(ns):  # left half-built by an interrupted attempt
        labmod._run(["ip", "netns", "delete", ns], check=False)
    labmod._ns_batch(None, [f"netns add {ns}"])
    labmod._ns_batch(None, [f"link add name core netns {ns} type veth peer name inet netns {lp.core_ns}"])
    netns.write_sysctls(
        ns,
        {
            "ipv4/conf/all/rp_filter": "0",
            "ipv4/conf/default/rp_filter": "0",
            "ipv6/conf/all/disable_ipv6": "1",
            "ipv6/conf/default/disable_ipv6": "1",
        },
    )
    labmod._ns_batch(lp.core_ns, ["link set inet up", f"addr add {CORE_INET_ADDR}/30 dev inet"])
    labmod._ns_batch(
        ns,
        [
            "link set lo up",
            "link set core up",
            f"addr add {INET_ADDR}/30 dev core",
            # Host routes to what the lab holds, and no default route: nothing sent here can leave the lab.
            *(f"route add {v.router}/32 via {CORE_INET_ADDR}" for v in lp.villages),
            *(f"route add {k.kec_addr}/32 via {CORE_INET_ADDR}" for k in lp.kecamatan),
        ],
    )
    state["internet"] = {"ns": ns, "address": INET_ADDR}
    return ns


# ---------------------------------------------------------------------------------------------- control
def _villages_of(lp: LabPlan, village: str | None, kecamatan: str | None) -> tuple[str, list[VillagePlan]]:
    if (village is None) == (kecamatan is None):
        raise LoadError("name exactly one village or one --kecamatan")
    if village is not None:
        slug = labmod._find_slug(lp, village)
        return slug, [lp.village(slug)]
    try:
        kec = lp.kec(kecamatan or "")
    except KeyError:
        raise LoadError(f"no kecamatan {kecamatan!r} in the lab") from None
    villages = [v for v in lp.villages if v.kecamatan.index == kec.index]
    if not villages:
        raise LoadError(f"kecamatan {kec.name} has no villages in the lab")
    return kec.name, villages


def start(
    village: str | None,
    kecamatan: str | None,
    spec: LoadSpec,
    *,
    prefix: str | None = None,
    wait: float = 10.0,
    owner: str | None = None,
) -> dict[str, Any]:
    """Start a load as a background process of the lab; return its task entry once its sockets are open.
    `owner` tags it (a scenario player), so its owner can stop it even if interrupted before it saw the id."""
    labmod.preflight()
    with background.locked_state(prefix) as state:
        lp = labmod.plan_from_state(state)
        target, villages = _villages_of(lp, village, kecamatan)
        _check_cc(spec.cc)
        inet = ensure_internet(state, lp)
        background.prune(state)
        tid = background.new_id(state, "L")
        now = time.time()
        flows = plan_flows(spec, villages, inet)
        d = background.status_dir(state["prefix"], "loads")
        spec_file = d / f"{tid}.spec.json"
        stats_file = d / f"{tid}.json"
        spec_file.write_text(
            json.dumps(
                {"id": tid, "until": now + spec.seconds, "stats": str(stats_file), "flows": [asdict(f) for f in flows]}
            )
        )
        entry = background.start(
            state,
            tid,
            [sys.executable, "-m", "desanet.lab.load", "--spec", str(spec_file)],
            d / f"{tid}.log",
            kind="load",
            target=target,
            scope="kecamatan" if kecamatan is not None else "village",
            villages=[v.slug for v in villages],
            spec=asdict(spec),
            what=describe(spec),
            started=now,
            until=now + spec.seconds,
            stats=str(stats_file),
            owner=owner,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not stats_file.exists() and background.alive(entry):
        time.sleep(0.05)
    if not stats_file.exists():
        with background.locked_state(prefix) as state:  # not left half-started: stopped by its PID, forgotten
            background.stop(state, lambda t, _e: t == tid)
        tail = _tail(d / f"{tid}.log")
        raise LoadError(f"load {tid} did not start within {wait:g} s{': ' + tail if tail else ''}")
    return {"id": tid, **entry}


def stop(village: str | None = None, kecamatan: str | None = None, *, prefix: str | None = None) -> list[str]:
    """Stop the loads on a village (including kecamatan loads that cover it), a kecamatan, or all of them."""
    with background.locked_state(prefix) as state:
        lp = labmod.plan_from_state(state)
        if village is None and kecamatan is None:
            return background.stop(state, lambda _tid, e: e.get("kind") == "load")
        if village is not None:
            slug = labmod._find_slug(lp, village)
            return background.stop(state, lambda _tid, e: e.get("kind") == "load" and slug in e.get("villages", []))
        try:
            name = lp.kec(kecamatan or "").name
        except KeyError:
            raise LoadError(f"no kecamatan {kecamatan!r} in the lab") from None
        members = {v.slug for v in lp.villages if v.kecamatan.name == name}
        return background.stop(
            state, lambda _tid, e: e.get("kind") == "load" and bool(members & set(e.get("villages", [])))
        )


def live(entry: dict[str, Any]) -> dict[str, Any] | None:
    """What a running load delivered in its last second (Mbit/s per direction, summed over its villages)."""
    try:
        stats = json.loads(Path(entry["stats"]).read_text())
    except (OSError, ValueError, KeyError):
        return None
    out: dict[str, Any] = {"down_mbit": 0.0, "up_mbit": 0.0, "down_bytes": 0, "up_bytes": 0}
    for per in stats.get("villages", {}).values():
        for direction in ("down", "up"):
            if direction in per:
                out[f"{direction}_mbit"] += per[direction]["mbit"]
                out[f"{direction}_bytes"] += per[direction]["received_bytes"]
    out["villages"] = stats.get("villages", {})
    return out


def _check_cc(cc: str) -> None:
    try:
        available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    except OSError:
        return
    if cc not in available:
        raise LoadError(f"TCP congestion control {cc!r} is not in this kernel: one of {', '.join(available)}")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------- the process
@dataclass
class _Count:
    sent: int = 0
    received: int = 0
    last_received: int = 0
    mbit: float = 0.0


@dataclass
class _Runner:
    flows: list[Flow]
    until: float
    stats_path: Path
    counts: dict[tuple[str, str], _Count] = field(default_factory=dict)
    socks: list[socket.socket] = field(default_factory=list)

    def _sock(self, ns: str, kind: int) -> socket.socket:
        s = netns.socket_in_netns(ns, socket.AF_INET, kind)
        s.setblocking(False)
        self.socks.append(s)
        return s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks: list[asyncio.Task[None]] = []
        receivers: dict[tuple[str, str, str], tuple[str, int]] = {}
        for f in self.flows:
            key = (f.village, f.direction)
            self.counts.setdefault(key, _Count())
            rkey = (f.village, f.direction, f.proto)
            if rkey in receivers:
                continue
            if f.proto == "tcp":
                ls = self._sock(f.dst_ns, socket.SOCK_STREAM)
                # A fixed big receive buffer (inherited by accepted sockets, so the window scale fits it): the
                # receive window never limits a flow, whose window is then TCP's own, as a download's is.
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                ls.bind((f.dst_addr, 0))
                ls.listen(128)
                tasks.append(asyncio.create_task(self._accept(ls, self.counts[key])))
                receivers[rkey] = ls.getsockname()
            else:
                us = self._sock(f.dst_ns, socket.SOCK_DGRAM)
                us.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
                us.bind((f.dst_addr, 0))
                tasks.append(asyncio.create_task(self._drain(us, self.counts[key])))
                receivers[rkey] = us.getsockname()
        for f in self.flows:
            dst = receivers[(f.village, f.direction, f.proto)]
            count = self.counts[(f.village, f.direction)]
            sender = self._udp(f, dst, count) if f.proto == "udp" else self._tcp(f, dst, count)
            tasks.append(asyncio.create_task(sender))
        tasks.append(asyncio.create_task(self._report()))
        self._write(done=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, self.until - time.time()))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._write(done=True)
        for s in self.socks:
            s.close()

    async def _accept(self, listener: socket.socket, count: _Count) -> None:
        loop = asyncio.get_running_loop()
        conns: list[asyncio.Task[None]] = []
        try:
            while True:
                conn, _ = await loop.sock_accept(listener)
                conn.setblocking(False)
                self.socks.append(conn)
                conns.append(asyncio.create_task(self._drain(conn, count)))
        finally:
            for t in conns:
                t.cancel()

    @staticmethod
    async def _drain(sock: socket.socket, count: _Count) -> None:
        loop = asyncio.get_running_loop()
        buf = bytearray(1 << 18)
        with contextlib.suppress(OSError):
            while n := await loop.sock_recv_into(sock, buf):
                count.received += n

    async def _tcp(self, f: Flow, dst: tuple[str, int], count: _Count) -> None:
        """Connect and send until the load ends; after a break (a cut, a reboot) connect again a second later."""
        loop = asyncio.get_running_loop()
        data = bytes(1 << 17)
        while True:
            s = self._sock(f.src_ns, socket.SOCK_STREAM)
            try:
                s.bind((f.src_addr, 0))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, f.cc.encode())
                if f.rate_bps is not None:
                    s.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, max(1, int(f.rate_bps / 8)))
                await asyncio.wait_for(loop.sock_connect(s, dst), 3)
                if f.chunk_bytes is None:
                    while True:
                        await loop.sock_sendall(s, data)
                        count.sent += len(data)
                else:
                    await self._on_off(s, f, count, data)
            except (OSError, TimeoutError):
                await asyncio.sleep(1)
            finally:
                s.close()
                self.socks.remove(s)

    @staticmethod
    async def _on_off(s: socket.socket, f: Flow, count: _Count, data: bytes) -> None:
        """A player fetching one segment per period: the chunk at whatever TCP gets, then idle until due."""
        loop = asyncio.get_running_loop()
        assert f.chunk_bytes is not None and f.period_seconds is not None
        due = loop.time()
        while True:
            left = f.chunk_bytes
            while left > 0:
                piece = data[: min(left, len(data))]
                await loop.sock_sendall(s, piece)
                count.sent += len(piece)
                left -= len(piece)
            due += f.period_seconds
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                due = loop.time()  # behind, like a player whose buffer ran dry: fetch the next one now

    async def _udp(self, f: Flow, dst: tuple[str, int], count: _Count) -> None:
        """A camera: each frame's packets back to back, `fps` frames a second, at the flow's bitrate."""
        loop = asyncio.get_running_loop()
        assert f.rate_bps is not None
        s = self._sock(f.src_ns, socket.SOCK_DGRAM)
        s.bind((f.src_addr, 0))
        s.connect(dst)
        frame = f.rate_bps / 8 / f.fps
        payload = bytes(f.packet_bytes)
        owed = 0.0
        due = loop.time()
        while True:
            owed += frame
            while owed >= f.packet_bytes:
                try:
                    s.send(payload)
                    count.sent += f.packet_bytes
                except OSError:  # a full buffer or an ICMP error from a cut link: the camera keeps going
                    pass
                owed -= f.packet_bytes
            due += 1 / f.fps
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _report(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(1)
            now = time.monotonic()
            for c in self.counts.values():
                c.mbit = (c.received - c.last_received) * 8 / 1e6 / (now - last)
                c.last_received = c.received
            last = now
            self._write(done=False)

    def _write(self, done: bool) -> None:
        villages: dict[str, dict[str, Any]] = {}
        for (slug, direction), c in self.counts.items():
            villages.setdefault(slug, {})[direction] = {
                "mbit": round(c.mbit, 3),
                "sent_bytes": c.sent,
                "received_bytes": c.received,
            }
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"updated": time.time(), "done": done, "villages": villages}))
        tmp.replace(self.stats_path)


def main() -> None:
    ap = argparse.ArgumentParser(description="desanet lab: one cross-traffic load (started by `desanet lab load`)")
    ap.add_argument("--spec", type=Path, required=True)
    args = ap.parse_args()
    spec = json.loads(args.spec.read_text())
    flows = [Flow(**f) for f in spec["flows"]]
    asyncio.run(_Runner(flows, float(spec["until"]), Path(spec["stats"])).run())


if __name__ == "__main__":
    main()
