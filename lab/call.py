"""`desanet lab call`: a real WebRTC call between a village's namespace and the NOC's, through the lab's
impaired path, judged by verdict/call_outcome.py.

The call machinery lives in desanet/calls (shared with the exporter's rehearsal page); this module only finds
the namespaces and the profile, runs `python -m desanet.calls.run` inside the NOC namespace (the far end and its
server must listen there, and a Python process cannot enter a namespace for one socket without setns), and
judges what came back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from desanet.calls.browser import find_chromium
from desanet.district import Profile, load_inventory
from desanet.lab import lab as labmod
from desanet.lab.topology import NOC_ADDR
from desanet.verdict.call_outcome import CallOutcome, judge_call


@dataclass(frozen=True)
class LabCall:
    """A lab call: the village, the profile it was made at, the judged outcome and the raw record."""

    village: str
    profile: Profile
    outcome: CallOutcome
    record: dict[str, Any]  # calls.run's JSON: samples, events, CPU and memory per browser


class CallUnavailable(labmod.LabError):
    """No call could be made at all (no lab, no Chromium, another call under way): exit code 2."""


def call(
    village: str,
    profile_name: str | None = None,
    seconds: float = 30.0,
    connect_timeout: float = 10.0,
    prefix: str | None = None,
    video: Mapping[str, int] | None = None,
) -> LabCall:
    """Call from `village`'s namespace to the NOC for `seconds`, at the village's profile unless one is named.

    `video` overrides the profile's picture (video_width, video_height, video_fps, video_kbit): a 720p call
    costs each browser ~0.5 core, and on a host already busy the starved CPU reads as congestion to Chrome."""
    state = labmod.load_state(prefix)
    if state is None:
        raise CallUnavailable("the lab is not up: run `desanet lab up` first")
    if find_chromium() is None:
        raise CallUnavailable("no Chromium to call with (scripts/setup.sh installs Debian's chromium)")
    lp = labmod.plan_from_state(state)
    slug = labmod._find_slug(lp, village)
    inv = load_inventory(state["inventory"])
    try:
        profile = inv.profile(profile_name) if profile_name else inv.profile_for(inv.village(slug))
    except KeyError:
        names = ", ".join(p.name for p in inv.profiles)
        raise CallUnavailable(f"no profile {profile_name!r} in the inventory (it has {names})") from None
    if video:
        try:
            profile = Profile.model_validate({**profile.model_dump(), **video})
        except ValidationError as exc:
            e = exc.errors()[0]
            raise CallUnavailable(f"{e['loc'][0]}={e.get('input')}: {e['msg']}") from None
    argv = [
        "ip", "netns", "exec", lp.noc_ns,
        sys.executable, "-m", "desanet.calls.run",
        "--bind", NOC_ADDR,
        "--village-ns", lp.village(slug).ns,
        "--width", str(profile.video_width),
        "--height", str(profile.video_height),
        "--fps", str(profile.video_fps),
        "--kbit", str(profile.video_kbit),
        "--seconds", str(seconds),
        "--connect-timeout", str(connect_timeout),
    ]  # fmt: skip
    # Bounded: the call, the wait for a call under way (calls.run's lock), start-up and hang-up.
    stdout, stderr, code = _run_bounded(argv, timeout=seconds + connect_timeout + 120)
    try:
        record = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise CallUnavailable(f"the call runner ended with code {code}: {tail}") from None
    if record.get("could_not_call"):
        raise CallUnavailable(str(record.get("error")))
    outcome = judge_call(
        bool(record.get("connected")),
        record.get("error"),
        record.get("setup_s"),
        record.get("samples") or {},
        profile.video_height,
        profile.video_fps,
    )
    return LabCall(village=slug, profile=profile, outcome=outcome, record=record)


def _run_bounded(argv: list[str], timeout: float) -> tuple[str, str, int]:
    """Run the call runner; on Ctrl-C or the deadline, SIGTERM it and wait, so it stops its browsers.

    subprocess.run would SIGKILL it at once, leaving both Chromiums running without a parent."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # KeyboardInterrupt, the deadline: hang up properly, then let it propagate
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # by its PID; its browsers are in their own groups and were being stopped
            proc.communicate()
        raise
    return out, err, proc.returncode
