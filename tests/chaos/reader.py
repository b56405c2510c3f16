"""An analyst in another process, querying the warehouse in a loop while a nightly run loads it.

    python tests/chaos/reader.py WAREHOUSE OUT.jsonl STOPFILE [--status] [--raw]

Each iteration opens the file read-only, takes one snapshot (raw and mart counts and sums, in one transaction),
closes it, and appends one JSON line: {"ok": true, "snapshot": [...]} or {"ok": false, "busy": bool, "error": "..."}.
With --status it runs `loyalty-etl status` instead, the project's own reader, and records its exit code and output.
With --raw the snapshot covers the raw tables only (a load run without models).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

RAW_SQL = [
    "select count(*), coalesce(sum(point_amount::double), 0)::decimal(38, 3) from loyalty_raw.carecloud_point_history",
    "select count(*) from loyalty_raw.capillary_customer_transfers",
    "select count(*) from loyalty_raw.capillary_points_transfers",
    "select count(*) from loyalty_raw._customer_sync_state where last_success_end is not null",
]
SNAPSHOT_SQL = RAW_SQL + [
    "select count(*), coalesce(sum(points), 0)::decimal(38, 3) from loyalty.fct_points_ledger",
    "select count(*) from loyalty.dim_customers",
    "select count(*), coalesce(sum(net_points), 0)::decimal(38, 3) from loyalty.agg_customer_points_daily",
]


def snapshot(con, raw_only: bool = False) -> list:
    out = []
    for sql in RAW_SQL if raw_only else SNAPSHOT_SQL:
        try:
            out.append([str(v) for v in con.execute(sql).fetchone()])
        except Exception as exc:  # noqa: BLE001 - a missing relation is itself the finding ("half-built")
            if "lock" in str(exc).lower():
                raise
            out.append(f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return out


def main(argv: list[str]) -> int:
    import duckdb

    db, out, stop = Path(argv[0]), Path(argv[1]), Path(argv[2])
    use_status = "--status" in argv
    raw_only = "--raw" in argv
    root = Path(__file__).resolve().parents[2]
    with out.open("a", encoding="utf-8") as fh:
        while not stop.exists():
            t0 = time.time()
            if use_status:
                p = subprocess.run([sys.executable, "-m", "pipelines.cli", "status"], cwd=root, capture_output=True,
                                   text=True, timeout=120)
                rec = {"t": t0, "rc": p.returncode, "stdout": p.stdout[-2000:], "stderr": p.stderr[-2000:]}
            else:
                try:
                    con = duckdb.connect(str(db), read_only=True)
                    try:
                        con.execute("begin transaction")
                        rec = {"t": t0, "ok": True, "snapshot": snapshot(con, raw_only)}
                        con.execute("commit")
                    finally:
                        con.close()
                except duckdb.Error as exc:
                    msg = str(exc)
                    busy = "lock" in msg.lower()
                    rec = {"t": t0, "ok": False, "busy": busy, "error": f"{type(exc).__name__}: {msg[:300]}"}
            rec["seconds"] = round(time.time() - t0, 3)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            time.sleep(0.15)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
