"""`loyalty-etl warehouse migrate --to ducklake` end to end, on a real PostgreSQL catalog: a warehouse file built by
a real run against the sandbox is moved into a lake; every raw table equals the file's row for row, the marts are
built on the lake and equal the file's, the file is left byte for byte as it was, and a further run on the lake
fetches only each customer's lookback window (not from initial_start) and loads exactly the new records: the lake
then equals the sandbox's truth, no key doubled."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

import duckdb
import pytest

from tests.chaos.compare import compare
from tests.helpers.cli import cli_env, run_cli

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, tzinfo=UTC)
LATER = NOW + dt.timedelta(days=2)
DATA_TABLES = ("carecloud_point_history", "carecloud_point_history__extended_data__purchase_items",
               "capillary_customer_transfers", "capillary_points_transfers", "capillary_transfer_parties")


def _until(instant: dt.datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ok(proc, expect: int = 0) -> str:
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc.stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lake_env(env: dict[str, str], postgres, storage: Path) -> dict[str, str]:
    return {**env, "DESTINATION__DUCKLAKE__CREDENTIALS__CATALOG": postgres.url,
            "DESTINATION__DUCKLAKE__CREDENTIALS__STORAGE": str(storage)}


def _connect_lake(postgres, storage: Path) -> duckdb.DuckDBPyConnection:
    """The lake read-only, with the file's alias free: what an analyst's session does (docs/warehouse.md)."""
    from pipelines.lake import load_extensions

    con = duckdb.connect()
    load_extensions(con)
    con.execute(f"ATTACH 'ducklake:postgres:{postgres.url}' AS lake (READ_ONLY, METADATA_SCHEMA 'ducklake')")
    return con


def _tables(con: duckdb.DuckDBPyConnection, catalog: str, schema: str) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND "
                                      "schema_name = ?", [catalog, schema]).fetchall()}


def _difference(con: duckdb.DuckDBPyConnection, a: str, b: str, columns: list[str], raw: bool = False) -> int:
    """Rows of `a` not in `b` (as a multiset) over `columns` (names, or SQL expressions when `raw`)."""
    cols = ", ".join(columns if raw else (f'"{c}"' for c in columns))
    return con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b})").fetchone()[0]


def _columns(con: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str) -> list[str]:
    return [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND "
                                      "schema_name = ? AND table_name = ? ORDER BY column_index",
                                      [catalog, schema, table]).fetchall()]


def test_migrate_file_to_lake_then_runs_go_on_there(sandbox_factory, sandbox_env, postgres, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sb = sandbox_factory(customers=30, now=NOW, data_start="2026-09-01", data_end="2027-01-01",
                         records_per_customer=20, late_share=0.5)
    wh = tmp_path / "wh" / "loyalty_warehouse.duckdb"
    storage = tmp_path / "lake-files"
    env = _lake_env(cli_env(sandbox_env(sb, wh)), postgres, storage)

    # the embedded file, built by a real nightly run with its marts
    _ok(run_cli(env, "run", "--until", _until(NOW)))
    before = _sha256(wh)

    # the lake's catalog is not configured as the warehouse yet: migrate reads [destination.ducklake] regardless
    out = _ok(run_cli(env, "warehouse", "migrate", "--to", "ducklake"))
    assert _sha256(wh) == before, "the file must be left untouched"
    assert postgres.password not in out
    for table in DATA_TABLES + ("_customer_sync_state", "runs", "sync_issues", "_dlt_loads", "_dlt_version",
                                "_dlt_pipeline_state"):
        assert re.search(rf"loyalty_raw\.{table}\s+[\d,]+\s+[\d,]+\s+same", out), (table, out)
    assert "DIFFERS" not in out
    assert 'next: set [loyalty] warehouse = "ducklake"' in out

    con = _connect_lake(postgres, storage)
    try:
        con.execute(f"ATTACH '{wh}' AS file (READ_ONLY)")
        _raw_equal(con)
        assert con.execute("SELECT count(*) FROM lake.loyalty_raw.carecloud_point_history").fetchone()[0] > 300
        # the marts were built on the lake by dbt and equal the file's (dbt's audit columns aside)
        marts = _tables(con, "file", "loyalty")
        assert "fct_points_ledger" in marts and marts <= _tables(con, "lake", "loyalty")
        for mart in sorted(marts - {"agg_points_expiring"}):  # that one reads today's date
            # sums of doubles differ in the last bit with the order they are added in: to 6 decimals
            cols = [f'round("{c}", 6)' if t in ("DOUBLE", "FLOAT") else f'"{c}"' for c, t in con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'file' AND "
                "schema_name = 'loyalty' AND table_name = ? AND NOT starts_with(column_name, '_dbt_')",
                [mart]).fetchall()]
            a, b = f"file.loyalty.{mart}", f"lake.loyalty.{mart}"
            assert _difference(con, a, b, cols, raw=True) == 0 and _difference(con, b, a, cols, raw=True) == 0, mart
        first_rows = con.execute("SELECT count(*) FROM lake.loyalty_raw.carecloud_point_history").fetchone()[0]
    finally:
        con.close()

    # the lake as the project reads it, raw tables and the ledger mart against the sandbox's truth
    for key, value in env.items():
        if key.startswith("DESTINATION__DUCKLAKE__"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOYALTY__WAREHOUSE", "ducklake")
    from pipelines.warehouse import configured_warehouse

    lake = configured_warehouse()
    cmp = compare(lake, sb.truth(), until=NOW, ledger=True)
    assert cmp.ok, f"the migrated lake equals the truth, ledger included: {cmp}"

    # a second migration is refused: the lake holds tables now; nothing changes
    refused = run_cli(env, "warehouse", "migrate", "--to", "ducklake", "--no-models")
    assert refused.returncode == 1 and "already holds" in refused.stderr and "--force" in refused.stderr

    # the next run on the lake goes on where the file stopped
    truth_now = sb.truth().carecloud_point_history.to_pylist()
    sb.set_now(LATER)
    lake_env = {**env, "LOYALTY__WAREHOUSE": "ducklake"}
    out = _ok(run_cli(lake_env, "run", "--no-models", "--until", _until(LATER)))
    lookback_start = (NOW - dt.timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S")
    assert f"window {lookback_start}+00:00 .. " in out, out  # each customer's lookback, not initial_start
    assert "window 2024-01-01" not in out
    assert _sha256(wh) == before, "runs on the lake never touch the file"

    at_now = [r for r in truth_now if r["recorded_at"] is None or r["recorded_at"] < NOW]
    at_later = [r for r in sb.truth().carecloud_point_history.to_pylist()
                if r["recorded_at"] is None or r["recorded_at"] < LATER]
    con = _connect_lake(postgres, storage)
    try:
        ch = con.execute("SELECT count(*), count(DISTINCT record_key) FROM lake.loyalty_raw.carecloud_point_history"
                         ).fetchone()
        run_id = con.execute("SELECT run_id FROM lake.loyalty_raw.runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
        new = con.execute("SELECT count(*) FROM lake.loyalty_raw.carecloud_point_history WHERE _loaded_run_id = ?",
                          [run_id]).fetchone()[0]
        runs = con.execute("SELECT count(*) FROM lake.loyalty_raw.runs").fetchone()[0]
    finally:
        con.close()
    assert first_rows == len(at_now)
    assert ch == (len(at_later), len(at_later)), "no key doubled"
    cmp = compare(lake, sb.truth(), until=LATER, ledger=False)
    assert cmp.ok, f"the lake equals the truth, row for row: {cmp}"
    assert new == len(at_later) - len(at_now) > 0, "only the new and late records were added"
    assert runs == 2, "the file's run and the lake's"


def _raw_equal(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every `loyalty_raw` table of the attached `file` equals the `lake`'s, row for row (a multiset equality in
    both directions, independent of the command's own checksum); returns the tables compared."""
    raw = _tables(con, "file", "loyalty_raw")
    assert raw <= _tables(con, "lake", "loyalty_raw")
    for table in sorted(raw):
        cols = _columns(con, "file", "loyalty_raw", table)
        a, b = f'file.loyalty_raw."{table}"', f'lake.loyalty_raw."{table}"'
        assert _difference(con, a, b, cols) == 0 and _difference(con, b, a, cols) == 0, table
    return raw


def _lake_created(postgres) -> bool:
    import psycopg

    with psycopg.connect(postgres.url) as pg:
        return pg.execute("SELECT to_regclass('ducklake.ducklake_metadata')").fetchone()[0] is not None


def test_migrate_raw_locks_refusals_force(sandbox_factory, sandbox_env, postgres, tmp_path: Path) -> None:
    """The raw schema alone (--no-models): refused while a run holds the file (the lake untouched), then copied row
    for row with the file left as it was, refused into a lake that holds tables, replaced with --force."""
    from pipelines.lock import RunLock

    sb = sandbox_factory(customers=8, now=NOW, data_start="2026-10-01", data_end="2027-01-01")
    wh = tmp_path / "wh" / "loyalty_warehouse.duckdb"
    storage = tmp_path / "lake-files"
    env = _lake_env(cli_env(sandbox_env(sb, wh)), postgres, storage)
    _ok(run_cli(env, "run", "--no-models", "--until", _until(NOW)))
    before = _sha256(wh)

    with RunLock(wh):
        proc = run_cli(env, "warehouse", "migrate", "--to", "ducklake", "--no-models")
    assert proc.returncode == 1 and "another run is using this warehouse" in proc.stderr, proc.stderr
    assert not _lake_created(postgres), "refused before the lake was touched"

    # killed (SIGKILL) after the 5th table, before the commit: the lake holds nothing of it, both locks die with the
    # process, and the migration simply runs again
    from pipelines.migrate import CRASH_STAGE

    killed = run_cli({**env, "LOYALTY_TEST_CRASH_AT": f"{CRASH_STAGE}:5"}, "warehouse", "migrate", "--to", "ducklake",
                     "--no-models")
    assert killed.returncode == -9, killed.stderr[-2000:]
    con = _connect_lake(postgres, storage)
    try:
        assert not _tables(con, "lake", "loyalty_raw") and not _tables(con, "lake", "main")
    finally:
        con.close()

    out = _ok(run_cli(env, "warehouse", "migrate", "--to", "ducklake", "--no-models"))
    assert _sha256(wh) == before, "the file must be left untouched"
    assert "DIFFERS" not in out and "_customer_sync_state" in out and postgres.password not in out
    con = _connect_lake(postgres, storage)
    try:
        con.execute(f"ATTACH '{wh}' AS file (READ_ONLY)")
        copied = _raw_equal(con)
        assert {"carecloud_point_history", "_customer_sync_state", "runs", "_dlt_version"} <= copied
        assert not _tables(con, "lake", "loyalty"), "--no-models: no marts"
    finally:
        con.close()

    refused = run_cli(env, "warehouse", "migrate", "--to", "ducklake", "--no-models")
    assert refused.returncode == 1 and "already holds" in refused.stderr and "--force" in refused.stderr

    # --force replaces what the lake holds: here a table of its own that the file does not have
    con = duckdb.connect()
    from pipelines.lake import load_extensions

    load_extensions(con)
    con.execute(f"ATTACH 'ducklake:postgres:{postgres.url}' AS lake (METADATA_SCHEMA 'ducklake')")
    con.execute("CREATE TABLE lake.main.scratch AS SELECT 1 AS x")
    con.execute("DELETE FROM lake.loyalty_raw.carecloud_point_history WHERE customer_id IN "
                "(SELECT customer_id FROM lake.loyalty_raw.carecloud_point_history LIMIT 1)")
    con.close()
    out = _ok(run_cli(env, "warehouse", "migrate", "--to", "ducklake", "--no-models", "--force"))
    assert "replaced what the lake held (--force)" in out and "main.scratch" in out
    con = _connect_lake(postgres, storage)
    try:
        con.execute(f"ATTACH '{wh}' AS file (READ_ONLY)")
        _raw_equal(con)
        assert "scratch" not in _tables(con, "lake", "main")
    finally:
        con.close()
    assert _sha256(wh) == before


def test_migrate_explains_itself() -> None:
    proc = run_cli(cli_env({}), "warehouse", "migrate", "--help")
    assert proc.returncode == 0
    for words in ("--to", "--force", "--no-models", "loyalty_raw", "read-only", "ONE lake", "LOYALTY__WAREHOUSE"):
        assert words in proc.stdout, words
    missing = run_cli(cli_env({}), "warehouse", "migrate")
    assert missing.returncode == 2 and "--to" in missing.stderr
