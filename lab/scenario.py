"""Scenarios: a timeline of impairments, loads and router events, played against the running lab.

A scenario file names a real cause and says what happens when:

    name: A village office downloads updates during a session
    cause: >
      Windows Update on the office PCs ...
    steps:
      - at: 0
        note: the session starts; the link is clean
      - at: 30s
        load: {village: kabat, kind: bulk, flows: 4, for: 2m}
      - at: 3m
        restore: {village: kabat}

Each step has `at` (seconds, or a duration such as 90s, 15m, 2h, 1h30m, counted from the start) and one
action: `impair` (the flags of `desanet lab impair`, plus `to`/`over` for an optical ramp), `load` (those of
`desanet lab load`), `reboot` (a power cut of `down_for`), `restore` (a village, a kecamatan, or `all`) or
only a `note`. `--speed N` plays it N times faster: every time in the file (at, for, over, down_for) is
divided by N; rates, sizes and a video's segment length are not.

The file is checked before anything is touched, every problem at once as FILE:LINE:COL: message, with the
district loader's machinery (ruamel positions, the same wording for pydantic's errors); village and
kecamatan names are checked against the lab that is up (or an inventory).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from desanet.district import InventoryError, Problem
from desanet.district.load import _load_yaml, _messages, _path, _position
from desanet.district.names import _suggest
from desanet.lab import background, events, load
from desanet.lab import lab as labmod
from desanet.lab.topology import LabPlan

SHIPPED = Path(__file__).resolve().parent / "scenarios"
_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


class ScenarioError(Exception):
    """A scenario file with problems (each a district Problem: FILE:LINE:COL: message)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ---------------------------------------------------------------------------------------------- schema
def _duration(value: Any) -> Any:
    """Seconds from 90, 90.5, '90s', '15m', '2h', '1h30m'; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m and any(m.groups()):
            h, mi, s = (float(x) if x else 0.0 for x in m.groups())
            return h * 3600 + mi * 60 + s
        raise ValueError(f"must be seconds or a duration such as 90s, 15m, 2h or 1h30m (got {value!r})")
    return value


def _rate(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("max", "line")):
        return "max" if value is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"must be a rate in Mbit/s above 0, or max (got {value!r})")
    return float(value)


Seconds = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
Rate = Annotated[Any, BeforeValidator(_rate)]
NonNeg = Annotated[float, Field(ge=0)]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Target(_M):
    village: str | None = None
    kecamatan: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _Target:
        if (self.village is None) == (self.kecamatan is None):
            raise ValueError("name exactly one of village or kecamatan")
        return self


class ImpairStep(_Target):
    """`desanet lab impair`'s flags (0 clears one), `cut` for --down, and `to`/`over` for an optical ramp."""

    restore: bool = False
    cut: bool = False
    delay: NonNeg | None = None
    jitter: NonNeg | None = None
    loss: Annotated[float, Field(ge=0, le=100)] | None = None
    rate: NonNeg | None = None
    buffer_ms: NonNeg | None = None
    up_delay: NonNeg | None = None
    up_jitter: NonNeg | None = None
    up_loss: Annotated[float, Field(ge=0, le=100)] | None = None
    up_rate: NonNeg | None = None
    up_buffer_ms: NonNeg | None = None
    optical_rx_dbm: float | None = None
    optical_tx_dbm: float | None = None
    to: float | None = None
    over: Seconds | None = None

    @model_validator(mode="after")
    def _ramp(self) -> ImpairStep:
        if (self.to is None) != (self.over is None):
            raise ValueError("an optical ramp needs both 'to' (dBm) and 'over' (a duration)")
        if (self.to is not None or self.optical_rx_dbm is not None) and self.kecamatan is not None:
            raise ValueError("optical levels belong to a village, not a kecamatan")
        return self


class LoadStep(_Target):
    """`desanet lab load`: kind, rates per direction (Mbit/s, or max for bulk), flows and how long."""

    kind: Literal["bulk", "video", "cbr"] = "bulk"
    down: Rate = None
    up: Rate = None
    flows: Annotated[int, Field(ge=1, le=load.MAX_FLOWS)] | None = None
    for_: Annotated[Seconds, Field(gt=0, le=load.MAX_SECONDS)] = Field(alias="for")
    segment: Annotated[Seconds, Field(ge=0.5, le=60)] = load.VIDEO_SEGMENT_SECONDS  # not compressed by --speed
    cc: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] = load.DEFAULT_CC

    @model_validator(mode="after")
    def _kind_rates(self) -> LoadStep:
        if self.kind != "bulk" and "max" in (self.down, self.up):
            raise ValueError(f"a {self.kind} load has a bitrate: give down/up in Mbit/s (max is for bulk)")
        return self


class RebootStep(_M):
    """A power cut: the link goes dark for `down_for`, then the router boots (sysUpTime from zero)."""

    village: str
    down_for: Annotated[Seconds, Field(le=events.MAX_DOWN_SECONDS)] = 30.0


class RestoreStep(_M):
    """Back to clean: impairments, loads, ramps and optical levels of a village or kecamatan, or `all`."""

    village: str | None = None
    kecamatan: str | None = None
    all: bool = False

    @model_validator(mode="before")
    @classmethod
    def _all(cls, data: Any) -> Any:
        return {"all": True} if data == "all" else data

    @model_validator(mode="after")
    def _one(self) -> RestoreStep:
        if sum(x is not None and x is not False for x in (self.village, self.kecamatan, self.all or None)) != 1:
            raise ValueError("restore a village, a kecamatan, or all")
        return self


ACTIONS = ("impair", "load", "reboot", "restore")


class Step(_M):
    at: Seconds
    note: str | None = None
    impair: ImpairStep | None = None
    load: LoadStep | None = None
    reboot: RebootStep | None = None
    restore: RestoreStep | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) > 1:
            raise ValueError(f"one action per step, not {' and '.join(given)}: give each its own step")
        if not given and not self.note:
            raise ValueError(f"a step needs an action ({', '.join(ACTIONS)}) or a note")
        return self

    @property
    def action(self) -> str | None:
        return next((a for a in ACTIONS if getattr(self, a) is not None), None)


class Scenario(_M):
    name: str = Field(min_length=1)
    cause: str = Field(min_length=1, description="The real-world cause this reproduces, in words.")
    duration: Seconds | None = Field(None, description="How long to play; default: until the last step's effect ends.")
    steps: list[Step]

    @model_validator(mode="after")
    def _some_steps(self) -> Scenario:
        if not self.steps:
            raise ValueError("a scenario needs at least one step under steps:")
        return self


# ---------------------------------------------------------------------------------------------- loading
def resolve(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped scenario ('office-updates')."""
    p = Path(name_or_path)
    if p.exists() or p.suffix or not (SHIPPED / f"{p.name}.yaml").exists():
        return p
    return SHIPPED / f"{p.name}.yaml"


def shipped() -> list[Path]:
    return sorted(SHIPPED.glob("*.yaml"))


def parse(text: str, filename: str, names: LabNames | None = None) -> Scenario:
    """Validate a scenario; ScenarioError lists every problem, each at its line and column."""
    try:
        root = _load_yaml(text, filename)
    except InventoryError as exc:  # the district loader's YAML errors, already located
        raise ScenarioError(exc.problems) from None
    problems: list[Problem] = []

    def add(loc: tuple[str | int, ...], message: str, at_key: bool = False) -> None:
        line, col = _position(root, loc, at_key=at_key)
        where = _path(loc[:-1] if at_key and loc and message.startswith("unknown key") else loc)
        problems.append(Problem(filename, line, col, f"{where}: {message}" if where else message))

    if not isinstance(root, dict):
        raise ScenarioError([Problem(filename, 1, 1, "a scenario is a mapping with name:, cause: and steps:")])
    scenario: Scenario | None = None
    try:
        scenario = Scenario.model_validate(root)
    except ValidationError as err:
        for loc, msg, at_key in _messages(err, Scenario):
            add(loc, msg, at_key)
    if names is not None:
        for loc, message in names.check(root):
            add(loc, message)
    if problems:
        problems.sort(key=lambda p: (p.line, p.col))
        raise ScenarioError(problems)
    assert scenario is not None
    return scenario


def load_file(path: str | Path, names: LabNames | None = None) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "" if p.suffix else " and no shipped scenario has that name (see `desanet lab scenario list`)"
        raise ScenarioError([Problem(str(p), 0, 0, f"no such file{hint}")]) from None
    except OSError as exc:
        raise ScenarioError([Problem(str(p), 0, 0, f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError([Problem(str(p), 0, 0, f"not UTF-8 text (byte {exc.start})")]) from None
    return parse(text, str(p), names)


@dataclass(frozen=True)
class LabNames:
    """The villages and kecamatan a scenario may name (from the lab that is up, or an inventory)."""

    villages: frozenset[str]
    kecamatan: frozenset[str]

    @classmethod
    def of_plan(cls, lp: LabPlan) -> LabNames:
        return cls(frozenset(v.slug for v in lp.villages), frozenset(k.name for k in lp.kecamatan))

    def check(self, root: Any) -> Iterable[tuple[tuple[str | int, ...], str]]:
        """Unknown names in a scenario's YAML tree, checked on the raw tree so that they are reported together
        with the schema's problems."""
        from desanet.district import slugify

        folded = {k.casefold() for k in self.kecamatan}
        steps = root.get("steps") if isinstance(root, dict) else None
        for i, step in enumerate(steps if isinstance(steps, list) else []):
            for action in ACTIONS:
                body = step.get(action) if isinstance(step, dict) else None
                if not isinstance(body, dict):
                    continue
                village, kec = body.get("village"), body.get("kecamatan")
                if isinstance(village, str) and slugify(village) not in self.villages:
                    yield (
                        ("steps", i, action, "village"),
                        f"no village {village!r} in the lab{_suggest(village, self.villages)}",
                    )
                if isinstance(kec, str) and kec.casefold() not in folded:
                    yield (
                        ("steps", i, action, "kecamatan"),
                        f"no kecamatan {kec!r} in the lab{_suggest(kec, self.kecamatan)}",
                    )


# ---------------------------------------------------------------------------------------------- playing
@dataclass(frozen=True)
class _Item:
    t: float  # seconds from the start, already divided by the speed
    order: int
    step: Step | None  # None: the power coming back after a reboot
    village: str | None = None


def timeline(scn: Scenario, speed: float) -> tuple[list[_Item], float]:
    """Everything that happens, in order, in played seconds, and when the play ends. Pure, for the tests."""
    items: list[_Item] = []
    end = 0.0
    for n, step in enumerate(scn.steps):
        t = step.at / speed
        items.append(_Item(t, n, step))
        lasts = 0.0
        if step.reboot is not None:
            lasts = step.reboot.down_for / speed
            items.append(_Item(t + lasts, n, None, step.reboot.village))
        elif step.load is not None:
            lasts = step.load.for_ / speed
        elif step.impair is not None and step.impair.over is not None:
            lasts = step.impair.over / speed
        end = max(end, t + lasts)
    items.sort(key=lambda it: (it.t, it.order, it.step is not None))
    if scn.duration is not None:
        end = scn.duration / speed
    return items, end


def describe_step(step: Step, speed: float = 1.0) -> str:
    """One line for the progress output."""
    a = step.action
    if a == "impair" and step.impair is not None:
        s = step.impair
        target = s.village or f"kecamatan {s.kecamatan}"
        flags = s.model_dump(exclude_none=True, exclude={"village", "kecamatan", "to", "over"}, exclude_defaults=True)
        words = ", ".join(_flag_words(k, v) for k, v in flags.items())
        if s.to is not None and s.over is not None:
            words += f"{', ' if words else ''}optical rx ramp to {s.to:g} dBm over {_dur(s.over / speed)}"
        return f"impair {target}: {words or 'nothing'}"
    if a == "load" and step.load is not None:
        s2 = step.load
        target = s2.village or f"kecamatan {s2.kecamatan}"
        spec = _spec(s2, speed)
        return f"load {target}: {load.describe(spec)} for {_dur(spec.seconds)}"
    if a == "reboot" and step.reboot is not None:
        return f"power cut at {step.reboot.village} for {_dur(step.reboot.down_for / speed)}"
    if a == "restore" and step.restore is not None:
        r = step.restore
        return "restore everything" if r.all else f"restore {r.village or f'kecamatan {r.kecamatan}'}"
    return "note"


_UNITS = {"delay": "ms", "jitter": "ms", "loss": "%", "rate": "Mbit/s", "buffer_ms": "ms", "dbm": "dBm"}


def _flag_words(key: str, value: Any) -> str:
    """'up delay 5 ms', 'buffer 400 ms', 'cut' — an impair step's flag as the progress line says it."""
    if isinstance(value, bool):
        return key
    base = key.removeprefix("up_").removeprefix("optical_")
    unit = _UNITS.get(base.rsplit("_", 1)[-1] if base.endswith("dbm") else base, "")
    name = key.removesuffix("_ms").removesuffix("_dbm").replace("_", " ")
    return f"{name} {value:g} {unit}".rstrip()


def _dur(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 120:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def _spec(s: LoadStep, speed: float) -> load.LoadSpec:
    return load.make_spec(s.kind, s.down, s.up, s.flows, s.for_ / speed, s.segment, s.cc)


class Player:
    """Plays a scenario against the lab, step by step, saying what it does; undoes it if interrupted."""

    def __init__(
        self, scn: Scenario, *, speed: float = 1.0, say: Callable[[str], None] = print, prefix: str | None = None
    ):
        if not 0 < speed <= 100_000:
            raise labmod.LabError("--speed must be more than 0 (1 plays in real time, 60 an hour a minute)")
        self.scn, self.speed, self.say, self.prefix = scn, speed, say, prefix
        self.owner = f"scenario:{os.getpid()}:{time.time():.6f}"  # tags the loads and ramps this player starts
        self.dark: set[str] = set()
        self.touched: set[tuple[str, str]] = set()
        self._indent = ""
        self.started = time.time()

    def play(self, sleep: Callable[[float], None] = time.sleep) -> None:
        items, end = timeline(self.scn, self.speed)
        self.started = time.time()
        self.say(f"scenario: {self.scn.name} ({_dur(end)}{f' at {self.speed:g}x' if self.speed != 1 else ''})")
        t0 = time.monotonic()
        completed = False
        try:
            for it in items:
                wait = it.t - (time.monotonic() - t0)
                if wait > 0:
                    sleep(wait)
                self._do(it, time.monotonic() - t0)
            wait = end - (time.monotonic() - t0)
            if wait > 0:
                sleep(wait)
            completed = True
        finally:
            if not completed:
                self.say("interrupted: undoing what this scenario did")
                self.undo()
        self.say(f"[{time.monotonic() - t0:8.1f} s] scenario ended")

    def _do(self, it: _Item, now: float) -> None:
        stamp = f"[{now:8.1f} s]" if self.speed == 1 else f"[{now:8.1f} s ≙ {_dur(it.t * self.speed):>8}]"
        if it.step is None:
            assert it.village is not None
            self.dark.discard(it.village)
            if not events.powered_off_since(it.village, self.started, prefix=self.prefix):
                return  # a restore step brought it back already
            on = events.power_on(it.village, prefix=self.prefix)
            self.say(f"{stamp} power back at {on['village']}: link up, snmpd restarted")
            return
        step = it.step
        if step.note:
            self.say(f"{stamp} {step.note}")
        if step.action is None:
            return
        self.say(f"{stamp} {describe_step(step, self.speed)}")
        self._indent = " " * len(stamp)
        try:
            self._act(step)
        except (labmod.LabError, InventoryError) as exc:
            # A step the lab refuses (the lab changed since the check) is said and skipped, not fatal.
            self.say(f"{stamp}   refused: {exc}")

    def _act(self, step: Step) -> None:
        if step.impair is not None:
            s = step.impair
            self.touched.add(("v", s.village) if s.village else ("k", s.kecamatan or ""))
            down = {"delay_ms": s.delay, "jitter_ms": s.jitter, "loss_pct": s.loss, "rate_mbit": s.rate}
            up = {"delay_ms": s.up_delay, "jitter_ms": s.up_jitter, "loss_pct": s.up_loss, "rate_mbit": s.up_rate}
            down["buffer_ms"], up["buffer_ms"] = s.buffer_ms, s.up_buffer_ms
            optical = {k: v for k, v in (("rx_dbm", s.optical_rx_dbm), ("tx_dbm", s.optical_tx_dbm)) if v is not None}
            labmod.impair(
                s.village,
                s.kecamatan,
                down,
                up,
                blackhole=s.cut,
                restore=s.restore,
                optical=optical or None,
                prefix=self.prefix,
            )
            if s.to is not None and s.over is not None and s.village is not None:
                events.ramp_optical(s.village, s.to, s.over / self.speed, prefix=self.prefix, owner=self.owner)
        elif step.load is not None:
            spec = _spec(step.load, self.speed)
            entry = load.start(step.load.village, step.load.kecamatan, spec, prefix=self.prefix, owner=self.owner)
            self.say(f"{self._indent} load {entry['id']} runs (pid {entry['pid']})")
        elif step.reboot is not None:
            self.dark.add(step.reboot.village)  # before: an interrupt may land as power_off returns
            events.power_off(step.reboot.village, step.reboot.down_for / self.speed, prefix=self.prefix)
        elif step.restore is not None:
            restore(step.restore.village, step.restore.kecamatan, prefix=self.prefix)
            self.dark.discard(step.restore.village or "")
            if step.restore.all:
                self.dark.clear()

    def undo(self) -> None:
        """Power on what this scenario cut, stop its loads and ramps, restore what it impaired."""
        for slug in sorted(self.dark):
            try:
                if events.powered_off_since(slug, self.started, prefix=self.prefix):  # this scenario's cut only
                    events.power_on(slug, prefix=self.prefix)
            except labmod.LabError as exc:
                self.say(f"  power on {slug}: {exc}")
        try:
            with background.locked_state(self.prefix) as state:
                background.stop(state, lambda _tid, e: e.get("owner") == self.owner)
        except labmod.LabError as exc:
            self.say(f"  stopping loads: {exc}")
        for kind, name in sorted(self.touched):
            try:
                labmod.impair(
                    name if kind == "v" else None,
                    name if kind == "k" else None,
                    {},
                    {},
                    restore=True,
                    prefix=self.prefix,
                )
            except labmod.LabError as exc:
                self.say(f"  restore {name}: {exc}")


def restore(village: str | None, kecamatan: str | None, *, prefix: str | None = None) -> list[str]:
    """A village, a kecamatan or (neither) everything back to clean: impairments cleared, its loads and ramps
    stopped, a powered-off village powered on, optical levels back to the lab's defaults. Returns what it did."""
    from dataclasses import asdict

    from desanet.lab import snmp_agent

    state = labmod.load_state(prefix)
    if state is None or not state.get("complete"):
        raise labmod.LabError("the lab is not up: run `desanet lab up` first")
    lp = labmod.plan_from_state(state)
    done: list[str] = []
    if village is not None:
        slugs = [labmod._find_slug(lp, village)]
        keys = [f"v:{slugs[0]}"]
    elif kecamatan is not None:
        try:
            kec = lp.kec(kecamatan)
        except KeyError:
            raise labmod.LabError(f"no kecamatan {kecamatan!r} in the lab") from None
        slugs, keys = [], [f"k:{kec.name}"]
    else:
        slugs = [v.slug for v in lp.villages]
        keys = list(state["impairments"])
    for slug in slugs:
        if f"reboot:{slug}" in state.get("events", {}):
            events.power_on(slug, prefix=prefix)
            done.append(f"powered {slug} on")
    with background.locked_state(prefix) as st:
        targets = {k[2:] for k in keys}
        stopped = background.stop(
            st,
            lambda _tid, e: (
                (village is None and kecamatan is None)
                or e.get("target") in targets
                or (e.get("kind") == "ramp" and e.get("target") in slugs)
            ),
        )
    done += [f"stopped {tid}" for tid in stopped]
    defaults = asdict(snmp_agent.OpticalValues())
    for key in keys:
        kind, name = key.split(":", 1)
        vslug = name if kind == "v" else None
        optical = defaults if vslug is not None and vslug in state.get("optical", {}) else None
        labmod.impair(vslug, name if kind == "k" else None, {}, {}, restore=True, optical=optical, prefix=prefix)
        done.append(f"restored {name}")
    return done
