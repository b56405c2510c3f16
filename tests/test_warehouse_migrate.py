"""`loyalty-etl warehouse migrate --to ducklake` on a real PostgreSQL catalog: a warehouse file built by a real run
against the sandbox is moved into a lake; every raw table equals the file's row for row, the file is left byte for
byte as it was, a held run lock or a lake that holds tables refuses, --force replaces."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import duckdb

from tests.helpers.cli import cli_env, run_cli

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, tzinfo=UTC)


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


def _difference(con: duckdb.DuckDBPyConnection, a: str, b: str, columns: list[str]) -> int:
    cols = ", ".join(f'"{c}"' for c in columns)
    return con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b})").fetchone()[0]


def _columns(con: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str) -> list[str]:
    return [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND "
                                      "schema_name = ? AND table_name = ? ORDER BY column_index",
                                      [catalog, schema, table]).fetchall()]


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
