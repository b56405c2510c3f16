"""`loyalty-etl merge`: the serialized step after the shards of a night (pipelines/shards.py, docs/shards.md).

Every shard loads into its own dataset (`loyalty_shard_<sources>_<K>of<N>`), merging there with the sources' own
dlt hints, so concurrent shards never MERGE into the same table. This step moves every shard dataset's COMMITTED
loads (`_dlt_loads.status = 0`, not yet merged) into `loyalty_raw` as ONE dlt load with the same hints, read from
the shard's stored dlt schema, so the raw tables get the dedup the unsharded run gives them:

- `merge` + `insert-only` (CareCloud point history and its list tables, keyed on a content hash): a key already in
  `loyalty_raw` stays as it is; among the shards' rows of a new key the first loaded wins (`_loaded_run_id` = the
  run that first loaded it, as unsharded);
- `merge` (delete-insert: Capillary transfers, parties and per-customer views, CareCloud listings): the row loaded
  last wins (latest `_dlt_load_id` across the shards; a transfer two customers of different shards share is the
  same transfer either way).

Then, in one transaction, the merged rows leave the shard datasets and their loads are recorded in
`loyalty_raw._shard_merges` (append-only). A crash between the load and that commit merges the same rows again
next time, which the merge keys absorb. Rows of a shard load still in flight (no `_dlt_loads` row yet) wait for
the next merge. Then dbt builds the marts once.

Failed shard rule: the merge takes what landed. A shard's rounds commit one by one (raw rows, then its customers'
bookkeeping), so a shard that failed half way has its committed rounds merged and its remaining customers still
due: the next run of that shard loads them. The marts are built on what landed (the shard's own task reports its
failure; the scheduler decides whether to wait for a retry first: deploy/airflow, docs/operations.md).

Written against a DuckDB connection and a dlt destination on it: the same code merges into the embedded file and
into a DuckLake.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from pipelines.logs import get_logger
from pipelines.shards import DATASET_PREFIX

log = get_logger("shard_merge")

RAW = "loyalty_raw"
MERGE_PIPELINE = "loyalty_warehouse_merge"
MERGES_TABLE = f"{RAW}._shard_merges"
DLT_COLUMNS = ("_dlt_load_id", "_dlt_id")
BATCH_ROWS = 100_000

MERGES_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {RAW};
CREATE TABLE IF NOT EXISTS {MERGES_TABLE} (
    dataset   TEXT,          -- the shard's dataset
    load_id   TEXT,          -- one of its dlt loads, merged into loyalty_raw
    run_id    TEXT,          -- the merge run (loyalty_raw.runs)
    merged_at TIMESTAMPTZ
);
"""


@dataclass
class ShardPart:
    """One shard dataset's loads this merge takes."""
    dataset: str
    load_ids: list[str]
    schema: Any                      # its dlt schema (hints of every table)
    tables: list[str] = field(default_factory=list)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def shard_datasets(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The shard datasets in the warehouse, sorted."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT schema_name FROM information_schema.schemata WHERE catalog_name = current_database() "
        "AND starts_with(schema_name, ?) ORDER BY 1", [DATASET_PREFIX]).fetchall()]


def _tables(conn: duckdb.DuckDBPyConnection, schema: str) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = ?", [schema]).fetchall()}


def _stored_schema(conn: duckdb.DuckDBPyConnection, dataset: str) -> Any:
    import dlt

    (text,) = conn.execute(f"SELECT schema FROM {_q(dataset)}._dlt_version ORDER BY inserted_at DESC, version DESC "
                           "LIMIT 1").fetchone()  # type: ignore[misc]
    return dlt.Schema.from_dict(json.loads(text), bump_version=False)


def pending(conn: duckdb.DuckDBPyConnection) -> list[ShardPart]:
    """Per shard dataset: its committed loads not merged yet, its schema and the data tables to read."""
    from pipelines import keyed

    keyed.create_tables(conn, MERGES_DDL)
    parts = []
    for ds in shard_datasets(conn):
        have = _tables(conn, ds)
        if not {"_dlt_loads", "_dlt_version"} <= have:
            continue
        loads = [r[0] for r in conn.execute(
            f"SELECT load_id FROM {_q(ds)}._dlt_loads WHERE status = 0 AND load_id NOT IN "
            f"(SELECT load_id FROM {MERGES_TABLE} WHERE dataset = ?) ORDER BY load_id", [ds]).fetchall()]
        if not loads:
            continue
        schema = _stored_schema(conn, ds)
        tables = [t for t in schema.data_table_names() if t in have]
        parts.append(ShardPart(ds, loads, schema, tables))
    return parts


def _hints(table: dict[str, Any]) -> dict[str, Any]:
    """dlt resource hints that give a table the write disposition, keys and columns it has in the shard."""
    columns = {n: {k: v for k, v in c.items() if k in ("name", "data_type", "nullable", "primary_key",
                                                      "precision", "scale", "timezone", "unique")}
               for n, c in table["columns"].items() if n not in DLT_COLUMNS}
    disposition = table.get("write_disposition", "append")
    strategy = table.get("x-merge-strategy")
    return {
        "write_disposition": {"disposition": disposition, "strategy": strategy} if strategy else disposition,
        "primary_key": [n for n, c in columns.items() if c.get("primary_key")] or None,
        "columns": columns,
    }


def _select(table: str, parts: list[ShardPart], hints: dict[str, Any]) -> str:
    """One SQL over every shard's rows of `table` from the loads merged now, one row per key (see the docstring)."""
    branches = []
    for part in parts:
        if table in part.tables:
            ids = ", ".join("'" + i.replace("'", "''") + "'" for i in part.load_ids)
            branches.append(f"SELECT *, '{part.dataset}' AS _shard_dataset FROM {_q(part.dataset)}.{_q(table)} "
                            f"WHERE _dlt_load_id IN ({ids})")
    union = "\nUNION ALL BY NAME\n".join(branches)
    drop = ["_dlt_load_id", "_shard_dataset"] + [c for c in DLT_COLUMNS[1:] if c in _union_columns(parts, table)]
    keys = hints["primary_key"]
    wd = hints["write_disposition"]
    if not keys or (wd if isinstance(wd, str) else wd["disposition"]) != "merge":
        return f"SELECT * EXCLUDE ({', '.join(drop)}) FROM ({union})"
    first = isinstance(wd, dict) and wd.get("strategy") == "insert-only"
    order = "_dlt_load_id" + ("" if first else " DESC") + ", _shard_dataset"
    return (f"SELECT * EXCLUDE ({', '.join(drop + ['_rn'])}) FROM (SELECT *, row_number() OVER (PARTITION BY "
            f"{', '.join(_q(k) for k in keys)} ORDER BY {order}) AS _rn FROM ({union})) WHERE _rn = 1")


def _union_columns(parts: list[ShardPart], table: str) -> set[str]:
    return {c for p in parts if table in p.tables for c in p.schema.tables[table]["columns"]}


def _batches(conn: duckdb.DuckDBPyConnection, sql: str) -> Iterator[pa.RecordBatch]:
    # a cursor of its own: dlt takes items from the tables' generators in turn, and a second query on one
    # connection would end the first one's result
    (catalog,) = conn.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
    cur = conn.cursor()
    try:
        cur.execute(f"USE {_q(catalog)}")  # a cursor starts in the instance's default catalog (a lake: memory)
        for batch in cur.execute(sql).fetch_record_batch(BATCH_ROWS):
            if batch.num_rows:
                yield batch
    finally:
        cur.close()


def merge(conn: duckdb.DuckDBPyConnection, pipeline: Any, run_id: str) -> dict[str, Any]:
    """Merge every pending shard load into `loyalty_raw` with `pipeline` (dlt, dataset `loyalty_raw`), then take the
    merged rows out of the shard datasets. Returns what was done: datasets, loads, rows per table."""
    import dlt

    parts = pending(conn)
    out: dict[str, Any] = {"datasets": {p.dataset: len(p.load_ids) for p in parts}, "rows_by_table": {}}
    if not parts:
        log.info("no shard loads to merge")
        return out
    tables: dict[str, dict[str, Any]] = {}
    for part in parts:  # the newest schema's hints win (a later shard may know a column more)
        for t in part.tables:
            tables[t] = _hints(part.schema.tables[t]) if t not in tables else _merged_hints(
                tables[t], _hints(part.schema.tables[t]))
    resources = []
    for table, hints in tables.items():
        sql = _select(table, parts, hints)
        resources.append(dlt.resource(_batches(conn, sql), name=table, table_name=table, **hints))
    source = dlt.source(name=RAW, max_table_nesting=0)(lambda: resources)()
    schema = pipeline.schemas[RAW] if RAW in pipeline.schema_names else dlt.Schema(RAW)
    pipeline.extract(source, schema=schema, loader_file_format="parquet")
    info = pipeline.normalize()
    out["rows_by_table"] = {t: n for t, n in (info.row_counts if info else {}).items() if not t.startswith("_dlt")}
    pipeline.load(raise_on_failed_jobs=True)
    _forget_merged(conn, parts, run_id)
    log.info("shard loads merged", extra={"fields": {"datasets": len(parts), "loads": sum(
        len(p.load_ids) for p in parts), "rows": out["rows_by_table"]}})
    return out


def _merged_hints(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**b, "columns": {**a["columns"], **b["columns"]}}


def _forget_merged(conn: duckdb.DuckDBPyConnection, parts: list[ShardPart], run_id: str) -> None:
    """One transaction: the merged rows leave the shard datasets, their loads are recorded as merged. On a lake,
    redone from BEGIN when it loses to a concurrent commit (`keyed.transaction`): a shard still writing its own
    dataset; the DELETE by load id gives the same result at the newer snapshot."""
    from pipelines import keyed

    now = dt.datetime.now(dt.timezone.utc)
    merged = pa.table({"dataset": pa.array([p.dataset for p in parts for _ in p.load_ids], pa.string()),
                       "load_id": pa.array([i for p in parts for i in p.load_ids], pa.string())})

    def work() -> None:
        for part in parts:
            for table in part.tables:
                conn.execute(f"DELETE FROM {_q(part.dataset)}.{_q(table)} WHERE _dlt_load_id IN "
                             "(SELECT load_id FROM _merged_loads WHERE dataset = ?)", [part.dataset])
        conn.execute(f"INSERT INTO {MERGES_TABLE} SELECT dataset, load_id, ?, ? FROM _merged_loads", [run_id, now])

    conn.register("_merged_loads", merged)
    try:
        keyed.transaction(conn, work)
    finally:
        conn.unregister("_merged_loads")


def run_merge(settings: Any, models: bool = True, print_summary: bool = True) -> Any:
    """`loyalty-etl merge`: under the warehouse's run lock, merge the shards' loads, write a `runs` row (command
    "merge"), then build the marts. Returns the `RunReport` (exit code 0 / 1 / 2 as a run's)."""
    from pipelines import runner, state
    from pipelines.logs import redact
    from pipelines.report import RunReport, render_summary

    report = RunReport(command="merge")
    locked = runner.lock_warehouse(settings, "merge", report, print_summary)
    if locked is None:
        return report
    wh, lock = locked
    conn = None
    try:
        conn = wh.connect()
        state.ensure_tables(conn)
        pipeline = runner.make_pipeline(settings, conn, wh, MERGE_PIPELINE, RAW)
        done = merge(conn, pipeline, report.run_id)
        report.rows_by_table = done["rows_by_table"]
        report.extra["shard_loads"] = done["datasets"]
        if models:
            report.models = runner._run_models(settings)
    except Exception as exc:  # noqa: BLE001 - the runs row must still be written
        report.error = f"{type(exc).__name__}: {exc}"
        log.exception("merge failed")
    finally:
        report.error = redact(report.error) if report.error else None
        report.finish()
        if conn is not None:
            try:
                state.write_run(conn, report)
            except Exception as exc:  # noqa: BLE001
                log.error("could not write the runs row: %s", redact(str(exc)))
            conn.close()
        lock.release()
    if print_summary:
        print(render_summary(report), flush=True)
    return report
