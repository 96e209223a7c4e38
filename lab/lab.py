"""Bring the simulated district up and down, impair it, and tell the truth about what it imposed.

Everything the lab makes is recorded in a state directory (/run/desanet-lab/<prefix>/state.json): the plan,
the impairments, and the PID (with its start time, so a recycled PID is never killed) of every process it
started. `down` removes exactly that, whether or not `up` finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from desanet.district import (
    Inventory,
    load_inventory,
)
from desanet.lab import netns
from desanet.lab.linkstats import counter_names
from desanet.lab.secrets import _agent_secrets, _env_secrets, lab_only_secrets
from desanet.lab.shaping import DEFAULT_BUFFER_MS, _links, _shape_all, _shape_lines, _tc_batches, shaping_words
from desanet.lab.topology import CORE_NOC_ADDR, NOC_ADDR, KecPlan, LabError, LabPlan, VillagePlan, lab_prefix, plan

NEEDED = {
    "ip": "iproute2",
    "tc": "iproute2",
    "nft": "nftables",
    "iptables-restore": "iptables",
    "snmpd": "snmpd",
    "iperf3": "iperf3",
}
DIRECTION_KEYS = (
    "delay_ms",
    "jitter_ms",
    "loss_pct",
    "rate_mbit",
    "buffer_ms",
    "delay_distribution",  # None: uniform (see lab/delay_model.py)
    "delay_correlation_pct",
    "reorder",  # None: a FIFO, order kept; True: independent releases (netem's reordering)
)


def state_dir(prefix: str | None = None) -> Path:
    return Path(os.environ.get("DESANET_LAB_RUN_DIR", "/run/desanet-lab")) / (prefix or lab_prefix())


def _run(argv: list[str], input_: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, input=input_, text=True, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv[:6])}{' …' if len(argv) > 6 else ''} failed: {proc.stderr.strip()}")
    return proc


def _ns_batch(ns: str | None, lines: Iterable[str], check: bool = True) -> None:
    text = "\n".join(lines) + "\n"
    argv = ["ip", "-batch", "-"] if ns is None else ["ip", "-n", ns, "-batch", "-"]
    if check:
        _run(argv, text)
    else:  # -force: go on past lines that fail (a route someone already removed)
        _run(["ip", "-force", *argv[1:]], text, check=False)


def _guard_host(lp: LabPlan, state: dict[str, Any]) -> None:
    """Blackhole the lab's addresses in the host namespace while the lab is up.

    The inventory's router addresses only exist inside the lab; a probe typed in the host namespace by
    mistake (instead of through `desanet lab exec`) would otherwise follow the host's default route out of the
    machine. A blackhole route makes such a send fail at once, locally. Only addresses the host would send
    out of an interface are guarded (none inside the test suite's empty namespace); `down` removes them.
    """
    guard = []
    for addr in [*(v.router for v in lp.villages), NOC_ADDR, CORE_NOC_ADDR, *(k.kec_addr for k in lp.kecamatan)]:
        got = subprocess.run(["ip", "-j", "route", "get", addr], capture_output=True, text=True, check=False)
        try:
            route = json.loads(got.stdout or "[]")[0]
        except (ValueError, IndexError):
            continue
        if "gateway" in route or route.get("dev") not in (None, "lo"):
            guard.append(f"{addr}/32")
    if guard:
        _ns_batch(None, (f"route replace blackhole {net}" for net in guard))
    state["host_guard"] = guard


def preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, qdiscs and firewall rules): run it with sudo")
    missing = sorted({pkg for cmd, pkg in NEEDED.items() if shutil.which(cmd) is None})
    if missing:
        raise LabError(f"missing Debian packages: {' '.join(missing)} (apt-get install {' '.join(missing)})")


# ---------------------------------------------------------------------------------------------- state
def load_state(prefix: str | None = None) -> dict[str, Any] | None:
    path = state_dir(prefix) / "state.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return state


def save_state(state: dict[str, Any]) -> None:
    d = state_dir(state["prefix"])
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(d / "state.json")


def plan_from_state(state: dict[str, Any]) -> LabPlan:
    kecs = {k["index"]: KecPlan(**k) for k in state["plan"]["kecamatan"]}
    villages = tuple(VillagePlan(**{**v, "kecamatan": kecs[v["kecamatan"]]}) for v in state["plan"]["villages"])
    p = state["plan"]
    return LabPlan(
        prefix=p["prefix"], noc_ns=p["noc_ns"], core_ns=p["core_ns"], kecamatan=tuple(kecs.values()), villages=villages
    )


def _plan_to_json(lp: LabPlan) -> dict[str, Any]:
    return {
        "prefix": lp.prefix,
        "noc_ns": lp.noc_ns,
        "core_ns": lp.core_ns,
        "kecamatan": [asdict(k) for k in lp.kecamatan],
        "villages": [{**asdict(v), "kecamatan": v.kecamatan.index} for v in lp.villages],
    }


def _queues(lp: LabPlan) -> list[dict[str, Any]]:
    out = []
    for v in lp.villages:
        out.append({"ns": v.kecamatan.ns, "queue": v.down_queue, "key": f"v:{v.slug}:down"})
        out.append({"ns": v.kecamatan.ns, "queue": v.up_queue, "key": f"v:{v.slug}:up"})
    for k in lp.kecamatan:
        out.append({"ns": lp.core_ns, "queue": k.down_queue, "key": f"k:{k.name}:down"})
        out.append({"ns": lp.core_ns, "queue": k.up_queue, "key": f"k:{k.name}:up"})
    return out


# ---------------------------------------------------------------------------------------------- processes
def _proc_start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None when it is not running: gone, or a zombie
    whose parent has not reaped it yet (a lab process outlives the command that started it, so its parent is
    init, which may take its time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _spawn(
    state: dict[str, Any], name: str, ns: str | None, argv: list[str], log: Path, env: dict[str, str] | None = None
) -> int:
    full = argv if ns is None else ["ip", "netns", "exec", ns, *argv]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    state["pids"][name] = {"pid": proc.pid, "start": _proc_start_time(proc.pid)}
    return proc.pid


def _alive(entry: dict[str, Any]) -> bool:
    st = _proc_start_time(entry["pid"])
    return st is not None and st == entry["start"]


def _stop_processes(state: dict[str, Any]) -> None:
    entries = [e for e in state.get("pids", {}).values() if _alive(e)]
    for e in entries:
        with contextlib.suppress(ProcessLookupError):
            os.kill(e["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(e) for e in entries):
        time.sleep(0.05)
        for e in entries:  # reap our own children, if these are
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(e["pid"], os.WNOHANG)
    for e in entries:
        if _alive(e):
            with contextlib.suppress(ProcessLookupError):
                os.kill(e["pid"], signal.SIGKILL)
    state["pids"] = {}


# ---------------------------------------------------------------------------------------------- up / down
def inventory_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def up(
    inventory_path: Path,
    *,
    services: bool = True,
    progress: Any = None,
    uncapped: bool = False,
    buffer_ms: float = DEFAULT_BUFFER_MS,
    up_buffer_ms: float = DEFAULT_BUFFER_MS,
) -> dict[str, Any]:
    """Build the lab for an inventory. Idempotent: the same inventory already up is left as it is (only its
    caps and buffers are re-applied if they were asked differently).

    Every village link is capped at its contracted rates and every kecamatan uplink at its uplink_mbit, each
    direction with a queue of buffer_ms (toward the villages) or up_buffer_ms (toward the NOC), unless
    `uncapped`, which leaves the veths at line rate as before caps existed.
    """
    preflight()
    for name, value in (("--buffer-ms", buffer_ms), ("--up-buffer-ms", up_buffer_ms)):
        if not 0 < value <= 10_000:
            raise LabError(f"{name} must be more than 0 and at most 10000 ms, not {value:g}")
    say = progress or (lambda msg: None)
    inv = load_inventory(inventory_path)
    lp = plan(inv)
    shaping = {"uncapped": uncapped, "buffer_ms": float(buffer_ms), "up_buffer_ms": float(up_buffer_ms)}
    existing = load_state(lp.prefix)
    digest = inventory_hash(inventory_path)
    if existing is not None:
        if existing.get("inventory_hash") == digest and existing.get("complete") and _healthy(existing):
            if existing.get("shaping") != shaping:
                existing["shaping"] = shaping
                save_state(existing)
                _shape_all(existing, plan_from_state(existing))
                say(f"lab already up with this inventory; links now {shaping_words(shaping)}")
                return existing
            say("lab already up with this inventory")
            return existing
        say("replacing the lab that is up")
        down(lp.prefix)
    fills = lab_only_secrets(inv, os.environ)
    for env_name, lab_value in fills.items():
        say(
            f"{env_name} is not set: the lab's agents use the lab-only value {lab_value!r} and `desanet lab exec` "
            "passes it to what it runs (a real inventory still needs it set)"
        )
    secrets = _agent_secrets(inv, fills)  # fail before building anything when a secret is missing

    t0 = time.monotonic()
    d = state_dir(lp.prefix)
    (d / "villages").mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "prefix": lp.prefix,
        "inventory": str(Path(inventory_path).resolve()),
        "inventory_hash": digest,
        "plan": _plan_to_json(lp),
        "queues": _queues(lp),
        "impairments": {},
        "emulate": {},
        "optical": {},
        "shaping": shaping,
        # The {env: NAME} secrets the lab's agents accept, for `lab exec` to pass on: lab values only (the
        # agents' own configuration under this directory holds them too).
        "secrets_env": _env_secrets(inv, fills),
        "pids": {},
        "complete": False,
        "created": time.time(),
    }
    save_state(state)  # from here on, `down` can clean up whatever exists

    _guard_host(lp, state)
    save_state(state)
    say(f"creating {len(lp.namespaces())} network namespaces")
    _ns_batch(None, (f"netns add {ns}" for ns in lp.namespaces()))
    links = [f"link add name core netns {lp.noc_ns} type veth peer name noc netns {lp.core_ns}"]
    links += [
        f"link add name {k.core_if} netns {lp.core_ns} type veth peer name {k.up_if} netns {k.ns}" for k in lp.kecamatan
    ]
    links += [
        f"link add name {v.kec_if} netns {v.kecamatan.ns} type veth peer name up0 netns {v.ns}" for v in lp.villages
    ]
    say(f"linking them with {len(links)} veth pairs")
    _ns_batch(None, links)

    say("addressing and routing")
    base_sysctls = {
        "ipv4/conf/all/rp_filter": "0",
        "ipv4/conf/default/rp_filter": "0",
        "ipv6/conf/all/disable_ipv6": "1",
        "ipv6/conf/default/disable_ipv6": "1",
    }
    fwd = {**base_sysctls, "ipv4/ip_forward": "1"}
    for ns in lp.namespaces():
        netns.write_sysctls(ns, fwd if ns == lp.core_ns or ns.startswith(f"{lp.prefix}-k") else base_sysctls)
    _ns_batch(
        lp.noc_ns,
        [
            "link set lo up",
            "link set core up",
            f"addr add {NOC_ADDR}/30 dev core",
            *(f"route add {v.router}/32 via {CORE_NOC_ADDR}" for v in lp.villages),
            *(f"route add {k.kec_addr}/32 via {CORE_NOC_ADDR}" for k in lp.kecamatan),
        ],
    )
    core = ["link set lo up", "link set noc up", f"addr add {CORE_NOC_ADDR}/30 dev noc"]
    for k in lp.kecamatan:
        core += [f"link set {k.core_if} up", f"addr add {k.core_addr}/30 dev {k.core_if}"]
        # The uplink's cap toward the NOC: the core's ingress from k<k>, redirected to this ifb (see Link).
        core += [f"link add i{k.core_if} type ifb", f"link set i{k.core_if} up"]
    core += [f"route add {v.router}/32 via {v.kecamatan.kec_addr}" for v in lp.villages]
    _ns_batch(lp.core_ns, core)
    by_kec: dict[int, list[VillagePlan]] = {}
    for v in lp.villages:
        by_kec.setdefault(v.kecamatan.index, []).append(v)
    for k in lp.kecamatan:
        lines = [
            "link set lo up",
            f"link set {k.up_if} up",
            f"addr add {k.kec_addr}/30 dev {k.up_if}",
            f"route add default via {k.core_addr}",
        ]
        for v in by_kec.get(k.index, []):
            lines += [
                f"link set {v.kec_if} up",
                f"addr add {k.kec_addr}/32 dev {v.kec_if}",
                f"route add {v.router}/32 dev {v.kec_if}",
            ]
        _ns_batch(k.ns, lines)
    for v in lp.villages:
        _ns_batch(
            v.ns,
            [
                "link set lo up",
                "link set up0 up",
                f"addr add {v.router}/32 dev up0",
                f"route add {v.kecamatan.kec_addr}/32 dev up0",
                f"route add default via {v.kecamatan.kec_addr} dev up0",
            ],
        )
    say(f"links {shaping_words(shaping)}")
    _shape_all(state, lp, fresh=True)

    say("installing the impairment hooks")
    for ns in [lp.core_ns, *(k.ns for k in lp.kecamatan)]:
        _run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            "table inet desanet {\n chain impair { type filter hook forward priority -10; policy accept; }\n}\n",
        )
        _run(
            ["ip", "netns", "exec", ns, "iptables-restore", "--noflush"],
            "*filter\n:DESANET - [0:0]\n-A FORWARD -j DESANET\nCOMMIT\n",
        )

    say("starting the delay emulator")
    _spawn(
        state,
        "emulator",
        None,
        [sys.executable, "-m", "desanet.lab.emulator", "--state-dir", str(d)],
        d / "emulator.log",
    )
    save_state(state)
    _wait_for(lambda: (d / "emulator.ready").exists() or not _alive(state["pids"]["emulator"]), 30)
    if not (d / "emulator.ready").exists():
        raise LabError(f"the delay emulator did not start; see {d / 'emulator.log'}")
    _spawn(
        state,
        "linkstats",
        None,
        [sys.executable, "-m", "desanet.lab.linkstats", "--state-dir", str(d)],
        d / "linkstats.log",
    )
    save_state(state)
    _wait_for(lambda: (d / "linkstats.ready").exists() or not _alive(state["pids"]["linkstats"]), 30)
    if not (d / "linkstats.ready").exists():
        raise LabError(f"the link counter sampler did not start; see {d / 'linkstats.log'}")

    if services:
        say(f"starting snmpd and iperf3 in {len(lp.villages)} villages")
        _start_services(state, lp, inv, secrets)
    state["complete"] = True
    state["up_seconds"] = round(time.monotonic() - t0, 2)
    save_state(state)
    say(f"lab up in {state['up_seconds']} s: {len(lp.villages)} villages in {len(lp.kecamatan)} kecamatan")
    return state


def _wait_for(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        time.sleep(0.05)


def _start_services(state: dict[str, Any], lp: LabPlan, inv: Inventory, secrets: dict[str, dict[str, Any]]) -> None:
    from desanet.lab import snmp_agent

    d = state_dir(lp.prefix)
    for v in lp.villages:
        village = inv.village(v.slug)
        work = d / "villages" / v.slug
        work.mkdir(parents=True, exist_ok=True)
        s = secrets.get(v.slug, {})
        v3 = None
        if "v3" in s:
            v3 = snmp_agent.SnmpV3User(**s["v3"])
        argv = snmp_agent.write_agent_files(work, v.router, s.get("community"), v3, snmp_agent.OpticalValues())
        _spawn(state, f"snmpd:{v.slug}", v.ns, argv, work / "snmpd.out")
        ip = village.iperf3_address()
        if ip is not None:
            _spawn(
                state, f"iperf3:{v.slug}", v.ns, ["iperf3", "-s", "-B", ip[0], "-p", str(ip[1])], work / "iperf3.log"
            )
    endpoints = [(v.ns, *ep) for v in lp.villages if (ep := inv.village(v.slug).stamp_address()) is not None]
    if endpoints:
        (d / "reflectors.json").write_text(json.dumps(endpoints))
        argv = [sys.executable, "-m", "desanet.lab.reflectors", "--endpoints", str(d / "reflectors.json")]
        _spawn(state, "reflectors", None, argv, d / "reflectors.log")
    save_state(state)


def _healthy(state: dict[str, Any]) -> bool:
    lp = plan_from_state(state)
    return all(netns.exists(ns) for ns in lp.namespaces()) and all(_alive(e) for e in state["pids"].values())


def down(prefix: str | None = None) -> list[str]:
    """Remove every namespace, link, rule and process this lab made. Returns what was removed."""
    preflight()
    p = prefix or lab_prefix()
    removed: list[str] = []
    state = load_state(p)
    if state is not None:
        tasks = state.get("tasks", {})  # loads and optical ramps (lab/background.py), by PID like the rest
        n = len([e for e in [*state.get("pids", {}).values(), *tasks.values()] if _alive(e)])
        _stop_processes({"pids": tasks})
        _stop_processes(state)
        removed.append(f"{n} processes")
    if state is not None and state.get("host_guard"):
        _ns_batch(None, (f"route del blackhole {net}" for net in state["host_guard"]), check=False)
        removed.append(f"{len(state['host_guard'])} host guard routes")
    names = netns.list_netns(f"{p}-")
    if names:
        # Deleting a namespace deletes its veths, qdiscs and firewall rules with it.
        _ns_batch(None, (f"netns delete {ns}" for ns in names))
        removed.append(f"{len(names)} namespaces")
    d = state_dir(p)
    if d.exists():
        shutil.rmtree(d)
    return removed


# ---------------------------------------------------------------------------------------------- impair
def _empty_direction() -> dict[str, float | None]:
    return dict.fromkeys(DIRECTION_KEYS)


def impair(
    target: str | None,
    kecamatan: str | None,
    down_: dict[str, Any],
    up_: dict[str, Any],
    *,
    blackhole: bool = False,
    restore: bool = False,
    optical: dict[str, Any] | None = None,
    prefix: str | None = None,
) -> dict[str, Any]:
    """Merge the given impairments into the lab and apply them. A value of 0 clears that impairment."""
    preflight()
    state = load_state(prefix)
    if state is None or not state.get("complete"):
        raise LabError("the lab is not up: run `desanet lab up` first")
    lp = plan_from_state(state)
    if (target is None) == (kecamatan is None):
        raise LabError("name exactly one village or one --kecamatan")
    if target is not None:
        slug = _find_slug(lp, target)
        key = f"v:{slug}"
    else:
        try:
            key = f"k:{lp.kec(kecamatan or '').name}"
        except KeyError:
            raise LabError(f"no kecamatan {kecamatan!r} in the lab") from None
    cur = state["impairments"].get(key) or {"down": _empty_direction(), "up": _empty_direction(), "blackholed": False}
    if restore:
        cur = {"down": _empty_direction(), "up": _empty_direction(), "blackholed": False}
    for direction, values in (("down", down_), ("up", up_)):
        for k, val in values.items():
            if val is not None:
                cur[direction][k] = _merged_value(k, val)
    if blackhole:
        cur["blackholed"] = True
    _validate(cur)
    state["impairments"][key] = cur
    if optical:
        if not key.startswith("v:"):
            raise LabError("optical values belong to a village, not a kecamatan")
        slug = key[2:]
        from desanet.lab import background

        # A level set by hand ends a ramp still moving it (lab/events.py).
        background.stop(state, lambda _tid, e: e.get("kind") == "ramp" and e.get("target") == slug)
        merged = {**state["optical"].get(slug, {}), **optical}
        state["optical"][slug] = merged
        _apply_optical(state, slug, merged)
    _refresh_emulation(state)
    save_state(state)
    request_reload(state)
    _apply_all(state, lp)
    return cur


def _find_slug(lp: LabPlan, text: str) -> str:
    from desanet.district import slugify

    key = slugify(text)
    for v in lp.villages:
        if v.slug == key:
            return v.slug
    raise LabError(f"no village {text!r} in the lab")


def _merged_value(key: str, val: Any) -> Any:
    """A flag's value as the state keeps it: 0, False and the default distribution clear it (None)."""
    if key == "delay_distribution":
        return None if val == "uniform" else str(val)
    if key == "reorder":
        return True if val else None
    return None if val == 0 else float(val)


def _validate(cur: dict[str, Any]) -> None:
    from desanet.lab.delay_model import DISTRIBUTIONS

    for direction in ("down", "up"):
        d = cur[direction]
        if d.get("delay_distribution") not in (None, *DISTRIBUTIONS):
            raise LabError(f"no delay distribution {d['delay_distribution']!r}: one of {', '.join(DISTRIBUTIONS)}")
        if d.get("delay_correlation_pct") is not None and not 0 <= d["delay_correlation_pct"] <= 100:
            raise LabError("delay correlation must be between 0 and 100 %")
        if d["loss_pct"] is not None and not 0 <= d["loss_pct"] <= 100:
            raise LabError("loss must be between 0 and 100 %")
        if d["jitter_ms"] is not None and d["jitter_ms"] > (d["delay_ms"] or 0):
            raise LabError("jitter larger than the delay would need negative delays: raise --delay")
        for k in ("delay_ms", "jitter_ms", "rate_mbit", "buffer_ms"):
            if d.get(k) is not None and d[k] < 0:
                raise LabError(f"{k} cannot be negative")
        if d.get("buffer_ms") is not None and d["buffer_ms"] > 10_000:
            raise LabError("a buffer of more than 10 s is not a router's: give --buffer-ms in milliseconds")


def _refresh_emulation(state: dict[str, Any]) -> None:
    emulate: dict[str, dict[str, Any]] = {}
    for key, cur in state["impairments"].items():
        for direction in ("down", "up"):
            d = cur[direction]
            if d["delay_ms"] or d["jitter_ms"] or d["loss_pct"]:
                emulate[f"{key}:{direction}"] = {
                    "delay_ms": d["delay_ms"] or 0.0,
                    "jitter_ms": d["jitter_ms"] or 0.0,
                    "delay_distribution": d.get("delay_distribution") or "uniform",
                    "delay_correlation_pct": d.get("delay_correlation_pct") or 0.0,
                    "reorder": bool(d.get("reorder")),
                }
    state["emulate"] = emulate


def request_reload(state: dict[str, Any]) -> None:
    from desanet.lab.emulator import request

    try:
        request(state_dir(state["prefix"]), {"cmd": "reload"})
    except (OSError, RuntimeError) as exc:
        raise LabError(f"the delay emulator does not answer ({exc}); `desanet lab up` again") from None


def _apply_all(state: dict[str, Any], lp: LabPlan) -> None:
    """Rewrite each namespace's impairment rules from the state: simple, idempotent, atomic per namespace."""
    imp = state["impairments"]
    nft: dict[str, list[str]] = {}
    ipt: dict[str, list[str]] = {}
    shape: dict[str, list[str]] = {}
    queue_of = {q["key"]: q["queue"] for q in state["queues"]}
    for link in _links(lp):
        ns, ifname, key = link.ns, link.far_if, link.key
        cur = imp.get(key)
        nft.setdefault(ns, [])
        ipt.setdefault(ns, [])
        if cur is None:
            continue
        if cur["blackholed"]:
            # Named counters outlive the chain's rewrites, so lab/linkstats.py can difference them over time.
            cut_down, cut_up = counter_names(ifname, "down")[1], counter_names(ifname, "up")[1]
            nft[ns] += [
                f'oifname "{ifname}" counter name "{cut_down}" drop',
                f'iifname "{ifname}" counter name "{cut_up}" drop',
            ]
        for direction, match, nft_match in (
            ("down", f"-o {ifname}", f'oifname "{ifname}"'),
            ("up", f"-i {ifname}", f'iifname "{ifname}"'),
        ):
            d = cur[direction]
            dkey = f"{key}:{direction}"
            if d["loss_pct"]:
                threshold = round(d["loss_pct"] * 10000)
                nft[ns].append(
                    f"{nft_match} numgen random mod 1000000 < {threshold} "
                    f'counter name "{counter_names(ifname, direction)[0]}" log prefix "{dkey}" group 1 drop'
                )
            if d["delay_ms"] or d["jitter_ms"] or d["loss_pct"]:
                ipt[ns].append(f"-A DESANET {match} -j NFQUEUE --queue-num {queue_of[dkey]}")
        shape.setdefault(ns, []).extend(_shape_lines(state, link))
    _tc_batches(shape)
    for ns, rules in nft.items():
        names = sorted({n for r in rules for n in re.findall(r'counter name "([^"]+)"', r)})
        script = "".join(f"add counter inet desanet {n}\n" for n in names)  # "add" keeps an existing one
        script += "flush chain inet desanet impair\n" + "".join(f"add rule inet desanet impair {r}\n" for r in rules)
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], script)
    for ns, rules in ipt.items():
        _run(
            ["ip", "netns", "exec", ns, "iptables-restore", "--noflush"],
            "*filter\n:DESANET - [0:0]\n" + "".join(r + "\n" for r in rules) + "COMMIT\n",
        )


def _apply_optical(state: dict[str, Any], slug: str, values: dict[str, Any]) -> None:
    from desanet.lab import snmp_agent

    work = state_dir(state["prefix"]) / "villages" / slug
    snmp_agent.set_optical(work, snmp_agent.OpticalValues(**values))


# ---------------------------------------------------------------------------------------------- truth
def truth(window: float, prefix: str | None = None) -> dict[str, Any]:
    from desanet.lab.emulator import request

    state = load_state(prefix)
    if state is None or not state.get("complete"):
        raise LabError("the lab is not up: run `desanet lab up` first")
    lp = plan_from_state(state)
    try:
        applied = request(state_dir(state["prefix"]), {"cmd": "truth", "window": window})["applied"]
    except (OSError, RuntimeError) as exc:
        raise LabError(f"the delay emulator does not answer ({exc})") from None
    links: dict[str, Any] = {}
    if "linkstats" in state["pids"]:  # a lab from before per-link counters has none
        from desanet.lab import linkstats

        try:
            links = linkstats.request(state_dir(state["prefix"]), {"cmd": "truth", "window": window})["links"]
        except (OSError, RuntimeError) as exc:
            raise LabError(f"the link counter sampler does not answer ({exc})") from None
    empty_applied = {
        "packets": None,
        "dropped": None,
        "delay_ms_p50": None,
        "delay_ms_mean": None,
        "ipdv_ms_mean_abs": None,
        "reordered": None,
        "drawn_delay_ms_p50": None,
        "drawn_delay_ms_mean": None,
    }

    def entry(key: str) -> dict[str, Any]:
        cur = state["impairments"].get(key) or {
            "down": _empty_direction(),
            "up": _empty_direction(),
            "blackholed": False,
        }
        return {
            "configured": cur,
            "applied": {d: applied.get(f"{key}:{d}", empty_applied) for d in ("down", "up")},
            # The link itself: its cap in force, what it was offered and passed, its queue, drops by cause.
            "link": {d: links.get(f"{key}:{d}") for d in ("down", "up")},
        }

    return {
        "window_seconds": window,
        "villages": {
            v.slug: {"kecamatan": v.kecamatan.name, "address": v.router, **entry(f"v:{v.slug}")} for v in lp.villages
        },
        "kecamatan": {k.name: entry(f"k:{k.name}") for k in lp.kecamatan},
    }


def status(prefix: str | None = None) -> dict[str, Any]:
    p = prefix or lab_prefix()
    state = load_state(p)
    names = netns.list_netns(f"{p}-")
    if state is None:
        return {"up": False, "prefix": p, "namespaces": len(names)}
    pids = state.get("pids", {})
    dead = sorted(name for name, e in pids.items() if not _alive(e))
    return {
        "up": bool(state.get("complete")) and not dead,
        "prefix": p,
        "inventory": state.get("inventory"),
        "namespaces": len(names),
        "villages": len(state["plan"]["villages"]),
        "kecamatan": len(state["plan"]["kecamatan"]),
        "processes": len(pids),
        "dead_processes": dead,
        "impaired": {
            k: v
            for k, v in state["impairments"].items()
            if v["blackholed"] or any(x is not None for d in ("down", "up") for x in v[d].values())
        },
        "up_seconds": state.get("up_seconds"),
        "noc_namespace": state["plan"]["noc_ns"],
        "shaping": state.get("shaping", {"uncapped": True}),
        "tasks": _running_tasks(state),  # loads and optical ramps
        "events": state.get("events", {}),  # villages without power (a reboot under way)
    }


def _running_tasks(state: dict[str, Any]) -> dict[str, Any]:
    from desanet.lab import background

    return background.running(state)


def exec_argv(command: list[str], prefix: str | None = None) -> list[str]:
    state = load_state(prefix)
    if state is None:
        raise LabError("the lab is not up: run `desanet lab up` first")
    return ["ip", "netns", "exec", state["plan"]["noc_ns"], *command]


def exec_env(environ: Mapping[str, str], prefix: str | None = None) -> dict[str, str]:
    """The environment for a command run in the lab: `environ` plus the lab's secrets it does not set itself.

    A value the caller set wins (to try a wrong community on purpose); an unset one gets what the lab's
    agents accept, so `desanet lab exec -- desanet check VILLAGE` works in a fresh shell.
    """
    state = load_state(prefix) or {}
    env = dict(environ)
    for name, value in state.get("secrets_env", {}).items():
        if not env.get(name):
            env[name] = value
    return env
