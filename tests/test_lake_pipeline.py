"""`loyalty-etl run` into a DuckLake on a real PostgreSQL catalog (tests/helpers/postgres.py) with a local directory
as its storage: the real CLI against the sandbox, the lake compared row for row with the sandbox's truth
(tests/chaos/compare.py), the bookkeeping in the lake, a second run that doubles nothing, the run lock in the
catalog, and the catalog password nowhere in the output or the lake."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from tests.chaos.compare import compare
from tests.helpers.cli import cli_env, query, run_cli

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, tzinfo=UTC)
UNTIL = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
RAW = ("carecloud_point_history", "carecloud_point_history__extended_data__purchase_items",
       "capillary_customer_transfers", "capillary_points_transfers", "capillary_transfer_parties")


def lake_env(sandbox_env: dict[str, str], postgres, root: Path, **extra) -> dict[str, str]:
    """The CLI's environment for a lake on `postgres` with its files under `root`/lake (the DuckDB file setting
    points under `root`/wh: dlt's working dir goes there, and no file may appear)."""
    return cli_env(sandbox_env, LOYALTY__WAREHOUSE="ducklake",
                   DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG=postgres.url,
                   DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE=str(root / "lake"), **extra)


def open_lake(env: dict[str, str]):
    """The test's view of the lake: `open_warehouse` on the CLI's own settings."""
    from pipelines.config import load_settings
    from pipelines.warehouse import open_warehouse

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return open_warehouse(load_settings())
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run(env: dict[str, str], *args: str, expect: int = 0):
    proc = run_cli(env, "run", "--no-models", "--until", UNTIL, *args)
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def _counts(lake) -> dict[str, int]:
    return {t: query(lake, f"select count(*) from loyalty_raw.{t}")[0][0] for t in RAW}


def test_run_into_the_lake_matches_the_truth_and_a_second_run_doubles_nothing(
        sandbox_factory, sandbox_env, postgres, tmp_path: Path) -> None:
    sb = sandbox_factory(customers=12, now=NOW)
    file = tmp_path / "wh" / "loyalty_warehouse.duckdb"
    env = lake_env(sandbox_env(sb, file), postgres, tmp_path)
    lake = open_lake(env)
    assert lake.kind == "ducklake" and not lake.exists()

    first = _run(env)
    assert "carecloud: 12/12 customers done" in first.stdout and "capillary: 12/12 customers done" in first.stdout
    assert lake.exists() and not file.exists(), "a lake run wrote an embedded DuckDB file"
    assert list((tmp_path / "lake").rglob("*.parquet")), "no data files in the lake's storage"
    cmp = compare(lake, sb.truth(), until=NOW, ledger=False)
    assert cmp.ok, str(cmp)
    counts = _counts(lake)
    assert counts["carecloud_point_history"] > 0 and counts["capillary_customer_transfers"] > 0
    # the bookkeeping lives in the lake: one state row per customer and source, the run's row
    state = query(lake, "select source, count(*), count(distinct customer_id), min(last_success_end), "
                        "max(last_success_end) from loyalty_raw._customer_sync_state group by source order by source")
    assert [(s, n, d) for s, n, d, _, _ in state] == [("capillary", 12, 12), ("carecloud", 12, 12)]
    assert all(lo == hi == NOW for *_, lo, hi in state)
    # dlt's staging dataset lived in memory (pipelines/lake_destination.py), not in the lake
    assert query(lake, "select schema_name from information_schema.schemata where catalog_name = current_database() "
                       "and schema_name like '%staging%'") == []
    # dlt's own state and schema versions are in the lake too (a new machine's first run restores from there)
    assert query(lake, "select count(*) from loyalty_raw._dlt_loads where status = 0")[0][0] >= 1

    second = _run(env)
    assert _counts(lake) == counts, "the second run changed the raw row counts"
    cmp = compare(lake, sb.truth(), until=NOW, ledger=False)
    assert cmp.ok, str(cmp)
    assert query(lake, "select count(*), count(distinct (source, customer_id)) "
                       "from loyalty_raw._customer_sync_state") == [(24, 24)]
    runs = query(lake, "select status, exit_code, customers_done from loyalty_raw.runs order by started_at")
    assert runs == [("ok", 0, 24), ("ok", 0, 24)]

    # the catalog's password: nowhere in what the runs printed, nor in the lake's bookkeeping
    for text in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert postgres.password not in text
    stored = query(lake, "select string_agg(coalesce(error, '') || sources::text || extra::text, '') "
                         "from loyalty_raw.runs")[0][0]
    assert postgres.password not in stored


def test_the_lake_run_lock_is_in_the_catalog(sandbox_factory, sandbox_env, postgres, tmp_path: Path) -> None:
    """A run is refused while another session anywhere holds the lake's run lock (a PostgreSQL advisory lock),
    and goes ahead once it is released; another scope does not block it."""
    sb = sandbox_factory(customers=3, now=NOW)
    env = lake_env(sandbox_env(sb, tmp_path / "wh" / "w.duckdb"), postgres, tmp_path)
    lake = open_lake(env)
    with lake.lock("run"):
        proc = _run(env, expect=1)
        assert "another run is using this warehouse" in proc.stdout and "lock 'run'" in proc.stdout
        assert "loyalty-etl run pid" in proc.stdout  # who holds it
        assert postgres.password not in proc.stdout + proc.stderr
    with lake.lock("merge"):
        _run(env)
    assert query(lake, "select count(*) from loyalty_raw.runs") == [(1,)]


def test_backfill_into_the_lake(sandbox_factory, sandbox_env, postgres, tmp_path: Path) -> None:
    """A nightly run from October, then `backfill` of June..October in 2 chunks per source: the lake holds the
    truth from June on, the backfill's progress rows and its runs row, and the nightly windows did not move."""
    october = "2026-10-01T00:00:00+00:00"
    sb = sandbox_factory(customers=5, now=NOW)
    env = lake_env(sandbox_env(sb, tmp_path / "wh" / "w.duckdb"), postgres, tmp_path,
                   SOURCES__CARECLOUD__INITIAL_START=october, SOURCES__CAPILLARY__INITIAL_START=october)
    lake = open_lake(env)
    _run(env)
    state_sql = "SELECT * FROM loyalty_raw._customer_sync_state ORDER BY source, customer_id"
    state_before = query(lake, state_sql)
    assert len(state_before) == 10
    proc = run_cli(env, "backfill", "--since", "2026-06-01", "--until", "2026-10-01", "--chunk", "61d", "--no-models")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert query(lake, "SELECT source, count(*), sum(customers_failed) FROM loyalty_raw._backfill_progress "
                       "GROUP BY 1 ORDER BY 1") == [("capillary", 2, 0), ("carecloud", 2, 0)]
    assert query(lake, state_sql) == state_before
    cmp = compare(lake, sb.truth(), until=NOW, initial_start=dt.datetime(2026, 6, 1, tzinfo=UTC), ledger=False)
    assert cmp.ok, str(cmp)
    assert query(lake, "SELECT status FROM loyalty_raw.runs WHERE command = 'backfill'") == [("ok",)]
