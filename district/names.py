"""Names and values as an operator reads them: slugs, a short safe rendering of a value, the nearest known name."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


def slugify(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "x"


def _show(value: Any) -> str:
    """A short rendering of a (non-secret) value for a message."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "nothing"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | date):
        text = str(value)
    elif isinstance(value, Mapping):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    else:
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, known: set[str] | frozenset[str], *, fallback: str = "") -> str:
    """' (did you mean 'X'?)' for the nearest known name: same letters ignoring case and punctuation first."""
    by_norm = {slugify(k): k for k in sorted(known)}
    if slugify(word) in by_norm and by_norm[slugify(word)] != word:
        return f" (did you mean {by_norm[slugify(word)]!r}?)"
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    if not close:
        folded = {k.casefold(): k for k in known}
        close = [folded[c] for c in difflib.get_close_matches(word.casefold(), sorted(folded), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]!r}?)" if close else fallback
