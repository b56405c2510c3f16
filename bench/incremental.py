"""Scale check of the dbt marts: full build, then an incremental build after 1,000 new raw rows, then one with no
change, on a synthetic raw warehouse in the contract's shape (not a test; speed is measured here, not asserted).

    .venv/bin/python -m bench.incremental [--customers 100000] [--per-customer 20] [--dir /tmp/loyalty-dbt-bench]

(from the repository root: it reuses the tests' raw-table DDL, tests/helpers/raw_warehouse.py).

Prints wall time per `dbt build` (seed, models and all tests, in-process) and dbt's execution time per model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import duckdb

from pipelines.models import run_dbt
from tests.helpers.raw_warehouse import create_raw_tables

OPS = ("['Purchase','Nákup','Points addition','Bonus points','Welcome bonus','Voucher purchase',"
       "'Points redemption','Points expiration','Manual correction','Points transfer']")


def fill(con: duckdb.DuckDBPyConnection, customers: int, per_customer: int) -> None:
    con.execute(f"""
        INSERT INTO loyalty_raw.carecloud_point_history
        SELECT md5(i::varchar), 'C' || (i % {customers}), (hash(i) % 500)::double - 100,
               {OPS}[1 + (hash(i * 7) % 10)::int], 'note', 'PT', 'P' || (i % 7), 'S' || (i % 50), ts,
               ts::timestamptz, '{{}}', CASE WHEN i % 3 = 0 THEN (ts + INTERVAL 365 DAY)::date::varchar END,
               (i % 1000)::double, 'X' || i, 'r1', 'l1', i::varchar
        FROM (SELECT i, TIMESTAMP '2024-01-01' + to_seconds((hash(i) % 90000000)::bigint) AS ts
              FROM range({customers * per_customer}) t(i))""")
    con.execute(f"""
        INSERT INTO loyalty_raw.capillary_points_transfers
        SELECT i, i % {customers}, 'CUSTOMER', (i * 31 + 7) % {customers}, 'CUSTOMER', 10 + i % 90, '',
               TIMESTAMPTZ '2024-01-01' + to_seconds((hash(i) % 90000000)::bigint), '', 'Gold',
               i % {customers}, (i * 31 + 7) % {customers}, 'l1', i::varchar
        FROM range({customers // 2}) t(i)""")
    con.execute("""
        INSERT INTO loyalty_raw.capillary_customer_transfers
        SELECT from_entity_id::varchar, transfer_id, 'DEDUCTION', -points_transferred, 'l1', ''
        FROM loyalty_raw.capillary_points_transfers
        UNION ALL
        SELECT to_entity_id::varchar, transfer_id, 'ADDITION', points_transferred, 'l1', ''
        FROM loyalty_raw.capillary_points_transfers""")
    con.execute(f"INSERT INTO loyalty_raw.capillary_transfer_parties "
                f"SELECT i, 'F', 'L', 'E' || i, 'l1', '' FROM range({customers}) t(i)")


def build(warehouse: Path, target: Path, label: str, project: Path | None) -> None:
    start = time.monotonic()
    rc = run_dbt(warehouse, ["build", "--quiet"], target_dir=target, project_dir=project)
    wall = time.monotonic() - start
    results = json.loads((target / "run_results.json").read_text())["results"]
    models = {r["unique_id"].rsplit(".", 1)[-1]: round(r["execution_time"], 2)
              for r in results if r["unique_id"].startswith("model.")}
    print(f"{label}: exit {rc}, wall {wall:.1f} s; model seconds {models}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--per-customer", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/loyalty-dbt-bench"))
    ap.add_argument("--project-dir", type=Path, default=None,
                    help="dbt project to build (default sql/; a copy of another revision's sql/ to compare)")
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    warehouse, target = args.dir / "loyalty_warehouse.duckdb", args.dir / "target"
    con = duckdb.connect(str(warehouse))
    create_raw_tables(con)
    fill(con, args.customers, args.per_customer)
    rows = con.execute("SELECT count(*) FROM loyalty_raw.carecloud_point_history").fetchone()[0]
    con.close()
    print(f"raw: {rows:,} CareCloud records, {args.customers // 2:,} transfers")
    build(warehouse, target, "full build", args.project_dir)
    con = duckdb.connect(str(warehouse))
    con.execute(f"""
        INSERT INTO loyalty_raw.carecloud_point_history
        SELECT md5('new' || i::varchar), 'C' || (i * 97 % {args.customers}), 10, 'Purchase', 'note', 'PT', 'P1',
               'S1', TIMESTAMP '2026-11-19 10:00:00' - to_hours((i * 17)::bigint),
               TIMESTAMPTZ '2026-11-19 10:00:00+00' - to_hours((i * 17)::bigint), '{{}}', NULL, NULL, NULL, 'r2', 'l2',
               'n' || i
        FROM range(1000) t(i)""")
    con.close()
    build(warehouse, target, "incremental build, +1,000 late records spread over two years", args.project_dir)
    build(warehouse, target, "incremental build, nothing new", args.project_dir)


if __name__ == "__main__":
    main()
