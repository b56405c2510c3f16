"""Two runs at once, and readers during a load.

- A second run on the same warehouse is refused up front with a clear message, and the first is unharmed.
- An analyst querying in a loop (another process, plain DuckDB read-only) and `loyalty-etl status` during a nightly
  run see the previous complete state or a clear busy answer: never a half-built state, and they never make the
  load fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.faultpoints import HOLD_ENV, HOLD_MARKER, HOLD_UNTIL_ENV
from tests.chaos.fixtures import record_figures, rig_factory  # noqa: F401  (fixture)
from tests.chaos.harness import ROOT, connect_ro, query
from tests.chaos.reader import RAW_SQL, snapshot


def _wait_until(pred, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def _lock_is_held(warehouse: Path) -> bool:
    """Whether some process holds the run lock (pipelines/lock.py) right now: try it ourselves, without waiting."""
    fd = os.open(str(warehouse) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _two_runs(rig, models: bool, during_models: bool, ctx: str) -> int:
    """The first run is held at a crash point of the phase (faultpoints.py: before its first normalize, i.e. loading,
    or before dbt) until the second has been refused: bound by the runs' state, not by how fast this machine is."""
    stage = "models" if during_models else "normalize"
    release = rig.dir / f"release-{stage}-{time.monotonic_ns()}"
    first = rig.spawn(models=models, env={HOLD_ENV: stage, HOLD_UNTIL_ENV: str(release)})
    try:
        _wait_until(lambda: f"{HOLD_MARKER} {stage}" in first.err.read_text(errors="replace") or not first.running(),
                    600, f"the first run to reach {stage}")
        assert first.running(), f"{ctx}: the first run ended before reaching {stage}:\n{first.wait(60).describe()}"
        assert _lock_is_held(rig.warehouse), f"{ctx}: the first run is at {stage} but does not hold the run lock"
        second = rig.run(models=models)
        assert first.running(), f"{ctx}: the first run ended while held"
        assert second.returncode == 1, f"{ctx}: {second.describe()}"
        msg = second.output.lower()
        assert "another run" in msg and ".lock" in msg, f"{ctx}: the refusal should say why and where:\n{second.describe()}"
        assert "traceback" not in msg, second.describe()
    finally:
        release.touch()
    done = first.wait(600)
    assert done.returncode == 0, f"{ctx}: {done.describe()}"
    cmp = rig.compare(ledger=models)
    assert cmp.ok, f"{ctx}: the first run was harmed:\n{cmp}"
    return cmp.rows_compared


def test_second_run_is_refused_and_the_first_is_unharmed(rig_factory):
    rig = rig_factory("two", customers=30)
    compared = _two_runs(rig, models=False, during_models=False, ctx="during the load")
    rows = query(rig.warehouse, "select count(*), count(distinct run_id) from loyalty_raw.runs")
    assert rows == [(1, 1)], f"only the first run should have a run row: {rows}"
    record_figures("two_runs", runs=2, refused=1, rows_compared=compared, mismatches=0)


@pytest.mark.chaos
def test_second_run_is_refused_at_any_moment(rig_factory):
    """Nights where the second run arrives during the load or while the first builds the marts."""
    rig = rig_factory("two_many", customers=60)
    compared = 0
    for night, during_models in enumerate([True, False, True]):
        compared += _two_runs(rig, models=True, during_models=during_models, ctx=f"night {night}")
        rig.sb.advance(30 * 3600)
    record_figures("two_runs_many", runs=6, refused=3, rows_compared=compared, mismatches=0)


def _start_reader(warehouse: Path, out: Path, stop: Path, env: dict[str, str] | None = None,
                  raw_only: bool = False) -> subprocess.Popen:
    """A plain DuckDB reader, or with `env` (the run's settings) `loyalty-etl status` in a loop."""
    args = [sys.executable, str(ROOT / "tests" / "chaos" / "reader.py"), str(warehouse), str(out), str(stop)]
    if env is not None:
        args.append("--status")
    if raw_only:
        args.append("--raw")
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _snapshot(warehouse: Path, raw_only: bool) -> list:
    con = connect_ro(warehouse)
    try:
        return json.loads(json.dumps(snapshot(con, raw_only)))
    finally:
        con.close()


def _readers_during_load(rig_factory, name: str, customers: int, nights: int, models: bool) -> dict:
    rig = rig_factory(name, customers=customers, latency_ms=10)
    first = rig.run(models=models)
    assert first.returncode == 0, first.describe()
    reads = busy = status_busy = status_ok = compared = 0
    for night in range(nights):
        before = _snapshot(rig.warehouse, not models)
        assert not any(isinstance(v, str) for v in before), f"the marts are incomplete after a clean run: {before}"
        rig.sb.advance(36 * 3600)
        out, sout, stop = rig.dir / f"reads-{night}.jsonl", rig.dir / f"status-{night}.jsonl", rig.dir / f"stop-{night}"
        # `status` is the project's own reader; it resolves the warehouse from the same settings as the run
        readers = [_start_reader(rig.warehouse, out, stop, raw_only=not models),
                   _start_reader(rig.warehouse, sout, stop, rig.etl.env)]
        time.sleep(0.5)
        t0 = time.time()
        run = rig.run(models=models)
        t1 = time.time()
        time.sleep(0.5)
        stop.touch()
        for r in readers:
            r.wait(120)
        assert run.returncode == 0, f"night {night}: the load failed with readers around:\n{run.describe()}"
        after = _snapshot(rig.warehouse, not models)
        assert after != before, "the night loaded nothing new; the test would prove nothing"
        cmp = rig.compare(ledger=models)
        assert cmp.ok, f"night {night}:\n{cmp}"
        compared += cmp.rows_compared

        records = [json.loads(line) for line in out.read_text().splitlines()]
        during = [r for r in records if t0 <= r["t"] <= t1]
        assert len(during) >= 3, f"night {night}: the reader barely ran during the load ({len(during)} reads)"
        for r in records:
            if r["ok"]:
                # the run lets go of the file between its round's commit and the marts' build (readers work during
                # the extraction, pipelines/writer.py): the raw tables and the marts are each one complete state
                raw, marts = r["snapshot"][:len(RAW_SQL)], r["snapshot"][len(RAW_SQL):]
                assert raw in (before[:len(RAW_SQL)], after[:len(RAW_SQL)]) and marts in (
                    before[len(RAW_SQL):], after[len(RAW_SQL):]), (
                    f"night {night}: a reader saw a state that is neither the previous nor the new complete one:\n"
                    f"{r['snapshot']}\nbefore {before}\nafter  {after}")
                reads += 1
            else:
                assert r["busy"], f"night {night}: a reader got an error that is not 'busy': {r['error']}"
                busy += 1
        for r in (json.loads(line) for line in sout.read_text().splitlines()):
            text = r["stdout"] + r["stderr"]
            assert "Traceback" not in text, text
            if r["rc"] == 75:
                assert "retry" in text.lower(), f"status busy without saying to retry: {text}"
                status_busy += 1
            else:
                assert r["rc"] == 0, f"status failed during a load: rc {r['rc']}\n{text}"
                status_ok += 1
    figures = {"nights": nights, "reader_reads_ok": reads, "reader_busy": busy, "status_ok": status_ok,
               "status_busy": status_busy, "runs": nights + 1, "rows_compared": compared, "mismatches": 0}
    record_figures(name, **figures)
    return figures


def test_readers_during_a_load_see_a_complete_state_or_busy(rig_factory):
    """Fast subset: the raw tables and the bookkeeping during a load (no dbt); the marts in the chaos variant."""
    _readers_during_load(rig_factory, "readers", customers=30, nights=1, models=False)


@pytest.mark.chaos
def test_readers_during_many_loads_and_model_builds(rig_factory):
    _readers_during_load(rig_factory, "readers_many", customers=100, nights=2, models=True)
