"""pytest fixtures of the reliability suite (imported by each tests/test_reliability*.py module).

A `Rig` is one sandbox + one warehouse in the test's tmp dir + the CLI runner pointed at both, with the comparisons
the tests need. Runs always pass `--until` = the sandbox's (frozen) now, so the truth to compare with is exactly
"everything visible at now with an instant in [initial_start, now)".
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from .compare import Comparison, compare, state_not_ahead_of_data
from .harness import Etl, EtlRun

# Before the sandbox's first record (2024-01-01 project local = 2023-12-31T23:00Z), so every record is in scope.
INITIAL_START = datetime(2023, 12, 1, tzinfo=timezone.utc)


def chaos_seed() -> int:
    """`LOYALTY_CHAOS_SEED` replays a failing run; otherwise a fresh seed each time (printed in failures)."""
    return int(os.environ.get("LOYALTY_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))


def source_settings(**settings: Any) -> dict[str, str]:
    """`max_attempts=4` -> the dlt env vars of both sources."""
    env = {}
    for key, value in settings.items():
        for src in ("CARECLOUD", "CAPILLARY"):
            env[f"SOURCES__{src}__{key.upper()}"] = str(value)
    return env


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `pred` every 50 ms until it holds; fail the test after `timeout` seconds, naming `what`."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Rig:
    sb: Any
    etl: Etl
    warehouse: Path
    dir: Path
    initial_start: datetime = INITIAL_START
    figures: dict[str, Any] = field(default_factory=dict)

    def until(self) -> datetime:
        return datetime.fromtimestamp(self.sb.now(), timezone.utc)

    def run(self, *extra: str, models: bool = False, crash_at: str | None = None, kill_after: float | None = None,
            kill_in_models_after: float | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> EtlRun:
        """`kill_after`: SIGKILL that many seconds after the start; `kill_in_models_after`: that many seconds after
        dbt started (the run logs "dbt build on ..." at -v)."""
        args = ["run", "--until", self.until().isoformat(), *extra]
        if not models:
            args.append("--no-models")
        if kill_after is not None:
            return self.etl.run_killed_after(kill_after, *args, env=env, timeout=timeout)
        if kill_in_models_after is not None:
            return self.etl.run_killed_after_line("dbt build on", kill_in_models_after, "-v", *args, env=env,
                                                  timeout=timeout)
        return self.etl.run(*args, crash_at=crash_at, env=env, timeout=timeout)

    def spawn(self, *extra: str, models: bool = False, env: dict[str, str] | None = None, verbose: bool = False):
        args = ["-v"] * verbose + ["run", "--until", self.until().isoformat(), *extra]
        if not models:
            args.append("--no-models")
        return self.etl.spawn(*args, env=env)

    def spawn_held(self, stage: str, *, models: bool = False, timeout: float = 600) -> tuple[Any, Path]:
        """A run (at -v) stopped at the first call of `stage` (pipelines/faultpoints.py) until the returned release
        file exists: it is at that stage, holding whatever it holds there, for as long as the test needs."""
        from pipelines.faultpoints import HOLD_ENV, HOLD_MARKER, HOLD_UNTIL_ENV

        release = self.dir / f"release-{stage}-{time.monotonic_ns()}"
        run = self.spawn(models=models, verbose=True, env={HOLD_ENV: stage, HOLD_UNTIL_ENV: str(release)})
        wait_for(lambda: f"{HOLD_MARKER} {stage}" in run.err.read_text(errors="replace") or not run.running(),
                 timeout, f"the run to reach {stage}")
        assert run.running(), f"the run ended before reaching {stage}:\n{run.wait(60).describe()}"
        return run, release

    def kill_while_fetching(self, nth: int, *, models: bool = True, timeout: float = 600) -> tuple[EtlRun, int | None]:
        """A run held at its `nth` fetched customer (crash point `extract:nth`, pipelines/faultpoints.py), i.e. while
        it fetches from the APIs: on the file the run's writer has released the warehouse then (pipelines/writer.py),
        so a reader opens it read-only at once, without waiting (asserted); then the whole run is SIGKILLed there.
        Returns the run and how many customers the warehouse marks done at the kill (read by that reader), or None
        when the run never reached its `nth` customer (it then ran to its end)."""
        from pipelines.faultpoints import HOLD_ENV, HOLD_MARKER, HOLD_UNTIL_ENV
        from tests.helpers.cli import query

        release = self.dir / f"never-released-{time.monotonic_ns()}"   # the run is killed at the hold, never let go
        args = ["run", "--until", self.until().isoformat(), *([] if models else ["--no-models"])]
        sp = self.etl.spawn(*args, env={HOLD_ENV: f"extract:{nth}", HOLD_UNTIL_ENV: str(release)})
        deadline = time.monotonic() + timeout
        while sp.running() and HOLD_MARKER not in sp.err.read_text(errors="replace"):
            if time.monotonic() > deadline:
                sp.kill()
                raise AssertionError(f"the run did not reach extract:{nth} in {timeout:.0f} s")
            time.sleep(0.05)
        if not sp.running():
            return sp.wait(timeout), None
        try:
            # the file: read-only without waiting, so a file the run still held would fail here at once
            done = query(self.warehouse, "select count(*) from loyalty_raw._customer_sync_state "
                                         "where last_success_end is not null")[0][0]
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"a reader could not read the warehouse while the run fetched (extract:{nth}): "
                                 f"{type(exc).__name__}: {exc}") from exc
        finally:
            sp.kill()
        return sp.wait(timeout), done

    def truth(self):
        return self.sb.truth()

    def compare(self, *, ledger: bool = False, **kw: Any) -> Comparison:
        return compare(self.warehouse, self.truth(), until=self.until(), initial_start=self.initial_start,
                       ledger=ledger, **kw)

    def invariant(self) -> Comparison:
        return state_not_ahead_of_data(self.warehouse, self.truth(), initial_start=self.initial_start)


@pytest.fixture
def rig_factory(sandbox_factory, sandbox_env, tmp_path) -> Callable[..., Rig]:
    """`rig_factory(name="a", customers=40, settings={...}, files={...}, faults=..., **sandbox_config)`."""

    def make(name: str = "a", *, settings: dict[str, Any] | None = None, files: dict[str, Any] | None = None,
             env: dict[str, str] | None = None, **sandbox: Any) -> Rig:
        base = tmp_path / name
        warehouse = base / "warehouse" / "loyalty_warehouse.duckdb"
        warehouse.parent.mkdir(parents=True, exist_ok=True)
        sb = sandbox_factory(**sandbox)
        run_env = sandbox_env(sb, warehouse, **(files or {}))
        run_env.update(source_settings(initial_start=INITIAL_START.isoformat(), **(settings or {})))
        run_env.update(env or {})
        return Rig(sb, Etl(run_env, base / "logs"), warehouse, base)

    return make


def record_figures(test: str, **figures: Any) -> None:
    """Append one JSON line of figures for docs/reliability.md when `LOYALTY_RELIABILITY_FIGURES` names a file."""
    path = os.environ.get("LOYALTY_RELIABILITY_FIGURES")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures},
                            default=str) + "\n")
