"""The lab's plan, derived from an inventory: names, addresses and queue numbers. Pure, so it is testable.

    NOC ns ──veth── core ns ──veth── kecamatan ns (one per kecamatan) ──veth── village ns (one per village)
    core  10.255.0.1/30      noc 10.255.0.2/30
                             k<k> 10.254.<k>.1/30 ── uplink 10.254.<k>.2/30
                                                     v<i> 10.254.<k>.2/32 ── up0 <router>/32

Village links are point-to-point /32s, so any router address an inventory names works, and the NOC holds
one host route per village and nothing else: it has no default route and no link to the host, so a probe
run in it can reach the lab and nothing beyond.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from desanet.district import Inventory

NOC_ADDR = "10.255.0.1"
CORE_NOC_ADDR = "10.255.0.2"


def lab_prefix() -> str:
    """Namespace name prefix; tests use their own so they never touch a lab someone is using."""
    return os.environ.get("DESANET_LAB_PREFIX", "dn")


@dataclass(frozen=True)
class KecPlan:
    index: int  # 1-based
    name: str
    ns: str
    core_if: str  # in the core ns, toward this kecamatan
    up_if: str  # in the kecamatan ns, toward the core
    core_addr: str
    kec_addr: str
    uplink_mbit: float

    @property
    def down_queue(self) -> int:
        return 2 * self.index

    @property
    def up_queue(self) -> int:
        return 2 * self.index + 1


@dataclass(frozen=True)
class VillagePlan:
    index: int  # 1-based over the whole lab
    slug: str
    kecamatan: KecPlan
    ns: str
    kec_if: str  # in the kecamatan ns, toward the village
    router: str
    # The contracted rates the lab caps this link at (None in a state written before caps existed).
    down_mbit: float | None = None
    up_mbit: float | None = None

    @property
    def down_queue(self) -> int:
        return 2 * self.index

    @property
    def up_queue(self) -> int:
        return 2 * self.index + 1


@dataclass(frozen=True)
class LabPlan:
    prefix: str
    noc_ns: str
    core_ns: str
    kecamatan: tuple[KecPlan, ...]
    villages: tuple[VillagePlan, ...]

    def village(self, slug: str) -> VillagePlan:
        for v in self.villages:
            if v.slug == slug:
                return v
        raise KeyError(slug)

    def kec(self, name: str) -> KecPlan:
        for k in self.kecamatan:
            if k.name.casefold() == name.casefold():
                return k
        raise KeyError(name)

    def namespaces(self) -> list[str]:
        return [self.noc_ns, self.core_ns, *(k.ns for k in self.kecamatan), *(v.ns for v in self.villages)]


def plan(inv: Inventory, prefix: str | None = None) -> LabPlan:
    p = prefix or lab_prefix()
    if len(inv.kecamatan) > 250:
        raise ValueError("the lab supports at most 250 kecamatan")
    if any(v.router.version != 4 for v in inv.villages):
        raise ValueError("the lab simulates IPv4 village routers only")
    kecs: dict[str, KecPlan] = {}
    for k, kec in enumerate(inv.kecamatan, 1):
        kecs[kec.name] = KecPlan(
            index=k,
            name=kec.name,
            ns=f"{p}-k{k}",
            core_if=f"k{k}",
            up_if="uplink",
            core_addr=f"10.254.{k}.1",
            kec_addr=f"10.254.{k}.2",
            uplink_mbit=kec.uplink_mbit,
        )
    villages = tuple(
        VillagePlan(
            index=i,
            slug=v.slug,
            kecamatan=kecs[v.kecamatan],
            ns=f"{p}-v{i}",
            kec_if=f"v{i}",
            router=v.address,
            down_mbit=v.contracted.down_mbit,
            up_mbit=v.contracted.up_mbit,
        )
        for i, v in enumerate(inv.villages, 1)
    )
    if len(villages) > 30000:
        raise ValueError("the lab supports at most 30000 villages (NFQUEUE numbers are 16-bit)")
    return LabPlan(prefix=p, noc_ns=f"{p}-noc", core_ns=f"{p}-core", kecamatan=tuple(kecs.values()), villages=villages)


class LabError(Exception):
    """A lab operation that cannot go ahead; the message says why in words."""
