"""dlt's staging dataset in an in-memory database (pipelines/destination.py): merges land in the warehouse file,
staged rows never do, and the staging schema an earlier version left in a warehouse is dropped."""

from __future__ import annotations

from pathlib import Path

import dlt
import duckdb
import pyarrow as pa

from pipelines.destination import STAGING_CATALOG, warehouse_destination


def _schemas(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {r[0] for r in con.execute("select schema_name from information_schema.schemata").fetchall()}


def test_insert_only_merges_stage_in_memory(tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    conn = duckdb.connect(str(wh))
    # what warehouses of earlier versions hold: dlt's staging schema inside the file
    conn.execute('create schema "ds_staging"; create table "ds_staging".t as select 1 as k')
    pipeline = dlt.pipeline(pipeline_name="dest_test", pipelines_dir=str(tmp_path / "p"),
                            destination=warehouse_destination(conn, "ds"), dataset_name="ds")

    @dlt.resource(table_name="t", primary_key="k", write_disposition={"disposition": "merge",
                                                                        "strategy": "insert-only"})
    def rows(keys: list[str]):
        yield pa.table({"k": keys, "v": [len(k) for k in keys]})

    pipeline.run(rows(["a", "bb"]), loader_file_format="parquet")
    pipeline.run(rows(["bb", "ccc"]), loader_file_format="parquet")  # "bb" again: insert-only keeps one
    assert conn.execute("select k, v from ds.t order by k").fetchall() == [("a", 1), ("bb", 2), ("ccc", 3)]
    staged = conn.execute("select table_catalog from information_schema.tables "
                          "where table_schema = 'ds_staging'").fetchall()
    assert staged and {c for (c,) in staged} == {STAGING_CATALOG}
    # later statements on the run's own connection still resolve two-part names in the warehouse
    assert conn.execute("select current_database()").fetchone() == (wh.stem,)
    conn.close()

    schemas = _schemas(wh)
    assert "ds" in schemas and "ds_staging" not in schemas
