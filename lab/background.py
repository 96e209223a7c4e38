"""The lab's background tasks: cross-traffic loads and optical ramps, processes that end by themselves.

They live in the lab state under `tasks` (id → what, where, until when, PID and its start time), apart from
the `pids` of the lab's own daemons: a load that has finished is not a dead snmpd, so `lab status` must not
call the lab degraded for it and `lab up` must not rebuild the lab. Each task is stopped by its PID (checked
against its start time, so a recycled PID is never signalled) at `--stop`, at its end time by itself, and at
`lab down`.

State changes made here hold an exclusive lock on the state directory, so two `desanet lab load` commands
(or a scenario and a person) cannot lose each other's tasks, and they are not interrupted halfway: Ctrl-C or
SIGTERM is held until the state is saved, so a process is never started without being recorded (and so
stoppable), nor a link cut without the lab knowing.
"""

from __future__ import annotations

import contextlib
import fcntl
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from desanet.lab import lab as labmod


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (they are delivered then); a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def locked_state(prefix: str | None = None) -> Iterator[dict[str, Any]]:
    """The lab state, read under an exclusive lock and saved when the block ends without an error; Ctrl-C and
    SIGTERM wait until then."""
    d = labmod.state_dir(prefix)
    if not (d / "state.json").exists():
        raise labmod.LabError("the lab is not up: run `desanet lab up` first")
    with uninterrupted(), open(d / "state.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = labmod.load_state(prefix)
        if state is None or not state.get("complete"):
            raise labmod.LabError("the lab is not up: run `desanet lab up` first")
        yield state
        labmod.save_state(state)


def start(
    state: dict[str, Any], task_id: str, argv: list[str], log: Path, *, ns: str | None = None, **info: Any
) -> dict[str, Any]:
    """Spawn one task process and record it under `tasks` with `info` (kind, target, until, …)."""
    box: dict[str, Any] = {"pids": {}}
    labmod._spawn(box, task_id, ns, argv, log)
    entry = {**info, **box["pids"][task_id]}
    state.setdefault("tasks", {})[task_id] = entry
    return entry


def new_id(state: dict[str, Any], letter: str) -> str:
    """The next free id for a kind of task: L1, L2, … for loads, R1, … for ramps (never reused in a lab)."""
    n = int(state.get("task_counter", 0)) + 1
    state["task_counter"] = n
    return f"{letter}{n}"


def alive(entry: dict[str, Any]) -> bool:
    return labmod._alive(entry)


def prune(state: dict[str, Any]) -> list[str]:
    """Forget tasks whose process has ended (at their end time, or killed); return their ids."""
    tasks = state.setdefault("tasks", {})
    gone = [tid for tid, e in tasks.items() if not alive(e)]
    for tid in gone:
        del tasks[tid]
    return gone


def stop(state: dict[str, Any], which: Callable[[str, dict[str, Any]], bool]) -> list[str]:
    """Stop (TERM, then KILL after 5 s) the tasks `which` selects, by PID; return their ids."""
    tasks = state.setdefault("tasks", {})
    chosen = {tid: e for tid, e in tasks.items() if which(tid, e)}
    labmod._stop_processes({"pids": dict(chosen)})
    for tid in chosen:
        del tasks[tid]
    return sorted(chosen)


def running(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tasks still running, each with `seconds_left`, without changing the state."""
    now = time.time()
    out = {}
    for tid, e in sorted(state.get("tasks", {}).items(), key=lambda kv: kv[1].get("started", 0)):
        if alive(e):
            out[tid] = {**e, "seconds_left": max(0.0, round(float(e.get("until", now)) - now, 1))}
    return out


def status_dir(prefix: str, sub: str) -> Path:
    d = labmod.state_dir(prefix) / sub
    d.mkdir(parents=True, exist_ok=True)
    return d
