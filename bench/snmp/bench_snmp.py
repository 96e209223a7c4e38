"""Scale benchmark of probes/snmp.py: N villages' agents on 127.1.x.y, polled all at once by one SnmpPoller.

Runs itself inside a fresh network namespace (`unshare --net`, root) holding only lo plus `--veth-pairs` veth
pairs, so every agent serves the same interface table and no packet can leave the machine. Agents are
net-snmp snmpd written by lab/snmp_agent.write_agent_files; `--per-snmpd` addresses share one snmpd process
(one endpoint list on its command line) so that 1,000 villages do not need 1,000 processes. Every snmpd is
stopped by its PID at the end.

Reports, as one JSON line per `--v3-every` value: the first poll (fresh poller: v3 discovery, full walks), the
median of `--rounds` steady polls (wall and poller CPU), and the same reads done by net-snmp's `snmpbulkget` (one
process per table per village, `--cli-jobs` at a time) as a reference. `--v3-every 0 1` polls the same agents
all v2c, then all SNMPv3 authPriv, so the two CPU figures sit side by side (the v3 row carries the ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from desanet.lab.snmp_agent import OpticalValues, SnmpV3User, write_agent_files
from desanet.probes.snmp import IF_COLUMNS, MIKROTIK_OPTICAL_COLUMNS, SYS_UPTIME, SnmpPoller, SnmpSettings

COMMUNITY = "bench-community"
V3 = SnmpV3User(user="bench", auth_key="bench-auth-key", priv_key="bench-priv-key")
PORT = 161
_INSIDE = "DESANET_BENCH_SNMP_INSIDE"


def address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def start_agents(base: Path, n: int, per: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    for g in range(0, n, per):
        hosts = [address(i) for i in range(g, min(n, g + per))]
        argv = write_agent_files(base / f"snmpd{g // per}", hosts[0], COMMUNITY, V3, OpticalValues(), port=PORT)
        argv[-1] = ",".join(f"udp:{h}:{PORT}" for h in hosts)
        procs.append(
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        )
    return procs


def stop_agents(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def wait_ready(n: int, per: int) -> None:
    deadline = time.monotonic() + 60
    for g in range(0, n, per):
        argv = ["snmpget", "-v2c", "-c", COMMUNITY, "-t", "0.3", "-r", "0", f"{address(g)}:{PORT}", "1.3.6.1.2.1.1.3.0"]
        while "Timeticks" not in subprocess.run(argv, capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent {address(g)} did not answer within 60 s")
            time.sleep(0.1)


def settings(i: int, v3_every: int) -> SnmpSettings:
    if v3_every and i % v3_every == 0:
        return SnmpSettings(version="3", port=PORT, user=V3.user, auth_key=V3.auth_key, priv_key=V3.priv_key)
    return SnmpSettings(port=PORT, community=COMMUNITY)


async def run_poller(n: int, rounds: int, v3_every: int, in_flight: int) -> dict[str, object]:
    items = [(address(i), settings(i, v3_every)) for i in range(n)]
    out: dict[str, object] = {}
    async with SnmpPoller(max_in_flight=in_flight) as poller:
        t, c = time.monotonic(), time.process_time()
        res = await poller.poll_many(items)
        out["first_wall_s"], out["first_cpu_s"] = round(time.monotonic() - t, 3), round(time.process_time() - c, 3)
        out["first_failed"] = sum(not r.success for r in res)
        walls, cpus, failed = [], [], 0
        for _ in range(rounds):
            t, c = time.monotonic(), time.process_time()
            res = await poller.poll_many(items)
            walls.append(time.monotonic() - t)
            cpus.append(time.process_time() - c)
            failed += sum(not r.success for r in res)
            errors = [r.error for r in res if not r.success][:3]
        out["steady_wall_s"] = round(statistics.median(walls), 3)
        out["steady_walls_s"] = [round(w, 3) for w in walls]
        out["steady_cpu_s"] = round(statistics.median(cpus), 3)
        out["steady_cpu_ms_per_village"] = round(1000 * statistics.median(cpus) / n, 2)
        out["steady_failed"] = failed
        out["errors_sample"] = errors
        r0 = res[0]
        out["interfaces_per_village"], out["optics_per_village"] = len(r0.interfaces), len(r0.optics)
    # A second fresh poller: its first poll walks every agent again, but the agents are warm now (snmpd has
    # its interface cache, pass_persist its awk), which separates the poller's first-poll cost from theirs.
    async with SnmpPoller(max_in_flight=in_flight) as poller:
        t, c = time.monotonic(), time.process_time()
        res = await poller.poll_many(items)
        out["first_warm_agents_wall_s"] = round(time.monotonic() - t, 3)
        out["first_warm_agents_cpu_s"] = round(time.process_time() - c, 3)
    return out


def _oids(cols: dict[str, tuple[int, ...]]) -> list[str]:
    return [".".join(map(str, c)) for c in cols.values()]


async def run_cli(n: int, jobs: int, rows: int) -> dict[str, object]:
    """The same reads with net-snmp's CLI: per village one snmpbulkget of sysUpTime + the interface columns
    (rows+1 repetitions, as the poller's walk asks) and one of the optical columns."""
    sem = asyncio.Semaphore(jobs)
    base = ["snmpbulkget", "-v2c", "-c", COMMUNITY, "-On", "-M", "/nonexistent", "-m", "", "-t", "1", "-r", "1"]
    up = ".".join(map(str, SYS_UPTIME)) + ".0"
    failed = 0

    async def one(argv: list[str]) -> None:
        nonlocal failed
        async with sem:
            p = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            failed += (await p.wait()) != 0

    cmds = []
    for i in range(n):
        a = f"{address(i)}:{PORT}"
        cmds.append([*base, "-Cn1", f"-Cr{rows + 1}", a, up, *_oids(IF_COLUMNS)])
        cmds.append([*base, "-Cr2", a, *_oids(MIKROTIK_OPTICAL_COLUMNS)])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    await asyncio.gather(*(one(c) for c in cmds))
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cli_wall_s": round(wall, 3), "cli_cpu_s": round(cpu, 3), "cli_failed": failed}


def inside(args: argparse.Namespace) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for d in range(args.veth_pairs):
        subprocess.run(["ip", "link", "add", f"va{d}", "type", "veth", "peer", "name", f"vb{d}"], check=True)
        for name in (f"va{d}", f"vb{d}"):
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
    base = Path(tempfile.mkdtemp(prefix="bench-snmp-"))
    procs = start_agents(base, args.villages, args.per_snmpd)
    try:
        wait_ready(args.villages, args.per_snmpd)
        v2c_cpu: float | None = None
        for k, v3_every in enumerate(args.v3_every):
            row: dict[str, object] = {"note": args.note} if args.note else {}
            row |= {
                "villages": args.villages,
                "snmpd_processes": len(procs),
                "v3_every": v3_every,
                "max_in_flight": args.max_in_flight,
                "cores": os.cpu_count(),
                "loadavg_before": os.getloadavg()[0],
            }
            row |= asyncio.run(run_poller(args.villages, args.rounds, v3_every, args.max_in_flight))
            cpu = float(row["steady_cpu_ms_per_village"])  # type: ignore[arg-type]
            if v3_every == 0:
                v2c_cpu = cpu
            elif v3_every == 1 and v2c_cpu:
                row["v2c_steady_cpu_ms_per_village"] = v2c_cpu  # the same agents, just before
                row["v3_over_v2c_cpu"] = round(cpu / v2c_cpu, 2)
            if args.cli_jobs and k == 0:
                row |= asyncio.run(run_cli(args.villages, args.cli_jobs, int(row["interfaces_per_village"])))  # type: ignore[call-overload]
            row["loadavg_after"] = os.getloadavg()[0]
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    finally:
        stop_agents(procs)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--villages", type=int, nargs="+", default=[217, 1000])
    ap.add_argument("--per-snmpd", type=int, default=20, help="village addresses served by one snmpd process")
    ap.add_argument("--veth-pairs", type=int, default=2, help="veth pairs beside lo (2: five interfaces per agent)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-in-flight", type=int, default=32, help="SnmpPoller(max_in_flight=…); 32 is its default")
    ap.add_argument(
        "--v3-every",
        type=int,
        nargs="+",
        default=[0],
        help="every k-th village uses SNMPv3 authPriv (0: none, 1: all); several values run one after another "
        "on the same agents (`0 1`: v2c and v3 CPU side by side)",
    )
    ap.add_argument("--note", help="a note written into each row")
    ap.add_argument("--cli-jobs", type=int, default=8, help="snmpbulkget processes at once (0: skip the reference)")
    ap.add_argument("--out", help="append the JSON lines here")
    args = ap.parse_args()
    if os.environ.get(_INSIDE):
        args.villages = args.villages[0]
        inside(args)
        return
    for n in args.villages:
        argv = [sys.executable, __file__, *sys.argv[1:]]
        i = argv.index("--villages") if "--villages" in argv else None
        if i is not None:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            argv[i:j] = []
        argv += ["--villages", str(n)]
        subprocess.run(["unshare", "--net", "--", *argv], check=True, env={**os.environ, _INSIDE: "1"})


if __name__ == "__main__":
    main()
