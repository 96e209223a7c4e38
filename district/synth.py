"""Synthetic inventories for scale tests: N villages spread over K kecamatan at lab addresses."""

from __future__ import annotations

# Address plan: kecamatan k (1-based) owns 10.<100+k>.0.0/16, so k stops at MAX_KECAMATAN to stay clear of the
# lab's own 10.254.0.0/16 and 10.255.0.0/16 (lab/topology.py); each /16 holds VILLAGES_PER_KECAMATAN routers.
MAX_KECAMATAN = 150
_PER_24 = 250
VILLAGES_PER_KECAMATAN = _PER_24 * 250


def village_address(k: int, v: int) -> str:
    """Router address of village v (0-based) of kecamatan k (1-based): 10.<100+k>.<v//250+1>.<v%250+1>, kept in
    one /16 per kecamatan so the lab and the NOC can route a kecamatan with one prefix."""
    if not 1 <= k <= MAX_KECAMATAN or not 0 <= v < VILLAGES_PER_KECAMATAN:
        raise ValueError(f"village {v} of kecamatan {k} is outside the synthetic address plan")
    return f"10.{100 + k}.{v // _PER_24 + 1}.{v % _PER_24 + 1}"


def synth_inventory(villages: int, kecamatan: int = 25) -> str:
    """A valid inventory of `villages` villages dealt round-robin over `kecamatan` kecamatan, as YAML text."""
    if villages < 1:
        raise ValueError("need at least one village")
    if not 1 <= kecamatan <= MAX_KECAMATAN:
        raise ValueError(f"kecamatan must be between 1 and {MAX_KECAMATAN}")
    kecamatan = min(kecamatan, villages)
    if villages > kecamatan * VILLAGES_PER_KECAMATAN:
        raise ValueError("too many villages for the address plan")
    lines = [
        f"# Synthetic inventory: {villages} villages in {kecamatan} kecamatan (desanet inventory synth).",
        "district: Synthetic district",
        "timezone: Asia/Jakarta",
        "defaults:",
        "  profile: meet-hd",
        "  snmp: {version: 2c, community: {env: DESANET_SNMP_COMMUNITY}}",
        "kecamatan:",
    ]
    for k in range(1, kecamatan + 1):
        lines.append(f"  - {{name: K{k:03d}, uplink_mbit: 1000, lat: {-8.2 - k * 0.01:.4f}, lon: 114.2}}")
    lines.append("villages:")
    for i in range(villages):
        k = i % kecamatan + 1
        v = i // kecamatan
        lines += [
            f"  - name: Desa {i + 1:05d}",
            f"    slug: v{i + 1:05d}",
            "    kind: desa",
            f"    kecamatan: K{k:03d}",
            f"    router: {village_address(k, v)}",
            f"    lat: {-8.2 - k * 0.01 - v * 0.0001:.5f}",
            "    lon: 114.3",
            "    contracted: {down_mbit: 20, up_mbit: 20}",
            "    stamp: {port: 862}",
            "    iperf3: {port: 5201}",
        ]
    return "\n".join(lines) + "\n"
