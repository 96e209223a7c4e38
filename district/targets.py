"""Turn what a person typed (a village slug, a name, or an address) into something a probe can measure."""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from desanet.district import Inventory, InventoryError, Village, load_inventory, slugify


class TargetError(Exception):
    """The target cannot be resolved; `candidates` are the closest village names, if any."""

    def __init__(self, message: str, candidates: list[str] | None = None):
        super().__init__(message)
        self.candidates = candidates or []


@dataclass(frozen=True)
class Target:
    address: str
    village: Village | None = None
    inventory: Inventory | None = None

    @property
    def label(self) -> str:
        return self.village.slug if self.village else self.address


def find_village(inv: Inventory, text: str) -> Village:
    """A village by slug or name, forgiving case and small misspellings ("pesangaran").

    An exact slug wins; then an exact name, unless two villages share it (common in Indonesia: Sumberagung is
    a desa in several kecamatan), which is ambiguous; then the best fuzzy match, if it is clearly better than
    the runner-up; else TargetError with the closest candidates.
    """
    key = slugify(text)
    by_slug = {v.slug: v for v in inv.villages}
    if key in by_slug:
        return by_slug[key]
    named = [v for v in inv.villages if slugify(v.name) == key]
    if len(named) == 1:
        return named[0]
    if named:
        raise TargetError(f"{text!r} is ambiguous: {len(named)} villages have that name", sorted(v.slug for v in named))
    scored: dict[str, float] = {}
    for v in inv.villages:
        for candidate in (v.slug, slugify(v.name)):
            ratio = difflib.SequenceMatcher(None, key, candidate).ratio()
            if candidate.startswith(key) and len(key) >= 3:
                ratio = max(ratio, 0.8)  # "kalibaru" should offer Kalibaru Wetan and Kalibaru Manis
            scored[v.slug] = max(scored.get(v.slug, 0.0), ratio)
    ranked = sorted(scored.items(), key=lambda kv: kv[1], reverse=True)
    best = ranked[0] if ranked else ("", 0.0)
    runner = ranked[1][1] if len(ranked) > 1 else 0.0
    if best[1] >= 0.85 and best[1] - runner >= 0.1:
        return by_slug[best[0]]
    close = [slug for slug, r in ranked if r >= 0.75][:5]
    if len(close) > 1:
        raise TargetError(f"{text!r} is ambiguous", close)
    suggestions = [slug for slug, r in ranked if r >= 0.5][:5]
    raise TargetError(f"no village called {text!r} in the inventory", suggestions)


def resolve_target(text: str, inventory_path: Path | None = None) -> Target:
    """An IP address is taken as is; anything else must name a village in the inventory."""
    try:
        return Target(address=str(ipaddress.ip_address(text)))
    except ValueError:
        pass
    from desanet.district import default_inventory_path

    path = inventory_path or default_inventory_path()
    try:
        inv = load_inventory(path)
    except InventoryError as exc:
        raise TargetError(f"cannot read the inventory:\n{exc}") from None
    village = find_village(inv, text)
    return Target(address=village.address, village=village, inventory=inv)
