"""Crash points for the reliability suite: `maybe_crash(stage)` kills this process with SIGKILL (no cleanup, no
atexit, like a power cut or the OOM killer) when env `LOYALTY_TEST_CRASH_AT` names the stage, optionally `stage:N`
to die on its N-th call. Stages: `STAGES` (the reliability suite kills a run at each). No effect when the variable is
unset.

Every crash point is also a hold point: with `LOYALTY_TEST_HOLD_AT=stage` (or `stage:N`, its N-th call) and
`LOYALTY_TEST_HOLD_UNTIL=<file>` the process stops at the stage's first (N-th) call, says so on stderr
(`HOLD_MARKER`), and goes on once the file exists. A test
then knows the run is at that stage (holding its lock) for as long as it needs, whatever the machine's load, instead
of hoping the run is still busy when it looks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

ENV = "LOYALTY_TEST_CRASH_AT"
HOLD_ENV = "LOYALTY_TEST_HOLD_AT"
HOLD_UNTIL_ENV = "LOYALTY_TEST_HOLD_UNTIL"
HOLD_MARKER = "test hold at"
STAGES = ("extract", "normalize", "load", "state", "models")   # every `maybe_crash` call site names one

_calls: dict[str, int] = {}
_held: set[str] = set()
_hold_calls: dict[str, int] = {}
_lock = threading.Lock()


def _target() -> tuple[str, int] | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    stage, _, nth = raw.partition(":")
    try:
        return stage.strip(), max(1, int(nth)) if nth else 1
    except ValueError:
        return stage.strip(), 1


def _maybe_hold(stage: str) -> None:
    until = os.environ.get(HOLD_UNTIL_ENV, "").strip()
    name, _, nth = os.environ.get(HOLD_ENV, "").strip().partition(":")
    if not until or name.strip() != stage:
        return
    release = Path(until)
    with _lock:
        if stage in _held:
            return
        _hold_calls[stage] = _hold_calls.get(stage, 0) + 1
        if _hold_calls[stage] < (max(1, int(nth)) if nth.strip().isdigit() else 1):
            return
        _held.add(stage)
    print(f"{HOLD_MARKER} {stage} (pid {os.getpid()}): waiting for {release}", file=sys.stderr, flush=True)
    while not release.exists():
        time.sleep(0.05)


def maybe_crash(stage: str) -> None:
    _maybe_hold(stage)
    target = _target()
    if target is None or target[0] != stage:
        return
    with _lock:
        _calls[stage] = _calls.get(stage, 0) + 1
        hit = _calls[stage] == target[1]
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
