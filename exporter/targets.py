"""Turn what a person typed (a village slug, a name, or an address) into something a probe can measure."""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from exporter.inventory import Inventory, InventoryError, Village, load_inventory, slugify


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
    """A village by slug or name, forgiving case and small misspellings ("pesangaran")."""
    key = slugify(text)
    by_slug = {v.slug: v for v in inv.villages}
    if key in by_slug:
        return by_slug[key]
    by_name = {slugify(v.name): v for v in inv.villages}
    if key in by_name:
        return by_name[key]
    names = sorted(set(by_slug) | set(by_name))
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.75)
    hits = {(by_slug.get(c) or by_name[c]).slug for c in close}
    if len(hits) == 1:
        return by_slug[hits.pop()]
    suggestions = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
    if hits:
        raise TargetError(f"{text!r} is ambiguous", sorted(hits))
    raise TargetError(f"no village called {text!r} in the inventory", suggestions)


def resolve_target(text: str, inventory_path: Path | None = None) -> Target:
    """An IP address is taken as is; anything else must name a village in the inventory."""
    try:
        return Target(address=str(ipaddress.ip_address(text)))
    except ValueError:
        pass
    from exporter.inventory import default_inventory_path

    path = inventory_path or default_inventory_path()
    try:
        inv = load_inventory(path)
    except InventoryError as exc:
        raise TargetError(f"cannot read the inventory:\n{exc}") from None
    village = find_village(inv, text)
    return Target(address=village.address, village=village, inventory=inv)
