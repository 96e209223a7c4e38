"""The technician's check: one village, one command, a clear verdict in seconds.

A technician at the kantor desa asks one question before a session: will the video call hold up here, and if
not, why? `run_check` measures the village with the same probes the exporter uses and judges the figures with
the same `desanet.verdict.readiness.assess`, then `explain` turns the verdict into plain words and things to
try, in English or Bahasa Indonesia. Nothing here needs the exporter or Prometheus running.

The rooms: `measure` (orchestration: which probe runs when, within the time limit), `decide` (which village
and profile, which figure feeds which factor, where on the path a step lies, which figure decided a call, the
exit code), `history` (last week at this hour and the last rehearsal call, from Prometheus), `report` (the
record of one check), `words` and `messages` (what it says to a person, en/id), `report_json` (what it says to
a script).

The run, within TIME_LIMIT_SECONDS (15 s) from process start:

1. At once, concurrently (they are light and do not disturb each other): an ICMP train (100 echoes 20 ms
   apart, one IcmpEngine), a STAMP stream shaped like the profile's video (its packet size and DSCP, 50
   packets/s for 2 s) when the village has a reflector, two SNMP polls of the router (at the start and when
   the latency probes end, so counters give a rate: spare capacity and new interface errors), and with
   --prometheus the history queries, then the village's last rehearsal call (what a real WebRTC call did,
   per direction, as the exporter published it).
2. When latency, jitter or loss are not a pass, or nothing answered: a path trace, to say whether the step is
   on the village's own link or upstream (then it is not a village problem: call the NOC).
3. Last, so its load cannot colour the latency figures: a throughput test each way against the village's
   iperf3 server, under desanet.budget's rules (session, one test per kecamatan uplink, daily budget; --force
   overrides the session rule only). By default a UDP rehearsal: the profile's packet size and DSCP at 1.1 ×
   the rate readiness needs for a pass (1.25 × the minimum), so a clean link passes and a link that cannot
   carry it shows a lower figure and loss. Each stage that would overrun the time limit is skipped with a note.

Which figure feeds which factor (the same choices as the exporter's scheduler where both measure):
- rtt: the ICMP train's p95 (STAMP's if the router ignores pings);
- jitter: the worse one-way STAMP jitter (what a video receiver lives with), else the ICMP RTT jitter;
- loss: ICMP and STAMP pooled (200 packets resolve 0.5 %; 100 echoes alone would turn one lost echo into 1 %,
  the profile's whole budget); burst loss: the worse of the two;
- down/up: the throughput test; headroom: port speed minus the busier direction's rate between the polls.

Exit codes: 0 ready, 1 at risk or not ready, 2 could not measure (unknown village, unreachable router, no
permission), so a script can tell "the link is bad" from "the check could not tell".
"""

from desanet.check.decide import (
    call_figures,
    call_outcome,
    choose_profile,
    deciding_figure,
    exit_code,
    load_village,
    locate_step,
    measurements_from,
    offered_rates,
    path_degraded,
    reachable,
    report_exit_code,
)
from desanet.check.history import fetch_history, fetch_last_call, history_queries, last_call_query
from desanet.check.measure import Probers, run_check
from desanet.check.messages import Q, render
from desanet.check.report import (
    CALL_STREAM_SECONDS,
    CALL_STREAM_TIMEOUT,
    RESERVE_SECONDS,
    TIME_LIMIT_SECONDS,
    CallDirection,
    CallFigure,
    CheckError,
    HistoryDay,
    HistoryError,
    LastCall,
    Note,
    Options,
    Problem,
    ProfileChoice,
    Report,
    ThroughputOutcome,
)
from desanet.check.report_json import problem_json, to_json
from desanet.check.words import Explanation, explain, problem_text

__all__ = [
    "CALL_STREAM_SECONDS",
    "CALL_STREAM_TIMEOUT",
    "RESERVE_SECONDS",
    "TIME_LIMIT_SECONDS",
    "CallDirection",
    "CallFigure",
    "CheckError",
    "Explanation",
    "HistoryDay",
    "HistoryError",
    "LastCall",
    "Note",
    "Options",
    "Probers",
    "Problem",
    "ProfileChoice",
    "Q",
    "Report",
    "ThroughputOutcome",
    "call_figures",
    "call_outcome",
    "choose_profile",
    "deciding_figure",
    "exit_code",
    "explain",
    "fetch_history",
    "fetch_last_call",
    "history_queries",
    "last_call_query",
    "load_village",
    "locate_step",
    "measurements_from",
    "offered_rates",
    "path_degraded",
    "problem_json",
    "problem_text",
    "reachable",
    "render",
    "report_exit_code",
    "run_check",
    "to_json",
]
