"""`desanet check --call-stream` on the lab, from the NOC namespace as a technician runs it: the call-like stream
holds a call's rate on a clean path and across a long but steady delay, and yields on a link capped below the
call's rate, as a real call does (tests/test_calls_lab.py shows the real call on the same kind of cap).

The stream is not part of the verdict yet (docs/readiness.md); what these tests pin is that its figure means what
a user will read it as.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Lab
from tests.test_check_lab import check

pytestmark = [pytest.mark.lab, pytest.mark.slow]
MEET_HD_CALL_BPS = 2_600_000  # inventory.yaml: meet-hd's video_kbit
LIMIT = 15.0 + 5.0  # the check's 15 s plus the stream's 4 s and its last replies


@pytest.fixture(scope="module")
def env(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The lab's environment with a private throughput budget ledger (never /var/lib/desanet)."""
    return {**lab.env, "DESANET_STATE_DIR": str(tmp_path_factory.mktemp("stream-state"))}


def stream_of(doc: dict[str, Any]) -> dict[str, Any]:
    cs = doc["call_stream"]
    assert cs is not None, doc["notes"]
    assert cs["rate_bps"] == MEET_HD_CALL_BPS
    return dict(cs)


def test_a_clean_path_holds_the_calls_rate(lab: Lab, env: dict[str, str]) -> None:
    code, doc, err, wall = check(lab, env, "sempu", "--profile", "meet-hd", "--force", "--call-stream", "--lang", "en")
    cs = stream_of(doc)
    assert cs["held_ratio"] > 0.9 and cs["loss_ratio"] < 0.01, cs
    assert cs["overuse_forward"] == 0 and cs["overuse_backward"] == 0, cs
    assert doc["verdict"] == "ready" and code == 0, (doc["verdict"], err)
    assert any("held" in n for n in doc["notes"])
    assert wall <= LIMIT, f"{wall:.1f} s"


def test_a_long_steady_delay_is_held(lab: Lab, env: dict[str, str], impaired: list[str]) -> None:
    impaired.append("kedungasri")
    lab.impair("kedungasri", "--delay", "150", "--up-delay", "150")
    _code, doc, _err, wall = check(lab, env, "kedungasri", "--profile", "meet-hd", "--force", "--call-stream")
    cs = stream_of(doc)
    assert cs["held_ratio"] > 0.85, cs
    assert wall <= LIMIT, f"{wall:.1f} s"


def test_a_link_below_the_calls_rate_makes_it_yield(lab: Lab, env: dict[str, str], impaired: list[str]) -> None:
    impaired.append("tegalsari")
    lab.impair("tegalsari", "--rate", "1")  # toward the village: 1 Mbit/s against the call's 2.6
    _code, doc, _err, wall = check(lab, env, "tegalsari", "--profile", "meet-hd", "--force", "--call-stream")
    cs = stream_of(doc)
    assert cs["overuse_forward"] >= 1, cs  # the way out (toward the village) is the one that congested
    assert cs["held_ratio"] < 0.5, cs  # a real call on that link drops to a third of its picture's rate
    assert cs["held_bps"] > 0.2e6, cs  # and keeps sending: yielding is not starving
    assert wall <= LIMIT, f"{wall:.1f} s"
