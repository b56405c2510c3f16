"""The catalog's PostgreSQL stopped (or killed) in the middle of a run loading a lake (tests/chaos/lake_rig.py): the run
fails with exit code 1 and a clear error naming the catalog, never its password; the failed run is in `runs` or its
log says why it could not be; after PostgreSQL is back nothing is half-committed (nothing doubled, no customer marked
done without its rows), and a rerun makes the lake equal to the sandbox's truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.fixtures import Rig, record_figures, rig_factory  # noqa: F401  (fixture)
from tests.chaos.harness import EtlRun
from tests.chaos.lake_rig import lake_rig  # noqa: F401  (fixture)


def _assert_no_secret(rig: Rig, text: str, ctx: str) -> None:
    assert rig.warehouse.pg.password not in text, f"{ctx}: the catalog password appears in the output"


def _outage(rig: Rig, stage: str, how: str) -> EtlRun:
    """Hold the run at `stage`, stop (or kill) the catalog's PostgreSQL, release the run: it must fail cleanly."""
    pg = rig.warehouse.pg
    run, release = rig.spawn_held(stage)
    try:
        pg.kill() if how == "kill" else pg.stop()
    finally:
        release.touch()
    return run.wait(600)


def _check_outage(rig: Rig, failed: EtlRun, ctx: str) -> None:
    pg = rig.warehouse.pg
    out = failed.output
    assert failed.returncode == 1, f"{ctx}: the run should fail with exit code 1:\n{failed.describe()}"
    _assert_no_secret(rig, out, ctx)
    for log in Path(rig.dir).rglob("*.log"):
        _assert_no_secret(rig, log.read_text(errors="replace"), f"{ctx} ({log})")
    assert f"127.0.0.1:{pg.port}/{pg.database}" in out, f"{ctx}: the error should name the catalog:\n{out[-3000:]}"
    assert "Traceback" not in out, f"{ctx}: a traceback instead of a clear error:\n{out[-3000:]}"
    pg.start()
    inv = rig.invariant()
    assert inv.ok, f"{ctx}: after the outage the lake is inconsistent:\n{inv}"
    con = rig.warehouse.connect()
    try:
        runs = con.execute("select run_id, status from loyalty_raw.runs").fetchall() \
            if con.execute("select count(*) from duckdb_tables() where schema_name = 'loyalty_raw' "
                           "and table_name = 'runs'").fetchone()[0] else []
    finally:
        con.close()
    recorded = any(status != "ok" for _, status in runs)
    said = "runs row" in out.lower()
    assert recorded or said, (f"{ctx}: the failed run is neither in the runs table ({runs}) nor does its log say "
                              f"the runs row could not be written:\n{out[-3000:]}")


def test_catalog_stopped_mid_run_fails_clearly_and_a_rerun_completes(lake_rig):
    """The run (one round of 8 customers) is held after its load (before the round's bookkeeping), the catalog's
    PostgreSQL is stopped, the run released: exit 1 with a clear error naming the catalog and no password; after
    PostgreSQL is back the lake is consistent (nothing doubled, no customer marked done without its rows) and a
    rerun makes it equal to the truth."""
    rig = lake_rig("outage", customers=8)
    failed = _outage(rig, "state", "stop")
    _check_outage(rig, failed, "catalog stopped before the bookkeeping")
    rerun = rig.run()
    assert rerun.returncode == 0, rerun.describe()
    cmp = rig.compare()
    assert cmp.ok, f"after the outage and a rerun:\n{cmp}"
    record_figures("lake_catalog_outage", stage="state", how="stop", rows_compared=cmp.rows_compared)


@pytest.mark.chaos
@pytest.mark.parametrize("stage", ["extract", "normalize", "load", "state", "models"])
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_catalog_outage_at_every_stage(lake_rig, stage, how):
    """The catalog stopped (clean shutdown) or killed (crash) at every stage of a run, models included."""
    rig = lake_rig(f"outage-{stage}-{how}", customers=30, chunk_customers=10)
    if stage == "models":
        first = rig.run()
        assert first.returncode == 0, first.describe()
        rig.sb.advance(12 * 3600)
        run, release = rig.spawn_held(stage, models=True)
        try:
            rig.warehouse.pg.kill() if how == "kill" else rig.warehouse.pg.stop()
        finally:
            release.touch()
        failed = run.wait(600)
    else:
        failed = _outage(rig, stage, how)
    _check_outage(rig, failed, f"catalog {how} at {stage}")
    rerun = rig.run(models=True)
    assert rerun.returncode == 0, rerun.describe()
    cmp = rig.compare(ledger=True)
    assert cmp.ok, f"catalog {how} at {stage}, then a rerun:\n{cmp}"
