"""Router events: a power cut (the link goes dark, the router comes back with its uptime reset) and an optical
level that drifts, as a dirty connector or a bent fibre degrades.

A power cut is two steps, `power_off` and `power_on`, so a scenario can keep playing its timeline while a
village is dark; `reboot` does both with the wait between, for the command line. Powering off sets the
village's `up0` down (the kecamatan side loses carrier, as at a real cut) and kills the village's snmpd and
iperf3 by PID with SIGKILL, as a power cut does; powering on brings the link and its routes back and starts
the same argv again, so snmpd's sysUpTime (the agent's uptime) starts from zero, as a router's does after a
boot. The shared STAMP reflector process serves every village and keeps running; while the link is down
nothing reaches it anyway.

An optical ramp is a background process of the lab (lab/background.py) that rewrites the village's optical
values file, which the snmpd pass_persist script re-reads on every request (lab/snmp_agent.py), moving the
rx level linearly in dBm from where it is to where it is going over the given time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from desanet.lab import background, snmp_agent
from desanet.lab import lab as labmod
from desanet.lab.topology import LabPlan, VillagePlan

MAX_DOWN_SECONDS = 3600.0
MAX_RAMP_SECONDS = 7 * 86_400.0
RX_DBM_RANGE = (-40.0, 8.0)  # what an SFP's DDM reports at all (MikroTik shows -40 for no light)
_LOGS = {"snmpd": "snmpd.out", "iperf3": "iperf3.log"}


class EventError(labmod.LabError):
    """A router event that cannot happen as asked; the message says why."""


def _village(lp: LabPlan, text: str) -> VillagePlan:
    return lp.village(labmod._find_slug(lp, text))


# ---------------------------------------------------------------------------------------------- power cut
def power_off(village: str, down_for: float, *, prefix: str | None = None) -> dict[str, Any]:
    """Cut a village's power: its link goes down and its snmpd and iperf3 die without warning."""
    labmod.preflight()
    if not 0 <= down_for <= MAX_DOWN_SECONDS:
        raise EventError(f"--down-for must be between 0 and {MAX_DOWN_SECONDS:g} seconds, not {down_for:g}")
    with background.locked_state(prefix) as state:
        v = _village(labmod.plan_from_state(state), village)
        events = state.setdefault("events", {})
        key = f"reboot:{v.slug}"
        if key in events:
            raise EventError(f"{v.slug} is already powered off (since a reboot that has not ended)")
        restart: dict[str, list[str]] = {}
        victims = []
        for service in _LOGS:
            name = f"{service}:{v.slug}"
            entry = state["pids"].pop(name, None)
            if entry is not None and labmod._alive(entry):
                restart[name] = _cmdline(entry["pid"])
                victims.append(entry)
        now = time.time()
        events[key] = {"village": v.slug, "since": now, "until": now + down_for, "restart": restart}
        labmod.save_state(state)  # the power is off before anything dies, so `lab status` never sees a dead snmpd
        labmod._run(["ip", "-n", v.ns, "link", "set", "up0", "down"])
        for entry in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry["pid"], signal.SIGKILL)
        for entry in victims:
            _wait_gone(entry)
        return dict(events[key])


def power_on(village: str, *, prefix: str | None = None, wait: float = 10.0) -> dict[str, Any]:
    """Power a village back on: link and routes up, snmpd and iperf3 started again (uptime from zero)."""
    labmod.preflight()
    with background.locked_state(prefix) as state:
        v = _village(labmod.plan_from_state(state), village)
        event = state.setdefault("events", {}).pop(f"reboot:{v.slug}", None)
        if event is None:
            raise EventError(f"{v.slug} is not powered off")
        labmod._ns_batch(
            v.ns,
            [
                "link set up0 up",
                # A link that goes down takes its routes with it; these are the ones `lab up` made.
                f"route replace {v.kecamatan.kec_addr}/32 dev up0",
                f"route replace default via {v.kecamatan.kec_addr} dev up0",
            ],
        )
        work = labmod.state_dir(state["prefix"]) / "villages" / v.slug
        started = {}
        for name, argv in event["restart"].items():
            service = name.split(":", 1)[0]
            started[name] = labmod._spawn(state, name, v.ns, argv, work / _LOGS[service])
    snmpd = event["restart"].get(f"snmpd:{v.slug}")
    if snmpd and f"snmpd:{v.slug}" in started:
        _wait_listening(started[f"snmpd:{v.slug}"], _udp_port(snmpd), wait)
    return {"village": v.slug, "down_seconds": round(time.time() - event["since"], 2), "started": started}


def reboot(village: str, down_for: float, *, prefix: str | None = None, say: Any = None) -> dict[str, Any]:
    """A power cut of `down_for` seconds, waited out here; the power comes back even if this is interrupted."""
    asked = time.time()
    try:
        off = power_off(village, down_for, prefix=prefix)
        if say:
            say(f"{off['village']}: power off, link down, snmpd and iperf3 killed; back in {down_for:g} s")
        time.sleep(max(0.0, off["until"] - time.time()))  # counted from the cut, not from when the kills ended
    finally:
        # Also when interrupted just after the cut; never a cut that another command made before this one.
        on = power_on(village, prefix=prefix) if powered_off_since(village, asked, prefix=prefix) else None
    assert on is not None  # power_off returned, so the cut was this one's
    if say:
        say(f"{on['village']}: power back after {on['down_seconds']:g} s; snmpd restarted (sysUpTime from 0)")
    return on


def powered_off_since(village: str, since: float, *, prefix: str | None = None) -> bool:
    """Whether the village is without power from a cut made at or after `since` (wall clock)."""
    state = labmod.load_state(prefix)
    if state is None:
        return False
    slug = labmod._find_slug(labmod.plan_from_state(state), village)
    event = state.get("events", {}).get(f"reboot:{slug}")
    return event is not None and float(event["since"]) >= since


def _cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [a.decode() for a in raw.rstrip(b"\0").split(b"\0")]


def _wait_gone(entry: dict[str, Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while labmod._alive(entry) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(entry["pid"], os.WNOHANG)  # reap it if it is our child
        time.sleep(0.02)


def _udp_port(argv: list[str]) -> int | None:
    m = re.search(r":(\d+)$", argv[-1]) if argv else None
    return int(m.group(1)) if m else None


def _wait_listening(pid: int, port: int | None, timeout: float) -> None:
    """Until the process has a UDP socket on `port` (read from its own namespace's /proc/PID/net/udp)."""
    if port is None:
        return
    want = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            table = Path(f"/proc/{pid}/net/udp").read_text()
        except OSError:
            return  # gone: `lab status` will say so
        if any(want in line.split(None, 3)[1] + " " for line in table.splitlines()[1:] if line.strip()):
            return
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- optical ramp
def ramp_values(start: float, end: float, seconds: float, elapsed: float) -> float:
    """The rx level `elapsed` seconds into a linear ramp in dBm (a dirty connector's loss grows steadily)."""
    if seconds <= 0 or elapsed >= seconds:
        return end
    return start + (end - start) * max(0.0, elapsed) / seconds


def ramp_optical(
    village: str,
    to_dbm: float,
    over: float,
    *,
    start_dbm: float | None = None,
    prefix: str | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Move a village's reported optical rx level from where it is (or `start_dbm`) to `to_dbm` over `over` s."""
    labmod.preflight()
    lo, hi = RX_DBM_RANGE
    for what, val in (("--to", to_dbm), ("--optical-rx-dbm", start_dbm)):
        if val is not None and not lo <= val <= hi:
            raise EventError(f"{what} must be between {lo:g} and {hi:g} dBm, not {val:g}")
    if not 0 < over <= MAX_RAMP_SECONDS:
        raise EventError(f"--over must be more than 0 and at most {MAX_RAMP_SECONDS:g} seconds")
    with background.locked_state(prefix) as state:
        v = _village(labmod.plan_from_state(state), village)
        background.stop(state, lambda _tid, e: e.get("kind") == "ramp" and e.get("target") == v.slug)
        base = {**asdict(snmp_agent.OpticalValues()), **state["optical"].get(v.slug, {})}
        start = float(base["rx_dbm"] if start_dbm is None else start_dbm)
        state["optical"][v.slug] = {**state["optical"].get(v.slug, {}), "rx_dbm": to_dbm}  # where it is going
        tid = background.new_id(state, "R")
        d = background.status_dir(state["prefix"], "ramps")
        now = time.time()
        spec = {
            "workdir": str(labmod.state_dir(state["prefix"]) / "villages" / v.slug),
            "values": {**base, "rx_dbm": start},
            "start": start,
            "end": to_dbm,
            "t0": now,
            "seconds": over,
            "stats": str(d / f"{tid}.json"),
        }
        (d / f"{tid}.spec.json").write_text(json.dumps(spec))
        return {
            "id": tid,
            **background.start(
                state,
                tid,
                [sys.executable, "-m", "desanet.lab.events", "ramp", "--spec", str(d / f"{tid}.spec.json")],
                d / f"{tid}.log",
                kind="ramp",
                target=v.slug,
                villages=[v.slug],
                what=f"optical rx {start:g} → {to_dbm:g} dBm over {over:g} s",
                started=now,
                until=now + over,
                stats=spec["stats"],
                owner=owner,
            ),
        }


def _run_ramp(spec: dict[str, Any]) -> None:
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    names = {f.name for f in fields(snmp_agent.OpticalValues)}
    values = {k: v for k, v in spec["values"].items() if k in names}
    workdir = Path(spec["workdir"])
    seconds = float(spec["seconds"])
    step = min(1.0, max(0.1, seconds / 100))  # at least a hundred steps, at most one write a second
    last = None
    while not stop:
        elapsed = time.time() - float(spec["t0"])
        now_dbm = round(ramp_values(float(spec["start"]), float(spec["end"]), seconds, elapsed), 2)
        if now_dbm != last:
            snmp_agent.set_optical(workdir, snmp_agent.OpticalValues(**{**values, "rx_dbm": now_dbm}))
            Path(spec["stats"]).write_text(json.dumps({"rx_dbm": now_dbm, "updated": time.time()}))
            last = now_dbm
        if elapsed >= seconds:
            return
        time.sleep(min(step, max(0.0, seconds - elapsed)))


def main() -> None:
    ap = argparse.ArgumentParser(description="desanet lab: an optical ramp (started by `desanet lab impair --to`)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ramp")
    r.add_argument("--spec", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "ramp":
        _run_ramp(json.loads(args.spec.read_text()))


if __name__ == "__main__":
    main()
