"""Per-link ground truth for the lab's caps: what each link direction was offered, passed, queued and dropped.

Why a sampler: the kernel keeps cumulative counters and an instantaneous backlog per qdisc, not a history, and
nothing records how long a packet waited in a tbf or htb queue (the delay emulator sees only the packets it
delays, before the cap). So one process, started by `lab up`, dumps the qdiscs and interface counters of the
core and every kecamatan namespace (where every cap lives, see lab.Link) over rtnetlink: every second, and
every 50 ms for a namespace while one of its queues holds packets or carries traffic near its cap. The
queue's delay is derived from each sample as backlog / rate, the wait of a packet arriving at that moment in a
FIFO drained at the cap; it is sampled, not measured per packet. Drops by the loss rule and by a cut are
nftables named counters (bytes and packets), read every 2 s in a namespace where such a rule is set.

Why hand-written rtnetlink: two dumps (RTM_GETQDISC, RTM_GETLINK) of a few fixed structs, from sockets made
inside each namespace by lab.netns, with no new dependency; pyroute2 would do it, but this is all it would do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desanet.lab.control import control_answer, control_listen, control_request

log = logging.getLogger("desanet.lab.linkstats")

NETLINK_ROUTE = 0
RTM_GETLINK = 18
RTM_NEWLINK = 16
RTM_GETQDISC = 38
RTM_NEWQDISC = 36
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
IFLA_IFNAME = 3
IFLA_STATS64 = 23
TCA_KIND = 1
TCA_STATS2 = 7
TCA_STATS_BASIC = 1
TCA_STATS_QUEUE = 3
TC_H_ROOT = 0xFFFFFFFF
ETH_HEADER = 14  # nftables counts IP packets; tc and the interfaces count frames

IDLE_SECONDS = 1.0
HOT_SECONDS = 0.05
NFT_SECONDS = 2.0
HOT_FOR_SECONDS = 3.0  # a namespace stays fast-sampled this long after its last sign of a queue
HISTORY = 20_000  # samples per direction: 16 min at 20 per second, 5.5 h idle


# ---------------------------------------------------------------------------------------------- what to read
@dataclass(frozen=True)
class DirSpec:
    """Where one direction of one link is counted (names as lab.Link places its caps)."""

    key: str  # v:<slug>:down, k:<name>:up, ...
    ns: str
    qdisc_if: str  # the interface whose qdisc is the cap
    qdisc_parent: int  # TC_H_ROOT for a tbf; the htb class (1:<i>) for a village's upward bfifo
    iface: str  # counted here when uncapped
    iface_rx: bool  # rx (the direction enters ns there) or tx (it leaves)
    rules_after_count: bool  # the loss and cut rules act after the counting point: subtract their drops
    rate_mbit: float | None
    buffer_ms: float | None
    loss_counter: str
    cut_counter: str
    counting: bool = True  # False for a state without caps support: nothing known


def counter_names(far_if: str, direction: str) -> tuple[str, str]:
    """The nftables named counters of a direction's loss rule and cut rule (lab._apply_all writes them)."""
    return f"loss_{far_if}_{direction}", f"cut_{far_if}_{direction}"


def specs_from_state(state: dict[str, Any]) -> list[DirSpec]:
    from desanet.lab.lab import plan_from_state
    from desanet.lab.shaping import _links, _shape

    out = []
    for link in _links(plan_from_state(state)):
        for direction in ("down", "up"):
            rate, buffer_ms = _shape(state, link, direction)
            loss, cut = counter_names(link.far_if, direction)
            if direction == "down":
                qdisc_if, parent, rx, after = link.far_if, TC_H_ROOT, False, False
            elif link.village:
                qdisc_if, parent, rx = "uplink", 0x10000 | link.index, True
                after = rate is None  # counted as it arrives on v<i>, before the rules; capped: after them
            else:
                qdisc_if, parent, rx, after = f"i{link.far_if}", TC_H_ROOT, True, True  # ifb before the rules
            out.append(
                DirSpec(
                    key=f"{link.key}:{direction}",
                    ns=link.ns,
                    qdisc_if=qdisc_if,
                    qdisc_parent=parent,
                    iface=link.far_if,
                    iface_rx=rx,
                    rules_after_count=after,
                    rate_mbit=rate,
                    buffer_ms=buffer_ms if rate else None,
                    loss_counter=loss,
                    cut_counter=cut,
                )
            )
    return out


def namespaces_with_rules(state: dict[str, Any]) -> set[str]:
    """Namespaces where a loss or cut rule is set now (their nftables counters are worth reading)."""
    from desanet.lab.lab import plan_from_state
    from desanet.lab.shaping import _links

    ns = set()
    for link in _links(plan_from_state(state)):
        cur = state["impairments"].get(link.key)
        if cur and (cur.get("blackholed") or any(cur[d].get("loss_pct") for d in ("down", "up"))):
            ns.add(link.ns)
    return ns


# ---------------------------------------------------------------------------------------------- pure parts
@dataclass(frozen=True)
class Raw:
    """One reading of a direction: cumulative counters as the kernel gives them (None: not there)."""

    t: float
    qdisc: tuple[int, int, int, int, int] | None  # sent bytes, sent packets, drops, backlog bytes, qlen
    iface: tuple[int, int] | None  # bytes, packets at the uncapped counting point
    loss: tuple[int, int] | None  # packets, bytes of the loss rule's counter
    cut: tuple[int, int] | None


def _delta(prev: int | None, cur: int) -> int:
    """Growth of a cumulative counter; a smaller value means it was recreated (a new qdisc) and counts anew."""
    if prev is None:
        return 0
    return cur - prev if cur >= prev else cur


@dataclass
class Direction:
    """Monotonic totals and the sample history of one direction, whatever its counters' sources did."""

    spec: DirSpec
    prev: Raw | None = None
    counted_bytes: int = 0
    counted_packets: int = 0
    queue_drops: int = 0
    loss_packets: int = 0
    loss_bytes: int = 0
    cut_packets: int = 0
    cut_bytes: int = 0
    # (t, counted bytes, counted packets, queue drops, loss p, loss b, cut p, cut b, backlog b, qlen, delay ms|None)
    history: deque[tuple[Any, ...]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def add(self, raw: Raw) -> bool:
        """Take one reading; True when the queue holds packets or the traffic is near the cap (sample faster)."""
        p, s = self.prev, self.spec
        capped = s.rate_mbit is not None and raw.qdisc is not None
        d_bytes = 0
        if capped and raw.qdisc is not None:
            q_prev = p.qdisc if p is not None else None
            d_bytes = _delta(q_prev[0] if q_prev else None, raw.qdisc[0])
            self.counted_bytes += d_bytes
            self.counted_packets += _delta(q_prev[1] if q_prev else None, raw.qdisc[1])
            self.queue_drops += _delta(q_prev[2] if q_prev else None, raw.qdisc[2])
        elif raw.iface is not None:
            i_prev = p.iface if p is not None else None
            d_bytes = _delta(i_prev[0] if i_prev else None, raw.iface[0])
            self.counted_bytes += d_bytes
            self.counted_packets += _delta(i_prev[1] if i_prev else None, raw.iface[1])
        # A rule's counter is created with its rule, after this process started: a first reading counts from 0.
        if raw.loss is not None:
            old = p.loss if p is not None else None
            self.loss_packets += _delta(old[0] if old else 0, raw.loss[0])
            self.loss_bytes += _delta(old[1] if old else 0, raw.loss[1])
        if raw.cut is not None:
            old = p.cut if p is not None else None
            self.cut_packets += _delta(old[0] if old else 0, raw.cut[0])
            self.cut_bytes += _delta(old[1] if old else 0, raw.cut[1])
        # Keep the last known rule counters when this reading did not include them (read less often).
        raw = Raw(raw.t, raw.qdisc, raw.iface, raw.loss or (p.loss if p else None), raw.cut or (p.cut if p else None))
        backlog, qlen, delay = 0, 0, None
        if capped and raw.qdisc is not None and s.rate_mbit:
            backlog, qlen = raw.qdisc[3], raw.qdisc[4]
            delay = backlog * 8 / (s.rate_mbit * 1e6) * 1e3
        self.history.append(
            (
                raw.t,
                self.counted_bytes,
                self.counted_packets,
                self.queue_drops,
                self.loss_packets,
                self.loss_bytes,
                self.cut_packets,
                self.cut_bytes,
                backlog,
                qlen,
                delay,
            )
        )
        busy = False
        if capped and s.rate_mbit and p is not None and raw.t > p.t:
            near_cap = d_bytes * 8 / (raw.t - p.t) > 0.2 * s.rate_mbit * 1e6
            busy = backlog > 0 or near_cap
        self.prev = raw
        return busy


def summarise(d: Direction, since: float) -> dict[str, Any]:
    """The direction's figures between the last sample at or before `since` and the latest one.

    offered = passed + every drop + the backlog's growth. tc counts a queue's drops in packets, not bytes, so
    their bytes in offered_bytes are estimated at the passed frames' mean size.
    """
    s = d.spec
    h = d.history
    out: dict[str, Any] = {
        "cap_mbit": s.rate_mbit,
        "buffer_ms": s.buffer_ms,
        "seconds": None,
        "offered_bytes": None,
        "offered_packets": None,
        "passed_bytes": None,
        "passed_packets": None,
        "passed_mbit": None,
        "dropped_queue_packets": None,
        "dropped_loss_packets": None,
        "dropped_loss_bytes": None,
        "dropped_blackhole_packets": None,
        "dropped_blackhole_bytes": None,
        "backlog_bytes": None,
        "queue_delay_ms_p50": None,
        "queue_delay_ms_mean": None,
        "queue_delay_ms_max": None,
        "queue_samples": 0,
        "queue_delay_source": (
            "sampled: backlog / cap every 50 ms while busy, every 1 s idle" if s.rate_mbit is not None else None
        ),
    }
    if len(h) < 2:
        return out
    first = h[0]
    for sample in h:
        if sample[0] > since:
            break
        first = sample
    last = h[-1]
    if last[0] <= first[0]:
        return out
    seconds = last[0] - first[0]
    counted_b, counted_p = last[1] - first[1], last[2] - first[2]
    qdrop = last[3] - first[3]
    loss_p, loss_b, cut_p, cut_b = (last[i] - first[i] for i in (4, 5, 6, 7))
    rule_b = loss_b + cut_b + ETH_HEADER * (loss_p + cut_p)
    if s.rules_after_count:
        passed_b, passed_p = max(0, counted_b - rule_b), max(0, counted_p - loss_p - cut_p)
    else:
        passed_b, passed_p = counted_b, counted_p
    mean_frame = passed_b / passed_p if passed_p else 0.0
    grown_b, grown_p = last[8] - first[8], last[9] - first[9]
    out.update(
        seconds=round(seconds, 3),
        passed_bytes=passed_b,
        passed_packets=passed_p,
        passed_mbit=passed_b * 8 / seconds / 1e6,
        offered_packets=passed_p + qdrop + loss_p + cut_p + grown_p,
        offered_bytes=round(passed_b + qdrop * mean_frame + rule_b + grown_b),
        dropped_queue_packets=qdrop if s.rate_mbit is not None else 0,
        dropped_loss_packets=loss_p,
        dropped_loss_bytes=loss_b + ETH_HEADER * loss_p,
        dropped_blackhole_packets=cut_p,
        dropped_blackhole_bytes=cut_b + ETH_HEADER * cut_p,
        backlog_bytes=last[8],
    )
    # The queue's delay while the link was loaded: packets queued, or traffic at a fifth of the cap or more
    # (an idle link's empty queue says nothing about the wait under load).
    delays = []
    prev = first
    for sample in h:
        if sample[0] <= first[0]:
            continue
        rate_bits = (sample[1] - prev[1]) * 8 / (sample[0] - prev[0])
        loaded = s.rate_mbit is not None and rate_bits >= 0.2 * s.rate_mbit * 1e6
        if sample[10] is not None and (sample[8] > 0 or loaded):
            delays.append(sample[10])
        prev = sample
    if delays:
        out.update(
            queue_delay_ms_p50=statistics.median(delays),
            queue_delay_ms_mean=statistics.fmean(delays),
            queue_delay_ms_max=max(delays),
            queue_samples=len(delays),
        )
    return out


# ---------------------------------------------------------------------------------------------- rtnetlink
def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _dump(sock: socket.socket, kind: int, body: bytes, seq: int) -> Iterable[tuple[int, bytes, int, int]]:
    """Send one dump request; yield (type, data, payload offset, end) for each message of the answer."""
    sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                return
            if mseq == seq:
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, offset + 16)
                    raise OSError(-err, f"rtnetlink dump: {os.strerror(-err)}")
                yield mtype, data, offset + 16, offset + length
            offset += (length + 3) & ~3


def read_namespace(
    sock: socket.socket, seq: int
) -> tuple[dict[str, tuple[int, int, int, int]], dict[tuple[str, int], tuple[str, tuple[int, int, int, int, int]]]]:
    """One namespace's interfaces {name: (rx bytes, rx packets, tx bytes, tx packets)} and qdiscs
    {(interface, parent): (kind, (sent bytes, sent packets, drops, backlog bytes, qlen))}."""
    names: dict[int, str] = {}
    links: dict[str, tuple[int, int, int, int]] = {}
    for mtype, data, off, end in _dump(sock, RTM_GETLINK, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0), seq):
        if mtype != RTM_NEWLINK:
            continue
        (index,) = struct.unpack_from("=i", data, off + 4)
        a = _attrs(data, off + 16, end)
        name = a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
        names[index] = name
        st = a.get(IFLA_STATS64)
        if st is not None and len(st) >= 32:
            rx_p, tx_p, rx_b, tx_b = struct.unpack_from("=QQQQ", st)
            links[name] = (rx_b, rx_p, tx_b, tx_p)
    qdiscs: dict[tuple[str, int], tuple[str, tuple[int, int, int, int, int]]] = {}
    tcmsg = struct.pack("=BxxxiIII", socket.AF_UNSPEC, 0, 0, 0, 0)
    for mtype, data, off, end in _dump(sock, RTM_GETQDISC, tcmsg, seq + 1):
        if mtype != RTM_NEWQDISC:
            continue
        _fam, ifindex, _handle, parent, _info = struct.unpack_from("=BxxxiIII", data, off)
        a = _attrs(data, off + 20, end)
        kind = a.get(TCA_KIND, b"").rstrip(b"\0").decode()
        st2 = a.get(TCA_STATS2)
        if st2 is None:
            continue
        nested = _attrs(st2, 0, len(st2))
        basic, queue = nested.get(TCA_STATS_BASIC), nested.get(TCA_STATS_QUEUE)
        if basic is None or queue is None or len(basic) < 12 or len(queue) < 20:
            continue
        sent_b, sent_p = struct.unpack_from("=QI", basic)
        qlen, backlog, drops, _requeues, _over = struct.unpack_from("=IIIII", queue)
        qdiscs[(names.get(ifindex, str(ifindex)), parent)] = (kind, (sent_b, sent_p, drops, backlog, qlen))
    return links, qdiscs


def read_nft_counters(ns: str) -> dict[str, tuple[int, int]]:
    """{name: (packets, bytes)} of the lab's named counters in a namespace (`nft -j`, a few per second at most)."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "counters", "table", "inet", "desanet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    out: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(ValueError):
        for item in json.loads(proc.stdout or "{}").get("nftables", []):
            c = item.get("counter")
            if c:
                out[c["name"]] = (int(c["packets"]), int(c["bytes"]))
    return out


# ---------------------------------------------------------------------------------------------- the process
class Sampler:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.state_mtime = 0.0
        self.directions: dict[str, Direction] = {}
        self.by_ns: dict[str, list[Direction]] = {}
        self.socks: dict[str, socket.socket] = {}
        self.next_due: dict[str, float] = {}
        self.hot_until: dict[str, float] = {}
        self.nft_ns: set[str] = set()
        self.nft_due: dict[str, float] = {}
        self.nft_last: dict[str, dict[str, tuple[int, int]]] = {}
        self.seq = 1
        self.stop = False

    def reload(self) -> None:
        from desanet.lab.netns import socket_in_netns

        path = self.state_dir / "state.json"
        self.state_mtime = path.stat().st_mtime
        state = json.loads(path.read_text())
        specs = specs_from_state(state)
        by_ns: dict[str, list[Direction]] = {}
        for spec in specs:
            d = self.directions.get(spec.key)
            if d is None:
                d = self.directions[spec.key] = Direction(spec)
            else:
                d.spec = spec
            by_ns.setdefault(spec.ns, []).append(d)
        self.by_ns = by_ns
        for ns in by_ns:
            if ns not in self.socks:
                sock = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
                sock.bind((0, 0))
                self.socks[ns] = sock
                self.next_due[ns] = 0.0
        self.nft_ns = namespaces_with_rules(state)
        for ns in self.nft_ns:  # a rule just set: read its counter at once
            self.next_due[ns] = 0.0
            self.nft_due[ns] = 0.0
        log.info("reloaded: %d directions in %d namespaces, rules in %d", len(specs), len(by_ns), len(self.nft_ns))

    def sample(self, ns: str, now: float, *, nft: bool = False) -> None:
        self.seq += 2
        try:
            links, qdiscs = read_namespace(self.socks[ns], self.seq)
        except OSError as exc:
            log.warning("%s: %s", ns, exc)
            self.next_due[ns] = now + IDLE_SECONDS
            return
        counters = None
        if ns in self.nft_ns and (nft or now >= self.nft_due.get(ns, 0.0)):
            counters = self.nft_last[ns] = read_nft_counters(ns)
            self.nft_due[ns] = now + NFT_SECONDS
        hot = False
        t = time.time()
        for d in self.by_ns.get(ns, []):
            s = d.spec
            q = qdiscs.get((s.qdisc_if, s.qdisc_parent))
            ln = links.get(s.iface)
            raw = Raw(
                t,
                q[1] if q is not None else None,
                (ln[0], ln[1]) if ln is not None and s.iface_rx else (ln[2], ln[3]) if ln is not None else None,
                counters.get(s.loss_counter) if counters is not None else None,
                counters.get(s.cut_counter) if counters is not None else None,
            )
            hot |= d.add(raw)
        if hot:
            self.hot_until[ns] = now + HOT_FOR_SECONDS
        self.next_due[ns] = now + (HOT_SECONDS if now < self.hot_until.get(ns, 0.0) else IDLE_SECONDS)

    def truth(self, window: float) -> dict[str, Any]:
        now = time.monotonic()
        for ns in self.by_ns:  # end the window now, counters included
            self.sample(ns, now, nft=True)
        since = time.time() - window
        return {key: summarise(d, since) for key, d in self.directions.items()}

    def _on_control(self, server: socket.socket) -> None:
        control_answer(server, self._command)

    def _command(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "truth":
            resp: dict[str, Any] = {"ok": True, "links": self.truth(float(req.get("window", 60)))}
        elif cmd == "ping":
            resp = {"ok": True, "pid": os.getpid()}
        else:
            resp = {"ok": False, "error": f"unknown command {cmd!r}"}
        return resp

    def run(self) -> None:
        ctl = self.state_dir / "linkstats.sock"
        server = control_listen(ctl)
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        self.reload()
        (self.state_dir / "linkstats.ready").write_text(str(os.getpid()))
        while not self.stop:
            now = time.monotonic()
            with contextlib.suppress(OSError):
                if (self.state_dir / "state.json").stat().st_mtime != self.state_mtime:
                    self.reload()
            for ns, due in list(self.next_due.items()):
                if due <= now and ns in self.by_ns:
                    self.sample(ns, now)
            wait = max(0.0, min(self.next_due.values(), default=now + IDLE_SECONDS) - time.monotonic())
            try:
                ready, _, _ = select.select([server], [], [], min(wait, IDLE_SECONDS))
            except InterruptedError:
                continue
            if ready:
                self._on_control(server)
        server.close()
        with contextlib.suppress(FileNotFoundError):
            ctl.unlink()


def request(state_dir: Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to the running sampler."""
    return control_request(state_dir / "linkstats.sock", payload, "linkstats", timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description="desanet lab per-link counters (started by `desanet lab up`)")
    ap.add_argument("--state-dir", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s linkstats %(levelname)s %(message)s")
    Sampler(args.state_dir).run()


if __name__ == "__main__":
    main()
