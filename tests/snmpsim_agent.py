"""Serve one snmpsim recording (tests/snmprec/*.snmprec) from snmpsim's command responder on 127.0.0.1.

A helper for tests, not a test module. snmpsim (PyPI package `snmpsim`, maintained by LeXtudio; the command is
`snmpsim-command-responder`) runs as its own process, found in this order:

1. the path in $DESANET_SNMPSIM_RESPONDER;
2. `.venv-snmpsim/bin/snmpsim-command-responder` at the top of this repository;
3. next to the running interpreter (`snmpsim` installed into the same virtualenv);
4. on $PATH.

snmpsim 1.2.2 needs pysnmp>=7.1.26,<8 (the project's .venv has pysnmp 7 too) and imports pysmi at start-up
without declaring it, so it is installed with pysmi. It lives in a virtualenv of its own so that pysmi and the
packages pysmi pulls in (requests, Jinja2, lark, ...) stay out of the project's .venv:

    python3 -m venv .venv-snmpsim && printf '*\\n' > .venv-snmpsim/.gitignore
    .venv-snmpsim/bin/pip install 'snmpsim==1.2.2' 'pysmi>=2,<3'

Each agent gets its own data directory holding one recording, so the SNMPv1/v2c community is the recording's
file name stem (snmpsim maps a community to `<data dir>/<community>.snmprec`). It listens on a free UDP port of
127.0.0.1 only, is waited for with a real SNMP GET of sysUpTime.0 (bounded in time), and is stopped by its PID.
snmpsim refuses to run as root unless told to drop privileges; as root (the test machines) it is started with
SNMPSIM_ALLOW_ROOT=true instead, since the unprivileged user could not read the interpreter under /root.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = Path(__file__).resolve().parent / "snmprec"
COMMAND = "snmpsim-command-responder"
PIP_INSTALL = "python3 -m venv .venv-snmpsim && .venv-snmpsim/bin/pip install 'snmpsim==1.2.2' 'pysmi>=2,<3'"
START_SECONDS = 30.0  # snmpsim indexes the recording before it answers; a few seconds on a slow machine
SYS_UPTIME_0 = (1, 3, 6, 1, 2, 1, 1, 3, 0)


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get("DESANET_SNMPSIM_RESPONDER")
    if env:
        out.append(Path(env))
    out.append(ROOT / ".venv-snmpsim" / "bin" / COMMAND)
    out.append(Path(sys.executable).parent / COMMAND)
    found = shutil.which(COMMAND)
    if found:
        out.append(Path(found))
    return out


@functools.cache
def find_responder() -> tuple[Path | None, str]:
    """(the responder command, "") or (None, why not): the first candidate that starts at all. `--version`
    imports everything the responder needs, so an install that lacks pysmi is caught here, not mid-test."""
    tried = []
    for path in _candidates():
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        try:
            proc = subprocess.run(
                [str(path), "--version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{path}: {exc}")
            continue
        if proc.returncode == 0:
            return path, ""
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        tried.append(f"{path}: {last[0]}")
    if not tried:
        return None, f"snmpsim is not installed (no {COMMAND}); install it with: {PIP_INSTALL}"
    return None, f"snmpsim does not start ({'; '.join(tried)}); reinstall it with: {PIP_INSTALL}"


def recording(name: str) -> Path:
    """tests/snmprec/<name>.snmprec."""
    path = RECORDINGS / f"{name}.snmprec"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- readiness
# A v2c GET of sysUpTime.0, coded by hand so that waiting for the agent needs neither net-snmp nor desanet.
def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes((n,))
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes((0x80 | len(raw),)) + raw
    return bytes((tag,)) + length + value


def _oid(arcs: tuple[int, ...]) -> bytes:
    body = bytearray()
    for arc in (40 * arcs[0] + arcs[1], *arcs[2:]):
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def get_request(community: str, request_id: int, oid: tuple[int, ...] = SYS_UPTIME_0) -> bytes:
    """An SNMPv2c GetRequest for one OID; `request_id` in [2**24, 2**31), so that it is four octets in BER."""
    if not 1 << 24 <= request_id < 1 << 31:
        raise ValueError("request_id must be in [2**24, 2**31)")
    varbinds = _tlv(0x30, _tlv(0x30, _oid(oid) + b"\x05\x00"))
    rid = _tlv(0x02, request_id.to_bytes(4, "big"))
    pdu = _tlv(0xA0, rid + b"\x02\x01\x00\x02\x01\x00" + varbinds)
    return _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, community.encode()) + pdu)


def answers(host: str, port: int, community: str, timeout: float = 0.3) -> bool:
    """True when the agent answers a GET of sysUpTime.0 with this community (any Response counts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        rid = 0x10000000 | int.from_bytes(os.urandom(3), "big")
        try:
            s.send(get_request(community, rid))
            data = s.recv(65535)
        except (TimeoutError, ConnectionRefusedError):  # refused: ICMP port unreachable, not yet bound
            return False
    return rid.to_bytes(4, "big") in data and b"\xa2" in data


# ---------------------------------------------------------------------------------------------- the agent
@dataclass
class SnmpsimAgent:
    host: str
    port: int
    community: str
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "snmpsim.log"

    def stop(self) -> None:
        """Stop this snmpsim by its PID: TERM, then KILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def launch(snmprec: Path, workdir: Path, host: str = "127.0.0.1", port: int | None = None) -> SnmpsimAgent:
    """Start snmpsim serving `snmprec` alone; the caller waits for it (`wait_until_answering`) and stops it.
    `port`: a given one, for a test that serves the same device's later state where it served an earlier one
    (a poller keeps its state per address and port); else a free one."""
    if not host.startswith("127."):
        raise ValueError(f"snmpsim is for loopback only, not {host}")
    responder, why = find_responder()
    if responder is None:
        raise RuntimeError(why)
    data, cache, variation = workdir / "data", workdir / "cache", workdir / "variation"
    for d in (data, cache, variation):
        d.mkdir(parents=True, exist_ok=True)
    community = snmprec.name.removesuffix(".snmprec")
    shutil.copyfile(snmprec, data / snmprec.name)
    port = port or free_udp_port(host)
    argv = [
        str(responder),
        f"--data-dir={data}",
        f"--cache-dir={cache}",
        f"--variation-modules-dir={variation}",  # empty: no variation module is loaded (redis, sql, ...)
        f"--agent-udpv4-endpoint={host}:{port}",
        "--log-level=error",
    ]
    env = dict(os.environ)
    if os.geteuid() == 0:
        env["SNMPSIM_ALLOW_ROOT"] = "true"
    with (workdir / "snmpsim.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    return SnmpsimAgent(host, port, community, workdir, proc)


def wait_until_answering(agent: SnmpsimAgent, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            raise RuntimeError(f"snmpsim exited with {agent.proc.returncode}: {agent.log_tail()}")
        if answers(agent.host, agent.port, agent.community):
            return
        time.sleep(0.1)
    raise RuntimeError(f"snmpsim did not answer within {seconds:g} s: {agent.log_tail()}")


@contextlib.contextmanager
def serve(snmprec: Path, workdir: Path, host: str = "127.0.0.1", port: int | None = None) -> Iterator[SnmpsimAgent]:
    """snmpsim serving one recording, answering, for the length of the block; stopped by PID afterwards.
    A port taken between choosing it and binding it (another process's race) gets one more try."""
    for attempt in range(2):
        agent = launch(snmprec, workdir / f"try{attempt}", host, port)
        try:
            wait_until_answering(agent)
        except RuntimeError:
            agent.stop()
            if attempt == 0 and "Address already in use" in agent.log_tail():
                continue
            raise
        break
    try:
        yield agent
    finally:
        agent.stop()
