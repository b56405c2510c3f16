"""Moving an embedded warehouse (the DuckDB file) into a DuckLake: `loyalty-etl warehouse migrate --to ducklake`.

What moves, and how:

- The raw schema `loyalty_raw`, every table of it: the loaded data, dlt's own `_dlt_loads` / `_dlt_version` /
  `_dlt_pipeline_state`, and the bookkeeping (`_customer_sync_state`, `runs`, `sync_issues`, discovery, backfill and
  event tables). Those carry everything a run needs to go on where the file stopped: each customer's last window
  end (no refetch from `initial_start`), the dlt schema (no table re-created), the keys merges match on (no
  doubled rows).
- Copied with DuckDB itself: one in-memory DuckDB with the lake attached (the lake warehouse's own connection) and
  the file attached READ_ONLY beside it, `CREATE TABLE lake.t AS SELECT * FROM file.t` table by table, all in ONE
  lake transaction: a failure or a kill leaves the lake as it was (DuckLake commits a snapshot or nothing), never
  half a warehouse. Columns and types are the file's (DuckLake keeps no PRIMARY KEY: the lake's code does not need
  one). A table the lake's own code already created (an `ensure_tables` of the lake mode) is filled by name.
- The marts are NOT copied: they are derived, and dbt builds them on the lake from the copied raw tables (the
  command runs the same build as `loyalty-etl models`), so the lake's marts are the ones its nightly build will
  keep updating incrementally, created by dbt on the lake, and a difference between the file's marts and the
  lake's shows up (they are compared) instead of being copied over.
- Verified after the commit, on a fresh read-only attach of the lake: per table the row count and an
  order-independent checksum of every row (sum of `hash(columns)`), file against lake.
- The file is only ever attached READ_ONLY, and the run lock of the file is held while copying, so no run writes
  it meanwhile; the lake's run lock is held too, so no run on the lake starts before the copy has committed.
- A lake that already holds tables is refused unless `force`: then its tables and views are dropped in the same
  transaction as the copy (they stay readable in the lake's earlier snapshots until those expire).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import duckdb

from pipelines.faultpoints import maybe_crash

RAW_SCHEMA = "loyalty_raw"
CRASH_STAGE = "migrate_copy"
"""The crash point after each table copied, before the commit (`LOYALTY_TEST_CRASH_AT=migrate_copy:N`: killed after
the N-th table): the tests' kill -9 in the middle of a migration."""
SOURCE_ALIAS = "migrate_source"
"""The name the file is attached under on the lake's connection (differs from every catalog the lake uses)."""


class MigrationRefused(RuntimeError):
    """The migration did not start: the message says why and what to do (nothing was written)."""


@dataclass
class TableCheck:
    """One copied table: rows and checksum in the file and, after the commit, in the lake."""

    schema: str
    table: str
    rows_file: int
    checksum_file: int
    rows_lake: int = -1
    checksum_lake: int = -1

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def ok(self) -> bool:
        return self.rows_file == self.rows_lake and self.checksum_file == self.checksum_lake


@dataclass
class Migration:
    """What `migrate_raw` did."""

    source: str
    target: str
    tables: list[TableCheck] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)   # lake objects dropped (only with force)
    left_out: list[str] = field(default_factory=list)   # file tables neither copied nor rebuilt by dbt
    copy_s: float = 0.0
    verify_s: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.tables) and all(t.ok for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.rows_lake for t in self.tables)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def lake_objects(conn: duckdb.DuckDBPyConnection, catalog: str) -> list[tuple[str, str, str]]:
    """(schema, name, "table" | "view") of everything user-made in catalog `catalog`."""
    return conn.execute(
        "SELECT schema_name, table_name, 'table' FROM duckdb_tables() WHERE database_name = $1 AND NOT internal "
        "UNION ALL SELECT schema_name, view_name, 'view' FROM duckdb_views() WHERE database_name = $1 AND NOT internal "
        "ORDER BY 1, 2", [catalog]).fetchall()


def is_dbt_schema(schema: str) -> bool:
    """The dbt project's schemas (sql/dbt_project.yml: `loyalty`, `loyalty_staging`, `loyalty_intermediate`,
    `loyalty_audit`): rebuilt on the lake by dbt, not copied."""
    return schema == "loyalty" or (schema.startswith("loyalty_") and schema != RAW_SCHEMA)


def _columns(conn: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND schema_name = ? AND table_name = ? "
        "ORDER BY column_index", [catalog, schema, table]).fetchall()]


def _rounded_columns(conn: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str) -> list[str]:
    """The table's columns as checksum expressions, floating-point ones rounded to 6 decimals: a sum of doubles
    depends on the order it adds them in, so two builds of one aggregate from the same rows can differ in the last
    bit (seen on a 20,000-customer migration: `agg_store_points_monthly.earned` 2809.0 in the file, 2809.0000000000005
    on the lake)."""
    return [f"round({_q(name)}, 6)" if kind in ("DOUBLE", "FLOAT") else _q(name) for name, kind in conn.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? AND schema_name = ? AND "
        "table_name = ? AND column_name NOT LIKE '\\_dbt\\_%' ESCAPE '\\' ORDER BY column_index",
        [catalog, schema, table]).fetchall()]


def table_check(conn: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str,
                columns: list[str], expressions: bool = False) -> tuple[int, int]:
    """(rows, checksum) of a table: the checksum sums a 64-bit hash of each row's `columns` (as a HUGEINT, so it
    cannot overflow), the same whatever the row order or the storage (file, Parquet, inlined in the catalog).
    `expressions`: `columns` are SQL expressions, not names."""
    cols = ", ".join(columns if expressions else (_q(c) for c in columns))
    rows, checksum = conn.execute(
        f"SELECT count(*), coalesce(sum(hash({cols})::HUGEINT), 0) FROM {_q(catalog)}.{_q(schema)}.{_q(table)}"
    ).fetchone()
    return int(rows), int(checksum)


def attach_file(conn: duckdb.DuckDBPyConnection, path: str) -> None:
    """The warehouse file attached READ_ONLY as `SOURCE_ALIAS` beside the lake: nothing can write it through here."""
    conn.execute(f"ATTACH {_sql_string(path)} AS {SOURCE_ALIAS} (READ_ONLY)")


def plan(conn: duckdb.DuckDBPyConnection) -> tuple[list[TableCheck], list[str]]:
    """The file's raw tables to copy (with their rows and checksum in the file), and the names of the file's
    tables that are neither copied nor rebuilt by dbt (an analyst's own tables in `main`, ...)."""
    copy: list[TableCheck] = []
    left_out: list[str] = []
    for schema, table, kind in lake_objects(conn, SOURCE_ALIAS):
        if schema == RAW_SCHEMA and kind == "table":
            cols = _columns(conn, SOURCE_ALIAS, schema, table)
            rows, checksum = table_check(conn, SOURCE_ALIAS, schema, table, cols)
            copy.append(TableCheck(schema, table, rows, checksum))
        elif not is_dbt_schema(schema) and not (schema == RAW_SCHEMA and kind == "view"):
            left_out.append(f"{schema}.{table}")
    return copy, left_out


def copy_tables(conn: duckdb.DuckDBPyConnection, lake: str, tables: list[TableCheck], *, replace: bool,
                prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
                progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Copies `tables` from the attached file into catalog `lake` in ONE transaction. `replace`: first drop
    everything the lake holds (returns what was dropped); else the lake must hold no table or view.
    `prepare(conn)` runs inside the transaction after the drop (the lake mode's own DDL, so tables it creates are
    filled by name and keep its definitions)."""
    existing = lake_objects(conn, lake)
    if existing and not replace:
        shown = ", ".join(f"{s}.{n}" for s, n, _ in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise MigrationRefused(
            f"the lake already holds {len(existing)} table(s) or view(s) ({shown}); nothing was copied. "
            "Migrate into an empty lake, or pass --force to replace what it holds (its earlier snapshots keep "
            "the old contents until they expire).")
    dropped: list[str] = []
    conn.execute("BEGIN TRANSACTION")
    try:
        if replace:
            for s, n, kind in existing:
                if s == "main":  # the default schema cannot be dropped, only emptied
                    conn.execute(f"DROP {kind.upper()} IF EXISTS {_q(lake)}.main.{_q(n)}")
            for schema in sorted({s for s, _, _ in existing} - {"main"}):
                conn.execute(f"DROP SCHEMA IF EXISTS {_q(lake)}.{_q(schema)} CASCADE")
            dropped = [f"{s}.{n}" for s, n, _ in existing]
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(lake)}.{_q(RAW_SCHEMA)}")
        if prepare is not None:
            prepare(conn)
        created = {(s, n) for s, n, kind in lake_objects(conn, lake) if kind == "table"}
        for t in tables:
            src = f"{SOURCE_ALIAS}.{_q(t.schema)}.{_q(t.table)}"
            dst = f"{_q(lake)}.{_q(t.schema)}.{_q(t.table)}"
            if (t.schema, t.table) in created:
                conn.execute(f"INSERT INTO {dst} BY NAME SELECT * FROM {src}")
            else:
                conn.execute(f"CREATE TABLE {dst} AS SELECT * FROM {src}")
            progress(f"copied {t.name}: {t.rows_file:,} rows")
            maybe_crash(CRASH_STAGE)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return dropped


def verify(conn: duckdb.DuckDBPyConnection, lake: str, tables: list[TableCheck]) -> None:
    """Fills each table's rows and checksum in catalog `lake` (the file's columns, in the file's order)."""
    for t in tables:
        cols = _columns(conn, SOURCE_ALIAS, t.schema, t.table)
        t.rows_lake, t.checksum_lake = table_check(conn, lake, t.schema, t.table, cols)


def compare_marts(conn: duckdb.DuckDBPyConnection, lake: str) -> list[tuple[str, int, int, bool]]:
    """(mart, rows in the file, rows in the lake, same contents) for every table of schema `loyalty` in the file,
    comparing every column but dbt's audit columns (`_dbt_*`: when and by which invocation a row was written),
    floating-point ones to 6 decimals. A mart that reads today's date (`agg_points_expiring`) differs when the
    file's was built on another day."""
    out = []
    for schema, table, kind in lake_objects(conn, SOURCE_ALIAS):
        if schema != "loyalty" or kind != "table":
            continue
        cols = _rounded_columns(conn, SOURCE_ALIAS, schema, table)
        rows_file, sum_file = table_check(conn, SOURCE_ALIAS, schema, table, cols, expressions=True)
        try:
            rows_lake, sum_lake = table_check(conn, lake, schema, table, cols, expressions=True)
        except duckdb.Error:
            rows_lake, sum_lake = -1, None
        out.append((f"{schema}.{table}", rows_file, rows_lake, rows_file == rows_lake and sum_file == sum_lake))
    return out


def migrate_raw(conn: duckdb.DuckDBPyConnection, file: str, *, source: str, target: str, force: bool = False,
                prepare: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
                reopen: Callable[[], duckdb.DuckDBPyConnection] | None = None,
                progress: Callable[[str], None] = lambda _: None) -> Migration:
    """Copies the raw schema of warehouse file `file` into the lake `conn` is attached to (its current catalog),
    then verifies it on `reopen()` (a fresh connection to the lake, what a reader would see; default `conn`).
    `source`/`target` are how the two are named in messages (no password). The caller holds the locks."""
    lake = conn.execute("SELECT current_database()").fetchone()[0]
    attach_file(conn, file)
    tables, left_out = plan(conn)
    if not tables:
        raise MigrationRefused(f"{source} has no {RAW_SCHEMA} tables: nothing to migrate (load it first with "
                               "`loyalty-etl run`)")
    result = Migration(source=source, target=target, tables=tables, left_out=left_out)
    started = time.monotonic()
    result.replaced = copy_tables(conn, lake, tables, replace=force, prepare=prepare, progress=progress)
    result.copy_s = time.monotonic() - started
    started = time.monotonic()
    check = conn
    if reopen is not None:
        check = reopen()
        attach_file(check, file)
        lake = check.execute("SELECT current_database()").fetchone()[0]
    try:
        verify(check, lake, tables)
    finally:
        if check is not conn:
            check.close()
    result.verify_s = time.monotonic() - started
    return result


def render(m: Migration) -> str:
    """The per-table report the command prints."""
    width = max(len(t.name) for t in m.tables)
    lines = [f"{'table':<{width}} {'file rows':>12} {'lake rows':>12}  checksum"]
    for t in m.tables:
        lines.append(f"{t.name:<{width}} {t.rows_file:>12,} {t.rows_lake:>12,}  {'same' if t.ok else 'DIFFERS'}")
    return "\n".join(lines)


def summary(m: Migration) -> dict[str, Any]:
    """The migration as JSON-friendly values (for logs and tests)."""
    return {"source": m.source, "target": m.target, "ok": m.ok, "rows": m.rows, "copy_s": round(m.copy_s, 2),
            "verify_s": round(m.verify_s, 2), "replaced": m.replaced, "left_out": m.left_out,
            "tables": {t.name: {"rows_file": t.rows_file, "rows_lake": t.rows_lake, "same": t.ok}
                       for t in m.tables}}
