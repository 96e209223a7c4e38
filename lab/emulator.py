"""The lab's delay emulator and ground-truth recorder (this kernel has no netem).

Why NFQUEUE in pure Python: the packet stays in the kernel and only a small verdict crosses back, so
there is no copy, no re-routing trick and no checksum work (measured in research: +62 µs median over the
drawn delay, 8 k packets/s at 29 % of a core). No maintained Python library speaks NFQUEUE without a C
extension that Debian's Python would need to build (python-netfilterqueue needs libnetfilter-queue-dev),
so the few netlink messages are written here by hand.

One process serves the whole lab: it opens an NFQUEUE and an NFLOG netlink socket in every namespace that
impairs traffic (each kecamatan, for its villages' links; the core, for the kecamatan uplinks), binds every
queue number up front (so a rule never points at an unbound queue), and holds each packet until the
release time lab/delay_model.py gives it: arrival + a drawn delay (uniform, normal, pareto or pareto-normal,
optionally correlated), and by default no earlier than the packet ahead of it in the same direction (a FIFO,
so jitter does not reorder; `reorder` releases each packet independently, as netem does). The arrival time
is the kernel's receive stamp (NFQA_TIMESTAMP), so the emulator's own latency does not add to the delay.
Pure computation (draws, release rule, reordering count) lives in delay_model; this module does the I/O.

Ground truth: for every packet it records the delay it drew, the delay actually applied (verdict time -
kernel arrival) and whether it left after a packet that arrived after it (reordered); nftables' loss rule
logs every dropped packet to NFLOG group 1 with the direction as its prefix, so the drops are recorded per
packet too. `truth` answers over a unix socket with per-direction figures for the last N seconds, `packets`
with the per-packet records themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import itertools
import json
import logging
import os
import random
import select
import signal
import socket
import statistics
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desanet.lab.control import control_answer, control_listen, control_request
from desanet.lab.delay_model import DelayLine, DelaySpec
from desanet.lab.netns import socket_in_netns

log = logging.getLogger("desanet.lab.emulator")

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NFNL_SUBSYS_QUEUE = 3
NFNL_SUBSYS_ULOG = 4
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_TIMESTAMP = 4
NF_ACCEPT = 1
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_QTHRESH = 4
NFULA_CFG_TIMEOUT = 3
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_META = 1
NFULA_TIMESTAMP = 3
NFULA_PREFIX = 10
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
NFLOG_GROUP = 1
RECORD_LIMIT = 400_000  # per direction; at 1 k packets/s that is over 6 minutes of history
PACKETS_LIMIT = 200_000  # per-packet records one `packets` request returns (the newest)
PACKET_FIELDS = ("arrival", "drawn_s", "applied_s", "reordered")  # one record of `packets`, in seconds
SPIN_SECONDS = 0.0002  # busy-wait this close to a due time: select() wakes up late by tens of µs


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _msg(subsys: int, kind: int, res_id: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(res_id)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (subsys << 8) | kind, flags, seq, 0) + body


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x7FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _messages(data: bytes) -> list[tuple[int, int, bytes, int]]:
    """(type, offset of payload after nfgenmsg, data, end) for each netlink message in a datagram."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        out.append((kind, offset + 16, data, offset + length))
        offset += (length + 3) & ~3
    return out


@dataclass
class Direction:
    """One impaired direction: its delay line (what to draw, when to release) and what was actually applied."""

    key: str
    line: DelayLine = field(default_factory=DelayLine)
    # Per packet that passed, in release order: (kernel arrival, drawn delay, applied delay, reordered).
    passed: deque[tuple[float, float, float, bool]] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))
    drops: deque[float] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))

    def summary(self, since: float) -> dict[str, Any]:
        passed = [p for p in self.passed if p[0] >= since]
        dropped = sum(1 for t in self.drops if t >= since)
        delays = [p[2] for p in passed]
        drawn = [p[1] for p in passed]
        out: dict[str, Any] = {
            "packets": len(passed) + dropped,
            "dropped": dropped,
            "reordered": sum(1 for p in passed if p[3]),
        }
        if delays:
            # Written independently of probes/stats.py on purpose: ground truth must not share the probes' bugs.
            out["delay_ms_p50"] = statistics.median(delays) * 1e3
            out["delay_ms_mean"] = statistics.fmean(delays) * 1e3
            out["ipdv_ms_mean_abs"] = (
                statistics.fmean(abs(b - a) for a, b in itertools.pairwise(delays)) * 1e3 if len(delays) > 1 else None
            )
            out["drawn_delay_ms_p50"] = statistics.median(drawn) * 1e3
            out["drawn_delay_ms_mean"] = statistics.fmean(drawn) * 1e3
        else:
            out.update(
                delay_ms_p50=None,
                delay_ms_mean=None,
                ipdv_ms_mean_abs=None,
                drawn_delay_ms_p50=None,
                drawn_delay_ms_mean=None,
            )
        return out

    def packets(self, since: float) -> list[tuple[float, float, float, bool]]:
        """The newest per-packet records (at most PACKETS_LIMIT) of packets that arrived at or after `since`."""
        out = [p for p in self.passed if p[0] >= since]
        return out[-PACKETS_LIMIT:]


@dataclass
class _Queue:
    sock: socket.socket
    ns: str


class Emulator:
    def __init__(self, state_dir: Path, seed: int | None = None):
        self.state_dir = state_dir
        self.rng = random.Random(seed)
        self.directions: dict[str, Direction] = {}
        self.queue_keys: dict[tuple[int, int], str] = {}  # (fd, queue number) -> direction key
        self.nfq: list[_Queue] = []
        self.nflog: list[_Queue] = []
        # (release time, admission counter, fd, queue, packet id, direction key, arrival, drawn delay, number)
        self.heap: list[tuple[float, int, int, int, int, str, float, float, int]] = []
        self.counter = 0
        self.stop = False
        self.socks: dict[int, socket.socket] = {}
        # Kernel receive stamps on queued packets need timestamping switched on somewhere in the system.
        self._stamp_on = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stamp_on.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    # ------------------------------------------------------------------ setup
    def open(self) -> None:
        state = json.loads((self.state_dir / "state.json").read_text())
        queues: dict[str, list[tuple[int, str]]] = {}
        for q in state["queues"]:
            queues.setdefault(q["ns"], []).append((q["queue"], q["key"]))
        for ns, items in queues.items():
            nfq = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            nfq.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            nfq.bind((0, 0))
            for num, key in items:
                self._config(
                    nfq,
                    _msg(
                        NFNL_SUBSYS_QUEUE,
                        NFQNL_MSG_CONFIG,
                        num,
                        _attr(NFQA_CFG_CMD, struct.pack("=BxH", NFQNL_CFG_CMD_BIND, 0)),
                        NLM_F_REQUEST | NLM_F_ACK,
                    ),
                    f"bind queue {num} in {ns}",
                )
                params = _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META) + b"\0\0\0")
                params += _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", 20000))
                self._config(
                    nfq,
                    _msg(NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG, num, params, NLM_F_REQUEST | NLM_F_ACK),
                    f"configure queue {num} in {ns}",
                )
                self.queue_keys[(nfq.fileno(), num)] = key
                self.directions.setdefault(key, Direction(key))
            nfq.setblocking(False)
            self.nfq.append(_Queue(nfq, ns))
            self.socks[nfq.fileno()] = nfq

            ulog = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            ulog.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
            ulog.bind((0, 0))
            self._config(
                ulog,
                _msg(
                    NFNL_SUBSYS_ULOG,
                    NFULNL_MSG_CONFIG,
                    NFLOG_GROUP,
                    _attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)),
                    NLM_F_REQUEST | NLM_F_ACK,
                ),
                f"bind NFLOG group in {ns}",
            )
            mode = _attr(NFULA_CFG_MODE, struct.pack(">IBx", 0, NFULNL_COPY_META))
            mode += _attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)) + _attr(NFULA_CFG_TIMEOUT, struct.pack(">I", 1))
            self._config(
                ulog,
                _msg(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, NFLOG_GROUP, mode, NLM_F_REQUEST | NLM_F_ACK),
                f"configure NFLOG in {ns}",
            )
            ulog.setblocking(False)
            self.nflog.append(_Queue(ulog, ns))
            self.socks[ulog.fileno()] = ulog
        self.reload()

    @staticmethod
    def _config(sock: socket.socket, msg: bytes, what: str) -> None:
        sock.send(msg)
        reply = sock.recv(65536)
        for kind, off, data, _end in _messages(reply):
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, off)
                if err:
                    raise OSError(-err, f"{what}: {os.strerror(-err)}")

    def reload(self) -> None:
        state = json.loads((self.state_dir / "state.json").read_text())
        for key, d in self.directions.items():
            imp = state.get("emulate", {}).get(key, {})
            try:
                d.line.spec = spec_from_state(imp)
            except (TypeError, ValueError) as exc:  # `lab impair` validates; a hand-edited state must not stop us
                log.warning("%s: keeping the previous delay settings: %s", key, exc)
        log.info("reloaded: %d directions emulated", len(state.get("emulate", {})))

    # ------------------------------------------------------------------ packets
    def _on_nfq(self, sock: socket.socket) -> None:
        now = time.time()
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: the kernel dropped queue messages; those packets are lost
                log.warning("nfqueue receive: %s", exc)
                return
            for kind, off, buf, end in _messages(data):
                if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    continue
                (res_id,) = struct.unpack_from(">H", buf, off + 2)
                attrs = _attrs(buf, off + 4, end)
                hdr = attrs.get(NFQA_PACKET_HDR)
                if hdr is None:
                    continue
                (packet_id,) = struct.unpack_from(">I", hdr)
                ts = attrs.get(NFQA_TIMESTAMP)
                arrival = now
                if ts is not None and len(ts) >= 16:
                    sec, usec = struct.unpack_from(">QQ", ts)
                    arrival = sec + usec / 1e6
                key = self.queue_keys.get((sock.fileno(), res_id))
                d = self.directions.get(key) if key else None
                number, drawn, due = d.line.admit(arrival, self.rng) if d else (-1, 0.0, arrival)
                self.counter += 1
                heapq.heappush(
                    self.heap, (due, self.counter, sock.fileno(), res_id, packet_id, key or "", arrival, drawn, number)
                )

    def _on_nflog(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, OSError):
                return
            now = time.time()
            for kind, off, buf, end in _messages(data):
                if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                    continue
                attrs = _attrs(buf, off + 4, end)
                prefix = attrs.get(NFULA_PREFIX, b"").rstrip(b"\0").decode(errors="replace")
                ts = attrs.get(NFULA_TIMESTAMP)
                when = now
                if ts is not None and len(ts) >= 16:
                    sec, usec = struct.unpack_from(">QQ", ts)
                    when = sec + usec / 1e6
                d = self.directions.get(prefix)
                if d is not None:
                    d.drops.append(when)

    def _release_due(self) -> None:
        while self.heap and self.heap[0][0] <= time.time():
            _due, _n, fd, queue, packet_id, key, arrival, drawn, number = heapq.heappop(self.heap)
            verdict = _msg(
                NFNL_SUBSYS_QUEUE,
                NFQNL_MSG_VERDICT,
                queue,
                _attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id)),
            )
            sock = self.socks.get(fd)
            if sock is None:
                continue
            # The packet leaves during the verdict call (the kernel re-injects and forwards it, often its reply
            # too, before send() returns), so its release time is taken just before the call.
            released = time.time()
            try:
                sock.send(verdict)
            except OSError as exc:
                log.warning("verdict: %s", exc)
                continue
            d = self.directions.get(key)
            if d is not None:
                d.passed.append((arrival, drawn, released - arrival, d.line.release(number)))

    # ------------------------------------------------------------------ control
    def truth(self, window: float) -> dict[str, Any]:
        since = time.time() - window
        return {key: d.summary(since) for key, d in self.directions.items() if d.passed or d.drops}

    def _on_control(self, server: socket.socket) -> None:
        control_answer(server, self._command)

    def _command(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "reload":
            self.reload()
            resp: dict[str, Any] = {"ok": True}
        elif cmd == "truth":
            resp = {"ok": True, "applied": self.truth(float(req.get("window", 60)))}
        elif cmd == "packets":
            d = self.directions.get(str(req.get("key")))
            if d is None:
                raise ValueError(f"no emulated direction {req.get('key')!r}")
            since = time.time() - float(req.get("window", 60))
            resp = {"ok": True, "fields": list(PACKET_FIELDS), "packets": d.packets(since)}
        elif cmd == "ping":
            resp = {"ok": True, "pid": os.getpid(), "held": len(self.heap)}
        elif cmd == "stop":
            self.stop = True
            resp = {"ok": True}
        else:
            resp = {"ok": False, "error": f"unknown command {cmd!r}"}
        return resp

    def run(self) -> None:
        ctl_path = self.state_dir / "emulator.sock"
        server = control_listen(ctl_path)
        nfq_fds = {q.sock.fileno(): q.sock for q in self.nfq}
        log_fds = {q.sock.fileno(): q.sock for q in self.nflog}
        fds = [server.fileno(), *nfq_fds, *log_fds]
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        signal.signal(signal.SIGHUP, lambda *_: self.reload())
        (self.state_dir / "emulator.ready").write_text(str(os.getpid()))
        while not self.stop:
            timeout = 1.0
            if self.heap:
                timeout = max(0.0, self.heap[0][0] - time.time() - SPIN_SECONDS)
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            for fd in ready:
                if fd in nfq_fds:
                    self._on_nfq(nfq_fds[fd])
                elif fd in log_fds:
                    self._on_nflog(log_fds[fd])
                else:
                    self._on_control(server)
            if self.heap and not ready:
                # Woken for a due packet: spin the last stretch rather than trust the timer's slack.
                while self.heap[0][0] > time.time():
                    pass
            self._release_due()
        server.close()
        with contextlib.suppress(FileNotFoundError):
            ctl_path.unlink()


def spec_from_state(imp: dict[str, Any]) -> DelaySpec:
    """A direction's delay settings from the state's `emulate` entry (milliseconds and percent)."""
    return DelaySpec(
        delay=float(imp.get("delay_ms") or 0) / 1e3,
        jitter=float(imp.get("jitter_ms") or 0) / 1e3,
        distribution=str(imp.get("delay_distribution") or "uniform"),
        correlation=float(imp.get("delay_correlation_pct") or 0) / 100,
        reorder=bool(imp.get("reorder")),
    )


def request(state_dir: Path, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to a running emulator."""
    return control_request(state_dir / "emulator.sock", payload, "emulator", timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description="desanet lab delay emulator (started by `desanet lab up`)")
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s emulator %(levelname)s %(message)s")
    with contextlib.suppress(OSError):
        ctypes.CDLL(None).prctl(29, 1)  # PR_SET_TIMERSLACK = 1 ns: wake up when asked, not 50 µs later
    em = Emulator(args.state_dir, args.seed)
    em.open()
    em.run()


if __name__ == "__main__":
    main()
