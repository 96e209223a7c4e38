"""Prometheus text exposition (format 0.0.4), pre-rendered per village.

Why not prometheus_client's collector for the village data: it formats every sample on every scrape at
~10 µs a series (research/libs.md §5), which puts 10,000 villages × ~40 series near 4 s. Here each village's
lines are rendered once when its results change, kept per metric family, and a scrape only joins strings.
The format is small and stable (https://prometheus.io/docs/instrumenting/exposition_formats/); the output is
checked with `promtool check metrics` in the tests. The process's own metrics still come from
prometheus_client and are appended.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return ",".join(f'{k}="{escape(str(v))}"' for k, v in items)


def number(v: float | int | bool) -> str:
    if isinstance(v, float):  # the common case first: this runs for every sample of every village
        if v == v and v not in (math.inf, -math.inf):
            return repr(v) if not v.is_integer() or abs(v) >= 1e15 else str(int(v))
    elif isinstance(v, bool):
        return "1" if v else "0"
    elif isinstance(v, int):
        return str(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    type: str  # gauge | counter | histogram
    help: str

    def header(self) -> str:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.type}\n"


class LineBuilder:
    """Collects one village's lines per family while its state is rendered."""

    def __init__(self, base_labels: str):
        self.base = base_labels
        self.out: dict[str, list[str]] = {}

    def sample(self, family: FamilySpec, value: float | int | bool | None, extra: str = "", suffix: str = "") -> None:
        if value is None:
            return
        lbl = ",".join(x for x in (self.base, extra) if x)
        braces = f"{{{lbl}}}" if lbl else ""
        self.out.setdefault(family.name, []).append(f"{family.name}{suffix}{braces} {number(value)}\n")

    def histogram(
        self, family: FamilySpec, bounds: tuple[float, ...], counts: list[int], total: float, extra: str = ""
    ) -> None:
        """`counts[i]` observations fell at or below bounds[i] and above bounds[i-1]; the last is +Inf."""
        lbl = ",".join(x for x in (self.base, extra) if x)
        lines = self.out.setdefault(family.name, [])
        cum = 0
        sep = "," if lbl else ""
        for bound, c in zip((*bounds, math.inf), counts, strict=True):
            cum += c
            lines.append(f'{family.name}_bucket{{{lbl}{sep}le="{number(float(bound))}"}} {cum}\n')
        braces = f"{{{lbl}}}" if lbl else ""
        lines.append(f"{family.name}_sum{braces} {number(total)}\n")
        lines.append(f"{family.name}_count{braces} {cum}\n")


def render_families(specs: Iterable[FamilySpec], built: Sequence[LineBuilder]) -> str:
    """Each family of `specs` in their order, its header then every builder's lines for it; a family without a
    line is left out, header and all, so the text names only what was measured. For output rendered whole
    (a /probe answer, the rehearsal calls); `Exposition` keeps the villages' fragments between scrapes."""
    out: list[str] = []
    for spec in specs:
        lines = [line for b in built for line in b.out.get(spec.name, ())]
        if lines:
            out.append(spec.header())
            out.extend(lines)
    return "".join(out)


@dataclass
class Exposition:
    """Families in a fixed order, each holding one pre-rendered fragment per village."""

    specs: list[FamilySpec]
    fragments: dict[str, dict[str, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for s in self.specs:
            self.fragments.setdefault(s.name, {})

    def put(self, key: str, built: LineBuilder) -> None:
        """Replace everything `key` (a village) contributes."""
        with self.lock:
            for name, frag in self.fragments.items():
                lines = built.out.get(name)
                if lines:
                    frag[key] = "".join(lines)
                else:
                    frag.pop(key, None)

    def drop(self, key: str) -> None:
        with self.lock:
            for frag in self.fragments.values():
                frag.pop(key, None)

    def render(self) -> str:
        parts: list[str] = []
        with self.lock:  # copy references only; the join happens outside, so put() never waits for it
            for spec in self.specs:
                frag = self.fragments[spec.name]
                if frag:
                    parts.append(spec.header())
                    parts.extend(frag.values())
        return "".join(parts)
