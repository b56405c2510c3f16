"""The lake's reliability rig: a `Rig` (tests/chaos/fixtures.py: sandbox + the real CLI) whose runs load a DuckLake
on the real PostgreSQL of the `postgres` fixture (the test's own catalog database) with a local data directory;
`rig.warehouse` is the `Lake` (tests/helpers/lake.py), so `rig.compare()` and `rig.invariant()` read the lake.

The tests: tests/test_lake_reader.py (a reader during a load), tests/test_lake_kill.py (kill -9 mid-load, then a
rerun), tests/test_lake_outage.py (the catalog's PostgreSQL stopped mid-run), tests/test_lake_writers.py (two writers
at once). Each checks row for row against the sandbox's truth. `make test` runs short versions, `make chaos` longer.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from pipelines.faultpoints import HOLD_ENV, HOLD_MARKER, HOLD_UNTIL_ENV
from tests.chaos.fixtures import Rig
from tests.helpers.lake import Lake


@pytest.fixture
def lake_rig(rig_factory, postgres, tmp_path):
    """`lake_rig(name, customers=..., chunk_customers=..., **sandbox)` -> a Rig whose runs load a lake (catalog: the
    test's own database on the real PostgreSQL; data: a directory of the test); `rig.warehouse` is the `Lake`."""

    def make(name: str = "lake", *, chunk_customers: int | None = None, env: dict[str, str] | None = None,
             **sandbox: Any) -> Rig:
        lake = Lake(postgres, tmp_path / name / "lake-data")
        run_env = {**lake.env(), **(env or {})}
        if chunk_customers:
            run_env["LOYALTY__CHUNK_CUSTOMERS"] = str(chunk_customers)
        rig = rig_factory(name, env=run_env, **sandbox)
        rig.warehouse = lake
        return rig

    return make


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _held(run, stage: str) -> bool:
    return f"{HOLD_MARKER} {stage}" in run.err.read_text(errors="replace")


def _spawn_held(rig: Rig, stage: str, *, models: bool = False):
    """A run stopped at the first call of `stage` (faultpoints.py) until the returned release file exists."""
    release = rig.dir / f"release-{stage}-{time.monotonic_ns()}"
    run = rig.spawn(models=models, verbose=True, env={HOLD_ENV: stage, HOLD_UNTIL_ENV: str(release)})
    _wait_for(lambda: _held(run, stage) or not run.running(), 600, f"the run to reach {stage}")
    assert run.running(), f"the run ended before reaching {stage}:\n{run.wait(60).describe()}"
    return run, release


def _assert_no_secret(rig: Rig, text: str, ctx: str) -> None:
    assert rig.warehouse.pg.password not in text, f"{ctx}: the catalog password appears in the output"


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def spawn_held(rig: Rig, stage: str, *, models: bool = False):
    """A run stopped at the first call of `stage` (faultpoints.py) until the returned release file exists."""
    release = rig.dir / f"release-{stage}-{time.monotonic_ns()}"
    run = rig.spawn(models=models, verbose=True, env={HOLD_ENV: stage, HOLD_UNTIL_ENV: str(release)})
    wait_for(lambda: f"{HOLD_MARKER} {stage}" in run.err.read_text(errors="replace") or not run.running(), 600,
             f"the run to reach {stage}")
    assert run.running(), f"the run ended before reaching {stage}:\n{run.wait(60).describe()}"
    return run, release
