"""Crash points for the reliability suite: `maybe_crash(stage)` kills this process with SIGKILL (no cleanup, no
atexit, like a power cut or the OOM killer) when env `LOYALTY_TEST_CRASH_AT` names the stage, optionally `stage:N`
to die on its N-th call. Stages: `STAGES` (the reliability suite kills a run at each). No effect when the variable is
unset.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "LOYALTY_TEST_CRASH_AT"
STAGES = ("extract", "normalize", "load", "state", "models")   # every `maybe_crash` call site names one

_calls: dict[str, int] = {}
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


def maybe_crash(stage: str) -> None:
    target = _target()
    if target is None or target[0] != stage:
        return
    with _lock:
        _calls[stage] = _calls.get(stage, 0) + 1
        hit = _calls[stage] == target[1]
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
