"""Link shaping in the lab: each link capped at its contracted rate with a router-like queue.

Where each cap lives and why (docs/lab.md "Caps and buffers"): every cap sits in the namespace that forwards
the packet, never on the sender's own interface, whose socket and TCP Small Queues would throttle the sender
before the queue fills. Downward: a tbf on the kecamatan's village interface (village links) or the core's
kecamatan interface (uplinks). Upward: a tbf under the village's own htb class on its kecamatan's uplink, and
for an uplink an ifb on the core's ingress. The queue is the buffer's length at the cap's rate.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Any

from desanet.lab.topology import LabError, LabPlan

# A shaper's queue in milliseconds at its rate when nothing else is said: about one round trip of the flows
# it carries (the classic rule, Villamizar & Song 1994), here from a kantor desa to the video services in
# Jakarta; docs/lab.md "Caps and buffers" argues it and the bloated figures to try with --up-buffer-ms.
DEFAULT_BUFFER_MS = 30.0
FRAME_BYTES = 1514  # the largest Ethernet frame tbf counts (1500 MTU + 14-byte header)


@dataclass(frozen=True)
class Link:
    """One link of the lab, its contract, and where its caps live.

    Both caps of a link sit in the namespace that also holds its impairment rules (`ns`: the kecamatan's for
    a village link, the core for an uplink), on the far side of the sender: a packet's queue must be one it
    meets after being forwarded, as in the field, and not the sending host's own, where the socket's send
    buffer and TCP Small Queues throttle the sender long before a router's buffer fills (measured: a UDP
    flood out of a village's own up0 tbf held 27 ms of a 300 ms queue, and never dropped).

    - village, down: tbf on the kecamatan's `v<i>` egress;
    - village, up: an htb class of its own on the kecamatan's `uplink` egress, chosen by the router's source
      address (the only address in the village), whose leaf is the same tbf as every other cap; the class
      runs at twice the cap so the tbf binds (htb with a plain fifo would drop a TCP sender's 64 kB GSO
      packets whole at a short queue, measured 0.79-0.95 of the ideal goodput at 5 Mbit/s; tbf segments them);
    - uplink, down: tbf on the core's `k<k>` egress;
    - uplink, up: the core's `k<k>` ingress redirected (mirred) to an ifb `ik<k>` whose egress holds the tbf.
    """

    key: str  # v:<slug> or k:<kecamatan>
    village: bool
    index: int
    ns: str
    far_if: str  # in ns, toward the village or kecamatan
    router: str | None  # a village's address; None for an uplink
    down_mbit: float | None  # contracted (village) or uplink_mbit (kecamatan); None: not known
    up_mbit: float | None


def _links(lp: LabPlan) -> list[Link]:
    out = [
        Link(f"v:{v.slug}", True, v.index, v.kecamatan.ns, v.kec_if, v.router, v.down_mbit, v.up_mbit)
        for v in lp.villages
    ]
    out += [
        Link(f"k:{k.name}", False, k.index, lp.core_ns, k.core_if, None, k.uplink_mbit, k.uplink_mbit)
        for k in lp.kecamatan
    ]
    return out


def shape_for(
    shaping: dict[str, Any] | None, contract_mbit: float | None, override: dict[str, Any] | None, direction: str
) -> tuple[float | None, float]:
    """(cap in Mbit/s or None for line rate, queue in ms) in force for one direction of one link.

    An `impair --rate` wins over the contract; without one the contract holds unless the lab is uncapped. A
    state from before caps existed has no `shaping` and was uncapped.
    """
    shaping = shaping or {"uncapped": True}
    override = override or {}
    rate = override.get("rate_mbit") or (None if shaping.get("uncapped") else contract_mbit)
    default = shaping.get("buffer_ms" if direction == "down" else "up_buffer_ms") or DEFAULT_BUFFER_MS
    return rate, float(override.get("buffer_ms") or default)


def _shape(state: dict[str, Any], link: Link, direction: str) -> tuple[float | None, float]:
    contract = link.down_mbit if direction == "down" else link.up_mbit
    cur = state["impairments"].get(link.key) or {}
    return shape_for(state.get("shaping"), contract, cur.get(direction), direction)


def bucket_and_limit(rate_mbit: float, buffer_ms: float) -> tuple[int, int]:
    """(bucket, queue) in bytes for a cap: a bucket of 4 ms (at least ten full frames) keeps TCP at the cap;
    the queue holds buffer_ms at the rate, at least two full frames, or a slow link with a short buffer could
    not hold one packet. A saturated link then delays a packet by about queue / rate = buffer_ms and drops
    what does not fit, as a router's tail-drop shaper does."""
    rate_bytes = rate_mbit * 1e6 / 8
    return max(int(rate_bytes * 0.004), 10 * FRAME_BYTES), max(round(rate_bytes * buffer_ms / 1e3), 2 * FRAME_BYTES)


def tbf_args(rate_mbit: float, buffer_ms: float) -> list[str]:
    """tc arguments for a tbf cap (tbf counts whole frames; `limit` is its child bfifo's size)."""
    burst, limit = bucket_and_limit(rate_mbit, buffer_ms)
    return ["tbf", "rate", f"{round(rate_mbit * 1e6)}bit", "burst", str(burst), "limit", str(limit)]


def _shape_lines(state: dict[str, Any], link: Link, *, fresh: bool = False) -> list[str]:
    """`tc -batch` lines (run in link.ns) that put both caps of a link in force; `fresh`: nothing there yet.

    Lines with ` del ` may fail harmlessly (there was nothing to delete); _tc_batches knows."""
    out: list[str] = []
    rate, buffer_ms = _shape(state, link, "down")
    if rate:
        out.append(f"qdisc replace dev {link.far_if} root {' '.join(tbf_args(rate, buffer_ms))}")
    elif not fresh:
        out.append(f"qdisc del dev {link.far_if} root")
    rate, buffer_ms = _shape(state, link, "up")
    if link.village:
        cls, prio = f"1:{link.index:x}", link.index
        if rate:
            burst, _limit = bucket_and_limit(2 * rate, buffer_ms)
            bits, tbf = f"{round(2 * rate * 1e6)}bit", " ".join(tbf_args(rate, buffer_ms))
            out += [
                f"class replace dev uplink parent 1: classid {cls} htb rate {bits} ceil {bits} burst {burst} "
                f"cburst {burst} quantum {10 * FRAME_BYTES}",
                f"qdisc replace dev uplink parent {cls} handle {link.index + 1:x}: {tbf}",
                *([] if fresh else [f"filter del dev uplink parent 1: prio {prio}"]),
                f"filter add dev uplink parent 1: prio {prio} protocol ip u32 match ip src {link.router}/32 "
                f"flowid {cls}",
            ]
        elif not fresh:
            out += [f"filter del dev uplink parent 1: prio {prio}", f"class del dev uplink classid {cls}"]
    else:
        ifb = f"i{link.far_if}"
        if rate:
            out += [  # both idempotent: a later impair does not lift the redirect even for a moment
                f"qdisc replace dev {link.far_if} handle ffff: ingress",
                f"filter replace dev {link.far_if} parent ffff: protocol all prio 1 handle 800::800 u32 "
                f"match u32 0 0 action mirred egress redirect dev {ifb}",
                f"qdisc replace dev {ifb} root {' '.join(tbf_args(rate, buffer_ms))}",
            ]
        elif not fresh:
            out += [f"qdisc del dev {link.far_if} ingress", f"qdisc del dev {ifb} root"]
    return out


def _shape_all(state: dict[str, Any], lp: LabPlan, *, fresh: bool = False) -> None:
    """Put every link's caps and buffers in place: one `tc -batch` per namespace, a few at a time."""
    lines: dict[str, list[str]] = {}
    for link in _links(lp):
        lines.setdefault(link.ns, []).extend(_shape_lines(state, link, fresh=fresh))
    _tc_batches(lines)


# A kecamatan's `uplink` holds one htb whose classes are its villages' caps toward the NOC; packets of no
# class (the kecamatan's own) pass uncapped. Adding it where it exists fails harmlessly.
HTB_ROOT = "qdisc add dev uplink root handle 1: htb"


def _tc_batches(lines: dict[str, list[str]]) -> None:
    """Run `tc -force -batch` in each namespace (eight at a time); only a failed ` del ` line (nothing was
    there to delete) or HTB_ROOT (it is there already) is expected."""
    lines = {
        ns: ([HTB_ROOT] if any("dev uplink parent 1:" in ln for ln in ls) else []) + ls for ns, ls in lines.items()
    }
    running: list[tuple[str, subprocess.Popen[str]]] = []

    def reap(limit: int) -> None:
        while len(running) > limit:
            ns, proc = running.pop(0)
            assert proc.stderr is not None
            err = proc.stderr.read()
            proc.wait()
            # -force goes on past a failed line and names it ("Command failed -:N").
            failed = [int(m) for m in re.findall(r"Command failed -:(\d+)", err)]
            expected = [" del " in lines[ns][n - 1] or lines[ns][n - 1] == HTB_ROOT for n in failed]
            if not all(expected) or (proc.returncode and not failed):
                raise LabError(f"tc in {ns} failed: {err.strip()}")

    for ns, ls in lines.items():
        if not ls:
            continue
        proc = subprocess.Popen(
            ["tc", "-force", "-n", ns, "-batch", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write("\n".join(ls) + "\n")
        proc.stdin.close()
        running.append((ns, proc))
        reap(8)
    reap(0)


def shaping_words(shaping: dict[str, Any]) -> str:
    if shaping.get("uncapped"):
        return "uncapped (line rate; `impair --rate` still caps one)"
    return (
        f"capped at their contracted rates, queues of {shaping['buffer_ms']:g} ms toward the villages and "
        f"{shaping['up_buffer_ms']:g} ms toward the NOC"
    )
