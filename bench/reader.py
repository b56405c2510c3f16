"""An analyst polling the warehouse while a run loads it (the `reader_availability` scenario's reader process).

    python -m bench.reader WAREHOUSE OUT.jsonl STOPFILE [--every 0.5]

Every `--every` seconds (on a fixed schedule, so a slow try does not thin out the tries after it) it opens the DuckDB
file read-only, queries `loyalty.fct_points_ledger`, closes it, and appends one JSON line:
{"t": start (epoch s), "ok": bool, "busy": bool (DuckDB's lock error: a writer holds the file), "error", "seconds"}.
A plain DuckDB client, as an analyst's notebook or a BI tool's connection would be: no project code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

QUERY = "select count(*), coalesce(sum(points), 0)::double from loyalty.fct_points_ledger"


def main(argv: list[str] | None = None) -> int:
    import duckdb

    ap = argparse.ArgumentParser(prog="python -m bench.reader", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("warehouse", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("stop", type=Path, help="the reader stops once this file exists")
    ap.add_argument("--every", type=float, default=0.5, help="seconds between the starts of two tries")
    args = ap.parse_args(argv)
    tick = time.monotonic()
    with args.out.open("a", encoding="utf-8") as fh:
        while not args.stop.exists():
            t0, m0 = time.time(), time.monotonic()
            rec: dict = {"t": t0}
            try:
                con = duckdb.connect(str(args.warehouse), read_only=True)
                try:
                    rows, points = con.execute(QUERY).fetchone()
                finally:
                    con.close()
                rec.update(ok=True, rows=rows, points=points)
            except duckdb.Error as exc:
                msg = str(exc)
                rec.update(ok=False, busy="lock" in msg.lower(), error=f"{type(exc).__name__}: {msg[:300]}")
            rec["seconds"] = round(time.monotonic() - m0, 4)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            tick += args.every
            time.sleep(max(0.0, tick - time.monotonic()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
