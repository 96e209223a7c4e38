"""What every `desanet probe …` command prints with --json: the village it resolved (or null for a bare
address) followed by the probe's own result keys, so scripts parse every probe the same way."""

from __future__ import annotations

import json
import sys
from typing import Any

from desanet.district.targets import Target


def print_json(resolved: Target, result: Any) -> None:
    out: dict[str, Any] = {"village": resolved.village.slug if resolved.village else None}
    out.update(result.to_dict())
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
