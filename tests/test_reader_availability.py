"""Readers during a run (issue 19): the run holds the DuckDB file only while it writes (planning, a round's load and
bookkeeping, the marts) and lets go of it while it fetches, so an analyst's read-only connection works during the
extraction; while the run holds it a reader is refused at once with DuckDB's lock error (status: exit 75, "retry"),
and a reader holding the file makes the run wait, never fail. Each mart is replaced atomically: a dbt build killed
between the statements of a materialization leaves the previous mart whole.

Held at fault points (pipelines/faultpoints.py), so the test is bound by the run's state, not by timing.
The share of successful reads over a rate-limited run is measured by `make bench` (bench/reader_availability.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from tests.chaos.fixtures import rig_factory, wait_for  # noqa: F401  (fixture)
from tests.chaos.harness import ROOT, connect_ro, is_lock_error
from tests.chaos.reader import snapshot

MARTS = ("fct_points_ledger", "dim_customers", "agg_customer_points_daily", "agg_store_points_monthly",
         "agg_transfer_network", "agg_points_expiring")


def _read_once(warehouse: Path) -> dict:
    """One analyst's try, in this process (not the run's): open read-only without waiting, snapshot, close."""
    try:
        con = duckdb.connect(str(warehouse), read_only=True)
    except duckdb.Error as exc:
        return {"ok": False, "busy": is_lock_error(exc), "error": str(exc)}
    try:
        return {"ok": True, "snapshot": json.loads(json.dumps(snapshot(con)))}
    finally:
        con.close()


def _status(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "status"], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_readers_work_while_the_run_fetches_and_are_refused_cleanly_while_it_writes(rig_factory):
    rig = rig_factory("readers", customers=12)
    first = rig.run(models=True)
    assert first.returncode == 0, first.describe()

    # night 1, held while extracting (the first customers fetched): the file is free
    before = _snapshot(rig.warehouse)
    rig.sb.advance(36 * 3600)
    run, release = rig.spawn_held("extract", models=True)
    try:
        read = _read_once(rig.warehouse)
        assert read["ok"], f"a reader could not open the warehouse while the run fetches: {read['error']}"
        assert read["snapshot"] == before, "the reader sees something the run has not committed yet"
        status = _status(rig.etl.env)
        assert status.returncode == 0, f"status during the extraction: rc {status.returncode}\n{status.stderr}"
        assert "a run is in progress" in status.stdout.lower(), status.stdout
        # an analyst holding the file when the run wants to load: the run waits for it, then loads
        con = duckdb.connect(str(rig.warehouse), read_only=True)
        try:
            release.touch()
            wait_for(lambda: "warehouse busy" in run.err.read_text(errors="replace") or not run.running(), 300,
                      "the run to wait for the reader")
            assert run.running(), f"the run did not wait for the reader:\n{run.wait(60).describe()}"
            time.sleep(1.0)
            assert run.running(), "the run went on although a reader holds the file"
        finally:
            con.close()
    finally:
        release.touch()
    done = run.wait(600)
    assert done.returncode == 0, done.describe()
    cmp = rig.compare(ledger=True)
    assert cmp.ok, f"night 1:\n{cmp}"
    night1 = _snapshot(rig.warehouse)
    assert night1 != before, "night 1 loaded nothing new; the test would prove nothing"

    # night 2, held inside the load's hold on the file: readers are refused at once, with a lock error
    rig.sb.advance(36 * 3600)
    run, release = rig.spawn_held("load", models=False)
    try:
        read = _read_once(rig.warehouse)
        assert not read["ok"] and read["busy"], f"a reader during the load: {read}"
        status = _status(rig.etl.env)
        assert status.returncode == 75 and "retry" in (status.stdout + status.stderr).lower(), (
            f"status during the load: rc {status.returncode}\n{status.stdout}\n{status.stderr}")
    finally:
        release.touch()
    done = run.wait(600)
    assert done.returncode == 0, done.describe()
    assert rig.compare().ok
    assert _snapshot(rig.warehouse) != night1


def _snapshot(warehouse: Path) -> list:
    con = connect_ro(warehouse)
    try:
        return json.loads(json.dumps(snapshot(con)))
    finally:
        con.close()


def _marts(warehouse: Path) -> dict[str, list]:
    """Every mart's rows, sorted (small warehouse): the whole content, to tell old from new."""
    con = connect_ro(warehouse)
    try:
        return {m: sorted(map(str, con.execute(f"select * exclude (_dbt_invocation_id) from loyalty.{m}"
                                                if m in ("fct_points_ledger", "agg_customer_points_daily")
                                                else f"select * from loyalty.{m}").fetchall())) for m in MARTS}
    finally:
        con.close()


def _models(rig, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.helpers.dbt_statements", "models"], cwd=ROOT,
                          env={**os.environ, **rig.etl.env, **env}, capture_output=True, text=True, timeout=600)


def test_a_dbt_build_killed_mid_materialization_leaves_every_mart_whole(rig_factory):
    """dbt-duckdb builds a table as `<name>__dbt_tmp`, renames the old one to `__dbt_backup` and the new one in, and
    merges an incremental model from a temp table, each inside one transaction committed at the end. SIGKILL right
    after the rename of the old table away, and right after the incremental merge: the mart is still there, whole
    and old (DuckDB's write-ahead log holds committed transactions only); the next build completes it."""
    rig = rig_factory("atomic", customers=12)
    assert rig.run(models=True).returncode == 0
    old = _marts(rig.warehouse)
    rig.sb.advance(36 * 3600)
    assert rig.run(models=False).returncode == 0   # new raw rows; the marts still the old ones
    statements = rig.dir / "statements.jsonl"
    # (the mart killed in its materialization, the statement right after which the build dies)
    cases = [("fct_points_ledger", r'(merge into|delete from|insert into) "[^"]+"\."loyalty"\."fct_points_ledger"'),
             ("dim_customers", r'alter table "[^"]+"\."loyalty"\."dim_customers" rename to "dim_customers__dbt_backup"')]
    seen = []
    for mart, case in cases:
        killed = _models(rig, LOYALTY_TEST_DBT_KILL_AFTER=case, LOYALTY_TEST_DBT_LOG=str(statements))
        assert killed.returncode == -9, f"{case}: the build was not killed there:\n{killed.stderr[-3000:]}"
        after = _marts(rig.warehouse)
        assert after[mart] == old[mart], f"{mart} changed although its build died before the commit"
        seen.append(after)
    built = _models(rig)
    assert built.returncode == 0, built.stderr[-3000:]
    new = _marts(rig.warehouse)
    assert all(new[m] != old[m] for m, _ in cases), "nothing new to build: the test would prove nothing"
    for after in seen:  # the marts built before the kill are whole and new, the others whole and old
        for m in MARTS:
            assert after[m] in (old[m], new[m]), f"{m} is neither the previous nor the next build after a kill"
    assert rig.compare(ledger=True).ok
