"""Loading an inventory file: every problem at once, each as FILE:LINE:COL: message.

Operators edit inventory.yaml by hand, so a mistake must come back as `FILE:LINE:COL: message` for *every*
problem at once, not one at a time. Pydantic checks each item's fields; the cross-checks (duplicate slugs,
unknown kecamatan or profile, overlapping sessions) run here over whatever items validated, and each carries
the YAML path it is about so it gets a line number too. Messages are written for the operator: they name the
key in YAML terms (`villages[3].router`), say what was found and what is wanted, suggest the nearest known
name for a typo, and never repeat a secret.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    TypeAdapter,
    ValidationError,
)
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError

from desanet.district.model import (
    _REPEAT_STEP,
    _SECRET_KEYS,
    DEFAULT_PROFILES,
    DEFAULT_TZ,
    Inventory,
    Kecamatan,
    Profile,
    Session,
    Village,
    _covers,
    _Model,
    slugify,
)
from desanet.district.names import _show, _suggest
from desanet.district.secrets import _Model as _SecretModel


# ---------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Problem:
    """One thing wrong with an inventory file, located as precisely as the YAML allows (1-based)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class InventoryError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


Loc = tuple[str | int, ...]


def _position(root: Any, loc: Loc, *, at_key: bool = False) -> tuple[int, int]:
    """1-based line and column of the deepest node of `loc` that exists in the ruamel tree.

    A scalar at the end of `loc` is located at its value (where the mistake is typed), anything else at
    its key or list item; `at_key` forces the key (for unknown keys).
    """
    node = root
    line, col = 0, 0
    for n, part in enumerate(loc):
        lc = getattr(node, "lc", None)
        if lc is None:
            break
        try:
            if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
                line, col = lc.item(part)
            elif isinstance(node, dict) and part in node:
                child = node[part]
                last = n == len(loc) - 1
                if last and not at_key and child is not None and not isinstance(child, dict | list):
                    line, col = lc.value(part)
                else:
                    line, col = lc.key(part)
            else:
                break
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    return line + 1, col + 1


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@lru_cache(maxsize=1)
def _model_names() -> frozenset[str]:
    names = {"IPv4Address", "IPv6Address"}
    todo: list[type] = [_Model, _SecretModel]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(names)


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop what pydantic adds to a location for unions and validators ('2c', 'EnvSecret', 'function-after[…]')."""
    return tuple(
        p for p in loc if isinstance(p, int) or (isinstance(p, str) and p.isidentifier() and p not in _model_names())
    )


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Model classes an annotation can hold (through Optional, unions, Annotated and lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    if get_origin(annotation) in (Union, Annotated, list) or type(annotation).__name__ == "UnionType":
        for arg in get_args(annotation):
            out += _models_in(arg)
    return out


def _keys_at(model: type[BaseModel], loc: Loc) -> set[str]:
    """The keys allowed in the mapping at `loc` (relative to `model`), for a did-you-mean."""
    models = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        models = [
            m for cls in models if part in cls.model_fields for m in _models_in(cls.model_fields[part].annotation)
        ]
    return {k for m in models for k in m.model_fields}


_SLUG_HELP = "use lowercase letters, digits and '-', not starting or ending with '-'"


def _messages(err: ValidationError, model: type[BaseModel]) -> Iterator[tuple[Loc, str, bool]]:
    """(location, message, at_key) for each error, in words an operator can act on."""
    errors = err.errors(include_url=False)
    # A typo in a key shows up twice: the unknown key and the required key it was meant to be. Say it once.
    missing = {(_clean_loc(e["loc"])[:-1], _clean_loc(e["loc"])[-1]) for e in errors if e["type"] == "missing"}
    typos: set[tuple[Loc, Any]] = set()
    out: list[tuple[Loc, str, bool]] = []
    for e in errors:
        loc = _clean_loc(e["loc"])
        kind, msg, value = e["type"], e["msg"], e.get("input")
        secret = any(p in _SECRET_KEYS for p in loc)
        if kind == "extra_forbidden":
            parent, key = loc[:-1], loc[-1]
            hint = ""
            wanted = [m for (p, m) in missing if p == parent]
            close = difflib.get_close_matches(str(key), [str(m) for m in wanted], n=1, cutoff=0.6)
            if close:
                typos.add((parent, close[0]))
                hint = f" (did you mean {close[0]!r}?)"
            else:
                allowed = _keys_at(model, parent)
                hint = _suggest(str(key), allowed)
                if not hint and 0 < len(allowed) <= 12:
                    hint = f" (known keys: {', '.join(sorted(allowed))})"
            out.append((loc, f"unknown key {key!r}{hint}", True))
            continue
        if kind == "missing":
            out.append((loc, "", False))  # placeholder, resolved below once the typos are known
            continue
        if kind == "union_tag_invalid":
            tag = (e.get("ctx") or {}).get("tag")
            out.append(((*loc, "version"), f"unknown SNMP version {tag!r}: write 2c or 3", False))
            continue
        if kind == "union_tag_not_found":
            out.append((loc, "missing required key 'version' (2c or 3)", False))
            continue
        if kind == "string_pattern_mismatch" and loc and loc[-1] in ("slug", "name"):
            example = slugify(value) if isinstance(value, str) else ""
            msg = f"{value!r} is not a valid {loc[-1]}: {_SLUG_HELP}" + (f" (e.g. {example!r})" if example else "")
            out.append((loc, msg, False))
            continue
        if kind in ("model_type", "dict_type", "model_attributes_type"):
            what = "nothing" if value is None else _show(value)
            out.append((loc, f"must be a mapping of keys and values (got {what})", False))
            continue
        if kind == "list_type":
            out.append((loc, f"must be a list (got {'nothing' if value is None else _show(value)})", False))
            continue
        if kind in ("datetime_parsing", "datetime_type", "datetime_from_date_parsing"):
            out.append((loc, f"must be a date and time such as 2026-12-03T09:00:00 (got {_show(value)})", False))
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif msg.startswith("Input should be "):
            msg = "must be " + msg[len("Input should be ") :]
            if kind.endswith("_parsing") or kind.endswith("_type"):
                msg = msg.split(",")[0]
            if not secret:
                msg += f" (got {_show(value)})"
        elif msg.startswith("String should "):
            msg = "must " + msg[len("String should ") :]
            if not secret:
                msg += f" (got {_show(value)})"
        out.append((loc, msg, False))
    seen: set[tuple[Loc, str]] = set()
    for loc, msg, at_key in out:
        if msg == "":
            parent, key = loc[:-1], loc[-1]
            if (parent, key) in typos:
                continue
            loc, msg = parent, f"missing required key {key!r}"
        if (loc, msg) not in seen:
            seen.add((loc, msg))
            yield loc, msg, at_key


_ITEM_ADAPTERS: dict[str, tuple[type[BaseModel], TypeAdapter[Any]]] = {
    "kecamatan": (Kecamatan, TypeAdapter(Kecamatan)),
    "villages": (Village, TypeAdapter(Village)),
    "profiles": (Profile, TypeAdapter(Profile)),
    "sessions": (Session, TypeAdapter(Session)),
}
_REQUIRED_LISTS = ("kecamatan", "villages")
_SINGULAR = {"kecamatan": "kecamatan", "villages": "village", "profiles": "profile", "sessions": "session"}


class _Report:
    """Collects problems, locating each path in the YAML tree."""

    def __init__(self, filename: str, root: Any):
        self.filename = filename
        self.root = root
        self.problems: list[Problem] = []

    def line(self, loc: Loc) -> int:
        return _position(self.root, loc, at_key=True)[0]

    def __call__(self, loc: Loc, message: str, *, at_key: bool = False) -> None:
        """Report `message` about `loc`; `at_key` locates the key itself and names the mapping holding it."""
        line, col = _position(self.root, loc, at_key=at_key)
        where = _path(loc[:-1] if at_key and loc and message.startswith("unknown key") else loc)
        self.problems.append(Problem(self.filename, line, col, f"{where}: {message}" if where else message))


def _load_yaml(text: str, filename: str) -> Any:
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        key = re.search(r'duplicate key "([^"]*)"', str(exc.problem or ""))
        first = exc.context_mark.line + 1 if exc.context_mark is not None else 0
        what = f"duplicate key {key.group(1)!r}" if key else "duplicate key"
        raise InventoryError(
            [
                Problem(
                    filename,
                    mark.line + 1 if mark else 1,
                    mark.column + 1 if mark else 1,
                    f"YAML: {what} in the mapping that starts on line {first}",
                )
            ]
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        message = f"YAML syntax: {exc.problem}"
        if "mapping values are not allowed" in str(exc.problem):
            message += " (check this line's indentation against the line above, or quote a value containing ': ')"
        elif "\\t" in str(exc.problem):
            message += " (indent with spaces, not tabs)"
        elif exc.context:
            message += f" ({exc.context}"
            if exc.context_mark is not None and exc.context_mark.line + 1 != line:
                message += f" on line {exc.context_mark.line + 1}"
            message += "; check the indentation and the brackets)"
        raise InventoryError([Problem(filename, line, col, message)]) from None


def parse_inventory(
    text: str, filename: str = "<inventory>", *, now: datetime | None = None, strict_time: bool = True
) -> Inventory:
    """Validate an inventory, raising InventoryError with every problem found, sorted by position.

    `strict_time` reports one-off sessions that have already ended (what `inventory check` wants);
    the exporter passes False so that a file that was valid yesterday keeps loading today.

    Speed: ruamel.yaml's round-trip loader (needed for line numbers) is pure Python and takes about a minute
    for 10,000 villages on this machine. So a file is first read with libyaml (PyYAML's C loader, restricted to
    YAML 1.2's core types so both readers agree); only when that copy has a problem is it read again with
    ruamel to place every message at its line.
    """
    fast = _load_yaml_fast(text)
    if fast is not _SLOW:
        try:
            return _parse(fast, filename, now=now, strict_time=strict_time)
        except InventoryError:
            pass  # re-read with positions, so every message gets its line
    return _parse(_load_yaml(text, filename), filename, now=now, strict_time=strict_time)


_SLOW = object()


def _load_yaml_fast(text: str) -> Any:
    """libyaml's parse, or _SLOW when it is unavailable or the text needs ruamel's careful messages."""
    try:
        import yaml
    except ImportError:
        return _SLOW
    loader_cls = getattr(yaml, "CSafeLoader", None)
    if loader_cls is None:
        return _SLOW
    try:
        return yaml.load(text, Loader=_core_schema_loader(yaml, loader_cls))  # a SafeLoader subclass
    except Exception:  # syntax errors, duplicate keys: the slow path explains them with positions
        return _SLOW


@functools.cache
def _core_schema_loader(yaml: Any, base: Any) -> Any:
    """A libyaml SafeLoader that resolves plain scalars like YAML 1.2's core schema (as ruamel does): no
    yes/no/on/off booleans, no sexagesimal numbers, and duplicate keys refused."""

    class CoreLoader(base):
        yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, Any]]]] = {}

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            if len(keys) != len(set(map(repr, keys))):
                raise yaml.constructor.ConstructorError(None, None, "duplicate key", node.start_mark)
            return super().construct_mapping(node, deep=deep)

    for tag, regexp, first in (
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        (
            "tag:yaml.org,2002:float",
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            "-+0123456789.",
        ),
        ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        (
            "tag:yaml.org,2002:timestamp",
            r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?"
            r"(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?"
            r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
            "0123456789",
        ),
    ):
        CoreLoader.add_implicit_resolver(tag, re.compile(regexp), list(first))
    return CoreLoader


def _parse(data: Any, filename: str, *, now: datetime | None, strict_time: bool) -> Inventory:
    if data is None:
        raise InventoryError(
            [Problem(filename, 1, 1, "the file is empty: an inventory needs at least district, kecamatan and villages")]
        )
    if not isinstance(data, dict):
        lc = getattr(data, "lc", None)
        line, col = (lc.line + 1, lc.col + 1) if lc is not None and lc.line is not None else (1, 1)
        message = f"the inventory must be a mapping of keys (district:, villages:, …), not {_show(data)}"
        raise InventoryError([Problem(filename, line, col, message)])
    add = _Report(filename, data)

    # Per item first, so one broken village does not hide the problems of the others.
    items: dict[str, list[tuple[int, Any]]] = {}
    for key, (model, adapter) in _ITEM_ADAPTERS.items():
        if key not in data:
            continue
        raw = data[key]
        if raw is None and key not in _REQUIRED_LISTS:
            items[key] = []  # `sessions:` with every entry commented out
            continue
        if not isinstance(raw, list):
            got = "nothing" if raw is None else _show(raw)
            add((key,), f"must be a list, one '- ' entry per {_SINGULAR[key]} (got {got})", at_key=True)
            continue
        good: list[tuple[int, Any]] = []
        for i, item in enumerate(raw):
            try:
                good.append((i, adapter.validate_python(item)))
            except ValidationError as err:
                for loc, msg, at_key in _messages(err, model):
                    add((key, i, *loc), msg, at_key=at_key)
        items[key] = good

    # The rest of the document (district, timezone, defaults, settings) with the lists taken out.
    rest = {k: v for k, v in data.items() if k not in _ITEM_ADAPTERS}
    for key in _REQUIRED_LISTS:
        rest[key] = []
    top: Inventory | None = None
    bad_keys: set[str | int] = set()
    try:
        top = Inventory.model_validate(rest)
    except ValidationError as err:
        for loc, msg, at_key in _messages(err, Inventory):
            add(loc, msg, at_key=at_key)
            bad_keys.add(loc[0] if loc else "district")
        # Go on checking with what did validate, so that a bad `district` does not hide a bad profile name.
        try:
            top = Inventory.model_validate({k: v for k, v in rest.items() if k not in bad_keys} | {"district": "?"})
        except ValidationError:
            top = None
    for key in _REQUIRED_LISTS:
        # A key that is a typo of it is reported as an unknown key with a did-you-mean instead.
        if key not in data and not any(_suggest(str(k), {key}) for k in data):
            add((), f"missing required key {key!r}")

    tz = top.timezone if top is not None else DEFAULT_TZ
    kecs = [k for _, k in items.get("kecamatan", [])]
    villages = items.get("villages", [])
    profiles = (
        items["profiles"] if "profiles" in items else ([] if "profiles" in data else list(enumerate(DEFAULT_PROFILES)))
    )
    sessions = [
        (i, s if "timezone" in s.model_fields_set else s.model_copy(update={"timezone": tz}))
        for i, s in items.get("sessions", [])
    ]

    # The cross-checks read the raw items, so that an item with a problem of its own still counts: a village
    # with a bad address is not also an "unknown village" in a session, and its references are still checked.
    raw = {key: _raw_items(data, key) for key in _ITEM_ADAPTERS}
    kec_names = _strings(raw["kecamatan"], "name")
    slugs = _strings(raw["villages"], "slug")
    profile_names = _strings(raw["profiles"], "name") if "profiles" in data else {p.name for p in DEFAULT_PROFILES}

    _check_unique(raw["kecamatan"], "kecamatan", "name", str.casefold, "kecamatan", add)
    _check_unique(raw["villages"], "villages", "slug", str, "slug", add)
    _check_unique(raw["villages"], "villages", "router", _ip_or_none, "router address", add)
    _check_unique(raw["profiles"], "profiles", "name", str, "profile name", add)
    for i, p in items.get("profiles", []):
        for what in ("rtt_ms", "jitter_ms", "loss_pct"):
            lo, hi = getattr(p, f"max_{what}"), getattr(p, f"fail_{what}")
            if lo > hi:
                add(
                    ("profiles", i, f"max_{what}"),
                    f"{lo:g} is above fail_{what} ({hi:g}): the 'ready' limit must "
                    f"not be worse than the 'not ready' one",
                )
    no_snmp = top is not None and "defaults" not in bad_keys and top.defaults.snmp is None
    for i, r in raw["villages"]:
        kec, prof = r.get("kecamatan"), r.get("profile")
        if isinstance(kec, str) and kec not in kec_names:
            add(("villages", i, "kecamatan"), f"unknown kecamatan {kec!r}" + _suggest(kec, kec_names))
        if isinstance(prof, str) and prof not in profile_names:
            add(("villages", i, "profile"), f"unknown profile {prof!r}" + _suggest(prof, profile_names))
        if no_snmp and r.get("snmp") is None:
            add(("villages", i), "no snmp settings here and none under defaults.snmp")
    for i, v in villages:
        if v.router.is_unspecified or v.router.is_multicast:
            add(("villages", i, "router"), f"{v.router} cannot be a router address")
    if top is not None and "defaults" not in bad_keys and top.defaults.profile not in profile_names:
        name = top.defaults.profile
        if "profile" in (data.get("defaults") or {}):
            add(("defaults", "profile"), f"unknown profile {name!r}" + _suggest(name, profile_names))
        else:
            add(
                ("profiles",),
                f"no profile is named {name!r}, the default for villages that name none: add it, or "
                f"set defaults.profile to one of {', '.join(sorted(profile_names)) or '(none)'}",
                at_key=True,
            )

    for i, r in raw["sessions"]:
        if not (r.get("all") or r.get("villages") or r.get("kecamatan")):
            add(("sessions", i), "names no villages: give villages, kecamatan or all: true")
        for field, known, what in (("villages", slugs, "village"), ("kecamatan", kec_names, "kecamatan")):
            names = r.get(field)
            for j, name in enumerate(names if isinstance(names, list) else []):
                if isinstance(name, str) and name not in known:
                    add(("sessions", i, field, j), f"unknown {what} {name!r}" + _suggest(name, known))
        prof = r.get("profile")
        if isinstance(prof, str) and prof not in profile_names:
            add(("sessions", i, "profile"), f"unknown profile {prof!r}" + _suggest(prof, profile_names))
    now = now or datetime.now(ZoneInfo(DEFAULT_TZ))
    for i, s in sessions:
        if strict_time and s.repeat == "none" and s.first_start() + s.duration <= now:
            add(
                ("sessions", i, "start"),
                f"session ended in the past ({s.first_start():%Y-%m-%d %H:%M %Z}); remove it or give it a repeat",
            )
    _check_overlaps(sessions, villages, add, now)

    if add.problems:
        raise InventoryError(sorted(add.problems, key=lambda p: (p.line, p.col)))
    assert top is not None
    return top.model_copy(
        update={
            "kecamatan": kecs,
            "villages": [v for _, v in villages],
            "profiles": [p for _, p in profiles],
            "sessions": [s for _, s in sessions],
        }
    )


def _raw_items(data: Mapping[str, Any], key: str) -> list[tuple[int, Mapping[str, Any]]]:
    raw = data.get(key)
    return [(i, r) for i, r in enumerate(raw) if isinstance(r, Mapping)] if isinstance(raw, list) else []


def _strings(items: list[tuple[int, Mapping[str, Any]]], field: str) -> set[str]:
    return {v for _, r in items if isinstance(v := r.get(field), str)}


def _ip_or_none(value: str) -> Any:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def _check_unique(
    items: list[tuple[int, Mapping[str, Any]]],
    section: str,
    field: str,
    norm: Callable[[str], Any],
    what: str,
    add: _Report,
) -> None:
    """Report every item whose `field` (a string, compared after `norm`) an earlier item already has."""
    seen: dict[Any, int] = {}
    for i, item in items:
        value = item.get(field)
        k = norm(value) if isinstance(value, str) else None
        if k is None:
            continue
        if k in seen:
            first = seen[k]
            add(
                (section, i, field),
                f"duplicate {what} {value!r} (first used by {section}[{first}] on line {add.line((section, first))})",
            )
        else:
            seen[k] = i


def _check_overlaps(
    sessions: list[tuple[int, Session]], villages: list[tuple[int, Village]], add: _Report, now: datetime
) -> None:
    """Two sessions in one village office at once cannot both happen: the office has one link."""
    for a_pos, (ia, a) in enumerate(sessions):
        for ib, b in sessions[a_pos + 1 :]:
            clash = _first_overlap(a, b, now)
            if clash is None:
                continue
            shared = [v.slug for _, v in villages if _covers(a, v) and _covers(b, v)]
            if shared:
                add(
                    ("sessions", ib),
                    f"overlaps session {a.title!r} (sessions[{ia}], line {add.line(('sessions', ia))}) at "
                    f"{clash:%Y-%m-%d %H:%M %Z} in {', '.join(shared[:3])}"
                    f"{f' and {len(shared) - 3} more' if len(shared) > 3 else ''}",
                )


def _first_overlap(a: Session, b: Session, now: datetime) -> datetime | None:
    """When two sessions first run at the same time (and not in the past), or None if they never do.

    Daily and weekly repeats both have periods dividing a week, so once both have started the pattern repeats
    every week: checking the first eight days after the later first start is enough.
    """
    if a.repeat == "none" and b.repeat != "none":
        a, b = b, a
    # Now `a` repeats whenever either does.
    if a.repeat == "none":
        ob = b.first_start()
        oa = a.first_start()
        if oa < ob + b.duration and ob < oa + a.duration and max(oa + a.duration, ob + b.duration) > now:
            return max(oa, ob)
        return None
    if b.repeat == "none":
        ob = b.first_start()
        if ob + b.duration <= now:
            return None
        oa_opt = a.occurrence_at_or_after(ob)
        return max(oa_opt, ob) if oa_opt is not None and oa_opt < ob + b.duration else None
    t = max(a.first_start(), b.first_start(), now)
    occ = a.occurrence_at_or_after(t)
    step = _REPEAT_STEP[a.repeat]
    while occ is not None and occ < t + timedelta(days=8):
        ob_opt = b.occurrence_at_or_after(occ)
        if ob_opt is not None and ob_opt < occ + a.duration:
            return max(occ, ob_opt)
        occ += step
    return None


def load_inventory(
    path: str | os.PathLike[str], *, now: datetime | None = None, strict_time: bool = False
) -> Inventory:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError([Problem(str(p), 0, 0, f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise InventoryError([Problem(str(p), 0, 0, f"not UTF-8 text (byte {exc.start})")]) from None
    return parse_inventory(text, str(p), now=now, strict_time=strict_time)


# A YAML timestamp as people write it: RFC 3339 without or with an offset, 'T' or a space.
_DATETIME_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}([Tt ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?"
    r"( ?(Z|z|[+-]\d{1,2}(:?\d{2})?))?$"
)


def json_schema() -> dict[str, Any]:
    """The inventory's JSON Schema, tuned for editors (yaml-language-server) rather than for pydantic.

    Two things differ from what pydantic generates: `version: 3` is an integer in YAML, and a session's
    `start` is usually written without an offset, which JSON Schema's `date-time` format would reject.
    """
    schema = Inventory.model_json_schema()
    defs = schema["$defs"]
    defs["SnmpV3"]["properties"]["version"] = {
        "description": "3 (written 3 or '3').",
        "enum": ["3", 3],
        "title": "Version",
    }
    defs["SnmpV2c"]["properties"]["version"] = {"default": "2c", "enum": ["2c", 2], "title": "Version"}
    for snmp_owner in ("Village", "Defaults"):
        prop = defs[snmp_owner]["properties"]["snmp"]
        for alt in prop.get("anyOf", []):
            alt.pop("discriminator", None)
    # `sessions:` with every entry commented out reads as null, which the loader takes for an empty list.
    sessions = schema["properties"]["sessions"]
    sessions["type"] = ["array", "null"]
    start = defs["Session"]["properties"]["start"]
    start.pop("format", None)
    start["type"] = "string"
    start["pattern"] = _DATETIME_PATTERN
    start["examples"] = ["2026-12-03T09:00:00", "2026-12-03 09:00:00+07:00"]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "desanet inventory"
    return schema


def default_inventory_path() -> Path:
    """$DESANET_INVENTORY, else inventory.yaml beside the package (a checkout), else /etc/desanet/inventory.yaml."""
    env = os.environ.get("DESANET_INVENTORY")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "inventory.yaml"
    return here if here.exists() else Path("/etc/desanet/inventory.yaml")
