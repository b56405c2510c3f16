"""An analyst in another process, querying a DuckLake in a loop while a run loads it.

    LOYALTY_TEST_LAKE_ATTACH="ATTACH 'ducklake:postgres:...' AS lake (..., READ_ONLY)" \
        python -m tests.chaos.lake_reader OUT.jsonl STOPFILE

(the ATTACH statement holds the catalog password, so it comes through the environment, not the command line that
`ps` shows). One DuckDB instance (loading the extensions costs a second of CPU); each iteration attaches the lake
READ_ONLY afresh (as a new analyst session would: it reads the catalog while the load commits), reads it in one
transaction (one snapshot of the lake), detaches, and appends one JSON line:
{"ok": true, "snapshot_id": N, "counts": {table: rows}, "per_customer": {table: {customer: rows}},
 "done": [[source, customer], ...]} or {"ok": false, "error": "..."}. A table that does not exist yet counts 0
rows (the lake before its first load of it), any other error is a failure.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

ATTACH_ENV = "LOYALTY_TEST_LAKE_ATTACH"
# the parent tables the API fills, per customer (child tables follow their parent in the same commit)
PER_CUSTOMER = ("carecloud_point_history", "capillary_customer_transfers")
COUNTED = PER_CUSTOMER + ("capillary_points_transfers", "runs", "_customer_sync_state")


def snapshot(con) -> dict:
    import duckdb

    out: dict = {"counts": {}, "per_customer": {}, "done": []}
    con.execute("begin transaction")
    try:
        out["snapshot_id"] = con.execute("select id from current_snapshot()").fetchone()[0]
        for table in COUNTED:
            try:
                out["counts"][table] = con.execute(f"select count(*) from loyalty_raw.{table}").fetchone()[0]
            except duckdb.CatalogException:
                out["counts"][table] = 0          # not created yet: the lake before the table's first load
                continue
            if table in PER_CUSTOMER:
                out["per_customer"][table] = dict(con.execute(
                    f"select customer_id, count(*) from loyalty_raw.{table} group by 1").fetchall())
        if out["counts"]["_customer_sync_state"]:
            out["done"] = [list(r) for r in con.execute(
                "select source, customer_id from loyalty_raw._customer_sync_state "
                "where last_success_end is not null").fetchall()]
    finally:
        con.execute("commit")
    return out


def main(argv: list[str]) -> int:
    import duckdb

    from tests.helpers.lake import load_lake_extensions

    out, stop = Path(argv[0]), Path(argv[1])
    con = duckdb.connect()
    load_lake_extensions(con)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"ready": True}) + "\n")
        fh.flush()
        while not stop.exists():
            t0 = time.time()
            try:
                con.execute(os.environ[ATTACH_ENV])
                con.execute("use lake")
                rec = {"t": t0, "ok": True, **snapshot(con)}
            except duckdb.Error as exc:
                text = re.sub(r"password=\S+|:[^:@/]+@", "<hidden>", " ".join(str(exc).split()))
                rec = {"t": t0, "ok": False, "error": f"{type(exc).__name__}: {text[:400]}"}
            finally:
                con.execute("use memory")
                con.execute("detach database if exists lake")
            rec["seconds"] = round(time.time() - t0, 3)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            time.sleep(0.05)
    con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
